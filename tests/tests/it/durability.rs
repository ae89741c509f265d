//! Durability and ordering under restarts, SIGKILLs and skewed clocks.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Result;
use chat_client::{ClientError, Conn};
use chat_nats::snowflake;
use chat_tests::wait_for;
use serde_json::Value;

use crate::stack::stack;

fn id(v: &Value) -> u64 {
    v["id"].as_str().unwrap().parse().unwrap()
}

/// Sends, retrying with the same cid until acked (what a client does).
async fn send_until_acked(c: &mut Conn, cid: &str, to: &str, body: &str) -> Result<Value> {
    for _ in 0..10 {
        match c.send_to_user(cid, to, body).await {
            Ok(ack) => return Ok(ack),
            Err(ClientError::Api { code, .. }) if code == "timeout" || code == "unavailable" => continue,
            Err(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("send {cid} never acked")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_messages_survive_a_whole_stack_restart() -> Result<()> {
    let mut s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let (mut ca, _) = s.live(0, &a).await?;
    let mut acked = Vec::new();
    for i in 0..5 {
        acked.push(id(&ca.send_to_user(&format!("r{i}"), &b.user_id, &format!("before {i}")).await?));
    }
    drop(ca);
    s.restart_all().await?;

    // Accounts, tokens, inboxes, history and dedupe records all survived.
    let (mut cb, _) = (s.connect(0, &b).await?, ());
    let (msgs, _) = cb.sync(None).await?;
    assert_eq!(msgs.iter().map(id).collect::<Vec<_>>(), acked);
    let page = s.http(0).history(&b.token, &chat_client::direct_conv(&a.user_id, &b.user_id), "").await?;
    assert_eq!(page["messages"].as_array().unwrap().len(), 5);
    let (mut ca, _) = s.live(0, &a).await?;
    let retry = ca.send_to_user("r4", &b.user_id, "before 4").await?;
    assert_eq!(id(&retry), acked[4], "a retry after the restart is deduped");
    let after = ca.send_to_user("r5", &b.user_id, "after").await?;
    assert!(id(&after) > acked[4]);
    assert_eq!(cb.next_msg().await?["body"], "after");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_stream_loses_and_duplicates_nothing() -> Result<()> {
    let mut s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let (mut ca, _) = s.live(0, &a).await?;
    let to = b.user_id.clone();
    let sends = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..120 {
            let ack = send_until_acked(&mut ca, &format!("k{i}"), &to, &format!("{i}")).await?;
            acked.push(id(&ack));
        }
        anyhow::Ok(acked)
    });
    // Kill the only worker while sends are in flight, then start another.
    s.wait_stored(40).await?;
    s.kill_worker(0);
    s.add_worker(0)?;
    let acked = sends.await??;
    assert!(acked.windows(2).all(|w| w[0] < w[1]), "ids increase in send order");

    let mut cb = s.connect(0, &b).await?;
    let (msgs, _) = cb.sync(None).await?;
    let got: Vec<u64> = msgs.iter().map(id).collect();
    assert_eq!(got, acked, "every acked message exactly once, in order");
    let bodies: Vec<String> = msgs.iter().map(|m| m["body"].as_str().unwrap().to_owned()).collect();
    assert_eq!(bodies, (0..120).map(|i| i.to_string()).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_killed_loses_nothing_and_clients_resume_elsewhere() -> Result<()> {
    let mut s = stack().start().await?;
    let gp = s.add_gateway_process().await?;
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let (mut ca, _) = s.live(gp, &a).await?;
    let (mut cb, _) = s.live(gp, &b).await?;
    let mut acked = Vec::new();
    for i in 0..10 {
        acked.push(id(&ca.send_to_user(&format!("g{i}"), &b.user_id, "x").await?));
    }
    let mut cursor = String::new();
    for _ in 0..5 {
        cursor = cb.next_msg().await?["cursor"].as_str().unwrap().to_owned();
    }
    s.stop_gateway(gp).await; // SIGKILL
                              // Both reconnect to the surviving gateway; bob resumes from his cursor.
    let (mut ca, _) = s.live(0, &a).await?;
    for i in 10..15 {
        acked.push(id(&send_until_acked(&mut ca, &format!("g{i}"), &b.user_id, "x").await?));
    }
    let mut cb = s.connect(0, &b).await?;
    let (rest, _) = cb.sync(Some(&cursor)).await?;
    assert_eq!(rest.iter().map(id).collect::<Vec<_>>(), acked[5..].to_vec());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skewed_id_workers_cannot_make_the_cursor_miss_a_message() -> Result<()> {
    // Two ID workers, one a minute behind the other.
    let s = stack().workers_with_clock_offsets(&[0, -60_000]).start().await?;
    let b = s.user("bob", "b1").await?;
    let nats = chat_tests::nats_admin(&s.nats.url).await?;
    let kv = async_nats::jetstream::new(nats).get_key_value(chat_nats::subjects::LEASES_BUCKET).await?;
    wait_for("partitions spread over both workers", Duration::from_secs(30), || {
        let kv = kv.clone();
        async move {
            let mut holders = HashSet::new();
            for p in 0..4 {
                holders.insert(kv.get(chat_nats::subjects::partition_lease(p)).await.ok()??);
            }
            (holders.len() == 2).then_some(())
        }
    })
    .await?;

    // Senders whose conversations with bob land on different partitions.
    let mut senders = Vec::new();
    for name in ["sender1", "sender2", "sender3", "sender4", "sender5", "sender6", "sender7", "sender8"] {
        let l = s.user(name, "d").await?;
        let (c, _) = s.live(0, &l).await?;
        senders.push(c);
    }
    let mut per_conv: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for round in 0..5 {
        for (i, c) in senders.iter_mut().enumerate() {
            let ack = c.send_to_user(&format!("x{round}"), &b.user_id, &format!("{i}/{round}")).await?;
            per_conv.entry(ack["conv"].as_str().unwrap().to_owned()).or_default().push(id(&ack));
        }
    }
    let mut cb = s.connect(0, &b).await?;
    let (all, _) = cb.sync(None).await?;
    assert_eq!(all.len(), 40);
    let machines: HashSet<u16> = all.iter().map(|m| snowflake::machine(id(m))).collect();
    assert_eq!(machines.len(), 2, "both ID workers issued ids");
    let inbox_ids: Vec<u64> = all.iter().map(id).collect();
    assert!(inbox_ids.windows(2).any(|w| w[0] > w[1]), "the skew is real: inbox order is not id order");
    for ids in per_conv.values() {
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase within a conversation");
    }
    // From every cursor, sync returns exactly the messages after it: a
    // "highest id seen" cursor would skip the lagging worker's messages.
    for k in [5, 17, 33] {
        let cursor = all[k]["cursor"].as_str().unwrap();
        let mut c = s.connect(0, &b).await?;
        let (rest, _) = c.sync(Some(cursor)).await?;
        assert_eq!(rest.iter().map(id).collect::<Vec<_>>(), inbox_ids[k + 1..].to_vec());
    }
    Ok(())
}

/// Stores `stored` in `user`'s inbox the way the sequencer does but with
/// nothing announced: the inbox stream's `republish` is off while it is
/// stored (as if its notification had been lost), and the worker publishes
/// no wake-up of its own for a stream that republishes.
async fn store_unannounced(
    js: &async_nats::jetstream::Context,
    user: i64,
    stored: &chat_nats::envelope::StoredMessage,
) -> Result<u64> {
    let mut inbox = js.get_stream(chat_nats::subjects::INBOX_STREAM).await?;
    let config = inbox.info().await?.config.clone();
    anyhow::ensure!(config.republish.is_some(), "the inbox stream republishes its copies");
    js.update_stream(async_nats::jetstream::stream::Config { republish: None, ..config.clone() }).await?;
    let seq = js.publish(chat_nats::subjects::inbox(user), serde_json::to_vec(stored)?.into()).await?.await?.sequence;
    js.update_stream(config).await?;
    Ok(seq)
}

/// A copy of `first`'s conversation stored with no sequencer behind it.
fn unannounced(a_id: i64, b_id: i64, first: &Value) -> chat_nats::envelope::StoredMessage {
    chat_nats::envelope::StoredMessage {
        id: id(first) + 1,
        conv: chat_nats::subjects::ConvId::direct(a_id, b_id).to_string(),
        from: a_id,
        device: "a1".into(),
        cid: "silent".into(),
        kind: chat_nats::envelope::MessageKind::Text,
        body: "unannounced".into(),
        ts: 0,
        n: 2,
        ..Default::default()
    }
}

/// Wake-ups on `chat.live.<user>` are core NATS (at-most-once). A copy whose
/// wake-up never came is still delivered, in order, by the gateway's
/// periodic re-read (`CHAT_LIVE_POLL_SECS`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_whose_wake_up_was_lost_is_delivered_by_the_re_read() -> Result<()> {
    let s = stack().env("CHAT_LIVE_POLL_SECS", "1").start().await?;
    let (a, b) = (s.user("alice", "a1").await?, s.user("bob", "b1").await?);
    let (mut cb, _) = s.live(0, &b).await?;
    let (mut ca, _) = s.live(0, &a).await?;
    let first = ca.send_to_user("w1", &b.user_id, "announced").await?;
    assert_eq!(cb.next_msg().await?["id"], first["id"]);
    // Only the re-read can find this one.
    let (a_id, b_id): (i64, i64) = (a.user_id.parse()?, b.user_id.parse()?);
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    store_unannounced(&js, b_id, &unannounced(a_id, b_id, &first)).await?;
    let m = cb.next_msg().await?;
    assert_eq!((m["body"].as_str(), m["cid"].as_str()), (Some("unannounced"), None));
    // And live delivery goes on after it, in inbox order.
    let next = ca.send_to_user("w2", &b.user_id, "announced again").await?;
    assert_eq!(cb.next_msg().await?["id"], next["id"]);
    Ok(())
}

const OPERATOR: &str = "operator-credential-for-durability-0123456789";

/// Live copies come as the inbox stream republished them, each with the
/// sequence of its user's copy before it: a device whose last delivered
/// copy is that one gets it with no read of the stream. A copy that was
/// never announced breaks the chain: the next copy names it as its
/// predecessor, so the gateway reads the stream from its last delivered
/// copy and delivers both, in inbox order, at once (long before the
/// periodic re-read, which is 60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_copies_are_pushed_and_a_gap_in_their_chain_is_read() -> Result<()> {
    let s = stack().env("CHAT_OPERATOR_TOKEN", OPERATOR).start().await?;
    let gw = s.addr(0);
    let (a, b) = (s.user("alice", "a1").await?, s.user("bob", "b1").await?);
    let (mut cb, _) = s.live(0, &b).await?;
    let (mut ca, _) = s.live(0, &a).await?;
    // Once a first copy is through, both delivery tasks are past their
    // first read (which may find a copy stored meanwhile).
    let first = ca.send_to_user("p0", &b.user_id, "warm-up").await?;
    assert_eq!(cb.next_msg().await?["id"], first["id"]);
    let copies = |e: &chat_tests::prom::Exposition, how| e.value("chat_live_copies_total", &[("how", how)]);
    let g0 = chat_tests::prom::metrics(&gw, Some(OPERATOR)).await?;
    let mut sent = Vec::new();
    for i in 1..=3 {
        sent.push(ca.send_to_user(&format!("p{i}"), &b.user_id, &format!("pushed {i}")).await?["id"].clone());
    }
    for want in &sent {
        assert_eq!(&cb.next_msg().await?["id"], want);
    }
    let g1 = chat_tests::prom::metrics(&gw, Some(OPERATOR)).await?;
    assert!(copies(&g1, "pushed") - copies(&g0, "pushed") >= 3.0, "bob's three copies were pushed");
    assert_eq!(copies(&g1, "read") - copies(&g0, "read"), 0.0, "and none was read");

    let (a_id, b_id): (i64, i64) = (a.user_id.parse()?, b.user_id.parse()?);
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let last = ca.send_to_user("p4", &b.user_id, "before the gap").await?;
    assert_eq!(cb.next_msg().await?["id"], last["id"]);
    store_unannounced(&js, b_id, &unannounced(a_id, b_id, &last)).await?;
    let next = ca.send_to_user("p5", &b.user_id, "after the gap").await?;
    let m = cb.next_msg().await?;
    assert_eq!((m["body"].as_str(), m["cid"].as_str()), (Some("unannounced"), None), "the gap first: {m}");
    assert_eq!(cb.next_msg().await?["id"], next["id"]);
    let g2 = chat_tests::prom::metrics(&gw, Some(OPERATOR)).await?;
    assert!(copies(&g2, "read") - copies(&g1, "read") >= 1.0, "the unannounced copy was read");
    Ok(())
}

/// A round whose outcome records cannot be stored is redone, not acked
/// away: with the acks bucket refusing writes (its stream full, discard
/// new), a send is still acked (its message and copies are durable), its
/// ingress message is redelivered to be redone rather than acked without
/// a record, and once the bucket takes writes again its record appears, so
/// a retry after the dedupe windows is answered from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_outcome_record_failed_is_redone_until_recorded() -> Result<()> {
    let s = stack().start().await?;
    let alice = s.user("alice", "a1").await?;
    let bob = s.user("bob", "b1").await?;
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let acks_stream = format!("KV_{}", chat_nats::subjects::ACKS_BUCKET);
    let original = js.get_stream(&acks_stream).await?.info().await?.config.clone();
    let mut full = original.clone();
    full.max_bytes = 1;
    full.discard = async_nats::jetstream::stream::DiscardPolicy::New;
    js.update_stream(full).await?;
    let acks = js.get_key_value(chat_nats::subjects::ACKS_BUCKET).await?;
    assert!(acks.put("probe", bytes::Bytes::from_static(b"x")).await.is_err(), "the bucket refuses writes");

    let (mut ca, _) = s.live(0, &alice).await?;
    let ack = ca.send_to_user("r1", &bob.user_id, "recorded later").await?;
    // Its record could not be written: the ingress message comes back.
    let ingress = js.get_stream(chat_nats::subjects::INGRESS_STREAM).await?;
    wait_for("the send's ingress message redelivered", Duration::from_secs(30), || {
        let ingress = ingress.clone();
        async move {
            let mut infos = ingress.consumers();
            let mut redelivered = 0;
            while let Some(Ok(info)) = futures::StreamExt::next(&mut infos).await {
                redelivered += info.num_redelivered;
            }
            (redelivered > 0).then_some(())
        }
    })
    .await?;

    js.update_stream(original).await?;
    let from: i64 = alice.user_id.parse()?;
    let key = chat_nats::subjects::dedupe_key(from, &alice.device_id, "r1");
    let record = wait_for("the send's outcome record", Duration::from_secs(30), || {
        let (acks, key) = (acks.clone(), key.clone());
        async move { acks.get(&key).await.ok().flatten() }
    })
    .await?;
    let recorded: Value = serde_json::from_slice(&record)?;
    assert_eq!(recorded["result"]["id"], ack["id"], "the record names the message as acked: {recorded}");
    let (msgs, _) = s.connect(0, &bob).await?.sync(None).await?;
    assert_eq!(msgs.iter().filter(|m| m["body"] == "recorded later").count(), 1, "stored once: {msgs:?}");
    Ok(())
}
