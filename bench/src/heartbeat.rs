//! `heartbeat`: N connections sending `ping` frames (the presence
//! heartbeat) at a total rate that steps up until the gateway saturates.
//!
//! Each step paces `rate` pings per second round-robin over the
//! connections (so each connection pings every `N / rate` seconds) and
//! measures, for one gateway: pongs received per second, ping→pong latency
//! from the scheduled time (coordinated-omission safe; a connection's pongs
//! come back in the order of its pings), the writes that actually reach the
//! `chat_presence` KV bucket (the last sequence of its stream before and
//! after; the gateway writes a connection's key at most once a second
//! whatever it sends), and the CPU of the gateway and nats-server.
//!
//! Baseline at the same rate: raw KV puts from one NATS client to N keys
//! of a bucket configured like `chat_presence` (file storage, history 1),
//! published asynchronously (each put's ack awaited on its own), timed
//! from the scheduled time; and the bucket's ceiling (puts as fast as
//! possible, 256 in flight).

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, kv, stream};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::json;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

use crate::client::{run_prefix, signup_users, token, Dialer, Transport, WsRx, WsTx};
use crate::pace::{self, now_ns, us_since, Rng, Tick};
use crate::procfs;
use crate::report::{Lat, Report};
use crate::traffic::per_s;
use crate::Target;

/// The stream behind the presence bucket.
const PRESENCE_STREAM: &str = "KV_chat_presence";

/// Parameters.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Connections (all to gateway 0).
    pub conns: usize,
    /// Accounts the connections belong to (as devices).
    pub users: usize,
    /// Total heartbeat rates to step through, per second over all
    /// connections; empty: one step at `conns / interval`.
    pub rates: Vec<f64>,
    /// Per-connection heartbeat interval when `rates` is empty.
    pub interval: Duration,
    /// Measured time per step.
    pub duration: Duration,
    /// Unmeasured warm-up per step.
    pub warmup: Duration,
    /// How long to wait for the last pongs of a step.
    pub drain: Duration,
    /// Connections being set up at once.
    pub concurrency: usize,
    /// The session transport.
    pub transport: Transport,
    /// Run the raw KV baselines.
    pub baselines: bool,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            conns: 5000,
            users: 100,
            rates: vec![],
            interval: Duration::from_secs(1),
            duration: Duration::from_secs(10),
            warmup: Duration::from_secs(2),
            drain: Duration::from_secs(15),
            concurrency: 64,
            transport: Transport::Ws,
            baselines: true,
        }
    }
}

/// One step's counters.
#[derive(Default)]
struct Step {
    from_ns: AtomicU64,
    lat: Lat,
    pongs: AtomicU64,
    last_ns: AtomicU64,
}

#[derive(Default)]
struct Shared {
    step: RwLock<Arc<Step>>,
    pongs_all: AtomicU64,
    errors: AtomicU64,
    closed: AtomicU64,
    first_error: std::sync::Mutex<Option<String>>,
}

impl Shared {
    fn step(&self) -> Arc<Step> {
        self.step.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

async fn read(mut rx: WsRx, mut sent: mpsc::UnboundedReceiver<u64>, sh: Arc<Shared>) {
    loop {
        match rx.next().await {
            Ok(Some(f)) => match f.ty.as_str() {
                "pong" => {
                    let Ok(ns) = sent.try_recv() else { continue };
                    sh.pongs_all.fetch_add(1, Relaxed);
                    let st = sh.step();
                    if ns >= st.from_ns.load(Relaxed) {
                        st.lat.record_us(us_since(ns));
                        st.pongs.fetch_add(1, Relaxed);
                        st.last_ns.fetch_max(now_ns(), Relaxed);
                    }
                }
                "error" => {
                    sh.errors.fetch_add(1, Relaxed);
                    let mut first = sh.first_error.lock().unwrap_or_else(|p| p.into_inner());
                    first.get_or_insert_with(|| {
                        format!("{}: {}", f.code.unwrap_or_default(), f.message.unwrap_or_default())
                    });
                }
                _ => {}
            },
            _ => {
                sh.closed.fetch_add(1, Relaxed);
                return;
            }
        }
    }
}

async fn write(mut tx: WsTx, mut ticks: mpsc::UnboundedReceiver<Tick>, sent: mpsc::UnboundedSender<u64>) {
    let ping = json!({"type": "ping"});
    while let Some(t) = ticks.recv().await {
        let _ = sent.send(t.at_ns);
        if tx.send(&ping).await.is_err() {
            break;
        }
    }
}

/// The presence stream's last sequence (every put, delete and expiry
/// marker takes one).
async fn last_seq(js: &jetstream::Context, name: &str) -> Result<u64> {
    let mut s = js.get_stream(name).await.map_err(|e| anyhow!("stream {name}: {e}"))?;
    Ok(s.info().await.map_err(|e| anyhow!("stream {name} info: {e}"))?.state.last_sequence)
}

async fn settle(limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// CPU seconds of each pid.
fn cpu_now(pids: &[u32]) -> Vec<Option<f64>> {
    pids.iter().map(|p| procfs::cpu_secs(*p)).collect()
}

fn cpu_pct(before: &[Option<f64>], after: &[Option<f64>], wall: f64) -> Vec<f64> {
    before
        .iter()
        .zip(after)
        .map(|(b, a)| match (b, a) {
            (Some(b), Some(a)) if wall > 0.0 => (a - b) / wall * 100.0,
            _ => f64::NAN,
        })
        .collect()
}

/// Aborts the tasks on drop.
struct Tasks(Vec<JoinHandle<()>>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Runs the scenario.
pub async fn run(t: &Target, cfg: &Cfg) -> Result<Report> {
    let n = cfg.conns.max(1);
    let rates: Vec<f64> =
        if cfg.rates.is_empty() { vec![n as f64 / cfg.interval.as_secs_f64().max(1e-3)] } else { cfg.rates.clone() };
    let mut r = Report::new(
        &cfg.transport.scenario("heartbeat"),
        json!({"conns": n, "users": cfg.users, "rates": rates, "duration_s": cfg.duration.as_secs_f64(),
               "warmup_s": cfg.warmup.as_secs_f64(), "transport": cfg.transport.name(), "gateways": 1}),
    );
    let dialer = Dialer::new(t, cfg.transport, n.div_ceil(1000))?;
    let users = signup_users(t, &run_prefix("heartbeat"), cfg.users.clamp(1, n), 4).await?;
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        tokens.push(token(t, &users[i % users.len()], &format!("h{i}")).await?);
    }

    // Connect everything (no sync: only the session and its presence task).
    let t0 = Instant::now();
    let sem = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut opening = Vec::with_capacity(n);
    for tok in tokens {
        let (dialer, sem) = (dialer.clone(), sem.clone());
        opening.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            dialer.connect_retry(0, &tok, 8).await
        }));
    }
    let sh = Arc::new(Shared::default());
    let mut tasks = Tasks(vec![]);
    let mut senders = Vec::with_capacity(n);
    let mut failed = 0usize;
    for o in opening {
        match o.await? {
            Ok((tx, rx, _)) => {
                let (ticks_tx, ticks_rx) = mpsc::unbounded_channel();
                let (sent_tx, sent_rx) = mpsc::unbounded_channel();
                tasks.0.push(tokio::spawn(read(rx, sent_rx, sh.clone())));
                tasks.0.push(tokio::spawn(write(tx, ticks_rx, sent_tx)));
                senders.push(ticks_tx);
            }
            Err(e) => {
                failed += 1;
                if failed == 1 {
                    r.note(format!("first connection failure: {e:#}"));
                }
            }
        }
    }
    r.metric("connect_s", t0.elapsed().as_secs_f64());
    r.metric("connected", senders.len() as f64);
    r.metric("failed", failed as f64);
    anyhow::ensure!(!senders.is_empty(), "no connection came up");
    let conns = senders.len() as f64;

    let nc = chat_tests::nats_admin(&t.nats_url).await?;
    let js = jetstream::new(nc);
    let gw_pid = t.gateway_pids.first().copied();
    // The gateway, this process (the clients), nats-server.
    let me = std::process::id();
    let pids: Vec<u32> = gw_pid.into_iter().chain([me]).chain(t.nats_pid).collect();
    let mut seq = 0u64;
    let mut kv_total = 0u64;
    let mut saturated_at = None;
    for (k, &rate) in rates.iter().enumerate() {
        let key = |m: &str| format!("step{}_{m}", k + 1);
        let step = Arc::new(Step { from_ns: AtomicU64::new(u64::MAX), ..Default::default() });
        *sh.step.write().unwrap_or_else(|p| p.into_inner()) = step.clone();
        if !cfg.warmup.is_zero() {
            seq += pace::join(pace::pace(rate, cfg.warmup, seq, senders.clone())).await.ticks;
            settle(cfg.drain, || sh.pongs_all.load(Relaxed) >= seq).await;
        }
        let seq0 = last_seq(&js, PRESENCE_STREAM).await?;
        let cpu0 = cpu_now(&pids);
        let drops0 = procfs::udp_rcvbuf_errors();
        let w0 = Instant::now();
        step.from_ns.store(now_ns(), Relaxed);
        let paced = pace::join(pace::pace(rate, cfg.duration, seq, senders.clone())).await;
        seq += paced.ticks;
        settle(cfg.drain, || step.pongs.load(Relaxed) >= paced.ticks || sh.closed.load(Relaxed) > 0).await;
        let wall = w0.elapsed().as_secs_f64();
        let cpu = cpu_pct(&cpu0, &cpu_now(&pids), wall);
        let puts = last_seq(&js, PRESENCE_STREAM).await?.saturating_sub(seq0);
        kv_total += puts;
        let pongs = step.pongs.load(Relaxed);
        let last = step.last_ns.load(Relaxed);
        let span = if last > paced.start_ns { (last - paced.start_ns) as f64 / 1e9 } else { 0.0 };
        let pong_rate = per_s(pongs, span);
        let kv_rate = puts as f64 / wall;
        // The gateway writes a connection's key at most once a second.
        let kv_expected = rate.min(conns);
        if let (Some(a), Some(b)) = (drops0, procfs::udp_rcvbuf_errors()) {
            // QUIC: datagrams lost to a full socket buffer (client or gateway).
            r.metric(&key("udp_rcvbuf_drops"), b.saturating_sub(a) as f64);
        }
        r.metric(&key("offered_per_s"), rate);
        r.metric(&key("per_conn_interval_s"), conns / rate);
        r.metric(&key("scheduled"), paced.ticks as f64);
        r.metric(&key("pongs"), pongs as f64);
        r.metric(&key("pongs_per_s"), pong_rate);
        r.metric(&key("kv_puts"), puts as f64);
        r.metric(&key("kv_puts_per_s"), kv_rate);
        r.metric(&key("kv_puts_expected_per_s"), kv_expected);
        if let Some(c) = gw_pid.map(|_| cpu[0]) {
            r.metric(&key("gw_cpu_pct"), c);
        }
        if gw_pid != Some(me) {
            r.metric(&key("client_cpu_pct"), cpu[usize::from(gw_pid.is_some())]);
        }
        if t.nats_pid.is_some() {
            r.metric(&key("nats_cpu_pct"), cpu[cpu.len() - 1]);
        }
        let ours = step.lat.row(&format!("ours ping→pong @ {rate:.0}/s"), Some(pong_rate));
        r.latencies.push(ours.clone());
        r.latencies.push(paced.lateness.row(&format!("pacer lateness @ {rate:.0}/s"), None));
        if cfg.baselines {
            match kv_paced(&js, n, rate, cfg).await {
                Ok((lat, acked, span)) => {
                    let base_rate = per_s(acked, span);
                    r.metric(&key("baseline_kv_acked"), acked as f64);
                    r.metric(&key("baseline_kv_puts_per_s"), base_rate);
                    let row = lat.row(&format!("raw KV put→ack @ {rate:.0}/s"), Some(base_rate));
                    r.ratio(&format!("heartbeats/s accepted / raw KV puts/s @ {rate:.0}/s"), pong_rate, base_rate);
                    r.ratio(&format!("presence KV writes/s / raw KV puts/s @ {rate:.0}/s"), kv_rate, base_rate);
                    r.ratio(&format!("ping→pong p50 / KV put→ack p50 @ {rate:.0}/s"), ours.p50_ms, row.p50_ms);
                    r.ratio(&format!("ping→pong p99 / KV put→ack p99 @ {rate:.0}/s"), ours.p99_ms, row.p99_ms);
                    r.latencies.push(row);
                }
                Err(e) => r.note(format!("baseline at {rate:.0}/s failed: {e:#}")),
            }
        }
        if ours.p99_ms > 1000.0 {
            r.note(format!("at {rate:.0}/s ping→pong p99 is over 1 s: pongs queue"));
        }
        if pong_rate < 0.9 * rate || sh.closed.load(Relaxed) > 0 {
            saturated_at = Some(rate);
            break;
        }
    }
    r.metric("kv_puts_total", kv_total as f64);
    r.metric("errors", sh.errors.load(Relaxed) as f64);
    r.metric("closed", sh.closed.load(Relaxed) as f64);
    if let Some(e) = sh.first_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
        r.note(format!("first error frame: {e}"));
    }
    match saturated_at {
        Some(rate) => r.note(format!("saturated at {rate:.0} heartbeats/s offered (pongs < 90 % of it); ramp stopped")),
        None => r.note("not saturated at the highest rate offered"),
    }
    r.note("the gateway answers every ping with a pong at once and writes the connection's presence key at most once a second (coalesced), without making the pong wait for it");
    if cfg.baselines {
        match kv_put_max(&js, n, 20_000).await {
            Ok(max) => {
                r.metric("baseline_kv_put_max_per_s", max);
                r.note(format!(
                    "a KV bucket like chat_presence stores at most ~{max:.0} puts/s on this server (async puts, 256 in flight)"
                ));
            }
            Err(e) => r.note(format!("KV ceiling failed: {e:#}")),
        }
    }
    Ok(r)
}

/// A bucket configured like `chat_presence`, unique to this run.
async fn scratch_bucket(js: &jetstream::Context) -> Result<(String, kv::Store)> {
    let name = format!("bench_hb_{}", Rng::from_clock().next_u64() % 1_000_000_000);
    let store = js
        .create_key_value(kv::Config {
            bucket: name.clone(),
            history: 1,
            max_age: Duration::from_secs(30),
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("create baseline bucket: {e}"))?;
    Ok((name, store))
}

/// Raw KV puts to `keys` keys at `rate` for the configured warm-up and
/// duration; returns put→ack latency from the scheduled times, acks in the
/// measured part, and the span from its start to the last ack.
async fn kv_paced(js: &jetstream::Context, keys: usize, rate: f64, cfg: &Cfg) -> Result<(Arc<Lat>, u64, f64)> {
    let (name, _store) = scratch_bucket(js).await?;
    let lat = Arc::new(Lat::default());
    let from = Arc::new(AtomicU64::new(u64::MAX));
    let (acked_all, acked, last) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut senders = vec![];
    let mut tasks = Tasks(vec![]);
    for _ in 0..8 {
        let (tx, mut rx) = mpsc::unbounded_channel::<Tick>();
        senders.push(tx);
        let (js, name, lat, from) = (js.clone(), name.clone(), lat.clone(), from.clone());
        let (acked_all, acked, last) = (acked_all.clone(), acked.clone(), last.clone());
        tasks.0.push(tokio::spawn(async move {
            while let Some(t) = rx.recv().await {
                let subject = format!("$KV.{name}.k{}", t.seq % keys as u64);
                let Ok(ack) = js.publish(subject, Bytes::new()).await else { break };
                let (lat, from, acked_all, acked, last) =
                    (lat.clone(), from.clone(), acked_all.clone(), acked.clone(), last.clone());
                tokio::spawn(async move {
                    if ack.await.is_ok() {
                        acked_all.fetch_add(1, Relaxed);
                        if t.at_ns >= from.load(Relaxed) {
                            lat.record_us(us_since(t.at_ns));
                            acked.fetch_add(1, Relaxed);
                            last.fetch_max(now_ns(), Relaxed);
                        }
                    }
                });
            }
        }));
    }
    let mut seq = 0;
    if !cfg.warmup.is_zero() {
        seq = pace::join(pace::pace(rate, cfg.warmup, 0, senders.clone())).await.ticks;
        settle(cfg.drain, || acked_all.load(Relaxed) >= seq).await;
    }
    from.store(now_ns(), Relaxed);
    let paced = pace::join(pace::pace(rate, cfg.duration, seq, senders)).await;
    settle(cfg.drain, || acked.load(Relaxed) >= paced.ticks).await;
    drop(tasks);
    let _ = js.delete_key_value(&name).await;
    let l = last.load(Relaxed);
    let span = if l > paced.start_ns { (l - paced.start_ns) as f64 / 1e9 } else { 0.0 };
    Ok((lat, acked.load(Relaxed), span))
}

/// Raw KV puts as fast as possible (256 in flight) to `keys` keys; puts
/// stored per second.
async fn kv_put_max(js: &jetstream::Context, keys: usize, puts: u64) -> Result<f64> {
    let (name, _store) = scratch_bucket(js).await?;
    let mut inflight: FuturesUnordered<<jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture> =
        FuturesUnordered::new();
    let t0 = Instant::now();
    for i in 0..puts {
        if inflight.len() >= 256 {
            inflight.next().await.context("ack")?.map_err(|e| anyhow!("put ack: {e}"))?;
        }
        let subject = format!("$KV.{name}.k{}", i % keys.max(1) as u64);
        inflight.push(js.publish(subject, Bytes::new()).await?.into_future());
    }
    while let Some(a) = inflight.next().await {
        a.map_err(|e| anyhow!("put ack: {e}"))?;
    }
    let rate = puts as f64 / t0.elapsed().as_secs_f64();
    let _ = js.delete_key_value(&name).await;
    Ok(rate)
}
