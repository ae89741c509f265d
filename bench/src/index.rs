//! `index`: does the search indexer keep up with the write path? P
//! senders pipeline N 1:1 text messages (Korean and English words, so the
//! gram index gets real grams) as fast as the stack acknowledges them,
//! while the indexer (`workers/src/search.rs`) applies the history stream
//! to PostgreSQL. Every 100 ms the bench reads the indexer's durable
//! consumer on `CHAT_HISTORY` (what `chat_search_index_lag_messages`
//! reports: pending plus unacknowledged). Reports the acked sends per
//! second, the messages indexed per second while the sends ran, the lag
//! when the last send was acknowledged and its maximum, and how fast the
//! indexer drained what was left once the sends stopped (its rate with the
//! write path idle). No raw-NATS baseline: the write path's own rate in the
//! same run is the figure to compare with.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use async_nats::jetstream::{self, consumer::pull};
use serde_json::json;

use crate::client::{run_prefix, signup_users, token};
use crate::Report;
use crate::Target;

/// Parameters.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Messages sent (and indexed).
    pub messages: usize,
    /// Sending users, each to its own partner (its own 1:1 conversation).
    pub senders: usize,
    /// Sends each sender keeps in flight.
    pub window: usize,
    /// Give up waiting for the indexer after this long once the sends end.
    pub drain: Duration,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg { messages: 30_000, senders: 200, window: 4, drain: Duration::from_secs(120) }
    }
}

const KO: [&str; 12] =
    ["오늘", "회의", "취소", "내일", "점심", "약속", "프로젝트", "일정", "보고서", "고맙습니다", "주말", "사진"];
const EN: [&str; 12] = [
    "meeting",
    "cancelled",
    "tomorrow",
    "lunch",
    "project",
    "report",
    "deadline",
    "thanks",
    "weekend",
    "photo",
    "deploy",
    "server",
];

/// Message `i` of sender `s`: 4-10 words, half Korean, half English.
fn body(s: usize, i: usize) -> String {
    let mut h = (s as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (i as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let words = 4 + (h % 7) as usize;
    let korean = (s + i).is_multiple_of(2);
    let mut out = Vec::with_capacity(words);
    for _ in 0..words {
        h = h.rotate_left(17).wrapping_mul(0x94d0_49bb_1331_11eb);
        let k = (h >> 32) as usize % 12;
        out.push(if korean { KO[k] } else { EN[k] });
    }
    out.join(" ")
}

/// Sends `n` messages from one connection, `window` in flight; returns acks.
async fn sender(addr: String, tok: String, to: String, s: usize, n: usize, window: usize) -> Result<usize> {
    let (acked, errors) = crate::catchup::pipeline(&addr, &tok, &to, "i", n, window, |i| body(s, i)).await?;
    ensure!(errors == 0, "{errors} sends refused");
    Ok(acked)
}

/// The indexer's position: (history sequence acknowledged, lag).
async fn position(c: &mut jetstream::consumer::Consumer<pull::Config>) -> Result<(u64, u64)> {
    let info = c.info().await?;
    Ok((info.ack_floor.stream_sequence, info.num_pending + info.num_ack_pending as u64))
}

/// Runs the scenario.
pub async fn run(t: &Target, cfg: &Cfg) -> Result<Report> {
    let mut r = Report::new(
        "index",
        json!({"messages": cfg.messages, "senders": cfg.senders, "window": cfg.window, "bodies": "4-10 words, Korean or English"}),
    );
    let senders = cfg.senders.max(1);
    let users = signup_users(t, &run_prefix("index"), 2 * senders, 4).await?;
    let js = jetstream::new(chat_tests::nats_admin(&t.nats_url).await?);
    let stream = js.get_stream(chat_nats::subjects::HISTORY_STREAM).await?;
    let consumer_name = chat_workers::search::CONSUMER;
    let mut consumer = chat_tests::wait_for("the search indexer's consumer", Duration::from_secs(30), || {
        let stream = stream.clone();
        async move { stream.get_consumer::<pull::Config>(consumer_name).await.ok() }
    })
    .await
    .context("is the indexer on (CHAT_SEARCH_INDEXER)?")?;
    // Start from an indexer with nothing left to do.
    let floor0 = chat_tests::wait_for("the indexer to be idle", cfg.drain, || {
        let mut c = consumer.clone();
        async move { position(&mut c).await.ok().and_then(|(floor, lag)| (lag == 0).then_some(floor)) }
    })
    .await?;

    // Poll the consumer while the sends run.
    let done = Arc::new(AtomicBool::new(false));
    let max_lag = Arc::new(AtomicU64::new(0));
    let poll = {
        let (done, max_lag, mut c) = (done.clone(), max_lag.clone(), consumer.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Ok((_, lag)) = position(&mut c).await {
                    max_lag.fetch_max(lag, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for s in 0..senders {
        let share = cfg.messages / senders + usize::from(s < cfg.messages % senders);
        let (from, to) = (&users[2 * s], &users[2 * s + 1]);
        let (addr, tok) = (t.gateway(s).to_owned(), token(t, from, "d0").await?);
        let (to, window) = (to.id.clone(), cfg.window);
        tasks.push(tokio::spawn(async move { sender(addr, tok, to, s, share, window).await }));
    }
    let t0 = Instant::now();
    let mut acked = 0;
    for task in tasks {
        acked += task.await??;
    }
    let send_s = t0.elapsed().as_secs_f64();
    let (floor1, lag1) = position(&mut consumer).await?;
    done.store(true, Ordering::Relaxed);
    poll.await?;
    let indexed_during = floor1.saturating_sub(floor0);
    r.metric("acked_sends", acked as f64);
    r.metric("acked_sends_per_s", acked as f64 / send_s);
    r.metric("indexed_during_sends", indexed_during as f64);
    r.metric("indexed_during_sends_per_s", indexed_during as f64 / send_s);
    r.metric("lag_at_last_ack", lag1 as f64);
    r.metric("lag_max", max_lag.load(Ordering::Relaxed).max(lag1) as f64);

    // What is left, with the write path idle.
    let t1 = Instant::now();
    let end = floor0 + acked as u64;
    let floor2 = chat_tests::wait_for("the indexer to catch up", cfg.drain, || {
        let mut c = consumer.clone();
        async move {
            let (floor, lag) = position(&mut c).await.ok()?;
            tokio::time::sleep(Duration::from_millis(20)).await;
            (lag == 0 && floor >= end).then_some(floor)
        }
    })
    .await?;
    let drain_s = t1.elapsed().as_secs_f64();
    let total_s = t0.elapsed().as_secs_f64();
    r.metric("catch_up_s", drain_s);
    let left = floor2.saturating_sub(floor1);
    if left >= 1000 {
        r.metric("drain_indexed_per_s", left as f64 / drain_s);
    }
    r.metric("indexed_per_s_overall", (floor2 - floor0) as f64 / total_s);
    let keeps_up = if lag1 <= (acked as u64 / 100).max(cfg.senders as u64 * cfg.window as u64) {
        "keeps up (lag at the last ack within one window of sends or 1 %)"
    } else {
        "falls behind (lag grows while the sends run)"
    };
    r.note(format!(
        "indexer {keeps_up}: {:.0} indexed/s during {:.0} acked sends/s; {lag1} behind at the last ack, \
         caught up {drain_s:.2} s later",
        indexed_during as f64 / send_s,
        acked as f64 / send_s
    ));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_words_of_one_language() {
        let (a, b) = (body(0, 0), body(0, 1));
        assert!(a.chars().any(|c| ('가'..='힣').contains(&c)), "{a}");
        assert!(b.is_ascii() && b.split(' ').count() >= 4, "{b}");
        assert_ne!(body(1, 1), body(2, 2));
    }
}
