//! A reusable load: N senders, each on its own [`Failover`] session (so it
//! moves to another gateway by itself), sending at a given total rate and
//! recording every `ack`; a sender whose connection goes resends its unacked
//! messages with the same `cid` after reconnecting. Then [`verify`]: every
//! acked message is in its conversation's history exactly once, in a
//! strictly increasing order, and nothing else was stored; and
//! [`verify_received`] / [`verify_catch_up`]: a device saw each of its
//! conversations exactly as history has it (no gap, no duplicate, same
//! order).
//!
//! ```no_run
//! # async fn demo(logins: Vec<chat_client::Login>, seeds: Vec<String>) -> anyhow::Result<()> {
//! use chat_tests::load::{self, LoadSpec, SenderSpec};
//! let senders = logins.iter().enumerate().map(|(i, l)| {
//!     SenderSpec { login: l.clone(), targets: vec![serde_json::json!({"user": logins[(i + 1) % logins.len()].user_id})] }
//! }).collect();
//! let run = load::start(LoadSpec::new(seeds.clone(), senders, 300.0));
//! run.wait_acked(1000, std::time::Duration::from_secs(60)).await?;
//! let report = run.finish(std::time::Duration::from_secs(60)).await?;
//! let history = load::verify(&chat_client::Http::new(&seeds[0]), &logins, &report).await?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use chat_client::{Conn, Event, Failover, FailoverConfig, Http, Login};
use serde_json::{json, Value};

/// One sender: who, and the `to` objects it sends to in turn.
#[derive(Debug, Clone)]
pub struct SenderSpec {
    /// Its login (token, user, device).
    pub login: Login,
    /// `{"user": ..}` or `{"group": ..}` targets, used round-robin.
    pub targets: Vec<Value>,
}

/// A load to run.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Gateways (`host:port`) the senders' sessions discover edges from.
    pub seeds: Vec<String>,
    /// The senders; sender `i` starts on `seeds[i % seeds.len()]`'s edges.
    pub senders: Vec<SenderSpec>,
    /// Messages per second over all senders.
    pub rate: f64,
    /// Unacked sends a sender may have before it waits (the gateway queues
    /// 64 per session).
    pub window: usize,
}

impl LoadSpec {
    /// A load at `rate` msgs/s in total, 32 unacked per sender at most.
    pub fn new(seeds: Vec<String>, senders: Vec<SenderSpec>, rate: f64) -> LoadSpec {
        LoadSpec { seeds, senders, rate, window: 32 }
    }
}

/// One recorded ack.
#[derive(Debug, Clone)]
pub struct Acked {
    /// Index of the sender.
    pub sender: usize,
    /// The send's `cid`.
    pub cid: String,
    /// The message id.
    pub id: u64,
    /// Its conversation.
    pub conv: String,
    /// When the ack arrived.
    pub at: Instant,
}

/// What a load did.
#[derive(Debug, Clone)]
pub struct LoadReport {
    /// Every ack, one per send.
    pub acks: Vec<Acked>,
    /// Sends made (each acked in the end, or [`LoadRun::finish`] fails).
    pub sent: usize,
    /// Time from the first send to the stop.
    pub sending: Duration,
    /// Session moves of the senders, with how long each took.
    pub moves: Vec<Duration>,
    /// The longest time without any ack while sending (an ack stall).
    pub max_ack_gap: Duration,
}

impl LoadReport {
    /// Acked messages per second while sending.
    pub fn rate(&self) -> f64 {
        self.acks.len() as f64 / self.sending.as_secs_f64().max(1e-9)
    }
}

/// A running load.
pub struct LoadRun {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<Result<SenderResult>>>,
}

struct SenderResult {
    acks: Vec<Acked>,
    sent: usize,
    moves: Vec<Duration>,
}

/// Starts every sender.
pub fn start(spec: LoadSpec) -> LoadRun {
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(AtomicUsize::new(0));
    let n = spec.senders.len().max(1);
    let every = Duration::from_secs_f64(n as f64 / spec.rate);
    let mut tasks = Vec::new();
    for (i, s) in spec.senders.into_iter().enumerate() {
        let mut seeds = spec.seeds.clone();
        seeds.rotate_left(i % spec.seeds.len().max(1));
        let (stop, acked, window) = (stop.clone(), acked.clone(), spec.window);
        // Spread the senders' ticks over one period.
        let offset = every.mul_f64(i as f64 / n as f64);
        tasks.push(tokio::spawn(async move { sender(i, s, seeds, every, offset, window, stop, acked).await }));
    }
    LoadRun { stop, acked, started: Instant::now(), tasks }
}

#[allow(clippy::too_many_arguments)]
async fn sender(
    i: usize,
    spec: SenderSpec,
    seeds: Vec<String>,
    every: Duration,
    offset: Duration,
    window: usize,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicUsize>,
) -> Result<SenderResult> {
    let mut session = Failover::new(FailoverConfig::new(seeds), &spec.login.token, None);
    let mut out = SenderResult { acks: Vec::new(), sent: 0, moves: Vec::new() };
    let mut next_send = tokio::time::Instant::now() + offset;
    loop {
        let sending = !stop.load(Ordering::Acquire);
        if !sending && session.unacked() == 0 {
            return Ok(out);
        }
        // A reconnect is not cut short by the send ticks (a cancelled one
        // starts over, and under load would never finish).
        if session.edge().is_none() {
            if let Some(Event::Moved { took, .. }) = session.connect().await.with_context(|| format!("sender {i}"))? {
                out.moves.push(took);
            }
            continue;
        }
        if sending && session.unacked() < window && tokio::time::Instant::now() >= next_send {
            let cid = format!("ld{i}-{}", out.sent);
            let to = &spec.targets[out.sent % spec.targets.len()];
            let frame = json!({"type": "send", "cid": cid, "to": to, "body": format!("load {cid}")});
            session.send(&cid, frame).await?;
            out.sent += 1;
            next_send += every;
            continue;
        }
        // Events until the next send is due (cut short: over WebSocket a
        // Failover read may be cancelled between frames).
        let until = if sending { next_send.max(tokio::time::Instant::now()) } else { far() };
        let event = match tokio::time::timeout_at(until, session.next()).await {
            Ok(e) => e.with_context(|| format!("sender {i}"))?,
            Err(_) => continue,
        };
        match event {
            Event::Ack(v) => {
                let id = v["id"].as_str().context("ack id")?.parse()?;
                let (cid, conv) = (v["cid"].as_str().unwrap_or_default(), v["conv"].as_str().unwrap_or_default());
                out.acks.push(Acked { sender: i, cid: cid.into(), id, conv: conv.into(), at: Instant::now() });
                acked.fetch_add(1, Ordering::AcqRel);
            }
            Event::Refused(v) => bail!("sender {i}: a send was refused for good: {v}"),
            Event::Moved { took, .. } => out.moves.push(took),
            Event::Msg(_) | Event::Other(_) => {}
        }
    }
}

fn far() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(3600)
}

impl LoadRun {
    /// Acks recorded so far.
    pub fn acked(&self) -> usize {
        self.acked.load(Ordering::Acquire)
    }

    /// Waits until at least `n` sends are acked.
    pub async fn wait_acked(&self, n: usize, timeout: Duration) -> Result<()> {
        crate::wait_for(&format!("{n} acks"), timeout, || async move { (self.acked() >= n).then_some(()) }).await
    }

    /// Stops sending, waits (up to `timeout`) until every send is acked, and
    /// reports.
    pub async fn finish(self, timeout: Duration) -> Result<LoadReport> {
        self.stop.store(true, Ordering::Release);
        let sending = self.started.elapsed();
        let mut report =
            LoadReport { acks: Vec::new(), sent: 0, sending, moves: Vec::new(), max_ack_gap: Duration::ZERO };
        let all = futures::future::join_all(self.tasks);
        for r in tokio::time::timeout(timeout, all).await.context("senders still had unacked sends")? {
            let r = r??;
            report.acks.extend(r.acks);
            report.sent += r.sent;
            report.moves.extend(r.moves);
        }
        let mut times: Vec<Instant> =
            report.acks.iter().map(|a| a.at).filter(|t| *t <= self.started + sending).collect();
        times.sort();
        report.max_ack_gap = times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default();
        ensure!(report.acks.len() == report.sent, "{} sends, {} acks", report.sent, report.acks.len());
        Ok(report)
    }
}

/// A conversation's history, oldest first, read back to its beginning.
pub async fn history(http: &Http, reader: &Login, conv: &str) -> Result<Vec<Value>> {
    let mut all = Vec::new();
    let mut query = "limit=100".to_string();
    loop {
        let page = http.history(&reader.token, conv, &query).await?;
        let batch = page["messages"].as_array().cloned().unwrap_or_default();
        let Some(first) = batch.first().and_then(|m| m["id"].as_str()).map(str::to_owned) else { break };
        all.splice(0..0, batch);
        if !page["has_more"].as_bool().unwrap_or(false) {
            break;
        }
        query = format!("limit=100&before={first}");
    }
    Ok(all)
}

fn id_of(m: &Value) -> u64 {
    m["id"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Every acked message in its conversation's history exactly once, ids
/// strictly increasing, and no text message there that was not acked (a
/// retry stored twice would be one). `readers[r.acks[k].sender]` reads.
/// Returns each conversation's history ids.
pub async fn verify(http: &Http, readers: &[Login], report: &LoadReport) -> Result<BTreeMap<String, Vec<u64>>> {
    let mut by_conv: BTreeMap<String, (usize, HashSet<u64>)> = BTreeMap::new();
    let mut ids = HashSet::new();
    for a in &report.acks {
        ensure!(ids.insert(a.id), "message id {} acked twice (cid {})", a.id, a.cid);
        by_conv.entry(a.conv.clone()).or_insert_with(|| (a.sender, HashSet::new())).1.insert(a.id);
    }
    let mut out = BTreeMap::new();
    for (conv, (reader, acked)) in by_conv {
        let msgs = history(http, &readers[reader], &conv).await?;
        let hist: Vec<u64> = msgs.iter().map(id_of).collect();
        ensure!(hist.windows(2).all(|w| w[0] < w[1]), "{conv}: history ids do not strictly increase");
        let present: HashSet<u64> = hist.iter().copied().collect();
        let missing: Vec<&u64> = acked.difference(&present).collect();
        ensure!(missing.is_empty(), "{conv}: {} acked messages missing from history: {missing:?}", missing.len());
        let extra: Vec<u64> =
            msgs.iter().filter(|m| m["kind"] == "text").map(id_of).filter(|i| !acked.contains(i)).collect();
        ensure!(extra.is_empty(), "{conv}: text messages stored but never acked (duplicates?): {extra:?}");
        out.insert(conv, hist);
    }
    Ok(out)
}

/// `received` (conversation → ids in arrival order, as one device got them)
/// against `history`: for every conversation of `history` the device's user
/// is in (`in_conv`), what it got is exactly the end of that history from
/// its first message, holding every acked one of `report`.
pub fn verify_received(
    who: &str,
    received: &HashMap<String, Vec<u64>>,
    history: &BTreeMap<String, Vec<u64>>,
    report: &LoadReport,
    in_conv: impl Fn(&str) -> bool,
) -> Result<()> {
    let first_acked: HashMap<&str, usize> = {
        let mut m = HashMap::new();
        for a in &report.acks {
            let pos = history.get(&a.conv).and_then(|h| h.iter().position(|i| *i == a.id)).unwrap_or(0);
            let e = m.entry(a.conv.as_str()).or_insert(pos);
            *e = (*e).min(pos);
        }
        m
    };
    for (conv, hist) in history {
        if !in_conv(conv) {
            continue;
        }
        let got = received.get(conv).map(Vec::as_slice).unwrap_or_default();
        let Some(first) = got.first() else { bail!("{who}: nothing of {conv} ({} messages)", hist.len()) };
        let Some(start) = hist.iter().position(|i| i == first) else {
            bail!("{who}: {conv}: got {first}, which is not in history")
        };
        ensure!(
            start <= first_acked.get(conv.as_str()).copied().unwrap_or(0),
            "{who}: {conv}: starts after acked messages (at {start} of {})",
            hist.len()
        );
        if got != &hist[start..] {
            let dup = got.len() - got.iter().collect::<HashSet<_>>().len();
            bail!(
                "{who}: {conv}: got {} messages ({dup} twice), history has {} from there",
                got.len(),
                hist.len() - start
            );
        }
    }
    Ok(())
}

/// A fresh connection of `login` to `addr` syncs from `cursor`; what it
/// catches up is checked with [`verify_received`].
pub async fn verify_catch_up(
    addr: &str,
    login: &Login,
    cursor: Option<&str>,
    history: &BTreeMap<String, Vec<u64>>,
    report: &LoadReport,
    in_conv: impl Fn(&str) -> bool,
) -> Result<()> {
    let mut c = Conn::connect(addr, &login.token).await?;
    c.timeout = Duration::from_secs(60);
    let (msgs, _) = c.sync(cursor).await?;
    c.close().await;
    let mut received: HashMap<String, Vec<u64>> = HashMap::new();
    for m in &msgs {
        received.entry(m["conv"].as_str().unwrap_or_default().to_owned()).or_default().push(id_of(m));
    }
    let who = format!("catch-up of user {} device {}", login.user_id, login.device_id);
    verify_received(&who, &received, history, report, in_conv)
}

/// Whether `user` is one of a `dm-<a>-<b>` conversation's two users.
pub fn in_direct(conv: &str, user: &str) -> bool {
    conv.strip_prefix("dm-").and_then(|r| r.split_once('-')).is_some_and(|(a, b)| a == user || b == user)
}
