//! Open-loop pacing and the clock latencies are measured on.
//!
//! Send times are scheduled at a fixed interval before the run and every
//! latency is measured from the *scheduled* time, not from when the send
//! actually left: a stalled system then shows its stall in the figures
//! instead of silently sending less (no coordinated omission).
//!
//! The schedule is kept by a dedicated OS thread (`std::thread::sleep` is
//! precise to tens of microseconds; tokio's timer wheel rounds up to whole
//! milliseconds, which would add up to 1 ms of fake latency to every
//! sample). It hands each tick to the task that sends it over an
//! unbounded channel, so a slow sender never delays the schedule.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::report::Lat;

/// The instant every timestamp of this process counts from.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since this process's clock base.
pub fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// An instant as nanoseconds since the clock base.
pub fn ns_of(at: Instant) -> u64 {
    at.saturating_duration_since(base()).as_nanos() as u64
}

/// Time since `ns` (a value of [`now_ns`]), in microseconds.
pub fn us_since(ns: u64) -> u64 {
    now_ns().saturating_sub(ns) / 1000
}

/// One scheduled send.
#[derive(Debug, Clone, Copy)]
pub struct Tick {
    /// Sequence number over the whole run.
    pub seq: u64,
    /// Scheduled time, in [`now_ns`] nanoseconds.
    pub at_ns: u64,
}

/// What a pacer did.
#[derive(Debug, Default)]
pub struct Paced {
    /// Ticks sent.
    pub ticks: u64,
    /// Scheduled time of the first tick, in [`now_ns`] nanoseconds.
    pub start_ns: u64,
    /// How late each tick was handed over (scheduled → dispatched): the
    /// floor of every latency measured from it.
    pub lateness: Lat,
}

/// Lowers this thread's timer slack to 1 ns (default 50 µs) so sleeps end
/// closer to their deadline; best effort (`/proc/<tid>/timerslack_ns`).
fn tighten_timer_slack() {
    if let Ok(link) = std::fs::read_link("/proc/thread-self") {
        if let Some(tid) = link.to_str().and_then(|l| l.rsplit('/').next()) {
            let _ = std::fs::write(format!("/proc/{tid}/timerslack_ns"), "1");
        }
    }
}

/// Emits `rate` ticks per second for `duration` (at least one tick),
/// round-robin over `targets`, starting 20 ms from now. The channels are
/// dropped at the end, so receivers see the end of the run.
pub fn pace(
    rate: f64,
    duration: Duration,
    first_seq: u64,
    targets: Vec<UnboundedSender<Tick>>,
) -> std::thread::JoinHandle<Paced> {
    let total = ((rate * duration.as_secs_f64()).round() as u64).max(1);
    let start = Instant::now() + Duration::from_millis(20);
    std::thread::spawn(move || {
        let out = Paced { ticks: 0, start_ns: ns_of(start), lateness: Lat::default() };
        if targets.is_empty() {
            return out;
        }
        tighten_timer_slack();
        let interval = 1.0 / rate.max(1e-9);
        for i in 0..total {
            let at = start + Duration::from_secs_f64(i as f64 * interval);
            let now = Instant::now();
            if at > now {
                std::thread::sleep(at - now);
            }
            let tick = Tick { seq: first_seq + i, at_ns: ns_of(at) };
            let _ = targets[(i % targets.len() as u64) as usize].send(tick);
            out.lateness.record(at.elapsed());
        }
        Paced { ticks: total, ..out }
    })
}

/// Waits (async) for a pacer thread to finish.
pub async fn join(h: std::thread::JoinHandle<Paced>) -> Paced {
    tokio::task::spawn_blocking(move || h.join().unwrap_or_default()).await.unwrap_or_default()
}

/// A message body of `size` bytes that carries its scheduled send time:
/// `t<ns>.` followed by padding.
pub fn body(at_ns: u64, size: usize) -> String {
    let mut b = format!("t{at_ns}.");
    if b.len() < size {
        b.extend(std::iter::repeat_n('x', size - b.len()));
    }
    b
}

/// The scheduled send time carried by a [`body`].
pub fn parse_body(b: &str) -> Option<u64> {
    b.strip_prefix('t')?.split_once('.')?.0.parse().ok()
}

/// A small, fast, seedable random number generator (xorshift64*), enough
/// to pick random pages; no cryptographic use.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed` (0 is replaced by a constant).
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// A generator seeded from the clock.
    pub fn from_clock() -> Rng {
        Rng::new(
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64
        )
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_their_time() {
        let b = body(123_456, 100);
        assert_eq!(b.len(), 100);
        assert_eq!(parse_body(&b), Some(123_456));
        assert_eq!(parse_body(&body(7, 1)), Some(7));
        assert_eq!(parse_body("hello"), None);
    }

    #[test]
    fn pacer_keeps_the_schedule() {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (tx2, mut rx2) = tokio::sync::mpsc::unbounded_channel();
        let p = pace(1000.0, Duration::from_millis(100), 5, vec![tx, tx2]).join().unwrap();
        let (n, start) = (p.ticks, p.start_ns);
        assert_eq!(n, 100);
        assert_eq!(p.lateness.count(), 100);
        let mut a = vec![];
        while let Ok(t) = rx.try_recv() {
            a.push(t);
        }
        assert_eq!(a.len(), 50);
        assert_eq!(a[0].seq, 5);
        assert_eq!(a[0].at_ns, start);
        assert_eq!(rx2.try_recv().unwrap().at_ns, start + 1_000_000);
    }

    #[test]
    fn rng_ranges() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            let v = r.range(3, 5);
            assert!((3..=5).contains(&v));
        }
    }
}
