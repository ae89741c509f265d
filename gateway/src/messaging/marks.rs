//! Users' delivered marks: the highest inbox stream sequence this gateway
//! handed to any of a user's devices, kept in KV `chat_delivered` for the
//! push planner ("do not buzz a phone for a message the laptop showed").
//!
//! Delivery records marks in memory; a background task writes them,
//! coalesced: the first mark after a quiet spell starts a timer of
//! `CHAT_DELIVERED_FLUSH_MS`, and everything recorded by then is written in
//! one round (one KV write per user, not per frame). A mark only ever
//! rises: it is written by compare-and-set, so gateways racing on the same
//! user keep the highest.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use chat_nats::batch::{AtomicBatch, BatchConfig};
use chat_nats::subjects;
use futures::StreamExt;
use tokio::sync::Notify;

/// Writes at most this many keys at once.
const FLUSH_CONCURRENCY: usize = 64;

/// Values waiting to be written, the highest per key: the first record
/// after a quiet spell starts a timer, and everything recorded by then is
/// written in one round, one write per key however many records it had.
/// Used for delivered marks (user → inbox sequence) and for the read
/// positions of users' own sends (`reads::OwnReads`).
#[derive(Debug)]
pub struct Coalesced<K, V> {
    pending: Mutex<HashMap<K, V>>,
    wake: Notify,
}

impl<K, V> Default for Coalesced<K, V> {
    fn default() -> Self {
        Coalesced { pending: Mutex::new(HashMap::new()), wake: Notify::new() }
    }
}

impl<K: Eq + Hash + Send + 'static, V: Ord + Send + 'static> Coalesced<K, V> {
    /// Records `value` for `key`, kept if higher than what waits.
    pub fn record(&self, key: K, value: V) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let first = p.is_empty();
        match p.entry(key) {
            Entry::Occupied(mut e) if *e.get() < value => {
                e.insert(value);
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(e) => {
                e.insert(value);
            }
        }
        if first {
            self.wake.notify_one();
        }
    }

    /// Hands what is recorded to `flush` as one round, `coalesce` after the
    /// first record of each round, until the process ends.
    pub async fn run<F, Fut>(self: Arc<Self>, coalesce: Duration, flush: F)
    where
        F: Fn(HashMap<K, V>) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(coalesce).await;
            let round = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            flush(round).await;
        }
    }
}

/// What [`raise_many`] did with one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Raised {
    /// The new value is stored.
    Written,
    /// The stored value was already at or past it (that value).
    Ahead(Bytes),
    /// Not written (a racing writer, a batch refused, an error): the
    /// caller raises this key on its own, reading it again.
    Retry,
}

/// Fewest writes of a round stored as one atomic batch (one fsync) rather
/// than as concurrent compare-and-set updates (one fsync each): a batch
/// commit has a fixed cost of a few ms.
pub const MIN_BATCH_WRITES: usize = 16;

/// How long the round's read of the current values may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A round larger than one read or one batch goes in parts of this many.
const MAX_PART: usize = chat_nats::batch::DEFAULT_MAX_ENTRIES;
const _: () = assert!(MAX_PART <= chat_nats::history::direct_get::MAX_SUBJECTS);

/// Moves many keys of `kv` forward at once: one `multi_last` read of every
/// key's current value and revision, then every write that moves a value
/// forward (`at_or_past(current, wanted)` false) as a compare-and-set on
/// that revision: all in one atomic batch when there are at least
/// [`MIN_BATCH_WRITES`], else concurrently one by one. A batch is all or
/// nothing (one changed key refuses it), so a refused batch, or one whose
/// outcome is unknown, leaves every key of it to [`Raised::Retry`]: raising
/// again never lowers a value, so a batch that landed after all is found
/// at or past. A round of more than [`MAX_PART`] keys goes in parts.
pub async fn raise_many(
    client: &async_nats::Client,
    kv: &kv::Store,
    mut items: Vec<(String, Bytes)>,
    at_or_past: impl Fn(&[u8], &[u8]) -> bool,
) -> Vec<(String, Bytes, Raised)> {
    let mut out = Vec::with_capacity(items.len());
    while !items.is_empty() {
        let rest = items.split_off(items.len().min(MAX_PART));
        out.extend(raise_part(client, kv, std::mem::replace(&mut items, rest), &at_or_past).await);
    }
    out
}

/// [`raise_many`] for at most [`MAX_PART`] keys: one read, at most one batch.
async fn raise_part(
    client: &async_nats::Client,
    kv: &kv::Store,
    items: Vec<(String, Bytes)>,
    at_or_past: &impl Fn(&[u8], &[u8]) -> bool,
) -> Vec<(String, Bytes, Raised)> {
    let subject = |key: &str| format!("{}{key}", kv.put_prefix.as_ref().unwrap_or(&kv.prefix));
    let subjects: Vec<String> = items.iter().map(|(k, _)| subject(k)).collect();
    let current = match chat_nats::history::direct_get::last_entries(
        client,
        &kv.stream_name,
        &subjects,
        subjects.len(),
        READ_TIMEOUT,
    )
    .await
    {
        Ok(c) => c,
        // The read failed: one key at a time.
        Err(_) => return items.into_iter().map(|(k, v)| (k, v, Raised::Retry)).collect(),
    };
    let mut out = Vec::with_capacity(items.len());
    let mut writes = Vec::new();
    for ((key, value), subject) in items.into_iter().zip(subjects) {
        match current.get(&subject) {
            Some(e) => match &e.payload {
                Some(cur) if at_or_past(cur, &value) => out.push((key, value, Raised::Ahead(cur.clone()))),
                _ => writes.push((key, value, subject, e.seq)),
            },
            None => writes.push((key, value, subject, 0)),
        }
    }
    if writes.len() >= MIN_BATCH_WRITES {
        let mut batch = AtomicBatch::new(BatchConfig::default());
        let mut pushed = true;
        for (_, value, subject, revision) in &writes {
            let mut h = async_nats::HeaderMap::new();
            h.insert(async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, revision.to_string().as_str());
            pushed &= batch.push(subject.clone(), h, value.clone()).is_ok();
        }
        let stored = pushed
            && {
                match batch.commit(client).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::debug!(bucket = %kv.name, writes = writes.len(), error = %e, "batched raise not stored; one key at a time");
                        false
                    }
                }
            };
        let outcome = if stored { Raised::Written } else { Raised::Retry };
        out.extend(writes.into_iter().map(|(k, v, _, _)| (k, v, outcome.clone())));
    } else {
        let done = futures::stream::iter(writes)
            .map(|(key, value, _, revision)| async move {
                let r = match revision {
                    0 => kv.create(&key, value.clone()).await.is_ok(),
                    rev => kv.update(&key, value.clone(), rev).await.is_ok(),
                };
                (key, value, if r { Raised::Written } else { Raised::Retry })
            })
            .buffer_unordered(FLUSH_CONCURRENCY)
            .collect::<Vec<_>>()
            .await;
        out.extend(done);
    }
    out
}

/// Pending delivered marks of this gateway: user → the highest inbox
/// sequence handed to any of their devices.
pub type DeliveredMarks = Coalesced<i64, u64>;

/// Writes delivered marks until the process ends: each round with one
/// read and (under load) one batch ([`raise_many`]), a key a racing writer
/// changed on its own.
pub async fn run(marks: Arc<DeliveredMarks>, client: async_nats::Client, kv: kv::Store, coalesce: Duration) {
    marks
        .run(coalesce, |round| {
            let (kv, client) = (kv.clone(), client.clone());
            async move {
                let items =
                    round.into_iter().map(|(u, seq)| (subjects::delivered_key(u), Bytes::from(seq.to_string())));
                let done =
                    raise_many(&client, &kv, items.collect(), |cur, want| parse_seq(cur) >= parse_seq(want)).await;
                let retry = done.into_iter().filter(|(_, _, r)| *r == Raised::Retry);
                futures::stream::iter(retry)
                    .for_each_concurrent(FLUSH_CONCURRENCY, |(key, value, _)| {
                        let kv = kv.clone();
                        async move {
                            let seq = parse_seq(&value);
                            if let Err(e) = raise_key(&kv, &key, seq).await {
                                tracing::warn!(key, seq, error = %e, "cannot write the delivered mark");
                            }
                        }
                    })
                    .await;
            }
        })
        .await
}

fn parse_seq(v: &[u8]) -> u64 {
    std::str::from_utf8(v).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// Raises the mark at `key` to `seq` unless it is already there.
async fn raise_key(kv: &kv::Store, key: &str, seq: u64) -> Result<(), async_nats::Error> {
    raise_one(kv, key, Bytes::from(seq.to_string()), 8, |cur| parse_seq(cur) >= seq)
        .await
        .map(|_| ())
        .map_err(|e| format!("delivered mark {e}").into())
}

/// Writes `value` at `key` by compare-and-set unless the stored value is
/// `ahead` already, re-reading after a lost race, up to `attempts` times;
/// `Some(stored)` when it was ahead. Raising never lowers, so a race lost
/// to a writer further ahead ends at the next read.
pub(crate) async fn raise_one(
    kv: &kv::Store,
    key: &str,
    value: Bytes,
    attempts: usize,
    ahead: impl Fn(&[u8]) -> bool,
) -> Result<Option<Bytes>, String> {
    for _ in 0..attempts {
        let written = match kv.entry(key).await.map_err(|e| e.to_string())? {
            Some(e) if e.operation == Operation::Put => {
                if ahead(&e.value) {
                    return Ok(Some(e.value));
                }
                kv.update(key, value.clone(), e.revision).await.is_ok()
            }
            _ => kv.create(key, value.clone()).await.is_ok(),
        };
        if written {
            return Ok(None);
        }
    }
    Err(format!("contended: gave up after {attempts} attempts"))
}
