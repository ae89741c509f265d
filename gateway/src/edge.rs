//! Scale-out: this gateway's entry in the registry (KV `chat_gateways`),
//! the other gateways' entries watched into memory for discovery, the
//! admission of new sessions (capacity, draining) and the drain itself.
//!
//! Every gateway writes its [`GatewayEntry`] every third of
//! `CHAT_REGISTRY_TTL_MS` and at once when it starts draining or reaches
//! capacity; the bucket's `max_age` removes the entry of a gateway that
//! stopped writing (SIGKILL included) and leaves a marker, so watchers
//! drop it without anyone cleaning up. A watcher also ignores an entry it
//! has not seen refreshed within the TTL.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chat_nats::envelope::GatewayEntry;
use chat_nats::wire::ErrorCode;
use futures::StreamExt;
use tokio::sync::Notify;

use crate::error::ClientError;
use crate::AppState;

/// This gateway's public identity and state, and the registry as seen.
#[derive(Debug)]
pub struct Edges {
    me: GatewayEntry,
    draining: AtomicBool,
    /// Raised by every undo: a drain in progress stops when it changes.
    drain_epoch: std::sync::atomic::AtomicU64,
    full: AtomicBool,
    seen: Mutex<HashMap<String, (GatewayEntry, Instant)>>,
    poke: Notify,
}

impl Edges {
    /// This gateway's identity: public URLs from the settings, else from the
    /// bound addresses.
    pub fn new(cfg: &crate::GatewayConfig, http: SocketAddr, quic: Option<SocketAddr>) -> Edges {
        let me = GatewayEntry {
            id: cfg.gateway_id.clone(),
            ws_url: cfg.public_ws_url.clone().unwrap_or_else(|| format!("ws://{http}/v1/ws")),
            quic_addr: cfg.public_quic_addr.clone().or_else(|| quic.map(|a| a.to_string())),
            region: cfg.region.clone(),
            connections: 0,
            capacity: cfg.max_connections as u64,
            draining: false,
            at_capacity: false,
            updated_ms: 0,
            rooms: Default::default(),
        };
        Edges {
            me,
            draining: AtomicBool::new(false),
            drain_epoch: Default::default(),
            full: AtomicBool::new(false),
            seen: Mutex::default(),
            poke: Notify::new(),
        }
    }

    /// Whether this gateway is draining.
    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// This gateway's entry now.
    pub fn entry(&self, connections: usize) -> GatewayEntry {
        let at_capacity = connections >= self.me.capacity as usize;
        GatewayEntry {
            connections: connections as u64,
            draining: self.draining(),
            at_capacity,
            updated_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
            ..self.me.clone()
        }
    }

    /// Live gateways that accept sessions, best first: `region` (default:
    /// ours) first, then the least loaded.
    pub fn list(&self, region: Option<&str>, connections: usize, ttl: Duration) -> Vec<GatewayEntry> {
        let region = region.unwrap_or(&self.me.region);
        let mut all: Vec<GatewayEntry> = {
            let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.values().filter(|(e, at)| e.id != self.me.id && at.elapsed() < ttl).map(|(e, _)| e.clone()).collect()
        };
        all.push(self.entry(connections));
        all.retain(GatewayEntry::accepts);
        all.sort_by(|a, b| {
            (a.region != region)
                .cmp(&(b.region != region))
                .then(a.load().total_cmp(&b.load()))
                .then_with(|| a.id.cmp(&b.id))
        });
        all
    }

    /// Viewers of a room on the other live gateways, as last written.
    pub fn room_viewers(&self, room: &str, ttl: Duration) -> u64 {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.values()
            .filter(|(e, at)| e.id != self.me.id && at.elapsed() < ttl)
            .filter_map(|(e, _)| e.rooms.get(room))
            .sum()
    }

    fn apply(&self, key: &str, value: &[u8]) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        // An expiry marker has an empty value; a delete or purge likewise.
        match serde_json::from_slice::<GatewayEntry>(value) {
            Ok(e) if e.id == key => {
                seen.insert(key.to_owned(), (e, Instant::now()));
            }
            _ => {
                seen.remove(key);
            }
        }
    }
}

/// Refuses a new session when this gateway drains or is full.
pub fn admit(state: &AppState) -> Result<(), ClientError> {
    let edges = &state.edges;
    if edges.draining() {
        return Err(ClientError::new(ErrorCode::Draining, "this gateway is draining: connect to another edge"));
    }
    if state.connections.count() >= state.cfg.max_connections {
        if !edges.full.swap(true, Ordering::AcqRel) {
            edges.poke.notify_one();
        }
        return Err(ClientError::new(ErrorCode::AtCapacity, "this gateway is at capacity: connect to another edge"));
    }
    Ok(())
}

/// The registry tasks; dropping it stops them.
#[derive(Debug)]
pub struct Registry(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Registry {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Writes this gateway's entry now and every third of the TTL (and when
/// poked), and watches everyone's entries into memory, until the returned
/// guard drops.
pub fn start(state: Arc<AppState>) -> Registry {
    let writer = state.clone();
    let write = tokio::spawn(async move {
        let every = writer.storage.settings.registry_ttl / 3;
        loop {
            let count = writer.connections.count();
            let mut entry = writer.edges.entry(count);
            entry.rooms = writer.rooms.counts();
            writer.edges.full.store(entry.at_capacity, Ordering::Release);
            let value = serde_json::to_vec(&entry).expect("entries serialize");
            if let Err(e) = writer.storage.gateways.put(&entry.id, value.into()).await {
                tracing::warn!(error = %e, "cannot refresh this gateway's registry entry");
            }
            let _ = tokio::time::timeout(every, writer.edges.poke.notified()).await;
        }
    });
    let watch = tokio::spawn(async move {
        loop {
            match state.storage.gateways.watch_all().await {
                Ok(mut watch) => {
                    while let Some(entry) = watch.next().await {
                        match entry {
                            Ok(e) => state.edges.apply(&e.key, &e.value),
                            Err(e) => tracing::warn!(error = %e, "registry watch error"),
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot watch the gateway registry"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    Registry(vec![write, watch])
}

/// Starts draining: no new sessions, the registry says so at once, and the
/// sessions are closed evenly over `CHAT_DRAIN_SECS` (each answers the
/// sends it holds before it closes with 4010). Returns when every session
/// was told; a second call only waits for the first.
pub async fn drain(state: &AppState) {
    if let Some(epoch) = start_drain(state) {
        close_gradually(state, epoch).await;
    }
}

/// Marks the gateway draining now (before any answer says so, so an undo
/// that follows finds it); the drain's epoch if this call started it,
/// `None` if one was already running. [`close_gradually`] does the rest.
pub fn start_drain(state: &AppState) -> Option<u64> {
    if state.edges.draining.swap(true, Ordering::AcqRel) {
        return None;
    }
    Some(state.edges.drain_epoch.load(Ordering::Acquire))
}

/// Closes the sessions of the drain `epoch` evenly over `CHAT_DRAIN_SECS`,
/// until the drain is undone.
pub async fn close_gradually(state: &AppState, epoch: u64) {
    // Until an operator undoes it (`undrain`).
    let on = || state.edges.draining() && state.edges.drain_epoch.load(Ordering::Acquire) == epoch;
    state.edges.poke.notify_one();
    let total = state.connections.count();
    tracing::info!(sessions = total, secs = state.cfg.drain.as_secs(), "draining");
    let started = tokio::time::Instant::now();
    let steps = (state.cfg.drain.as_millis() / 100).max(1) as u32;
    let mut told = 0;
    for k in 1..=steps {
        if !on() {
            tracing::info!(told, "drain undone");
            return;
        }
        if state.connections.count() == 0 {
            break;
        }
        let due = (total * k as usize).div_ceil(steps as usize);
        told += state.connections.drain(due.saturating_sub(told));
        tokio::time::sleep_until(started + state.cfg.drain * k / steps).await;
    }
    if on() {
        state.connections.drain(usize::MAX);
    }
}

/// Undoes a drain: sessions are accepted again, the registry says so at
/// once, and the sessions not closed yet stay. `false` if not draining.
pub fn undrain(state: &AppState) -> bool {
    if !state.edges.draining.swap(false, Ordering::AcqRel) {
        return false;
    }
    state.edges.drain_epoch.fetch_add(1, Ordering::AcqRel);
    state.edges.poke.notify_one();
    true
}

/// Reads `/proc/self/limits` (Linux) for the soft open-file limit.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// Warns when the open-file limit cannot hold `CHAT_MAX_CONNECTIONS`
/// sessions (each is a socket, plus NATS, PostgreSQL and a margin).
pub fn check_open_files(max_connections: usize) {
    if let Some(limit) = open_file_limit() {
        let need = max_connections as u64 + 256;
        if limit < need {
            tracing::warn!(
                limit,
                max_connections,
                "the open-file limit (ulimit -n) is below CHAT_MAX_CONNECTIONS + 256: sessions beyond it will fail to \
                 be accepted; raise the limit or lower CHAT_MAX_CONNECTIONS"
            );
        }
    }
}
