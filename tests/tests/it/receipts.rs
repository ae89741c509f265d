//! Read state, read receipts and unread counts (issue #16 points 1, 2).

use std::time::Duration;

use anyhow::Result;
use chat_client::{direct_conv, ClientError, Login, Method, Unread};
use chat_tests::wait_for;
use serde_json::{json, Value};

use crate::stack::{stack, Stack};

async fn req(s: &Stack, who: &Login, m: Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    Ok(s.http(0).request(m, path, Some(&who.token), body).await?)
}

/// `unread` of `conv` in the caller's conversation list.
async fn unread(s: &Stack, who: &Login, conv: &str) -> Result<u64> {
    let (st, v) = req(s, who, Method::GET, "/v1/conversations", None).await?;
    assert_eq!(st, 200, "{v}");
    let c = v["conversations"].as_array().unwrap().iter().find(|c| c["conv"] == conv).cloned().unwrap();
    Ok(c["unread"].as_u64().unwrap())
}

fn code(e: ClientError) -> String {
    match e {
        ClientError::Api { code, .. } => code,
        e => panic!("not an API error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_on_one_device_clears_unread_everywhere_and_the_peer_gets_a_receipt() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let (b1, b2, b3) = (s.user("bob", "b1").await?, s.device("bob", "b2").await?, s.device("bob", "b3").await?);
    let conv = direct_conv(&a.user_id, &b1.user_id);
    let (mut ca, _) = s.live(0, &a).await?;
    let (mut cb1, _) = s.live(0, &b1).await?;
    let (mut cb2, _) = s.live(0, &b2).await?;
    // b3 synced once (its cursor), then goes offline.
    let cursor3 = s.sync_once(0, &b3).await?;

    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(
            ca.send_to_user(&format!("m{i}"), &b1.user_id, &format!("hi {i}")).await?["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    // Alice's own sends count as read by her; Bob has all three unread, on
    // every device alike (the count is the server's).
    assert_eq!(unread(&s, &a, &conv).await?, 0);
    assert_eq!(unread(&s, &b1, &conv).await?, 3);
    // Her position moves to her last send (written coalesced, within
    // CHAT_OWN_READ_FLUSH_MS, not on the ack's path).
    wait_for("alice's position at her own last send", Duration::from_secs(10), || async {
        let (_, v) = req(&s, &a, Method::GET, &format!("/v1/conversations/{conv}/reads"), None).await.ok()?;
        let me = v["reads"].as_array()?.iter().find(|r| r["user_id"] == a.user_id.as_str())?.clone();
        (me["up_to"] == ids[2].as_str()).then_some(())
    })
    .await?;

    let r = cb1.read_up_to(&conv, &ids[1]).await?;
    assert_eq!((r["up_to"].as_str(), r["unread"].as_u64()), (Some(ids[1].as_str()), Some(1)));
    assert_eq!(unread(&s, &b2, &conv).await?, 1);
    // The other device hears it live, with a cursor.
    let live = cb2.wait_for("read", |v| v["type"] == "read").await?;
    assert_eq!((live["conv"].as_str(), live["up_to"].as_str()), (Some(conv.as_str()), Some(ids[1].as_str())));
    assert!(live["cursor"].is_string());
    // The peer gets a receipt.
    let rc = ca.wait_for("receipt", |v| v["type"] == "receipt").await?;
    assert_eq!((rc["user"].as_str(), rc["up_to"].as_str()), (Some(b1.user_id.as_str()), Some(ids[1].as_str())));
    // The offline device catches the read up from its cursor.
    let mut cb3 = s.connect(0, &b3).await?;
    let (msgs, _) = cb3.sync(Some(&cursor3)).await?;
    assert_eq!(msgs.len(), 3);
    let caught = cb3.wait_for("read", |v| v["type"] == "read").await?;
    assert_eq!(caught["up_to"], ids[1].as_str());

    // Never backwards: reading an older message keeps the position.
    let back = cb2.read_up_to(&conv, &ids[0]).await?;
    assert_eq!(back["up_to"], ids[1].as_str());
    assert_eq!(unread(&s, &b1, &conv).await?, 1);
    cb1.read_up_to(&conv, &ids[2]).await?;
    assert_eq!(unread(&s, &b1, &conv).await?, 0);
    assert_eq!(unread(&s, &b2, &conv).await?, 0);

    // An unknown message is not_found; a foreign conversation is forbidden
    // whether or not the message exists (nothing is learnt).
    assert_eq!(code(cb1.read_up_to(&conv, "12345").await.unwrap_err()), "not_found");
    let eve = s.user("eve", "e1").await?;
    let (mut ce, _) = s.live(0, &eve).await?;
    assert_eq!(code(ce.read_up_to(&conv, &ids[2]).await.unwrap_err()), "forbidden");
    assert_eq!(code(ce.read_up_to(&conv, "12345").await.unwrap_err()), "forbidden");
    let (st, _) = req(&s, &eve, Method::GET, &format!("/v1/conversations/{conv}/reads"), None).await?;
    assert_eq!(st, 403);
    let (st, v) = req(&s, &a, Method::GET, &format!("/v1/conversations/{conv}/reads"), None).await?;
    assert_eq!(st, 200);
    let bob = v["reads"].as_array().unwrap().iter().find(|r| r["user_id"] == b1.user_id.as_str()).unwrap().clone();
    assert_eq!(bob["up_to"], ids[2].as_str());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_receipts_off_the_peer_gets_none_but_own_devices_still_sync() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let (b1, b2) = (s.user("bob", "b1").await?, s.device("bob", "b2").await?);
    let conv = direct_conv(&a.user_id, &b1.user_id);
    let path = format!("/v1/users/{}", b1.user_id);
    let (st, v) = req(&s, &b1, Method::PATCH, &path, Some(json!({"read_receipts": false}))).await?;
    assert_eq!((st, v["read_receipts"].as_bool()), (200, Some(false)), "{v}");
    let (st, _) = req(&s, &a, Method::PATCH, &path, Some(json!({"read_receipts": true}))).await?;
    assert_eq!(st, 403, "only one's own profile");

    let (mut ca, _) = s.live(0, &a).await?;
    let (mut cb1, _) = s.live(0, &b1).await?;
    let (mut cb2, _) = s.live(0, &b2).await?;
    let id1 = ca.send_to_user("x1", &b1.user_id, "one").await?["id"].as_str().unwrap().to_owned();
    cb1.read_up_to(&conv, &id1).await?;
    assert_eq!(cb2.wait_for("read", |v| v["type"] == "read").await?["up_to"], id1.as_str());
    // Alice then sends and Bob answers; Alice's inbox holds the messages
    // but no receipt before them.
    let id2 = ca.send_to_user("x2", &b1.user_id, "two").await?["id"].as_str().unwrap().to_owned();
    cb1.send_to_user("y1", &a.user_id, "back").await?;
    ca.wait_for("bob's message", |v| v["type"] == "msg" && v["body"] == "back").await?;
    assert!(!ca.buffered_any(|v| v["type"] == "receipt"), "no live receipt after {id2}");
    let mut fresh = s.connect(0, &a).await?;
    fresh.sync(None).await?;
    fresh.send_json(&json!({"type": "ping"})).await?;
    fresh.wait_for("pong", |v| v["type"] == "pong").await?;
    assert!(!fresh.buffered_any(|v| v["type"] == "receipt"), "no receipt reached alice");
    // Bob's own answer counts as reading up to it.
    assert_eq!(unread(&s, &b1, &conv).await?, 0);
    let (_, v) = req(&s, &a, Method::GET, &format!("/v1/conversations/{conv}/reads"), None).await?;
    let bob = v["reads"].as_array().unwrap().iter().find(|r| r["user_id"] == b1.user_id.as_str()).unwrap().clone();
    assert!(bob["up_to"].is_null(), "hidden with receipts off: {v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_reads_are_for_members_only() -> Result<()> {
    let s = stack().start().await?;
    let (a, b, eve) = (s.user("alice", "a1").await?, s.user("bob", "b1").await?, s.user("eve", "e1").await?);
    let g = s.create_group(&a, "team", &[&b.user_id]).await?;
    let conv = g["conv"].as_str().unwrap().to_owned();
    let gid = g["group_id"].as_str().unwrap().to_owned();
    let (mut ca, _) = s.live(0, &a).await?;
    let (mut cb, _) = s.live(0, &b).await?;
    let ack =
        ca.send_frame_and_ack(json!({"type": "send", "cid": "g1", "to": {"group": gid}, "body": "hey"}), "g1").await?;
    let id = ack["id"].as_str().unwrap().to_owned();
    let before = unread(&s, &b, &conv).await?;
    assert!(before >= 1);
    cb.read_up_to(&conv, &id).await?;
    assert_eq!(unread(&s, &b, &conv).await?, 0);
    let path = format!("/v1/conversations/{conv}/reads");
    let (st, v) = req(&s, &a, Method::GET, &path, None).await?;
    assert_eq!(st, 200);
    let bob = v["reads"].as_array().unwrap().iter().find(|r| r["user_id"] == b.user_id.as_str()).unwrap().clone();
    assert_eq!(bob["up_to"], id.as_str());
    assert_eq!(req(&s, &eve, Method::GET, &path, None).await?.0, 403);
    let mut ce = s.connect(0, &eve).await?;
    assert_eq!(code(ce.read_up_to(&conv, &id).await.unwrap_err()), "forbidden");
    Ok(())
}

/// Every `delivered` frame a connection holds or receives until one names
/// `up_to`: their `up_to`s in order.
async fn delivered_until(c: &mut chat_client::Conn, up_to: &str) -> Result<Vec<String>> {
    let mut seen = Vec::new();
    loop {
        let f = c.wait_for("delivered", |v| v["type"] == "delivered").await?;
        seen.push(f["up_to"].as_str().unwrap().to_owned());
        if f["up_to"] == up_to {
            return Ok(seen);
        }
    }
}

/// Message ids strictly rising (ids grow within a conversation).
fn rising(ids: &[String]) -> bool {
    ids.windows(2).all(|w| w[0].parse::<u64>().unwrap() < w[1].parse::<u64>().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sender_learns_when_a_device_of_the_recipient_got_the_messages() -> Result<()> {
    let s = stack().env("CHAT_DELIVERY_RECEIPTS", "true").start().await?;
    let (a1, a2) = (s.user("alice", "a1").await?, s.device("alice", "a2").await?);
    let (b1, b2) = (s.user("bob", "b1").await?, s.device("bob", "b2").await?);
    let conv = direct_conv(&a1.user_id, &b1.user_id);
    // Delivery receipts do not follow read_receipts (as in WhatsApp: the
    // second tick stays when blue ticks are off).
    let path = format!("/v1/users/{}", b1.user_id);
    assert_eq!(req(&s, &b1, Method::PATCH, &path, Some(json!({"read_receipts": false}))).await?.0, 200);
    let (mut ca1, _) = s.live(0, &a1).await?;
    // a2 synced once (its cursor), then goes offline.
    let cursor2 = s.sync_once(0, &a2).await?;

    // Bob is offline: the messages are stored, nothing is delivered.
    let mut ids = Vec::new();
    for i in 0..3 {
        let ack = ca1.send_to_user(&format!("m{i}"), &b1.user_id, &format!("hi {i}")).await?;
        ids.push(ack["id"].as_str().unwrap().to_owned());
    }
    ca1.send_json(&json!({"type": "ping"})).await?;
    ca1.wait_for("pong", |v| v["type"] == "pong").await?;
    assert!(!ca1.buffered_any(|v| v["type"] == "delivered"), "nothing was delivered yet");

    // Bob's phone catches up: Alice learns it, coalesced, never backwards.
    let (mut cb1, _) = s.live(0, &b1).await?;
    let seen = delivered_until(&mut ca1, &ids[2]).await?;
    assert!(seen.len() <= 3, "{seen:?}");
    assert!(rising(&seen), "only forwards: {seen:?}");

    // Bob's laptop catches up on the same messages: no receipt again.
    let mut cb2 = s.connect(0, &b2).await?;
    assert_eq!(cb2.sync(None).await?.0.len(), 3);
    let ack = ca1.send_to_user("m3", &b1.user_id, "hi 3").await?;
    ids.push(ack["id"].as_str().unwrap().to_owned());
    cb1.wait_for("m3", |v| v["type"] == "msg" && v["body"] == "hi 3").await?;
    assert_eq!(delivered_until(&mut ca1, &ids[3]).await?, vec![ids[3].clone()], "one receipt for the new message only");

    // Bob's own messages to Alice give Bob receipts, never Alice.
    cb1.send_to_user("y1", &a1.user_id, "back").await?;
    let rb = cb1.wait_for("delivered", |v| v["type"] == "delivered").await?;
    assert_eq!((rb["user"].as_str(), rb["conv"].as_str()), (Some(a1.user_id.as_str()), Some(conv.as_str())));
    assert!(rb["cursor"].is_string());

    // Alice's offline device catches the receipts up from its cursor, after
    // the messages they name, ending at the newest.
    let mut ca2 = s.connect(0, &a2).await?;
    let (msgs, _) = ca2.sync(Some(&cursor2)).await?;
    assert_eq!(msgs.len(), 5, "four sends and bob's answer");
    let caught = delivered_until(&mut ca2, &ids[3]).await?;
    assert!(rising(&caught), "{caught:?}");
    Ok(())
}

/// The receipts a gateway raises in one flush are one ingress message,
/// whatever their conversations' partitions: three 1:1s delivered within
/// one flush are three sends and one bundle on ingress, and the sender
/// gets each receipt, for the right conversation and message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_receipts_of_one_flush_are_one_ingress_message() -> Result<()> {
    let s = stack().env("CHAT_DELIVERY_RECEIPTS", "true").env("CHAT_DELIVERED_FLUSH_MS", "1000").start().await?;
    let a = s.user("alice", "a1").await?;
    let (mut ca, _) = s.live(0, &a).await?;
    let mut peers = Vec::new();
    for name in ["bob", "carol", "dave"] {
        let p = s.user(name, "p1").await?;
        let (c, _) = s.live(0, &p).await?;
        peers.push((p, c));
    }
    let mut want = Vec::new();
    for (i, (p, c)) in peers.iter_mut().enumerate() {
        let ack = ca.send_to_user(&format!("r{i}"), &p.user_id, "hello").await?;
        c.wait_for("hello", |v| v["type"] == "msg" && v["body"] == "hello").await?;
        want.push((direct_conv(&a.user_id, &p.user_id), ack["id"].as_str().unwrap().to_owned()));
    }
    let mut got = Vec::new();
    while got.len() < want.len() {
        let r = ca.wait_for("delivered", |v| v["type"] == "delivered").await?;
        got.push((r["conv"].as_str().unwrap().to_owned(), r["up_to"].as_str().unwrap().to_owned()));
    }
    got.sort();
    want.sort();
    assert_eq!(got, want, "one receipt per conversation, naming its message");
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let ingress = js.get_stream(chat_nats::subjects::INGRESS_STREAM).await?.info().await?.clone();
    assert_eq!(ingress.state.last_sequence, 3 + 1, "three sends and one bundle of receipts");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_get_no_delivery_receipts() -> Result<()> {
    let s = stack().env("CHAT_DELIVERY_RECEIPTS", "true").start().await?;
    let (a, b) = (s.user("alice", "a1").await?, s.user("bob", "b1").await?);
    let g = s.create_group(&a, "team", &[&b.user_id]).await?;
    let gid = g["group_id"].as_str().unwrap().to_owned();
    let (mut ca, _) = s.live(0, &a).await?;
    let (mut cb, _) = s.live(0, &b).await?;
    ca.send_frame_and_ack(json!({"type": "send", "cid": "g1", "to": {"group": gid}, "body": "hey"}), "g1").await?;
    cb.wait_for("group message", |v| v["type"] == "msg" && v["body"] == "hey").await?;
    // A 1:1 message after it: its receipt arrives, and none for the group.
    ca.send_to_user("d1", &b.user_id, "direct").await?;
    cb.wait_for("direct", |v| v["type"] == "msg" && v["body"] == "direct").await?;
    let r = ca.wait_for("delivered", |v| v["type"] == "delivered").await?;
    assert_eq!(r["conv"], direct_conv(&a.user_id, &b.user_id).as_str());
    assert!(!ca.buffered_any(|v| v["type"] == "delivered"));
    Ok(())
}

/// A page of the caller's conversation list.
async fn page(s: &Stack, who: &Login, query: &str) -> Result<Value> {
    let (st, v) = req(s, who, Method::GET, &format!("/v1/conversations{query}"), None).await?;
    assert_eq!(st, 200, "{v}");
    Ok(v)
}

/// Applies every frame `c` holds or receives until `pred` matches one
/// (applied too) to `counts`.
async fn follow(
    c: &mut chat_client::Conn,
    counts: &mut Unread,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<()> {
    loop {
        let f = c.wait_for(what, |_| true).await?;
        counts.apply(&f);
        if pred(&f) {
            return Ok(());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_keeps_the_servers_unread_count_from_its_frames_alone() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let (b1, b2, b3) = (s.user("bob", "b1").await?, s.device("bob", "b2").await?, s.device("bob", "b3").await?);
    let conv = direct_conv(&a.user_id, &b1.user_id);
    let (mut ca, _) = s.live(0, &a).await?;
    let (mut cb1, _) = s.live(0, &b1).await?;
    let (mut cb2, _) = s.live(0, &b2).await?;
    // b2 seeds its counts from the list, then follows its frames only.
    let mut counts = Unread::new(&b1.user_id);
    counts.seed(&page(&s, &b2, "").await?);
    let mut ids = Vec::new();
    for i in 0..3 {
        let ack = ca.send_to_user(&format!("m{i}"), &b1.user_id, &format!("hi {i}")).await?;
        ids.push(ack["id"].as_str().unwrap().to_owned());
    }
    follow(&mut cb2, &mut counts, "m2", |v| v["type"] == "msg" && v["id"] == ids[2].as_str()).await?;
    assert_eq!((counts.of(&conv), unread(&s, &b1, &conv).await?), (3, 3));

    // Read on b1: b1's answer and b2's read frame carry the ordinal.
    let r = cb1.read_up_to(&conv, &ids[1]).await?;
    assert_eq!((r["n"].as_u64(), r["unread"].as_u64()), (Some(2), Some(1)), "{r}");
    follow(&mut cb2, &mut counts, "read", |v| v["type"] == "read").await?;
    assert_eq!((counts.of(&conv), unread(&s, &b2, &conv).await?), (1, 1));

    // A new message; then Alice deletes it: the count stays (the delete
    // carries the ordinal reached), on the device and in the list.
    let id3 = ca.send_to_user("m3", &b1.user_id, "hi 3").await?["id"].as_str().unwrap().to_owned();
    follow(&mut cb2, &mut counts, "m3", |v| v["type"] == "msg" && v["id"] == id3.as_str()).await?;
    assert_eq!((counts.of(&conv), unread(&s, &b2, &conv).await?), (2, 2));
    ca.delete("del3", &conv, &id3).await?;
    follow(&mut cb2, &mut counts, "delete", |v| v["type"] == "msg" && v["kind"] == "delete").await?;
    assert_eq!((counts.of(&conv), unread(&s, &b2, &conv).await?), (2, 2));

    // Bob answers from b1: his own message counts as read everywhere.
    let back = cb1.send_to_user("y1", &a.user_id, "back").await?["id"].as_str().unwrap().to_owned();
    follow(&mut cb2, &mut counts, "back", |v| v["type"] == "msg" && v["body"] == "back").await?;
    assert_eq!(unread(&s, &b2, &conv).await?, 0, "the last message is bob's own");
    // The position itself is written within CHAT_OWN_READ_FLUSH_MS; the
    // list is exact about what follows from then on.
    chat_tests::wait_for("bob's own send raised his position", std::time::Duration::from_secs(10), || async {
        let (_, v) = req(&s, &b2, Method::GET, &format!("/v1/conversations/{conv}/reads"), None).await.ok()?;
        let me = v["reads"].as_array()?.iter().find(|r| r["user_id"] == b1.user_id.as_str())?.clone();
        (me["up_to"] == back.as_str()).then_some(())
    })
    .await?;
    assert_eq!(counts.of(&conv), 0);
    let id4 = ca.send_to_user("m4", &b1.user_id, "hi 4").await?["id"].as_str().unwrap().to_owned();
    follow(&mut cb2, &mut counts, "m4", |v| v["type"] == "msg" && v["id"] == id4.as_str()).await?;
    assert_eq!((counts.of(&conv), unread(&s, &b2, &conv).await?), (1, 1));

    // A device that was never online: the list, then everything from the
    // start of its inbox in one catch-up, lands on the same count.
    let mut fresh = Unread::new(&b1.user_id);
    fresh.seed(&page(&s, &b3, "").await?);
    let mut cb3 = s.connect(0, &b3).await?;
    let (msgs, _) = cb3.sync(None).await?;
    msgs.iter().for_each(|m| drop(fresh.apply(m)));
    assert_eq!(fresh.of(&conv), 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_conversation_list_pages_by_last_activity() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let mut peers = Vec::new();
    for i in 0..4 {
        peers.push(s.user(&format!("peer{i}"), "p").await?);
    }
    let g = s.create_group(&a, "team", &[&peers[0].user_id]).await?;
    let (mut ca, _) = s.live(0, &a).await?;
    // Activity order, oldest first: the group (created), peer 2, 0, 3, 1.
    for (k, i) in [2usize, 0, 3, 1].into_iter().enumerate() {
        ca.send_to_user(&format!("c{k}"), &peers[i].user_id, "hello").await?;
    }
    let mut sent_order: Vec<String> =
        [1usize, 3, 0, 2].iter().map(|&i| direct_conv(&a.user_id, &peers[i].user_id)).collect();
    sent_order.push(g["conv"].as_str().unwrap().to_owned());
    // The whole list in one page: newest activity first, ties by
    // conversation id (descending).
    let all = page(&s, &a, "").await?;
    assert!(all["next_before"].is_null());
    let key = |c: &Value| (c["last_message"]["ts"].as_u64().unwrap_or(0), c["conv"].as_str().unwrap().to_owned());
    let keys: Vec<_> = all["conversations"].as_array().unwrap().iter().map(key).collect();
    assert!(keys.windows(2).all(|w| w[0] > w[1]), "ordered: {keys:?}");
    let expected: Vec<String> = keys.iter().map(|k| k.1.clone()).collect();
    let mut ts: Vec<u64> = keys.iter().map(|k| k.0).collect();
    ts.dedup();
    if ts.len() == keys.len() {
        assert_eq!(expected, sent_order, "distinct times: the order of activity");
    }

    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let v = page(&s, &a, &query).await?;
        let convs = v["conversations"].as_array().unwrap();
        assert!(convs.len() <= 2);
        seen.extend(convs.iter().map(|c| c["conv"].as_str().unwrap().to_owned()));
        pages += 1;
        match v["next_before"].as_str() {
            Some(next) => query = format!("?limit=2&before={next}"),
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, expected));
    // New activity moves a conversation to the front.
    ca.send_to_user("c9", &peers[2].user_id, "again").await?;
    let first = page(&s, &a, "?limit=1").await?;
    assert_eq!(first["conversations"][0]["conv"], direct_conv(&a.user_id, &peers[2].user_id).as_str());
    for bad in ["?limit=0", "?limit=201", "?before=nope", "?before=12.x-1"] {
        let (st, v) = req(&s, &a, Method::GET, &format!("/v1/conversations{bad}"), None).await?;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("bad_request")), "{bad}: {v}");
    }
    Ok(())
}
