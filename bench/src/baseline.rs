//! Raw-NATS baselines run next to each scenario on the same server: core
//! and JetStream publish→subscribe at the same rate and size, fan-out
//! ceilings, and ordered-consumer reads.
//!
//! Payloads start with the scheduled send time (8 bytes, little endian),
//! paced exactly like our traffic (see [`crate::pace`]).

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use async_nats::jetstream::{self, consumer::pull, consumer::DeliverPolicy, stream};
use bytes::Bytes;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio::sync::mpsc;

use crate::pace::{self, now_ns, us_since, Rng};
use crate::report::Lat;

/// A paced raw run.
#[derive(Debug, Clone)]
pub struct RawCfg {
    /// Subjects published to (one publisher task each, like our senders).
    pub subjects: usize,
    /// Subscriptions per subject (1 for 1:1, 100 for a group).
    pub subs_per_subject: usize,
    /// Publish through JetStream (a file stream with the server's sync
    /// setting) instead of core NATS.
    pub jetstream: bool,
    /// Messages per second over all subjects.
    pub rate: f64,
    /// Unmeasured warm-up.
    pub warmup: Duration,
    /// Measured run.
    pub duration: Duration,
    /// Payload size in bytes.
    pub size: usize,
    /// How long to wait for stragglers.
    pub drain: Duration,
}

/// What a paced raw run measured.
#[derive(Debug, Default)]
pub struct Raw {
    /// Publish→subscriber latency.
    pub delivery: Arc<Lat>,
    /// Publish→JetStream ack latency (JetStream only).
    pub ack: Arc<Lat>,
    /// Messages scheduled in the measured run.
    pub scheduled: u64,
    /// Deliveries counted in the measured run.
    pub delivered: u64,
    /// Seconds from the scheduled start to the last delivery.
    pub span_s: f64,
}

fn payload(at_ns: u64, size: usize) -> Bytes {
    let mut v = at_ns.to_le_bytes().to_vec();
    v.resize(size.max(8), b'x');
    Bytes::from(v)
}

fn payload_ns(p: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(p.get(..8)?.try_into().ok()?))
}

/// A subject prefix unique to this run.
fn prefix(kind: &str) -> String {
    format!("bench.{kind}.{}", Rng::from_clock().next_u64() % 1_000_000_000)
}

/// Publishes at a fixed rate and measures publish→subscriber (and, for
/// JetStream, publish→ack) from the scheduled times.
pub async fn paced(url: &str, cfg: &RawCfg) -> Result<Raw> {
    let publisher = chat_tests::nats_admin(url).await?;
    let n_sub_clients = cfg.subs_per_subject.clamp(1, 8);
    let mut sub_clients = Vec::new();
    for _ in 0..n_sub_clients {
        sub_clients.push(chat_tests::nats_admin(url).await?);
    }
    let pre = prefix(if cfg.jetstream { "js" } else { "core" });
    let js = jetstream::new(publisher.clone());
    let stream_name = pre.replace('.', "_").to_uppercase();
    if cfg.jetstream {
        js.create_stream(stream::Config {
            name: stream_name.clone(),
            subjects: vec![format!("{pre}.>")],
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("create baseline stream: {e}"))?;
    }
    let from = Arc::new(AtomicU64::new(u64::MAX));
    let delivered_all = Arc::new(AtomicU64::new(0));
    let delivered = Arc::new(AtomicU64::new(0));
    let last = Arc::new(AtomicU64::new(0));
    let mut out = Raw::default();
    let mut tasks = Vec::new();
    for s in 0..cfg.subjects {
        for k in 0..cfg.subs_per_subject {
            let mut sub =
                sub_clients[(s * cfg.subs_per_subject + k) % n_sub_clients].subscribe(format!("{pre}.{s}")).await?;
            let (from, all, n, last, lat) =
                (from.clone(), delivered_all.clone(), delivered.clone(), last.clone(), out.delivery.clone());
            tasks.push(tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let Some(ns) = payload_ns(&m.payload) else { continue };
                    all.fetch_add(1, Relaxed);
                    if ns >= from.load(Relaxed) {
                        lat.record_us(us_since(ns));
                        n.fetch_add(1, Relaxed);
                        last.fetch_max(now_ns(), Relaxed);
                    }
                }
            }));
        }
    }
    for c in &sub_clients {
        c.flush().await?;
    }
    let mut senders = Vec::new();
    for s in 0..cfg.subjects {
        let (tx, mut rx) = mpsc::unbounded_channel::<pace::Tick>();
        senders.push(tx);
        let (client, js, subject, size, acks, jet, from) = (
            publisher.clone(),
            js.clone(),
            format!("{pre}.{s}"),
            cfg.size,
            out.ack.clone(),
            cfg.jetstream,
            from.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while let Some(t) = rx.recv().await {
                let p = payload(t.at_ns, size);
                if jet {
                    let Ok(ack) = js.publish(subject.clone(), p).await else { break };
                    let (acks, from) = (acks.clone(), from.clone());
                    tokio::spawn(async move {
                        if ack.await.is_ok() && t.at_ns >= from.load(Relaxed) {
                            acks.record_us(us_since(t.at_ns));
                        }
                    });
                } else if client.publish(subject.clone(), p).await.is_err() {
                    break;
                }
            }
        }));
    }
    let fan = cfg.subs_per_subject as u64;
    let mut seq = 0;
    if !cfg.warmup.is_zero() {
        let n = pace::join(pace::pace(cfg.rate, cfg.warmup, seq, senders.clone())).await.ticks;
        seq += n;
        settle(cfg.drain, || delivered_all.load(Relaxed) >= n * fan).await;
    }
    from.store(now_ns(), Relaxed);
    let paced = pace::join(pace::pace(cfg.rate, cfg.duration, seq, senders)).await;
    let (scheduled, start_ns) = (paced.ticks, paced.start_ns);
    settle(cfg.drain, || delivered.load(Relaxed) >= scheduled * fan).await;
    if cfg.jetstream {
        settle(cfg.drain, || out.ack.count() >= scheduled).await;
    }
    for t in &tasks {
        t.abort();
    }
    if cfg.jetstream {
        let _ = js.delete_stream(&stream_name).await;
    }
    for t in tasks {
        let _ = t.await;
    }
    out.scheduled = scheduled;
    out.delivered = delivered.load(Relaxed);
    let l = last.load(Relaxed);
    out.span_s = if l > start_ns { (l - start_ns) as f64 / 1e9 } else { 0.0 };
    Ok(out)
}

async fn settle(limit: Duration, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Core NATS fan-out ceiling: `msgs` published as fast as possible to one
/// subject with `subs` subscriptions; returns deliveries per second.
pub async fn core_fanout_max(url: &str, subs: usize, msgs: u64, size: usize) -> Result<f64> {
    let publisher = chat_tests::nats_admin(url).await?;
    let pre = prefix("fanmax");
    let count = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    let mut tasks = Vec::new();
    for k in 0..subs {
        if k < 4 {
            clients.push(chat_tests::nats_admin(url).await?);
        }
        let mut sub = clients[k % clients.len()].subscribe(format!("{pre}.all")).await?;
        let count = count.clone();
        tasks.push(tokio::spawn(async move {
            while sub.next().await.is_some() {
                count.fetch_add(1, Relaxed);
            }
        }));
    }
    for c in &clients {
        c.flush().await?;
    }
    let p = payload(0, size);
    let t0 = Instant::now();
    for _ in 0..msgs {
        publisher.publish(format!("{pre}.all"), p.clone()).await?;
    }
    publisher.flush().await?;
    let want = msgs * subs as u64;
    settle(Duration::from_secs(30), || count.load(Relaxed) >= want).await;
    let secs = t0.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    Ok(count.load(Relaxed) as f64 / secs)
}

/// JetStream fan-out ceiling: `msgs` messages copied to `members` subjects
/// of a file stream (as the sequencer copies a group message into every
/// member's inbox), 256 publishes in flight; returns stored copies per
/// second.
pub async fn js_fanout_max(url: &str, members: usize, msgs: u64, size: usize) -> Result<f64> {
    let js = jetstream::new(chat_tests::nats_admin(url).await?);
    let pre = prefix("jsfan");
    let name = pre.replace('.', "_").to_uppercase();
    js.create_stream(stream::Config {
        name: name.clone(),
        subjects: vec![format!("{pre}.>")],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await
    .map_err(|e| anyhow!("create baseline stream: {e}"))?;
    let p = payload(0, size);
    let mut inflight: FuturesUnordered<<jetstream::context::PublishAckFuture as IntoFuture>::IntoFuture> =
        FuturesUnordered::new();
    let t0 = Instant::now();
    for _ in 0..msgs {
        for m in 0..members {
            if inflight.len() >= 256 {
                inflight.next().await.context("ack")?.map_err(|e| anyhow!("publish ack: {e}"))?;
            }
            inflight.push(js.publish(format!("{pre}.{m}"), p.clone()).await?.into_future());
        }
    }
    while let Some(a) = inflight.next().await {
        a.map_err(|e| anyhow!("publish ack: {e}"))?;
    }
    let rate = (msgs * members as u64) as f64 / t0.elapsed().as_secs_f64();
    let _ = js.delete_stream(&name).await;
    Ok(rate)
}

/// The inbox stream, over a NATS connection of the baseline's own.
pub async fn inbox_stream(url: &str) -> Result<stream::Stream> {
    let js = jetstream::new(chat_tests::nats_admin(url).await?);
    js.get_stream(chat_nats::subjects::INBOX_STREAM).await.map_err(|e| anyhow!("inbox stream: {e}"))
}

/// Reads `n` messages of `filter` from stream `s` with an ordered consumer
/// starting at `start_seq`; returns the time taken (consumer creation
/// included) and the messages read.
pub async fn ordered_read(s: &stream::Stream, filter: &str, start_seq: u64, n: usize) -> Result<(Duration, usize)> {
    let t0 = Instant::now();
    let consumer = s
        .create_consumer(pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start_seq.max(1) },
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow!("create ordered consumer: {e}"))?;
    let mut msgs = consumer.messages().await.map_err(|e| anyhow!("ordered consumer: {e}"))?;
    let mut got = 0;
    while got < n {
        match tokio::time::timeout(Duration::from_secs(10), msgs.next()).await {
            Ok(Some(Ok(_))) => got += 1,
            Ok(Some(Err(e))) => return Err(anyhow!("ordered read: {e}")),
            Ok(None) | Err(_) => break,
        }
    }
    Ok((t0.elapsed(), got))
}
