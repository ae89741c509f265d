//! Live inbox wake-ups: one core NATS subscription per user with a device
//! connected to this gateway, shared by all of that user's devices here.
//!
//! The sequencer publishes the inbox stream sequence of every inbox copy it
//! stored on `chat.live.<user>` (core NATS, not persisted). A notification
//! carries no message: it only wakes the user's delivery tasks, which then
//! read the inbox *stream* forward from their own last delivered sequence
//! (see `delivery`). So a lost, late or reordered notification can delay a
//! message but never skip, reorder or duplicate one. Notifications can be
//! lost while the gateway's NATS connection is down; every user is woken
//! when it comes back, and every `CHAT_LIVE_POLL_SECS` as a last resort.
//!
//! A connected device costs one watch receiver here instead of a JetStream
//! consumer (about 45 KiB in nats-server and a 5 s idle heartbeat each).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_nats::subjects;
use futures::StreamExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Per-user subscriptions of this gateway.
#[derive(Debug)]
pub struct Live {
    client: async_nats::Client,
    users: Mutex<HashMap<i64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    tx: watch::Sender<u64>,
    refs: usize,
    task: JoinHandle<()>,
}

/// A device's handle on its user's wake-ups. The subscription ends when the
/// last handle of the user on this gateway is dropped.
#[derive(Debug)]
pub struct Wakeups {
    rx: watch::Receiver<u64>,
    live: Arc<Live>,
    user: i64,
}

impl Live {
    /// No subscriptions yet.
    pub fn new(client: async_nats::Client) -> Arc<Live> {
        Arc::new(Live { client, users: Mutex::new(HashMap::new()) })
    }

    /// Wakes every user on reconnects of the NATS client (notifications may
    /// have been lost while it was down) and every `poll`.
    pub async fn run_safety_net(self: Arc<Self>, poll: Duration) {
        let stats = self.client.statistics();
        let mut connects = stats.connects.load(Ordering::Relaxed);
        let mut last_poll = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let now = stats.connects.load(Ordering::Relaxed);
            if now != connects || last_poll.elapsed() >= poll {
                connects = now;
                last_poll = tokio::time::Instant::now();
                self.wake_all();
            }
        }
    }

    fn wake_all(&self) {
        for e in self.lock().values() {
            e.tx.send_modify(|v| *v += 1);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Entry>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wake-ups of `user`, once its subscription is in place: anything
    /// stored in the inbox after this returns is followed by a wake-up (or
    /// is found by the first read, which the caller does anyway).
    pub async fn watch(self: &Arc<Self>, user: i64) -> Result<Wakeups, async_nats::Error> {
        let mut rx = {
            let mut users = self.lock();
            match users.get_mut(&user) {
                Some(e) => {
                    e.refs += 1;
                    e.tx.subscribe()
                }
                None => {
                    // 0 until subscribed; every wake-up adds one.
                    let (tx, rx) = watch::channel(0);
                    let task = tokio::spawn(feed(self.client.clone(), user, tx.clone()));
                    users.insert(user, Entry { tx, refs: 1, task });
                    rx
                }
            }
        };
        let handle = Wakeups { rx: rx.clone(), live: self.clone(), user };
        // The subscription is sent to the server before anything this task
        // sends next on the same client (NATS keeps a connection's order).
        match tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|v| *v > 0)).await {
            Ok(Ok(_)) => {}
            _ => return Err("live subscription not in place within 10 s".into()),
        }
        Ok(handle)
    }
}

/// Forwards one user's notifications as wake-ups.
async fn feed(client: async_nats::Client, user: i64, tx: watch::Sender<u64>) {
    let mut sub = loop {
        match client.subscribe(subjects::live(user)).await {
            Ok(s) => break s,
            Err(e) => {
                tracing::warn!(user_id = user, error = %e, "live subscription failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    tx.send_modify(|v| *v += 1);
    while sub.next().await.is_some() {
        tx.send_modify(|v| *v += 1);
    }
}

impl Wakeups {
    /// Waits for the next wake-up; `false` if the feed ended.
    pub async fn changed(&mut self) -> bool {
        self.rx.changed().await.is_ok()
    }
}

impl Drop for Wakeups {
    fn drop(&mut self) {
        let mut users = self.live.lock();
        if let Some(e) = users.get_mut(&self.user) {
            e.refs -= 1;
            if e.refs == 0 {
                if let Some(e) = users.remove(&self.user) {
                    e.task.abort();
                }
            }
        }
    }
}
