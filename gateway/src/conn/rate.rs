//! Per-connection rate limiting: a token bucket over every client frame.

use std::time::Instant;

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket::with_rate(rate.into(), burst)
    }

    /// A full bucket refilled at `rate` tokens per second (a fraction for
    /// budgets counted per minute).
    pub fn with_rate(rate: f64, burst: u32) -> TokenBucket {
        TokenBucket { rate, burst: burst.into(), tokens: burst.into(), at: Instant::now() }
    }

    /// True when the bucket would be full now (nothing to remember).
    pub fn is_full(&self) -> bool {
        self.tokens + self.at.elapsed().as_secs_f64() * self.rate >= self.burst
    }

    /// How long until a token is there (zero when one is).
    pub fn retry_in(&self) -> std::time::Duration {
        let tokens = (self.tokens + self.at.elapsed().as_secs_f64() * self.rate).min(self.burst);
        std::time::Duration::from_secs_f64(((1.0 - tokens) / self.rate).max(0.0))
    }

    /// Takes a token if one is there.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
