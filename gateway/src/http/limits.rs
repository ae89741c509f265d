//! Budgets of the HTTP API, counted per key on this gateway (in memory):
//! user lookups per user ([`crate::http::users`]), login attempts per
//! client address and failed logins per username, signups per client
//! address ([`crate::http::accounts`]), and the request body limit.
//!
//! The client address is the TCP peer of the connection ([`Peer`]): behind
//! a reverse proxy or load balancer it is the proxy's, so every client
//! behind it shares one budget (raise the per-address settings there).
//! `X-Forwarded-For` is not read. Each gateway counts on its own, so a
//! deployment of `n` gateways allows up to `n` times the budget to a client
//! that spreads its attempts.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use crate::conn::rate::TokenBucket;

/// Buckets kept before the full ones (keys unused for a while) are
/// dropped.
const PRUNE_AT: usize = 10_000;

/// The client address of a request, put in its extensions by the accept
/// loop.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub IpAddr);

/// The largest request body of a request (`CHAT_HTTP_MAX_BODY_BYTES`), put
/// in its extensions by [`crate::http::route`] for [`crate::http::read_json`].
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// A token bucket per key: `per_min` a minute, up to `burst` at once.
#[derive(Debug)]
pub struct Budget<K> {
    per_min: u32,
    burst: u32,
    buckets: Mutex<HashMap<K, TokenBucket>>,
}

impl<K: Hash + Eq> Budget<K> {
    /// `per_min` tokens a minute per key, up to `burst` at once.
    pub fn new(per_min: u32, burst: u32) -> Budget<K> {
        Budget { per_min, burst, buckets: Mutex::default() }
    }

    /// The refill rate, per minute (for messages).
    pub fn per_min(&self) -> u32 {
        self.per_min
    }

    fn with<T>(&self, key: K, f: impl FnOnce(&mut TokenBucket) -> T) -> T {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, b| !b.is_full());
        }
        let (rate, burst) = (f64::from(self.per_min) / 60.0, self.burst);
        f(buckets.entry(key).or_insert_with(|| TokenBucket::with_rate(rate, burst)))
    }

    /// Spends one of `key`'s tokens, or says how long until one is there.
    pub fn spend(&self, key: K) -> Result<(), Duration> {
        self.with(key, |b| if b.take() { Ok(()) } else { Err(b.retry_in()) })
    }

    /// Whether `key` has a token, without spending it (or how long until
    /// it has one).
    pub fn check(&self, key: &K) -> Result<(), Duration> {
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get(key).map(TokenBucket::retry_in) {
            Some(wait) if !wait.is_zero() => Err(wait),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Budget;

    #[test]
    fn each_key_has_a_budget_of_its_own_and_a_refusal_says_when_to_retry() {
        let b: Budget<&str> = Budget::new(60, 2);
        assert!(b.spend("a").is_ok() && b.spend("a").is_ok());
        let wait = b.spend("a").unwrap_err();
        assert!(wait.as_millis() > 900 && wait.as_millis() <= 1000, "{wait:?}");
        assert!(b.check(&"a").is_err(), "check sees the empty bucket");
        assert!(b.check(&"b").is_ok() && b.spend("b").is_ok());
    }
}
