//! 1:1 messaging, multi-device delivery, sync, dedupe, history, auth.

use anyhow::Result;
use chat_client::{direct_conv, ClientError, Conn, Method};
use serde_json::Value;

use crate::stack::stack;

fn ids(msgs: &[Value]) -> Vec<u64> {
    msgs.iter().map(|m| m["id"].as_str().unwrap().parse().unwrap()).collect()
}

fn bodies(msgs: &[Value]) -> Vec<String> {
    msgs.iter().map(|m| m["body"].as_str().unwrap().to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_message_reaches_every_device_of_both_users() -> Result<()> {
    let s = stack().start().await?;
    let (a1, a2) = (s.user("alice", "a1").await?, s.device("alice", "a2").await?);
    let (b1, b2) = (s.user("bob", "b1").await?, s.device("bob", "b2").await?);
    let (mut ca1, _) = s.live(0, &a1).await?;
    let (mut ca2, _) = s.live(0, &a2).await?;
    let (mut cb1, _) = s.live(0, &b1).await?;
    let (mut cb2, _) = s.live(0, &b2).await?;

    let ack = ca1.send_to_user("c1", &b1.user_id, "hello bob").await?;
    let id = ack["id"].as_str().unwrap().to_owned();
    assert_eq!(ack["conv"], direct_conv(&a1.user_id, &b1.user_id));
    for (name, c) in [("b1", &mut cb1), ("b2", &mut cb2), ("a2", &mut ca2)] {
        let m = c.next_msg().await?;
        assert_eq!(m["id"], id.as_str(), "{name}");
        assert_eq!(m["body"], "hello bob", "{name}");
        assert_eq!(m["from"], a1.user_id.as_str(), "{name}");
        assert!(m.get("cid").is_none(), "{name} is not the sending device");
    }
    // The sending device gets its own message back, marked with its cid.
    let echo = ca1.next_msg().await?;
    assert_eq!((echo["id"].as_str(), echo["cid"].as_str()), (Some(id.as_str()), Some("c1")));

    let ping = ca1.send_json(&serde_json::json!({"type": "ping"})).await;
    assert!(ping.is_ok());
    assert_eq!(ca1.wait_for("pong", |v| v["type"] == "pong").await?["type"], "pong");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_device_catches_up_in_order_then_continues_live() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let (mut ca, _) = s.live(0, &a).await?;
    for i in 0..20 {
        ca.send_to_user(&format!("m{i}"), &b.user_id, &format!("msg {i}")).await?;
    }
    let mut cb = s.connect(0, &b).await?;
    let (msgs, cursor) = cb.sync(None).await?;
    assert_eq!(bodies(&msgs), (0..20).map(|i| format!("msg {i}")).collect::<Vec<_>>());
    let got = ids(&msgs);
    assert!(got.windows(2).all(|w| w[0] < w[1]), "ids strictly increase: {got:?}");
    assert_eq!(cursor, msgs[19]["cursor"].as_str().unwrap());

    // Live after synced: exactly the next message, no duplicate at the seam.
    ca.send_to_user("m20", &b.user_id, "msg 20").await?;
    let live = cb.next_msg().await?;
    assert_eq!(live["body"], "msg 20");
    assert!(live["cursor"].as_str().unwrap().parse::<u64>()? > cursor.parse::<u64>()?);
    cb.close().await;

    // A reconnect from a mid-way cursor gets exactly the rest, once.
    let mid = msgs[9]["cursor"].as_str().unwrap().to_owned();
    let mut cb = s.connect(0, &b).await?;
    let (rest, _) = cb.sync(Some(&mid)).await?;
    assert_eq!(bodies(&rest), (10..=20).map(|i| format!("msg {i}")).collect::<Vec<_>>());

    // Up to date: synced at once with the same cursor, then live.
    let last = rest.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    let mut cb2 = s.connect(0, &b).await?;
    let (none, same) = cb2.sync(Some(&last)).await?;
    assert!(none.is_empty());
    assert_eq!(same, last);
    ca.send_to_user("m21", &b.user_id, "msg 21").await?;
    assert_eq!(cb2.next_msg().await?["body"], "msg 21");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_cid_returns_the_same_id_and_is_delivered_once() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let (mut ca, _) = s.live(0, &a).await?;
    let (mut cb, _) = s.live(0, &b).await?;
    let first = ca.send_to_user("same", &b.user_id, "once").await?;
    let again = ca.send_to_user("same", &b.user_id, "once").await?;
    assert_eq!(first["id"], again["id"]);
    // A retry from a new connection of the same device is deduped too.
    let mut ca2 = s.connect(0, &a).await?;
    let third = ca2.send_to_user("same", &b.user_id, "once").await?;
    assert_eq!(first["id"], third["id"]);
    ca.send_to_user("next", &b.user_id, "after").await?;
    assert_eq!(cb.next_msg().await?["body"], "once");
    assert_eq!(cb.next_msg().await?["body"], "after", "the retried send was delivered once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_pages_over_250_messages() -> Result<()> {
    let s = stack().start().await?;
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let c = s.user("carol", "c1").await?;
    let (mut ca, _) = s.live(0, &a).await?;
    for i in 0..250 {
        ca.send_to_user(&format!("h{i}"), &b.user_id, &format!("{i}")).await?;
    }
    let conv = direct_conv(&a.user_id, &b.user_id);
    let http = s.http(0);
    let nums = |v: &Value| -> Vec<u32> {
        v["messages"].as_array().unwrap().iter().map(|m| m["body"].as_str().unwrap().parse().unwrap()).collect()
    };
    let p1 = http.history(&b.token, &conv, "limit=100").await?;
    assert_eq!(nums(&p1), (150..250).collect::<Vec<_>>());
    assert_eq!(p1["has_more"], true);
    let before = p1["messages"][0]["id"].as_str().unwrap();
    let p2 = http.history(&b.token, &conv, &format!("limit=100&before={before}")).await?;
    assert_eq!(nums(&p2), (50..150).collect::<Vec<_>>());
    let before = p2["messages"][0]["id"].as_str().unwrap();
    let p3 = http.history(&a.token, &conv, &format!("limit=100&before={before}")).await?;
    assert_eq!(nums(&p3), (0..50).collect::<Vec<_>>());
    assert_eq!(p3["has_more"], false);
    let after = p3["messages"][49]["id"].as_str().unwrap();
    let fwd = http.history(&a.token, &conv, &format!("limit=70&after={after}")).await?;
    assert_eq!(nums(&fwd), (50..120).collect::<Vec<_>>());
    assert_eq!(fwd["has_more"], true);
    let default = http.history(&a.token, &conv, "").await?;
    assert_eq!(nums(&default), (200..250).collect::<Vec<_>>());

    // Only participants; limits are checked.
    let denied = http.history(&c.token, &conv, "limit=10").await;
    assert!(matches!(denied, Err(ClientError::Api { status: 403, ref code, .. }) if code == "forbidden"), "{denied:?}");
    let too_many = http.history(&a.token, &conv, "limit=101").await;
    assert!(matches!(too_many, Err(ClientError::Api { status: 400, .. })), "{too_many:?}");
    let (status, _) = http.request(Method::GET, &format!("/v1/conversations/{conv}/messages"), None, None).await?;
    assert_eq!(status, 401);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_page_of_the_longest_messages_is_whole() -> Result<()> {
    // 20 bodies of 100,000 three-byte characters: a page is ~6 MB, more
    // than one batched read returns, so the read must continue.
    let s = stack().start().await?;
    let (a, b) = (s.user("alice", "a1").await?, s.user("bob", "b1").await?);
    let (mut ca, _) = s.live(0, &a).await?;
    for i in 0..20 {
        let body = format!("{i:02}{}", "€".repeat(99_998));
        ca.send_to_user(&format!("long{i}"), &b.user_id, &body).await?;
    }
    let conv = direct_conv(&a.user_id, &b.user_id);
    let page = s.http(0).history(&b.token, &conv, "limit=20").await?;
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 20);
    for (i, m) in msgs.iter().enumerate() {
        let body = m["body"].as_str().unwrap();
        assert!(body.starts_with(&format!("{i:02}")) && body.chars().count() == 100_000, "message {i}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accounts_and_auth_failures() -> Result<()> {
    let s = stack().start().await?;
    let http = s.http(0);
    let err = |r: Result<String, ClientError>| match r {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    };
    assert_eq!(err(http.signup("x", "password123").await), (400, "bad_credentials".into()));
    assert_eq!(err(http.signup("okname", "short").await), (400, "bad_credentials".into()));
    let id = http.signup("Dana", "password123").await?;
    assert_eq!(err(http.signup("dana", "password123").await), (409, "username_taken".into()));
    let wrong = http.login("dana", "wrong-password", "d1").await;
    assert!(matches!(wrong, Err(ClientError::Api { status: 401, .. })), "{wrong:?}");
    let nobody = http.login("nobody", "password123", "d1").await;
    assert!(matches!(nobody, Err(ClientError::Api { status: 401, .. })), "{nobody:?}");
    let login = http.login("DANA", "password123", "d1").await?;
    assert_eq!(login.user_id, id);
    let profile = http.user(&login.token, &id).await?;
    assert_eq!(profile["username"], "dana");

    // WebSocket upgrade: missing, forged and expired tokens are refused
    // with 401 before the upgrade.
    for token in ["", "garbage", &login.token.replace('.', "x")] {
        let r = Conn::connect(&s.addr(0), token).await;
        assert!(matches!(r, Err(ClientError::Api { status: 401, .. })), "token {token:?}: {:?}", r.err());
    }
    let expired = chat_gateway::auth::issue(
        b"test-secret",
        &chat_gateway::auth::Claims {
            user: id.parse()?,
            device: "d1".into(),
            exp: chat_gateway::auth::now_secs() - 1,
            gen: 0,
        },
    );
    let r = Conn::connect(&s.addr(0), &expired).await;
    assert!(matches!(r, Err(ClientError::Api { status: 401, .. })), "expired: {:?}", r.err());
    let (ok, _) = s.live(0, &login).await?;
    drop(ok);
    let (status, body) = http.request(Method::GET, "/readyz", None, None).await?;
    assert_eq!((status, body["postgres"].as_bool()), (200, Some(true)));
    let (status, body) = http.request(Method::DELETE, "/v1/signup", None, None).await?;
    assert_eq!((status, body["error"]["code"].as_str()), (405, Some("method_not_allowed")));
    Ok(())
}
