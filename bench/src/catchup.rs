//! `catchup`: one device is offline while N messages arrive for it; then
//! it reconnects and syncs from its cursor. Measures `sync`→`synced`.
//! Baseline: an ordered JetStream consumer reading the same N messages
//! from the same inbox subject and sequence.

use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde_json::json;

use crate::baseline;
use crate::client::{connect_retry, live, run_prefix, signup_users, token, User};
use crate::report::{median_ms, Lat, Report};
use crate::Target;

/// Parameters.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Messages that arrive while the device is offline.
    pub messages: usize,
    /// Users sending them (each its own 1:1 conversation).
    pub senders: usize,
    /// Sends each sender keeps in flight.
    pub window: usize,
    /// Reconnect-and-sync rounds (each from the same cursor).
    pub repeats: usize,
    /// Body size in bytes.
    pub size: usize,
    /// Run the raw-NATS baseline.
    pub baselines: bool,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg { messages: 10_000, senders: 8, window: 16, repeats: 3, size: 100, baselines: true }
    }
}

/// Sends `n` messages to `to` over one connection, `window` in flight;
/// message `i` is `body(i)`; returns (acked, errors). Client message ids are `<cid_prefix><i>`: a
/// device must not reuse them (a reused `cid` is deduplicated).
pub async fn pipeline(
    addr: &str,
    tok: &str,
    to: &str,
    cid_prefix: &str,
    n: usize,
    window: usize,
    body: impl Fn(usize) -> String,
) -> Result<(usize, usize)> {
    let (mut tx, mut rx, _) = connect_retry(addr, tok, 8).await?;
    let target = json!({"user": to});
    let (mut sent, mut acked, mut errors) = (0usize, 0usize, 0usize);
    while acked + errors < n {
        while sent < n && sent - acked - errors < window.max(1) {
            tx.send_msg(&format!("{cid_prefix}{sent}"), &target, &body(sent)).await?;
            sent += 1;
        }
        let f = rx.next_within(Duration::from_secs(30)).await.context("waiting for acks")?;
        match f.ty.as_str() {
            "ack" => acked += 1,
            "error" => errors += 1,
            _ => {}
        }
    }
    tx.close().await;
    Ok((acked, errors))
}

/// Sends `n` messages to `to` from `senders`, spread over the gateways;
/// returns (acked, errors).
pub async fn fill(
    t: &Target,
    senders: &[User],
    to: &str,
    n: usize,
    window: usize,
    size: usize,
) -> Result<(usize, usize)> {
    let mut tasks = Vec::new();
    for (i, s) in senders.iter().enumerate() {
        let share = n / senders.len() + usize::from(i < n % senders.len());
        let (addr, tok, to) = (t.gateway(i).to_owned(), token(t, s, "d0").await?, to.to_owned());
        tasks.push(tokio::spawn(async move {
            pipeline(&addr, &tok, &to, "f", share, window, |_| "m".repeat(size.max(1))).await
        }));
    }
    let (mut acked, mut errors) = (0, 0);
    for task in tasks {
        let (a, e) = task.await??;
        acked += a;
        errors += e;
    }
    Ok((acked, errors))
}

/// Runs the scenario.
pub async fn run(t: &Target, cfg: &Cfg) -> Result<Report> {
    let mut r = Report::new(
        "catchup",
        json!({"messages": cfg.messages, "senders": cfg.senders, "repeats": cfg.repeats, "size": cfg.size}),
    );
    let users = signup_users(t, &run_prefix("catchup"), 1 + cfg.senders.max(1), 4).await?;
    let (me, senders) = users.split_first().context("no users")?;
    let tok = token(t, me, "d0").await?;
    let (tx, _rx, cursor0) = live(t.gateway(0), &tok, None).await?;
    tx.close().await;

    let t0 = Instant::now();
    let (acked, errors) = fill(t, senders, &me.id, cfg.messages, cfg.window, cfg.size).await?;
    let fill_s = t0.elapsed().as_secs_f64();
    r.metric("fill_acked", acked as f64);
    r.metric("fill_errors", errors as f64);
    r.metric("fill_rate_per_s", acked as f64 / fill_s);
    ensure!(acked == cfg.messages, "only {acked} of {} sends were acked ({errors} errors)", cfg.messages);

    let lat = Lat::default();
    let (mut syncs, mut connects) = (vec![], vec![]);
    let mut received = 0;
    let mut ordered = true;
    for _ in 0..cfg.repeats.max(1) {
        let t0 = Instant::now();
        let (mut tx, mut rx, _) = connect_retry(t.gateway(0), &tok, 8).await?;
        let t1 = Instant::now();
        tx.sync(Some(&cursor0)).await?;
        let (n, ord, _) = rx.until_synced(Duration::from_secs(60)).await?;
        let took = t1.elapsed();
        connects.push(t1 - t0);
        syncs.push(took);
        lat.record(took);
        received = n;
        ordered &= ord;
        tx.close().await;
    }
    r.metric("received", received as f64);
    r.metric("in_order", f64::from(u8::from(ordered)));
    r.metric("connect_ms_median", median_ms(&connects));
    let ours = median_ms(&syncs);
    r.metric("sync_to_synced_ms_median", ours);
    r.metric("msgs_per_s", received as f64 / (ours / 1000.0).max(1e-9));
    r.latencies.push(lat.row("ours sync→synced", None));
    let target = if ours <= 1000.0 { "met" } else { "missed" };
    r.note(format!("target catch-up of 10,000 messages ≤ 1 s: {target} ({ours:.1} ms for {received})"));

    if cfg.baselines {
        let res: Result<()> = async {
            let inbox = crate::baseline::inbox_stream(&t.nats_url).await?;
            let subject = chat_nats::subjects::inbox(me.id.parse()?);
            let start: u64 = cursor0.parse::<u64>().unwrap_or(0) + 1;
            let blat = Lat::default();
            let mut reads = vec![];
            for _ in 0..cfg.repeats.max(1) {
                let (took, got) = baseline::ordered_read(&inbox, &subject, start, cfg.messages).await?;
                ensure!(got == cfg.messages, "baseline read {got} of {}", cfg.messages);
                blat.record(took);
                reads.push(took);
            }
            let base = median_ms(&reads);
            r.metric("baseline_ordered_consumer_ms_median", base);
            r.latencies.push(blat.row("JetStream ordered consumer", None));
            r.ratio("sync→synced / ordered consumer read (median)", ours, base);
            Ok(())
        }
        .await;
        if let Err(e) = res {
            r.note(format!("baselines failed: {e:#}"));
        }
    }
    Ok(r)
}
