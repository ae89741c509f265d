//! Group commit: sends that arrive together are sequenced as one round,
//! stored with atomic batches, and every invariant still holds, also when
//! the worker is SIGKILLed in the middle of rounds.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Result};
use chat_client::{Conn, Login};
use chat_tests::wait_for;
use serde_json::{json, Value};

use crate::stack::{stack, Stack};

const SENDERS: usize = 10;
const PER_SENDER: usize = 40;

/// Sends `n` messages to `to` without waiting between them, then collects
/// every ack; a send refused as `timeout`/`unavailable` is sent again with
/// the same cid (what a client does). Returns cid → message id.
async fn pipelined(c: &mut Conn, prefix: &str, to: Value, n: usize) -> Result<HashMap<String, u64>> {
    pipelined_cids(c, (0..n).map(|i| format!("{prefix}-{i}")).collect(), to).await
}

/// [`pipelined`] for the given cids.
async fn pipelined_cids(c: &mut Conn, mut pending: BTreeSet<String>, to: Value) -> Result<HashMap<String, u64>> {
    let frame = |cid: &str| json!({"type": "send", "cid": cid, "to": to, "body": format!("body {cid}")});
    for cid in &pending {
        c.send_json(&frame(cid)).await?;
    }
    let mut acked = HashMap::new();
    let mut retries = 0;
    while !pending.is_empty() {
        let v = c.wait_for("ack or error", |v| v["type"] == "ack" || v["type"] == "error").await?;
        let cid = v["cid"].as_str().unwrap_or_default().to_owned();
        match v["type"].as_str() {
            Some("ack") => {
                pending.remove(&cid);
                acked.insert(cid, v["id"].as_str().unwrap().parse()?);
            }
            _ if matches!(v["code"].as_str(), Some("timeout" | "unavailable")) && retries < 200 => {
                retries += 1;
                c.send_json(&frame(&cid)).await?;
            }
            _ => bail!("send {cid} refused: {v}"),
        }
    }
    Ok(acked)
}

/// Users, one group of all of them, and one idle connection per sender.
async fn setup(s: &Stack) -> Result<(Vec<Login>, String, String)> {
    let mut users = Vec::new();
    for i in 0..SENDERS {
        users.push(s.user(&format!("gc{i}"), "d1").await?);
    }
    let others: Vec<&str> = users[1..].iter().map(|u| u.user_id.as_str()).collect();
    let g = s.create_group(&users[0], "busy", &others).await?;
    Ok((users, g["group_id"].as_str().unwrap().to_owned(), g["conv"].as_str().unwrap().to_owned()))
}

/// Every sender sends PER_SENDER messages to the group at once (the first
/// two also 1:1 to each other); returns every acked id per conversation.
async fn send_all(s: &Stack, users: &[Login], gid: &str) -> Result<Vec<tokio::task::JoinHandle<Result<Vec<u64>>>>> {
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let mut c = s.connect(0, u).await?;
        let to = json!({"group": gid});
        let peer = users[(i + 1) % 2].user_id.clone();
        let direct = i < 2;
        tasks.push(tokio::spawn(async move {
            c.timeout = Duration::from_secs(60);
            let mut ids: Vec<u64> = pipelined(&mut c, &format!("g{i}"), to, PER_SENDER).await?.into_values().collect();
            if direct {
                ids.extend(pipelined(&mut c, &format!("d{i}"), json!({"user": peer}), PER_SENDER).await?.into_values());
            }
            Ok(ids)
        }));
    }
    Ok(tasks)
}

/// History pages of `conv`, oldest first, read back to the beginning.
async fn history(s: &Stack, who: &Login, conv: &str) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut query = "limit=100".to_string();
    loop {
        let page = s.http(0).history(&who.token, conv, &query).await?;
        let batch: Vec<u64> =
            page["messages"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().parse().unwrap()).collect();
        let Some(first) = batch.first().copied() else { break };
        ids.splice(0..0, batch);
        if !page["has_more"].as_bool().unwrap_or(false) {
            break;
        }
        query = format!("limit=100&before={first}");
    }
    Ok(ids)
}

/// The checks: each acked message once in history and once in every
/// member's inbox (read by a fresh device from the start), in one order
/// with strictly increasing ids.
async fn check(s: &Stack, users: &[Login], conv: &str, acked: &HashSet<u64>) -> Result<()> {
    let hist = history(s, &users[0], conv).await?;
    assert!(hist.windows(2).all(|w| w[0] < w[1]), "history ids strictly increase");
    let hist_set: HashSet<u64> = hist.iter().copied().collect();
    assert_eq!(hist_set.len(), hist.len(), "no message twice in history");
    assert!(acked.is_subset(&hist_set), "every acked group message is in history");
    assert_eq!(hist.len(), SENDERS * PER_SENDER + 1, "nothing beyond the acked sends and the creation message");
    for u in [&users[0], &users[SENDERS / 2], &users[SENDERS - 1]] {
        let name = format!("gc{}", users.iter().position(|x| x.user_id == u.user_id).unwrap());
        let inbox = inbox_of(s, &name, "reader", conv).await?;
        assert_eq!(inbox, hist, "{name}'s inbox has the group's messages exactly once, in history order");
    }
    Ok(())
}

/// The ids of `conv`'s messages in the inbox of user `name`, read by a new
/// device `device` from the beginning.
async fn inbox_of(s: &Stack, name: &str, device: &str, conv: &str) -> Result<Vec<u64>> {
    let mut c = s.connect(0, &s.device(name, device).await?).await?;
    c.timeout = Duration::from_secs(60);
    let (msgs, _) = c.sync(None).await?;
    Ok(msgs.iter().filter(|m| m["conv"] == conv).map(|m| m["id"].as_str().unwrap().parse().unwrap()).collect())
}

/// How many of the inbox stream's messages were stored by an atomic batch.
async fn batched_copies(s: &Stack) -> Result<usize> {
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let stream = js.get_stream(chat_nats::subjects::INBOX_STREAM).await?;
    let last = stream.get_info().await?.state.last_sequence;
    let mut n = 0;
    for seq in 1..=last {
        let m = stream.direct_get(seq).await?;
        if m.headers.get("Nats-Batch-Id").is_some() {
            n += 1;
        }
    }
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_are_batched_and_keep_every_invariant() -> Result<()> {
    let s = stack().worker_metrics().start().await?;
    let (users, gid, conv) = setup(&s).await?;
    let mut acked = HashSet::new();
    let mut direct = Vec::new();
    for (i, t) in send_all(&s, &users, &gid).await?.into_iter().enumerate() {
        let ids = t.await??;
        if i < 2 {
            direct.extend(ids[PER_SENDER..].iter().copied());
        }
        acked.extend(ids.into_iter().take(PER_SENDER));
    }
    assert_eq!(acked.len(), SENDERS * PER_SENDER, "every send acked with its own id");
    check(&s, &users, &conv, &acked).await?;
    let dm = chat_client::direct_conv(&users[0].user_id, &users[1].user_id);
    let dm_hist = history(&s, &users[0], &dm).await?;
    let direct: HashSet<u64> = direct.into_iter().collect();
    assert_eq!(dm_hist.iter().copied().collect::<HashSet<_>>(), direct, "1:1 messages once each");
    let batched = batched_copies(&s).await?;
    assert!(batched > 0, "no inbox copy was stored by an atomic batch: rounds never formed");
    // The worker's metrics saw the same: batched rounds, and every message
    // of every round sequenced once.
    let m = chat_tests::prom::metrics(&s.worker_metrics(0)?, None).await?;
    let by_mode = |mode| m.value("chat_sequencer_messages_total", &[("mode", mode)]);
    let rounds = |mode| m.value("chat_sequencer_commit_seconds_count", &[("mode", mode)]);
    assert!(by_mode("batch") + by_mode("fast") > 0.0 && rounds("batch") + rounds("fast") > 0.0);
    let all = by_mode("batch") + by_mode("single") + by_mode("fast");
    assert_eq!(all, m.value("chat_sequencer_round_messages_sum", &[]));
    assert!(all >= (SENDERS * PER_SENDER) as f64);
    Ok(())
}

/// Ingress messages stored so far (the work queue's last sequence).
async fn ingress_written(s: &Stack) -> Result<u64> {
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    Ok(js.get_stream(chat_nats::subjects::INGRESS_STREAM).await?.get_info().await?.state.last_sequence)
}

/// `CHAT_SEND_PATH`: each text send is sequenced once whichever way it
/// came. `direct`: from the gateway's hand-off to the partition's owner,
/// nothing written to ingress; `beside`: from the hand-off, its ingress
/// message then acked without being sequenced again; `ingress`: from
/// ingress. Each message is once in history and once in both inboxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_sends_are_sequenced_once_whichever_way_they_reach_the_owner() -> Result<()> {
    const N: usize = 30;
    for path in ["direct", "beside", "ingress"] {
        let s =
            stack().env("CHAT_SEND_PATH", path).env("CHAT_DELIVERY_RECEIPTS", "false").worker_metrics().start().await?;
        let wk = s.worker_metrics(0)?;
        wait_for("the worker to own every partition", Duration::from_secs(30), || {
            let wk = wk.clone();
            async move {
                let e = chat_tests::prom::metrics(&wk, None).await.ok()?;
                (e.value("chat_partitions_owned", &[]) == 4.0).then_some(())
            }
        })
        .await?;
        let (a, b) = (s.user("fpa", "d1").await?, s.user("fpb", "d1").await?);
        let mut c = s.connect(0, &a).await?;
        let first = pipelined(&mut c, "f", json!({"user": b.user_id}), N).await?;
        // Retries of sends just acked (their records may still be on the
        // way) get the same ids and store nothing.
        let again: BTreeSet<String> = first.keys().take(5).cloned().collect();
        for (cid, id) in pipelined_cids(&mut c, again, json!({"user": b.user_id})).await? {
            assert_eq!(first[&cid], id, "{path}: a retry of {cid} got another id");
        }
        let mut acked: Vec<u64> = first.into_values().collect();
        acked.sort_unstable();
        ingress_drained(&s).await?;
        let dm = chat_client::direct_conv(&a.user_id, &b.user_id);
        assert_eq!(history(&s, &a, &dm).await?, acked, "{path}: each acked send once in history");
        for name in ["fpa", "fpb"] {
            assert_eq!(inbox_of(&s, name, "reader", &dm).await?, acked, "{path}: {name}'s inbox");
        }
        let m = chat_tests::prom::metrics(&wk, None).await?;
        let by_mode = |mode| m.value("chat_sequencer_messages_total", &[("mode", mode)]);
        let (handed, ingress) = (by_mode("fast"), by_mode("batch") + by_mode("single"));
        let written = ingress_written(&s).await?;
        // The retries are answered from the records: through a hand-off's
        // round (counted with it) or through ingress (`direct`: left to
        // ingress while the owner was still recording them; `beside`, the
        // ingress copy is a duplicate and never sequenced).
        assert!(
            (N as f64..=(N + 5) as f64).contains(&(handed + ingress)),
            "{path}: {handed} from hand-offs and {ingress} from ingress for {N} sends and 5 retries"
        );
        match path {
            "direct" => assert!(handed >= N as f64 && written <= 5, "{path}: {written} ingress writes"),
            "beside" => {
                assert!(handed >= N as f64 && ingress == 0.0 && written == N as u64, "{path}: {written} writes")
            }
            _ => assert!(handed == 0.0 && written == N as u64, "{path}: {handed} hand-offs, {written} writes"),
        }
    }
    Ok(())
}

/// `CHAT_SEND_PATH=direct` while a partition has no owner: the hand-off
/// finds nobody (no responders), so the gateway writes the send to
/// ingress at once, where the next owner finds it; the sender is acked
/// then, with the message stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_with_no_owner_to_hand_it_to_waits_in_ingress_for_the_next() -> Result<()> {
    let mut s = stack().workers(0).env("CHAT_SEND_PATH", "direct").worker_metrics().start().await?;
    let (a, b) = (s.user("noa", "d1").await?, s.user("nob", "d1").await?);
    let mut c = s.connect(0, &a).await?;
    c.timeout = Duration::from_secs(30);
    c.send_json(&json!({"type": "send", "cid": "lonely", "to": {"user": b.user_id}, "body": "anyone?"})).await?;
    wait_for("the send in ingress", Duration::from_secs(10), || {
        let s = &s;
        async move { (ingress_written(s).await.ok()? == 1).then_some(()) }
    })
    .await?;
    let w = s.add_worker(0)?;
    let ack = c.wait_for("the ack", |v| v["type"] == "ack" || v["type"] == "error").await?;
    assert_eq!(ack["type"], "ack", "acked once an owner took the partition: {ack}");
    let id: u64 = ack["id"].as_str().unwrap().parse()?;
    let dm = chat_client::direct_conv(&a.user_id, &b.user_id);
    assert_eq!(history(&s, &a, &dm).await?, vec![id]);
    assert_eq!(inbox_of(&s, "nob", "reader", &dm).await?, vec![id]);
    let m = chat_tests::prom::metrics(&s.worker_metrics(w)?, None).await?;
    let by_mode = |mode| m.value("chat_sequencer_messages_total", &[("mode", mode)]);
    assert_eq!((by_mode("fast"), by_mode("batch") + by_mode("single")), (0.0, 1.0), "sequenced from ingress");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_round_loses_and_duplicates_nothing() -> Result<()> {
    let mut s = stack().env("CHAT_SEND_TIMEOUT_MS", "3000").start().await?;
    let (users, gid, conv) = setup(&s).await?;
    let tasks = send_all(&s, &users, &gid).await?;
    s.wait_stored((SENDERS * PER_SENDER / 5) as u64).await?;
    s.kill_worker(0);
    s.add_worker(0)?;
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await??.into_iter().take(PER_SENDER));
    }
    assert_eq!(acked.len(), SENDERS * PER_SENDER, "every send acked once its retries went through");
    check(&s, &users, &conv, &acked).await
}

/// The gateway's ingress writer: concurrent sends share an atomic batch,
/// a round holding a retry falls back to one publish each (the retry is
/// reported as a duplicate, the new sends are stored once), and a lone
/// send is a plain publish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingress_rounds_are_batched_and_retries_in_them_dedupe() -> Result<()> {
    use chat_gateway::messaging::ingress::Ingress;
    let nats = chat_tests::NatsServer::start()?;
    let client = chat_tests::nats_admin(&nats.url).await?;
    let storage = chat_nats::provision::provision(&client, &Default::default()).await?;
    let ingress = Ingress::start(storage.js.clone());
    let subject = chat_nats::subjects::ingress(0);
    let publish_all = |ids: Vec<String>| {
        let (ingress, subject) = (ingress.clone(), subject.clone());
        async move {
            let writes = ids.iter().map(|id| ingress.publish(subject.clone(), id, bytes::Bytes::from(id.clone())));
            futures::future::join_all(writes).await.into_iter().collect::<Result<Vec<_>, _>>()
        }
    };
    let first: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let stored = publish_all(first.clone()).await.map_err(anyhow::Error::msg)?;
    assert!(stored.iter().all(|s| !s.duplicate));
    let stream = storage.ingress.clone();
    let count = || async { anyhow::Ok(stream.clone().info().await?.state.messages) };
    assert_eq!(count().await?, 200);
    let mut batched = 0;
    for seq in 1..=200 {
        if stream.direct_get(seq).await?.headers.get("Nats-Batch-Id").is_some() {
            batched += 1;
        }
    }
    assert!(batched > 0, "200 concurrent sends never shared a batch");

    // Retries of half of them, mixed with new ones.
    let mixed: Vec<String> = (100..300).map(|i| format!("k{i}")).collect();
    let stored = publish_all(mixed).await.map_err(anyhow::Error::msg)?;
    for (i, s) in (100..300).zip(&stored) {
        assert_eq!(s.duplicate, i < 200, "k{i}");
    }
    assert_eq!(count().await?, 300, "each new send once, no retry twice");

    // The same send twice in one round (a device on two connections): once.
    let mut again: Vec<String> = (300..320).map(|i| format!("k{i}")).collect();
    again.push("k300".into());
    let stored = publish_all(again).await.map_err(anyhow::Error::msg)?;
    assert_eq!(stored.iter().filter(|s| s.duplicate).count(), 1, "one of the two k300 is the duplicate");
    assert_eq!(count().await?, 320);

    let lone = ingress.publish(subject.clone(), "lone", "x".into()).await.map_err(anyhow::Error::msg)?;
    assert!(!lone.duplicate);
    let last = stream.clone().info().await?.state.last_sequence;
    assert!(stream.direct_get(last).await?.headers.get("Nats-Batch-Id").is_none(), "a lone send is a plain publish");
    Ok(())
}

/// Sends `n` messages to `to` without waiting between them and collects
/// acks until every one is acked or the connection goes (nats-server
/// killed under it); returns the ids acked.
async fn until_cut_off(c: &mut Conn, prefix: &str, to: Value, n: usize) -> Vec<u64> {
    let mut acked = Vec::new();
    for i in 0..n {
        let frame = json!({"type": "send", "cid": format!("{prefix}-{i}"), "to": to, "body": format!("{prefix} {i}")});
        if c.send_json(&frame).await.is_err() {
            return acked;
        }
    }
    while acked.len() < n {
        match c.wait_for("ack", |v| v["type"] == "ack" || v["type"] == "error").await {
            Ok(v) if v["type"] == "ack" => acked.push(v["id"].as_str().unwrap().parse().unwrap()),
            Ok(_) => continue, // refused while NATS is down: not acked
            Err(_) => break,
        }
    }
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_round_keeps_every_acked_message_and_shows_nothing_half_done() -> Result<()> {
    let mut s = stack().env("CHAT_SEND_TIMEOUT_MS", "3000").start().await?;
    let (users, gid, conv) = setup(&s).await?;
    let mut tasks = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let mut c = s.connect(0, u).await?;
        let to = json!({"group": gid});
        tasks.push(tokio::spawn(async move {
            c.timeout = Duration::from_secs(5);
            until_cut_off(&mut c, &format!("n{i}"), to, PER_SENDER).await
        }));
    }
    s.wait_stored((SENDERS * PER_SENDER / 5) as u64).await?;
    s.nats.kill(); // SIGKILL, mid-round
    let mut acked = HashSet::new();
    for t in tasks {
        acked.extend(t.await?);
    }
    assert!(!acked.is_empty(), "nothing was acked before the kill: the test proves nothing");
    s.restart_all().await?; // nats-server on the same store, new gateway and worker
    ingress_drained(&s).await?;
    let hist = history(&s, &users[0], &conv).await?;
    assert!(hist.windows(2).all(|w| w[0] < w[1]), "history ids strictly increase");
    let hist_set: HashSet<u64> = hist.iter().copied().collect();
    assert_eq!(hist_set.len(), hist.len(), "no message twice in history");
    assert!(acked.is_subset(&hist_set), "an acked message was lost ({} acked)", acked.len());
    for u in [&users[0], &users[SENDERS - 1]] {
        let name = format!("gc{}", users.iter().position(|x| x.user_id == u.user_id).unwrap());
        let inbox = inbox_of(&s, &name, "after", &conv).await?;
        assert_eq!(inbox, hist, "{name}: every stored message in the inbox once, in order: nothing half-visible");
    }
    Ok(())
}

/// Waits until what was accepted but not finished before a crash has been
/// finished by the partitions' new owner (the ingress stream is empty).
async fn ingress_drained(s: &Stack) -> Result<()> {
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    wait_for("ingress drained", Duration::from_secs(60), || {
        let js = js.clone();
        async move {
            let mut st = js.get_stream(chat_nats::subjects::INGRESS_STREAM).await.ok()?;
            (st.info().await.ok()?.state.messages == 0).then_some(())
        }
    })
    .await
}

/// Sends `{prefix}-0..n` to `to`, one every `every`, until the first send
/// is refused or the connection goes (nats-server killed under it); then
/// collects the acks still coming. Returns the acked cids' ids.
async fn paced_until_cut_off(
    mut c: Conn,
    prefix: String,
    to: Value,
    n: usize,
    every: Duration,
) -> HashMap<String, u64> {
    let frame = |i: usize| json!({"type": "send", "cid": format!("{prefix}-{i}"), "to": to, "body": format!("body {prefix}-{i}")});
    c.timeout = Duration::from_secs(5);
    let mut acked = HashMap::new();
    let mut tick = tokio::time::interval(every);
    let (mut sent, mut cut_off) = (0, false);
    while acked.len() < n {
        tokio::select! {
            _ = tick.tick(), if sent < n && !cut_off => {
                cut_off = c.send_json(&frame(sent)).await.is_err();
                sent += 1;
            }
            v = c.wait_for("ack", |v| v["type"] == "ack" || v["type"] == "error") => match v {
                Ok(v) if v["type"] == "ack" => {
                    acked.insert(v["cid"].as_str().unwrap().to_owned(), v["id"].as_str().unwrap().parse().unwrap());
                }
                Ok(_) => cut_off = true, // refused while NATS is down: not acked
                Err(_) => break,         // closed, or no ack for 5 s
            }
        }
    }
    acked
}

/// Issue #13's point 6(b): 50 senders (25 pairs) at 1,000 msgs/s offered in
/// total, and nats-server SIGKILLed in the middle and restarted on the same
/// store (with a new gateway and worker). Each sender then reconnects and
/// sends again, with the same cid, everything it has no ack for. Afterwards
/// each pair's history holds each cid exactly once, with the id it was
/// acked with, ids strictly increasing; both members' inboxes hold the
/// conversation exactly as history does (nothing half-visible, no gap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_under_fifty_senders_keeps_every_acked_message_once() -> Result<()> {
    const SENDERS: usize = 50;
    const PER_SENDER: usize = 40;
    const EVERY: Duration = Duration::from_millis(50);
    let mut s = stack().env("CHAT_SEND_TIMEOUT_MS", "3000").start().await?;
    let (_, _, ids) = bulk_users(&s, SENDERS, |i| format!("nk{i:02}")).await?;
    let senders: Vec<Login> = ids.iter().map(|u| mint(&s, u, "d1")).collect::<Result<_>>()?;
    let peer = |i: usize| json!({"user": senders[i ^ 1].user_id});
    let mut tasks = Vec::new();
    for (i, u) in senders.iter().enumerate() {
        let c = s.connect(0, u).await?;
        tasks.push(tokio::spawn(paced_until_cut_off(c, format!("k{i}"), peer(i), PER_SENDER, EVERY)));
    }
    s.wait_stored((SENDERS * PER_SENDER / 4) as u64).await?;
    s.nats.kill(); // SIGKILL, with rounds in flight
    let mut before = Vec::new();
    for t in tasks {
        before.push(t.await?);
    }
    let acked_before: usize = before.iter().map(HashMap::len).sum();
    assert!(acked_before > 0, "nothing was acked before the kill: the test proves nothing");
    assert!(acked_before < SENDERS * PER_SENDER, "every send was acked before the kill: the test proves nothing");
    s.restart_all().await?;
    let mut after = Vec::new();
    for (i, u) in senders.iter().enumerate() {
        let mut c = s.connect(0, u).await?;
        c.timeout = Duration::from_secs(60);
        let unacked = (0..PER_SENDER).map(|k| format!("k{i}-{k}")).filter(|cid| !before[i].contains_key(cid)).collect();
        after.push(pipelined_cids(&mut c, unacked, peer(i)).await?);
    }
    ingress_drained(&s).await?;
    for k in 0..SENDERS / 2 {
        let (a, b) = (2 * k, 2 * k + 1);
        let conv = chat_client::direct_conv(&senders[a].user_id, &senders[b].user_id);
        let hist = history(&s, &senders[a], &conv).await?;
        assert!(hist.windows(2).all(|w| w[0] < w[1]), "{conv}: ids strictly increase");
        let acked: HashSet<u64> =
            [a, b].iter().flat_map(|&i| before[i].values().chain(after[i].values())).copied().collect();
        assert_eq!(acked.len(), 2 * PER_SENDER, "{conv}: every cid acked once, with its own id");
        assert_eq!(hist.iter().copied().collect::<HashSet<_>>(), acked, "{conv}: history is exactly the acked sends");
        assert_eq!(hist.len(), 2 * PER_SENDER, "{conv}: nothing stored twice");
        for i in [a, b] {
            assert_eq!(inbox_of(&s, &format!("nk{:02}", i + 1), "after", &conv).await?, hist, "sender {i}'s inbox");
        }
    }
    Ok(())
}

/// A group whose copies do not fit one batch (1,200 members: two inbox
/// batches per message) through a worker SIGKILL: every acked message is
/// in history once and in every member's inbox once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_larger_than_one_batch_survives_a_worker_kill() -> Result<()> {
    const MEMBERS: usize = 1200;
    let mut s = stack().env("CHAT_GROUP_MAX_MEMBERS", "1500").env("CHAT_SEND_TIMEOUT_MS", "3000").start().await?;
    let owner = s.user("bigowner", "d1").await?;
    // Members straight into PostgreSQL (one argon2 hash for all of them).
    let (db, hash, ids) = bulk_users(&s, MEMBERS - 1, |i| format!("member{i:04}")).await?;
    let members: Vec<&str> = ids.iter().map(String::as_str).collect();
    let g = s.create_group(&owner, "stadium", &members).await?;
    let (gid, conv) = (g["group_id"].as_str().unwrap().to_owned(), g["conv"].as_str().unwrap().to_owned());
    let mut c = s.connect(0, &owner).await?;
    c.timeout = Duration::from_secs(60);
    let sends = tokio::spawn(async move { pipelined(&mut c, "big", json!({"group": gid}), 20).await });
    s.wait_stored(5).await?;
    s.kill_worker(0);
    s.add_worker(0)?;
    let acked: HashSet<u64> = sends.await??.into_values().collect();
    assert_eq!(acked.len(), 20);
    let hist = history(&s, &owner, &conv).await?;
    assert!(hist.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(hist.len(), 21, "the creation message and each send once");
    assert!(acked.iter().all(|id| hist.contains(id)));
    for name in ["member0001", "member0600", "member1199"] {
        let inbox = inbox_of(&s, name, "phone", &conv).await?;
        assert_eq!(inbox, hist, "{name}'s inbox");
    }

    // A membership change is sequenced on its own (not in a batched round):
    // its 1,201 copies still go as atomic batches, not 1,201 fsyncs.
    let late = db.create_user("latecomer", &hash).await?.expect("new user").to_string();
    let path = format!("/v1/groups/{}/members", g["group_id"].as_str().unwrap());
    let (status, v) =
        s.http(0).request(chat_client::Method::POST, &path, Some(&owner.token), Some(json!({"user_id": late}))).await?;
    assert!(status < 300, "add member: {status} {v}");
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let inbox = js.get_stream(chat_nats::subjects::INBOX_STREAM).await?;
    // The newcomer has the highest id, so its copy is in the last batch.
    let newcomer = chat_nats::subjects::inbox(late.parse()?);
    wait_for("the newcomer's copy of the change", Duration::from_secs(60), || {
        let (inbox, newcomer) = (inbox.clone(), newcomer.clone());
        async move { inbox.direct_get_last_for_subject(newcomer).await.ok().map(|_| ()) }
    })
    .await?;
    for user in [&late, &ids[0], &ids[MEMBERS - 2]] {
        let user: i64 = user.parse()?;
        let copy = inbox.direct_get_last_for_subject(chat_nats::subjects::inbox(user)).await?;
        let m: Value = serde_json::from_slice(&copy.payload)?;
        assert_eq!(m["kind"], "system", "user {user}'s last copy is the membership change");
        assert!(copy.headers.get("Nats-Batch-Id").is_some(), "user {user}'s copy of the change was not batched");
    }
    Ok(())
}

/// Users 1..=n (named by `name`) straight into PostgreSQL with one argon2
/// hash for all: the database, the hash and their ids.
async fn bulk_users(
    s: &Stack,
    n: usize,
    name: impl Fn(usize) -> String,
) -> Result<(chat_gateway::store::Db, String, Vec<String>)> {
    let db = chat_gateway::store::Db::connect(&s.pg.url, 4)?;
    let hash = chat_gateway::auth::hash_password("password123");
    let mut ids = Vec::with_capacity(n);
    for i in 1..=n {
        ids.push(db.create_user(&name(i), &hash).await?.expect("new user").to_string());
    }
    Ok((db, hash, ids))
}

/// A device token minted with the stack's secret (no argon2 login): the
/// load tests need many devices quickly.
fn mint(s: &Stack, user_id: &str, device: &str) -> Result<Login> {
    let claims = chat_gateway::auth::Claims {
        user: user_id.parse()?,
        device: device.to_owned(),
        exp: chat_gateway::auth::now_secs() + 3600,
        gen: 0,
    };
    let token = chat_gateway::auth::issue(s.env["CHAT_TOKEN_SECRET"].as_bytes(), &claims);
    Ok(Login { token, user_id: user_id.to_owned(), device_id: device.to_owned(), edges: vec![] })
}

/// What one paced sender saw: every acked cid's id, and the cursors of the
/// inbox messages its live connection delivered, in arrival order.
struct Paced {
    acked: HashMap<String, u64>,
    cursors: Vec<u64>,
}

/// Sends `n` messages to `to`, one every `every`, without waiting for acks;
/// a send refused as `timeout`/`unavailable` goes again with the same cid.
/// Reads its live deliveries meanwhile and keeps reading until every send
/// is acked.
async fn paced(mut c: Conn, prefix: String, to: Value, n: usize, every: Duration) -> Result<Paced> {
    let frame = |cid: &str| json!({"type": "send", "cid": cid, "to": to, "body": format!("body {cid}")});
    c.timeout = Duration::from_secs(60);
    // Synced first, so that the inbox is delivered live from here on.
    let (before, _) = c.sync(None).await?;
    let cursors = before.iter().map(|m| m["cursor"].as_str().unwrap().parse()).collect::<Result<_, _>>()?;
    let mut out = Paced { acked: HashMap::new(), cursors };
    let mut tick = tokio::time::interval(every);
    let (mut sent, mut retries) = (0, 0);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while out.acked.len() < n {
        tokio::select! {
            _ = tick.tick(), if sent < n => {
                c.send_json(&frame(&format!("{prefix}-{sent}"))).await?;
                sent += 1;
            }
            v = c.next() => {
                let v = v?;
                let cid = v["cid"].as_str().unwrap_or_default().to_owned();
                match v["type"].as_str() {
                    Some("ack") => {
                        out.acked.insert(cid, v["id"].as_str().unwrap().parse()?);
                    }
                    Some("msg") => out.cursors.push(v["cursor"].as_str().unwrap().parse()?),
                    Some("error") if matches!(v["code"].as_str(), Some("timeout" | "unavailable")) && retries < 500 => {
                        retries += 1;
                        c.send_json(&frame(&cid)).await?;
                    }
                    Some("error") => bail!("send {cid} refused: {v}"),
                    _ => {}
                }
            }
            _ = tokio::time::sleep_until(deadline) => bail!("{prefix}: {} of {n} acked in 120 s", out.acked.len()),
        }
    }
    Ok(out)
}

/// Issue #13's crash test: 50 senders (25 pairs) at 1,000 msgs/s offered in
/// total, plus a 500-member group message stream, and the worker that owns
/// every partition SIGKILLed in the middle. Afterwards: every conversation's
/// history holds each sent cid exactly once (retries with the same cid
/// included), ids strictly increasing; every member's inbox holds the
/// conversation exactly as history does; and each sender's live deliveries
/// followed by a catch-up from its last live cursor are its whole inbox,
/// with no gap and no duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_under_fifty_senders_and_a_500_member_group_loses_and_duplicates_nothing() -> Result<()> {
    const SENDERS: usize = 50;
    const PER_SENDER: usize = 40;
    const MEMBERS: usize = 500;
    const GROUP_SENDS: usize = 10;
    // 50 senders, one send every 50 ms each: 1,000 sends/s offered.
    const EVERY: Duration = Duration::from_millis(50);
    let mut s = stack().env("CHAT_GROUP_MAX_MEMBERS", "600").env("CHAT_SEND_TIMEOUT_MS", "3000").start().await?;
    let owner = s.user("crowdowner", "d1").await?;
    let (_, _, ids) = bulk_users(&s, MEMBERS - 1, |i| format!("crowd{i:03}")).await?;
    let members: Vec<&str> = ids.iter().map(String::as_str).collect();
    let g = s.create_group(&owner, "crowd", &members).await?;
    let (gid, gconv) = (g["group_id"].as_str().unwrap().to_owned(), g["conv"].as_str().unwrap().to_owned());
    // The senders are the first 50 members, paired 2k <-> 2k+1.
    let senders: Vec<Login> = ids[..SENDERS].iter().map(|u| mint(&s, u, "d1")).collect::<Result<_>>()?;
    let mut tasks = Vec::new();
    for (i, u) in senders.iter().enumerate() {
        let c = s.connect(0, u).await?;
        let peer = &senders[i ^ 1].user_id;
        tasks.push(tokio::spawn(paced(c, format!("p{i}"), json!({"user": peer}), PER_SENDER, EVERY)));
    }
    let mut oc = s.connect(0, &owner).await?;
    oc.timeout = Duration::from_secs(60);
    let group = tokio::spawn(async move { pipelined(&mut oc, "crowd", json!({"group": gid}), GROUP_SENDS).await });
    s.wait_stored((SENDERS * PER_SENDER / 4) as u64).await?;
    s.kill_worker(0); // SIGKILL, with rounds in flight
    s.add_worker(0)?;
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(t.await??);
    }
    let group_acked: HashSet<u64> = group.await??.into_values().collect();
    assert_eq!(group_acked.len(), GROUP_SENDS);

    // Each pair's conversation: every cid of both senders exactly once.
    for k in 0..SENDERS / 2 {
        let (a, b) = (&senders[2 * k], &senders[2 * k + 1]);
        let conv = chat_client::direct_conv(&a.user_id, &b.user_id);
        let hist = history(&s, a, &conv).await?;
        assert!(hist.windows(2).all(|w| w[0] < w[1]), "{conv}: ids strictly increase");
        let acked: HashSet<u64> = seen[2 * k].acked.values().chain(seen[2 * k + 1].acked.values()).copied().collect();
        assert_eq!(acked.len(), 2 * PER_SENDER, "{conv}: every cid acked with its own id");
        assert_eq!(hist.iter().copied().collect::<HashSet<_>>(), acked, "{conv}: history is exactly the acked sends");
        assert_eq!(hist.len(), 2 * PER_SENDER, "{conv}: nothing stored twice");
    }
    // The group: history and three members' inboxes agree.
    let ghist = history(&s, &owner, &gconv).await?;
    assert!(ghist.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(ghist.len(), GROUP_SENDS + 1, "the creation message and each group send once");
    assert!(group_acked.iter().all(|id| ghist.contains(id)));
    for name in ["crowd001", "crowd250", "crowd499"] {
        assert_eq!(inbox_of(&s, name, "tablet", &gconv).await?, ghist, "{name}'s inbox");
    }
    // Every sender's inbox, read whole by its own device, is what it got
    // live followed by a catch-up from its last live cursor.
    for (i, u) in senders.iter().enumerate() {
        let mut c = s.connect(0, u).await?;
        c.timeout = Duration::from_secs(60);
        let (all, _) = c.sync(None).await?;
        let all: Vec<u64> = all.iter().map(|m| m["cursor"].as_str().unwrap().parse().unwrap()).collect();
        let live = &seen[i].cursors;
        let from = live.last().map(u64::to_string);
        let mut c = s.connect(0, u).await?;
        c.timeout = Duration::from_secs(60);
        let (rest, _) = c.sync(from.as_deref()).await?;
        let mut joined = live.clone();
        joined.extend(rest.iter().map(|m| m["cursor"].as_str().unwrap().parse::<u64>().unwrap()));
        assert_eq!(joined, all, "sender {i}: live then catch-up from the cursor is the whole inbox, once each");
        // Its inbox holds its pair's conversation and the group's messages.
        let expected = 2 * PER_SENDER + ghist.len();
        assert_eq!(all.len(), expected, "sender {i}: inbox size");
    }
    Ok(())
}

/// A group message whose copies need several commits gets a lane of its own
/// (`workers/src/lane.rs`): the partition's other conversations go on while
/// it is stored, instead of waiting for all of its commits. Four members
/// each send one message to a 2,500-member group (three inbox commits per
/// message, the four one after another in conversation order) while a 1:1
/// pair keeps sending on the same partition: several 1:1 sends are acked
/// between the first and the last group ack, the group's order holds in
/// history and in the members' inboxes, and nothing is stored twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_too_big_for_one_commit_does_not_hold_other_conversations() -> Result<()> {
    const MEMBERS: usize = 2500;
    let s = stack().env("CHAT_PARTITIONS", "1").env("CHAT_GROUP_MAX_MEMBERS", "3000").start().await?;
    let owner = s.user("laneowner", "d1").await?;
    let (_, _, ids) = bulk_users(&s, MEMBERS - 1, |i| format!("lane{i:04}")).await?;
    let members: Vec<&str> = ids.iter().map(String::as_str).collect();
    let g = s.create_group(&owner, "arena", &members).await?;
    let (gid, gconv) = (g["group_id"].as_str().unwrap().to_owned(), g["conv"].as_str().unwrap().to_owned());
    // The 1:1 pair, sending one message after another (each waits for its
    // ack) until the group's sends are all acked.
    let (a, b) = (mint(&s, &ids[0], "d1")?, mint(&s, &ids[1], "d1")?);
    let mut dm = s.connect(0, &a).await?;
    dm.timeout = Duration::from_secs(60);
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = done.clone();
    let peer = b.user_id.clone();
    let dms = tokio::spawn(async move {
        let mut acks = Vec::new();
        let mut i = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let ack = dm.send_to_user(&format!("dm-{i}"), &peer, "meanwhile").await?;
            acks.push((tokio::time::Instant::now(), ack["id"].as_str().unwrap().parse::<u64>()?));
            i += 1;
        }
        anyhow::Ok(acks)
    });
    let mut senders = Vec::new();
    for (k, u) in ids[2..6].iter().enumerate() {
        let mut c = s.connect(0, &mint(&s, u, "d1")?).await?;
        c.timeout = Duration::from_secs(60);
        let to = json!({"group": gid});
        senders.push(tokio::spawn(async move {
            let ack = c
                .send_frame_and_ack(
                    json!({"type": "send", "cid": format!("big-{k}"), "to": to, "body": "to everyone"}),
                    &format!("big-{k}"),
                )
                .await?;
            anyhow::Ok((tokio::time::Instant::now(), ack["id"].as_str().unwrap().parse::<u64>()?))
        }));
    }
    let mut group_acks = Vec::new();
    for t in senders {
        group_acks.push(t.await??);
    }
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let dm_acks = dms.await??;
    let first = group_acks.iter().map(|(t, _)| *t).min().unwrap();
    let last = group_acks.iter().map(|(t, _)| *t).max().unwrap();
    let between = dm_acks.iter().filter(|(t, _)| *t > first && *t < last).count();
    assert!(
        between >= 2,
        "only {between} 1:1 sends were acked while the group's big messages were stored: they waited for them"
    );
    // Order and exactly-once, in history and in the inboxes.
    let hist = history(&s, &owner, &gconv).await?;
    assert!(hist.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(hist.len(), 5, "the creation message and the four sends once each");
    assert!(group_acks.iter().all(|(_, id)| hist.contains(id)));
    for name in ["lane0001", "lane1250", "lane2499"] {
        assert_eq!(inbox_of(&s, name, "tablet", &gconv).await?, hist, "{name}'s inbox");
    }
    let dm_hist = history(&s, &a, &chat_client::direct_conv(&a.user_id, &b.user_id)).await?;
    let dm_ids: Vec<u64> = dm_acks.iter().map(|(_, id)| *id).collect();
    assert_eq!(dm_hist, dm_ids, "every 1:1 send once, in order");
    Ok(())
}

/// The read marks of a round are spread together (`workers/src/reads.rs`,
/// `process_round`): 60 marks queued while no worker runs reach both
/// participants' inboxes exactly once each and in ingress order, partly as
/// atomic batches, are answered by their recorded outcome when sent again,
/// and the new owner counts every one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rounds_read_marks_are_spread_together_in_order_and_once() -> Result<()> {
    const MARKS: u64 = 60;
    let mut s = stack().worker_metrics().start().await?;
    let (a, b) = (s.user("alice", "a1").await?, s.user("bob", "b1").await?);
    let conv = chat_client::direct_conv(&a.user_id, &b.user_id);
    let partition = chat_nats::subjects::ConvId::parse(&conv).unwrap().partition(16);
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let mark = |i: u64| {
        let body = json!({"up_to": i.to_string(), "n": i, "receipt": true}).to_string();
        let m = json!({"from": b.user_id, "device": "b1", "cid": format!("r{i}"), "conv": conv, "kind": "read", "body": body});
        bytes::Bytes::from(m.to_string())
    };
    s.kill_worker(0);
    for i in 1..=MARKS {
        js.publish(chat_nats::subjects::ingress(partition), mark(i)).await?.await?;
    }
    let w = s.add_worker(0)?;
    ingress_drained(&s).await?;
    // Each participant's inbox: one copy per mark, in ingress order.
    let inbox = js.get_stream(chat_nats::subjects::INBOX_STREAM).await?;
    let last = inbox.get_info().await?.state.last_sequence;
    let (mut seen, mut batched): (HashMap<String, Vec<u64>>, usize) = (HashMap::new(), 0);
    for seq in 1..=last {
        let m = inbox.direct_get(seq).await?;
        let v: Value = serde_json::from_slice(&m.payload)?;
        if v["kind"] == "read" {
            seen.entry(m.subject.to_string()).or_default().push(v["id"].as_str().unwrap().parse()?);
            batched += usize::from(m.headers.get("Nats-Batch-Id").is_some());
        }
    }
    let want: Vec<u64> = (1..=MARKS).collect();
    for u in [&a.user_id, &b.user_id] {
        assert_eq!(seen.get(&format!("chat.inbox.{u}")), Some(&want), "user {u}'s read copies");
    }
    assert!(batched > 0, "no read copy was stored by an atomic batch");
    let m = chat_tests::prom::metrics(&s.worker_metrics(w)?, None).await?;
    let by_mode = |mode| m.value("chat_sequencer_messages_total", &[("mode", mode)]);
    assert_eq!(by_mode("batch") + by_mode("single"), MARKS as f64, "every mark counted once");
    // Sent again (a gateway's retry): answered from the records, nothing
    // stored twice.
    for i in 1..=10 {
        js.publish(chat_nats::subjects::ingress(partition), mark(i)).await?.await?;
    }
    ingress_drained(&s).await?;
    assert_eq!(inbox.get_info().await?.state.last_sequence, last, "a resent mark was copied again");
    Ok(())
}
