//! Leases in the NATS KV leases bucket.
//!
//! A lease is a key created atomically (`create` fails when the key exists)
//! and renewed by a compare-and-set on its revision. The bucket's `max_age`
//! is the lease time-to-live: a holder that stops renewing (crashed, cut
//! off) loses the key when it expires, and another process can create it.
//! A holder whose renewal fails has lost the lease and must stop acting on
//! it at once.

use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use bytes::Bytes;

/// A held lease.
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    key: String,
    revision: u64,
    renewed_at: Instant,
    ttl: Duration,
}

impl Lease {
    /// Takes the lease on `key` if nobody holds it.
    pub async fn acquire(kv: &kv::Store, key: String, holder: &str, ttl: Duration) -> Option<Lease> {
        let now = Instant::now();
        let revision = kv.create(&key, Bytes::from(holder.to_owned())).await.ok()?;
        Some(Lease { kv: kv.clone(), key, revision, renewed_at: now, ttl })
    }

    /// Extends the lease; an error means it was lost.
    pub async fn renew(&mut self, holder: &str) -> Result<(), async_nats::Error> {
        let started = Instant::now();
        if self.expired() {
            return Err("lease expired before renewal".into());
        }
        self.revision = self.kv.update(&self.key, Bytes::from(holder.to_owned()), self.revision).await?;
        self.renewed_at = started;
        Ok(())
    }

    /// True once the lease may have expired in the bucket: a holder stops
    /// acting a safety margin (a fifth of the TTL) before the key expires.
    pub fn expired(&self) -> bool {
        self.renewed_at.elapsed() >= self.ttl.mul_f32(0.8)
    }

    /// The instant after which the holder must stop acting on the lease.
    pub fn valid_until(&self) -> Instant {
        self.renewed_at + self.ttl.mul_f32(0.8)
    }

    /// The key held.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Gives the lease up so another process can take it at once; only if
    /// it is still ours (the revision we last wrote), never someone else's.
    pub async fn release(self) {
        if let Err(e) = self.kv.delete_expect_revision(&self.key, Some(self.revision)).await {
            tracing::debug!(key = %self.key, error = %e, "lease not released (no longer ours, or NATS down); it will expire");
        }
    }
}
