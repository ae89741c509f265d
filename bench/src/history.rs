//! `history`: a 1:1 conversation with M stored messages; pages of 50 older
//! messages (`before=<random id>`) through the HTTP API. Baseline: a raw
//! ordered JetStream consumer reading 50 messages of the conversation's
//! subject from a random start sequence.
//!
//! Going through the gateway for a million sends would take hours at
//! fsync-per-ack rates, so the conversation is written straight to the
//! history stream and the `chat_hindex` KV bucket in exactly the format
//! the sequencer writes (`chat_workers::sequencer`): a [`StoredMessage`]
//! on `chat.hist.<conv>` per message and, for every message with
//! `n % 64 == 1`, the index entry `<conv>.<(n-1)/64>` = `"<seq> <id>"`,
//! with asynchronous publishes.

use std::future::IntoFuture;
use std::time::{Duration, Instant};

use anyhow::{anyhow, ensure, Context, Result};
use async_nats::jetstream;
use bytes::Bytes;
use chat_nats::envelope::{MessageKind, StoredMessage};
use chat_nats::history::INDEX_BLOCK;
use chat_nats::subjects::{self, ConvId};
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::StreamExt;
use serde_json::json;

use crate::baseline;
use crate::client::{run_prefix, signup_users, token};
use crate::pace::Rng;
use crate::report::{Lat, Report};
use crate::Target;

/// Parameters.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Messages in the conversation.
    pub messages: u64,
    /// Pages requested (one after another).
    pub queries: usize,
    /// Messages per page.
    pub limit: u64,
    /// Body size in bytes.
    pub size: usize,
    /// Publishes in flight while building the conversation.
    pub window: usize,
    /// Run the raw-NATS baseline.
    pub baselines: bool,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg { messages: 1_000_000, queries: 500, limit: 50, size: 100, window: 1024, baselines: true }
    }
}

/// Ids of the built conversation: `BASE_ID + n`.
const BASE_ID: u64 = 1 << 50;

/// What [`build`] made.
#[derive(Debug, Clone, Copy)]
pub struct Built {
    /// History stream sequence of message 1.
    pub first_seq: u64,
    /// History stream sequence of the last message.
    pub last_seq: u64,
    /// Time taken.
    pub took: Duration,
}

/// Writes `m` messages from `from` into `conv`'s history and index.
pub async fn build(nats_url: &str, conv: &ConvId, from: i64, m: u64, size: usize, window: usize) -> Result<Built> {
    let js = jetstream::new(chat_tests::nats_admin(nats_url).await?);
    let subject = subjects::history(conv);
    let body = "h".repeat(size.max(1));
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let t0 = Instant::now();
    let mut acks = FuturesOrdered::new();
    let mut index = FuturesUnordered::new();
    let (mut first_seq, mut last_seq) = (0, 0);
    let mut n = 1;
    while n <= m || !acks.is_empty() {
        if n <= m && acks.len() < window.max(1) {
            let msg = StoredMessage {
                id: BASE_ID + n,
                conv: conv.to_string(),
                from,
                device: "bench".into(),
                cid: format!("h{n}"),
                kind: MessageKind::Text,
                body: body.clone(),
                ts,
                n,
                ..Default::default()
            };
            let ack = js.publish(subject.clone(), Bytes::from(serde_json::to_vec(&msg)?)).await?;
            acks.push_back(async move { (n, ack.await) });
            n += 1;
            continue;
        }
        let (k, ack) = acks.next().await.context("ack stream ended")?;
        let seq = ack.map_err(|e| anyhow!("history publish {k}: {e}"))?.sequence;
        if k == 1 {
            first_seq = seq;
        }
        last_seq = seq;
        if k % INDEX_BLOCK == 1 {
            let key = subjects::hindex_key(conv, (k - 1) / INDEX_BLOCK);
            let entry = Bytes::from(format!("{seq} {}", BASE_ID + k));
            index.push(js.publish(format!("$KV.{}.{key}", subjects::HINDEX_BUCKET), entry).await?.into_future());
            while index.len() > 256 {
                index.next().await.context("index acks")?.map_err(|e| anyhow!("index put: {e}"))?;
            }
        }
    }
    while let Some(a) = index.next().await {
        a.map_err(|e| anyhow!("index put: {e}"))?;
    }
    Ok(Built { first_seq, last_seq, took: t0.elapsed() })
}

/// Runs the scenario.
pub async fn run(t: &Target, cfg: &Cfg) -> Result<Report> {
    let mut r = Report::new(
        "history",
        json!({"messages": cfg.messages, "queries": cfg.queries, "limit": cfg.limit, "size": cfg.size}),
    );
    ensure!(cfg.messages > cfg.limit, "need more messages than a page");
    let users = signup_users(t, &run_prefix("history"), 2, 2).await?;
    let (a, b): (i64, i64) = (users[0].id.parse()?, users[1].id.parse()?);
    let conv = ConvId::direct(a, b);
    let built = build(&t.nats_url, &conv, a, cfg.messages, cfg.size, cfg.window).await?;
    r.metric("build_s", built.took.as_secs_f64());
    r.metric("build_rate_per_s", cfg.messages as f64 / built.took.as_secs_f64());

    let tok = token(t, &users[0], "d0").await?;
    let http = chat_client::Http::new(t.gateway(0));
    let latest = http.history(&tok, conv.as_str(), &format!("limit={}", cfg.limit)).await?;
    let last_id = latest["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["id"].as_str()).unwrap_or("");
    ensure!(last_id == (BASE_ID + cfg.messages).to_string(), "latest page ends at {last_id:?}");

    let mut rng = Rng::from_clock();
    let lat = Lat::default();
    let (mut ok, mut bad) = (0u64, 0u64);
    let t0 = Instant::now();
    for _ in 0..cfg.queries {
        let n = rng.range(cfg.limit + 1, cfg.messages);
        let q = format!("limit={}&before={}", cfg.limit, BASE_ID + n);
        let s = Instant::now();
        let page = http.history(&tok, conv.as_str(), &q).await?;
        lat.record(s.elapsed());
        let ids: Vec<&str> = page["messages"]
            .as_array()
            .map(|m| m.iter().filter_map(|m| m["id"].as_str()).collect())
            .unwrap_or_default();
        let want_first = (BASE_ID + n - cfg.limit).to_string();
        let want_last = (BASE_ID + n - 1).to_string();
        if ids.len() as u64 == cfg.limit
            && ids.first() == Some(&want_first.as_str())
            && ids.last() == Some(&want_last.as_str())
        {
            ok += 1;
        } else {
            bad += 1;
        }
    }
    r.metric("pages_ok", ok as f64);
    r.metric("pages_wrong", bad as f64);
    let ours = lat.row("ours page before=<random>", Some(cfg.queries as f64 / t0.elapsed().as_secs_f64()));
    let target = if ours.p99_ms <= 10.0 { "met" } else { "missed" };
    r.note(format!("target history page p99 ≤ 10 ms at 1,000,000 messages: {target} ({:.2} ms)", ours.p99_ms));
    r.note("each page request opens a new HTTP/1.1 connection (chat_client::Http), as the figure includes".to_string());
    r.latencies.push(ours.clone());

    if cfg.baselines {
        let res: Result<()> = async {
            let js = jetstream::new(chat_tests::nats_admin(&t.nats_url).await?);
            let stream = js.get_stream(subjects::HISTORY_STREAM).await.map_err(|e| anyhow!("history stream: {e}"))?;
            let subject = subjects::history(&conv);
            let blat = Lat::default();
            let t0 = Instant::now();
            for _ in 0..cfg.queries {
                let start = rng.range(built.first_seq, built.last_seq + 1 - cfg.limit);
                let (took, got) = baseline::ordered_read(&stream, &subject, start, cfg.limit as usize).await?;
                ensure!(got as u64 == cfg.limit, "baseline read {got}");
                blat.record(took);
            }
            let base = blat.row(
                "JetStream ordered consumer, 50 from random seq",
                Some(cfg.queries as f64 / t0.elapsed().as_secs_f64()),
            );
            r.ratio("page p50 / ordered consumer p50", ours.p50_ms, base.p50_ms);
            r.ratio("page p99 / ordered consumer p99", ours.p99_ms, base.p99_ms);
            r.latencies.push(base);
            Ok(())
        }
        .await;
        if let Err(e) = res {
            r.note(format!("baselines failed: {e:#}"));
        }
    }
    Ok(r)
}
