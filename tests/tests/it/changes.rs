//! Edits and deletes: events in the conversation's order, delivered to
//! every member's inbox (live and on catch-up), history pages in the
//! current state (edited text, tombstones), a deleted body erased from the
//! history stream, and who may do what (author within the window, group
//! owner and admins, operators through the admin API).

use std::time::Duration;

use anyhow::Result;
use chat_client::{ClientError, Conn, Login, Method};
use serde_json::{json, Value};

use crate::stack::{stack, Stack};

const OPERATOR: &str = "operator-credential-for-changes-0123456";

fn code(r: Result<Value, ClientError>) -> String {
    match r {
        Err(ClientError::Api { code, .. }) => code,
        other => format!("not refused: {other:?}"),
    }
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_owned()
}

/// Alice and Bob live, Bob's laptop synced once and then offline (its
/// cursor kept for a later catch-up), and Carol, who takes no part.
struct Cast {
    alice: Login,
    bob: Login,
    bob_laptop: Login,
    carol: Login,
    a: Conn,
    b: Conn,
    laptop_cursor: String,
}

async fn cast(st: &Stack) -> Result<Cast> {
    let alice = st.user("alice", "a1").await?;
    let bob = st.user("bob", "phone").await?;
    let bob_laptop = st.device("bob", "laptop").await?;
    let carol = st.user("carol", "c1").await?;
    let (a, _) = st.live(0, &alice).await?;
    let (b, _) = st.live(0, &bob).await?;
    let laptop_cursor = st.sync_once(0, &bob_laptop).await?;
    Ok(Cast { alice, bob, bob_laptop, carol, a, b, laptop_cursor })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletes_reach_every_device_in_order_and_history_shows_the_current_state() -> Result<()> {
    let st = stack().env("CHAT_EDIT_WINDOW_SECS", "3").env("CHAT_SEARCH_INDEXER", "true").start().await?;
    let Cast { alice, bob, bob_laptop, carol, mut a, mut b, laptop_cursor } = cast(&st).await?;

    let m1 = a.send_to_user("m1", &bob.user_id, "helo").await?;
    let m2 = a.send_to_user("m2", &bob.user_id, "second").await?;
    let m3 = a.send_to_user("m3", &bob.user_id, "regret this").await?;
    let conv = s(&m1["conv"]);
    let (id1, id2, id3) = (s(&m1["id"]), s(&m2["id"]), s(&m3["id"]));
    for _ in 0..3 {
        b.next_msg().await?;
    }

    // The author edits and deletes; the peer sees both live, in order.
    let e = a.edit("e1", &conv, &id1, "hello").await?;
    assert!(s(&e["id"]).parse::<u64>()? > id3.parse::<u64>()?, "a change has an id after every earlier one: {e}");
    let d = a.delete("d1", &conv, &id3).await?;
    let got = b.next_msg().await?;
    assert_eq!((s(&got["kind"]), s(&got["target"]), s(&got["body"])), ("edit".into(), id1.clone(), "hello".into()));
    let got = b.next_msg().await?;
    assert_eq!((s(&got["kind"]), s(&got["target"]), s(&got["body"])), ("delete".into(), id3.clone(), String::new()));
    assert_eq!(got["id"], d["id"]);
    // A retried cid is not a second change.
    assert_eq!(a.edit("e1", &conv, &id1, "hello").await?["id"], e["id"]);

    // Refusals, each with its code, and nothing delivered for them.
    assert_eq!(code(b.edit("x1", &conv, &id2, "not mine").await), "forbidden");
    assert_eq!(code(b.delete("x2", &conv, &id2).await), "forbidden");
    assert_eq!(code(a.edit("x3", &conv, &id3, "gone").await), "not_found");
    assert_eq!(code(a.delete("x4", &conv, &id3).await), "not_found");
    assert_eq!(code(a.edit("x5", &conv, "12345", "none").await), "not_found");
    assert_eq!(code(a.edit("x6", &conv, "01", "bad id").await), "bad_frame");
    assert_eq!(code(a.edit("x7", &conv, &id2, "  ").await), "empty_body");
    assert_eq!(code(a.edit("x8", "nonsense", &id2, "x").await), "bad_frame");
    let (mut c, _) = st.live(0, &carol).await?;
    assert_eq!(code(c.edit("x9", &conv, &id2, "intruder").await), "forbidden");
    assert_eq!(code(c.delete("x10", &conv, &id2).await), "forbidden");

    // The conversation goes on after its last message was deleted: the
    // next message takes the next ordinal, after the tombstone.
    let m4 = a.send_to_user("m4", &bob.user_id, "after").await?;
    let id4 = s(&m4["id"]);
    let page = st.http(0).history(&bob.token, &conv, "").await?;
    let msgs = page["messages"].as_array().cloned().unwrap_or_default();
    let ids: Vec<String> = msgs.iter().map(|m| s(&m["id"])).collect();
    assert_eq!(ids, [id1.clone(), id2.clone(), id3.clone(), id4.clone()], "{page}");
    assert_eq!((s(&msgs[0]["body"]), msgs[0]["edited_at"].is_u64()), ("hello".into(), true), "{page}");
    assert!(msgs[1].get("edited_at").is_none() && msgs[1]["body"] == "second", "{page}");
    assert_eq!((msgs[2]["deleted"].as_bool(), s(&msgs[2]["body"])), (Some(true), String::new()), "{page}");
    assert_eq!(s(&msgs[2]["from"]), alice.user_id);
    // Paging around the tombstone keeps every place.
    let before = st.http(0).history(&bob.token, &conv, &format!("before={id4}&limit=2")).await?;
    let ids: Vec<String> = before["messages"].as_array().unwrap().iter().map(|m| s(&m["id"])).collect();
    assert_eq!(ids, [id2.clone(), id3.clone()], "{before}");
    assert_eq!(before["has_more"], true);
    let after = st.http(0).history(&bob.token, &conv, &format!("after={id2}&limit=2")).await?;
    let ids: Vec<String> = after["messages"].as_array().unwrap().iter().map(|m| s(&m["id"])).collect();
    assert_eq!(ids, [id3.clone(), id4.clone()], "{after}");

    // Jumping to a message: the page centred on it, tombstones included.
    let around = st.http(0).history(&bob.token, &conv, &format!("around={id2}&limit=3")).await?;
    let ids: Vec<String> = around["messages"].as_array().unwrap().iter().map(|m| s(&m["id"])).collect();
    assert_eq!(ids, [id1.clone(), id2.clone(), id3.clone()], "{around}");
    assert_eq!((around["has_more"].as_bool(), around["has_more_after"].as_bool()), (Some(false), Some(true)));
    let (status, v) = st
        .http(0)
        .request(
            Method::GET,
            &format!("/v1/conversations/{conv}/messages?around={id2}&after={id1}"),
            Some(&bob.token),
            None,
        )
        .await?;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_request")), "{v}");

    // The deleted body is gone from the history stream, not just hidden.
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&st.nats.url).await?);
    let mut history = js.get_stream(chat_nats::subjects::HISTORY_STREAM).await?;
    let mut bodies = Vec::new();
    let last = history.info().await?.state.last_sequence;
    for seq in 1..=last {
        if let Ok(m) = history.get_raw_message(seq).await {
            bodies.push(String::from_utf8_lossy(&m.payload).into_owned());
        }
    }
    assert!(bodies.iter().any(|b| b.contains("helo")), "an edit keeps the original (only a delete erases)");
    assert!(!bodies.iter().any(|b| b.contains("regret this")), "the deleted body is still stored");

    // Search follows: the edit is re-indexed, the deleted text is gone.
    let http = st.http(0);
    chat_tests::wait_for("the indexer to reach the last message", Duration::from_secs(30), || {
        let http = http.clone();
        let token = bob.token.clone();
        async move {
            let v = http.search(&token, "after", None, None, None).await.ok()?;
            (!v["results"].as_array()?.is_empty()).then_some(())
        }
    })
    .await?;
    let hits = |v: &Value| -> Vec<String> {
        v["results"].as_array().map(|a| a.iter().map(|h| s(&h["id"])).collect()).unwrap_or_default()
    };
    assert_eq!(hits(&http.search(&bob.token, "hello", None, None, None).await?), std::slice::from_ref(&id1));
    assert!(hits(&http.search(&bob.token, "helo", None, None, None).await?).is_empty(), "the old text is found");
    assert!(hits(&http.search(&bob.token, "regret", None, None, None).await?).is_empty(), "a deleted text is found");

    // The offline laptop catches up on everything, in order, from its cursor.
    let mut laptop = st.connect(0, &bob_laptop).await?;
    let (caught, _) = laptop.sync(Some(&laptop_cursor)).await?;
    let seen: Vec<(String, String)> = caught.iter().map(|m| (s(&m["kind"]), s(&m["body"]))).collect();
    let want = [
        ("text", "helo"),
        ("text", "second"),
        ("text", "regret this"),
        ("edit", "hello"),
        ("delete", ""),
        ("text", "after"),
    ];
    let want: Vec<(String, String)> = want.iter().map(|(k, b)| (k.to_string(), b.to_string())).collect();
    assert_eq!(seen, want);

    // The window: once it has passed, the author may no longer change m2.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let mut n = 0;
    loop {
        n += 1;
        match a.edit(&format!("w{n}"), &conv, &id2, &format!("second, take {n}")).await {
            Ok(_) => {}
            Err(ClientError::Api { code, .. }) if code == "edit_window_closed" => break,
            Err(e) => return Err(e.into()),
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "the edit window never closed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(code(a.delete("late-delete", &conv, &id2).await), "edit_window_closed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_owners_and_operators_delete_any_message_members_only_their_own() -> Result<()> {
    let st = stack().env("CHAT_OPERATOR_TOKEN", OPERATOR).start().await?;
    let owner = st.user("owner", "o1").await?;
    let m1 = st.user("member1", "p1").await?;
    let m2 = st.user("member2", "p2").await?;
    let g = st.create_group(&owner, "team", &[&m1.user_id, &m2.user_id]).await?;
    let gid = s(&g["group_id"]);
    let (mut o, _) = st.live(0, &owner).await?;
    let (mut p1, _) = st.live(0, &m1).await?;
    let (mut p2, _) = st.live(0, &m2).await?;
    let send = |cid: &str, body: &str| json!({"type": "send", "cid": cid, "to": {"group": gid}, "body": body});
    let g1 = p1.send_frame_and_ack(send("g1", "first"), "g1").await?;
    let g2 = p1.send_frame_and_ack(send("g2", "second"), "g2").await?;
    let conv = s(&g1["conv"]);
    let (id1, id2) = (s(&g1["id"]), s(&g2["id"]));

    // A member may not delete another's message; the owner may.
    assert_eq!(code(p2.delete("x1", &conv, &id1).await), "forbidden");
    o.delete("od1", &conv, &id1).await?;
    for c in [&mut o, &mut p1, &mut p2] {
        c.wait_for("the owner's delete", |v| {
            v["type"] == "msg" && v["kind"] == "delete" && v["target"] == id1.as_str()
        })
        .await?;
    }

    // The admin API: only the operator credential, with clear errors.
    let http = st.http(0);
    let path = format!("/v1/admin/messages/{conv}/{id2}");
    for t in [Some(m1.token.as_str()), Some(owner.token.as_str()), None] {
        let (status, v) = http.request(Method::DELETE, &path, t, None).await?;
        assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthorized")), "{v}");
    }
    let (status, _) =
        http.request(Method::DELETE, &format!("/v1/admin/messages/{conv}/x"), Some(OPERATOR), None).await?;
    assert_eq!(status, 400);
    let (status, _) =
        http.request(Method::DELETE, &format!("/v1/admin/messages/{conv}/999"), Some(OPERATOR), None).await?;
    assert_eq!(status, 404);
    let (status, v) = http.request(Method::DELETE, &path, Some(OPERATOR), None).await?;
    assert_eq!(status, 200, "{v}");
    let got = p2
        .wait_for("the operator's delete", |v| {
            v["type"] == "msg" && v["kind"] == "delete" && v["target"] == id2.as_str()
        })
        .await?;
    assert_eq!(s(&got["from"]), "0", "an operator's delete comes from user 0");
    // Again: the message is gone.
    let (status, again) = http.request(Method::DELETE, &path, Some(OPERATOR), None).await?;
    assert_eq!((status, again["error"]["code"].as_str()), (404, Some("not_found")), "{again}");

    let page = http.history(&m2.token, &conv, "").await?;
    let deleted: Vec<String> =
        page["messages"].as_array().unwrap().iter().filter(|m| m["deleted"] == true).map(|m| s(&m["id"])).collect();
    assert_eq!(deleted, [id1, id2], "{page}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_are_idempotent_counted_in_pages_and_an_offline_device_catches_up_on_changes_in_order() -> Result<()>
{
    let st = stack().start().await?;
    let Cast { alice, bob, bob_laptop, carol, mut a, mut b, laptop_cursor } = cast(&st).await?;

    let m1 = a.send_to_user("m1", &bob.user_id, "helo").await?;
    let m2 = a.send_to_user("m2", &bob.user_id, "gone soon").await?;
    let conv = s(&m1["conv"]);
    let (id1, id2) = (s(&m1["id"]), s(&m2["id"]));
    for _ in 0..2 {
        b.next_msg().await?;
    }
    // An edit, a delete and a reaction, in this order.
    a.edit("e1", &conv, &id1, "hello").await?;
    a.delete("d1", &conv, &id2).await?;
    let r1 = b.react("r1", &conv, &id1, "👍", false).await?;
    // Idempotent: a second add, or a remove of what one does not have,
    // changes nothing (no event, same id).
    assert_eq!(b.react("r2", &conv, &id1, "👍", false).await?["id"], r1["id"]);
    assert_eq!(b.react("r3", &conv, &id1, "🎉", true).await?["id"], r1["id"]);
    a.react("r4", &conv, &id1, "👍", false).await?;
    a.react("r5", &conv, &id1, "❤️", false).await?;
    a.react("r6", &conv, &id1, "❤️", true).await?;

    // Refusals.
    assert_eq!(code(b.react("x1", &conv, &id2, "👍", false).await), "not_found");
    assert_eq!(code(b.react("x2", &conv, &id1, "", false).await), "bad_frame");
    assert_eq!(code(b.react("x3", &conv, &id1, "not an emoji", false).await), "bad_frame");
    let (mut c, _) = st.live(0, &carol).await?;
    assert_eq!(code(c.react("x4", &conv, &id1, "👍", false).await), "forbidden");
    // The outsider learns nothing: the same answer for a message that
    // does not exist.
    assert_eq!(code(c.react("x5", &conv, "12345", "👍", false).await), "forbidden");
    let (status, _) = st
        .http(0)
        .request(Method::GET, &format!("/v1/conversations/{conv}/messages"), Some(&carol.token), None)
        .await?;
    assert_eq!(status, 403);

    // The page: counts exact, who listed, the tombstone without reactions.
    let page = st.http(0).history(&alice.token, &conv, "").await?;
    let msgs = page["messages"].as_array().cloned().unwrap_or_default();
    assert_eq!(msgs.len(), 2, "{page}");
    assert_eq!(msgs[0]["body"], "hello");
    let want = json!([{"emoji": "👍", "count": 2, "users": [bob.user_id, alice.user_id]}]);
    assert_eq!(msgs[0]["reactions"], want, "{page}");
    assert!(msgs[1]["deleted"] == true && msgs[1].get("reactions").is_none(), "{page}");

    // The laptop, offline through all of it, catches up in order.
    let mut laptop = st.connect(0, &bob_laptop).await?;
    let (caught, _) = laptop.sync(Some(&laptop_cursor)).await?;
    let seen: Vec<(String, String, String)> = caught
        .iter()
        .filter(|f| f["type"] == "msg")
        .map(|f| (s(&f["kind"]), s(&f["target"]), s(&f["reaction"]["emoji"]) + &s(&f["reaction"]["op"])))
        .collect();
    let want: Vec<(String, String, String)> = [
        ("text", "", ""),
        ("text", "", ""),
        ("edit", &id1, ""),
        ("delete", &id2, ""),
        ("react", &id1, "👍add"),
        ("react", &id1, "👍add"),
        ("react", &id1, "❤️add"),
        ("react", &id1, "❤️remove"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(seen, want);
    let ids: Vec<u64> = caught.iter().filter(|f| f["type"] == "msg").map(|f| s(&f["id"]).parse().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids in conversation order: {ids:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_quote_their_original_and_lose_the_preview_once_it_is_deleted() -> Result<()> {
    let st = stack().start().await?;
    let alice = st.user("alice", "a1").await?;
    let bob = st.user("bob", "b1").await?;
    let carol = st.user("carol", "c1").await?;
    let (mut a, _) = st.live(0, &alice).await?;
    let (mut b, _) = st.live(0, &bob).await?;
    let (mut c, _) = st.live(0, &carol).await?;
    let long = "q".repeat(150);
    let m1 = a.send_to_user("m1", &bob.user_id, &long).await?;
    let (conv, id1) = (s(&m1["conv"]), s(&m1["id"]));
    let elsewhere = s(&c.send_to_user("c1", &alice.user_id, "another conversation").await?["id"]);
    // Enough messages between them that the original's block is not the
    // newest page's (the page looks it up on its own).
    for i in 0..68 {
        a.send_to_user(&format!("f{i}"), &bob.user_id, &format!("filler {i}")).await?;
    }
    let reply = |cid: &str, to: &str| json!({"type": "send", "cid": cid, "to": {"user": alice.user_id}, "body": "answer", "reply_to": to});
    let ack = b.send_frame_and_ack(reply("r1", &id1), "r1").await?;
    let got = a.wait_for("the reply", |v| v["type"] == "msg" && v["id"] == ack["id"]).await?;
    let quoted = &got["reply_to"];
    assert_eq!((s(&quoted["id"]), s(&quoted["from"])), (id1.clone(), alice.user_id.clone()), "{got}");
    assert_eq!(quoted["preview"].as_str().map(|p| p.chars().count()), Some(100), "a short preview: {got}");
    // Refusals: a malformed id, no such message, another conversation's.
    assert_eq!(code(b.send_frame_and_ack(reply("r2", "01"), "r2").await), "bad_frame");
    assert_eq!(code(b.send_frame_and_ack(reply("r3", "12345"), "r3").await), "not_found");
    assert_eq!(code(b.send_frame_and_ack(reply("r4", &elsewhere), "r4").await), "not_found");

    let page = |q: &'static str| {
        let (http, token, conv) = (st.http(0), bob.token.clone(), conv.clone());
        async move { http.history(&token, &conv, q).await }
    };
    let newest = page("limit=3").await?;
    let last = newest["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
    assert_eq!((s(&last["id"]), s(&last["reply_to"]["id"])), (s(&ack["id"]), id1.clone()), "{newest}");
    assert!(last["reply_to"]["preview"].is_string(), "{newest}");

    // The original is deleted: its text leaves the reply's quote too, on
    // a page that holds the original and on one that does not.
    a.delete("d1", &conv, &id1).await?;
    for q in ["limit=3", "limit=100"] {
        let p = page(q).await?;
        let msgs = p["messages"].as_array().cloned().unwrap_or_default();
        let r = msgs.iter().find(|m| m["id"] == ack["id"]).cloned().unwrap_or_default();
        assert_eq!((r["reply_to"]["deleted"].as_bool(), r["reply_to"].get("preview")), (Some(true), None), "{q}: {p}");
        assert!(!p.to_string().contains(&long[..100]), "{q}: the deleted text is still quoted: {p}");
    }
    // A deleted message cannot be answered.
    assert_eq!(code(b.send_frame_and_ack(reply("r5", &id1), "r5").await), "not_found");
    Ok(())
}
