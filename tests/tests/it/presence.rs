//! Friends, presence transitions from heartbeats, typing.

use std::time::Duration;

use anyhow::Result;
use chat_client::{Conn, Login, Method};
use chat_tests::wait_for;
use serde_json::{json, Value};

use crate::stack::{stack, Stack};

async fn befriend(s: &Stack, a: &Login, b: &Login) -> Result<()> {
    let http = s.http(0);
    assert_eq!(http.request(Method::PUT, &format!("/v1/friends/{}", b.user_id), Some(&a.token), None).await?.0, 202);
    assert_eq!(http.request(Method::PUT, &format!("/v1/friends/{}", a.user_id), Some(&b.token), None).await?.0, 200);
    Ok(())
}

/// The next presence frame about `user`.
async fn presence_of(c: &mut Conn, user: &str) -> Result<Value> {
    Ok(c.wait_for("presence", |v| v["type"] == "presence" && v["user"] == user).await?)
}

/// Frames about `user` already received by `c` (after a ping round trip).
async fn seen_about(c: &mut Conn, user: &str) -> Result<Vec<Value>> {
    c.send_json(&json!({"type": "ping"})).await?;
    c.wait_for("pong", |v| v["type"] == "pong").await?;
    let mut out = Vec::new();
    while let Ok(Ok(v)) = tokio::time::timeout(Duration::ZERO, c.wait_for("any", |v| v["user"] == user)).await {
        out.push(v);
    }
    Ok(out)
}

/// Presence keys of a user currently in the bucket.
async fn presence_keys(s: &Stack, user: &str) -> Result<usize> {
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let kv = js.get_key_value(chat_nats::subjects::PRESENCE_BUCKET).await?;
    let keys: Vec<String> = futures::TryStreamExt::try_collect(kv.keys().await?).await?;
    Ok(keys.iter().filter(|k| k.starts_with(&format!("{user}."))).count())
}

/// A sync point through the presence worker: `marker` (a friend of
/// `watcher`) comes online; every earlier heartbeat event is processed.
async fn barrier(s: &Stack, watcher: &mut Conn, marker: &Login) -> Result<Conn> {
    let c = s.connect(0, marker).await?;
    let v =
        watcher.wait_for("marker online", |v| v["user"] == marker.user_id.as_str() && v["status"] == "online").await?;
    assert_eq!(v["type"], "presence");
    Ok(c)
}

async fn status_in_list(s: &Stack, who: &Login, friend: &str) -> Result<String> {
    let (_, v) = s.http(0).request(Method::GET, "/v1/friends", Some(&who.token), None).await?;
    let f = v["friends"].as_array().unwrap().iter().find(|f| f["user_id"] == friend).cloned().unwrap_or_default();
    Ok(f["status"].as_str().unwrap_or("").to_owned())
}

/// A connection that heartbeats (pings) in the background, as real
/// clients do, until taken back or dropped (an abrupt TCP drop).
struct Alive {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Conn>,
}

fn alive(mut c: Conn) -> Alive {
    let (stop, mut rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut rx => return c,
                _ = tokio::time::sleep(Duration::from_millis(300)) => {
                    let _ = c.send_json(&json!({"type": "ping"})).await;
                    let _ = c.wait_for("pong", |v| v["type"] == "pong").await;
                }
            }
        }
    });
    Alive { stop: Some(stop), task }
}

impl Alive {
    async fn take(mut self) -> Conn {
        let _ = self.stop.take().map(|s| s.send(()));
        (&mut self.task).await.expect("heartbeat task")
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn fast() -> crate::stack::StackBuilder {
    stack().env("CHAT_PRESENCE_TIMEOUT_MS", "2000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friend_requests_are_sent_accepted_declined_and_listed() -> Result<()> {
    let s = fast().start().await?;
    let (a, b, c) = (s.user("alice", "a").await?, s.user("bob", "b").await?, s.user("carol", "c").await?);
    let http = s.http(0);
    let (st, v) = http.request(Method::PUT, &format!("/v1/friends/{}", b.user_id), Some(&a.token), None).await?;
    assert_eq!((st, v["status"].as_str()), (202, Some("requested")));
    let (_, la) = http.request(Method::GET, "/v1/friends", Some(&a.token), None).await?;
    assert_eq!(la["outgoing"][0]["user_id"], b.user_id.as_str());
    let (_, lb) = http.request(Method::GET, "/v1/friends", Some(&b.token), None).await?;
    assert_eq!(lb["incoming"][0]["username"], "alice");
    let (st, v) = http.request(Method::PUT, &format!("/v1/friends/{}", a.user_id), Some(&b.token), None).await?;
    assert_eq!((st, v["status"].as_str()), (200, Some("friends")));
    let (_, la) = http.request(Method::GET, "/v1/friends", Some(&a.token), None).await?;
    assert_eq!(
        (la["friends"][0]["user_id"].as_str(), la["friends"][0]["status"].as_str()),
        (Some(b.user_id.as_str()), Some("offline"))
    );
    assert!(la["incoming"].as_array().unwrap().is_empty() && la["outgoing"].as_array().unwrap().is_empty());
    // Carol asks, alice declines; then alice unfriends bob.
    http.request(Method::PUT, &format!("/v1/friends/{}", a.user_id), Some(&c.token), None).await?;
    assert_eq!(http.request(Method::DELETE, &format!("/v1/friends/{}", c.user_id), Some(&a.token), None).await?.0, 200);
    http.request(Method::DELETE, &format!("/v1/friends/{}", b.user_id), Some(&a.token), None).await?;
    let (_, la) = http.request(Method::GET, "/v1/friends", Some(&a.token), None).await?;
    assert_eq!(la, json!({"friends": [], "incoming": [], "outgoing": []}));
    assert_eq!(http.request(Method::PUT, &format!("/v1/friends/{}", a.user_id), Some(&a.token), None).await?.0, 400);
    assert_eq!(http.request(Method::PUT, "/v1/friends/999999", Some(&a.token), None).await?.0, 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_see_online_and_offline_strangers_do_not() -> Result<()> {
    let s = fast().start().await?;
    let (a, b, c) = (s.user("alice", "a").await?, s.user("bob", "b").await?, s.user("carol", "c").await?);
    befriend(&s, &a, &b).await?;
    let mut cb = s.connect(0, &b).await?;
    let mut cc = s.connect(0, &c).await?;
    assert_eq!(presence_of(&mut cb, &a.user_id).await?["status"], "offline", "current state first");
    let ca = alive(s.connect(0, &a).await?);
    assert_eq!(presence_of(&mut cb, &a.user_id).await?["status"], "online");
    assert_eq!(status_in_list(&s, &b, &a.user_id).await?, "online");
    // A dropped connection (no close frame) goes offline after the timeout.
    drop(ca);
    let off = presence_of(&mut cb, &a.user_id).await?;
    assert_eq!(off["status"], "offline");
    assert!(off["last_active_at"].as_u64().unwrap() > 0);
    assert!(seen_about(&mut cc, &a.user_id).await?.is_empty(), "a stranger hears nothing");
    // A clean close is offline at once.
    let ca = alive(s.connect(0, &a).await?);
    assert_eq!(presence_of(&mut cb, &a.user_id).await?["status"], "online");
    ca.take().await.close().await;
    assert_eq!(presence_of(&mut cb, &a.user_id).await?["status"], "offline");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_only_when_the_last_device_goes_and_no_flapping_on_reconnect() -> Result<()> {
    let s = fast().start().await?;
    let (a1, a2) = (s.user("alice", "a1").await?, s.device("alice", "a2").await?);
    let (b, d) = (s.user("bob", "b").await?, s.user("dave", "d").await?);
    befriend(&s, &a1, &b).await?;
    befriend(&s, &d, &b).await?;
    let mut cb = s.connect(0, &b).await?;
    presence_of(&mut cb, &a1.user_id).await?;
    // Bob's own connection heartbeats between reads through the barrier's
    // friends; his status does not matter here.
    let c1 = alive(s.connect(0, &a1).await?);
    let c2 = alive(s.connect(0, &a2).await?);
    assert_eq!(presence_of(&mut cb, &a1.user_id).await?["status"], "online");
    c1.take().await.close().await;
    wait_for("a1's key gone", Duration::from_secs(10), || async {
        (presence_keys(&s, &a1.user_id).await.ok()? == 1).then_some(())
    })
    .await?;
    let _cd = barrier(&s, &mut cb, &d).await?;
    assert_eq!(status_in_list(&s, &b, &a1.user_id).await?, "online", "one device left");
    assert!(seen_about(&mut cb, &a1.user_id).await?.is_empty());

    // Drop a2's connection and reconnect at once: the old key expires, no event.
    drop(c2);
    let _c3 = alive(s.connect(0, &a2).await?);
    wait_for("the dropped key expired", Duration::from_secs(10), || async {
        (presence_keys(&s, &a1.user_id).await.ok()? == 1).then_some(())
    })
    .await?;
    let e = s.user("erin", "e").await?;
    befriend(&s, &e, &b).await?;
    let _ce = barrier(&s, &mut cb, &e).await?;
    let seen = seen_about(&mut cb, &a1.user_id).await?;
    assert!(seen.is_empty(), "no flapping: {seen:?}");
    assert_eq!(status_in_list(&s, &b, &a1.user_id).await?, "online");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_is_immediate() -> Result<()> {
    // A long timeout, so only the logout can explain the offline event.
    let s = stack().env("CHAT_PRESENCE_TIMEOUT_MS", "600000").start().await?;
    let (a, b) = (s.user("alice", "a").await?, s.user("bob", "b").await?);
    befriend(&s, &a, &b).await?;
    let mut cb = s.connect(0, &b).await?;
    presence_of(&mut cb, &a.user_id).await?;
    let mut ca = s.connect(0, &a).await?;
    assert_eq!(presence_of(&mut cb, &a.user_id).await?["status"], "online");
    let (st, _) = s.http(0).request(Method::POST, "/v1/logout", Some(&a.token), None).await?;
    assert_eq!(st, 200);
    assert_eq!(presence_of(&mut cb, &a.user_id).await?["status"], "offline");
    let code = loop {
        match ca.next().await {
            Ok(_) => continue,
            Err(chat_client::ClientError::Closed { code, .. }) => break code,
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(code, 4001, "the logged-out device's session is closed");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_ends_the_devices_tokens_on_every_gateway() -> Result<()> {
    let mut s = stack().start().await?;
    s.add_gateway().await?;
    let a = s.user("alice", "phone").await?;
    let other = s.device("alice", "laptop").await?;
    let path = format!("/v1/users/{}", a.user_id);
    for g in 0..2 {
        assert_eq!(s.http(g).request(Method::GET, &path, Some(&a.token), None).await?.0, 200);
    }
    assert_eq!(s.http(0).request(Method::POST, "/v1/logout", Some(&a.token), None).await?.0, 200);
    // Refused at once where the logout happened, and on the other gateway
    // as soon as its watch of the revocations delivers the entry.
    assert_eq!(s.http(0).request(Method::GET, &path, Some(&a.token), None).await?.0, 401);
    let http1 = s.http(1);
    wait_for("gateway 1 refuses the logged-out token", Duration::from_secs(5), || async {
        let st = http1.request(Method::GET, &path, Some(&a.token), None).await.ok()?.0;
        (st == 401).then_some(())
    })
    .await?;
    for g in 0..2 {
        let ws = Conn::connect(&s.addr(g), &a.token).await;
        assert!(matches!(ws, Err(chat_client::ClientError::Api { status: 401, .. })), "gateway {g}: {:?}", ws.err());
        // The user's other device is untouched.
        assert_eq!(s.http(g).request(Method::GET, &path, Some(&other.token), None).await?.0, 200);
    }
    // Logging in again gives the device a token that works everywhere.
    let again = s.device("alice", "phone").await?;
    for g in 0..2 {
        assert_eq!(s.http(g).request(Method::GET, &path, Some(&again.token), None).await?.0, 200);
        Conn::connect(&s.addr(g), &again.token).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_reaches_participants_only() -> Result<()> {
    let s = fast().env("CHAT_TYPING_INTERVAL_MS", "0").start().await?;
    let (a, b, c) = (s.user("alice", "a").await?, s.user("bob", "b").await?, s.user("carol", "c").await?);
    let g = s.create_group(&a, "g", &[&c.user_id]).await?;
    let (mut ca, mut cb, mut cc) = (s.connect(0, &a).await?, s.connect(0, &b).await?, s.connect(0, &c).await?);
    // A pong means the session is set up and will hear typing.
    seen_about(&mut cb, "none").await?;
    seen_about(&mut cc, "none").await?;
    let dm = chat_client::direct_conv(&a.user_id, &b.user_id);
    ca.send_json(&json!({"type": "typing", "conv": dm})).await?;
    let t = cb.wait_for("typing", |v| v["type"] == "typing").await?;
    assert_eq!((t["conv"].as_str(), t["user"].as_str()), (Some(dm.as_str()), Some(a.user_id.as_str())));
    assert!(seen_about(&mut cc, &a.user_id).await?.is_empty(), "carol is not in the 1:1");
    let gconv = g["conv"].as_str().unwrap();
    cb.send_json(&json!({"type": "typing", "conv": gconv})).await?;
    assert_eq!(cb.wait_for("error", |v| v["type"] == "error").await?["code"], "forbidden");
    ca.send_json(&json!({"type": "typing", "conv": gconv})).await?;
    assert_eq!(cc.wait_for("typing", |v| v["type"] == "typing").await?["conv"], gconv);
    assert!(seen_about(&mut cb, &a.user_id).await?.iter().all(|v| v["conv"] != gconv), "bob is not in the group");
    Ok(())
}

/// The hub's subscriptions (typing, wake-ups, presence) ride on the
/// gateway's own subscribing NATS connection: when nats-server restarts
/// under a running gateway, that connection comes back with every
/// subscription, and the sessions hear typing and messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_under_a_running_gateway_brings_its_subscriptions_back() -> Result<()> {
    const OPERATOR: &str = "operator-token-for-the-restart-test";
    let mut s = fast().env("CHAT_TYPING_INTERVAL_MS", "0").env("CHAT_OPERATOR_TOKEN", OPERATOR).start().await?;
    let (a, b) = (s.user("alice", "a").await?, s.user("bob", "b").await?);
    let hub = |e: &chat_tests::prom::Exposition| {
        (
            e.value("chat_hub_connected", &[]),
            e.value("chat_hub_reconnects_total", &[]),
            e.value("chat_hub_subjects", &[]),
        )
    };
    let (mut ca, _) = s.live(0, &a).await?;
    let (mut cb, _) = s.live(0, &b).await?;
    let dm = chat_client::direct_conv(&a.user_id, &b.user_id);
    ca.send_json(&json!({"type": "typing", "conv": dm})).await?;
    cb.wait_for("typing before the restart", |v| v["type"] == "typing").await?;
    // Two subjects per connected user: wake-ups and account events.
    assert_eq!(hub(&chat_tests::prom::metrics(&s.addr(0), Some(OPERATOR)).await?), (1.0, 0.0, 4.0));

    s.nats.restart_same_port()?;
    // Typing is fire and forget: one sent while a connection is still
    // coming back is lost, so it is sent until heard.
    cb.timeout = Duration::from_millis(500);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if ca.send_json(&json!({"type": "typing", "conv": dm})).await.is_ok()
            && cb.wait_for("typing", |v| v["type"] == "typing").await.is_ok()
        {
            break;
        }
        anyhow::ensure!(tokio::time::Instant::now() < deadline, "no typing heard in 30 s after NATS restarted");
    }
    cb.timeout = Duration::from_secs(10);
    ca.send_to_user("after", &b.user_id, "after the restart").await?;
    assert_eq!(cb.next_msg().await?["body"], "after the restart");
    assert_eq!(hub(&chat_tests::prom::metrics(&s.addr(0), Some(OPERATOR)).await?), (1.0, 1.0, 4.0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_survives_a_worker_restart_and_two_workers_publish_once() -> Result<()> {
    let mut s = fast().workers_with_clock_offsets(&[0, 0]).start().await?;
    let (a, b, d) = (s.user("alice", "a").await?, s.user("bob", "b").await?, s.user("dave", "d").await?);
    befriend(&s, &a, &b).await?;
    befriend(&s, &d, &b).await?;
    let mut cb = s.connect(0, &b).await?;
    presence_of(&mut cb, &a.user_id).await?;
    let ca = alive(s.connect(0, &a).await?);
    assert_eq!(presence_of(&mut cb, &a.user_id).await?["status"], "online");
    let _cd = barrier(&s, &mut cb, &d).await?;
    assert!(seen_about(&mut cb, &a.user_id).await?.is_empty(), "two workers, one transition");
    // Kill both workers; alice goes offline meanwhile; a new worker catches up.
    s.kill_worker(0);
    s.kill_worker(1);
    drop(ca);
    s.add_worker(0)?;
    let off = presence_of(&mut cb, &a.user_id).await?;
    assert_eq!(off["status"], "offline");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_subscribe_is_bounded_and_limited_to_contacts() -> Result<()> {
    let s = fast().env("CHAT_PRESENCE_SUBSCRIBE_MAX", "2").start().await?;
    let (a, b, c, x) = (
        s.user("alice", "a").await?,
        s.user("bob", "b").await?,
        s.user("carol", "c").await?,
        s.user("xavier", "x").await?,
    );
    s.create_group(&a, "g", &[&b.user_id, &c.user_id]).await?;
    let mut ca = s.connect(0, &a).await?;
    ca.send_json(&json!({"type": "presence.subscribe", "users": [b.user_id, c.user_id]})).await?;
    presence_of(&mut ca, &b.user_id).await?;
    presence_of(&mut ca, &c.user_id).await?;
    let _cb = alive(s.connect(0, &b).await?);
    assert_eq!(presence_of(&mut ca, &b.user_id).await?["status"], "online");
    ca.send_json(&json!({"type": "presence.subscribe", "users": [x.user_id]})).await?;
    assert_eq!(ca.wait_for("error", |v| v["type"] == "error").await?["code"], "limit_exceeded");
    ca.send_json(&json!({"type": "presence.unsubscribe", "users": [c.user_id]})).await?;
    ca.send_json(&json!({"type": "presence.subscribe", "users": [x.user_id]})).await?;
    assert_eq!(ca.wait_for("error", |v| v["type"] == "error").await?["code"], "forbidden", "xavier is a stranger");
    Ok(())
}

/// A stack on two gateways where only clean closes, connects and logouts
/// change presence (the timeout is far beyond any test), with typing relayed
/// at once (typing is the sync point that proves ephemeral events before it
/// were handled).
async fn two_gateways() -> Result<Stack> {
    let mut s = stack().env("CHAT_PRESENCE_TIMEOUT_MS", "600000").env("CHAT_TYPING_INTERVAL_MS", "0").start().await?;
    s.add_gateway().await?;
    Ok(s)
}

/// Sends a typing event from `from` (on gateway 0) in the 1:1 with `to`
/// and waits until `to`'s session gets it. Gateway 0 publishes it after
/// any ephemeral event it published before (a presence re-check sent while
/// answering an HTTP request on gateway 0), and a session handles its
/// ephemeral events in order, so those are handled once this returns.
async fn ephemeral_barrier(from: &mut Conn, from_id: &str, to: &mut Conn, to_id: &str) -> Result<()> {
    let dm = chat_client::direct_conv(from_id, to_id);
    from.send_json(&json!({"type": "typing", "conv": dm})).await?;
    to.wait_for("typing barrier", |v| v["type"] == "typing" && v["conv"] == dm.as_str()).await?;
    Ok(())
}

/// The membership that allowed on-demand follows ends (`leave`: Carol
/// leaves; otherwise Alice removes her): Alice (gateway 0) stops hearing
/// Carol (gateway 1), and Carol stops hearing Bob, whom she followed as a
/// fellow member.
async fn follows_end_with_the_membership(leave: bool) -> Result<()> {
    let s = two_gateways().await?;
    let (a, b, c) = (s.user("alice", "a").await?, s.user("bob", "b").await?, s.user("carol", "c").await?);
    let (m, n) = (s.user("mark", "m").await?, s.user("nina", "n").await?);
    befriend(&s, &c, &m).await?;
    befriend(&s, &a, &n).await?;
    let g = s.create_group(&a, "g", &[&b.user_id, &c.user_id]).await?;
    let gid = g["group_id"].as_str().unwrap();

    let mut ca = s.connect(0, &a).await?;
    ca.send_json(&json!({"type": "presence.subscribe", "users": [c.user_id]})).await?;
    assert_eq!(presence_of(&mut ca, &c.user_id).await?["status"], "offline");
    let mut cc = s.connect(1, &c).await?;
    assert_eq!(presence_of(&mut ca, &c.user_id).await?["status"], "online", "followed across gateways");
    cc.send_json(&json!({"type": "presence.subscribe", "users": [b.user_id]})).await?;
    assert_eq!(presence_of(&mut cc, &b.user_id).await?["status"], "offline");
    let mut cb = s.connect(0, &b).await?;
    assert_eq!(presence_of(&mut cc, &b.user_id).await?["status"], "online");

    let (who, token) = if leave { (&c, &c.token) } else { (&a, &a.token) };
    let path = format!("/v1/groups/{gid}/members/{}", c.user_id);
    let (st, v) = s.http(0).request(Method::DELETE, &path, Some(token), None).await?;
    assert_eq!(st, 200, "{} ends carol's membership: {v}", who.user_id);
    ephemeral_barrier(&mut cb, &b.user_id, &mut ca, &a.user_id).await?;
    ephemeral_barrier(&mut cb, &b.user_id, &mut cc, &c.user_id).await?;

    // Bob goes offline and online again; then Mark comes online, which
    // Carol would hear after Bob's transitions (the worker publishes in
    // order).
    cb.close().await;
    let _cb = s.connect(0, &b).await?;
    let _cm = barrier(&s, &mut cc, &m).await?;
    let seen = seen_about(&mut cc, &b.user_id).await?;
    assert!(seen.is_empty(), "carol no longer hears bob: {seen:?}");

    // Carol goes offline and online again; then Nina comes online.
    cc.close().await;
    let _cc = s.connect(1, &c).await?;
    let _cn = barrier(&s, &mut ca, &n).await?;
    let seen = seen_about(&mut ca, &c.user_id).await?;
    assert!(seen.is_empty(), "alice no longer hears carol: {seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_end_when_a_member_is_removed() -> Result<()> {
    follows_end_with_the_membership(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_end_when_a_member_leaves() -> Result<()> {
    follows_end_with_the_membership(true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follow_allowed_by_friendship_ends_with_it() -> Result<()> {
    let s = two_gateways().await?;
    let (a, f, t) = (s.user("alice", "a").await?, s.user("fred", "f").await?, s.user("tom", "t").await?);
    let n = s.user("nina", "n").await?;
    befriend(&s, &a, &f).await?;
    befriend(&s, &a, &n).await?;
    s.create_group(&a, "g", &[&t.user_id]).await?;
    let mut ca = s.connect(0, &a).await?;
    assert_eq!(presence_of(&mut ca, &f.user_id).await?["status"], "offline", "a friend's state first");
    // Fred is followed as a friend already, so only Tom's state comes back;
    // it comes after Fred's follow is recorded.
    ca.send_json(&json!({"type": "presence.subscribe", "users": [f.user_id, t.user_id]})).await?;
    presence_of(&mut ca, &t.user_id).await?;
    let cf = s.connect(1, &f).await?;
    let on = ca.wait_for("fred online", |v| v["user"] == f.user_id.as_str() && v["status"] == "online").await?;
    assert_eq!(on["type"], "presence");

    let path = format!("/v1/friends/{}", f.user_id);
    assert_eq!(s.http(0).request(Method::DELETE, &path, Some(&a.token), None).await?.0, 200);
    let mut ct = s.connect(0, &t).await?;
    ephemeral_barrier(&mut ct, &t.user_id, &mut ca, &a.user_id).await?;

    // Fred goes offline and online again; then Nina comes online.
    cf.close().await;
    let _cf = s.connect(1, &f).await?;
    let _cn = barrier(&s, &mut ca, &n).await?;
    let seen = seen_about(&mut ca, &f.user_id).await?;
    assert!(seen.is_empty(), "no longer friends, no longer followed: {seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_subscribe_refuses_a_stranger_every_time_without_counting_them() -> Result<()> {
    let s = fast().env("CHAT_PRESENCE_SUBSCRIBE_MAX", "1").start().await?;
    let (a, b, x) = (s.user("alice", "a").await?, s.user("bob", "b").await?, s.user("xavier", "x").await?);
    s.create_group(&a, "g", &[&b.user_id]).await?;
    let mut ca = s.connect(0, &a).await?;
    for _ in 0..2 {
        ca.send_json(&json!({"type": "presence.subscribe", "users": [x.user_id]})).await?;
        let e = ca.wait_for("error", |v| v["type"] == "error").await?;
        assert_eq!(e["code"], "forbidden", "{e}");
    }
    // Xavier takes no place: the one allowed follow is still free.
    ca.send_json(&json!({"type": "presence.subscribe", "users": [b.user_id]})).await?;
    let v = ca.wait_for("bob's state or an error", |v| v["type"] == "error" || v["user"] == b.user_id.as_str()).await?;
    assert_eq!((v["type"].as_str(), v["status"].as_str()), (Some("presence"), Some("offline")), "{v}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_subscribe_and_unsubscribe_take_canonical_ids_only() -> Result<()> {
    let s = fast().start().await?;
    let (a, b) = (s.user("alice", "a").await?, s.user("bob", "b").await?);
    s.create_group(&a, "g", &[&b.user_id]).await?;
    let mut ca = s.connect(0, &a).await?;
    for kind in ["presence.subscribe", "presence.unsubscribe"] {
        for bad in [format!("0{}", b.user_id), format!("+{}", b.user_id), "bob".to_owned()] {
            ca.send_json(&json!({"type": kind, "users": [bad]})).await?;
            let e = ca.wait_for("error", |v| v["type"] == "error").await?;
            assert_eq!(e["code"], "bad_frame", "{kind} {bad}: {e}");
        }
        // An empty list does nothing and gets no answer.
        ca.send_json(&json!({"type": kind, "users": []})).await?;
    }
    let seen = seen_about(&mut ca, &b.user_id).await?;
    assert!(seen.is_empty(), "nothing followed: {seen:?}");
    ca.send_json(&json!({"type": "ping"})).await?;
    let next = ca.wait_for("pong", |v| v["type"] == "pong" || v["type"] == "error").await?;
    assert_eq!(next["type"], "pong", "no answer to the empty lists: {next}");
    Ok(())
}

/// Waits until no session of `user` is open on any gateway: nobody
/// subscribes to the user's ephemeral subject any more (a request there
/// gets "no responders").
async fn no_session_of(s: &Stack, user: &str) -> Result<()> {
    let client = chat_tests::nats_admin(&s.nats.url).await?;
    let subject = chat_nats::subjects::ephemeral(user.parse()?);
    wait_for("the session's end", Duration::from_secs(10), || async {
        let r = tokio::time::timeout(Duration::from_millis(200), client.request(subject.clone(), "".into())).await;
        match r {
            Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => Some(()),
            _ => None,
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_after_a_dropped_connection_is_offline_at_once() -> Result<()> {
    // A 600 s timeout, so only the logout can explain the offline event.
    // The connection is on gateway 1, the logout answered by gateway 0.
    let s = two_gateways().await?;
    let (a, b) = (s.user("alice", "phone").await?, s.user("bob", "b").await?);
    befriend(&s, &a, &b).await?;
    let mut cb = s.connect(0, &b).await?;
    presence_of(&mut cb, &a.user_id).await?;
    let ca = s.connect(1, &a).await?;
    assert_eq!(presence_of(&mut cb, &a.user_id).await?["status"], "online");
    // TCP closed without a close frame: the key stays until it expires.
    drop(ca);
    no_session_of(&s, &a.user_id).await?;
    let started = std::time::Instant::now();
    let (st, _) = s.http(0).request(Method::POST, "/v1/logout", Some(&a.token), None).await?;
    assert_eq!(st, 200);
    assert_eq!(presence_of(&mut cb, &a.user_id).await?["status"], "offline");
    assert!(started.elapsed() < Duration::from_secs(5), "offline after {:?}", started.elapsed());
    assert_eq!(presence_keys(&s, &a.user_id).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_that_falls_behind_its_ephemeral_events_is_closed_rather_than_missing_one() -> Result<()> {
    // A one-event buffer, and an outbound queue that cannot fill: bursts of
    // typing events outrun the session's presence task, which must not go
    // on as if it had seen them all (a skipped one may be a logout or a
    // ban). Without the check the session stays open and this times out.
    let s = stack().env("CHAT_EPHEMERAL_BUFFER", "1").env("CHAT_WS_OUTBOUND_FRAMES", "100000").start().await?;
    let a = s.user("alice", "phone").await?;
    let mut ca = s.connect(0, &a).await?;
    let client = chat_tests::nats_admin(&s.nats.url).await?;
    let subject = chat_nats::subjects::ephemeral(a.user_id.parse()?);
    let typing = chat_nats::envelope::Ephemeral::Typing { conv: "dm-1-2".into(), user: 1 };
    let payload: bytes::Bytes = serde_json::to_vec(&typing)?.into();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let publisher = {
        let stop = stop.clone();
        tokio::spawn(async move {
            for _ in 0..40 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                for _ in 0..500 {
                    client.publish(subject.clone(), payload.clone()).await?;
                }
                client.flush().await?;
            }
            Ok::<_, anyhow::Error>(())
        })
    };
    let mut typing_frames = 0u64;
    let code = loop {
        match tokio::time::timeout(Duration::from_secs(30), ca.next()).await {
            Err(_) => anyhow::bail!("still open 30 s after the bursts began"),
            Ok(Ok(v)) if v["type"] == "typing" => typing_frames += 1,
            Ok(Ok(_)) => {}
            Ok(Err(chat_client::ClientError::Closed { code, .. })) => break code,
            Ok(Err(e)) => return Err(e.into()),
        }
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    publisher.await??;
    assert_eq!(code, 4008, "closed with {code} after {typing_frames} typing frames");
    assert!(typing_frames < 20_000, "every event was seen, so none was skipped");
    // Reconnecting is all the client needs to do: once the tail of the
    // bursts (still queued in the gateway's shared subscription when the
    // publisher stops) has drained, a new session syncs and stays open.
    chat_tests::wait_for("a reconnect that syncs", Duration::from_secs(20), || async { s.live(0, &a).await.ok() })
        .await?;
    Ok(())
}
