//! The core scenarios over WebSocket, QUIC and mixed: one test body,
//! parameterised by the transports of the sender and the receiver.

use anyhow::Result;
use chat_client::{ClientError, Conn};
use serde_json::{json, Value};

use crate::stack::{stack, Kind, Stack};

fn ids(msgs: &[Value]) -> Vec<String> {
    msgs.iter().map(|m| m["id"].as_str().unwrap().to_owned()).collect()
}

/// Live delivery to several devices, sync after offline with no gap or
/// duplicate at the seam, and duplicate `cid`s.
async fn scenario(s: &Stack, sender: Kind, receiver: Kind) -> Result<()> {
    let (a1, a2) = (s.user("alice", "a1").await?, s.device("alice", "a2").await?);
    let (b1, b2) = (s.user("bob", "b1").await?, s.device("bob", "b2").await?);
    let mut ca1 = s.connect_over(sender, 0, &a1).await?;
    ca1.sync(None).await?;
    // The sender's other device uses the other transport.
    let other = if sender == Kind::Ws { Kind::Quic } else { Kind::Ws };
    let mut ca2 = s.connect_over(other, 0, &a2).await?;
    ca2.sync(None).await?;
    let mut cb1 = s.connect_over(receiver, 0, &b1).await?;
    cb1.sync(None).await?;

    let ack = ca1.send_to_user("c1", &b1.user_id, "hello").await?;
    for c in [&mut cb1, &mut ca2] {
        let m = c.next_msg().await?;
        assert_eq!((m["id"].clone(), m["body"].clone()), (ack["id"].clone(), json!("hello")));
    }
    let again = ca1.send_to_user("c1", &b1.user_id, "hello").await?;
    assert_eq!(again["id"], ack["id"], "same cid, same id");

    // b2 was offline: catches up over the receiver's transport, then live.
    let mut sent = vec![ack["id"].as_str().unwrap().to_owned()];
    for i in 0..5 {
        sent.push(
            ca1.send_to_user(&format!("o{i}"), &b1.user_id, &format!("{i}")).await?["id"].as_str().unwrap().into(),
        );
    }
    let mut cb2 = s.connect_over(receiver, 0, &b2).await?;
    let (caught, cursor) = cb2.sync(None).await?;
    assert_eq!(ids(&caught), sent, "every message once, in order");
    let live = ca1.send_to_user("l1", &b1.user_id, "live").await?;
    let m = cb2.next_msg().await?;
    assert_eq!(m["id"], live["id"]);
    assert!(m["cursor"].as_str().unwrap().parse::<u64>()? > cursor.parse::<u64>()?);
    // b1 saw the same order live.
    let mut live_b1 = Vec::new();
    for _ in 0..6 {
        live_b1.push(cb1.next_msg().await?);
    }
    assert_eq!(ids(&live_b1), [&sent[1..], &[live["id"].as_str().unwrap().to_owned()]].concat());

    // The longest body (100,000 characters, 300,000 bytes of UTF-8) crosses
    // both transports whole, larger than the QUIC stream window.
    let long: String = "€".repeat(100_000);
    let big = ca1.send_to_user("big", &b1.user_id, &long).await?;
    for c in [&mut cb1, &mut cb2] {
        let m = c.next_msg().await?;
        assert_eq!(m["id"], big["id"]);
        assert!(m["body"].as_str() == Some(long.as_str()), "the long body arrives intact");
    }
    // a2 (the other transport) still holds the messages sent since "hello".
    let m = loop {
        let m = ca2.next_msg().await?;
        if m["id"] == big["id"] {
            break m;
        }
    };
    assert!(m["body"].as_str() == Some(long.as_str()), "the long body arrives intact on the other transport");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_to_quic() -> Result<()> {
    scenario(&stack().start().await?, Kind::Quic, Kind::Quic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_to_websocket() -> Result<()> {
    scenario(&stack().start().await?, Kind::Quic, Kind::Ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_quic() -> Result<()> {
    scenario(&stack().start().await?, Kind::Ws, Kind::Quic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_to_websocket() -> Result<()> {
    scenario(&stack().start().await?, Kind::Ws, Kind::Ws).await
}

async fn closed_with(c: &mut Conn) -> Result<u16> {
    loop {
        match c.next().await {
            Ok(_) => continue,
            Err(ClientError::Closed { code, .. }) => return Ok(code),
            Err(e) => return Err(e.into()),
        }
    }
}

/// The close code after a frame the server refuses: the server may close
/// while the frame is still being written (QUIC), and then the write itself
/// reports the close.
async fn closed_after(c: &mut Conn, sent: Result<(), ClientError>) -> Result<u16> {
    match sent {
        Ok(()) => closed_with(c).await,
        Err(ClientError::Closed { code, .. }) => Ok(code),
        Err(e) => Err(e.into()),
    }
}

/// Bad frames, auth failure and oversize frames, the same on both.
async fn bad_input(kind: Kind) -> Result<()> {
    let s = stack().env("CHAT_WS_MAX_FRAME_BYTES", "65536").start().await?;
    let a = s.user("alice", "a1").await?;
    let mut c = s.connect_over(kind, 0, &a).await?;
    for (text, code) in
        [("{oops", "bad_json"), (r#"{"type":"fly"}"#, "unknown_type"), (r#"{"type":"sync","cursor":5}"#, "bad_frame")]
    {
        c.send_text(text.into()).await?;
        assert_eq!(c.wait_for("error", |v| v["type"] == "error").await?["code"], code, "{text}");
    }
    c.send_json(&json!({"type": "ping"})).await?;
    c.wait_for("pong", |v| v["type"] == "pong").await?;
    let sent = c.send_text("x".repeat(70_000)).await;
    assert_eq!(closed_after(&mut c, sent).await?, 1009);
    if kind == Kind::Quic {
        let mut c = s.connect_over(kind, 0, &a).await?;
        let sent = c.send_bytes(vec![0xff, 0xfe]).await;
        assert_eq!(closed_after(&mut c, sent).await?, 1007);
    }
    let forged = chat_client::Login { token: "forged".into(), ..a.clone() };
    let refused = Conn::connect_with(&s.transport(0, kind), &s.addr(0), &forged.token).await;
    assert!(matches!(refused, Err(ClientError::Api { status: 401, .. })), "{:?}", refused.err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_quic() -> Result<()> {
    bad_input(Kind::Quic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_over_websocket() -> Result<()> {
    bad_input(Kind::Ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_client_keeps_its_session_when_its_address_changes() -> Result<()> {
    let s = stack().start().await?;
    let (a, b) = (s.user("alice", "a").await?, s.user("bob", "b").await?);
    let mut cb = s.connect_over(Kind::Quic, 0, &b).await?;
    cb.sync(None).await?;
    let mut ca = s.connect_over(Kind::Ws, 0, &a).await?;
    ca.send_to_user("m1", &b.user_id, "before").await?;
    assert_eq!(cb.next_msg().await?["body"], "before");
    let before = cb.quic().unwrap().local_addr()?;
    cb.quic().unwrap().rebind()?;
    assert_ne!(cb.quic().unwrap().local_addr()?, before, "a new local address");
    // Both directions still work on the same session, with no reconnect.
    ca.send_to_user("m2", &b.user_id, "after").await?;
    assert_eq!(cb.next_msg().await?["body"], "after");
    let ack = cb.send_to_user("m3", &a.user_id, "from the new address").await?;
    assert_eq!(ack["type"], "ack");
    Ok(())
}
