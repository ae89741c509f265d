//! Live inbox wake-ups: one core NATS subscription per user with a device
//! connected to this gateway, shared by all of that user's devices here
//! (through the gateway's [`Hub`]).
//!
//! The sequencer publishes the inbox stream sequence of every inbox copy it
//! stored on `chat.live.<user>` (core NATS, not persisted). A notification
//! carries no message: it only wakes the user's delivery tasks, which then
//! read the inbox *stream* forward from their own last delivered sequence
//! up to the copy it names (see `delivery`). So a lost, late or reordered notification can delay a
//! message but never skip, reorder or duplicate one. Notifications can be
//! lost while the gateway's NATS connection is down, or while a worker's
//! is; every user is woken when either comes back (and twice more within
//! seconds, while the cluster's routes settle), and every
//! `CHAT_LIVE_POLL_SECS` as a last resort.
//!
//! A connected device costs one broadcast receiver here instead of a
//! JetStream consumer (about 45 KiB in nats-server and a 5 s idle
//! heartbeat each).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chat_nats::subjects;

use crate::messaging::hub::{Hub, HubRx};

/// A device's wake-ups. Any number of notifications since the last wait
/// counts as one: the reader catches up on all of them at once.
#[derive(Debug)]
pub struct Wakeups(HubRx);

/// Wake-ups buffered per user: a reader busy writing to its socket keeps
/// the few that arrive meanwhile (each names its copy, so one already
/// delivered costs nothing) instead of skipping them and reading until
/// nothing is left.
const WAKE_BUFFER: usize = 4;

/// What a wake-up asks the reader to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// A copy was stored at this inbox sequence: read forward until it has
    /// been delivered (everything before it in the user's inbox comes
    /// first). A reader already past it has nothing to read.
    UpTo(u64),
    /// Read forward until nothing is left (the safety net, a reconnect, or
    /// notifications skipped by a slow reader).
    All,
}

/// Wake-ups of `user`, once its subscription is in place: anything stored in
/// the inbox after this returns is followed by a wake-up (or is found by the
/// first read, which the caller does anyway).
pub async fn watch(hub: &Arc<Hub>, user: i64) -> Result<Wakeups, async_nats::Error> {
    Ok(Wakeups(hub.subscribe(subjects::live(user), WAKE_BUFFER).await?))
}

impl Wakeups {
    /// Waits for the next wake-up; `None` if the feed ended.
    pub async fn changed(&mut self) -> Option<Wake> {
        // The sequencer's payload is the copy's sequence. The hub's pokes are
        // empty, and notifications skipped by a slow reader (the buffer holds
        // buffer) may have named a later copy than the one left: read all.
        let payload = self.0.recv_or_skipped().await?;
        let seq = payload.as_deref().and_then(|p| std::str::from_utf8(p).ok()).and_then(subjects::parse_seq);
        Some(seq.map_or(Wake::All, Wake::UpTo))
    }
}

/// Wakes every user on reconnects of the NATS client (notifications may
/// have been lost while it was down) or when a worker asks (its own
/// reconnect), again while the cluster settles, and every `poll`.
pub async fn run_safety_net(client: async_nats::Client, hub: Arc<Hub>, poll: Duration) {
    // A worker that reconnected asks for a re-read (its last wake-ups may be
    // lost): on the next tick, as after our own reconnect.
    let asked = Arc::new(std::sync::atomic::AtomicBool::new(false));
    match client.subscribe(subjects::wake_all()).await {
        Ok(mut sub) => {
            let asked = asked.clone();
            tokio::spawn(async move {
                while futures::StreamExt::next(&mut sub).await.is_some() {
                    asked.store(true, Ordering::Relaxed);
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot subscribe to workers' re-read requests"),
    }
    let stats = client.statistics();
    let mut connects = stats.connects.load(Ordering::Relaxed);
    let mut last_poll = tokio::time::Instant::now();
    // Re-reads still due after a reconnect (see `subjects::REWAKE_AFTER`).
    let mut due: Vec<tokio::time::Instant> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    let prefix = subjects::live_prefix();
    loop {
        tick.tick().await;
        let now = stats.connects.load(Ordering::Relaxed);
        if now != connects || asked.swap(false, Ordering::Relaxed) {
            connects = now;
            let at = tokio::time::Instant::now();
            due = subjects::REWAKE_AFTER.iter().map(|d| at + *d).collect();
        }
        let before = due.len();
        due.retain(|t| *t > tokio::time::Instant::now());
        if due.len() < before || last_poll.elapsed() >= poll {
            last_poll = tokio::time::Instant::now();
            hub.poke(&prefix);
        }
    }
}
