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

    /// Writes what is recorded with `write`, `coalesce` after the first
    /// record of each round, until the process ends.
    pub async fn run<F, Fut>(self: Arc<Self>, coalesce: Duration, write: F)
    where
        F: Fn(K, V) -> Fut,
        Fut: Future<Output = ()>,
    {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(coalesce).await;
            let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            futures::stream::iter(batch).for_each_concurrent(FLUSH_CONCURRENCY, |(k, v)| write(k, v)).await;
        }
    }
}

/// Pending delivered marks of this gateway: user → the highest inbox
/// sequence handed to any of their devices.
pub type DeliveredMarks = Coalesced<i64, u64>;

/// Writes delivered marks until the process ends.
pub async fn run(marks: Arc<DeliveredMarks>, kv: kv::Store, coalesce: Duration) {
    marks
        .run(coalesce, |user, seq| {
            let kv = kv.clone();
            async move {
                if let Err(e) = raise(&kv, user, seq).await {
                    tracing::warn!(user_id = user, seq, error = %e, "cannot write the delivered mark");
                }
            }
        })
        .await
}

/// Raises the user's mark to `seq` unless it is already there.
pub async fn raise(kv: &kv::Store, user: i64, seq: u64) -> Result<(), async_nats::Error> {
    let key = subjects::delivered_key(user);
    let value = || Bytes::from(seq.to_string());
    for _ in 0..8 {
        let written = match kv.entry(&key).await? {
            Some(e) if e.operation == Operation::Put => {
                let current = std::str::from_utf8(&e.value).ok().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                if current >= seq {
                    return Ok(());
                }
                kv.update(&key, value(), e.revision).await.is_ok()
            }
            _ => kv.create(&key, value()).await.is_ok(),
        };
        if written {
            return Ok(());
        }
    }
    Err("delivered mark contended: gave up after 8 attempts".into())
}
