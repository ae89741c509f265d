//! Group commit across partitions: every stream a round writes (history,
//! inboxes, outcome records) has one committer per worker, and the parts
//! that the worker's partitions hand it while a commit is in flight are
//! stored together, as one atomic batch.
//!
//! A partition's round stores its history part, then its inbox parts, then
//! its outcome records, each awaited before the next (`round`). With many
//! partitions (`CHAT_PARTITIONS`, 16 by default) under load, each round is
//! small and each of its parts was a batch of its own: a perf profile of
//! `latency --pairs 500 --rate 5000` put nats-server's per-batch staging
//! store (created, synced and removed for every batch) at a quarter of its
//! CPU, with ~25 sends per history batch. The committer takes whatever
//! parts wait (up to one batch, [`DEFAULT_MAX_ENTRIES`]) once one of its
//! [`WorkerConfig::commits_in_flight`](crate::WorkerConfig) slots is free,
//! so a lone part at light load is stored at once, as before, and under
//! load many rounds share one commit and one fsync.
//!
//! What a merged commit means for each round, whose part is all or nothing
//! as before:
//! - stored: every part is, each entry at its sequence (a part's entries
//!   are consecutive in the batch, in their order);
//! - refused, nothing stored (a duplicate id in one part, say): each part
//!   is stored again on its own, so one round's trouble (its redo finds out
//!   what it was) is not the others';
//! - outcome unknown (timeout, connection lost): every part reports an
//!   error, and each round is redone one message at a time, which finds
//!   whatever landed as duplicates.
//!
//! Parts of different partitions never hold the same conversation, and a
//! partition hands over its next part only after its last one is stored,
//! so the conversation order of history and of every inbox is the one each
//! round wrote.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chat_nats::batch::{AtomicBatch, BatchConfig, DEFAULT_MAX_ENTRIES};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot, Semaphore};

/// Fewest entries for which a commit goes as an atomic batch. Fewer go as
/// plain publishes: a batch's fixed cost (nats-server creates, syncs and
/// removes a staging store per batch: about 1-2 ms of its CPU and 2.6 ms
/// of latency here) is more than that many plain writes cost, e.g. the one
/// history append of a round holding a single group message.
pub const MIN_BATCH_PART: usize = 16;

/// Most entries of one subject (a conversation's history, a user's inbox)
/// that a commit below [`MIN_BATCH_PART`] stores as plain publishes: they
/// go one after another, one fsync each, so a group round of 8 messages of
/// one conversation spent 8 fsyncs in a row on its history append. Longer
/// runs go as one atomic batch.
pub const MAX_PLAIN_RUN: usize = 3;

/// Entries a lingering committer (`Tuning::linger`, writes nobody waits
/// on) waits for before it commits sooner than the linger: each batch
/// costs nats-server a staging store (created, synced, removed: 18 % of
/// its CPU at 500 sends/s when the outcome records' commits held 16-19
/// entries each), so records wait for a large batch, or the linger.
pub const LINGER_ENTRIES: usize = 256;
const _: () = assert!(LINGER_ENTRIES <= DEFAULT_MAX_ENTRIES);

/// Default of `CHAT_COMMITS_IN_FLIGHT`.
pub const DEFAULT_IN_FLIGHT: usize = 2;

/// Default of `CHAT_RECORD_LINGER_MS`.
pub const DEFAULT_RECORD_LINGER_MS: u64 = 100;

/// Parts waiting for a committer before rounds wait for room.
const QUEUE: usize = 1024;

struct Job {
    part: AtomicBatch,
    done: oneshot::Sender<Result<Vec<u64>, String>>,
}

/// One stream's committer.
#[derive(Debug, Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
    counters: Counters,
}

/// What a committer counts (`chat_commits`, `chat_commit_parts`).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Commits: a merged batch, or a part stored on its own.
    pub commits: Counter,
    /// Parts stored (or failed) by those commits.
    pub parts: Counter,
}

/// The committers of the streams a round writes.
#[derive(Debug, Clone)]
pub struct Committers {
    /// `CHAT_HISTORY`.
    pub history: Committer,
    /// `CHAT_INBOX`.
    pub inbox: Committer,
    /// The acks bucket's stream (outcome records).
    pub acks: Committer,
}

impl Committers {
    /// Starts one committer per stream, each with `in_flight` commits at
    /// most at once, counting into `metrics`; the outcome records' waits up
    /// to `record_linger` for [`LINGER_ENTRIES`] (they are off every ack's
    /// path: see `round`).
    pub fn start(
        client: &async_nats::Client,
        js: &jetstream::Context,
        in_flight: usize,
        record_linger: Duration,
        metrics: &crate::metrics::Metrics,
    ) -> Committers {
        let one = |stream, linger| {
            let tuning = Tuning { in_flight, linger };
            Committer::start(client.clone(), js.clone(), tuning, metrics.commit_counters(stream))
        };
        Committers {
            history: one("history", Duration::ZERO),
            inbox: one("inbox", Duration::ZERO),
            acks: one("acks", record_linger),
        }
    }
}

/// How a committer gathers parts.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    /// Commits in flight at once (at least 1).
    pub in_flight: usize,
    /// How long a commit that has fewer than [`LINGER_ENTRIES`] entries
    /// waits for more parts before it is stored (zero: never). Only for
    /// writes nobody waits on.
    pub linger: Duration,
}

impl Committer {
    /// Starts a committer of one stream (every part it is given must be of
    /// that stream).
    pub fn start(client: async_nats::Client, js: jetstream::Context, tuning: Tuning, counters: Counters) -> Committer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(client, js, rx, tuning, counters.clone()));
        Committer { tx, counters }
    }

    /// Commits made and parts they stored so far.
    pub fn stats(&self) -> (u64, u64) {
        (self.counters.commits.get(), self.counters.parts.get())
    }

    /// Stores `part` (entries of this committer's stream, in order), all of
    /// it or, on an error, an unknown share that the caller's redo finishes;
    /// each entry's sequence, in push order.
    pub async fn store(&self, part: AtomicBatch) -> Result<Vec<u64>, async_nats::Error> {
        if part.is_empty() {
            return Ok(Vec::new());
        }
        let (done, rx) = oneshot::channel();
        self.tx.send(Job { part, done }).await.map_err(|_| "committer stopped")?;
        Ok(rx.await.map_err(|_| "committer stopped")??)
    }
}

async fn run(
    client: async_nats::Client,
    js: jetstream::Context,
    mut rx: mpsc::Receiver<Job>,
    tuning: Tuning,
    counters: Counters,
) {
    let permits = Arc::new(Semaphore::new(tuning.in_flight.max(1)));
    // A part that did not fit the last commit starts the next.
    let mut held: Option<Job> = None;
    loop {
        let first = match held.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let mut entries = first.part.len();
        let mut jobs = vec![first];
        // Writes nobody waits on wait for a large batch, or the linger.
        let until = tokio::time::Instant::now() + tuning.linger;
        while held.is_none() && entries < LINGER_ENTRIES && !tuning.linger.is_zero() {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(j)) => add(&mut jobs, &mut entries, &mut held, j),
                Ok(None) | Err(_) => break,
            }
        }
        // Wait for a slot first, so that the parts arriving meanwhile join.
        let Ok(permit) = permits.clone().acquire_owned().await else { return };
        while held.is_none() {
            match rx.try_recv() {
                Ok(j) => add(&mut jobs, &mut entries, &mut held, j),
                Err(_) => break,
            }
        }
        let (client, js, counters) = (client.clone(), js.clone(), counters.clone());
        tokio::spawn(async move {
            commit(&client, &js, jobs, &counters).await;
            drop(permit);
        });
    }
}

/// Adds `j` to the commit being gathered, or holds it for the next if it
/// does not fit one batch.
fn add(jobs: &mut Vec<Job>, entries: &mut usize, held: &mut Option<Job>, j: Job) {
    if *entries + j.part.len() > DEFAULT_MAX_ENTRIES {
        *held = Some(j);
    } else {
        *entries += j.part.len();
        jobs.push(j);
    }
}

/// Stores the parts as one atomic batch when there are several and enough
/// entries; else (and when that batch is refused) each on its own.
async fn commit(client: &async_nats::Client, js: &jetstream::Context, jobs: Vec<Job>, counters: &Counters) {
    counters.parts.inc_by(jobs.len() as u64);
    if jobs.len() > 1 {
        if let Some(merged) = merge(&jobs) {
            counters.commits.inc();
            match merged.commit(client).await {
                Ok(done) => {
                    let mut seqs = done.sequences();
                    for j in jobs {
                        let _ = j.done.send(Ok(seqs.by_ref().take(j.part.len()).collect()));
                    }
                    return;
                }
                Err(e) if e.outcome_unknown() => {
                    let message = format!("merged commit of {} parts: {e}", jobs.len());
                    for j in jobs {
                        let _ = j.done.send(Err(message.clone()));
                    }
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, parts = jobs.len(), "merged commit refused; storing each part on its own")
                }
            }
        }
    }
    counters.commits.inc_by(jobs.len() as u64);
    let each = jobs.into_iter().map(|j| async move {
        let r = store_part(client, js, &j.part).await.map_err(|e| e.to_string());
        let _ = j.done.send(r);
    });
    futures::future::join_all(each).await;
}

/// How `entries` go when they are not worth an atomic batch's fixed cost:
/// their indices grouped by subject (a conversation's history, a user's
/// inbox), each group in push order, the groups in the order of their first
/// entry. `None` (a batch) for [`MIN_BATCH_PART`] entries or more, or more
/// than [`MAX_PLAIN_RUN`] of one subject (which plain publishes would store
/// one fsync after another).
fn plain_chains(entries: &[chat_nats::batch::Entry]) -> Option<Vec<Vec<usize>>> {
    if entries.len() >= MIN_BATCH_PART {
        return None;
    }
    let mut chains: Vec<Vec<usize>> = Vec::new();
    let mut chain_of: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let c = *chain_of.entry(e.subject.as_str()).or_insert_with(|| {
            chains.push(Vec::new());
            chains.len() - 1
        });
        chains[c].push(i);
        if chains[c].len() > MAX_PLAIN_RUN {
            return None;
        }
    }
    Some(chains)
}

/// The parts as one batch, if together they are worth one.
fn merge(jobs: &[Job]) -> Option<AtomicBatch> {
    let mut merged = AtomicBatch::new(BatchConfig::default());
    for e in jobs.iter().flat_map(|j| j.part.entries()) {
        merged.push(e.subject.clone(), e.headers.clone(), e.payload.clone()).ok()?;
    }
    plain_chains(merged.entries()).is_none().then_some(merged)
}

/// Stores one part on its own, all of it or (on an error) an unknown share
/// that the caller's redo finishes; each entry's sequence, in push order. A
/// part not worth a batch ([`plain_chains`]) goes as plain publishes, one after another
/// per subject (a conversation's history, a user's inbox), so that a write
/// that fails never has a later one of the same subject stored before the
/// redo writes it; subjects go concurrently.
async fn store_part(
    client: &async_nats::Client,
    js: &jetstream::Context,
    part: &AtomicBatch,
) -> Result<Vec<u64>, async_nats::Error> {
    let entries = part.entries();
    let Some(chains) = plain_chains(entries) else {
        return Ok(part.commit(client).await?.sequences().collect());
    };
    let runs = chains.into_iter().map(|chain| async move {
        let mut seqs = Vec::with_capacity(chain.len());
        for i in chain {
            let e = &entries[i];
            let ack = js.publish_with_headers(e.subject.clone(), e.headers.clone(), e.payload.clone()).await?.await?;
            if ack.duplicate {
                // A fresh round stores nothing twice; leave it to the redo.
                return Err(async_nats::Error::from("a fresh round's write was a duplicate"));
            }
            seqs.push((i, ack.sequence));
        }
        Ok(seqs)
    });
    let mut seqs = vec![0; entries.len()];
    for run in futures::future::join_all(runs).await {
        for (i, seq) in run? {
            seqs[i] = seq;
        }
    }
    Ok(seqs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(subjects: &[&str]) -> AtomicBatch {
        let mut b = AtomicBatch::new(BatchConfig::default());
        for s in subjects {
            b.push(s.to_string(), async_nats::HeaderMap::new(), bytes::Bytes::from_static(b"x")).unwrap();
        }
        b
    }

    #[test]
    fn a_batch_for_many_entries_or_a_long_run_of_one_subject_else_plain_publishes() {
        let worth = |s: &[&str]| plain_chains(part(s).entries()).is_none();
        // A lone 1:1 message: its two copies, one per inbox.
        assert!(!worth(&["chat.inbox.1", "chat.inbox.2"]));
        assert!(!worth(&["chat.hist.g-1"; MAX_PLAIN_RUN]));
        // One more of one conversation: one fsync instead of a chain.
        assert!(worth(&["chat.hist.g-1"; MAX_PLAIN_RUN + 1]));
        let many: Vec<String> = (0..MIN_BATCH_PART).map(|i| format!("chat.inbox.{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        assert!(!worth(&many[..MIN_BATCH_PART - 1]));
        assert!(worth(&many));
        // Runs are counted per subject, not in a row.
        assert!(worth(&["a", "b", "a", "b", "a", "b", "a"]));
        assert!(!worth(&["a", "b", "a", "b", "a", "b"]));
        // Plain: one chain per subject, in push order.
        assert_eq!(plain_chains(part(&["a", "b", "a"]).entries()), Some(vec![vec![0, 2], vec![1]]));
    }
}
