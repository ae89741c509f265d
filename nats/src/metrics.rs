//! What every process's `/metrics` shares: the Prometheus text exposition
//! (format 0.0.4) of a `prometheus-client` registry, and a collector for
//! the NATS connection's own counters (read at scrape time, nothing on the
//! hot path).

use std::sync::atomic::Ordering;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub use prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The registry as Prometheus text.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::with_capacity(32 * 1024);
    prometheus_client::encoding::prometheus_text::encode(&mut text, registry)
        .expect("encoding into a String cannot fail");
    text
}

/// A histogram of seconds from 0.5 ms to about 33 s (17 buckets, ×2).
pub fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 17))
}

/// Makes [`seconds_histogram`]s for a labelled family
/// (`Family::new_with_constructor(Seconds)`).
#[derive(Debug, Clone, Copy)]
pub struct Seconds;

impl prometheus_client::metrics::family::MetricConstructor<Histogram> for Seconds {
    fn new_metric(&self) -> Histogram {
        seconds_histogram()
    }
}

/// A histogram of counts from 1 to 65,536 (17 buckets, ×2).
pub fn count_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 17))
}

/// Seconds since `start`, for a histogram.
pub fn secs(start: std::time::Instant) -> f64 {
    start.elapsed().as_secs_f64()
}

/// The NATS connection's counters (`async_nats::Client::statistics`) and
/// state, read at every scrape.
#[derive(Debug)]
pub struct NatsCollector(pub async_nats::Client);

/// Encodes one counter read at scrape time (a collector's value).
pub fn const_counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> std::fmt::Result {
    let c = ConstCounter::new(value);
    c.encode(encoder.encode_descriptor(name, help, None, c.metric_type())?)
}

/// Encodes one gauge read at scrape time (a collector's value).
pub fn const_gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: i64) -> std::fmt::Result {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for NatsCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats = self.0.statistics();
        let counters = [
            (
                "chat_nats_reconnects",
                "NATS connections re-established after the first",
                stats.connects.load(Ordering::Relaxed).saturating_sub(1),
            ),
            ("chat_nats_in_messages", "Messages received from NATS", stats.in_messages.load(Ordering::Relaxed)),
            ("chat_nats_out_messages", "Messages sent to NATS", stats.out_messages.load(Ordering::Relaxed)),
            ("chat_nats_in_bytes", "Payload bytes received from NATS", stats.in_bytes.load(Ordering::Relaxed)),
            ("chat_nats_out_bytes", "Payload bytes sent to NATS", stats.out_bytes.load(Ordering::Relaxed)),
        ];
        for (name, help, value) in counters {
            const_counter(&mut encoder, name, help, value)?;
        }
        let connected = i64::from(self.0.connection_state() == async_nats::connection::State::Connected);
        const_gauge(&mut encoder, "chat_nats_connected", "1 while the NATS connection is up", connected)
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[test]
    fn encodes_prometheus_text() {
        let mut r = Registry::default();
        let c = Counter::<u64>::default();
        r.register("chat_things", "Things", c.clone());
        let h = seconds_histogram();
        r.register("chat_wait_seconds", "Waits", h.clone());
        c.inc_by(3);
        h.observe(0.002);
        let text = encode(&r);
        assert!(text.contains("# TYPE chat_things_total counter\nchat_things_total 3\n"), "{text}");
        assert!(text.contains("chat_wait_seconds_bucket{le=\"0.002\"} 1\n"), "{text}");
        assert!(text.contains("chat_wait_seconds_count 1\n"), "{text}");
        assert!(!text.contains("# EOF"), "Prometheus text, not OpenMetrics");
    }
}
