//! Gateway settings, read once from `CHAT_*` variables before binding.

use std::net::SocketAddr;
use std::time::Duration;

use chat_nats::config::{self, bounded, shared, var, ConfigError, Source};
use chat_nats::provision::StorageSettings;

/// How a text send reaches its partition's owner (`CHAT_SEND_PATH`; see
/// `docs/architecture.md`, "A message's path", step 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPath {
    /// A request to the owner over core NATS (`chat.fast.<p>`); written to
    /// ingress only when no owner answers (none subscribed: at once; no
    /// answer within `CHAT_SEND_HANDOFF_WAIT_MS`; or the owner leaves it to
    /// ingress). An owner and a gateway dying together may leave an unacked
    /// send half stored until its client resends it.
    Direct,
    /// The hand-off and the ingress write together: the ingress message is
    /// the send's record, unless its write fails while the owner stores the
    /// hand-off.
    Beside,
    /// Ingress only (the default).
    Ingress,
}

impl std::str::FromStr for SendPath {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "direct" => Ok(SendPath::Direct),
            "beside" => Ok(SendPath::Beside),
            "ingress" => Ok(SendPath::Ingress),
            _ => Err("must be direct, beside or ingress".into()),
        }
    }
}

/// Every gateway setting (see the README's configuration table).
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// `CHAT_HTTP_ADDR`: HTTP and WebSocket listen address.
    pub http_addr: SocketAddr,
    /// `CHAT_LISTEN_BACKLOG`: the HTTP listener's accept queue (the kernel
    /// caps it at `net.core.somaxconn`).
    pub listen_backlog: u32,
    /// `CHAT_NATS_URL`.
    pub nats_url: String,
    /// `CHAT_NATS_USER` and `CHAT_NATS_PASSWORD` (or `_FILE`): the
    /// gateways' NATS user (`nats/conf/auth.conf`).
    pub nats_credentials: Option<chat_nats::provision::Credentials>,
    /// `CHAT_DATABASE_URL`: PostgreSQL connection string.
    pub database_url: String,
    /// `CHAT_DB_POOL_SIZE`: PostgreSQL connections per gateway.
    pub db_pool_size: usize,
    /// `CHAT_TOKEN_SECRET` or `CHAT_TOKEN_SECRET_FILE`, then
    /// `CHAT_TOKEN_SECRET_PREVIOUS`: HMAC keys for access tokens (every
    /// gateway of a deployment must share them). Tokens are issued with the
    /// first and accepted with any (see [`crate::auth::secret`]).
    pub token_secrets: Vec<Vec<u8>>,
    /// `CHAT_TOKEN_TTL_SECS`: access token lifetime.
    pub token_ttl: Duration,
    /// `CHAT_MAX_BODY_CHARS`: longest message body, in Unicode scalar values.
    pub max_body_chars: usize,
    /// `CHAT_EDIT_WINDOW_SECS`: how long after sending an author may edit a
    /// message or delete it for everyone.
    pub edit_window: std::time::Duration,
    /// `CHAT_OWN_SEND_READS`: a session's own send raises the sender's read
    /// position (coalesced: at most one KV write per conversation per
    /// `own_read_flush`).
    pub own_send_reads: bool,
    /// `CHAT_OWN_READ_FLUSH_MS`: how long own sends' read positions are
    /// coalesced before they are written.
    pub own_read_flush: Duration,
    /// `CHAT_DELIVERY_RECEIPTS`: 1:1 senders learn that a device of the
    /// recipient got their messages (`delivered` frames, coalesced over
    /// `CHAT_DELIVERED_FLUSH_MS`).
    pub delivery_receipts: bool,
    /// `CHAT_SEND_PATH`: how a text send reaches its partition's owner
    /// (`SendPath`).
    pub send_path: SendPath,
    /// `CHAT_SEND_HANDOFF_WAIT_MS`: how long a `direct` hand-off waits for
    /// the owner's answer before the send is written to ingress instead.
    pub handoff_wait: Duration,
    /// `CHAT_WS_MAX_FRAME_BYTES`: largest WebSocket message accepted.
    pub max_frame_bytes: usize,
    /// `CHAT_ROOM_BACKLOG`: messages of a room's history sent on `join`.
    pub room_backlog: usize,
    /// `CHAT_ROOM_QUEUE_FRAMES`: frames a session's queue may hold when a
    /// room message is offered to it; past that the viewer skips messages
    /// (a `gap` notice follows) instead of slowing the room.
    pub room_queue_frames: usize,
    /// `CHAT_ROOM_MAX_JOINED`: rooms one session may have joined at once.
    pub room_max_joined: usize,
    /// `CHAT_HISTORY_INDEX_CACHE`: history index entries cached per gateway.
    pub history_index_cache: usize,
    /// `CHAT_SEARCH_MAX_LIMIT`: most hits one `GET /v1/search` page returns
    /// (1-1000, default 100; the default `limit` is 20, or this if smaller).
    pub search_max_limit: usize,
    /// `CHAT_SEARCH_MAX_QUERY_CHARS`: longest search query, in characters
    /// (2-1000, default 200; the shortest is 2).
    pub search_max_query_chars: usize,
    /// `CHAT_PASSWORD_HASH_CONCURRENCY`: threads that run argon2id
    /// (signups and logins beyond them queue).
    pub password_hash_concurrency: usize,
    /// `CHAT_LIVE_POLL_SECS`: how often every connected user's inbox is
    /// re-read even without a wake-up (a safety net for lost notifications).
    pub live_poll: Duration,
    /// `CHAT_WS_OUTBOUND_FRAMES`: frames queued to a slow client before it
    /// is disconnected.
    pub outbound_frames: usize,
    /// `CHAT_WS_OUTBOUND_BYTES`: bytes queued to a slow client before it is
    /// disconnected.
    pub outbound_bytes: usize,
    /// `CHAT_WS_STALL_TIMEOUT_MS`: a client whose full outbound queue does
    /// not drain for this long is disconnected (close 4008).
    pub stall_timeout: Duration,
    /// `CHAT_WS_RATE_PER_SEC` and `CHAT_WS_RATE_BURST`: frames per second a
    /// connection may send, and the burst allowed.
    pub rate_per_sec: u32,
    /// See `rate_per_sec`.
    pub rate_burst: u32,
    /// `CHAT_WS_IDLE_TIMEOUT_MS`: a connection that sends nothing (not even
    /// a ping) for this long is closed.
    pub idle_timeout: Duration,
    /// `CHAT_SEND_TIMEOUT_MS`: how long a send waits for its sequencing.
    pub send_timeout: Duration,
    /// `CHAT_TYPING_INTERVAL_MS`: at most one typing event per device per
    /// interval is relayed; more are dropped.
    pub typing_interval: Duration,
    /// `CHAT_PRESENCE_SUBSCRIBE_MAX`: users a connection may follow with
    /// `presence.subscribe` (friends are followed without counting).
    pub presence_subscribe_max: usize,
    /// `CHAT_EPHEMERAL_BUFFER`: a user's ephemeral events (typing, logout,
    /// ban, friendship changes) a session may fall behind by; past that it
    /// is closed with 4008 and reconnects, so it never misses a logout or
    /// a ban.
    pub ephemeral_buffer: usize,
    /// `CHAT_GROUP_MAX_MEMBERS`: largest group, owner included.
    pub group_max_members: usize,
    /// `CHAT_USER_LOOKUP_PER_MIN`: profile lookups (by id or by name) a
    /// user may make per minute on one gateway.
    pub user_lookup_per_min: u32,
    /// `CHAT_USER_LOOKUP_BURST`: lookups a user may make at once.
    pub user_lookup_burst: u32,
    /// `CHAT_LOGIN_PER_ADDR_PER_MIN` and `CHAT_LOGIN_PER_ADDR_BURST`: login
    /// attempts (right or wrong) one client address may make per minute,
    /// and at once, on one gateway.
    pub login_per_addr_per_min: u32,
    /// See `login_per_addr_per_min`.
    pub login_per_addr_burst: u32,
    /// `CHAT_LOGIN_FAILURES_PER_MIN` and `CHAT_LOGIN_FAILURES_BURST`:
    /// failed logins one username may have per minute, and at once, on one
    /// gateway; beyond, its logins are refused (429) until the budget
    /// refills, even with the right password.
    pub login_failures_per_min: u32,
    /// See `login_failures_per_min`.
    pub login_failures_burst: u32,
    /// `CHAT_SIGNUP_PER_ADDR_PER_MIN` and `CHAT_SIGNUP_PER_ADDR_BURST`:
    /// signups one client address may attempt per minute, and at once, on
    /// one gateway.
    pub signup_per_addr_per_min: u32,
    /// See `signup_per_addr_per_min`.
    pub signup_per_addr_burst: u32,
    /// `CHAT_HTTP_MAX_BODY_BYTES`: largest HTTP request body, on every
    /// route (413 `body_too_large` beyond).
    pub http_max_body_bytes: usize,
    /// `CHAT_QUIC_ADDR`: UDP address of the QUIC endpoint; `off` disables it.
    pub quic_addr: Option<SocketAddr>,
    /// `CHAT_TLS_CERT` and `CHAT_TLS_KEY`: PEM certificate chain and key
    /// for QUIC; when neither is set a self-signed pair is generated once
    /// under `CHAT_DATA_DIR/tls/`.
    pub tls_cert: Option<std::path::PathBuf>,
    /// See `tls_cert`.
    pub tls_key: Option<std::path::PathBuf>,
    /// `CHAT_DATA_DIR`: where the gateway keeps generated files.
    pub data_dir: std::path::PathBuf,
    /// `CHAT_QUIC_IDLE_TIMEOUT_MS`: a QUIC connection silent this long is
    /// closed.
    pub quic_idle_timeout: Duration,
    /// `CHAT_QUIC_AUTH_TIMEOUT_MS`: a QUIC connection that has not sent its
    /// `auth` frame this long after the handshake is closed (4003).
    pub quic_auth_timeout: Duration,
    /// `CHAT_QUIC_KEEPALIVE_MS`: the server's QUIC keep-alive interval.
    pub quic_keep_alive: Duration,
    /// `CHAT_QUIC_SOCKET_BUFFER_BYTES`: receive and send buffer requested
    /// for the QUIC UDP socket (the kernel caps it at `net.core.rmem_max` /
    /// `wmem_max`).
    pub quic_socket_buffer: usize,
    /// `CHAT_QUIC_STREAM_WINDOW_BYTES`: bytes a client may have in flight
    /// on its session stream before it must wait for the gateway to read.
    pub quic_stream_window: u32,
    /// `CHAT_DELIVERED_FLUSH_MS`: how long delivered marks are coalesced
    /// before they are written to KV for the push planner.
    pub delivered_flush: Duration,
    /// Push providers this deployment has configured: registrations for
    /// the others are refused (`push_provider_disabled`).
    pub push_providers: PushProviders,
    /// `CHAT_WEBPUSH_ALLOW_HTTP`: accept `http://` Web Push endpoints (tests
    /// and development only; production endpoints must be `https://`).
    pub webpush_allow_http: bool,
    /// `CHAT_GATEWAY_ID`: this gateway's name on NATS subjects.
    pub gateway_id: String,
    /// Stream and bucket settings shared with the workers.
    pub storage: StorageSettings,
    /// `CHAT_PUBLIC_WS_URL`: the WebSocket URL clients are given in the
    /// registry; unset: `ws://<bound HTTP address>/v1/ws`.
    pub public_ws_url: Option<String>,
    /// `CHAT_PUBLIC_QUIC_ADDR`: the QUIC address clients are given; unset:
    /// the bound QUIC address (none when QUIC is off).
    pub public_quic_addr: Option<String>,
    /// `CHAT_REGION`: this gateway's region; discovery lists the caller's
    /// region first.
    pub region: String,
    /// `CHAT_MAX_CONNECTIONS`: sessions this gateway holds at most; beyond,
    /// new sessions get 503 `at_capacity`.
    pub max_connections: usize,
    /// `CHAT_DRAIN_SECS`: a draining gateway closes its sessions evenly
    /// over this long (close 4010, reconnect elsewhere).
    pub drain: Duration,
    /// `CHAT_OPERATOR_TOKEN`: the bearer credential of the operator
    /// endpoints (`POST /v1/admin/drain`); unset, they are disabled.
    pub operator_token: Option<String>,
    /// Banned words and flood detection (`CHAT_BANNED_WORDS_*`,
    /// `CHAT_FLOOD_*`, see [`crate::moderation`]).
    pub moderation: crate::moderation::ModerationConfig,
}

/// Which push providers are configured: a provider counts as configured
/// when its credentials variable is set (`CHAT_FCM_CREDENTIALS`,
/// `CHAT_APNS_KEY`, `CHAT_VAPID_PRIVATE_KEY`); gateways and workers are
/// given the same push variables.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PushProviders {
    /// Firebase Cloud Messaging.
    pub fcm: bool,
    /// Apple Push Notification service.
    pub apns: bool,
    /// Web Push.
    pub webpush: bool,
}

impl PushProviders {
    /// Reads which providers have credentials.
    pub fn from_source(src: &dyn Source) -> PushProviders {
        PushProviders {
            fcm: src.get(shared::FCM_CREDENTIALS).is_some(),
            apns: src.get(shared::APNS_KEY).is_some(),
            webpush: src.get(shared::VAPID_PRIVATE_KEY).is_some(),
        }
    }
}

/// Default `CHAT_LISTEN_BACKLOG`: connections the kernel completes and
/// queues before the gateway accepts them. tokio's `TcpListener::bind`
/// asks for 128, which a ramp of thousands of clients overflows (the
/// kernel then drops SYNs and each client waits ~1 s to retransmit).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Default of `CHAT_ROOM_BACKLOG`.
pub const ROOM_BACKLOG: u64 = 50;

impl GatewayConfig {
    /// Reads and validates the configuration.
    pub fn from_source(src: &dyn Source) -> Result<GatewayConfig, ConfigError> {
        let token_secrets = crate::auth::secret::token_secrets(src)?;
        let gateway_id = token_var(src, "CHAT_GATEWAY_ID", &format!("gw{}", std::process::id()))?;
        Ok(GatewayConfig {
            http_addr: var(src, "CHAT_HTTP_ADDR", SocketAddr::from(([127, 0, 0, 1], 8080)))?,
            listen_backlog: bounded(src, "CHAT_LISTEN_BACKLOG", LISTEN_BACKLOG.into(), 1, 65_535)? as u32,
            nats_url: shared::nats_url(src)?,
            nats_credentials: shared::nats_credentials(src)?,
            database_url: shared::database_url(src)?,
            db_pool_size: shared::db_pool_size(src)?,
            token_secrets,
            token_ttl: Duration::from_secs(bounded(src, "CHAT_TOKEN_TTL_SECS", 7 * 24 * 3600, 1, 365 * 24 * 3600)?),
            max_body_chars: bounded(src, "CHAT_MAX_BODY_CHARS", 100_000, 1, 200_000)? as usize,
            own_send_reads: var(src, "CHAT_OWN_SEND_READS", true)?,
            own_read_flush: Duration::from_millis(bounded(src, "CHAT_OWN_READ_FLUSH_MS", 100, 1, 10_000)?),
            delivery_receipts: var(src, "CHAT_DELIVERY_RECEIPTS", true)?,
            send_path: var(src, "CHAT_SEND_PATH", SendPath::Ingress)?,
            handoff_wait: Duration::from_millis(bounded(src, "CHAT_SEND_HANDOFF_WAIT_MS", 2_000, 10, 600_000)?),
            edit_window: std::time::Duration::from_secs(bounded(
                src,
                "CHAT_EDIT_WINDOW_SECS",
                3600,
                1,
                30 * 24 * 3600,
            )?),
            max_frame_bytes: bounded(src, "CHAT_WS_MAX_FRAME_BYTES", 1 << 20, 1024, 1 << 20)? as usize,
            room_backlog: bounded(src, "CHAT_ROOM_BACKLOG", ROOM_BACKLOG, 0, 100)? as usize,
            room_queue_frames: bounded(src, "CHAT_ROOM_QUEUE_FRAMES", 256, 1, 1 << 20)? as usize,
            room_max_joined: bounded(src, "CHAT_ROOM_MAX_JOINED", 16, 1, 1000)? as usize,
            live_poll: Duration::from_secs(bounded(src, "CHAT_LIVE_POLL_SECS", 60, 1, 86_400)?),
            password_hash_concurrency: bounded(
                src,
                "CHAT_PASSWORD_HASH_CONCURRENCY",
                std::thread::available_parallelism().map_or(2, |n| n.get() as u64),
                1,
                256,
            )? as usize,
            history_index_cache: bounded(src, "CHAT_HISTORY_INDEX_CACHE", 200_000, 0, 100_000_000)? as usize,
            search_max_limit: bounded(src, "CHAT_SEARCH_MAX_LIMIT", 100, 1, 1000)? as usize,
            search_max_query_chars: bounded(src, "CHAT_SEARCH_MAX_QUERY_CHARS", 200, 2, 1000)? as usize,
            outbound_frames: bounded(src, "CHAT_WS_OUTBOUND_FRAMES", 1024, 8, 1 << 20)? as usize,
            outbound_bytes: bounded(src, "CHAT_WS_OUTBOUND_BYTES", 8 << 20, 1 << 20, 1 << 30)? as usize,
            stall_timeout: Duration::from_millis(bounded(src, "CHAT_WS_STALL_TIMEOUT_MS", 10_000, 100, 3_600_000)?),
            rate_per_sec: bounded(src, "CHAT_WS_RATE_PER_SEC", 100, 1, 1_000_000)? as u32,
            rate_burst: bounded(src, "CHAT_WS_RATE_BURST", 200, 1, 1_000_000)? as u32,
            idle_timeout: Duration::from_millis(bounded(src, "CHAT_WS_IDLE_TIMEOUT_MS", 60_000, 1_000, 86_400_000)?),
            send_timeout: Duration::from_millis(bounded(src, "CHAT_SEND_TIMEOUT_MS", 10_000, 100, 600_000)?),
            typing_interval: Duration::from_millis(bounded(src, "CHAT_TYPING_INTERVAL_MS", 1000, 0, 60_000)?),
            presence_subscribe_max: bounded(src, "CHAT_PRESENCE_SUBSCRIBE_MAX", 256, 0, 10_000)? as usize,
            ephemeral_buffer: bounded(src, "CHAT_EPHEMERAL_BUFFER", 64, 1, 65_536)? as usize,
            group_max_members: bounded(src, "CHAT_GROUP_MAX_MEMBERS", 100, 2, 5000)? as usize,
            user_lookup_per_min: bounded(src, "CHAT_USER_LOOKUP_PER_MIN", 60, 1, 100_000)? as u32,
            user_lookup_burst: bounded(src, "CHAT_USER_LOOKUP_BURST", 30, 1, 100_000)? as u32,
            login_per_addr_per_min: bounded(src, "CHAT_LOGIN_PER_ADDR_PER_MIN", 60, 1, 1_000_000)? as u32,
            login_per_addr_burst: bounded(src, "CHAT_LOGIN_PER_ADDR_BURST", 30, 1, 1_000_000)? as u32,
            login_failures_per_min: bounded(src, "CHAT_LOGIN_FAILURES_PER_MIN", 5, 1, 1_000_000)? as u32,
            login_failures_burst: bounded(src, "CHAT_LOGIN_FAILURES_BURST", 10, 1, 1_000_000)? as u32,
            signup_per_addr_per_min: bounded(src, "CHAT_SIGNUP_PER_ADDR_PER_MIN", 2, 1, 1_000_000)? as u32,
            signup_per_addr_burst: bounded(src, "CHAT_SIGNUP_PER_ADDR_BURST", 10, 1, 1_000_000)? as u32,
            http_max_body_bytes: bounded(src, "CHAT_HTTP_MAX_BODY_BYTES", 64 << 10, 1024, 16 << 20)? as usize,
            quic_addr: match src.get("CHAT_QUIC_ADDR").as_deref() {
                Some("off") => None,
                _ => Some(var(src, "CHAT_QUIC_ADDR", SocketAddr::from(([127, 0, 0, 1], 8443)))?),
            },
            tls_cert: src.get("CHAT_TLS_CERT").map(Into::into),
            tls_key: src.get("CHAT_TLS_KEY").map(Into::into),
            data_dir: src.get("CHAT_DATA_DIR").unwrap_or_else(|| ".data".into()).into(),
            quic_idle_timeout: Duration::from_millis(bounded(
                src,
                "CHAT_QUIC_IDLE_TIMEOUT_MS",
                30_000,
                1_000,
                600_000,
            )?),
            quic_auth_timeout: Duration::from_millis(bounded(src, "CHAT_QUIC_AUTH_TIMEOUT_MS", 10_000, 100, 600_000)?),
            quic_keep_alive: Duration::from_millis(bounded(src, "CHAT_QUIC_KEEPALIVE_MS", 10_000, 100, 600_000)?),
            quic_socket_buffer: bounded(src, "CHAT_QUIC_SOCKET_BUFFER_BYTES", 4 << 20, 64 << 10, 1 << 30)? as usize,
            quic_stream_window: bounded(src, "CHAT_QUIC_STREAM_WINDOW_BYTES", 256 << 10, 16 << 10, 16 << 20)? as u32,
            delivered_flush: Duration::from_millis(bounded(src, "CHAT_DELIVERED_FLUSH_MS", 100, 1, 1000)?),
            push_providers: PushProviders::from_source(src),
            webpush_allow_http: var(src, "CHAT_WEBPUSH_ALLOW_HTTP", false)?,
            gateway_id,
            storage: StorageSettings::from_source(src)?,
            public_ws_url: src.get("CHAT_PUBLIC_WS_URL"),
            public_quic_addr: src.get("CHAT_PUBLIC_QUIC_ADDR"),
            region: token_var(src, "CHAT_REGION", "local")?,
            max_connections: bounded(src, "CHAT_MAX_CONNECTIONS", 10_000, 1, 10_000_000)? as usize,
            drain: Duration::from_secs(bounded(src, "CHAT_DRAIN_SECS", 10, 0, 3600)?),
            operator_token: match src.get("CHAT_OPERATOR_TOKEN") {
                Some(t) if t.chars().count() < 32 => {
                    return Err(ConfigError::Invalid {
                        name: "CHAT_OPERATOR_TOKEN".into(),
                        value: "<hidden>".into(),
                        reason: "use at least 32 characters".into(),
                    })
                }
                t => t,
            },
            moderation: crate::moderation::ModerationConfig::from_source(src)?,
        })
    }
}

/// A variable that must be a subject-safe token (1-64 of `[A-Za-z0-9_-]`).
fn token_var(src: &dyn Source, name: &str, default: &str) -> Result<String, ConfigError> {
    let v = var(src, name, default.to_string())?;
    if chat_nats::subjects::is_token(&v) {
        Ok(v)
    } else {
        Err(ConfigError::Invalid { name: name.into(), value: v, reason: "use 1-64 characters of [A-Za-z0-9_-]".into() })
    }
}

/// Re-exported so `main` reads the process environment.
pub use config::Env;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A source with a token secret (at least 32 characters) and `vars`.
    fn source(vars: &[(&str, &str)]) -> HashMap<String, String> {
        let mut src: HashMap<String, String> =
            [("CHAT_TOKEN_SECRET".into(), "a-test-secret-of-at-least-32-characters".into())].into();
        src.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        src
    }

    #[test]
    fn scale_out_settings_default_and_are_checked() {
        let cfg = |vars: &[(&str, &str)]| GatewayConfig::from_source(&source(vars));
        let d = cfg(&[]).unwrap();
        assert_eq!((d.region.as_str(), d.max_connections, d.drain.as_secs()), ("local", 10_000, 10));
        assert!(d.operator_token.is_none() && d.public_ws_url.is_none());
        let e = cfg(&[("CHAT_OPERATOR_TOKEN", "short")]).unwrap_err().to_string();
        assert!(e.contains("CHAT_OPERATOR_TOKEN") && !e.contains("short"), "the value is not echoed: {e}");
        for (k, v) in [("CHAT_REGION", "eu.west"), ("CHAT_MAX_CONNECTIONS", "0"), ("CHAT_DRAIN_SECS", "3601")] {
            assert!(cfg(&[(k, v)]).unwrap_err().to_string().contains(k), "{k}={v}");
        }
    }

    #[test]
    fn listen_backlog_defaults_to_production_size_and_is_bounded() {
        let backlog = |v: &str| GatewayConfig::from_source(&source(&[("CHAT_LISTEN_BACKLOG", v)]));
        assert_eq!(GatewayConfig::from_source(&source(&[])).unwrap().listen_backlog, LISTEN_BACKLOG);
        assert_eq!(backlog("128").unwrap().listen_backlog, 128);
        assert_eq!(backlog("65535").unwrap().listen_backlog, 65_535);
        for bad in ["0", "65536", "-1", "many"] {
            let e = backlog(bad).unwrap_err().to_string();
            assert!(e.contains("CHAT_LISTEN_BACKLOG") && e.contains(bad), "{bad}: {e}");
        }
    }
}
