//! The presence worker: derives users' online/offline transitions from the
//! presence bucket and publishes them.
//!
//! Gateways keep one key per connection (`<user>.<device>.<conn>`) in the
//! presence bucket, rewritten on every heartbeat; a key whose heartbeats
//! stop expires after the presence timeout and leaves a marker, a clean
//! close or logout deletes it. A user is online while any of their keys is
//! alive. One worker at a time is active (lease `presence`); it records
//! each user's published state in the status bucket and publishes a
//! transition only when the derived state differs from the recorded one,
//! so a worker taking over after a crash neither repeats nor loses
//! transitions.
//!
//! The watch must keep up with connection ramps (thousands of keys a
//! second): the bucket is read in bounded batches (see [`crate::bucket`]),
//! applying an entry only updates memory and leaves the user's latest state
//! in an outbox, and a publisher beside it drains the outbox (the network
//! round trips), so a user who came and went meanwhile costs one write.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream::kv::{Entry, Operation};
use bytes::Bytes;
use chat_nats::envelope::PresenceState;
use chat_nats::subjects;
use chat_nats::wire::Status;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::{oneshot, Notify};

use crate::lease::Lease;
use crate::{bucket, Shared};

/// Transitions written to the status bucket at once.
const PUBLISH_CONCURRENCY: usize = 32;

/// Runs the presence worker: stand by until the lease is free, then derive
/// transitions until the lease is lost. Returns when `stop` fires (or its
/// sender is dropped), after releasing the lease so that a restarted or
/// another worker takes over at once.
pub async fn run(sh: Arc<Shared>, name: String, ttl: Duration, mut stop: oneshot::Receiver<()>) {
    loop {
        let acquired = Lease::acquire(&sh.storage.leases, subjects::PRESENCE_LEASE.into(), &name, ttl).await;
        let acquired = acquired.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot ask for the presence lease");
            None
        });
        let Some(mut lease) = acquired else {
            tokio::select! {
                _ = tokio::time::sleep(ttl / 4) => continue,
                _ = &mut stop => return,
            }
        };
        tracing::info!("presence worker active");
        let renew = async {
            loop {
                tokio::time::sleep(ttl / 4).await;
                if let Err(e) = lease.renew(&name).await {
                    tracing::warn!(error = %e, "presence lease lost");
                    return;
                }
            }
        };
        let (stopping, failed) = tokio::select! {
            r = derive(&sh) => {
                if let Err(e) = &r { tracing::warn!(error = %e, "presence worker failed; restarting") }
                (false, r.is_err())
            }
            _ = renew => (false, false),
            _ = &mut stop => (true, false),
        };
        lease.release().await;
        if stopping {
            tracing::info!("presence lease released");
            return;
        }
        // Not at once: a cluster without a JetStream leader refuses every
        // restart, and one a few milliseconds after the other (a consumer
        // created each time) only adds to the requests it has to work off.
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(ttl / 4) => {}
                _ = &mut stop => return,
            }
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Live connections per user, with their last heartbeat (unix ms).
type Live = HashMap<i64, HashMap<String, u64>>;

/// Each changed user's latest derived state (online, unix ms), waiting to
/// be published.
#[derive(Default)]
struct Outbox {
    pending: Mutex<HashMap<i64, (bool, u64)>>,
    ready: Notify,
}

impl Outbox {
    fn put(&self, user: i64, online: bool, at: u64) {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(user, (online, at));
        self.ready.notify_one();
    }

    async fn take(&self) -> HashMap<i64, (bool, u64)> {
        loop {
            let batch = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
            if !batch.is_empty() {
                return batch;
            }
            self.ready.notified().await;
        }
    }
}

async fn derive(sh: &Shared) -> Result<(), async_nats::Error> {
    let recorded = recorded_statuses(sh).await?;
    let outbox = Outbox::default();
    let online = recorded.iter().filter(|(_, s)| **s == Status::Online).map(|(u, _)| *u).collect();
    // Neither ends but by an error; pending transitions lost with the
    // publisher are re-derived by the next replay.
    tokio::select! {
        r = follow(sh, &outbox, online) => r,
        r = publish_all(sh, &outbox, recorded) => r,
    }
}

/// Replays the bucket, reconciles, then follows it, leaving transitions in
/// the outbox.
async fn follow(sh: &Shared, outbox: &Outbox, recorded_online: HashSet<i64>) -> Result<(), async_nats::Error> {
    let mut entries = std::pin::pin!(bucket::entries(&sh.storage.presence, batch(sh)).await?);
    let mut live: Live = HashMap::new();
    let mut replaying = sh.storage.presence.status().await?.values() != 0;
    if !replaying {
        reconcile(&live, &recorded_online, outbox);
    }
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        apply(&mut live, &entry, (!replaying).then_some(outbox));
        if replaying && entry.delta == 0 {
            replaying = false;
            reconcile(&live, &recorded_online, outbox);
        }
    }
    Err("presence watch ended".into())
}

/// Entries asked for at once: a quarter of the client's buffer.
fn batch(sh: &Shared) -> usize {
    sh.subscription_capacity / 4
}

/// Applies one bucket entry to `live`; with an outbox, leaves the user's
/// transition there if their state changed.
fn apply(live: &mut Live, entry: &Entry, outbox: Option<&Outbox>) {
    let Some((user, conn)) = entry.key.split_once('.').and_then(|(u, c)| Some((u.parse::<i64>().ok()?, c.to_owned())))
    else {
        return;
    };
    let at = (entry.created.unix_timestamp_nanos() / 1_000_000).max(0) as u64;
    let conns = live.entry(user).or_default();
    let was_online = !conns.is_empty();
    // When the user goes offline, they were last seen at the closing
    // connection's last heartbeat (expiry) or at its clean close.
    let mut last_seen = at;
    match entry.operation {
        Operation::Put => {
            conns.insert(conn, at);
        }
        Operation::Delete => {
            conns.remove(&conn);
        }
        Operation::Purge => {
            last_seen = conns.remove(&conn).unwrap_or(at);
        }
    }
    let online = !conns.is_empty();
    if !online {
        live.remove(&user);
    }
    if let Some(outbox) = outbox.filter(|_| was_online != online) {
        outbox.put(user, online, last_seen);
    }
}

/// After replaying the bucket: make the recorded statuses match the live
/// connections (transitions missed while no worker was active).
fn reconcile(live: &Live, recorded_online: &HashSet<i64>, outbox: &Outbox) {
    for (user, conns) in live {
        if !recorded_online.contains(user) {
            outbox.put(*user, true, conns.values().copied().max().unwrap_or_else(now_ms));
        }
    }
    for user in recorded_online {
        if !live.contains_key(user) {
            outbox.put(*user, false, now_ms());
        }
    }
}

/// Every user's recorded status.
async fn recorded_statuses(sh: &Shared) -> Result<HashMap<i64, Status>, async_nats::Error> {
    let mut out = HashMap::new();
    if sh.storage.status.status().await?.values() == 0 {
        return Ok(out);
    }
    let mut entries = std::pin::pin!(bucket::entries(&sh.storage.status, batch(sh)).await?);
    while let Some(entry) = entries.next().await {
        let entry = entry?;
        let user = entry.key.strip_prefix("u.").and_then(|u| u.parse::<i64>().ok());
        if let (Some(user), Operation::Put) = (user, entry.operation) {
            out.insert(user, serde_json::from_slice::<PresenceState>(&entry.value)?.status);
        }
        if entry.delta == 0 {
            break;
        }
    }
    Ok(out)
}

/// Publishes what the outbox holds, skipping states already recorded.
async fn publish_all(
    sh: &Shared,
    outbox: &Outbox,
    mut recorded: HashMap<i64, Status>,
) -> Result<(), async_nats::Error> {
    loop {
        let batch = outbox.take().await;
        let todo = batch.into_iter().filter(|(u, (online, _))| recorded.get(u) != Some(&status_of(*online)));
        let done: Vec<(i64, Status)> = futures::stream::iter(todo)
            .map(|(user, (online, at))| publish(sh, user, online, at))
            .buffer_unordered(PUBLISH_CONCURRENCY)
            .try_collect()
            .await?;
        recorded.extend(done);
    }
}

fn status_of(online: bool) -> Status {
    if online {
        Status::Online
    } else {
        Status::Offline
    }
}

/// Records and publishes a transition.
async fn publish(
    sh: &Shared,
    user: i64,
    online: bool,
    last_active_at: u64,
) -> Result<(i64, Status), async_nats::Error> {
    let status = status_of(online);
    let state = PresenceState { user, status, last_active_at };
    let payload = Bytes::from(serde_json::to_vec(&state)?);
    sh.storage.status.put(subjects::status_key(user), payload.clone()).await?;
    sh.client.publish(subjects::presence(user), payload).await?;
    sh.metrics.presence(online);
    tracing::debug!(user_id = user, ?status, "presence transition");
    Ok((user, status))
}
