//! Shared core NATS subscriptions: one per subject per gateway, fanned out
//! to every local session that wants it.
//!
//! Sessions of the same user (wake-ups, ephemeral events) and sessions
//! following the same user's presence would otherwise hold one
//! subscription each; through the hub they share one, and each session
//! holds a small broadcast receiver. The subscription ends with its last
//! receiver.
//!
//! The subscriptions ride on the gateway's own subscribing connection
//! ([`super::subs`]), where one costs a map entry. With a `tls://` NATS
//! server each is an async-nats subscription and a feed task instead
//! (about 6 KB each for the subscription's channel).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use chat_nats::provision::Credentials;

use super::subs::Subscriber;

/// Messages buffered per subject for a receiver that falls behind; past
/// that it skips to the newest (ephemeral events and presence states are
/// not worth holding a connection for). Wake-up subjects need a few (see
/// `live`).
pub const BUFFER: usize = 64;

/// The gateway's shared subscriptions.
#[derive(Debug)]
pub struct Hub {
    client: async_nats::Client,
    shared: Option<Subscriber>,
    subs: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    tx: Arc<Ring>,
    refs: usize,
    feed: Feed,
}

/// Where an entry's messages come from.
#[derive(Debug)]
enum Feed {
    /// A subscription on the shared connection.
    Shared(u64),
    /// An async-nats subscription read by a task, in place once `ready`.
    Task { ready: watch::Receiver<bool>, task: JoinHandle<()> },
}

impl Feed {
    fn end(self, shared: Option<&Subscriber>) {
        match self {
            Feed::Shared(sid) => {
                if let Some(s) = shared {
                    s.unsubscribe(sid);
                }
            }
            Feed::Task { task, .. } => task.abort(),
        }
    }
}

/// A message on a shared subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Msg {
    pub payload: Bytes,
    /// Where a stream stored it, if a stream republished it.
    pub stored: Option<Republished>,
}

impl Msg {
    fn poke() -> Msg {
        Msg { payload: Bytes::new(), stored: None }
    }
}

/// The stream position of a message a JetStream stream republished
/// (`republish` in its configuration): headers `Nats-Sequence` and
/// `Nats-Last-Sequence`, which the server sets when it stores the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Republished {
    /// The message's stream sequence.
    pub seq: u64,
    /// The sequence of the message on the same subject stored before it
    /// (0: none), as the stream had it when it stored this one.
    pub last: u64,
}

/// The republish headers read (the first is a direct get's too).
const SEQUENCE: &str = chat_nats::history::direct_get::SEQUENCE_HEADER;
const LAST_SEQUENCE: &str = "Nats-Last-Sequence";

impl Republished {
    /// From a raw header block (`NATS/1.0\r\nName: value\r\n...`); `None`
    /// unless it has both headers, well formed, for a later `seq`.
    pub fn from_block(block: &[u8]) -> Option<Republished> {
        let text = std::str::from_utf8(block).ok()?;
        let (mut seq, mut last) = (None, None);
        for line in text.split("\r\n").skip(1) {
            let Some((name, value)) = line.split_once(':') else { continue };
            let value = value.trim().parse::<u64>().ok();
            match name.trim() {
                SEQUENCE => seq = value,
                LAST_SEQUENCE => last = value,
                _ => {}
            }
        }
        Republished::checked(seq?, last?)
    }

    /// From async-nats headers.
    pub fn from_headers(h: &async_nats::HeaderMap) -> Option<Republished> {
        let num = |name: &str| h.get(name).and_then(|v| v.as_str().trim().parse::<u64>().ok());
        Republished::checked(num(SEQUENCE)?, num(LAST_SEQUENCE)?)
    }

    fn checked(seq: u64, last: u64) -> Option<Republished> {
        (seq > last).then_some(Republished { seq, last })
    }
}

/// A session's receiver of one subject's payloads.
#[derive(Debug)]
pub struct HubRx {
    rx: RingRx,
    hub: Arc<Hub>,
    subject: String,
}

impl Hub {
    /// No subscriptions yet. With `shared` (the servers, the connection's
    /// name and credentials) subscriptions go on a subscribing connection
    /// of the hub's own; without, each is an async-nats subscription of
    /// `client`.
    pub fn new(client: async_nats::Client, shared: Option<(Vec<String>, String, Option<Credentials>)>) -> Arc<Hub> {
        Arc::new_cyclic(|hub: &Weak<Hub>| {
            let shared = shared.map(|(servers, name, credentials)| {
                let hub = hub.clone();
                let on_reconnect = Box::new(move || {
                    if let Some(hub) = hub.upgrade() {
                        hub.poke_all();
                    }
                });
                Subscriber::start(servers, name, credentials, on_reconnect)
            });
            Hub { client, shared, subs: Mutex::new(HashMap::new()) }
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receives what is published on `subject` from the moment this returns
    /// (the shared subscription is then in place on the server), buffering
    /// up to `buffer` messages for a slow receiver (set by the first).
    pub async fn subscribe(self: &Arc<Self>, subject: String, buffer: usize) -> Result<HubRx, async_nats::Error> {
        let (rx, ready) = {
            let mut subs = self.lock();
            match subs.get_mut(&subject) {
                Some(e) => {
                    e.refs += 1;
                    let ready = match &e.feed {
                        Feed::Shared(_) => None,
                        Feed::Task { ready, .. } => Some(ready.clone()),
                    };
                    (e.tx.subscribe(), ready)
                }
                None => {
                    let tx = Ring::new(buffer);
                    let rx = tx.subscribe();
                    let (feed, ready) = match &self.shared {
                        Some(shared) => {
                            let to = tx.clone();
                            let handler = Box::new(move |headers: &[u8], payload| {
                                to.send(Msg { payload, stored: Republished::from_block(headers) })
                            });
                            let sid = shared.subscribe(subject.clone(), handler);
                            (Feed::Shared(sid), None)
                        }
                        None => {
                            let (ready_tx, ready) = watch::channel(false);
                            let task = tokio::spawn(feed(self.client.clone(), subject.clone(), tx.clone(), ready_tx));
                            (Feed::Task { ready: ready.clone(), task }, Some(ready))
                        }
                    };
                    subs.insert(subject.clone(), Entry { tx, refs: 1, feed });
                    (rx, ready)
                }
            }
        };
        let handle = HubRx { rx, hub: self.clone(), subject };
        // Shared: a round trip after the SUB (sent before this flush, by
        // this call or the one that made the entry) proves it is in place.
        let in_place = match (ready, &self.shared) {
            (Some(mut ready), _) => {
                matches!(tokio::time::timeout(WAIT_IN_PLACE, ready.wait_for(|r| *r)).await, Ok(Ok(_)))
            }
            (None, Some(shared)) => tokio::time::timeout(WAIT_IN_PLACE, Box::pin(shared.flush())).await.is_ok(),
            (None, None) => false,
        };
        if in_place {
            Ok(handle)
        } else {
            Err(format!("subscription to {} not in place within {WAIT_IN_PLACE:?}", handle.subject).into())
        }
    }

    /// Subjects subscribed, and the subscribing connection's state (up,
    /// reconnects) if the hub has one.
    pub fn stats(&self) -> (usize, Option<(bool, u64)>) {
        (self.lock().len(), self.shared.as_ref().map(|s| (s.connected(), s.reconnects())))
    }

    /// Wakes every receiver with an empty payload (after the shared
    /// connection came back: anything published while it was away is
    /// lost).
    pub fn poke_all(&self) {
        self.poke("");
    }
}

/// How long [`Hub::subscribe`] waits for the server to have the
/// subscription.
const WAIT_IN_PLACE: Duration = Duration::from_secs(10);

/// Forwards one subject's payloads to its receivers.
async fn feed(client: async_nats::Client, subject: String, tx: Arc<Ring>, ready: watch::Sender<bool>) {
    // Transient awaits boxed: a feed task is resident while its subject
    // has receivers.
    let mut sub = loop {
        match Box::pin(client.subscribe(subject.clone())).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(subject, error = %e, "subscription failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // In place on the server once a round trip after it has completed (a
    // flush that failed proves nothing: the connection may be down and the
    // subscription not yet on any server).
    while let Err(e) = Box::pin(client.flush()).await {
        tracing::debug!(subject, error = %e, "flush after subscribe failed; retrying");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = ready.send(true);
    while let Some(m) = sub.next().await {
        let stored = m.headers.as_ref().and_then(Republished::from_headers);
        tx.send(Msg { payload: m.payload, stored });
    }
}

impl Hub {
    /// Wakes every receiver of a subject starting with `prefix` with an
    /// empty payload (see `live`).
    pub fn poke(&self, prefix: &str) {
        for (subject, e) in self.lock().iter() {
            if subject.starts_with(prefix) {
                e.tx.send(Msg::poke());
            }
        }
    }
}

impl HubRx {
    /// The next payload; `None` if the subscription ended.
    pub async fn recv(&mut self) -> Option<Bytes> {
        loop {
            match self.recv_or_skipped().await? {
                Some(b) => return Some(b),
                None if self.rx.is_empty() => return Some(Bytes::new()),
                None => {}
            }
        }
    }

    /// The next payload, or `Some(None)` when this receiver fell behind and
    /// skipped some; `None` if the subscription ended.
    /// Cancel-safe: nothing is taken unless it is returned.
    pub async fn recv_or_skipped(&mut self) -> Option<Option<Bytes>> {
        Some(self.recv_msg_or_skipped().await?.map(|m| m.payload))
    }

    /// [`HubRx::recv_or_skipped`] with the whole message.
    pub async fn recv_msg_or_skipped(&mut self) -> Option<Option<Msg>> {
        match self.rx.recv().await {
            Ok(m) => Some(Some(m)),
            Err(n) => {
                tracing::debug!(subject = %self.subject, skipped = n, "slow receiver skipped messages");
                Some(None)
            }
        }
    }
}

impl Drop for HubRx {
    fn drop(&mut self) {
        let mut subs = self.hub.lock();
        if let Some(e) = subs.get_mut(&self.subject) {
            e.refs -= 1;
            if e.refs == 0 {
                if let Some(e) = subs.remove(&self.subject) {
                    e.feed.end(self.hub.shared.as_ref());
                }
            }
        }
    }
}

/// One subject's payloads, each kept until every receiver that was there
/// when it arrived has read it, and at most `cap` of them: past that the
/// oldest goes, and a receiver that had not read it skips ahead. Unlike a
/// tokio broadcast channel, which allocates all its slots up front, an
/// idle ring holds no storage.
#[derive(Debug)]
pub(crate) struct Ring {
    state: Mutex<RingState>,
    notify: Notify,
}

#[derive(Debug)]
struct RingState {
    /// Sequence number of `items[0]`.
    first: u64,
    /// Messages with how many receivers have yet to read each.
    items: VecDeque<(Msg, usize)>,
    receivers: usize,
    cap: usize,
}

impl RingState {
    /// Drops the payloads at the front that everyone has read, and the
    /// storage of an emptied ring.
    fn trim(&mut self) {
        while self.items.front().is_some_and(|(_, rem)| *rem == 0) {
            self.items.pop_front();
            self.first += 1;
        }
        if self.items.is_empty() && self.items.capacity() > 0 {
            self.items = VecDeque::new();
        }
    }
}

/// A receiver of a [`Ring`]: reads from where it was when it subscribed.
#[derive(Debug)]
pub(crate) struct RingRx {
    ring: Arc<Ring>,
    next: u64,
}

impl Ring {
    pub(crate) fn new(cap: usize) -> Arc<Ring> {
        let state = RingState { first: 0, items: VecDeque::new(), receivers: 0, cap: cap.max(1) };
        Arc::new(Ring { state: Mutex::new(state), notify: Notify::new() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Hands `payload` to every current receiver (none: dropped).
    pub(crate) fn send(&self, payload: Msg) {
        {
            let mut st = self.lock();
            if st.receivers == 0 {
                return;
            }
            if st.items.len() == st.cap {
                st.items.pop_front();
                st.first += 1;
            }
            let n = st.receivers;
            st.items.push_back((payload, n));
        }
        self.notify.notify_waiters();
    }

    pub(crate) fn subscribe(self: &Arc<Self>) -> RingRx {
        let mut st = self.lock();
        st.receivers += 1;
        RingRx { ring: self.clone(), next: st.first + st.items.len() as u64 }
    }
}

impl RingRx {
    /// The next payload, or `Err(skipped)` when this receiver fell more
    /// than the ring's capacity behind (it then reads on from the oldest
    /// kept). Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Result<Msg, u64> {
        loop {
            let notified = self.ring.notify.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before looking, so a send after the look wakes it.
            notified.as_mut().enable();
            {
                let mut st = self.ring.lock();
                if self.next < st.first {
                    let skipped = st.first - self.next;
                    self.next = st.first;
                    return Err(skipped);
                }
                let i = (self.next - st.first) as usize;
                if let Some((payload, rem)) = st.items.get_mut(i) {
                    let payload = payload.clone();
                    *rem -= 1;
                    self.next += 1;
                    st.trim();
                    return Ok(payload);
                }
            }
            notified.await;
        }
    }

    /// Whether nothing is waiting to be read.
    pub(crate) fn is_empty(&self) -> bool {
        let st = self.ring.lock();
        self.next >= st.first + st.items.len() as u64
    }
}

impl Drop for RingRx {
    fn drop(&mut self) {
        let mut st = self.ring.lock();
        let from = self.next.saturating_sub(st.first) as usize;
        for (_, rem) in st.items.iter_mut().skip(from) {
            *rem -= 1;
        }
        st.receivers -= 1;
        st.trim();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &'static str) -> Msg {
        Msg { payload: Bytes::from_static(s.as_bytes()), stored: None }
    }

    #[test]
    fn a_republished_position_is_read_from_either_header_form() {
        let block = b"NATS/1.0\r\nNats-Msg-Id: 9.5\r\nNats-Stream: CHAT_INBOX\r\nNats-Subject: chat.inbox.5\r\n\
Nats-Sequence: 12\r\nNats-Time-Stamp: 2026-12-07T00:00:00Z\r\nNats-Last-Sequence: 7\r\n\r\n";
        assert_eq!(Republished::from_block(block), Some(Republished { seq: 12, last: 7 }));
        let mut h = async_nats::HeaderMap::new();
        h.insert("Nats-Sequence", "3");
        h.insert("Nats-Last-Sequence", "0");
        assert_eq!(Republished::from_headers(&h), Some(Republished { seq: 3, last: 0 }));
        // Not a republished message, or not a well-formed one.
        for bad in [
            &b""[..],
            b"NATS/1.0\r\n\r\n",
            b"NATS/1.0\r\nNats-Sequence: 12\r\n\r\n",
            b"NATS/1.0\r\nNats-Sequence: x\r\nNats-Last-Sequence: 1\r\n\r\n",
            b"NATS/1.0\r\nNats-Sequence: 4\r\nNats-Last-Sequence: 4\r\n\r\n",
            b"NATS/1.0\r\nNats-Sequence: 4\r\nNats-Last-Sequence: 9\r\n\r\n",
            b"\xff\xfe",
        ] {
            assert_eq!(Republished::from_block(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn every_receiver_reads_every_payload_once_and_read_ones_are_freed() {
        let ring = Ring::new(4);
        ring.send(b("before anyone")); // nobody to read it: dropped
        let (mut r1, mut r2) = (ring.subscribe(), ring.subscribe());
        ring.send(b("a"));
        ring.send(b("b"));
        assert_eq!(r1.recv().await, Ok(b("a")));
        assert_eq!(r1.recv().await, Ok(b("b")));
        assert!(r1.is_empty() && !r2.is_empty());
        assert_eq!(ring.lock().items.len(), 2, "r2 has not read them yet");
        assert_eq!(r2.recv().await, Ok(b("a")));
        assert_eq!(ring.lock().items.len(), 1);
        // A late receiver starts at the end; a dropped one releases its share.
        let r3 = ring.subscribe();
        assert!(r3.is_empty());
        drop(r2);
        assert_eq!(ring.lock().items.len(), 0);
        assert_eq!(ring.lock().items.capacity(), 0, "an emptied ring holds no storage");
        // A receiver waiting is woken by the next send.
        let waiting = tokio::spawn(async move { r1.recv().await });
        tokio::task::yield_now().await;
        ring.send(b("c"));
        assert_eq!(waiting.await.unwrap(), Ok(b("c")));
        drop(r3);
        assert_eq!(ring.lock().receivers, 0);
    }

    #[tokio::test]
    async fn a_receiver_more_than_the_capacity_behind_skips_to_the_oldest_kept() {
        let ring = Ring::new(2);
        let (mut slow, mut fast) = (ring.subscribe(), ring.subscribe());
        for p in ["1", "2", "3", "4", "5"] {
            ring.send(b(p));
            assert_eq!(fast.recv().await, Ok(b(p)));
        }
        assert_eq!(slow.recv().await, Err(3));
        assert_eq!(slow.recv().await, Ok(b("4")));
        assert_eq!(slow.recv().await, Ok(b("5")));
        assert!(slow.is_empty());
        assert!(ring.lock().items.is_empty());
    }
}
