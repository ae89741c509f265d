//! Live inbox wake-ups: one core NATS subscription per user with a device
//! connected to this gateway, shared by all of that user's devices here
//! (through the gateway's [`Hub`]).
//!
//! The inbox stream republishes every copy it stores on `chat.live.<user>`
//! (core NATS, not persisted; `republish` in the stream's configuration),
//! with its stream sequence and the sequence of the copy stored before it
//! on the same user's subject (`Nats-Sequence`, `Nats-Last-Sequence`), set
//! by nats-server as it stores the copy. A delivery task whose last
//! delivered copy is that previous one delivers the copy as it came, with
//! no read: the server vouches that nothing of the user's lies between.
//! Any other wake-up only wakes the user's delivery tasks, which then read
//! the inbox *stream* forward from their own last delivered sequence up to
//! the copy it names (see `delivery`). So a lost, late or reordered
//! notification can delay a message but never skip, reorder or duplicate
//! one. Sequencers of older builds (or an inbox stream without
//! `republish`) publish the bare sequence instead. Notifications can be
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
/// those that arrive meanwhile (each names its copy, so one already
/// delivered costs nothing, and a republished one is delivered without a
/// read) instead of skipping them and reading until nothing is left. A
/// republished copy is held only until every delivery task of its user on
/// this gateway has taken it.
const WAKE_BUFFER: usize = 16;

/// What a wake-up asks the reader to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wake {
    /// The stream republished a copy stored at `seq`, the user's previous
    /// one being at `last`: a reader whose last delivered sequence is in
    /// `last..seq` delivers `payload` without reading; any other reads up
    /// to `seq`, as for [`Wake::UpTo`].
    Copy { seq: u64, last: u64, payload: bytes::Bytes },
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
        // A republished copy says where it is; an older sequencer's payload
        // is the copy's sequence. The hub's pokes are empty, and
        // notifications skipped by a slow reader (the buffer holds
        // WAKE_BUFFER) may have named a later copy than the one left: read
        // all.
        let Some(m) = self.0.recv_msg_or_skipped().await? else { return Some(Wake::All) };
        if let Some(r) = m.stored {
            return Some(Wake::Copy { seq: r.seq, last: r.last, payload: m.payload });
        }
        let seq = std::str::from_utf8(&m.payload).ok().and_then(subjects::parse_seq);
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
