//! `room`: one live room with V viewers (default 10,000) spread over the
//! gateways, one poster at a fixed rate (default 20 msgs/s). Reports
//! deliveries per second (from the scheduled start to the last delivery,
//! and in steady state: first to last delivery plus one post interval,
//! which leaves out the last post's latency), post→delivery percentiles, viewers lost and
//! gateway CPU per delivery.
//!
//! Baselines in the same run: core NATS publish to V subscriptions of one
//! subject at the same rate (latency), and the core NATS fan-out ceiling
//! to V subscribers (what read fan-out cannot beat: one subscription per
//! gateway turns into V socket writes there).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use chat_client::{ClientError, Http};
use serde_json::json;
use tokio::sync::Semaphore;

use crate::baseline::{self, RawCfg};
use crate::client::{connect_retry, run_prefix, signup_users, token};
use crate::report::Report;
use crate::traffic::{self, per_s, Peer, TrafficCfg};
use crate::Target;

/// Parameters.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Connected viewers.
    pub viewers: usize,
    /// Accounts the viewers log in as (sessions per account = V / this).
    pub users: usize,
    /// Room messages per second.
    pub rate: f64,
    /// Measured run.
    pub duration: Duration,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Body size in bytes.
    pub size: usize,
    /// Messages for the core fan-out ceiling.
    pub ceiling_msgs: u64,
    /// Run the raw-NATS baselines.
    pub baselines: bool,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            viewers: 10_000,
            users: 100,
            rate: 20.0,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            size: 100,
            ceiling_msgs: 200,
            baselines: true,
        }
    }
}

async fn create_room(t: &Target, owner: &str) -> Result<String> {
    let (status, v) = Http::new(t.gateway(0))
        .request(chat_client::Method::POST, "/v1/rooms", Some(owner), Some(json!({"title": "bench"})))
        .await
        .map_err(|e: ClientError| anyhow!("create room: {e}"))?;
    match status {
        201 => Ok(v["room"].as_str().ok_or_else(|| anyhow!("no room in {v}"))?.to_owned()),
        s => bail!("create room: HTTP {s} {v}"),
    }
}

/// Runs the scenario.
pub async fn run(t: &Target, cfg: &Cfg) -> Result<Report> {
    let (v, u) = (cfg.viewers.max(1), cfg.users.max(1));
    let mut r = Report::new(
        "room",
        json!({"viewers": v, "users": u, "rate": cfg.rate, "duration_s": cfg.duration.as_secs_f64(),
               "size": cfg.size, "gateways": t.gateways.len()}),
    );
    let users = signup_users(t, &run_prefix("room"), u + 1, 4).await?;
    let poster = token(t, &users[u], "p").await?;
    let room = create_room(t, &poster).await?;
    let mut tokens = Vec::with_capacity(u);
    for user in &users[..u] {
        tokens.push(token(t, user, "v").await?);
    }
    let sem = Arc::new(Semaphore::new(64));
    let mut conns = Vec::new();
    for i in 0..v {
        let (addr, tok, sem, room) = (t.gateway(i).to_owned(), tokens[i % u].clone(), sem.clone(), room.clone());
        conns.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let (mut tx, mut rx, _) = connect_retry(&addr, &tok, 8).await?;
            tx.send(&json!({"type": "join", "room": room})).await?;
            loop {
                let f = rx.next_within(Duration::from_secs(60)).await?;
                match f.ty.as_str() {
                    "joined" => break,
                    "error" => bail!("join: {:?} {:?}", f.code, f.message),
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>(Peer { tx, rx, to: None })
        }));
    }
    let mut peers = Vec::with_capacity(v + 1);
    let mut failed = 0;
    for c in conns {
        match c.await? {
            Ok(p) => peers.push(p),
            Err(_) => failed += 1,
        }
    }
    r.metric("viewers_joined", peers.len() as f64);
    r.metric("viewers_failed", failed as f64);
    let viewers = peers.len() as u64;
    let (tx, rx, _) = connect_retry(t.gateway(0), &poster, 8).await?;
    peers.push(Peer { tx, rx, to: Some(json!({"room": room})) });
    let tc = TrafficCfg {
        rate: cfg.rate,
        warmup: cfg.warmup,
        duration: cfg.duration,
        size: cfg.size,
        drain: Duration::from_secs(20),
        deliveries_per_send: viewers,
        tap: None,
        procs: traffic::stack_procs(t),
    };
    let tr = traffic::run(peers, &tc).await?;
    let deliveries_per_s = per_s(tr.delivered, tr.delivery_span_s);
    let steady_per_s = per_s(tr.delivered, tr.delivery_window_s);
    r.metric("acked", tr.acked as f64);
    r.metric("errors", tr.errors as f64);
    r.metric("delivered", tr.delivered as f64);
    r.metric("expected_deliveries", (tr.acked * viewers) as f64);
    r.metric("deliveries_per_s", deliveries_per_s);
    r.metric("deliveries_per_s_steady", steady_per_s);
    traffic::report_cpu(&mut r, &tr.cpu, tr.delivered, "delivery");
    if let Some(e) = &tr.first_error {
        r.note(format!("first error frame: {e}"));
    }
    let del = tr.delivery.row("ours room post→delivery", Some(deliveries_per_s));
    r.latencies.push(tr.ack.row("ours room post→ack", Some(per_s(tr.acked, tr.ack_span_s))));
    r.latencies.push(del.clone());
    r.latencies.push(tr.lateness.row("pacer lateness (scheduled→dispatched)", None));
    r.note(format!(
        "targets: ≥ 200,000 deliveries/s ({deliveries_per_s:.0}/s from the scheduled start to the last delivery, \
         {steady_per_s:.0}/s over the first to last delivery plus one post interval), post→delivery p99 ≤ 1 s ({:.0} ms), \
         delivered {} of {} expected",
        del.p99_ms,
        tr.delivered,
        tr.acked * viewers
    ));
    if cfg.baselines {
        let res: Result<()> = async {
            let raw = RawCfg {
                subjects: 1,
                subs_per_subject: v,
                jetstream: false,
                rate: cfg.rate,
                warmup: cfg.warmup,
                duration: cfg.duration,
                size: cfg.size,
                drain: Duration::from_secs(20),
            };
            let core = baseline::paced(&t.nats_url, &raw).await?;
            let core_row = core.delivery.row("core NATS pub→V subs", Some(per_s(core.delivered, core.span_s)));
            r.ratio("post→delivery p99 / core pub→V subs p99", del.p99_ms, core_row.p99_ms);
            r.latencies.push(core_row);
            let core_max = baseline::core_fanout_max(&t.nats_url, v, cfg.ceiling_msgs, cfg.size).await?;
            r.metric("baseline_core_fanout_max_deliveries_per_s", core_max);
            r.ratio("deliveries/s / core fan-out ceiling", deliveries_per_s, core_max);
            Ok(())
        }
        .await;
        if let Err(e) = res {
            r.note(format!("baselines failed: {e:#}"));
        }
    }
    Ok(r)
}
