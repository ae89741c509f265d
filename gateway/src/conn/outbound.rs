//! The bounded queue of frames from a session to its transport.
//!
//! Bounded by frames and by bytes, so server memory per connection is
//! bounded by the configured limits. Message delivery waits for room
//! ([`Outbound::push_wait`]): a client that reads slowly slows its own
//! catch-up down. A client that makes no progress for the stall timeout is
//! disconnected with [`CLOSE_SLOW_CONSUMER`]; so is one whose queue is full
//! when a control frame (ack, error, pong) must go out ([`Outbound::push`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

pub use crate::error::{
    CLOSE_BAD_UTF8, CLOSE_BANNED, CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_INTERNAL, CLOSE_LOGGED_OUT, CLOSE_NORMAL,
    CLOSE_PROTOCOL, CLOSE_RECONNECT_ELSEWHERE, CLOSE_SLOW_CONSUMER, CLOSE_TOO_BIG, CLOSE_UNAUTHORIZED,
};

/// Frames a control frame (ack, error, pong) may add beyond the frame
/// limit, so that a queue filled by message delivery does not turn a pong
/// into a disconnect.
const CONTROL_FRAMES: usize = 64;
/// Bytes control frames may add beyond the byte limit.
const CONTROL_BYTES: usize = 256 * 1024;

/// One queued frame; `epoch` 0 is always written, other epochs only while
/// current (a new `sync` drops the previous delivery's queued frames).
#[derive(Debug)]
struct Item {
    epoch: u64,
    text: String,
    stored: Option<Stored>,
}

/// A `msg` frame's message: when it was stored (Unix ms, its `ts`) and in
/// which phase of delivery it goes out, for the delivery lag metric.
pub type Stored = (u64, crate::metrics::Phase);

/// A frame for the transport to write.
#[derive(Debug, PartialEq)]
pub struct Frame {
    /// The frame's text.
    pub text: String,
    /// For a `msg` frame, when its message was stored and the phase.
    pub stored: Option<Stored>,
}

/// The sending half, held by the session and its delivery task.
#[derive(Debug)]
pub struct Outbound {
    shared: Arc<Shared>,
}

/// A queue that stays empty (no allocation) while nothing is queued: an
/// idle connection holds no queue storage. (A tokio mpsc channel allocates
/// a block of 32 slots up front; see docs/benchmarks.md, idle memory.)
#[derive(Debug)]
struct Shared {
    queue: Mutex<VecDeque<Item>>,
    /// Capacity of `queue`, in frames.
    cap: usize,
    /// Live [`Outbound`] handles; the queue ends when the last one drops.
    senders: AtomicUsize,
    bytes: AtomicUsize,
    frames: AtomicUsize,
    max_bytes: usize,
    max_frames: usize,
    epoch: std::sync::atomic::AtomicU64,
    closed: AtomicBool,
    close_code: AtomicUsize,
    notify: Notify,
    closed_notify: Notify,
    drained: Notify,
}

/// The receiving half, held by the transport's writer.
#[derive(Debug)]
pub struct OutboundRx {
    shared: Arc<Shared>,
}

/// Queue storage kept after the queue empties; beyond it, it is released.
const KEEP_SLOTS: usize = 8;

/// A queue bounded by `max_frames` frames and `max_bytes` bytes.
pub fn channel(max_frames: usize, max_bytes: usize) -> (Outbound, OutboundRx) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        cap: max_frames + CONTROL_FRAMES,
        senders: AtomicUsize::new(1),
        bytes: AtomicUsize::new(0),
        frames: AtomicUsize::new(0),
        max_bytes,
        max_frames,
        epoch: std::sync::atomic::AtomicU64::new(0),
        closed: AtomicBool::new(false),
        close_code: AtomicUsize::new(0),
        notify: Notify::new(),
        closed_notify: Notify::new(),
        drained: Notify::new(),
    });
    (Outbound { shared: shared.clone() }, OutboundRx { shared })
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Item>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Clone for Outbound {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Outbound { shared: self.shared.clone() }
    }
}

impl Drop for Outbound {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.notify.notify_one();
        }
    }
}

impl Outbound {
    /// Queues a frame; false (and the connection is being closed) when the
    /// client is too slow or the connection is gone.
    pub fn push(&self, frame: String) -> bool {
        self.push_item(Item { epoch: 0, text: frame, stored: None }, CONTROL_BYTES)
    }

    fn push_item(&self, item: Item, extra_bytes: usize) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        let len = item.text.len();
        let before = self.shared.bytes.fetch_add(len, Ordering::AcqRel);
        self.shared.frames.fetch_add(1, Ordering::AcqRel);
        let too_big = before > 0 && before + len > self.shared.max_bytes + extra_bytes;
        let queued = !too_big && {
            let mut q = self.shared.lock();
            let room = q.len() < self.shared.cap;
            if room {
                q.push_back(item);
            }
            room
        };
        if !queued {
            self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
            self.shared.frames.fetch_sub(1, Ordering::AcqRel);
            self.close(CLOSE_SLOW_CONSUMER);
            return false;
        }
        self.shared.notify.notify_one();
        true
    }

    /// Queues a live room frame only if the queue holds fewer than `limit`
    /// frames (and the bytes fit); false, with nothing queued and the
    /// connection untouched, otherwise. A room never waits for a viewer:
    /// the viewer skips the message instead (see `crate::rooms`).
    pub fn offer(&self, frame: String, limit: usize, stored: Option<Stored>) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        let queued = self.shared.bytes.load(Ordering::Acquire);
        let frames = self.shared.frames.load(Ordering::Acquire);
        let fits = queued == 0 || queued + frame.len() <= self.shared.max_bytes;
        if !fits || frames >= limit.min(self.shared.max_frames) {
            return false;
        }
        self.push_item(Item { epoch: 0, text: frame, stored }, 0)
    }

    /// Frames queued now.
    pub fn queued(&self) -> usize {
        self.shared.frames.load(Ordering::Acquire)
    }

    /// Starts a new delivery epoch: frames queued by earlier epochs and not
    /// yet written are dropped. Returns the new epoch.
    pub fn new_epoch(&self) -> u64 {
        self.shared.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Queues a frame, waiting up to `stall` for room; false (and the
    /// connection is being closed) when the client made no room in time.
    pub async fn push_wait(&self, frame: String, epoch: u64, stall: std::time::Duration) -> bool {
        self.push_stored(frame, epoch, stall, None).await
    }

    /// [`Outbound::push_wait`] for a `msg` frame of a `stored` message.
    pub async fn push_stored(
        &self,
        frame: String,
        epoch: u64,
        stall: std::time::Duration,
        stored: Option<Stored>,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + stall;
        let len = frame.len();
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return false;
            }
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            let queued = self.shared.bytes.load(Ordering::Acquire);
            let frames = self.shared.frames.load(Ordering::Acquire);
            // An empty queue takes any frame, however large.
            if (queued == 0 || queued + len <= self.shared.max_bytes) && frames < self.shared.max_frames {
                return self.push_item(Item { epoch, text: frame, stored }, 0);
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                self.close(CLOSE_SLOW_CONSUMER);
                return false;
            }
        }
    }

    /// Asks the transport to close the connection with `code`.
    pub fn close(&self, code: u16) {
        if !self.shared.closed.swap(true, Ordering::AcqRel) {
            self.shared.close_code.store(code.into(), Ordering::Release);
            self.shared.notify.notify_one();
            self.shared.closed_notify.notify_waiters();
        }
    }

    /// Resolves once a close was asked for.
    pub async fn closed(&self) {
        loop {
            let notified = self.shared.closed_notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_closed() {
                return;
            }
            notified.await;
        }
    }

    /// Waits until every queued frame was handed to the transport, or
    /// `deadline` passes.
    pub async fn flushed(&self, deadline: tokio::time::Instant) {
        loop {
            let drained = self.shared.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.shared.frames.load(Ordering::Acquire) == 0 || self.is_closed() {
                return;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return;
            }
        }
    }

    /// True once a close was asked for.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl OutboundRx {
    /// The next frame's text, or the close code once closing.
    pub async fn next(&mut self) -> Result<String, u16> {
        self.next_frame().await.map(|f| f.text)
    }

    /// The next frame to write, or the close code once closing.
    pub async fn next_frame(&mut self) -> Result<Frame, u16> {
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(self.shared.close_code.load(Ordering::Acquire) as u16);
            }
            let next = {
                let mut q = self.shared.lock();
                let f = q.pop_front();
                if q.is_empty() && q.capacity() > KEEP_SLOTS {
                    q.shrink_to(KEEP_SLOTS);
                }
                f
            };
            match next {
                Some(f) => {
                    self.shared.bytes.fetch_sub(f.text.len(), Ordering::AcqRel);
                    self.shared.frames.fetch_sub(1, Ordering::AcqRel);
                    self.shared.drained.notify_waiters();
                    if f.epoch != 0 && f.epoch < self.shared.epoch.load(Ordering::Acquire) {
                        continue;
                    }
                    return Ok(Frame { text: f.text, stored: f.stored });
                }
                None if self.shared.senders.load(Ordering::Acquire) == 0 => return Err(CLOSE_GOING_AWAY),
                // `notify_one` keeps a permit when nobody waits, so a frame
                // queued between the pop and this wait is not missed.
                None => self.shared.notify.notified().await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_by_frames_closes_with_slow_consumer() {
        let (tx, mut rx) = channel(2, 1 << 20);
        for _ in 0..2 + CONTROL_FRAMES {
            assert!(tx.push("a".into()));
        }
        assert!(!tx.push("c".into()));
        assert!(tx.is_closed());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(rx.next()), Err(CLOSE_SLOW_CONSUMER));
    }

    #[tokio::test]
    async fn push_wait_waits_for_room_then_gives_up() {
        let (tx, mut rx) = channel(1, 1 << 20);
        assert!(tx.push("a".into()));
        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.push_wait("b".into(), 0, std::time::Duration::from_secs(30)).await })
        };
        assert_eq!(rx.next().await, Ok("a".to_string()));
        assert!(waiter.await.unwrap(), "room was made");
        let stalled = tx.push_wait("c".into(), 0, std::time::Duration::from_millis(10)).await;
        assert!(!stalled);
        assert_eq!(rx.next().await, Err(CLOSE_SLOW_CONSUMER));
    }

    #[test]
    fn offer_refuses_past_its_limit_without_closing() {
        let (tx, _rx) = channel(100, 1 << 20);
        assert!(tx.offer("a".into(), 2, None));
        assert!(tx.offer("b".into(), 2, None));
        assert!(!tx.offer("c".into(), 2, None));
        assert!(!tx.is_closed());
        assert_eq!(tx.queued(), 2);
    }

    #[test]
    fn overflow_by_bytes() {
        let (tx, _rx) = channel(100, 10);
        assert!(tx.push("x".repeat(CONTROL_BYTES + 100)), "an empty queue takes any frame");
        assert!(!tx.push("123456".into()));
    }

    #[tokio::test]
    async fn a_new_epoch_drops_stale_delivery_frames_but_not_control_frames() {
        let (tx, mut rx) = channel(10, 1 << 20);
        let e1 = tx.new_epoch();
        assert!(tx.push_wait("old msg".into(), e1, std::time::Duration::from_secs(1)).await);
        assert!(tx.push("pong".into()));
        let e2 = tx.new_epoch();
        assert!(tx.push_wait("new msg".into(), e2, std::time::Duration::from_secs(1)).await);
        assert_eq!(rx.next().await, Ok("pong".to_string()));
        assert_eq!(rx.next().await, Ok("new msg".to_string()));
    }
}
