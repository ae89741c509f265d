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

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
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
    tx: broadcast::Sender<Bytes>,
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

/// A session's receiver of one subject's payloads.
#[derive(Debug)]
pub struct HubRx {
    rx: broadcast::Receiver<Bytes>,
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
                    let (tx, rx) = broadcast::channel(buffer.max(1));
                    let (feed, ready) = match &self.shared {
                        Some(shared) => {
                            let to = tx.clone();
                            let sid = shared.subscribe(
                                subject.clone(),
                                Box::new(move |payload| {
                                    let _ = to.send(payload);
                                }),
                            );
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
async fn feed(client: async_nats::Client, subject: String, tx: broadcast::Sender<Bytes>, ready: watch::Sender<bool>) {
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
        let _ = tx.send(m.payload);
    }
}

impl Hub {
    /// Wakes every receiver of a subject starting with `prefix` with an
    /// empty payload (see `live`).
    pub fn poke(&self, prefix: &str) {
        for (subject, e) in self.lock().iter() {
            if subject.starts_with(prefix) {
                let _ = e.tx.send(Bytes::new());
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
    pub async fn recv_or_skipped(&mut self) -> Option<Option<Bytes>> {
        match self.rx.recv().await {
            Ok(b) => Some(Some(b)),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::debug!(subject = %self.subject, skipped = n, "slow receiver skipped messages");
                Some(None)
            }
            Err(broadcast::error::RecvError::Closed) => None,
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
