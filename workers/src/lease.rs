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
    /// `Ok(None)`: someone holds it; `Err`: the bucket could not be asked
    /// (NATS down, a cluster electing its leader), so nothing is known.
    pub async fn acquire(
        kv: &kv::Store,
        key: String,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, async_nats::Error> {
        let now = Instant::now();
        match kv.create(&key, Bytes::from(holder.to_owned())).await {
            Ok(revision) => Ok(Some(Lease { kv: kv.clone(), key, revision, renewed_at: now, ttl })),
            Err(e) if held(&e) => Ok(None),
            Err(e) => Err(e.into()),
        }
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

/// Whether a failed create means the key exists. async-nats 0.51 says
/// `AlreadyExists` only when its follow-up read of the key succeeds; under
/// load that read can fail too, and the error is then the server's refusal
/// of the create, "wrong last sequence" (10071, or 10164 from 2.12 on).
fn held(e: &kv::CreateError) -> bool {
    e.kind() == kv::CreateErrorKind::AlreadyExists || e.to_string().contains("wrong last sequence")
}
