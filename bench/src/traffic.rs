//! Paced message traffic over WebSocket connections, shared by the
//! `latency` (1:1) and `fanout` (groups) scenarios.
//!
//! Every connection gets a reader task; senders also get a writer task fed
//! by the pacer ([`crate::pace`]). A send's `cid` and body both carry its
//! scheduled time, so the reader of the sender's connection measures
//! send→ack and every recipient's reader measures send→delivery without
//! any shared bookkeeping. A warm-up period runs first and is excluded by
//! its scheduled times.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::client::{WsRx, WsTx};
use crate::pace::{self, now_ns, us_since, Tick};
use crate::report::Lat;

/// One live (synced) connection.
pub struct Peer {
    /// Writer half.
    pub tx: WsTx,
    /// Reader half.
    pub rx: WsRx,
    /// Where this connection's sends go (`{"user": id}` / `{"group": id}`);
    /// `None` for a receive-only connection.
    pub to: Option<Value>,
}

/// How much traffic.
#[derive(Debug, Clone)]
pub struct TrafficCfg {
    /// Sends per second over all senders.
    pub rate: f64,
    /// Unmeasured warm-up before the measured run.
    pub warmup: Duration,
    /// Measured run.
    pub duration: Duration,
    /// Body size in bytes.
    pub size: usize,
    /// How long to wait for the last acks and deliveries.
    pub drain: Duration,
    /// Deliveries each acked send should cause (excluding the sender's own
    /// device), for knowing when the run has drained.
    pub deliveries_per_send: u64,
    /// Processes whose CPU is measured (role, pid), e.g. [`stack_procs`].
    pub procs: Vec<(String, u32)>,
    /// Count the nats-server's messages by kind over the measured run
    /// (see `tap`): this server URL.
    pub tap: Option<String>,
}

/// Counters and histograms of a run (the measured part only).
#[derive(Debug, Default)]
pub struct Traffic {
    /// Send→ack latency.
    pub ack: Lat,
    /// Send→delivery latency.
    pub delivery: Lat,
    /// How late the pacer handed sends over (scheduled → dispatched).
    pub lateness: Lat,
    /// Sends scheduled in the measured run.
    pub scheduled: u64,
    /// Acks received.
    pub acked: u64,
    /// Deliveries received.
    pub delivered: u64,
    /// Error frames received.
    pub errors: u64,
    /// Seconds from the scheduled start to the last ack.
    pub ack_span_s: f64,
    /// Seconds from the scheduled start to the last delivery.
    pub delivery_span_s: f64,
    /// Seconds from the first measured delivery to the last, plus one
    /// send interval (`1 / rate`): the window the deliveries occupy in
    /// steady state, without the latency of the last send that
    /// `delivery_span_s` also holds (a constant 100 ms latency over a
    /// 10 s run makes that span 1 % longer and the rate 1 % lower).
    pub delivery_window_s: f64,
    /// The first error frame, if any.
    pub first_error: Option<String>,
    /// CPU used by the stack's processes over the measured run (after the
    /// warm-up, through the drain): wall seconds and CPU seconds by role.
    pub cpu: (f64, Vec<(String, f64)>),
    /// Messages through the nats-server over the measured run by kind, if
    /// tapped.
    pub nats_msgs: Vec<(String, u64)>,
}

#[derive(Default)]
struct Shared {
    from_ns: AtomicU64,
    ack: Lat,
    delivery: Lat,
    acked_all: AtomicU64,
    delivered_all: AtomicU64,
    errors_all: AtomicU64,
    acked: AtomicU64,
    delivered: AtomicU64,
    errors: AtomicU64,
    last_ack: AtomicU64,
    last_delivery: AtomicU64,
    first_delivery: AtomicU64,
    first_error: Mutex<Option<String>>,
}

/// The scheduled time carried by a bench `cid` (`c<seq>-<ns>`).
fn cid_ns(cid: &str) -> Option<u64> {
    cid.rsplit_once('-')?.1.parse().ok()
}

async fn read(mut rx: WsRx, sh: Arc<Shared>) {
    while let Ok(Some(f)) = rx.next().await {
        let from = sh.from_ns.load(Relaxed);
        match f.ty.as_str() {
            "ack" => {
                let Some(ns) = f.cid.as_deref().and_then(cid_ns) else { continue };
                sh.acked_all.fetch_add(1, Relaxed);
                if ns >= from {
                    sh.ack.record_us(us_since(ns));
                    sh.acked.fetch_add(1, Relaxed);
                    sh.last_ack.fetch_max(now_ns(), Relaxed);
                }
            }
            "msg" if f.cid.is_none() => {
                let Some(ns) = f.body.as_deref().and_then(pace::parse_body) else { continue };
                sh.delivered_all.fetch_add(1, Relaxed);
                if ns >= from {
                    sh.delivery.record_us(us_since(ns));
                    sh.delivered.fetch_add(1, Relaxed);
                    let now = now_ns();
                    sh.last_delivery.fetch_max(now, Relaxed);
                    sh.first_delivery.fetch_min(now, Relaxed);
                }
            }
            "error" => {
                sh.errors_all.fetch_add(1, Relaxed);
                if from != u64::MAX && f.cid.as_deref().and_then(cid_ns).is_none_or(|ns| ns >= from) {
                    sh.errors.fetch_add(1, Relaxed);
                }
                let mut first = sh.first_error.lock().unwrap_or_else(|p| p.into_inner());
                first.get_or_insert_with(|| {
                    format!("{}: {}", f.code.unwrap_or_default(), f.message.unwrap_or_default())
                });
            }
            _ => {}
        }
    }
}

async fn write(mut tx: WsTx, to: Value, mut ticks: mpsc::UnboundedReceiver<Tick>, size: usize) {
    while let Some(t) = ticks.recv().await {
        let cid = format!("c{}-{}", t.seq, t.at_ns);
        if tx.send_msg(&cid, &to, &pace::body(t.at_ns, size)).await.is_err() {
            break;
        }
    }
    // Keep the connection open until the run is torn down.
    std::future::pending::<()>().await;
}

/// Waits until `done()` or `limit` passes.
async fn settle(limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs warm-up then the measured traffic over `peers`.
pub async fn run(peers: Vec<Peer>, cfg: &TrafficCfg) -> Result<Traffic> {
    let sh = Arc::new(Shared {
        from_ns: AtomicU64::new(u64::MAX),
        first_delivery: AtomicU64::new(u64::MAX),
        ..Default::default()
    });
    let mut tasks = Vec::new();
    let mut senders = Vec::new();
    for p in peers {
        tasks.push(tokio::spawn(read(p.rx, sh.clone())));
        if let Some(to) = p.to {
            let (tx, rx) = mpsc::unbounded_channel();
            senders.push(tx);
            tasks.push(tokio::spawn(write(p.tx, to, rx, cfg.size)));
        } else {
            tasks.push(tokio::spawn(async move {
                let _tx = p.tx;
                std::future::pending::<()>().await
            }));
        }
    }
    anyhow::ensure!(!senders.is_empty(), "no senders");
    let dps = cfg.deliveries_per_send;
    let mut seq = 0;
    if !cfg.warmup.is_zero() {
        let n = pace::join(pace::pace(cfg.rate, cfg.warmup, seq, senders.clone())).await.ticks;
        seq += n;
        settle(cfg.drain, || {
            let acked = sh.acked_all.load(Relaxed);
            acked + sh.errors_all.load(Relaxed) >= n && sh.delivered_all.load(Relaxed) >= acked * dps
        })
        .await;
    }
    sh.from_ns.store(now_ns(), Relaxed);
    let meter = crate::procfs::CpuMeter::start(&cfg.procs);
    let tap = match &cfg.tap {
        Some(url) => Some(crate::tap::Tap::start(url).await?),
        None => None,
    };
    let paced = pace::join(pace::pace(cfg.rate, cfg.duration, seq, senders)).await;
    let (scheduled, start_ns) = (paced.ticks, paced.start_ns);
    settle(cfg.drain, || {
        let acked = sh.acked.load(Relaxed);
        acked + sh.errors.load(Relaxed) >= scheduled && sh.delivered.load(Relaxed) >= acked * dps
    })
    .await;
    let cpu = meter.read();
    let nats_msgs = tap.map(crate::tap::Tap::finish).unwrap_or_default();
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    let sh = Arc::try_unwrap(sh).map_err(|_| anyhow::anyhow!("traffic tasks still hold the counters"))?;
    let span = |last: u64| if last > start_ns { (last - start_ns) as f64 / 1e9 } else { 0.0 };
    Ok(Traffic {
        scheduled,
        acked: sh.acked.load(Relaxed),
        delivered: sh.delivered.load(Relaxed),
        errors: sh.errors.load(Relaxed),
        ack_span_s: span(sh.last_ack.load(Relaxed)),
        delivery_span_s: span(sh.last_delivery.load(Relaxed)),
        delivery_window_s: match (sh.first_delivery.load(Relaxed), sh.last_delivery.load(Relaxed)) {
            (first, last) if first < last && cfg.rate > 0.0 => (last - first) as f64 / 1e9 + 1.0 / cfg.rate,
            _ => 0.0,
        },
        first_error: sh.first_error.into_inner().unwrap_or_else(|p| p.into_inner()),
        ack: sh.ack,
        delivery: sh.delivery,
        lateness: paced.lateness,
        cpu,
        nats_msgs,
    })
}

/// The stack's processes by role for CPU readings: nats-server, gateways,
/// the others the target knows of, and this load generator.
pub fn stack_procs(t: &crate::Target) -> Vec<(String, u32)> {
    let mut procs: Vec<(String, u32)> = t.nats_pid.map(|p| ("nats-server".to_owned(), p)).into_iter().collect();
    procs.extend(t.gateway_pids.iter().map(|&p| ("gateway".to_owned(), p)));
    procs.extend(t.other_pids.iter().cloned());
    let me = std::process::id();
    if !t.gateway_pids.contains(&me) {
        procs.push(("load generator".to_owned(), me));
    }
    procs
}

/// Reports the CPU of a run: per role, % of one core over the run and µs
/// per `unit` (acked sends or deliveries), and the stack's total without
/// the load generator.
pub fn report_cpu(r: &mut crate::Report, cpu: &(f64, Vec<(String, f64)>), count: u64, unit: &str) {
    let (wall, roles) = cpu;
    if *wall <= 0.0 || count == 0 || roles.is_empty() {
        return;
    }
    let mut stack = 0.0;
    for (role, secs) in roles {
        let key = role.replace(' ', "_");
        r.metric(&format!("cpu_pct_{key}"), 100.0 * secs / wall);
        r.metric(&format!("cpu_us_per_{unit}_{key}"), 1e6 * secs / count as f64);
        if role != "load generator" {
            stack += secs;
        }
    }
    r.metric("cpu_pct_stack", 100.0 * stack / wall);
    r.metric(&format!("cpu_us_per_{unit}_stack"), 1e6 * stack / count as f64);
}

/// Reports tapped nats-server messages per `unit` (acked sends or
/// deliveries), by kind and in all.
pub fn report_tap(r: &mut crate::Report, msgs: &[(String, u64)], count: u64, unit: &str) {
    if msgs.is_empty() || count == 0 {
        return;
    }
    let per = |n: u64| (n as f64 / count as f64 * 100.0).round() / 100.0;
    let (commits, msgs): (Vec<_>, Vec<_>) = msgs.iter().partition(|(k, _)| k.starts_with(crate::tap::COMMIT));
    r.metric(&format!("nats_msgs_per_{unit}"), per(msgs.iter().map(|(_, n)| n).sum()));
    for (kind, n) in msgs.iter().filter(|(_, n)| per(*n) >= 0.01) {
        r.metric(&format!("nats_msgs_per_{unit} {kind}"), per(*n));
    }
    // Atomic batch commits: each has a fixed cost in the server.
    let per3 = |n: u64| (n as f64 / count as f64 * 1000.0).round() / 1000.0;
    r.metric(&format!("atomic_batch_commits_per_{unit}"), per3(commits.iter().map(|(_, n)| n).sum()));
    for (kind, n) in commits.iter().filter(|(_, n)| per3(*n) >= 0.001) {
        r.metric(&format!("atomic_batch_commits_per_{unit} {}", &kind[crate::tap::COMMIT.len()..]), per3(*n));
    }
}

/// `n / secs`, or 0.
pub fn per_s(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn batch_commits_are_reported_apart_and_not_counted_as_messages() {
        let mut r = crate::Report::new("latency", serde_json::json!({}));
        let counts = vec![
            ("chat.hist".to_owned(), 200),
            ("chat.inbox".to_owned(), 400),
            (format!("{}chat.hist", crate::tap::COMMIT), 5),
            (format!("{}chat.inbox", crate::tap::COMMIT), 10),
        ];
        super::report_tap(&mut r, &counts, 100, "send");
        assert_eq!(r.metrics["nats_msgs_per_send"], 6.0);
        assert_eq!(r.metrics["nats_msgs_per_send chat.inbox"], 4.0);
        assert_eq!(r.metrics["atomic_batch_commits_per_send"], 0.15);
        assert_eq!(r.metrics["atomic_batch_commits_per_send chat.hist"], 0.05);
        assert!(!r.metrics.keys().any(|k| k.contains("commit chat")), "{:?}", r.metrics.keys());
    }
}
