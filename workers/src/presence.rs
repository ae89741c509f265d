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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv::Operation;
use bytes::Bytes;
use chat_nats::envelope::PresenceState;
use chat_nats::subjects;
use chat_nats::wire::Status;
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::lease::Lease;
use crate::Shared;

/// Runs the presence worker: stand by until the lease is free, then derive
/// transitions until the lease is lost. Returns when `stop` fires (or its
/// sender is dropped), after releasing the lease so that a restarted or
/// another worker takes over at once.
pub async fn run(sh: Arc<Shared>, name: String, ttl: Duration, mut stop: oneshot::Receiver<()>) {
    loop {
        let Some(mut lease) = Lease::acquire(&sh.storage.leases, subjects::PRESENCE_LEASE.into(), &name, ttl).await
        else {
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
        let stopping = tokio::select! {
            r = derive(&sh) => {
                if let Err(e) = r { tracing::warn!(error = %e, "presence worker failed; restarting") }
                false
            }
            _ = renew => false,
            _ = &mut stop => true,
        };
        lease.release().await;
        if stopping {
            tracing::info!("presence lease released");
            return;
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

/// Live connections per user, with their last heartbeat (unix ms).
type Live = HashMap<i64, HashMap<String, u64>>;

async fn derive(sh: &Shared) -> Result<(), async_nats::Error> {
    let mut watch = sh.storage.presence.watch_with_history(">").await?;
    let mut live: Live = HashMap::new();
    let mut replaying = true;
    if sh.storage.presence.status().await?.values() == 0 {
        replaying = false;
        reconcile(sh, &live).await?;
    }
    while let Some(entry) = watch.next().await {
        let entry = entry?;
        let Some((user, conn)) =
            entry.key.split_once('.').and_then(|(u, c)| Some((u.parse::<i64>().ok()?, c.to_owned())))
        else {
            continue;
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
        if !replaying && was_online != online {
            publish(sh, user, online, last_seen).await?;
        }
        if !online {
            live.remove(&user);
        }
        if replaying && entry.delta == 0 {
            replaying = false;
            reconcile(sh, &live).await?;
        }
    }
    Err("presence watch ended".into())
}

/// After replaying the bucket: make the recorded statuses match the live
/// connections (transitions missed while no worker was active).
async fn reconcile(sh: &Shared, live: &Live) -> Result<(), async_nats::Error> {
    let mut recorded_online = HashSet::new();
    let mut keys = sh.storage.status.keys().await?;
    while let Some(k) = keys.next().await {
        let k = k?;
        let Some(user) = k.strip_prefix("u.").and_then(|u| u.parse::<i64>().ok()) else { continue };
        if let Some(v) = sh.storage.status.get(&k).await? {
            let st: PresenceState = serde_json::from_slice(&v)?;
            if st.status == Status::Online {
                recorded_online.insert(user);
            }
        }
    }
    for (user, conns) in live {
        if !conns.is_empty() && !recorded_online.contains(user) {
            publish(sh, *user, true, conns.values().copied().max().unwrap_or_else(now_ms)).await?;
        }
    }
    for user in recorded_online {
        if live.get(&user).is_none_or(|c| c.is_empty()) {
            publish(sh, user, false, now_ms()).await?;
        }
    }
    Ok(())
}

/// Records and publishes a transition unless it is already recorded.
async fn publish(sh: &Shared, user: i64, online: bool, last_active_at: u64) -> Result<(), async_nats::Error> {
    let status = if online { Status::Online } else { Status::Offline };
    let key = subjects::status_key(user);
    if let Some(v) = sh.storage.status.get(&key).await? {
        if serde_json::from_slice::<PresenceState>(&v).is_ok_and(|s| s.status == status) {
            return Ok(());
        }
    }
    let state = PresenceState { user, status, last_active_at };
    let payload = Bytes::from(serde_json::to_vec(&state)?);
    sh.storage.status.put(&key, payload.clone()).await?;
    sh.client.publish(subjects::presence(user), payload).await?;
    tracing::debug!(user_id = user, ?status, "presence transition");
    Ok(())
}
