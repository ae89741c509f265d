//! The ID worker: a machine id leased in KV and the snowflake generator.
//!
//! The machine id is a lease (`machine.<n>` in the leases bucket) so two
//! live workers never share one. Each machine id also has a high-water mark
//! in the `chat_idhw` bucket (which never expires): the holder reserves
//! timestamps ahead of use, and a new holder of the same machine id starts
//! strictly after the reservation, so even a successor whose clock runs
//! behind cannot repeat an id.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use bytes::Bytes;
use chat_nats::snowflake::{self, Snowflake, MACHINES};
use chat_nats::subjects;

use crate::lease::Lease;

/// How far ahead of the clock a holder reserves timestamps.
const RESERVE: Duration = Duration::from_secs(30);

/// The wall clock as the worker sees it: system time plus a configured
/// offset (`CHAT_WORKER_CLOCK_OFFSET_MS`, used by tests to skew workers).
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Milliseconds added to the system clock.
    pub offset_ms: i64,
}

impl Clock {
    /// Current unix ms.
    pub fn now_ms(&self) -> u64 {
        let sys = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
        (sys + self.offset_ms).max(0) as u64
    }
}

/// A leased machine id and its generator.
#[derive(Debug)]
pub struct IdWorker {
    machine: u16,
    gen: Mutex<Gen>,
    idhw: kv::Store,
    clock: Clock,
}

#[derive(Debug)]
struct Gen {
    snowflake: Snowflake,
    reserved_ms: u64,
}

impl IdWorker {
    /// Leases the first free machine id, starting the scan at `start`.
    pub async fn acquire(
        leases: &kv::Store,
        idhw: &kv::Store,
        holder: &str,
        ttl: Duration,
        clock: Clock,
        start: u16,
    ) -> Result<(IdWorker, Lease), async_nats::Error> {
        for i in 0..MACHINES {
            let machine = (start + i) % MACHINES;
            // An error ends the scan: the bucket cannot be asked, and trying
            // the other 1,023 ids would only say "all taken".
            let Some(lease) = Lease::acquire(leases, subjects::machine_lease(machine), holder, ttl).await? else {
                continue;
            };
            let key = subjects::machine_lease(machine);
            let floor = match idhw.get(&key).await? {
                Some(v) => std::str::from_utf8(&v)?.parse::<u64>()?,
                None => 0,
            };
            let worker = IdWorker {
                machine,
                gen: Mutex::new(Gen { snowflake: Snowflake::new(machine, floor), reserved_ms: floor }),
                idhw: idhw.clone(),
                clock,
            };
            worker.reserve(clock.now_ms()).await?;
            return Ok((worker, lease));
        }
        Err("no free machine id: 1024 ID workers are live".into())
    }

    /// The machine id held.
    pub fn machine(&self) -> u16 {
        self.machine
    }

    /// Records a high-water mark covering `upto_ms` plus the reserve window.
    pub async fn reserve(&self, upto_ms: u64) -> Result<(), async_nats::Error> {
        let mark = upto_ms.max(self.lock().snowflake.last_unix_ms()) + RESERVE.as_millis() as u64;
        self.idhw.put(subjects::machine_lease(self.machine), Bytes::from(mark.to_string())).await?;
        let mut g = self.lock();
        g.reserved_ms = g.reserved_ms.max(mark);
        Ok(())
    }

    /// The next id greater than `min`, within the reservation (extending it
    /// first when the id would pass it).
    pub async fn next_after(&self, min: u64) -> Result<u64, async_nats::Error> {
        loop {
            let now = self.clock.now_ms();
            {
                let mut g = self.lock();
                let mut probe = g.snowflake.clone();
                let id = probe.next_after(now, min);
                if snowflake::unix_ms(id) <= g.reserved_ms {
                    g.snowflake = probe;
                    return Ok(id);
                }
            }
            let target = snowflake::unix_ms(min).max(now);
            self.reserve(target).await?;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Gen> {
        self.gen.lock().unwrap_or_else(|p| p.into_inner())
    }
}
