//! `latency`: P pairs exchanging 1:1 messages at a fixed total rate.
//!
//! Each pair is two users, each with one synced device, sending to each
//! other; the total rate is spread evenly over the 2P connections (a
//! gateway runs a connection's sends one after another, an ack each, so
//! one connection cannot carry the whole rate). Send→ack and send→delivery
//! are measured from the scheduled send times. Baselines at the same rate,
//! size and number of publishers: core NATS publish→subscribe, and
//! JetStream publish→plain subscriber on a file stream (the persisted
//! path, same fsync setting). Runs over WebSocket or QUIC (`transport`;
//! the report is `latency-quic` for QUIC).

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use crate::baseline::{self, RawCfg};
use crate::client::{run_prefix, signup_users, token, Dialer, Transport};
use crate::report::{LatRow, Report};
use crate::traffic::{self, per_s, Peer, TrafficCfg};
use crate::Target;

/// Parameters.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Pairs of users.
    pub pairs: usize,
    /// Messages per second, all connections together.
    pub rate: f64,
    /// Measured run.
    pub duration: Duration,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Body size in bytes.
    pub size: usize,
    /// Wait for stragglers at most this long.
    pub drain: Duration,
    /// Run the raw-NATS baselines.
    pub baselines: bool,
    /// The session transport.
    pub transport: Transport,
    /// Count the nats-server's messages per send (`--tap`, see `tap`).
    pub tap: bool,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            pairs: 50,
            rate: 2000.0,
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            size: 100,
            drain: Duration::from_secs(15),
            baselines: true,
            transport: Transport::Ws,
            tap: false,
        }
    }
}

/// Runs the scenario.
pub async fn run(t: &Target, cfg: &Cfg) -> Result<Report> {
    let mut r = Report::new(
        &cfg.transport.scenario("latency"),
        json!({"pairs": cfg.pairs, "rate": cfg.rate, "duration_s": cfg.duration.as_secs_f64(),
               "warmup_s": cfg.warmup.as_secs_f64(), "size": cfg.size, "gateways": t.gateways.len(),
               "transport": cfg.transport.name()}),
    );
    // QUIC: the connections share 4 client endpoints (UDP sockets).
    let dialer = Dialer::new(t, cfg.transport, 4)?;
    let users = signup_users(t, &run_prefix("latency"), 2 * cfg.pairs, 4).await?;
    let mut peers = Vec::with_capacity(2 * cfg.pairs);
    for i in 0..cfg.pairs {
        for (me, other, gw) in [(2 * i, 2 * i + 1, i), (2 * i + 1, 2 * i, i + 1)] {
            let tok = token(t, &users[me], "d0").await?;
            let (tx, rx, _) = dialer.live(gw, &tok, None).await?;
            peers.push(Peer { tx, rx, to: Some(json!({"user": users[other].id})) });
        }
    }
    let tc = TrafficCfg {
        rate: cfg.rate,
        warmup: cfg.warmup,
        duration: cfg.duration,
        size: cfg.size,
        drain: cfg.drain,
        deliveries_per_send: 1,
        tap: cfg.tap.then(|| t.nats_url.clone()),
        procs: traffic::stack_procs(t),
    };
    let drops0 = crate::procfs::udp_rcvbuf_errors();
    let tr = traffic::run(peers, &tc).await?;
    if let (Some(a), Some(b)) = (drops0, crate::procfs::udp_rcvbuf_errors()) {
        // QUIC: datagrams lost to a full socket buffer (client or gateway).
        r.metric("udp_rcvbuf_drops", b.saturating_sub(a) as f64);
    }
    r.metric("scheduled", tr.scheduled as f64);
    r.metric("acked", tr.acked as f64);
    r.metric("delivered", tr.delivered as f64);
    r.metric("errors", tr.errors as f64);
    r.metric("ack_rate_per_s", per_s(tr.acked, tr.ack_span_s));
    r.metric("delivery_rate_per_s", per_s(tr.delivered, tr.delivery_span_s));
    traffic::report_cpu(&mut r, &tr.cpu, tr.acked, "send");
    traffic::report_tap(&mut r, &tr.nats_msgs, tr.acked, "send");
    if let Some(e) = &tr.first_error {
        r.note(format!("first error frame: {e}"));
    }
    let ack = tr.ack.row("ours send→ack", Some(per_s(tr.acked, tr.ack_span_s)));
    let del = tr.delivery.row("ours send→delivery", Some(per_s(tr.delivered, tr.delivery_span_s)));
    r.latencies.push(ack.clone());
    r.latencies.push(del.clone());
    r.latencies.push(tr.lateness.row("pacer lateness (scheduled→dispatched)", None));
    let target = if del.p99_ms <= 5.0 { "met" } else { "missed" };
    r.note(format!("target send→delivery p99 ≤ 5 ms at 2,000 msg/s with persistence: {target} ({:.2} ms)", del.p99_ms));

    if cfg.baselines {
        if let Err(e) = baselines(t, cfg, &mut r, &ack, &del).await {
            r.note(format!("baselines failed: {e:#}"));
        }
    }
    Ok(r)
}

/// The raw-NATS baselines and the ratios against `ack` and `del`.
async fn baselines(t: &Target, cfg: &Cfg, r: &mut Report, ack: &LatRow, del: &LatRow) -> Result<()> {
    let raw = |jetstream| RawCfg {
        subjects: 2 * cfg.pairs,
        subs_per_subject: 1,
        jetstream,
        rate: cfg.rate,
        warmup: cfg.warmup,
        duration: cfg.duration,
        size: cfg.size,
        drain: cfg.drain,
    };
    let core = baseline::paced(&t.nats_url, &raw(false)).await?;
    let core_row = core.delivery.row("core NATS pub→sub", Some(per_s(core.delivered, core.span_s)));
    let js = baseline::paced(&t.nats_url, &raw(true)).await?;
    let js_row = js.delivery.row("JetStream pub→sub", Some(per_s(js.delivered, js.span_s)));
    let js_ack = js.ack.row("JetStream pub→ack", None);
    r.ratio("send→delivery p50 / JetStream pub→sub p50", del.p50_ms, js_row.p50_ms);
    r.ratio("send→delivery p99 / JetStream pub→sub p99", del.p99_ms, js_row.p99_ms);
    r.ratio("send→delivery p50 / core pub→sub p50", del.p50_ms, core_row.p50_ms);
    r.ratio("send→delivery p99 / core pub→sub p99", del.p99_ms, core_row.p99_ms);
    r.ratio("send→ack p50 / JetStream pub→ack p50", ack.p50_ms, js_ack.p50_ms);
    r.ratio("send→ack p99 / JetStream pub→ack p99", ack.p99_ms, js_ack.p99_ms);
    r.latencies.extend([core_row, js_row, js_ack]);
    let js_max = baseline::js_fanout_max(&t.nats_url, 1, 5000, cfg.size).await?;
    r.metric("baseline_jetstream_publish_max_per_s", js_max);
    r.note(format!(
        "JetStream stores at most ~{js_max:.0} messages/s on this server (async publishes, 256 in flight); \
         every send writes ingress, history, one inbox copy per member and an ack record"
    ));
    Ok(())
}
