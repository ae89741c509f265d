//! Brute-force limits: login attempts per client address and failed
//! logins per username, signups per client address (429 `rate_limited`
//! with `Retry-After`), and the request body limit on every route (413
//! `body_too_large`). Each scenario connects from its own loopback address
//! (127.0.0.x), so the per-address budgets are told apart.

use std::net::{IpAddr, SocketAddr};

use anyhow::{Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::stack::stack;

/// An answer: status, `Retry-After` (if any) and the JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    retry_after: Option<u64>,
    body: Value,
}

/// Sends `head` (request line and headers, without the blank line) and
/// `body` from `from`, then reads the answer until the server closes.
async fn raw(gateway: &str, from: [u8; 4], head: &str, body: &[u8]) -> Result<Answer> {
    let sock = tokio::net::TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(IpAddr::from(from), 0))?;
    let mut s = sock.connect(gateway.parse()?).await?;
    let mut req = format!("{head}\r\nHost: {gateway}\r\nConnection: close\r\n\r\n").into_bytes();
    req.extend_from_slice(body);
    s.write_all(&req).await?;
    let mut got = Vec::new();
    // A server that refuses a body it did not read may reset the
    // connection after its answer: keep what arrived.
    let mut buf = [0u8; 4096];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("no answer: {text:?}"))?;
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).with_context(|| format!("status: {head}"))?;
    let retry_after = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("retry-after")))
        .and_then(|(_, v)| v.trim().parse().ok());
    let body = serde_json::from_str(body).unwrap_or(Value::Null);
    Ok(Answer { status, retry_after, body })
}

async fn post(gateway: &str, from: [u8; 4], path: &str, body: &Value) -> Result<Answer> {
    let body = body.to_string();
    let head = format!("POST {path} HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}", body.len());
    raw(gateway, from, &head, body.as_bytes()).await
}

async fn signup(gw: &str, from: [u8; 4], name: &str) -> Result<Answer> {
    post(gw, from, "/v1/signup", &json!({"username": name, "password": "password123"})).await
}

async fn login(gw: &str, from: [u8; 4], name: &str, password: &str) -> Result<Answer> {
    post(gw, from, "/v1/login", &json!({"username": name, "password": password, "device_id": "d1"})).await
}

/// A 429 `rate_limited` whose `Retry-After` is within the refill time of
/// one token at one a minute.
fn assert_limited(a: &Answer, what: &str) {
    assert_eq!((a.status, a.body["error"]["code"].as_str()), (429, Some("rate_limited")), "{what}: {a:?}");
    let secs = a.retry_after.unwrap_or_else(|| panic!("{what}: no Retry-After: {a:?}"));
    assert!((1..=60).contains(&secs), "{what}: Retry-After {secs}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_and_signups_are_limited_per_address_and_per_username() -> Result<()> {
    let s = stack()
        .env("CHAT_SIGNUP_PER_ADDR_BURST", "3")
        .env("CHAT_SIGNUP_PER_ADDR_PER_MIN", "1")
        .env("CHAT_LOGIN_PER_ADDR_BURST", "5")
        .env("CHAT_LOGIN_PER_ADDR_PER_MIN", "1")
        .env("CHAT_LOGIN_FAILURES_BURST", "3")
        .env("CHAT_LOGIN_FAILURES_PER_MIN", "1")
        .start()
        .await?;
    let gw = s.http(0).addr;

    // Signups: three from one address, then 429; another address is not
    // affected.
    for name in ["alice", "bob", "carol"] {
        let a = signup(&gw, [127, 0, 0, 2], name).await?;
        assert_eq!(a.status, 201, "{name}: {a:?}");
    }
    assert_limited(&signup(&gw, [127, 0, 0, 2], "dave").await?, "fourth signup from one address");
    assert_eq!(signup(&gw, [127, 0, 0, 3], "dave").await?.status, 201, "another address signs up");

    // Failed logins per username: three wrong passwords, then even the
    // right one is refused, from any address; another username logs in.
    for _ in 0..3 {
        let a = login(&gw, [127, 0, 0, 4], "alice", "wrong-password").await?;
        assert_eq!(a.status, 401, "{a:?}");
    }
    assert_limited(&login(&gw, [127, 0, 0, 4], "alice", "password123").await?, "alice after 3 failures");
    assert_limited(&login(&gw, [127, 0, 0, 5], "alice", "password123").await?, "alice from another address");
    assert_eq!(login(&gw, [127, 0, 0, 5], "bob", "password123").await?.status, 200, "bob is not limited");
    // A username without an account is limited the same way.
    for _ in 0..3 {
        assert_eq!(login(&gw, [127, 0, 0, 8], "nobody", "password123").await?.status, 401);
    }
    assert_limited(&login(&gw, [127, 0, 0, 8], "nobody", "password123").await?, "unknown username");

    // Attempts per address: five logins (right ones) pass, the sixth is
    // refused; another address logs the same user in.
    for i in 0..5 {
        let a = login(&gw, [127, 0, 0, 6], "carol", "password123").await?;
        assert_eq!(a.status, 200, "login {i}: {a:?}");
    }
    let a = login(&gw, [127, 0, 0, 6], "carol", "password123").await?;
    assert_limited(&a, "sixth login from one address");
    assert!(a.body["error"]["message"].as_str().unwrap_or("").contains("address"), "{a:?}");
    assert_eq!(login(&gw, [127, 0, 0, 7], "carol", "password123").await?.status, 200);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_over_the_limit_get_413_on_every_route() -> Result<()> {
    let s = stack().env("CHAT_HTTP_MAX_BODY_BYTES", "2048").start().await?;
    let gw = s.http(0).addr;
    let from = [127, 0, 0, 1];
    let too_large = |a: &Answer, what: &str| {
        assert_eq!((a.status, a.body["error"]["code"].as_str()), (413, Some("body_too_large")), "{what}: {a:?}");
    };
    // A declared length over the limit is refused before the body is sent,
    // on routes with and without bodies and on unknown paths.
    for (method, path) in
        [("POST", "/v1/signup"), ("POST", "/v1/login"), ("GET", "/healthz"), ("PUT", "/v1/friends/1"), ("GET", "/nope")]
    {
        let a = raw(&gw, from, &format!("{method} {path} HTTP/1.1\r\nContent-Length: 2049"), b"").await?;
        too_large(&a, &format!("{method} {path}"));
    }
    // A chunked body is cut where it is read.
    let pad = "x".repeat(3000);
    let body = json!({"username": "erin", "password": "password123", "pad": pad}).to_string();
    let chunked = format!("{:x}\r\n{body}\r\n0\r\n\r\n", body.len());
    let head = "POST /v1/signup HTTP/1.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked";
    too_large(&raw(&gw, from, head, chunked.as_bytes()).await?, "chunked signup");
    // Up to the limit is read as before.
    let pad = "x".repeat(1900);
    let a = post(&gw, from, "/v1/signup", &json!({"username": "erin", "password": "password123", "pad": pad})).await?;
    assert_eq!(a.status, 201, "{a:?}");
    Ok(())
}
