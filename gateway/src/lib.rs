//! The stateless edge gateway.
//!
//! - [`config`]: typed `CHAT_*` settings.
//! - [`http`], [`api`]: the HTTP API (hyper) and its error shape.
//! - [`auth`]: argon2id passwords and device-bound HMAC tokens.
//! - [`db`]: PostgreSQL pool, migrations and account queries.
//! - [`ws`]: the WebSocket transport; [`session`]: the transport-agnostic
//!   per-connection logic; [`outbound`]: its bounded queue.
//! - [`send`]: the send path (validation, ingress, ack); [`delivery`]:
//!   catch-up and live delivery from the inbox stream; [`history`]: pages.
//! - [`service`]: the NATS subject internal services send on.
//! - [`edge`]: the gateway registry, discovery, capacity and the drain.
//! - [`metrics`]: the Prometheus metrics `GET /metrics` serves.
//! - [`moderation`]: the live banned-word list and flood detection, applied
//!   to every send.
//! - [`rooms`]: live rooms, one subscription per room fanned out to the
//!   local viewers.
//!
//! The gateway keeps no state of its own: every message is in JetStream,
//! every account in PostgreSQL. [`run`] takes a bound listener and a
//! shutdown future so tests run it in-process on port 0.
#![forbid(unsafe_code)]

pub mod auth;
pub mod config;
pub mod conn;
pub mod edge;
pub mod error;
pub mod http;
pub mod messaging;
pub mod metrics;
pub mod moderation;
pub mod rooms;
pub mod store;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_nats::provision::{self, Storage};
use hyper_util::rt::TokioIo;
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::broadcast;

use auth::revoked;
pub use config::GatewayConfig;
use conn::quic;

use error::ClientError;
use messaging::send::Sender;
use messaging::{history, hub, live, marks, reads, service};
use store::{self as db, Db};

/// Start-up failures.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// NATS could not be reached.
    #[error("cannot connect to NATS at {url}: {source}")]
    Nats {
        /// The URL tried.
        url: String,
        /// Why.
        source: async_nats::Error,
    },
    /// The server is unfit or streams could not be made.
    #[error(transparent)]
    Provision(#[from] provision::ProvisionError),
    /// PostgreSQL could not be reached or migrated.
    #[error("PostgreSQL: {0}")]
    Db(#[from] db::DbError),
    /// The QUIC endpoint could not be set up.
    #[error(transparent)]
    Tls(#[from] quic::TlsError),
    /// Another NATS operation failed at start-up.
    #[error("NATS: {0}")]
    Other(async_nats::Error),
}

/// Everything a request handler needs.
#[derive(Debug)]
pub struct AppState {
    /// Settings.
    pub cfg: GatewayConfig,
    /// PostgreSQL.
    pub db: Db,
    /// NATS.
    pub client: async_nats::Client,
    /// Streams and buckets.
    pub storage: Storage,
    /// The send path.
    pub sender: Arc<Sender>,
    /// Tells connections the gateway is shutting down.
    pub shutdown: broadcast::Sender<()>,
    /// Open WebSocket connections.
    pub connections: Connections,
    /// Delivered marks waiting to be written.
    pub delivered: Arc<marks::DeliveredMarks>,
    /// Read positions of own sends waiting to be written.
    pub own_reads: Arc<reads::OwnReads>,
    /// 1:1 delivery receipts waiting to be spread.
    pub receipts: Arc<crate::messaging::receipts::DeliveryReceipts>,
    known_users: Mutex<HashSet<i64>>,
    known_directs: Mutex<HashSet<(i64, i64)>>,
    /// History index entries read so far.
    pub history_index: history::IndexCache,
    /// Shared core subscriptions (ephemeral events, followed presence).
    pub hub: Arc<hub::Hub>,
    /// The threads that hash and verify passwords.
    pub hasher: auth::Hasher,
    /// Token generations raised by logouts (checked on every token).
    pub revoked: Arc<revoked::Revoked>,
    /// Where logouts record them.
    pub revoked_kv: async_nats::jetstream::kv::Store,
    /// Each user's budget of profile lookups.
    pub lookups: http::users::Lookups,
    /// Login attempts per client address, failed logins per username and
    /// signups per client address.
    pub auth_limits: http::accounts::AuthLimits,
    /// This gateway in the registry, the others as seen, draining.
    pub edges: edge::Edges,
    /// What `GET /metrics` reports.
    pub metrics: metrics::Metrics,
    /// Banned words and flood detection.
    pub moderation: moderation::Moderation,
    /// Live rooms with viewers on this gateway.
    pub rooms: Arc<rooms::Rooms>,
}

impl AppState {
    /// True when the user exists (positive answers are cached: accounts are
    /// never deleted).
    pub async fn user_exists(&self, id: i64) -> Result<bool, ClientError> {
        if self.known_users.lock().unwrap_or_else(|p| p.into_inner()).contains(&id) {
            return Ok(true);
        }
        let found = self.db.user(id).await.map_err(ClientError::unavailable)?.is_some();
        if found {
            let mut known = self.known_users.lock().unwrap_or_else(|p| p.into_inner());
            if known.len() > 1_000_000 {
                known.clear();
            }
            known.insert(id);
        }
        Ok(found)
    }
}

impl AppState {
    /// A room's approximate live viewer count: this gateway's now, the
    /// others' as their registry entries last said.
    pub fn room_viewers(&self, room: i64) -> u64 {
        let others = self.edges.room_viewers(&room.to_string(), self.storage.settings.registry_ttl);
        others + self.rooms.count(room)
    }

    /// Records a 1:1 conversation for the conversation list (once per
    /// gateway process; the insert is idempotent).
    pub async fn remember_direct(&self, a: i64, b: i64) {
        if self.known_directs.lock().unwrap_or_else(|p| p.into_inner()).contains(&(a, b)) {
            return;
        }
        match self.db.record_direct(a, b).await {
            Ok(()) => {
                let mut known = self.known_directs.lock().unwrap_or_else(|p| p.into_inner());
                if known.len() > 1_000_000 {
                    known.clear();
                }
                known.insert((a, b));
            }
            Err(e) => tracing::warn!(error = %e, "cannot record a conversation for the list"),
        }
    }
}

/// The open sessions: a count, and each session's drain signal.
#[derive(Debug, Default, Clone)]
pub struct Connections(Arc<ConnectionsInner>);

#[derive(Debug, Default)]
struct ConnectionsInner {
    count: AtomicUsize,
    next: std::sync::atomic::AtomicU64,
    drains: Mutex<HashMap<u64, Arc<tokio::sync::Notify>>>,
}

/// One session's place: decrements the count when dropped.
#[derive(Debug)]
pub struct ConnectionGuard {
    inner: Arc<ConnectionsInner>,
    id: u64,
    /// Notified when the gateway drains this session.
    pub drain: Arc<tokio::sync::Notify>,
}

impl Connections {
    /// Counts one session until the guard drops.
    pub fn enter(&self) -> ConnectionGuard {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        let id = self.0.next.fetch_add(1, Ordering::Relaxed);
        let drain = Arc::new(tokio::sync::Notify::new());
        self.0.drains.lock().unwrap_or_else(|p| p.into_inner()).insert(id, drain.clone());
        ConnectionGuard { inner: self.0.clone(), id, drain }
    }

    /// Open sessions now.
    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Tells up to `n` sessions (not told before) to drain; how many were.
    pub fn drain(&self, n: usize) -> usize {
        let mut drains = self.0.drains.lock().unwrap_or_else(|p| p.into_inner());
        let ids: Vec<u64> = drains.keys().take(n).copied().collect();
        for id in &ids {
            if let Some(d) = drains.remove(id) {
                d.notify_one();
            }
        }
        ids.len()
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.inner.drains.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        self.inner.count.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The sockets a gateway serves on, bound by the caller (tests bind port 0).
#[derive(Debug)]
pub struct Listeners {
    /// HTTP and WebSocket.
    pub http: TcpListener,
    /// QUIC, when enabled.
    pub quic: Option<std::net::UdpSocket>,
}

impl Listeners {
    /// Binds the addresses of `cfg`; the HTTP listener with an accept
    /// queue of `CHAT_LISTEN_BACKLOG` (tokio's `bind` would ask for 128).
    pub async fn bind(cfg: &GatewayConfig) -> std::io::Result<Listeners> {
        let socket = socket2::Socket::new(socket2::Domain::for_address(cfg.http_addr), socket2::Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_nonblocking(true)?;
        socket.bind(&cfg.http_addr.into())?;
        socket.listen(cfg.listen_backlog as i32)?;
        let http = TcpListener::from_std(socket.into())?;
        let quic = match cfg.quic_addr {
            Some(a) => Some(std::net::UdpSocket::bind(a)?),
            None => None,
        };
        Ok(Listeners { http, quic })
    }
}

/// Connects to NATS and PostgreSQL, provisions, migrates and serves on the
/// listeners until `shutdown` resolves.
pub async fn run(
    cfg: GatewayConfig,
    listeners: Listeners,
    shutdown: impl Future<Output = ()>,
) -> Result<(), GatewayError> {
    let listener = listeners.http;
    edge::check_open_files(cfg.max_connections);
    let http_addr = listener.local_addr().unwrap_or(cfg.http_addr);
    let quic_addr = listeners.quic.as_ref().and_then(|q| q.local_addr().ok());
    let identity = provision::Identity {
        credentials: cfg.nats_credentials.clone(),
        inbox_prefix: chat_nats::subjects::GATEWAY_INBOX_PREFIX,
    };
    let client = provision::connect(&cfg.nats_url, &format!("chat-gateway {}", cfg.gateway_id), 4096, &identity)
        .await
        .map_err(|e| GatewayError::Nats { url: cfg.nats_url.clone(), source: e })?;
    // Workers bring existing streams to their configuration; a gateway
    // may only create one that is missing (its NATS user cannot update).
    let storage = provision::provision_as(&client, &cfg.storage, provision::Mode::CreateOnly).await?;
    // The ingress writer stores concurrent sends as atomic batches, which
    // only 2.15.1 commits with one fsync.
    provision::check_batch_server(&client)?;
    let db = Db::connect(&cfg.database_url, cfg.db_pool_size)?;
    db.migrate().await?;
    let revoked_kv =
        provision::ensure_bucket(&storage.js, revoked::bucket_config(cfg.token_ttl, cfg.storage.replicas)).await?;
    let revoked = revoked::start(revoked_kv.clone()).await.map_err(GatewayError::Other)?;
    let sender =
        Sender::start(&client, storage.clone(), &cfg.gateway_id, cfg.send_timeout, cfg.send_path, cfg.handoff_wait)
            .await
            .map_err(GatewayError::Other)?;
    let moderation =
        moderation::Moderation::start(cfg.moderation, &storage, &cfg.gateway_id).await.map_err(GatewayError::Other)?;
    let (shutdown_tx, _) = broadcast::channel(1);
    let history_index = history::IndexCache::new(cfg.history_index_cache);
    let hasher = auth::Hasher::start(cfg.password_hash_concurrency);
    let shared_subs = match messaging::subs::plain_servers(&cfg.nats_url) {
        Some(servers) => {
            Some((servers, format!("chat-gateway {} subscriptions", cfg.gateway_id), cfg.nats_credentials.clone()))
        }
        None => {
            tracing::info!("a tls:// NATS server: the hub's subscriptions are async-nats subscriptions");
            None
        }
    };
    let hub = hub::Hub::new(client.clone(), shared_subs);
    let cfg_lookups = (cfg.user_lookup_per_min, cfg.user_lookup_burst);
    let edges = edge::Edges::new(&cfg, http_addr, quic_addr);
    let auth_limits = http::accounts::AuthLimits::new(&cfg);
    let metrics = metrics::Metrics::new(&db, &client, &moderation, &hub);
    let rooms = rooms::Rooms::new(client.clone(), storage.clone(), cfg.room_queue_frames);
    let state = Arc::new(AppState {
        cfg,
        db,
        client,
        storage,
        sender,
        shutdown: shutdown_tx,
        connections: Connections::default(),
        delivered: Arc::default(),
        own_reads: Arc::default(),
        receipts: Arc::default(),
        known_users: Mutex::default(),
        known_directs: Mutex::default(),
        history_index,
        hub,
        hasher,
        revoked,
        revoked_kv,
        lookups: http::users::Lookups::new(cfg_lookups.0, cfg_lookups.1),
        auth_limits,
        edges,
        metrics,
        moderation,
        rooms,
    });
    let registry = edge::start(state.clone());
    tokio::spawn(live::run_safety_net(state.client.clone(), state.hub.clone(), state.cfg.live_poll));
    tokio::spawn(marks::run(
        state.delivered.clone(),
        state.client.clone(),
        state.storage.delivered.clone(),
        state.cfg.delivered_flush,
    ));
    tokio::spawn(reads::run_own(
        state.own_reads.clone(),
        state.client.clone(),
        state.storage.reads.clone(),
        state.cfg.own_read_flush,
    ));
    tokio::spawn(messaging::receipts::run(state.receipts.clone(), Arc::downgrade(&state), state.cfg.delivered_flush));
    service::start(state.clone()).await.map_err(GatewayError::Other)?;
    let quic = match listeners.quic {
        Some(socket) => {
            let (endpoint, fingerprint) = quic::endpoint(&state, socket)?;
            let addr = endpoint.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(addr = %addr, alpn = "chat/1", sha256 = %fingerprint, "QUIC listening");
            tokio::spawn(quic::serve(state.clone(), endpoint.clone()));
            Some(endpoint)
        }
        None => None,
    };
    tracing::info!(addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(), "gateway listening");
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, peer)) = accepted {
                    serve_connection(state.clone(), stream, peer);
                }
            }
            _ = &mut shutdown => break,
        }
    }
    // Drain: the sessions move to other gateways (the listener still
    // answers HTTP meanwhile, and refuses sessions), then the rest go.
    let serve_http = tokio::spawn(accept_loop(state.clone(), listener));
    edge::drain(&state).await;
    let deadline = tokio::time::Instant::now() + state.cfg.send_timeout + Duration::from_secs(5);
    while state.connections.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    serve_http.abort();
    let _ = state.shutdown.send(());
    if let Some(q) = &quic {
        q.set_server_config(None);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while state.connections.count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(registry);
    let _ = state.storage.gateways.delete(&state.cfg.gateway_id).await;
    let _ = state.client.flush().await;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Accepts HTTP connections until aborted.
async fn accept_loop(state: Arc<AppState>, listener: TcpListener) {
    loop {
        if let Ok((stream, peer)) = listener.accept().await {
            serve_connection(state.clone(), stream, peer);
        }
    }
}

/// Serves one HTTP connection (and its WebSocket upgrade) in a task.
/// Every request carries the connection's peer address
/// ([`http::limits::Peer`]) for the per-address limits.
fn serve_connection(state: Arc<AppState>, stream: tokio::net::TcpStream, peer: std::net::SocketAddr) {
    let _ = stream.set_nodelay(true);
    let peer = http::limits::Peer(peer.ip().to_canonical());
    tokio::spawn(async move {
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(peer);
            let state = state.clone();
            async move { Ok::<_, Infallible>(http::route(state, req).await) }
        });
        let conn =
            hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).with_upgrades();
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "http connection ended with an error");
        }
    });
}

pub use chat_nats::process::{init_tracing, shutdown_signal};
