//! Push notifications against fake FCM, APNs and Web Push servers (real
//! HTTP servers on 127.0.0.1, see `fake_push`): formats and signatures,
//! who is (not) pushed, retries, token clean-up, dead letters, a worker
//! SIGKILL and pooled connections.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::consumer::pull;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chat_client::{Login, Method};
use chat_nats::subjects;
use chat_tests::wait_for;
use ring::signature::{ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};

use crate::fake_push::{p256_key, pem_der, verify_jwt, Browser, Fake, Reply};
use crate::stack::{stack, Stack};

/// Long enough for a push pipeline slowed by a busy machine (the sender's
/// retries wait out `CHAT_PUSH_HTTP_TIMEOUT_MS` one job at a time).
const WAIT: Duration = Duration::from_secs(60);
const APNS_KEY_ID: &str = "KEY1234567";
const APNS_TEAM: &str = "TEAM123456";
const APNS_TOPIC: &str = "com.example.chat";
const VAPID_SUB: &str = "mailto:ops@example.com";
const SA_EMAIL: &str = "push@test-project.iam.gserviceaccount.com";

/// A stack wired to three fake providers.
struct Push {
    s: Stack,
    fcm: Fake,
    apns: Fake,
    web: Fake,
    apns_public: Vec<u8>,
    vapid_public: Vec<u8>,
    rsa_public: Vec<u8>,
    dir: PathBuf,
}

impl Drop for Push {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn push_stack(extra: &[(&str, &str)]) -> Result<Push> {
    let (fcm, apns, web) = (Fake::fcm().await?, Fake::apns().await?, Fake::webpush().await?);
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("chat-push-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let rsa_pem = include_str!("../../fixtures/fcm-test-key.pem");
    let rsa = ring::signature::RsaKeyPair::from_pkcs8(&pem_der(rsa_pem)?).map_err(|e| anyhow::anyhow!("{e}"))?;
    let sa = json!({"type": "service_account", "project_id": "test-project", "private_key": rsa_pem,
                    "client_email": SA_EMAIL, "token_uri": format!("{}/token", fcm.url())});
    std::fs::write(dir.join("sa.json"), sa.to_string())?;
    let (apns_pem, apns_public) = p256_key();
    std::fs::write(dir.join("apns.p8"), apns_pem)?;
    let (vapid_pem, vapid_public) = p256_key();
    std::fs::write(dir.join("vapid.pem"), vapid_pem)?;
    let path = |f: &str| dir.join(f).display().to_string();
    let mut b = stack()
        .worker_metrics()
        .env("CHAT_FCM_CREDENTIALS", &path("sa.json"))
        .env("CHAT_FCM_ENDPOINT", &fcm.url())
        .env("CHAT_APNS_KEY", &path("apns.p8"))
        .env("CHAT_APNS_KEY_ID", APNS_KEY_ID)
        .env("CHAT_APNS_TEAM_ID", APNS_TEAM)
        .env("CHAT_APNS_TOPIC", APNS_TOPIC)
        .env("CHAT_APNS_ENDPOINT", &apns.url())
        .env("CHAT_VAPID_PRIVATE_KEY", &path("vapid.pem"))
        .env("CHAT_VAPID_SUBJECT", VAPID_SUB)
        .env("CHAT_WEBPUSH_ALLOW_HTTP", "true")
        .env("CHAT_PUSH_DELAY_MS", "300")
        .env("CHAT_PUSH_RETRY_BASE_MS", "100")
        .env("CHAT_PUSH_HTTP_TIMEOUT_MS", "1500")
        .env("CHAT_PUSH_ACK_WAIT_MS", "2000")
        // Plans at once, so that `idle` means every copy so far is planned
        // (a lingering plan is not in the stream yet); the linger has its
        // own test.
        .env("CHAT_PUSH_PLAN_LINGER_MS", "0");
    for (k, v) in extra {
        b = b.env(k, v);
    }
    let s = b.start().await?;
    Ok(Push { s, fcm, apns, web, apns_public, vapid_public, rsa_public: rsa.public().as_ref().to_vec(), dir })
}

async fn register(s: &Stack, who: &Login, body: Value) -> Result<(u16, Value)> {
    let path = format!("/v1/devices/{}/push", who.device_id);
    Ok(s.http(0).request(Method::PUT, &path, Some(&who.token), Some(body)).await?)
}

async fn register_ok(s: &Stack, who: &Login, body: Value) -> Result<()> {
    let (st, v) = register(s, who, body).await?;
    anyhow::ensure!(st == 200, "register {}: {st} {v}", who.device_id);
    Ok(())
}

fn fcm(token: &str) -> Value {
    json!({"provider": "fcm", "token": token})
}

/// Waits until the planner and the sender have nothing pending or unacked:
/// every copy written so far is planned and every job finished.
async fn idle(s: &Stack) -> Result<()> {
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    wait_for("push consumers idle", WAIT, || {
        let js = js.clone();
        async move {
            for (stream, consumer) in
                [(subjects::PUSH_PLAN_STREAM, subjects::PUSH_PLANNER), (subjects::PUSH_STREAM, subjects::PUSH_SENDER)]
            {
                let mut c = js.get_stream(stream).await.ok()?.get_consumer::<pull::Config>(consumer).await.ok()?;
                let info = c.info().await.ok()?;
                if info.num_pending > 0 || info.num_ack_pending > 0 {
                    return None;
                }
            }
            Some(())
        }
    })
    .await
}

/// The worker's `chat_push_outcomes_total`, as (provider, result, count)
/// for every non-zero series, sorted.
async fn push_outcomes(s: &Stack) -> Result<Vec<(String, String, f64)>> {
    let e = chat_tests::prom::metrics(&s.worker_metrics(0)?, None).await?;
    let mut out = Vec::new();
    for provider in ["fcm", "apns", "webpush", "other"] {
        for result in ["sent", "invalid_token", "retry", "dead"] {
            let n = e.value("chat_push_outcomes_total", &[("provider", provider), ("result", result)]);
            if n != 0.0 {
                out.push((provider.to_owned(), result.to_owned(), n));
            }
        }
    }
    Ok(out)
}

fn outcomes(list: &[(&str, &str, f64)]) -> Vec<(String, String, f64)> {
    list.iter().map(|(p, r, n)| (p.to_string(), r.to_string(), *n)).collect()
}

async fn requests_at_least(f: &Fake, n: usize) -> Result<()> {
    let r =
        wait_for(&format!("{n} push requests"), WAIT, || async move { (f.requests().len() >= n).then_some(()) }).await;
    // Say how far it got: a stalled pipeline and a lost push look alike.
    r.map_err(|e| e.context(format!("{} requests arrived", f.requests().len())))
}

fn fcm_message_ids(f: &Fake) -> Vec<String> {
    f.requests().iter().map(|r| r.json()["message"]["data"]["message_id"].as_str().unwrap_or("").to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_devices_get_fcm_apns_and_web_push_in_the_providers_formats() -> Result<()> {
    let p = push_stack(&[("CHAT_PUSH_PREVIEW_CHARS", "5")]).await?;
    let s = &p.s;
    let a = s.user("alice", "a1").await?;
    register_ok(s, &s.device("alice", "aphone").await?, fcm("alice-token")).await?;
    let phone = s.user("bob", "phone").await?;
    let (iphone, browser) = (s.device("bob", "iphone").await?, s.device("bob", "browser").await?);
    let apns_token = "ab".repeat(32);
    let mut ua = Browser::new();
    register_ok(s, &phone, fcm("bob-token")).await?;
    register_ok(s, &iphone, json!({"provider": "apns", "token": apns_token})).await?;
    let endpoint = format!("{}/push/sub-1", p.web.url());
    register_ok(s, &browser, json!({"provider": "webpush", "subscription": ua.subscription(&endpoint)})).await?;

    let (mut ca, _) = s.live(0, &a).await?;
    let ack = ca.send_to_user("c1", &phone.user_id, "héllo wörld").await?;
    let (mid, conv) = (ack["id"].as_str().unwrap().to_owned(), ack["conv"].as_str().unwrap().to_owned());
    for f in [&p.fcm, &p.apns, &p.web] {
        requests_at_least(f, 1).await?;
    }
    idle(s).await?;

    // FCM: one OAuth exchange with an RS256 assertion, then the v1 send.
    let tokens = p.fcm.token_requests();
    assert_eq!(tokens.len(), 1, "the access token is cached");
    let form = String::from_utf8(tokens[0].body.to_vec())?;
    assert!(form.contains("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer"), "{form}");
    let assertion = form.split('&').find_map(|kv| kv.strip_prefix("assertion=")).context("assertion")?;
    let (h, c) = verify_jwt(assertion, &RSA_PKCS1_2048_8192_SHA256, &p.rsa_public)?;
    assert_eq!(h["alg"], "RS256");
    assert_eq!(
        (c["iss"].as_str(), c["aud"].as_str()),
        (Some(SA_EMAIL), Some(format!("{}/token", p.fcm.url()).as_str()))
    );
    assert_eq!(c["scope"], "https://www.googleapis.com/auth/firebase.messaging");
    assert!(c["exp"].as_u64().unwrap() - c["iat"].as_u64().unwrap() <= 3600);
    let r = p.fcm.requests();
    assert_eq!(r.len(), 1, "only bob's phone: the sender's own devices are never pushed");
    assert_eq!(r[0].path, "/v1/projects/test-project/messages:send");
    assert_eq!(r[0].header("authorization"), "Bearer access-1");
    let m = &r[0].json()["message"];
    assert_eq!(m["token"], "bob-token");
    assert_eq!(m["notification"], json!({"title": "alice", "body": "héllo…"}), "preview cut at 5 characters");
    assert_eq!(
        (m["data"]["message_id"].as_str(), m["data"]["conv"].as_str()),
        (Some(mid.as_str()), Some(conv.as_str()))
    );
    assert_eq!(m["android"]["collapse_key"], conv.as_str());

    // APNs: HTTP/2, ES256 provider token, headers.
    let r = p.apns.requests();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].version, hyper::Version::HTTP_2);
    assert_eq!(r[0].path, format!("/3/device/{apns_token}"));
    for (k, v) in [("apns-topic", APNS_TOPIC), ("apns-push-type", "alert"), ("apns-priority", "10")] {
        assert_eq!(r[0].header(k), v, "{k}");
    }
    assert_eq!(r[0].header("apns-collapse-id"), conv);
    let jwt = r[0].header("authorization").strip_prefix("bearer ").context("bearer")?;
    let (h, c) = verify_jwt(jwt, &ECDSA_P256_SHA256_FIXED, &p.apns_public)?;
    assert_eq!((h["alg"].as_str(), h["kid"].as_str()), (Some("ES256"), Some(APNS_KEY_ID)));
    assert_eq!(c["iss"], APNS_TEAM);
    assert!(c["iat"].as_u64().unwrap().abs_diff(chat_gateway::auth::now_secs()) < 120);
    let body = r[0].json();
    assert_eq!(body["aps"]["alert"], json!({"title": "alice", "body": "héllo…"}));
    assert_eq!(body["message_id"], mid.as_str());

    // Web Push: VAPID, RFC 8030 headers, RFC 8291 body.
    let r = p.web.requests();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].path, "/push/sub-1");
    assert_eq!((r[0].header("content-encoding"), r[0].header("urgency")), ("aes128gcm", "high"));
    assert_eq!(r[0].header("ttl"), "86400");
    let topic = r[0].header("topic");
    assert!(topic.len() == 32 && topic.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b)), "{topic}");
    let auth = r[0].header("authorization").strip_prefix("vapid ").context("vapid scheme")?;
    let parts: HashMap<&str, &str> = auth.split(", ").filter_map(|kv| kv.split_once('=')).collect();
    assert_eq!(parts["k"], URL_SAFE_NO_PAD.encode(&p.vapid_public));
    let (h, c) = verify_jwt(parts["t"], &ECDSA_P256_SHA256_FIXED, &p.vapid_public)?;
    assert_eq!(h["alg"], "ES256");
    assert_eq!((c["aud"].as_str(), c["sub"].as_str()), (Some(p.web.url().as_str()), Some(VAPID_SUB)));
    assert!(c["exp"].as_u64().unwrap() <= chat_gateway::auth::now_secs() + 24 * 3600);
    let plain: Value = serde_json::from_slice(&ua.decrypt(&r[0].body)?)?;
    assert_eq!((plain["title"].as_str(), plain["body"].as_str()), (Some("alice"), Some("héllo…")));
    assert_eq!((plain["message_id"].as_str(), plain["conv"].as_str()), (Some(mid.as_str()), Some(conv.as_str())));

    // A group message names the group; the system message of its creation
    // is not pushed.
    let g = s.create_group(&a, "team", &[&phone.user_id]).await?;
    let gconv = g["conv"].as_str().unwrap();
    let group = g["group_id"].as_str().unwrap();
    ca.send_frame_and_ack(json!({"type": "send", "cid": "g1", "to": {"group": group}, "body": "lunch?"}), "g1").await?;
    requests_at_least(&p.fcm, 2).await?;
    idle(s).await?;
    let r = p.fcm.requests();
    assert_eq!(r.len(), 2, "system messages are not pushed");
    assert_eq!(r[1].json()["message"]["notification"], json!({"title": "team", "body": "alice: lunch…"}));
    assert_eq!(r[1].json()["message"]["android"]["collapse_key"], gconv);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_device_is_not_pushed_but_its_offline_sibling_is() -> Result<()> {
    let p = push_stack(&[]).await?;
    let s = &p.s;
    let a = s.user("alice", "a1").await?;
    let (phone, tablet) = (s.user("bob", "phone").await?, s.device("bob", "tablet").await?);
    register_ok(s, &phone, fcm("phone-token")).await?;
    register_ok(s, &tablet, fcm("tablet-token")).await?;
    // Connected but not synced: nothing is delivered to it, so only its
    // presence keeps it from being pushed.
    let _tablet_conn = s.connect(0, &tablet).await?;
    let (mut ca, _) = s.live(0, &a).await?;
    ca.send_to_user("c1", &phone.user_id, "hi").await?;
    requests_at_least(&p.fcm, 1).await?;
    idle(s).await?;
    let tokens: Vec<Value> = p.fcm.requests().iter().map(|r| r.json()["message"]["token"].clone()).collect();
    assert_eq!(tokens, vec![json!("phone-token")]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_seen_on_another_device_within_the_delay_is_not_pushed() -> Result<()> {
    let p = push_stack(&[("CHAT_PUSH_DELAY_MS", "1500")]).await?;
    let s = &p.s;
    let a = s.user("alice", "a1").await?;
    let (phone, laptop) = (s.user("bob", "phone").await?, s.device("bob", "laptop").await?);
    register_ok(s, &phone, fcm("phone-token")).await?;
    let (mut cl, _) = s.live(0, &laptop).await?;
    let (mut ca, _) = s.live(0, &a).await?;
    let seen = ca.send_to_user("c1", &phone.user_id, "seen on the laptop").await?;
    assert_eq!(cl.next_msg().await?["id"], seen["id"]);
    // The laptop goes away; the next message is seen nowhere.
    cl.close().await;
    let unseen = ca.send_to_user("c2", &phone.user_id, "seen nowhere").await?;
    requests_at_least(&p.fcm, 1).await?;
    idle(s).await?;
    assert_eq!(fcm_message_ids(&p.fcm), vec![unseen["id"].as_str().unwrap().to_owned()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn muted_conversations_are_not_pushed_until_unmuted() -> Result<()> {
    let p = push_stack(&[]).await?;
    let s = &p.s;
    let (a, b, c) = (s.user("alice", "a1").await?, s.user("bob", "phone").await?, s.user("carol", "c1").await?);
    register_ok(s, &b, fcm("bob-token")).await?;
    let conv = chat_client::direct_conv(&a.user_id, &b.user_id);
    let http = s.http(0);
    let mute = format!("/v1/conversations/{conv}/mute");
    let (st, v) = http.request(Method::PUT, &mute, Some(&c.token), None).await?;
    assert_eq!((st, v["error"]["code"].as_str()), (403, Some("forbidden")), "carol is not a participant");
    // Malformed (the lower id must come first): 400, like every malformed id.
    let (st, _) = http.request(Method::PUT, "/v1/conversations/dm-9-1/mute", Some(&b.token), None).await?;
    assert_eq!(st, 400);
    let (st, v) = http.request(Method::PUT, &mute, Some(&b.token), None).await?;
    assert_eq!((st, v["muted"].as_bool()), (200, Some(true)));

    let (mut ca, _) = s.live(0, &a).await?;
    ca.send_to_user("c1", &b.user_id, "muted").await?;
    idle(s).await?;
    assert!(p.fcm.requests().is_empty(), "muted: nothing pushed");

    let (st, v) = http.request(Method::DELETE, &mute, Some(&b.token), None).await?;
    assert_eq!((st, v["muted"].as_bool()), (200, Some(false)));
    let unmuted = ca.send_to_user("c2", &b.user_id, "unmuted").await?;
    requests_at_least(&p.fcm, 1).await?;
    idle(s).await?;
    assert_eq!(fcm_message_ids(&p.fcm), vec![unmuted["id"].as_str().unwrap().to_owned()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mention_pushes_a_member_who_muted_the_group() -> Result<()> {
    let p = push_stack(&[]).await?;
    let s = &p.s;
    let (a, b) = (s.user("alice", "a1").await?, s.user("bob", "phone").await?);
    register_ok(s, &b, fcm("bob-token")).await?;
    let g = s.create_group(&a, "team", &[&b.user_id]).await?;
    let (conv, gid) = (g["conv"].as_str().unwrap(), g["group_id"].as_str().unwrap());
    let (st, v) =
        s.http(0).request(Method::PUT, &format!("/v1/conversations/{conv}/mute"), Some(&b.token), None).await?;
    assert_eq!((st, v["muted"].as_bool()), (200, Some(true)));
    let (mut ca, _) = s.live(0, &a).await?;
    let send = |cid: &str, body: &str| json!({"type": "send", "cid": cid, "to": {"group": gid}, "body": body});
    ca.send_frame_and_ack(send("g1", "muted, no mention"), "g1").await?;
    idle(s).await?;
    assert!(p.fcm.requests().is_empty(), "muted: nothing pushed");
    let mention = ca.send_frame_and_ack(send("g2", "@bob are you there?"), "g2").await?;
    requests_at_least(&p.fcm, 1).await?;
    ca.send_frame_and_ack(send("g3", "muted again"), "g3").await?;
    idle(s).await?;
    assert_eq!(fcm_message_ids(&p.fcm), vec![mention["id"].as_str().unwrap().to_owned()]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_validated_owned_and_refused_for_providers_not_configured() -> Result<()> {
    let p = push_stack(&[]).await?;
    let s = &p.s;
    let b = s.user("bob", "phone").await?;
    let bad = |v: (u16, Value)| (v.0, v.1["error"]["code"].as_str().unwrap_or("").to_owned());
    let br = (400, "bad_request".to_owned());
    assert_eq!(bad(register(s, &b, json!({"provider": "apns", "token": "not hex"})).await?), br);
    assert_eq!(bad(register(s, &b, json!({"provider": "fcm", "token": ""})).await?), br);
    assert_eq!(bad(register(s, &b, json!({"provider": "pigeon", "token": "x"})).await?), br);
    let mut sub = Browser::new().subscription("https://push.example/x");
    sub["keys"]["p256dh"] = json!("AAAA");
    assert_eq!(bad(register(s, &b, json!({"provider": "webpush", "subscription": sub})).await?), br);
    // A device the user never logged in from, and another user's device.
    let ghost = Login { device_id: "ghost".into(), ..b.clone() };
    assert_eq!(register(s, &ghost, fcm("t")).await?.0, 404);
    let c = s.user("carol", "c1").await?;
    let hijack = Login { device_id: "c1".into(), ..b.clone() };
    assert_eq!(register(s, &hijack, fcm("t")).await?.0, 404, "{}", c.user_id);

    register_ok(s, &b, fcm("tok-1")).await?;
    let path = "/v1/devices/phone/push";
    let (st, v) = s.http(0).request(Method::GET, path, Some(&b.token), None).await?;
    assert_eq!((st, v["provider"].as_str(), v["token"].as_str()), (200, Some("fcm"), Some("tok-1")));
    let (st, v) = s.http(0).request(Method::DELETE, path, Some(&b.token), None).await?;
    assert_eq!((st, v["deleted"].as_bool()), (200, Some(true)));
    assert_eq!(s.http(0).request(Method::GET, path, Some(&b.token), None).await?.0, 404);
    // Logging out removes the device's registration: no previews on a
    // phone that was logged out.
    register_ok(s, &b, fcm("tok-2")).await?;
    assert_eq!(s.http(0).request(Method::GET, path, Some(&b.token), None).await?.0, 200);
    assert_eq!(s.http(0).request(Method::POST, "/v1/logout", Some(&b.token), None).await?.0, 200);
    assert_eq!(s.http(0).request(Method::GET, path, Some(&b.token), None).await?.0, 401, "the old token is dead");
    let b = s.device("bob", "phone").await?;
    assert_eq!(s.http(0).request(Method::GET, path, Some(&b.token), None).await?.0, 404);
    drop(p);

    // No provider configured: registrations are refused with a clear code.
    let s = stack().start().await?;
    let b = s.user("bob", "phone").await?;
    let (st, v) = register(&s, &b, fcm("tok")).await?;
    assert_eq!((st, v["error"]["code"].as_str()), (400, Some("push_provider_disabled")), "{v}");
    // The same answer whatever the credentials look like: a disabled
    // provider is refused before a malformed token or subscription.
    let bad_sub = serde_json::json!({"provider": "webpush", "subscription": {"endpoint": "ftp://x", "keys": {"p256dh": "x", "auth": "y"}}});
    for body in [fcm("with space"), bad_sub] {
        let (st, v) = register(&s, &b, body).await?;
        assert_eq!((st, v["error"]["code"].as_str()), (400, Some("push_provider_disabled")), "{v}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_and_failing_sends_are_retried_honouring_retry_after() -> Result<()> {
    let p = push_stack(&[]).await?;
    let s = &p.s;
    let (a, b) = (s.user("alice", "a1").await?, s.user("bob", "phone").await?);
    register_ok(s, &b, fcm("bob-token")).await?;
    p.fcm.script([
        Reply::new(429, r#"{"error":{"status":"RESOURCE_EXHAUSTED"}}"#).header("retry-after", "1"),
        Reply::new(500, r#"{"error":{"status":"INTERNAL"}}"#),
    ]);
    let (mut ca, _) = s.live(0, &a).await?;
    let ack = ca.send_to_user("c1", &b.user_id, "eventually").await?;
    requests_at_least(&p.fcm, 3).await?;
    idle(s).await?;
    let r = p.fcm.requests();
    assert_eq!(r.iter().map(|r| r.status).collect::<Vec<_>>(), vec![429, 500, 200]);
    assert!(r[1].at - r[0].at >= Duration::from_secs(1), "Retry-After honoured: {:?}", r[1].at - r[0].at);
    assert!(fcm_message_ids(&p.fcm).iter().all(|id| id == ack["id"].as_str().unwrap()));
    assert_eq!(push_outcomes(s).await?, outcomes(&[("fcm", "sent", 1.0), ("fcm", "retry", 2.0)]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_reported_invalid_are_removed() -> Result<()> {
    let p = push_stack(&[]).await?;
    let s = &p.s;
    let a = s.user("alice", "a1").await?;
    let phone = s.user("bob", "phone").await?;
    let (iphone, browser) = (s.device("bob", "iphone").await?, s.device("bob", "browser").await?);
    register_ok(s, &phone, fcm("gone-token")).await?;
    register_ok(s, &iphone, json!({"provider": "apns", "token": "cd".repeat(32)})).await?;
    let sub = Browser::new().subscription(&format!("{}/push/gone", p.web.url()));
    register_ok(s, &browser, json!({"provider": "webpush", "subscription": sub})).await?;
    p.fcm.script([Reply::new(
        404,
        r#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"errorCode":"UNREGISTERED"}]}}"#,
    )]);
    p.apns.script([Reply::new(410, r#"{"reason":"Unregistered"}"#)]);
    p.web.script([Reply::new(410, "")]);
    let (mut ca, _) = s.live(0, &a).await?;
    ca.send_to_user("c1", &phone.user_id, "anyone there?").await?;
    for (f, who) in [(&p.fcm, &phone), (&p.apns, &iphone), (&p.web, &browser)] {
        requests_at_least(f, 1).await?;
        let path = format!("/v1/devices/{}/push", who.device_id);
        wait_for(&format!("{} unregistered", who.device_id), WAIT, || {
            let (http, path) = (s.http(0), path.clone());
            async move { (http.request(Method::GET, &path, Some(&who.token), None).await.ok()?.0 == 404).then_some(()) }
        })
        .await?;
    }
    idle(s).await?;
    ca.send_to_user("c2", &phone.user_id, "no one").await?;
    idle(s).await?;
    let counts = [p.fcm.requests().len(), p.apns.requests().len(), p.web.requests().len()];
    assert_eq!(counts, [1, 1, 1], "removed tokens are not used again");
    let invalid = [("fcm", "invalid_token", 1.0), ("apns", "invalid_token", 1.0), ("webpush", "invalid_token", 1.0)];
    assert_eq!(push_outcomes(s).await?, outcomes(&invalid));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_failing_max_attempts_times_is_dead_lettered() -> Result<()> {
    let p = push_stack(&[("CHAT_PUSH_MAX_ATTEMPTS", "3")]).await?;
    let s = &p.s;
    let (a, b) = (s.user("alice", "a1").await?, s.user("bob", "phone").await?);
    register_ok(s, &b, fcm("bob-token")).await?;
    p.fcm.default_reply(Reply::new(503, r#"{"error":{"status":"UNAVAILABLE"}}"#));
    let (mut ca, _) = s.live(0, &a).await?;
    let ack = ca.send_to_user("c1", &b.user_id, "doomed").await?;
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let dead = wait_for("a dead letter", WAIT, || {
        let js = js.clone();
        async move { js.get_stream(subjects::PUSH_DEAD_STREAM).await.ok()?.get_raw_message(1).await.ok() }
    })
    .await?;
    assert_eq!(dead.subject.as_str(), subjects::push_dead(b.user_id.parse()?));
    let d: Value = serde_json::from_slice(&dead.payload)?;
    assert_eq!((d["attempts"].as_u64(), d["provider"].as_str()), (Some(3), Some("fcm")));
    assert!(d["error"].as_str().unwrap().contains("503"), "{d}");
    assert_eq!((d["job"]["message_id"].as_str(), d["job"]["device"].as_str()), (ack["id"].as_str(), Some("phone")));
    idle(s).await?;
    assert_eq!(p.fcm.requests().len(), 3);
    assert_eq!(push_outcomes(s).await?, outcomes(&[("fcm", "retry", 2.0), ("fcm", "dead", 1.0)]));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_worker_killed_mid_batch_loses_no_job() -> Result<()> {
    let concurrency = 2;
    let mut p = push_stack(&[("CHAT_PUSH_CONCURRENCY", "2")]).await?;
    p.fcm.latency(Duration::from_millis(150));
    let (a, b) = (p.s.user("alice", "a1").await?, p.s.user("bob", "phone").await?);
    register_ok(&p.s, &b, fcm("bob-token")).await?;
    let (mut ca, _) = p.s.live(0, &a).await?;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(
            ca.send_to_user(&format!("c{i}"), &b.user_id, &format!("m{i}")).await?["id"].as_str().unwrap().to_owned(),
        );
    }
    requests_at_least(&p.fcm, 3).await?;
    p.s.kill_worker(0);
    let before = p.fcm.requests().len();
    assert!(before < ids.len(), "killed mid-batch ({before} of {} sent)", ids.len());
    p.s.add_worker(0)?;
    wait_for("every message pushed", Duration::from_secs(30), || async {
        let got = fcm_message_ids(&p.fcm);
        ids.iter().all(|id| got.contains(id)).then_some(())
    })
    .await?;
    idle(&p.s).await?;
    let got = fcm_message_ids(&p.fcm);
    let repeated = ids.iter().filter(|id| got.iter().filter(|g| g == id).count() > 1).count();
    assert!(repeated <= concurrency, "only sends in flight at the kill may repeat: {repeated} repeated");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_providers_reuse_pooled_connections() -> Result<()> {
    // One request at a time: each could take a pooled connection, so a
    // client that opens one per request shows N connections.
    let p = push_stack(&[("CHAT_PUSH_CONCURRENCY", "1")]).await?;
    let s = &p.s;
    let a = s.user("alice", "a1").await?;
    let (phone, browser) = (s.user("bob", "phone").await?, s.device("bob", "browser").await?);
    register_ok(s, &phone, fcm("bob-token")).await?;
    let sub = Browser::new().subscription(&format!("{}/push/sub-1", p.web.url()));
    register_ok(s, &browser, json!({"provider": "webpush", "subscription": sub})).await?;
    let (mut ca, _) = s.live(0, &a).await?;
    let n = 8;
    for i in 0..n {
        ca.send_to_user(&format!("c{i}"), &phone.user_id, &format!("m{i}")).await?;
    }
    requests_at_least(&p.fcm, n).await?;
    requests_at_least(&p.web, n).await?;
    idle(s).await?;
    for (name, f) in [("fcm", &p.fcm), ("webpush", &p.web)] {
        let r = f.requests();
        assert_eq!(r.len(), n, "{name}: one push per message");
        assert!(r.iter().all(|r| r.version == hyper::Version::HTTP_11), "{name} speaks HTTP/1.1");
        // FCM's server also answered the OAuth token request.
        assert!(f.connections() < n, "{name}: {} TCP connections for {n} notifications", f.connections());
    }
    Ok(())
}

/// A group message is planned from one plan, whatever the group's size (the
/// planner no longer reads every member's inbox copy), and every offline
/// member with a device is pushed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_message_is_one_plan_and_every_offline_member_is_pushed_once() -> Result<()> {
    const MEMBERS: usize = 12;
    let p = push_stack(&[]).await?;
    let s = &p.s;
    let a = s.user("alice", "a1").await?;
    let mut ids = Vec::new();
    for i in 0..MEMBERS {
        let m = s.user(&format!("member{i}"), "phone").await?;
        register_ok(s, &m, fcm(&format!("token-{i}"))).await?;
        ids.push(m.user_id);
    }
    let g = s.create_group(&a, "crowd", &ids.iter().map(String::as_str).collect::<Vec<_>>()).await?;
    let gid = g["group_id"].as_str().unwrap();
    let (mut ca, _) = s.live(0, &a).await?;
    let sent =
        ca.send_frame_and_ack(json!({"type": "send", "cid": "g1", "to": {"group": gid}, "body": "all"}), "g1").await?;
    requests_at_least(&p.fcm, MEMBERS).await?;
    idle(s).await?;
    let mut tokens: Vec<String> =
        p.fcm.requests().iter().map(|r| r.json()["message"]["token"].as_str().unwrap_or("").to_owned()).collect();
    tokens.sort();
    let mut want: Vec<String> = (0..MEMBERS).map(|i| format!("token-{i}")).collect();
    want.sort();
    assert_eq!(tokens, want, "each member's device once");
    assert!(fcm_message_ids(&p.fcm).iter().all(|id| id == sent["id"].as_str().unwrap()));
    // One plan (in memory, no fsync) stood for every copy; the push stream
    // held the jobs only.
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let plans = js.get_stream(subjects::PUSH_PLAN_STREAM).await?.info().await?.clone();
    assert_eq!(plans.config.storage, async_nats::jetstream::stream::StorageType::Memory);
    assert_eq!(plans.state.last_sequence, 1, "one plan for the group message");
    let jobs = js.get_stream(subjects::PUSH_STREAM).await?.info().await?.clone();
    assert_eq!(jobs.state.last_sequence, MEMBERS as u64, "{MEMBERS} jobs");
    Ok(())
}

/// A worker started where an older one ran (a consumer of every inbox copy
/// named `push-planner`) deletes it and plans from plans.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_over_the_old_planner_deletes_it() -> Result<()> {
    let mut p = push_stack(&[]).await?;
    let (a, b) = (p.s.user("alice", "a1").await?, p.s.user("bob", "phone").await?);
    register_ok(&p.s, &b, fcm("bob-token")).await?;
    p.s.kill_worker(0);
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&p.s.nats.url).await?);
    let plans = js.get_stream(subjects::PUSH_PLAN_STREAM).await?;
    plans.delete_consumer(subjects::PUSH_PLANNER).await?;
    let old = |name: &str, filter: &str| pull::Config {
        durable_name: Some(name.into()),
        filter_subject: filter.into(),
        ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    let inbox = js.get_stream(subjects::INBOX_STREAM).await?;
    inbox.create_consumer(old(subjects::PUSH_PLANNER, subjects::INBOX_ALL)).await?;
    p.s.add_worker(0)?;
    wait_for("the worker to replace the old consumers", WAIT, || {
        let (inbox, plans) = (inbox.clone(), plans.clone());
        async move {
            let gone = inbox.get_consumer::<pull::Config>(subjects::PUSH_PLANNER).await.is_err();
            let planner = plans.get_consumer::<pull::Config>(subjects::PUSH_PLANNER).await.is_ok();
            (gone && planner).then_some(())
        }
    })
    .await?;
    let (mut ca, _) = p.s.live(0, &a).await?;
    let sent = ca.send_to_user("m1", &b.user_id, "after the upgrade").await?;
    requests_at_least(&p.fcm, 1).await?;
    idle(&p.s).await?;
    assert_eq!(fcm_message_ids(&p.fcm), vec![sent["id"].as_str().unwrap().to_owned()]);
    p.fcm.requests(); // keep p alive to here
    Ok(())
}

/// Rounds stored within `CHAT_PUSH_PLAN_LINGER_MS` of each other share one
/// plan: five 1:1 messages, each acked before the next is sent (so five
/// rounds, of five conversations), are one plan, and every offline
/// recipient is still pushed once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rounds_within_the_plan_linger_share_one_plan() -> Result<()> {
    const PEERS: usize = 5;
    let p = push_stack(&[("CHAT_PUSH_PLAN_LINGER_MS", "3000")]).await?;
    let s = &p.s;
    let a = s.user("alice", "a1").await?;
    let mut peers = Vec::new();
    for i in 0..PEERS {
        let m = s.user(&format!("peer{i}"), "phone").await?;
        register_ok(s, &m, fcm(&format!("token-{i}"))).await?;
        peers.push(m);
    }
    let (mut ca, _) = s.live(0, &a).await?;
    for (i, m) in peers.iter().enumerate() {
        ca.send_to_user(&format!("p{i}"), &m.user_id, "hello").await?;
    }
    requests_at_least(&p.fcm, PEERS).await?;
    idle(s).await?;
    let mut tokens: Vec<String> =
        p.fcm.requests().iter().map(|r| r.json()["message"]["token"].as_str().unwrap_or("").to_owned()).collect();
    tokens.sort();
    assert_eq!(tokens, (0..PEERS).map(|i| format!("token-{i}")).collect::<Vec<_>>(), "each peer once");
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&s.nats.url).await?);
    let plans = js.get_stream(subjects::PUSH_PLAN_STREAM).await?.info().await?.clone();
    assert_eq!(plans.state.last_sequence, 1, "five rounds within the linger, one plan");
    Ok(())
}
