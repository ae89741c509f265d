//! Moderation on the real stack: the live banned-word list (edited by the
//! operator on one gateway, in force on another within a second, over
//! WebSocket, QUIC and the service subject; evasions caught; masking) and
//! flood detection shared by a user's devices on two gateways.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use chat_client::{Conn, Method};
use serde_json::{json, Value};

use crate::stack::{stack, Kind, Stack};

const OPERATOR: &str = "operator-credential-0123456789abcdef";

/// Sends `body` to `to` with `cid` and returns the `ack` or `error` frame.
async fn send(c: &mut Conn, cid: &str, to: &str, body: &str) -> Result<Value> {
    c.send_json(&json!({"type": "send", "cid": cid, "to": {"user": to}, "body": body})).await?;
    Ok(c.wait_for("ack or error", |v| (v["type"] == "ack" || v["type"] == "error") && v["cid"] == cid).await?)
}

/// An operator request to gateway `i`.
async fn admin(s: &Stack, i: usize, method: Method, path: &str, body: Option<Value>) -> Result<(u16, Value)> {
    Ok(s.http(i).request(method, path, Some(OPERATOR), body).await?)
}

/// Sends fresh messages on `c` until `refused` says the answer is the one
/// awaited; fails after `within`. Returns how long it took.
async fn until(
    c: &mut Conn,
    to: &str,
    body: &str,
    within: Duration,
    refused: impl Fn(&Value) -> bool,
) -> Result<Duration> {
    let started = Instant::now();
    for n in 0.. {
        let answer = send(c, &format!("poll-{}-{n}", started.elapsed().as_nanos()), to, body).await?;
        if refused(&answer) {
            return Ok(started.elapsed());
        }
        ensure!(started.elapsed() < within, "still {answer} after {:?}", started.elapsed());
    }
    unreachable!()
}

fn code(v: &Value) -> &str {
    v["code"].as_str().unwrap_or(if v["type"] == "ack" { "ack" } else { "?" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn banned_words_are_live_on_every_gateway_and_transport_and_survive_evasions() -> Result<()> {
    let mut s =
        stack().gateways(2).env("CHAT_OPERATOR_TOKEN", OPERATOR).env("CHAT_FLOOD_MAX_MESSAGES", "0").start().await?;
    let a = s.user("alice", "a1").await?;
    let a2 = s.device("alice", "a2").await?;
    let b = s.user("bob", "b1").await?;
    // Alice on the second gateway, over WebSocket and over QUIC.
    let mut ws = s.connect_over(Kind::Ws, 1, &a).await?;
    let mut quic = s.connect_over(Kind::Quic, 1, &a2).await?;
    assert_eq!(code(&send(&mut ws, "pre", &b.user_id, "badword before the list").await?), "ack");

    // Only the operator edits or reads the list.
    for (method, body) in [(Method::GET, None), (Method::PUT, Some(json!({"words": ["x"]})))] {
        let (status, v) =
            s.http(0).request(method.clone(), "/v1/admin/banned-words", Some(&a.token), body.clone()).await?;
        assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthorized")), "user token: {v}");
        let (status, _) = s.http(0).request(method, "/v1/admin/banned-words", None, body).await?;
        assert_eq!(status, 401, "no token");
    }
    let (status, v) = admin(&s, 0, Method::PUT, "/v1/admin/banned-words", Some(json!({"words": [" .. "]}))).await?;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_request")), "{v}");

    // Added through gateway 0, refused on gateway 1 within a second.
    let added_at = Instant::now();
    let (status, v) =
        admin(&s, 0, Method::PUT, "/v1/admin/banned-words", Some(json!({"words": ["BadWord", "씨발"]}))).await?;
    assert_eq!((status, v["added"].as_u64(), v["applied"].as_bool()), (200, Some(2), Some(true)), "{v}");
    let banned = |v: &Value| v["code"] == "banned_word";
    until(&mut ws, &b.user_id, "a badword", Duration::from_secs(1), banned).await?;
    until(&mut quic, &b.user_id, "a badword", Duration::from_secs(1), banned).await?;
    let live_after = added_at.elapsed();
    assert!(live_after < Duration::from_millis(1500), "in force on the other gateway after {live_after:?}");
    let (status, v) = admin(&s, 1, Method::GET, "/v1/admin/banned-words", None).await?;
    assert_eq!((status, v["count"].as_u64(), v["policy"].as_str()), (200, Some(2), Some("reject")), "{v}");

    // Evasions, on both transports.
    let evasions = [
        "ＢＡＤＷＯＲＤ",
        "BaDwOrD",
        "b\u{200B}a\u{200C}d\u{200D}w\u{FEFF}ord",
        "b a d w o r d",
        "b.a-d_w*o!r?d",
        "bädwörd\u{0301}",
        "씨발",
        "ㅆㅣㅂㅏㄹ",
        "ㅆ ㅣ ㅂ ㅏ ㄹ",
        "씨\u{200B}발",
        "너 씨.발 뭐야",
    ];
    for (i, text) in evasions.iter().enumerate() {
        for (t, c) in [("ws", &mut ws), ("quic", &mut quic)] {
            let v = send(c, &format!("ev-{t}-{i}"), &b.user_id, text).await?;
            assert_eq!(code(&v), "banned_word", "{t} {text:?}: {v}");
        }
    }
    assert_eq!(code(&send(&mut ws, "clean", &b.user_id, "a good word").await?), "ack");

    // A gateway started now has the whole list before it serves.
    let g = s.add_gateway().await?;
    let mut late = s.connect_over(Kind::Ws, g, &a).await?;
    assert_eq!(code(&send(&mut late, "late", &b.user_id, "ㅆㅣ발").await?), "banned_word");

    // Internal services are screened too (CHAT_BANNED_WORDS_SERVICES).
    let nats = chat_tests::nats_auth::SERVICE.connect(&s.nats.url).await?;
    let req =
        json!({"service": "bot", "as": a.user_id, "cid": "svc-1", "to": {"user": b.user_id}, "body": "B A D W O R D"});
    let reply = nats.request(chat_nats::subjects::SERVICE_SEND, req.to_string().into()).await?;
    let reply: Value = serde_json::from_slice(&reply.payload)?;
    assert_eq!(code(&reply), "banned_word", "{reply}");

    // Removed (by another spelling) through gateway 1, accepted on gateway 0.
    let mut ws0 = s.connect_over(Kind::Ws, 0, &a).await?;
    let (status, v) =
        admin(&s, 1, Method::DELETE, "/v1/admin/banned-words", Some(json!({"words": ["b a d w o r d"]}))).await?;
    assert_eq!((status, v["removed"].as_u64(), v["count"].as_u64()), (200, Some(1), Some(1)), "{v}");
    until(&mut ws0, &b.user_id, "badword again", Duration::from_secs(1), |v| v["type"] == "ack").await?;
    assert_eq!(code(&send(&mut ws0, "still", &b.user_id, "ㅆㅣㅂㅏㄹ").await?), "banned_word");
    let (_, v) = admin(&s, 0, Method::GET, "/v1/admin/banned-words", None).await?;
    assert_eq!(v["words"], json!(["씨발"]), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mask_policy_stores_the_message_with_the_letters_starred() -> Result<()> {
    let s = stack()
        .env("CHAT_OPERATOR_TOKEN", OPERATOR)
        .env("CHAT_BANNED_WORDS_POLICY", "mask")
        .env("CHAT_FLOOD_MAX_MESSAGES", "0")
        .start()
        .await?;
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let (status, v) =
        admin(&s, 0, Method::PUT, "/v1/admin/banned-words", Some(json!({"words": ["bad", "씨발"]}))).await?;
    assert_eq!(status, 200, "{v}");
    let (mut cb, _) = s.live(0, &b).await?;
    let mut ca = s.connect_over(Kind::Quic, 0, &a).await?;
    for (i, (sent, stored)) in [
        ("so B.A.D!", "so *.*.*!"),
        ("ＢＡＤ\u{200B} day", "*** day"),
        ("야 ㅆㅣㅂㅏㄹ 진짜", "야 ***** 진짜"),
        ("fine", "fine"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(code(&send(&mut ca, &format!("m{i}"), &b.user_id, sent).await?), "ack");
        let msg = cb.next_msg().await?;
        assert_eq!(msg["body"], stored, "{sent:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_over_two_devices_on_two_gateways_is_limited_then_muted_and_listed() -> Result<()> {
    let s = stack()
        .gateways(2)
        .env("CHAT_OPERATOR_TOKEN", OPERATOR)
        .env("CHAT_FLOOD_WINDOW_MS", "60000")
        .env("CHAT_FLOOD_MAX_MESSAGES", "6")
        .env("CHAT_FLOOD_MAX_REPEATS", "2")
        .env("CHAT_FLOOD_MUTE_AFTER", "3")
        .env("CHAT_FLOOD_MUTE_MS", "120000")
        .start()
        .await?;
    let a = s.user("alice", "a1").await?;
    let a2 = s.device("alice", "a2").await?;
    let b = s.user("bob", "b1").await?;
    let c = s.user("carol", "c1").await?;
    let mut d0 = s.connect_over(Kind::Ws, 0, &a).await?;
    let mut d1 = s.connect_over(Kind::Quic, 1, &a2).await?;

    // Six messages in all, alternating devices and gateways, are accepted;
    // the seventh, on either, is over the shared count.
    for i in 0..6 {
        let d = if i % 2 == 0 { &mut d0 } else { &mut d1 };
        assert_eq!(code(&send(d, &format!("f{i}"), &b.user_id, &format!("hello {i}")).await?), "ack", "{i}");
    }
    let limited = send(&mut d0, "f6", &b.user_id, "hello 6").await?;
    assert_eq!(code(&limited), "rate_limited", "{limited}");
    let retry = limited["retry_after_ms"].as_u64().unwrap_or(0);
    assert!((1..=60_000).contains(&retry), "{limited}");
    assert_eq!(code(&send(&mut d1, "f7", &b.user_id, "hello 7").await?), "rate_limited");
    // The third refusal mutes, whichever device sends it.
    let muted = send(&mut d1, "f8", &b.user_id, "hello 8").await?;
    assert_eq!(code(&muted), "muted", "{muted}");
    let retry = muted["retry_after_ms"].as_u64().unwrap_or(0);
    assert!((110_000..=120_000).contains(&retry), "{muted}");
    let again = send(&mut d0, "f9", &b.user_id, "hello 9").await?;
    assert_eq!(code(&again), "muted", "{again}");
    // Others are unaffected.
    let mut cc = s.connect_over(Kind::Ws, 1, &c).await?;
    assert_eq!(code(&send(&mut cc, "c0", &b.user_id, "hi bob").await?), "ack");

    // The same text (by skeleton) is limited sooner: twice accepted, on
    // either gateway, the third refused.
    assert_eq!(code(&send(&mut cc, "c1", &b.user_id, "BUY NOW").await?), "ack");
    let mut cc0 = s.connect_over(Kind::Ws, 0, &c).await?;
    assert_eq!(code(&send(&mut cc0, "c2", &b.user_id, "buy now").await?), "ack");
    let repeated = send(&mut cc0, "c3", &b.user_id, "B-U-Y N.O.W").await?;
    assert_eq!(code(&repeated), "rate_limited", "{repeated}");
    assert!(repeated["message"].as_str().unwrap_or("").contains("same message"), "{repeated}");

    // One event for moderators, listed on either gateway; the non-operator
    // is refused.
    let (status, _) = s.http(1).request(Method::GET, "/v1/admin/flood-events", Some(&a.token), None).await?;
    assert_eq!(status, 401);
    let (status, v) = admin(&s, 1, Method::GET, "/v1/admin/flood-events", None).await?;
    assert_eq!(status, 200, "{v}");
    let events = v["events"].as_array().cloned().unwrap_or_default();
    assert_eq!(events.len(), 1, "{v}");
    assert_eq!(
        (events[0]["user"].as_str(), events[0]["reason"].as_str()),
        (Some(a.user_id.as_str()), Some("messages"))
    );
    assert_eq!(events[0]["device"], "a2");
    let mutes: u64 = [admin(&s, 0, Method::GET, "/v1/admin/flood-events?limit=5", None).await?.1, v]
        .iter()
        .map(|v| v["counters"]["mutes"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(mutes, 1, "one gateway set the mute");
    // The same counters in Prometheus, summed over both gateways.
    let mut scraped = [0.0; 3];
    for g in 0..2 {
        let e = chat_tests::prom::metrics(&s.addr(g), Some(OPERATOR)).await?;
        for (i, name) in
            ["chat_flood_mutes_total", "chat_flood_limited_total", "chat_flood_muted_sends_total"].iter().enumerate()
        {
            scraped[i] += e.value(name, &[]);
        }
    }
    assert_eq!(scraped[0], 1.0, "chat_flood_mutes_total");
    assert!(scraped[1] >= 1.0 && scraped[2] >= 1.0, "limited and muted sends counted: {scraped:?}");
    let (status, _) = admin(&s, 0, Method::GET, "/v1/admin/flood-events?limit=0", None).await?;
    assert_eq!(status, 400);
    Ok(())
}
