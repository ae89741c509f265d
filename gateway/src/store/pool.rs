//! The connection pool with its metrics: how long each `get` waited for a
//! connection, how many failed, and (read at scrape time) the pool's size,
//! connections in use and requests waiting. [`TimedPool::get`] has the
//! signature of `Pool::get`, so the queries beside it use it unchanged.

use std::time::Instant;

use deadpool_postgres::{Object, Pool, PoolError};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A pool whose waits are measured.
#[derive(Clone)]
pub struct TimedPool {
    inner: Pool,
    wait: Histogram,
    failed: Counter,
}

impl TimedPool {
    /// Wraps `inner`.
    pub fn new(inner: Pool) -> TimedPool {
        TimedPool { inner, wait: chat_nats::metrics::seconds_histogram(), failed: Counter::default() }
    }

    /// A connection from the pool (waits while all are in use).
    pub async fn get(&self) -> Result<Object, PoolError> {
        let started = Instant::now();
        let got = self.inner.get().await;
        self.wait.observe(chat_nats::metrics::secs(started));
        if got.is_err() {
            self.failed.inc();
        }
        got
    }

    /// Registers the pool's metrics.
    pub fn register(&self, r: &mut Registry) {
        r.register(
            "chat_pg_pool_wait_seconds",
            "Time a query waited for a PostgreSQL connection from the pool",
            self.wait.clone(),
        );
        r.register(
            "chat_pg_pool_get_errors",
            "Pool requests that got no connection (database down, timeout)",
            self.failed.clone(),
        );
        r.register_collector(Box::new(PoolCollector(self.inner.clone())));
    }
}

/// The pool's state at scrape time.
struct PoolCollector(Pool);

impl std::fmt::Debug for PoolCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PoolCollector")
    }
}

impl Collector for PoolCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = self.0.status();
        let gauges = [
            ("chat_pg_pool_max", "Most connections the pool opens (CHAT_DB_POOL_SIZE)", s.max_size),
            ("chat_pg_pool_open", "PostgreSQL connections open", s.size),
            ("chat_pg_pool_in_use", "PostgreSQL connections handed out", s.size.saturating_sub(s.available)),
            ("chat_pg_pool_waiting", "Requests waiting for a PostgreSQL connection", s.waiting),
        ];
        for (name, help, value) in gauges {
            let g = ConstGauge::new(value as i64);
            g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)?;
        }
        Ok(())
    }
}
