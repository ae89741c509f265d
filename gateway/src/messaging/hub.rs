//! Shared core NATS subscriptions: one per subject per gateway, fanned out
//! to every local session that wants it.
//!
//! Each async-nats subscription costs its own channel (about 6 KB) and a
//! subscription on the server. Sessions of the same user (ephemeral events)
//! and sessions following the same user's presence would otherwise hold one
//! each; through the hub they share one, and each session holds a small
//! broadcast receiver. The subscription ends with its last receiver.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

/// Messages buffered per subject for a receiver that falls behind; past
/// that it skips to the newest (ephemeral events and presence states are
/// not worth holding a connection for). Wake-up subjects need a few (see
/// `live`).
pub const BUFFER: usize = 64;

/// The gateway's shared subscriptions.
#[derive(Debug)]
pub struct Hub {
    client: async_nats::Client,
    subs: Mutex<HashMap<String, Entry>>,
}

#[derive(Debug)]
struct Entry {
    tx: broadcast::Sender<Bytes>,
    ready: watch::Receiver<bool>,
    refs: usize,
    task: JoinHandle<()>,
}

/// A session's receiver of one subject's payloads.
#[derive(Debug)]
pub struct HubRx {
    rx: broadcast::Receiver<Bytes>,
    hub: Arc<Hub>,
    subject: String,
}

impl Hub {
    /// No subscriptions yet.
    pub fn new(client: async_nats::Client) -> Arc<Hub> {
        Arc::new(Hub { client, subs: Mutex::new(HashMap::new()) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Receives what is published on `subject` from the moment this returns
    /// (the shared subscription is then in place on the server), buffering
    /// up to `buffer` messages for a slow receiver (set by the first).
    pub async fn subscribe(self: &Arc<Self>, subject: String, buffer: usize) -> Result<HubRx, async_nats::Error> {
        let (rx, mut ready) = {
            let mut subs = self.lock();
            match subs.get_mut(&subject) {
                Some(e) => {
                    e.refs += 1;
                    (e.tx.subscribe(), e.ready.clone())
                }
                None => {
                    let (tx, rx) = broadcast::channel(buffer.max(1));
                    let (ready_tx, ready) = watch::channel(false);
                    let task = tokio::spawn(feed(self.client.clone(), subject.clone(), tx.clone(), ready_tx));
                    subs.insert(subject.clone(), Entry { tx, ready: ready.clone(), refs: 1, task });
                    (rx, ready)
                }
            }
        };
        let handle = HubRx { rx, hub: self.clone(), subject };
        let in_place = matches!(tokio::time::timeout(Duration::from_secs(10), ready.wait_for(|r| *r)).await, Ok(Ok(_)));
        if in_place {
            Ok(handle)
        } else {
            Err(format!("subscription to {} not in place within 10 s", handle.subject).into())
        }
    }
}

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
                    e.task.abort();
                }
            }
        }
    }
}
