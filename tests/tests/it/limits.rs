//! Bad input, size limits, floods and slow consumers.

use anyhow::Result;
use chat_client::{ClientError, Conn};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::stack::stack;

async fn error_for(c: &mut Conn, text: &str) -> Result<Value> {
    c.send_text(text.to_owned()).await?;
    Ok(c.wait_for("error", |v| v["type"] == "error").await?)
}

async fn still_usable(c: &mut Conn) -> Result<()> {
    c.send_json(&json!({"type": "ping"})).await?;
    c.wait_for("pong", |v| v["type"] == "pong").await?;
    Ok(())
}

fn code(r: Result<Value, ClientError>) -> String {
    match r {
        Err(ClientError::Api { code, .. }) => code,
        other => panic!("expected an error frame, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_get_error_frames_and_the_connection_stays_usable() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let (mut c, _) = s.live(0, &a).await?;
    for (text, want) in [
        ("{not json", "bad_json"),
        ("[1,2]", "bad_json"),
        (r#"{"type":"teleport"}"#, "unknown_type"),
        (r#"{"no":"type"}"#, "unknown_type"),
        (r#"{"type":"send","cid":"c","to":{"user":7},"body":"x"}"#, "bad_frame"),
        (r#"{"type":"send","cid":"c","to":{"user":"7"},"body":5}"#, "bad_frame"),
        (r#"{"type":"sync","cursor":"abc"}"#, "bad_cursor"),
    ] {
        let e = error_for(&mut c, text).await?;
        assert_eq!(e["code"], want, "{text}");
        still_usable(&mut c).await?;
    }
    let e = error_for(&mut c, r#"{"type":"send","cid":"c7","to":{"user":"7"},"body":[]}"#).await?;
    assert_eq!(e["cid"], "c7", "the cid is echoed when it could be read");

    let to = b.user_id.as_str();
    assert_eq!(code(c.send_to_user("e1", to, "").await), "empty_body");
    assert_eq!(code(c.send_to_user("e2", "999999", "hi").await), "unknown_user");
    assert_eq!(code(c.send_to_user("e3", "not-a-number", "hi").await), "bad_frame");
    assert_eq!(code(c.send_to_user("bad.cid", to, "hi").await), "bad_cid");
    // 100,000 characters (400,000 bytes of UTF-8) are accepted; one more is not.
    let max: String = "😀".repeat(100_000);
    let ack = c.send_to_user("big", to, &max).await?;
    assert_eq!(ack["type"], "ack");
    assert_eq!(code(c.send_to_user("big2", to, &format!("{max}x")).await), "too_large");
    c.send_raw(Message::Binary(vec![1u8, 2, 3].into())).await?;
    assert_eq!(c.wait_for("error", |v| v["type"] == "error").await?["code"], "bad_json");
    still_usable(&mut c).await?;

    let (mut cb, _) = s.live(0, &b).await?;
    let (msgs, _) = cb.sync(None).await?;
    assert_eq!(msgs.len(), 1, "only the valid send was stored");
    assert_eq!(msgs[0]["body"].as_str().map(|b| b.chars().count()), Some(100_000));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_frames_and_invalid_utf8_close_with_documented_codes() -> Result<()> {
    let s = stack().env("CHAT_WS_MAX_FRAME_BYTES", "65536").start().await?;
    let a = s.user("alice", "a1").await?;
    let (mut c, _) = s.live(0, &a).await?;
    c.send_text("x".repeat(70_000)).await?;
    match c.next().await {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
    let (mut c, _) = s.live(0, &a).await?;
    let frame = Frame::message(vec![0xff, 0xfe, 0xfd], OpCode::Data(Data::Text), true);
    c.send_raw(Message::Frame(frame)).await?;
    match c.next().await {
        Err(ClientError::Closed { code, .. }) => assert_eq!(code, 1007),
        other => panic!("expected close 1007, got {other:?}"),
    }
    // The gateway is unaffected.
    let (mut c, _) = s.live(0, &a).await?;
    still_usable(&mut c).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_are_rate_limited() -> Result<()> {
    let s = stack().env("CHAT_WS_RATE_PER_SEC", "20").env("CHAT_WS_RATE_BURST", "20").start().await?;
    let a = s.user("alice", "a1").await?;
    let (mut c, _) = s.live(0, &a).await?;
    for _ in 0..60 {
        c.send_json(&json!({"type": "ping"})).await?;
    }
    let limited = c.wait_for("rate_limited", |v| v["code"] == "rate_limited").await?;
    assert_eq!(limited["type"], "error");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_disconnected_with_4008() -> Result<()> {
    let s = stack()
        .env("CHAT_WS_OUTBOUND_FRAMES", "16")
        .env("CHAT_WS_OUTBOUND_BYTES", "1048576")
        .env("CHAT_WS_STALL_TIMEOUT_MS", "500")
        .start()
        .await?;
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let (mut cb, _) = s.live(0, &b).await?;
    let (mut ca, _) = s.live(0, &a).await?;
    // 15 MB for bob, who reads nothing meanwhile: more than the socket
    // buffers and the 1 MiB outbound queue hold.
    let body = "z".repeat(100_000);
    let sent = 150;
    for i in 0..sent {
        if let Err(e) = ca.send_to_user(&format!("s{i}"), &b.user_id, &body).await {
            panic!("send {i}: {e}");
        }
    }
    let mut received = 0;
    let code = loop {
        match cb.next().await {
            Ok(v) if v["type"] == "msg" => received += 1,
            Ok(_) => {}
            Err(ClientError::Closed { code, .. }) => break code,
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(code, 4008, "slow consumer close code");
    assert!(received < sent, "the gateway stopped queueing for the slow reader ({received} of {sent})");
    // A client that reads catches up on all 15 MB through the same small
    // queue: delivery waits for room instead of dropping anyone.
    let mut cb = s.connect(0, &b).await?;
    let (all, _) = cb.sync(None).await?;
    assert_eq!(all.len(), sent);
    still_usable(&mut cb).await?;
    Ok(())
}
