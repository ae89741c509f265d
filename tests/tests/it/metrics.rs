//! `GET /metrics`: a gateway's and a worker's, scraped before and after
//! real activity (signups, logins, WebSocket and QUIC sessions, an acked
//! send, refused frames, live delivery and a catch-up), parsed as
//! Prometheus text and compared series by series.

use std::time::Duration;

use anyhow::{ensure, Result};
use chat_tests::prom::{self, Exposition};
use chat_tests::wait_for;
use serde_json::json;

use crate::stack::{stack, Kind};

const OPERATOR: &str = "operator-credential-0123456789abcdef";

/// A series and how much it must have moved.
type Expect = (&'static str, &'static [(&'static str, &'static str)], f64);

/// Polls `addr` until every series moved by exactly its amount since
/// `before` (counters never go down, so an overshoot fails too); returns
/// the last scrape.
async fn settle(addr: &str, token: Option<&str>, before: &Exposition, expect: &[Expect]) -> Result<Exposition> {
    let last = std::sync::Mutex::new(String::new());
    let found = wait_for(&format!("the metrics of {addr} to move"), Duration::from_secs(20), || {
        let last = &last;
        async move {
            let now = match prom::metrics(addr, token).await {
                Ok(e) => e,
                Err(e) => {
                    *last.lock().unwrap() = format!("scrape failed: {e:#}");
                    return None;
                }
            };
            let off: Vec<String> = expect
                .iter()
                .filter_map(|(name, labels, delta)| {
                    let moved = now.value(name, labels) - before.value(name, labels);
                    (moved != *delta).then(|| format!("{name}{labels:?} moved {moved}, expected {delta}"))
                })
                .collect();
            if off.is_empty() {
                Some(now)
            } else {
                *last.lock().unwrap() = off.join("; ");
                None
            }
        }
    })
    .await;
    found.map_err(|e| anyhow::anyhow!("{e}: {}", last.lock().unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_worker_metrics_count_real_activity() -> Result<()> {
    let mut s = stack().env("CHAT_OPERATOR_TOKEN", OPERATOR).worker_metrics().start().await?;
    let (gw, wk) = (s.addr(0), s.worker_metrics(0)?);

    // The gateway's endpoint is an operator endpoint; the worker's is open.
    assert_eq!(prom::scrape(&gw, None).await?.status, 401);
    assert_eq!(prom::scrape(&gw, Some("not-the-operator-credential-at-all")).await?.status, 401);
    let w0 = wait_for("the worker to own every partition", Duration::from_secs(30), || {
        let wk = wk.clone();
        async move { prom::metrics(&wk, None).await.ok().filter(|e| e.value("chat_partitions_owned", &[]) == 4.0) }
    })
    .await?;
    let g0 = prom::metrics(&gw, Some(OPERATOR)).await?;
    assert_eq!(g0.value("chat_sessions", &[("transport", "ws")]), 0.0);
    assert_eq!(g0.value("chat_nats_connected", &[]), 1.0);
    assert!(g0.has("chat_pg_pool_wait_seconds_count") && g0.value("chat_pg_pool_max", &[]) > 0.0);
    let token_user = s.user("mallory", "m1").await?;
    assert_eq!(prom::scrape(&gw, Some(&token_user.token)).await?.status, 401, "a user token is not the operator's");
    let g0 = prom::metrics(&gw, Some(OPERATOR)).await?;

    // Activity: two users, two WebSocket sessions, one acked send, a
    // refused send, a malformed frame, a ping, a clean close, a catch-up
    // of one message, and a QUIC session.
    let a = s.user("alice", "a1").await?;
    let b = s.user("bob", "b1").await?;
    let (mut ca, _) = s.live(0, &a).await?;
    let (mut cb, _) = s.live(0, &b).await?;
    ca.send_to_user("c1", &b.user_id, "hello bob").await?;
    let refused = ca.send_to_user("c2", &b.user_id, "   ").await;
    assert!(matches!(&refused, Err(chat_client::ClientError::Api { code, .. }) if code == "empty_body"), "{refused:?}");
    assert_eq!(cb.next_msg().await?["body"], "hello bob");
    assert_eq!(ca.next_msg().await?["cid"], "c1", "the sender's own copy");
    ca.send_text("{".into()).await?;
    assert_eq!(ca.wait_for("bad_json", |v| v["type"] == "error").await?["code"], "bad_json");
    ca.send_json(&json!({"type": "ping"})).await?;
    ca.wait_for("pong", |v| v["type"] == "pong").await?;
    cb.close().await;
    let mut cb = s.connect(0, &b).await?;
    let (caught_up, _) = cb.sync(None).await?;
    assert_eq!(caught_up.len(), 1);
    let mut cq = s.connect_over(Kind::Quic, 0, &a).await?;
    cq.send_json(&json!({"type": "ping"})).await?;
    cq.wait_for("pong", |v| v["type"] == "pong").await?;

    let ws: &[(&str, &str)] = &[("transport", "ws")];
    let quic: &[(&str, &str)] = &[("transport", "quic")];
    let g1 = settle(
        &gw,
        Some(OPERATOR),
        &g0,
        &[
            ("chat_sessions", ws, 2.0),
            ("chat_sessions", quic, 1.0),
            ("chat_sessions_opened_total", ws, 3.0),
            ("chat_sessions_opened_total", quic, 1.0),
            ("chat_frames_in_total", &[("type", "sync")], 3.0),
            ("chat_frames_in_total", &[("type", "send")], 2.0),
            ("chat_frames_in_total", &[("type", "ping")], 2.0),
            ("chat_frames_in_total", &[("type", "invalid")], 1.0),
            ("chat_frames_out_total", &[("type", "ack")], 1.0),
            ("chat_frames_out_total", &[("type", "error")], 2.0),
            ("chat_frames_out_total", &[("type", "msg")], 3.0),
            ("chat_frames_out_total", &[("type", "synced")], 3.0),
            ("chat_frames_out_total", &[("type", "pong")], 2.0),
            ("chat_sends_acked_total", &[], 1.0),
            ("chat_sends_refused_total", &[("code", "empty_body")], 1.0),
            ("chat_send_ack_seconds_count", &[], 2.0),
            ("chat_delivery_lag_seconds_count", &[("phase", "live")], 2.0),
            ("chat_delivery_lag_seconds_count", &[("phase", "catchup")], 1.0),
            // Local and live: both within 2 s of being stored.
            ("chat_delivery_lag_seconds_bucket", &[("phase", "live"), ("le", "2.048")], 2.0),
            ("chat_catchup_messages_bucket", &[("le", "1")], 3.0),
            ("chat_catchup_messages_bucket", &[("le", "+Inf")], 3.0),
            ("chat_catchup_messages_count", &[], 3.0),
            ("chat_catchup_messages_sum", &[], 1.0),
            ("chat_catchup_seconds_count", &[], 3.0),
            ("chat_session_closes_total", &[("code", "1000"), ("reason", "bye")], 1.0),
            ("chat_http_requests_total", &[("route", "/v1/signup"), ("method", "POST"), ("status", "201")], 2.0),
            ("chat_http_requests_total", &[("route", "/v1/login"), ("method", "POST"), ("status", "200")], 2.0),
            ("chat_http_requests_total", &[("route", "/v1/ws"), ("method", "GET"), ("status", "101")], 3.0),
            ("chat_nats_reconnects_total", &[], 0.0),
        ],
    )
    .await?;
    let waits = g1.value("chat_pg_pool_wait_seconds_count", &[]) - g0.value("chat_pg_pool_wait_seconds_count", &[]);
    ensure!(waits >= 4.0, "signups and logins took PostgreSQL connections: {waits}");
    ensure!(g1.value("chat_http_request_seconds_count", &[("route", "/v1/login")]) >= 2.0);
    ensure!(g1.value("chat_sends_refused_total", &[("code", "bad_json")]) == 0.0, "a bad frame is not a send");

    // The worker sequenced the one accepted message, alone in its round
    // (stored as a round through the committers: mode batch; no hand-off
    // with the default CHAT_SEND_PATH).
    let w1 = settle(
        &wk,
        None,
        &w0,
        &[
            ("chat_sequencer_messages_total", &[("mode", "single")], 0.0),
            ("chat_sequencer_messages_total", &[("mode", "batch")], 1.0),
            ("chat_sequencer_messages_total", &[("mode", "fast")], 0.0),
            ("chat_sequencer_round_messages_count", &[], 1.0),
            ("chat_sequencer_round_messages_sum", &[], 1.0),
            ("chat_sequencer_commit_seconds_count", &[("mode", "batch")], 1.0),
            ("chat_partitions_owned", &[], 0.0),
            ("chat_nats_reconnects_total", &[], 0.0),
        ],
    )
    .await?;
    assert_eq!(w1.value("chat_nats_connected", &[]), 1.0);
    // Alice and Bob came online (Bob's reconnect may or may not be seen
    // as a transition of its own: presence watches the latest value).
    let online = wait_for("alice and bob online", Duration::from_secs(20), || {
        let (wk, w0) = (wk.clone(), &w0);
        async move {
            let e = prom::metrics(&wk, None).await.ok()?;
            let to = [("to", "online")];
            let n = e.value("chat_presence_transitions_total", &to) - w0.value("chat_presence_transitions_total", &to);
            (n >= 2.0).then_some(n)
        }
    })
    .await?;
    ensure!(online <= 4.0, "at most one transition per connection: {online}");

    // Nothing else is served on the worker's metrics listener.
    assert_eq!(prom::get(&wk, "/", None).await?.status, 404);
    documented_and_on_the_dashboard(&[&g1, &w1])?;
    s.kill_worker(0);
    Ok(())
}

/// Every family the processes expose is listed in `docs/operations.md`,
/// and every metric the Grafana dashboard queries is one they expose.
fn documented_and_on_the_dashboard(scrapes: &[&Exposition]) -> Result<()> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    let ops = std::fs::read_to_string(format!("{root}/docs/operations.md"))?;
    let dashboard = std::fs::read_to_string(format!("{root}/ops/grafana/chat.json"))?;
    let families: std::collections::HashSet<&str> =
        scrapes.iter().flat_map(|e| e.types.keys()).map(String::as_str).collect();
    ensure!(families.contains("chat_push_outcomes_total") && families.len() > 30, "{families:?}");
    let undocumented: Vec<_> = families.iter().filter(|f| !ops.contains(&format!("`{f}`"))).collect();
    ensure!(undocumented.is_empty(), "not in docs/operations.md: {undocumented:?}");
    let v: serde_json::Value = serde_json::from_str(&dashboard)?;
    let mut exprs = Vec::new();
    for p in v["panels"].as_array().into_iter().flatten() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push(t["expr"].as_str().unwrap_or_default().to_owned());
        }
    }
    ensure!(exprs.len() > 20, "dashboard queries: {}", exprs.len());
    for e in &exprs {
        for name in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).filter(|w| w.starts_with("chat_")) {
            let family = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
            ensure!(
                families.contains(name) || families.contains(family),
                "the dashboard queries {name}, which no process exposes ({e})"
            );
        }
    }
    Ok(())
}
