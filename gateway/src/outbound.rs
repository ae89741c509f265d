//! The bounded queue of frames from a session to its transport.
//!
//! Bounded by frames and by bytes, so server memory per connection is
//! bounded by the configured limits. Message delivery waits for room
//! ([`Outbound::push_wait`]): a client that reads slowly slows its own
//! catch-up down. A client that makes no progress for the stall timeout is
//! disconnected with [`CLOSE_SLOW_CONSUMER`]; so is one whose queue is full
//! when a control frame (ack, error, pong) must go out ([`Outbound::push`]).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

/// Close code: the client did not read fast enough.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code: the server could not keep the session going (NATS lost);
/// reconnect and `sync` from the last cursor.
pub const CLOSE_INTERNAL: u16 = 1011;
/// Close code: the connection was idle past the idle timeout.
pub const CLOSE_IDLE: u16 = 4002;
/// Close code: the gateway is shutting down; reconnect (to any gateway).
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code: a message larger than the configured maximum frame size.
pub const CLOSE_TOO_BIG: u16 = 1009;
/// Close code: a text frame that is not valid UTF-8.
pub const CLOSE_BAD_UTF8: u16 = 1007;

/// The sending half, held by the session and its delivery task.
#[derive(Debug, Clone)]
pub struct Outbound {
    tx: mpsc::Sender<String>,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    bytes: AtomicUsize,
    max_bytes: usize,
    closed: AtomicBool,
    close_code: AtomicUsize,
    notify: Notify,
    closed_notify: Notify,
    drained: Notify,
}

/// The receiving half, held by the transport's writer.
#[derive(Debug)]
pub struct OutboundRx {
    rx: mpsc::Receiver<String>,
    shared: Arc<Shared>,
}

/// A queue bounded by `max_frames` frames and `max_bytes` bytes.
pub fn channel(max_frames: usize, max_bytes: usize) -> (Outbound, OutboundRx) {
    let (tx, rx) = mpsc::channel(max_frames);
    let shared = Arc::new(Shared {
        bytes: AtomicUsize::new(0),
        max_bytes,
        closed: AtomicBool::new(false),
        close_code: AtomicUsize::new(0),
        notify: Notify::new(),
        closed_notify: Notify::new(),
        drained: Notify::new(),
    });
    (Outbound { tx, shared: shared.clone() }, OutboundRx { rx, shared })
}

impl Outbound {
    /// Queues a frame; false (and the connection is being closed) when the
    /// client is too slow or the connection is gone.
    pub fn push(&self, frame: String) -> bool {
        if self.shared.closed.load(Ordering::Acquire) {
            return false;
        }
        let len = frame.len();
        let before = self.shared.bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.shared.max_bytes || self.tx.try_send(frame).is_err() {
            self.shared.bytes.fetch_sub(len, Ordering::AcqRel);
            self.close(CLOSE_SLOW_CONSUMER);
            return false;
        }
        true
    }

    /// Queues a frame, waiting up to `stall` for room; false (and the
    /// connection is being closed) when the client made no room in time.
    pub async fn push_wait(&self, frame: String, stall: std::time::Duration) -> bool {
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
            // An empty queue takes any frame, however large.
            if (queued == 0 || queued + len <= self.shared.max_bytes) && self.tx.capacity() > 0 {
                return self.push(frame);
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

    /// True once a close was asked for.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Acquire)
    }
}

impl OutboundRx {
    /// The next frame to write, or the close code once closing.
    pub async fn next(&mut self) -> Result<String, u16> {
        loop {
            if self.shared.closed.load(Ordering::Acquire) {
                return Err(self.shared.close_code.load(Ordering::Acquire) as u16);
            }
            tokio::select! {
                biased;
                _ = self.shared.notify.notified() => continue,
                f = self.rx.recv() => match f {
                    Some(f) => {
                        self.shared.bytes.fetch_sub(f.len(), Ordering::AcqRel);
                        self.shared.drained.notify_waiters();
                        return Ok(f);
                    }
                    None => return Err(CLOSE_GOING_AWAY),
                },
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
        assert!(tx.push("a".into()));
        assert!(tx.push("b".into()));
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
            tokio::spawn(async move { tx.push_wait("b".into(), std::time::Duration::from_secs(30)).await })
        };
        assert_eq!(rx.next().await, Ok("a".to_string()));
        assert!(waiter.await.unwrap(), "room was made");
        let stalled = tx.push_wait("c".into(), std::time::Duration::from_millis(10)).await;
        assert!(!stalled);
        assert_eq!(rx.next().await, Err(CLOSE_SLOW_CONSUMER));
    }

    #[test]
    fn overflow_by_bytes() {
        let (tx, _rx) = channel(100, 10);
        assert!(tx.push("12345".into()));
        assert!(!tx.push("123456".into()));
    }
}
