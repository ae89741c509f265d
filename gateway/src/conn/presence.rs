//! A session's presence side: its heartbeat key, the presence of the users
//! it follows (friends, plus on-demand `presence.subscribe`), and the
//! user's ephemeral events (typing, logout, friend and group changes).
//!
//! The heartbeat key is `<user>.<device>.<conn>` in the presence bucket.
//! A clean close (a WebSocket close frame from the client) deletes it at
//! once, and a logout deletes every key of the device ([`end_device`]);
//! any other end leaves it to expire after the presence timeout, so a quick
//! drop and reconnect is not seen as offline.
//!
//! An on-demand follow lasts while the relationship that allowed it does:
//! when a friendship or a group membership ends, both sides get an
//! ephemeral event ([`relationship_ended`], `Unfriend`) and re-check their
//! follows of the other side against the database. The check and the
//! follow both run in this task, one after the other, so a follow racing a
//! removal is either refused or re-checked after it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_nats::envelope::{Ephemeral, PresenceState};
use chat_nats::subjects;
use chat_nats::wire::{ErrorCode, ServerFrame, Status};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::conn::outbound::{Outbound, CLOSE_BANNED, CLOSE_LOGGED_OUT};
use crate::error::frame;
use crate::http::friends::status_of;
use crate::messaging::hub::HubRx;
use crate::AppState;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// A connection id unique across gateways and restarts: 32 random bits
/// fixed per process, then a per-process counter. (A bare counter would
/// give two gateways the same key for one device connected to both, and
/// the first to close would delete the other's heartbeat.)
fn next_conn() -> u64 {
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let high = *PROCESS.get_or_init(|| u64::from(rand::random::<u32>()) << 32);
    high | (NEXT_CONN.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
}

/// Requests from the session to its presence task.
#[derive(Debug)]
pub enum Cmd {
    /// A heartbeat from the client.
    Heartbeat,
    /// Follow these users on demand (`presence.subscribe`): the task checks
    /// the limit and who may be followed, and answers errors itself.
    Follow(Vec<i64>),
    /// Stop following these users (on demand).
    Unfollow(Vec<i64>),
    /// The session ended; `clean` when the client closed it properly.
    End {
        /// Clean close: mark the connection gone at once.
        clean: bool,
    },
}

/// The session's handle on its presence task: commands wait in a queue
/// that holds no storage while empty (a tokio channel would allocate a
/// block of 32 slots for the connection's life; see docs/benchmarks.md,
/// idle memory). Dropping it ends the task's command feed.
#[derive(Debug)]
pub struct Commands(Arc<Queue>);

#[derive(Debug, Default)]
struct Queue {
    /// The commands, and whether the session's handle is gone.
    state: Mutex<(VecDeque<Cmd>, bool)>,
    notify: Notify,
}

impl Queue {
    fn lock(&self) -> std::sync::MutexGuard<'_, (VecDeque<Cmd>, bool)> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The next command; `None` once the handle is gone and all are taken.
    async fn recv(&self) -> Option<Cmd> {
        loop {
            {
                let mut s = self.lock();
                if let Some(c) = s.0.pop_front() {
                    if s.0.is_empty() {
                        s.0.shrink_to_fit();
                    }
                    return Some(c);
                }
                if s.1 {
                    return None;
                }
            }
            // A permit stored by a send after the check wakes this at once.
            self.notify.notified().await;
        }
    }
}

impl Commands {
    /// Queues a command for the task (never blocks: heartbeats are rate
    /// limited by the session, follows by the frame limit).
    pub fn send(&self, cmd: Cmd) {
        self.0.lock().0.push_back(cmd);
        self.0.notify.notify_one();
    }
}

impl Drop for Commands {
    fn drop(&mut self) {
        self.0.lock().1 = true;
        self.0.notify.notify_one();
    }
}

/// Starts the presence task of a session. Returns once the session's
/// ephemeral subscription is registered with the server, so events sent
/// after the session answers its first frame are not missed.
pub async fn start(state: Arc<AppState>, user: i64, device: String, out: Outbound) -> Commands {
    let queue = Arc::new(Queue::default());
    let (tx, rx) = (Commands(queue.clone()), queue);
    let eph = match state.hub.subscribe(subjects::ephemeral(user), state.cfg.ephemeral_buffer).await {
        Ok(sub) => Some(sub),
        Err(e) => {
            tracing::warn!(user_id = user, error = %e, "cannot subscribe to ephemeral events");
            None
        }
    };
    let fut = async move {
        let Some(eph) = eph else { return };
        if let Err(e) = run(&state, user, &device, &out, rx, eph).await {
            tracing::warn!(user_id = user, error = %e, "presence task failed");
        }
    };
    tokio::spawn(fut);
    tx
}

struct Follows {
    tasks: HashMap<i64, JoinHandle<()>>,
    friends: HashSet<i64>,
    on_demand: HashSet<i64>,
}

impl Follows {
    /// Stops forwarding `u`'s presence unless still a friend or followed.
    fn release(&mut self, u: i64) {
        if !self.friends.contains(&u) && !self.on_demand.contains(&u) {
            if let Some(t) = self.tasks.remove(&u) {
                t.abort();
            }
        }
    }
}

async fn run(
    st: &AppState,
    user: i64,
    device: &str,
    out: &Outbound,
    rx: Arc<Queue>,
    mut eph: HubRx,
) -> Result<(), async_nats::Error> {
    let key = subjects::presence_key(user, device, next_conn());
    // Transient operations are boxed so that an idle task (most of them)
    // keeps only its small waiting state resident, not the largest future
    // it ever awaits.
    let heartbeat = || Box::pin(st.storage.presence.put(&key, bytes::Bytes::new()));
    heartbeat().await?;
    let mut last_beat = Instant::now();
    let mut f = Follows { tasks: HashMap::new(), friends: HashSet::new(), on_demand: HashSet::new() };
    for friend in Box::pin(st.db.friend_ids(user)).await.unwrap_or_default() {
        f.friends.insert(friend);
        Box::pin(follow(st, &mut f, friend, out)).await;
    }
    let mut eph_ended = false;
    let clean = loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => break false,
                Some(Cmd::End { clean }) => break clean,
                Some(Cmd::Heartbeat) => {
                    // At most one write a second, whatever the client sends.
                    if last_beat.elapsed() >= Duration::from_secs(1) {
                        last_beat = Instant::now();
                        heartbeat().await?;
                    }
                }
                Some(Cmd::Follow(users)) => Box::pin(subscribe(st, user, &mut f, users, out)).await,
                Some(Cmd::Unfollow(users)) => {
                    for u in users {
                        f.on_demand.remove(&u);
                        f.release(u);
                    }
                }
            },
            ev = eph.recv_or_skipped(), if !eph_ended => {
                let m = match ev {
                    None => {
                        eph_ended = true;
                        continue;
                    }
                    Some(None) => {
                        // A skipped event may have been a logout, a ban or
                        // an unfriending: reconnecting re-checks them all.
                        tracing::info!(user, device, "session fell behind its ephemeral events; closing with 4008");
                        out.close(crate::conn::outbound::CLOSE_SLOW_CONSUMER);
                        break false;
                    }
                    Some(Some(m)) => m,
                };
                match serde_json::from_slice::<Ephemeral>(&m) {
                    Ok(Ephemeral::Typing { conv, user: who }) => {
                        out.push(frame(&ServerFrame::Typing { conv, user: who.to_string() }));
                    }
                    Ok(Ephemeral::Logout { device: d }) if d == device => {
                        out.close(CLOSE_LOGGED_OUT);
                        break true;
                    }
                    Ok(Ephemeral::Banned) => {
                        out.close(CLOSE_BANNED);
                        break true;
                    }
                    Ok(Ephemeral::Friend { user: u }) => {
                        f.friends.insert(u);
                        Box::pin(follow(st, &mut f, u, out)).await;
                    }
                    Ok(Ephemeral::Unfriend { user: u }) => {
                        f.friends.remove(&u);
                        // The friendship may be what allowed an on-demand follow.
                        Box::pin(recheck(st, user, &mut f, &[u])).await;
                        f.release(u);
                    }
                    Ok(Ephemeral::Recheck { users }) => Box::pin(recheck(st, user, &mut f, &users)).await,
                    _ => {}
                }
            }
        }
    };
    for (_, t) in f.tasks.drain() {
        t.abort();
    }
    if clean {
        Box::pin(st.storage.presence.delete(&key)).await?;
    }
    Ok(())
}

/// `presence.subscribe`: follows those of `users` that `me` may see. The
/// limit counts the users followed on demand plus the frame's new ones;
/// a refused user is answered `forbidden` and not followed, so it takes no
/// place and is refused again on the next try.
async fn subscribe(st: &AppState, me: i64, f: &mut Follows, mut users: Vec<i64>, out: &Outbound) {
    let mut seen = HashSet::new();
    users.retain(|u| !f.on_demand.contains(u) && seen.insert(*u));
    if users.is_empty() {
        return;
    }
    let max = st.cfg.presence_subscribe_max;
    if f.on_demand.len() + users.len() > max {
        let message = format!("at most {max} presence subscriptions per connection");
        return error(out, ErrorCode::LimitExceeded, message);
    }
    let allowed = match st.db.visible(me, &users).await {
        Ok(v) => v,
        Err(e) => {
            out.push(frame(&crate::error::ClientError::unavailable(e).into_frame(None)));
            return;
        }
    };
    if allowed.len() < users.len() {
        let refused: Vec<String> = users.iter().filter(|u| !allowed.contains(u)).map(i64::to_string).collect();
        let message = format!("presence is visible only for friends and fellow group members: {}", refused.join(", "));
        error(out, ErrorCode::Forbidden, message);
    }
    for u in allowed {
        f.on_demand.insert(u);
        follow(st, f, u, out).await;
    }
}

/// Ends the on-demand follows of those of `users` that `me` may no longer
/// see (a friendship or group membership ended). The client gets no frame
/// for it: the follow ends as if unsubscribed. If the check cannot be made
/// the follows end too, rather than risk showing presence no longer allowed.
async fn recheck(st: &AppState, me: i64, f: &mut Follows, users: &[i64]) {
    let followed: Vec<i64> = users.iter().copied().filter(|u| f.on_demand.contains(u)).collect();
    if followed.is_empty() {
        return;
    }
    let allowed: HashSet<i64> = match st.db.visible(me, &followed).await {
        Ok(v) => v.into_iter().collect(),
        Err(e) => {
            tracing::warn!(user_id = me, error = %e, "cannot re-check presence follows; ending them");
            HashSet::new()
        }
    };
    for u in followed.into_iter().filter(|u| !allowed.contains(u)) {
        f.on_demand.remove(&u);
        f.release(u);
    }
}

fn error(out: &Outbound, code: ErrorCode, message: String) {
    out.push(frame(&crate::error::ClientError::new(code, message).into_frame(None)));
}

/// Tells both sides that a relationship between `user` and `others` ended
/// (`user` left or was removed from a group whose remaining members are
/// `others`), so each re-checks its on-demand follows of the other side,
/// on every gateway (the ephemeral subject reaches all of a user's
/// sessions).
pub async fn relationship_ended(st: &AppState, user: i64, others: &[i64]) {
    let others: Vec<i64> = others.iter().copied().filter(|o| *o != user).collect();
    if others.is_empty() {
        return;
    }
    notify(st, user, &Ephemeral::Recheck { users: others.clone() }).await;
    let to_others = Ephemeral::Recheck { users: vec![user] };
    for o in others {
        notify(st, o, &to_others).await;
    }
}

/// Publishes an event to every session of `user`, on every gateway.
pub(crate) async fn notify(st: &AppState, user: i64, ev: &Ephemeral) {
    let payload = bytes::Bytes::from(serde_json::to_vec(ev).expect("events always serialize"));
    if let Err(e) = st.client.publish(subjects::ephemeral(user), payload).await {
        tracing::warn!(user_id = user, error = %e, "cannot publish an ephemeral event");
    }
}

/// Ends every presence of a device at once (logout): deletes each of its
/// heartbeat keys, whichever gateway wrote them, including those of
/// connections that dropped without a close and would otherwise count as
/// online until they expire. The presence worker sees the deletions.
pub async fn end_device(st: &AppState, user: i64, device: &str) -> Result<(), async_nats::Error> {
    if !subjects::is_token(device) {
        return Err(format!("device {device:?} is not a subject token").into());
    }
    let kv = &st.storage.presence;
    let filter = format!("{}{}", kv.prefix, subjects::presence_device_keys(user, device));
    let mut info = kv.stream.info_with_subjects(filter).await?;
    let mut keys = Vec::new();
    while let Some((subject, _count)) = futures::TryStreamExt::try_next(&mut info).await? {
        if let Some(key) = subject.strip_prefix(kv.prefix.as_str()) {
            keys.push(key.to_owned());
        }
    }
    for key in keys {
        kv.delete(&key).await?;
    }
    Ok(())
}

/// Sends the user's current state, then forwards their transitions.
async fn follow(st: &AppState, f: &mut Follows, u: i64, out: &Outbound) {
    if f.tasks.contains_key(&u) {
        return;
    }
    let Ok(mut sub) = st.hub.subscribe(subjects::presence(u), crate::messaging::hub::BUFFER).await else { return };
    let current = status_of(st, u).await;
    out.push(frame(&presence_frame(u, current.as_ref())));
    let out = out.clone();
    f.tasks.insert(
        u,
        tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                if let Ok(s) = serde_json::from_slice::<PresenceState>(&m) {
                    if !out.push(frame(&presence_frame(u, Some(&s)))) {
                        return;
                    }
                }
            }
        }),
    );
}

fn presence_frame(user: i64, s: Option<&PresenceState>) -> ServerFrame {
    ServerFrame::Presence {
        user: user.to_string(),
        status: s.map(|s| s.status).unwrap_or(Status::Offline),
        last_active_at: s.map(|s| s.last_active_at),
    }
}
