//! `fsync`: the physical floor of the write path and what atomic batches
//! buy over plain publishes, in one run on one nats-server.
//!
//! 1. This disk's raw fsync: one thread appends 200 bytes to a temp file
//!    and fsyncs it, again and again; rate and latency.
//! 2. Stored messages per second on one file stream (`sync_interval:
//!    always`): atomic batches of 1, 20, 100, 500 and 999 entries, one
//!    commit at a time (a single writer, as a sequencer is), against plain
//!    JetStream publishes with 256 acks in flight. Each mode runs for
//!    [`Cfg::duration`]; ratios are batch / plain.
//!
//! Needs nats-server 2.15.1 or newer (one fsync per batch); nothing but a
//! nats-server is started.

use std::future::IntoFuture;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use async_nats::jetstream::{self, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use chat_nats::batch::{AtomicBatch, BatchConfig};
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde_json::json;

use crate::report::{Lat, Report};
use crate::Target;

/// Parameters.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Raw write + fsync rounds.
    pub fsyncs: usize,
    /// Where the raw fsync file goes (same disk as the nats-server store:
    /// the harness puts that under the temp dir too).
    pub dir: PathBuf,
    /// Entries per atomic batch, one mode each.
    pub batch_sizes: Vec<usize>,
    /// Plain publishes in flight.
    pub window: usize,
    /// How long each publishing mode runs.
    pub duration: Duration,
    /// Payload size in bytes.
    pub size: usize,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            fsyncs: 1000,
            dir: std::env::temp_dir(),
            batch_sizes: vec![1, 20, 100, 500, 999],
            window: 256,
            duration: Duration::from_secs(3),
            size: 200,
        }
    }
}

const STREAM: &str = "BENCH_FSYNC";

/// Runs the scenario against `t.nats_url`.
pub async fn run(t: &Target, cfg: &Cfg) -> Result<Report> {
    let mut r = Report::new(
        "fsync",
        json!({"fsyncs": cfg.fsyncs, "batch_sizes": cfg.batch_sizes, "window": cfg.window,
               "duration_s": cfg.duration.as_secs_f64(), "size": cfg.size}),
    );
    let (fsync_lat, fsync_rate) = raw_fsync(cfg)?;
    let fsync_p50 = fsync_lat.row("", None).p50_ms;
    r.latencies.push(fsync_lat.row("raw write+fsync, one thread", Some(fsync_rate)));
    r.metric("raw_fsyncs_per_s", fsync_rate.round());

    let client = chat_tests::nats_admin(&t.nats_url).await?;
    chat_nats::provision::check_batch_server(&client)?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(STREAM).await;
    js.create_stream(stream::Config {
        name: STREAM.into(),
        subjects: vec![format!("{}.>", STREAM.to_lowercase())],
        storage: stream::StorageType::File,
        allow_atomic_publish: true,
        ..Default::default()
    })
    .await
    .context("create the bench stream")?;
    let payload = Bytes::from(vec![b'x'; cfg.size]);

    let plain = plain_publishes(&js, cfg, &payload).await?;
    r.metric(&format!("plain_{}_in_flight_msgs_per_s", cfg.window), plain.round());
    for &n in &cfg.batch_sizes {
        let (lat, rate) = batches(&client, cfg, n, &payload).await?;
        r.latencies.push(lat.row(&format!("commit of a batch of {n}"), Some(rate)));
        r.metric(&format!("batch_{n}_msgs_per_s"), rate.round());
        r.ratio(&format!("batch of {n} msgs/s vs plain {} in flight", cfg.window), rate, plain);
        if n == *cfg.batch_sizes.last().unwrap_or(&0) {
            r.ratio(&format!("batch of {n} commit p50 vs one raw fsync"), lat.row("", None).p50_ms, fsync_p50);
        }
    }
    js.delete_stream(STREAM).await.context("delete the bench stream")?;
    r.note("plain publishes fsync once per message, serially per stream; a batch commit fsyncs once (2.15.1)");
    Ok(r)
}

/// One thread: append `size` bytes, fsync, `fsyncs` times.
fn raw_fsync(cfg: &Cfg) -> Result<(Lat, f64)> {
    let path = cfg.dir.join(format!("chat-bench-fsync-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).with_context(|| format!("create {}", path.display()))?;
    let block = vec![b'x'; cfg.size];
    let lat = Lat::default();
    let started = Instant::now();
    for _ in 0..cfg.fsyncs {
        let t = Instant::now();
        f.write_all(&block)?;
        f.sync_all()?;
        lat.record(t.elapsed());
    }
    let rate = cfg.fsyncs as f64 / started.elapsed().as_secs_f64();
    drop(f);
    std::fs::remove_file(&path).with_context(|| format!("remove {}", path.display()))?;
    Ok((lat, rate))
}

/// Plain JetStream publishes, `window` acks in flight, for `duration`;
/// stored messages per second.
async fn plain_publishes(js: &jetstream::Context, cfg: &Cfg, payload: &Bytes) -> Result<f64> {
    let mut inflight = FuturesUnordered::new();
    let (mut sent, mut acked) = (0u64, 0u64);
    let started = Instant::now();
    while started.elapsed() < cfg.duration || !inflight.is_empty() {
        if started.elapsed() < cfg.duration && inflight.len() < cfg.window {
            let subject = format!("{}.plain.{}", STREAM.to_lowercase(), sent % 2);
            inflight.push(js.publish(subject, payload.clone()).await?.into_future());
            sent += 1;
            continue;
        }
        if let Some(ack) = inflight.next().await {
            ack.context("plain publish ack")?;
            acked += 1;
        }
    }
    Ok(acked as f64 / started.elapsed().as_secs_f64())
}

/// Atomic batches of `n`, one commit at a time, for `duration` (at least
/// 3 commits); commit latency and stored messages per second.
async fn batches(client: &async_nats::Client, cfg: &Cfg, n: usize, payload: &Bytes) -> Result<(Lat, f64)> {
    let mut batch = AtomicBatch::new(BatchConfig::default());
    for i in 0..n {
        batch.push(format!("{}.batch.{}", STREAM.to_lowercase(), i % 2), HeaderMap::new(), payload.clone())?;
    }
    let lat = Lat::default();
    let mut stored = 0u64;
    let started = Instant::now();
    while started.elapsed() < cfg.duration || lat.count() < 3 {
        let t = Instant::now();
        let c = batch.commit(client).await.with_context(|| format!("commit a batch of {n}"))?;
        lat.record(t.elapsed());
        ensure!(c.count == n as u64, "batch of {n} stored {}", c.count);
        stored += c.count;
    }
    Ok((lat, stored as f64 / started.elapsed().as_secs_f64()))
}
