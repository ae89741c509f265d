//! Worker restarts: a cleanly stopped worker hands its leases over at once.
//! (A SIGKILLed worker, taken over after the lease TTL, is in
//! `durability.rs`.)

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv};
use chat_client::{Login, Method};
use chat_nats::subjects;
use chat_tests::wait_for;
use futures::TryStreamExt;

use crate::stack::{stack, Stack};

async fn befriend(s: &Stack, a: &Login, b: &Login) -> Result<()> {
    let http = s.http(0);
    assert_eq!(http.request(Method::PUT, &format!("/v1/friends/{}", b.user_id), Some(&a.token), None).await?.0, 202);
    assert_eq!(http.request(Method::PUT, &format!("/v1/friends/{}", a.user_id), Some(&b.token), None).await?.0, 200);
    Ok(())
}

async fn bucket(s: &Stack, name: &str) -> Result<kv::Store> {
    let js = jetstream::new(async_nats::connect(&s.nats.url).await?);
    Ok(js.get_key_value(name).await?)
}

/// The keys of the leases bucket with their holders.
async fn leases(kv: &kv::Store) -> Result<Vec<(String, String)>> {
    let keys: Vec<String> = kv.keys().await?.try_collect().await?;
    let mut out = Vec::new();
    for k in keys {
        if let Some(v) = kv.get(&k).await? {
            out.push((k, String::from_utf8_lossy(&v).into_owned()));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_worker_hands_its_leases_over_at_once() -> Result<()> {
    const TTL: Duration = Duration::from_secs(30);
    let mut s = stack().env("CHAT_LEASE_TTL_MS", &TTL.as_millis().to_string()).start().await?;
    let (a, b) = (s.user("alice", "a1").await?, s.user("bob", "b1").await?);
    befriend(&s, &a, &b).await?;
    let (mut ca, _) = s.live(0, &a).await?;
    ca.send_to_user("m0", &b.user_id, "before").await?;
    let lease_kv = bucket(&s, subjects::LEASES_BUCKET).await?;
    wait_for("w0 to be the presence worker", Duration::from_secs(10), || {
        let kv = lease_kv.clone();
        async move {
            let held = leases(&kv).await.ok()?;
            held.iter().any(|(k, v)| k == subjects::PRESENCE_LEASE && v == "w0").then_some(())
        }
    })
    .await?;

    let exit = s.term_worker(0).await?;
    assert!(exit.success(), "a SIGTERMed worker exits cleanly: {exit}");
    let left = leases(&lease_kv).await?;
    assert!(left.is_empty(), "a clean stop releases every lease (machine, partitions, presence): {left:?}");

    // A new worker owns the partitions and the presence lease at once, not
    // after the old leases' TTL.
    let started = Instant::now();
    s.add_worker(0)?;
    let ack = tokio::time::timeout(TTL / 3, ca.send_to_user("m1", &b.user_id, "after")).await.context("send")??;
    assert_eq!(ack["type"], "ack", "{ack}");
    let _cb = s.connect(0, &b).await?;
    let online =
        |v: &serde_json::Value| v["type"] == "presence" && v["user"] == b.user_id.as_str() && v["status"] == "online";
    tokio::time::timeout(TTL / 3, ca.wait_for("bob online", online)).await.context("bob online")??;
    let took = started.elapsed();
    assert!(took < TTL / 3, "the restarted worker served after {took:?} (lease TTL {TTL:?})");
    Ok(())
}
