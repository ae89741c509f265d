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

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use chat_nats::subjects;
use futures::StreamExt;
use tokio::sync::Notify;

/// Writes at most this many users' marks at once.
const FLUSH_CONCURRENCY: usize = 64;

/// Pending marks of this gateway.
#[derive(Debug, Default)]
pub struct DeliveredMarks {
    pending: Mutex<HashMap<i64, u64>>,
    wake: Notify,
}

impl DeliveredMarks {
    /// Records that the copy at inbox sequence `seq` reached a device of
    /// `user`.
    pub fn record(&self, user: i64, seq: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let first = p.is_empty();
        let e = p.entry(user).or_insert(0);
        *e = (*e).max(seq);
        if first {
            self.wake.notify_one();
        }
    }

    /// Writes recorded marks until the process ends.
    pub async fn run(self: Arc<Self>, kv: kv::Store, coalesce: Duration) {
        loop {
            self.wake.notified().await;
            tokio::time::sleep(coalesce).await;
            let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()));
            futures::stream::iter(batch)
                .for_each_concurrent(FLUSH_CONCURRENCY, |(user, seq)| {
                    let kv = kv.clone();
                    async move {
                        if let Err(e) = raise(&kv, user, seq).await {
                            tracing::warn!(user_id = user, seq, error = %e, "cannot write the delivered mark");
                        }
                    }
                })
                .await;
        }
    }
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
