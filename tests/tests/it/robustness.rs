//! Defects found by a client written from the docs alone: text PostgreSQL
//! cannot store, the WebSocket close handshake, QUIC login deadlines, one
//! canonical form of ids, and token contents checked like any input.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use chat_client::{ClientError, Method};
use chat_gateway::auth::{self, Claims};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::stack::{stack, Kind, Stack};

async fn call(s: &Stack, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Result<(u16, Value)> {
    Ok(s.http(0).request(method, path, token, body).await?)
}

fn err_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_with_nul_is_a_400_before_the_database() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let t = Some(a.token.as_str());
    let cases: Vec<(Method, &str, Option<&str>, Value)> = vec![
        (Method::POST, "/v1/signup", None, json!({"username": "nul\u{0}user", "password": "password123"})),
        (Method::POST, "/v1/signup", None, json!({"username": "nulpass", "password": "pass\u{0}word123"})),
        (
            Method::POST,
            "/v1/login",
            None,
            json!({"username": "alice", "password": "password123", "device_id": "d\u{0}"}),
        ),
        (Method::POST, "/v1/groups", t, json!({"name": "a\u{0}b"})),
        (Method::POST, "/v1/groups", t, json!({"name": "ok", "members": ["\u{0}"]})),
        (Method::POST, "/v1/groups/1/members", t, json!({"user_id": "1\u{0}"})),
        (Method::PUT, "/v1/devices/a1/push", t, json!({"provider": "fcm", "token": "tok\u{0}en"})),
        (Method::PUT, "/v1/devices/a1/push", t, json!({"provider\u{0}": "fcm"})),
    ];
    for (method, path, token, body) in cases {
        let (status, v) = call(&s, method.clone(), path, token, Some(body.clone())).await?;
        assert_eq!((status, err_code(&v)), (400, "bad_request"), "{method} {path} {body}: {v}");
        assert!(v["error"]["message"].as_str().unwrap_or("").contains("NUL"), "{v}");
    }
    // A body must be an object: an array is not read as fields in order.
    let (status, v) = call(&s, Method::POST, "/v1/signup", None, Some(json!(["carol", "password123"]))).await?;
    assert_eq!((status, err_code(&v)), (400, "bad_request"), "{v}");
    // Nothing was half-done: the same requests without NUL work.
    let (status, v) = call(&s, Method::POST, "/v1/groups", t, Some(json!({"name": "ab"}))).await?;
    assert_eq!(status, 201, "{v}");
    Ok(())
}

/// A WebSocket upgraded by hand on a raw socket, to send frames a
/// well-behaved client library refuses to make.
async fn raw_ws(addr: &str, token: &str) -> Result<TcpStream> {
    let mut sock = TcpStream::connect(addr).await?;
    let req = format!(
        "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await?;
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        if sock.read(&mut b).await? == 0 {
            bail!("connection closed during the upgrade: {}", String::from_utf8_lossy(&head));
        }
        head.push(b[0]);
    }
    anyhow::ensure!(head.starts_with(b"HTTP/1.1 101"), "upgrade refused: {}", String::from_utf8_lossy(&head));
    Ok(sock)
}

/// Reads server frames until a close frame; returns its code (None when
/// the connection ended without one).
async fn close_code(sock: &mut TcpStream) -> Result<Option<u16>> {
    let read = async {
        loop {
            let mut h = [0u8; 2];
            if sock.read_exact(&mut h).await.is_err() {
                return Ok::<_, std::io::Error>(None);
            }
            let len = match h[1] & 0x7f {
                126 => {
                    let mut l = [0u8; 2];
                    sock.read_exact(&mut l).await?;
                    u64::from(u16::from_be_bytes(l))
                }
                127 => {
                    let mut l = [0u8; 8];
                    sock.read_exact(&mut l).await?;
                    u64::from_be_bytes(l)
                }
                n => u64::from(n),
            };
            let mut payload = vec![0u8; len as usize];
            sock.read_exact(&mut payload).await?;
            if h[0] & 0x0f == 0x8 {
                return Ok(payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]])));
            }
        }
    };
    Ok(tokio::time::timeout(Duration::from_secs(10), read).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_close_is_answered_and_protocol_violations_get_1002() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    // A clean close is answered with the client's own code, then TCP ends.
    for code in [1000u16, 4321] {
        let url = format!("ws://{}/v1/ws?token={}", s.addr(0), a.token);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await?;
        let frame = CloseFrame { code: CloseCode::from(code), reason: "bye".into() };
        futures::SinkExt::send(&mut ws, Message::Close(Some(frame))).await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), futures::StreamExt::next(&mut ws)).await?;
        match answer {
            Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), code, "echoed code"),
            other => panic!("expected the close frame answered with {code}, got {other:?}"),
        }
    }
    // Protocol violations: 1002, never 1001 ("gateway shutting down").
    let mask = [1u8, 2, 3, 4];
    let masked = |first: u8, data: &[u8]| {
        let mut f = vec![first, 0x80 | data.len() as u8];
        f.extend_from_slice(&mask);
        f.extend(data.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    };
    for (what, frame) in [
        ("unmasked frame", vec![0x81u8, 0x02, b'h', b'i']),
        ("reserved data opcode", masked(0x83, b"x")),
        ("reserved control opcode", masked(0x8b, b"")),
        ("RSV1 without an extension", masked(0xc1, br#"{"type":"ping"}"#)),
        ("continuation without a start", masked(0x80, b"x")),
    ] {
        let mut sock = raw_ws(&s.addr(0), &a.token).await?;
        sock.write_all(&frame).await?;
        assert_eq!(close_code(&mut sock).await?, Some(1002), "{what}");
    }
    // The gateway is fine afterwards.
    let (mut c, _) = s.live(0, &a).await?;
    c.send_json(&json!({"type": "ping"})).await?;
    c.wait_for("pong", |v| v["type"] == "pong").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_connection_that_never_opens_a_stream_is_closed_at_the_login_deadline() -> Result<()> {
    let s = stack().env("CHAT_QUIC_AUTH_TIMEOUT_MS", "1000").env("CHAT_QUIC_KEEPALIVE_MS", "200").start().await?;
    let chat_client::Transport::Quic { addr, trust } = s.transport(0, Kind::Quic) else { bail!("no QUIC") };
    let ep = chat_client::quic::endpoint("127.0.0.1:0".parse()?)?;
    let started = Instant::now();
    let remote: std::net::SocketAddr = addr.parse()?;
    let conn = ep.connect_with(chat_client::quic::client_config(&trust)?, remote, "localhost")?.await?;
    // No stream, nothing sent: only keep-alives flow.
    let reason = tokio::time::timeout(Duration::from_secs(10), conn.closed()).await?;
    let elapsed = started.elapsed();
    match reason {
        quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(c.error_code, quinn::VarInt::from_u32(4003)),
        other => panic!("expected close 4003, got {other:?}"),
    }
    assert!(elapsed >= Duration::from_millis(900), "closed at the deadline, not before ({elapsed:?})");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_have_one_canonical_form_everywhere() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let t = Some(a.token.as_str());
    let bid = b.user_id.as_str();
    let (mut c, _) = s.live(0, &a).await?;
    for bad in [format!("0{bid}"), format!("+{bid}"), format!(" {bid}"), "-1".into(), "0".into(), "x".into()] {
        match c.send_to_user("c1", &bad, "hi").await {
            Err(ClientError::Api { code, .. }) => assert_eq!(code, "bad_frame", "to.user {bad:?}"),
            other => panic!("to.user {bad:?}: {other:?}"),
        }
    }
    assert_eq!(c.send_to_user("c1", bid, "hi").await?["type"], "ack");
    match c.send_to_user("c2", "999999", "hi").await {
        Err(ClientError::Api { code, .. }) => assert_eq!(code, "unknown_user", "well-formed, names nobody"),
        other => panic!("to.user 999999: {other:?}"),
    }
    let g = s.create_group(&a, "g", &[bid]).await?;
    let gid = g["group_id"].as_str().unwrap().to_owned();
    let frame = json!({"type": "send", "cid": "c3", "to": {"group": format!("0{gid}")}, "body": "x"});
    match c.send_frame_and_ack(frame, "c3").await {
        Err(ClientError::Api { code, .. }) => assert_eq!(code, "bad_frame"),
        other => panic!("to.group with a leading zero: {other:?}"),
    }
    c.send_json(&json!({"type": "sync", "cursor": "01"})).await?;
    assert_eq!(c.wait_for("error", |v| v["type"] == "error").await?["code"], "bad_cursor");

    let (lo, hi) = {
        let (x, y) = (a.user_id.parse::<i64>()?, b.user_id.parse::<i64>()?);
        (x.min(y), x.max(y))
    };
    let bad_paths = [
        (Method::GET, format!("/v1/users/0{bid}")),
        (Method::GET, format!("/v1/users/+{bid}")),
        (Method::GET, format!("/v1/conversations/dm-0{lo}-{hi}/messages")),
        (Method::GET, format!("/v1/conversations/dm-{lo}-{hi}/messages?before=01")),
        (Method::GET, format!("/v1/conversations/dm-{lo}-{hi}/messages?limit=+5")),
        (Method::GET, format!("/v1/groups/0{gid}")),
        (Method::PUT, format!("/v1/friends/0{bid}")),
        (Method::DELETE, format!("/v1/groups/{gid}/members/+{bid}")),
        (Method::PUT, format!("/v1/conversations/g-0{gid}/mute")),
        (Method::GET, "/v1/devices/a$1/push".to_string()),
    ];
    for (method, path) in bad_paths {
        let (status, v) = call(&s, method.clone(), &path, t, None).await?;
        assert_eq!((status, err_code(&v)), (400, "bad_request"), "{method} {path}: {v}");
    }
    // The canonical spellings work; a well-formed id of nothing is 404.
    assert_eq!(call(&s, Method::GET, &format!("/v1/users/{bid}"), t, None).await?.0, 200);
    assert_eq!(call(&s, Method::GET, "/v1/users/999999", t, None).await?.0, 404);
    let (status, v) =
        call(&s, Method::GET, &format!("/v1/conversations/dm-{lo}-{hi}/messages?limit=5"), t, None).await?;
    assert_eq!((status, v["messages"].as_array().map(Vec::len)), (200, Some(1)), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signed_tokens_are_checked_like_any_input() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let secret = s.env["CHAT_TOKEN_SECRET"].as_bytes().to_vec();
    let exp = auth::now_secs() + 3600;
    let me: i64 = a.user_id.parse()?;
    let forged = |user: i64, device: &str| auth::issue(&secret, &Claims { user, device: device.into(), exp, gen: 0 });
    // Sanity: the stack's secret mints a token the gateway takes.
    assert_eq!(call(&s, Method::GET, "/v1/conversations", Some(&forged(me, "a1")), None).await?.0, 200);
    for (what, token) in [
        ("user -1", forged(-1, "a1")),
        ("user 0", forged(0, "a1")),
        ("a user that does not exist", forged(me + 1000, "a1")),
        ("device sys", forged(me, "sys")),
        ("device svc-x", forged(me, "svc-x")),
        ("device c$1", forged(me, "c$1")),
    ] {
        let (status, v) = call(&s, Method::GET, "/v1/conversations", Some(&token), None).await?;
        assert_eq!((status, err_code(&v)), (401, "unauthorized"), "HTTP, {what}");
        for kind in [Kind::Ws, Kind::Quic] {
            let login = chat_client::Login { token: token.clone(), ..a.clone() };
            match s.connect_over(kind, 0, &login).await.map_err(|e| e.downcast::<ClientError>()) {
                Err(Ok(ClientError::Api { status: 401, .. })) => {}
                Err(e) => panic!("{kind:?}, {what}: expected 401, got {e:?}"),
                Ok(_) => panic!("{kind:?} accepted a token for {what}"),
            }
        }
    }
    Ok(())
}
