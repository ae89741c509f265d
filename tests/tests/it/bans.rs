//! Operator bans: every session of the user closes at once on every
//! gateway and transport (4011 `banned`), tokens from before stop working,
//! a login answers 403 `banned` until the ban ends or is lifted; nobody
//! else is touched; only the operator credential may do it.

use std::time::Duration;

use anyhow::Result;
use chat_client::{ClientError, Conn, Method};
use chat_tests::wait_for;
use serde_json::{json, Value};

use crate::stack::{stack, Kind};

const OPERATOR: &str = "operator-credential-for-bans-0123456789";

/// Reads frames until the session is closed; its close code.
async fn closed(c: &mut Conn) -> Result<u16> {
    loop {
        match c.next().await {
            Ok(_) => continue,
            Err(ClientError::Closed { code, .. }) => return Ok(code),
            Err(e) => return Err(e.into()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ban_closes_every_session_everywhere_and_refuses_login_until_lifted() -> Result<()> {
    let mut s = stack().env("CHAT_OPERATOR_TOKEN", OPERATOR).start().await?;
    s.add_gateway().await?;
    let phone = s.user("alice", "phone").await?;
    let laptop = s.device("alice", "laptop").await?;
    let bob = s.user("bob", "b").await?;
    let alice = phone.user_id.clone();
    let (mut on_ws, _) = s.live(0, &phone).await?;
    let mut on_quic = s.connect_over(Kind::Quic, 1, &laptop).await?;
    on_quic.sync(None).await?;
    let (mut bobs, _) = s.live(1, &bob).await?;
    let http = s.http(0);
    let admin = format!("/v1/admin/users/{alice}");
    let ban = format!("{admin}/ban");

    // Only the operator credential passes: not a user's token, not none.
    for t in [Some(phone.token.as_str()), Some(bob.token.as_str()), None] {
        let (st, v) = http.request(Method::PUT, &ban, t, Some(json!({}))).await?;
        assert_eq!((st, v["error"]["code"].as_str()), (401, Some("unauthorized")), "{v}");
        assert_eq!(http.request(Method::GET, &admin, t, None).await?.0, 401);
    }
    // Bad requests are refused with their codes and ban nobody.
    for (body, status) in [
        (json!({"duration_secs": 0}), 400),
        (json!({"duration_secs": 10u64 * 365 * 24 * 3600 + 1}), 400),
        (json!({"reason": "x".repeat(501)}), 400),
        (json!({"reson": "typo"}), 400),
    ] {
        let (st, v) = http.request(Method::PUT, &ban, Some(OPERATOR), Some(body)).await?;
        assert_eq!(st, status, "{v}");
    }
    let (st, _) = http.request(Method::PUT, "/v1/admin/users/999999/ban", Some(OPERATOR), Some(json!({}))).await?;
    assert_eq!(st, 404);
    let (st, _) = http.request(Method::PUT, "/v1/admin/users/07/ban", Some(OPERATOR), Some(json!({}))).await?;
    assert_eq!(st, 400, "a non-canonical id");

    // The operator sees both devices and both live sessions.
    let sessions = |v: &Value| v["sessions"].as_array().map_or(0, Vec::len);
    let v = wait_for("alice's two sessions listed", Duration::from_secs(10), || async {
        let (_, v) = http.request(Method::GET, &admin, Some(OPERATOR), None).await.ok()?;
        (sessions(&v) == 2).then_some(v)
    })
    .await?;
    let devices: Vec<&str> = v["devices"].as_array().unwrap().iter().map(|d| d["device"].as_str().unwrap()).collect();
    assert_eq!(devices, ["phone", "laptop"]);
    assert_eq!(v["username"], "alice");
    assert_eq!(v["ban"], Value::Null);

    let (st, v) = http.request(Method::PUT, &ban, Some(OPERATOR), Some(json!({"reason": "spam"}))).await?;
    assert_eq!(st, 200, "{v}");
    assert_eq!(
        (v["ban"]["reason"].as_str(), &v["ban"]["until_ms"], &v["devices"]),
        (Some("spam"), &Value::Null, &json!(2))
    );
    // Both sessions close at once: WebSocket on gw0, QUIC on gw1.
    assert_eq!(closed(&mut on_ws).await?, 4011);
    assert_eq!(closed(&mut on_quic).await?, 4011);
    // Tokens from before the ban are void on every gateway; login is refused.
    for g in 0..2 {
        let (st, _) = s.http(g).request(Method::GET, &format!("/v1/users/{alice}"), Some(&phone.token), None).await?;
        assert_eq!(st, 401, "gateway {g} still takes a token issued before the ban");
    }
    match http.login("alice", "password123", "phone").await {
        Err(ClientError::Api { status: 403, code, .. }) => assert_eq!(code, "banned"),
        other => panic!("a banned login answered {other:?}"),
    }
    // A wrong password still says only that.
    match http.login("alice", "wrong-password", "phone").await {
        Err(ClientError::Api { status: 401, .. }) => {}
        other => panic!("a wrong password of a banned account answered {other:?}"),
    }
    // Bob is untouched: his session still answers.
    bobs.send_json(&json!({"type": "ping"})).await?;
    assert_eq!(bobs.next().await?["type"], "pong");
    let v = wait_for("alice's sessions gone", Duration::from_secs(10), || async {
        let (_, v) = http.request(Method::GET, &admin, Some(OPERATOR), None).await.ok()?;
        (sessions(&v) == 0).then_some(v)
    })
    .await?;
    assert_eq!(v["ban"]["reason"], "spam");

    // Lifted: alice logs in again, and the new token works.
    let (st, v) = http.request(Method::DELETE, &ban, Some(OPERATOR), None).await?;
    assert_eq!((st, &v["ban"]), (200, &Value::Null));
    let again = http.login("alice", "password123", "phone").await?;
    assert_eq!(http.request(Method::GET, &format!("/v1/users/{alice}"), Some(&again.token), None).await?.0, 200);

    // A timed ban ends on its own.
    let (st, v) = http.request(Method::PUT, &ban, Some(OPERATOR), Some(json!({"duration_secs": 2}))).await?;
    assert_eq!(st, 200, "{v}");
    assert!(v["ban"]["until_ms"].as_i64().is_some(), "{v}");
    assert!(matches!(http.login("alice", "password123", "phone").await, Err(ClientError::Api { status: 403, .. })));
    wait_for("the timed ban to end", Duration::from_secs(15), || async {
        http.login("alice", "password123", "phone").await.ok()
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_are_off_without_an_operator_credential() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a").await?;
    let path = format!("/v1/admin/users/{}/ban", a.user_id);
    for t in [Some(a.token.as_str()), None] {
        let (st, v) = s.http(0).request(Method::PUT, &path, t, Some(json!({}))).await?;
        assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")), "{v}");
    }
    Ok(())
}
