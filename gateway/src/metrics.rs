//! The gateway's Prometheus metrics, served by `GET /metrics` ([`scrape`]).
//!
//! Recording is cheap on the hot path: the per-frame and per-session
//! counters are resolved once at start-up into arrays indexed by fixed
//! enums (an atomic add each, no lookup, no allocation); label sets that
//! are looked up per event (refused sends by code, closes by code, HTTP by
//! route and status) are built of `&'static str` and integers, never of
//! client input. Pool, NATS and session counts are read at scrape time.

use std::time::Instant;

use chat_nats::wire::{ErrorCode, ServerFrame};
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use chat_nats::metrics::{count_histogram, seconds_histogram, Seconds};

/// A client transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// WebSocket (`GET /v1/ws`).
    Ws = 0,
    /// QUIC (ALPN `chat/1`).
    Quic = 1,
}

const TRANSPORTS: [&str; 2] = ["ws", "quic"];

/// Client frame types as counted (`invalid`: did not parse).
const FRAMES_IN: [&str; 10] = [
    "send",
    "sync",
    "ping",
    "typing",
    "presence.subscribe",
    "presence.unsubscribe",
    "read",
    "invalid",
    "binary",
    "room",
];

/// Server frame types as counted (`other`: none of the known ones).
const FRAMES_OUT: [&str; 14] = [
    "ack",
    "error",
    "msg",
    "synced",
    "pong",
    "presence",
    "typing",
    "read",
    "receipt",
    "delivered",
    "joined",
    "left",
    "gap",
    "other",
];

/// A server frame's type, as an index into `FRAMES_OUT`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameOut(usize);

impl FrameOut {
    /// The type a server frame's text starts with (every server frame is
    /// serialized with its tag first: see `error::frame`).
    pub fn of(text: &str) -> FrameOut {
        let t = text.strip_prefix("{\"type\":\"").and_then(|r| r.split('"').next()).unwrap_or("");
        FrameOut(FRAMES_OUT.iter().position(|k| *k == t).unwrap_or(FRAMES_OUT.len() - 1))
    }
}

/// When a `msg` frame goes out: live, or in a `sync`'s catch-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Live delivery after `synced`.
    Live = 0,
    /// Catch-up before `synced` (lag includes the time the device was away).
    CatchUp = 1,
}

const PHASES: [&str; 2] = ["live", "catchup"];

/// How a live copy reached its device: as the inbox stream republished it,
/// or read from the stream after a wake-up.
#[derive(Debug, Clone, Copy)]
pub enum LiveCopy {
    Pushed,
    Read,
}

const LIVE_COPIES: [&str; 2] = ["pushed", "read"];

/// One label, both halves static.
type Label = [(&'static str, &'static str); 1];

/// A close: the code and its reason.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CloseLabels {
    code: u16,
    reason: &'static str,
}

/// An HTTP request: route pattern, method, status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    route: Route,
    method: &'static str,
    status: u16,
}

/// An HTTP route label.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: Route,
}

/// A route as the router's pattern text (`stringify!` of its match arm,
/// say `["v1", "users", id]`), written as a path template
/// (`/v1/users/{id}`) only when scraped.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub struct Route(pub &'static str);

impl EncodeLabelValue for Route {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(&template(self.0))
    }
}

/// `["v1", "users", id]` → `/v1/users/{id}`; `[""]` → `/`; `_` →
/// `unmatched`; a label that is already a path is kept.
pub fn template(pattern: &str) -> String {
    let p = pattern.trim();
    if p == "_" {
        return "unmatched".into();
    }
    let Some(inner) = p.strip_prefix('[').and_then(|p| p.strip_suffix(']')) else { return p.to_owned() };
    let mut out = String::new();
    for seg in inner.split(',').map(str::trim) {
        match seg.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            Some("") => {}
            Some(lit) => {
                out.push('/');
                out.push_str(lit);
            }
            None => {
                out.push_str("/{");
                out.push_str(seg);
                out.push('}');
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    out
}

/// Every gateway metric.
pub struct Metrics {
    registry: Registry,
    sessions: [Gauge; 2],
    sessions_opened: [Counter; 2],
    frames_in: [Counter; FRAMES_IN.len()],
    frames_out: [Counter; FRAMES_OUT.len()],
    sends_acked: Counter,
    sends_refused: Family<Label, Counter>,
    send_seconds: Histogram,
    delivery_lag: [Histogram; 2],
    live_copies: [Counter; 2],
    catchup_messages: Histogram,
    catchup_seconds: Histogram,
    closes: Family<CloseLabels, Counter>,
    http: Family<HttpLabels, Counter>,
    http_seconds: Family<RouteLabel, Histogram, Seconds>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn resolved<const N: usize, M: Clone + Default>(
    family: &Family<Label, M>,
    key: &'static str,
    values: [&'static str; N],
) -> [M; N] {
    values.map(|v| family.get_or_create(&[(key, v)]).clone())
}

impl Metrics {
    /// Registers every metric; `db` adds the pool's, `client` the NATS
    /// connection's.
    pub fn new(
        db: &crate::store::Db,
        client: &async_nats::Client,
        moderation: &crate::moderation::Moderation,
        hub: &std::sync::Arc<crate::messaging::hub::Hub>,
    ) -> Metrics {
        let mut r = Registry::default();
        let sessions_family = Family::<Label, Gauge>::default();
        let opened_family = Family::<Label, Counter>::default();
        let in_family = Family::<Label, Counter>::default();
        let out_family = Family::<Label, Counter>::default();
        let lag_family = Family::<Label, Histogram, Seconds>::new_with_constructor(Seconds);
        let live_family = Family::<Label, Counter>::default();
        let m = Metrics {
            sessions: resolved(&sessions_family, "transport", TRANSPORTS),
            sessions_opened: resolved(&opened_family, "transport", TRANSPORTS),
            frames_in: resolved(&in_family, "type", FRAMES_IN),
            frames_out: resolved(&out_family, "type", FRAMES_OUT),
            sends_acked: Counter::default(),
            sends_refused: Family::default(),
            send_seconds: seconds_histogram(),
            delivery_lag: PHASES.map(|p| lag_family.get_or_create(&[("phase", p)]).clone()),
            live_copies: resolved(&live_family, "how", LIVE_COPIES),
            catchup_messages: count_histogram(),
            catchup_seconds: seconds_histogram(),
            closes: Family::default(),
            http: Family::default(),
            http_seconds: Family::new_with_constructor(Seconds),
            registry: Registry::default(),
        };
        r.register("chat_sessions", "Open client sessions by transport", sessions_family);
        r.register("chat_sessions_opened", "Client sessions started by transport", opened_family);
        r.register("chat_frames_in", "Client frames read, by type (invalid: did not parse)", in_family);
        r.register("chat_frames_out", "Server frames written to clients, by type", out_family);
        r.register("chat_sends_acked", "Sends answered with ack", m.sends_acked.clone());
        r.register("chat_sends_refused", "Sends answered with error, by error code", m.sends_refused.clone());
        r.register(
            "chat_send_ack_seconds",
            "From a send taken by the gateway to its ack or error",
            m.send_seconds.clone(),
        );
        r.register(
            "chat_delivery_lag_seconds",
            "From a message's ts (stored by the sequencer) to its msg frame written to the socket, by phase",
            lag_family,
        );
        r.register(
            "chat_live_copies",
            "Inbox copies delivered live, by how: pushed (as the inbox stream republished them, no read) or read",
            live_family,
        );
        r.register("chat_catchup_messages", "Messages delivered by one sync's catch-up", m.catchup_messages.clone());
        r.register(
            "chat_catchup_seconds",
            "From a sync to its synced frame queued (catch-up duration)",
            m.catchup_seconds.clone(),
        );
        r.register("chat_session_closes", "Sessions closed, by close code and reason", m.closes.clone());
        r.register("chat_http_requests", "HTTP requests by route pattern, method and status", m.http.clone());
        r.register("chat_http_request_seconds", "HTTP request handling time by route pattern", m.http_seconds.clone());
        db.pool.register(&mut r);
        r.register_collector(Box::new(chat_nats::metrics::NatsCollector(client.clone())));
        r.register_collector(Box::new(HubCollector(hub.clone())));
        r.register_collector(Box::new(ModerationCollector {
            words: moderation.word_stats.clone(),
            flood: moderation.flood.stats.clone(),
        }));
        Metrics { registry: r, ..m }
    }

    /// The registry as Prometheus text.
    pub fn encode(&self) -> String {
        chat_nats::metrics::encode(&self.registry)
    }

    /// Counts a session of `t` until the guard drops.
    pub fn session(&self, t: Transport) -> SessionGuard {
        self.sessions[t as usize].inc();
        self.sessions_opened[t as usize].inc();
        SessionGuard(self.sessions[t as usize].clone())
    }

    /// Counts a client text frame by its parsed type.
    pub fn frame_in(&self, parsed: Result<&chat_nats::wire::ClientFrame, ()>) {
        use chat_nats::wire::ClientFrame as F;
        let i = match parsed {
            Ok(F::Send { .. } | F::Edit { .. } | F::Delete { .. } | F::React { .. }) => 0,
            Ok(F::Sync { .. }) => 1,
            Ok(F::Ping) => 2,
            Ok(F::Typing { .. }) => 3,
            Ok(F::PresenceSubscribe { .. }) => 4,
            Ok(F::PresenceUnsubscribe { .. }) => 5,
            Ok(F::Read { .. }) => 6,
            Ok(F::Join { .. } | F::Leave { .. }) => 9,
            Err(()) => 7,
        };
        self.frames_in[i].inc();
    }

    /// Counts a binary client frame.
    pub fn binary_in(&self) {
        self.frames_in[8].inc();
    }

    /// Counts a server frame written.
    pub fn frame_out(&self, kind: FrameOut) {
        self.frames_out[kind.0].inc();
    }

    /// Records a send's answer and how long it took.
    pub fn send_answered(&self, reply: &ServerFrame, started: Instant) {
        self.send_seconds.observe(chat_nats::metrics::secs(started));
        match reply {
            ServerFrame::Error { code, .. } => self.refused(*code),
            _ => {
                self.sends_acked.inc();
            }
        }
    }

    fn refused(&self, code: ErrorCode) {
        self.sends_refused.get_or_create(&[("code", code.as_str())]).inc();
    }

    /// Records a `msg` frame written now, its message stored at `stored_ts_ms`
    /// (a negative lag, from clock skew between hosts, counts as 0).
    pub fn delivered(&self, stored_ts_ms: u64, phase: Phase) {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let lag = (now.as_millis() as u64).saturating_sub(stored_ts_ms);
        self.delivery_lag[phase as usize].observe(lag as f64 / 1000.0);
    }

    /// Counts a copy delivered live.
    pub fn live_copy(&self, how: LiveCopy) {
        self.live_copies[how as usize].inc();
    }

    /// Records one sync's catch-up.
    pub fn catch_up(&self, messages: u64, started: Instant) {
        self.catchup_messages.observe(messages as f64);
        self.catchup_seconds.observe(chat_nats::metrics::secs(started));
    }

    /// Records a session closed with `code`.
    pub fn closed(&self, code: u16) {
        self.closes.get_or_create(&CloseLabels { code, reason: crate::error::close_reason(code) }).inc();
    }

    /// Records an HTTP request.
    pub fn http(&self, route: Route, method: &hyper::Method, status: u16, started: Instant) {
        let method = method_label(method);
        self.http.get_or_create(&HttpLabels { route, method, status }).inc();
        self.http_seconds.get_or_create(&RouteLabel { route }).observe(chat_nats::metrics::secs(started));
    }
}

fn method_label(m: &hyper::Method) -> &'static str {
    use hyper::Method as M;
    match *m {
        M::GET => "GET",
        M::POST => "POST",
        M::PUT => "PUT",
        M::DELETE => "DELETE",
        M::PATCH => "PATCH",
        M::HEAD => "HEAD",
        M::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Holds one session in the `chat_sessions` gauge.
#[derive(Debug)]
pub struct SessionGuard(Gauge);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `GET /metrics`: the operator credential, like every operator endpoint
/// on this public listener (see `docs/operations.md`).
pub fn scrape(
    st: &crate::AppState,
    req: &hyper::Request<hyper::body::Incoming>,
) -> Result<crate::http::Resp, crate::error::ClientError> {
    crate::http::edges::require_operator(st, req)?;
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(st.metrics.encode())));
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(chat_nats::metrics::CONTENT_TYPE));
    Ok(resp)
}

/// Moderation's counters, read when scraped.
#[derive(Debug)]
struct ModerationCollector {
    words: std::sync::Arc<crate::moderation::WordStats>,
    flood: std::sync::Arc<crate::moderation::flood::FloodStats>,
}

impl prometheus_client::collector::Collector for ModerationCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use std::sync::atomic::Ordering::Relaxed;
        let counters = [
            ("chat_banned_word_rejected", "Sends refused with banned_word", self.words.rejected.load(Relaxed)),
            ("chat_banned_word_masked", "Sends stored with banned words masked", self.words.masked.load(Relaxed)),
            (
                "chat_flood_limited",
                "Sends refused with rate_limited by flood detection",
                self.flood.limited.load(Relaxed),
            ),
            ("chat_flood_mutes", "Flood mutes set by this gateway", self.flood.mutes.load(Relaxed)),
            (
                "chat_flood_muted_sends",
                "Sends refused because the sender is muted",
                self.flood.muted_sends.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            chat_nats::metrics::const_counter(&mut encoder, name, help, value)?;
        }
        Ok(())
    }
}

/// The hub's shared subscriptions and its subscribing connection, read at
/// scrape time.
#[derive(Debug)]
struct HubCollector(std::sync::Arc<crate::messaging::hub::Hub>);

impl prometheus_client::collector::Collector for HubCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use chat_nats::metrics::{const_counter, const_gauge};
        let (subjects, conn) = self.0.stats();
        let help = "Subjects the gateway subscribes to for its sessions (wake-ups, events, presence)";
        const_gauge(&mut encoder, "chat_hub_subjects", help, subjects as i64)?;
        if let Some((up, reconnects)) = conn {
            let help = "1 while the gateway's subscribing NATS connection is up";
            const_gauge(&mut encoder, "chat_hub_connected", help, i64::from(up))?;
            let help = "Subscribing NATS connections re-established after the first";
            const_counter(&mut encoder, "chat_hub_reconnects", help, reconnects)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns_become_templates() {
        assert_eq!(template(r#"["v1", "users", "by-name", name]"#), "/v1/users/by-name/{name}");
        assert_eq!(template(r#"["v1", "groups", id, "members", user, "role"]"#), "/v1/groups/{id}/members/{user}/role");
        assert_eq!(template(r#"[""]"#), "/");
        assert_eq!(template("[name]"), "/{name}");
        assert_eq!(template("_"), "unmatched");
        assert_eq!(template("*"), "*");
    }

    #[test]
    fn server_frames_are_told_apart_by_their_leading_tag() {
        use crate::error::frame;
        let of = |f: &ServerFrame| FRAMES_OUT[FrameOut::of(&frame(f)).0];
        assert_eq!(of(&ServerFrame::Pong), "pong");
        let e = ServerFrame::Error { cid: None, code: ErrorCode::BadJson, message: "m".into(), retry_after_ms: None };
        assert_eq!(of(&e), "error");
        let s = ServerFrame::Synced { cursor: "1".into(), truncated: false };
        assert_eq!(of(&s), "synced");
        assert_eq!(FRAMES_OUT[FrameOut::of("{\"kind\":1}").0], "other");
    }
}
