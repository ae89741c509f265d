//! `fanout`: G groups of M members (default 100), every member's devices
//! connected and synced, S senders per group sending at a fixed total
//! rate. Reports deliveries per second and send→delivery percentiles.
//!
//! Baselines: core NATS publish to M subscriptions per subject at the same
//! rate (latency); the core NATS fan-out ceiling (publish as fast as
//! possible to M subscribers); and the JetStream ceiling of the persisted
//! path, M copies of every message into a file stream (what the sequencer
//! does for a group message, one inbox copy per member).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::baseline::{self, RawCfg};
use crate::client::{create_group, live, run_prefix, signup_users, token};
use crate::report::Report;
use crate::traffic::{self, per_s, Peer, TrafficCfg};
use crate::Target;

/// Parameters.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Groups.
    pub groups: usize,
    /// Members per group (owner included).
    pub members: usize,
    /// Connected devices per member.
    pub devices: usize,
    /// Members of each group that send.
    pub senders_per_group: usize,
    /// Group messages per second, all senders together.
    pub rate: f64,
    /// Measured run.
    pub duration: Duration,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Body size in bytes.
    pub size: usize,
    /// Wait for stragglers at most this long.
    pub drain: Duration,
    /// Messages for the fan-out ceilings (core: this many; JetStream: a
    /// tenth, times M copies each).
    pub ceiling_msgs: u64,
    /// Run the raw-NATS baselines.
    pub baselines: bool,
    /// Count the nats-server's messages per delivery (`--tap`).
    pub tap: bool,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            groups: 2,
            members: 100,
            devices: 1,
            senders_per_group: 4,
            rate: 100.0,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            size: 100,
            drain: Duration::from_secs(20),
            ceiling_msgs: 20_000,
            baselines: true,
            tap: false,
        }
    }
}

/// Runs the scenario.
pub async fn run(t: &Target, cfg: &Cfg) -> Result<Report> {
    let (g, m) = (cfg.groups.max(1), cfg.members.max(2));
    let mut r = Report::new(
        "fanout",
        json!({"groups": g, "members": m, "devices": cfg.devices, "senders_per_group": cfg.senders_per_group,
               "rate": cfg.rate, "duration_s": cfg.duration.as_secs_f64(), "size": cfg.size,
               "gateways": t.gateways.len()}),
    );
    let users = signup_users(t, &run_prefix("fanout"), g * m, 4).await?;
    let mut gids = Vec::with_capacity(g);
    for k in 0..g {
        let members = &users[k * m..(k + 1) * m];
        let owner = token(t, &members[0], "d0").await?;
        let others: Vec<String> = members[1..].iter().map(|u| u.id.clone()).collect();
        match create_group(t, &owner, &format!("bench-{k}"), &others).await? {
            Some(gid) => gids.push(gid),
            None => {
                r.metric("available", 0.0);
                r.note("groups API not available (HTTP 404 on POST /v1/groups): scenario skipped");
                return Ok(r);
            }
        }
    }
    r.metric("available", 1.0);

    let sem = Arc::new(Semaphore::new(64));
    let mut conns = Vec::new();
    for (i, u) in users.iter().enumerate() {
        let (group, idx) = (i / m, i % m);
        for d in 0..cfg.devices.max(1) {
            let (addr, tok, sem) =
                (t.gateway(i * cfg.devices + d).to_owned(), token(t, u, &format!("d{d}")).await?, sem.clone());
            let to = (d == 0 && idx < cfg.senders_per_group).then(|| json!({"group": gids[group]}));
            conns.push(tokio::spawn(async move {
                let _permit = sem.acquire_owned().await;
                let (tx, rx, _) = live(&addr, &tok, None).await?;
                Ok::<_, anyhow::Error>(Peer { tx, rx, to })
            }));
        }
    }
    let mut peers = Vec::with_capacity(conns.len());
    for c in conns {
        peers.push(c.await??);
    }
    r.metric("connections", peers.len() as f64);
    let dps = (m * cfg.devices.max(1) - 1) as u64;
    let tc = TrafficCfg {
        rate: cfg.rate,
        warmup: cfg.warmup,
        duration: cfg.duration,
        size: cfg.size,
        drain: cfg.drain,
        deliveries_per_send: dps,
        tap: cfg.tap.then(|| t.nats_url.clone()),
        procs: traffic::stack_procs(t),
    };
    let tr = traffic::run(peers, &tc).await?;
    let deliveries_per_s = per_s(tr.delivered, tr.delivery_span_s);
    r.metric("scheduled", tr.scheduled as f64);
    r.metric("acked", tr.acked as f64);
    r.metric("errors", tr.errors as f64);
    r.metric("delivered", tr.delivered as f64);
    traffic::report_cpu(&mut r, &tr.cpu, tr.delivered, "delivery");
    traffic::report_tap(&mut r, &tr.nats_msgs, tr.delivered, "delivery");
    r.metric("expected_deliveries", (tr.acked * dps) as f64);
    r.metric("deliveries_per_s", deliveries_per_s);
    r.metric("sends_acked_per_s", per_s(tr.acked, tr.ack_span_s));
    if let Some(e) = &tr.first_error {
        r.note(format!("first error frame: {e}"));
    }
    let ack = tr.ack.row("ours group send→ack", Some(per_s(tr.acked, tr.ack_span_s)));
    let del = tr.delivery.row("ours group send→delivery", Some(deliveries_per_s));
    r.latencies.push(ack);
    r.latencies.push(del.clone());
    r.latencies.push(tr.lateness.row("pacer lateness (scheduled→dispatched)", None));
    let target = if deliveries_per_s >= 100_000.0 { "met" } else { "not reached at this rate" };
    r.note(format!(
        "target ≥ 100,000 deliveries/s for 100-member groups: {target} ({deliveries_per_s:.0}/s at {} group msgs/s offered)",
        cfg.rate
    ));

    if cfg.baselines {
        let res: Result<()> = async {
            let raw = RawCfg {
                subjects: g,
                subs_per_subject: m * cfg.devices.max(1),
                jetstream: false,
                rate: cfg.rate,
                warmup: cfg.warmup,
                duration: cfg.duration,
                size: cfg.size,
                drain: cfg.drain,
            };
            let core = baseline::paced(&t.nats_url, &raw).await?;
            let core_row = core.delivery.row("core NATS pub→M subs", Some(per_s(core.delivered, core.span_s)));
            r.ratio("send→delivery p50 / core pub→M subs p50", del.p50_ms, core_row.p50_ms);
            r.ratio("send→delivery p99 / core pub→M subs p99", del.p99_ms, core_row.p99_ms);
            r.latencies.push(core_row);
            let core_max = baseline::core_fanout_max(&t.nats_url, m, cfg.ceiling_msgs, cfg.size).await?;
            let js_max = baseline::js_fanout_max(&t.nats_url, m, (cfg.ceiling_msgs / 10).max(1), cfg.size).await?;
            r.metric("baseline_core_fanout_max_deliveries_per_s", core_max);
            r.metric("baseline_jetstream_copies_max_per_s", js_max);
            r.ratio("deliveries/s / core fan-out ceiling", deliveries_per_s, core_max);
            r.ratio("deliveries/s / JetStream copy ceiling", deliveries_per_s, js_max);
            Ok(())
        }
        .await;
        if let Err(e) = res {
            r.note(format!("baselines failed: {e:#}"));
        }
    }
    Ok(r)
}
