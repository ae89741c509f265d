//! A session that survives its gateway: [`Failover`] reconnects with
//! exponential backoff and full jitter, picks the next edge from discovery
//! (`GET /v1/edges`, else the seed addresses in turn), resumes delivery
//! from the cursor of the last message it returned, and sends every unacked
//! `send` again with its `cid` (the server deduplicates it). It does so
//! whatever ended the connection: a drain (close 4010), a shutdown (1001),
//! a refusal (503 `at_capacity`/`draining`), or a killed gateway (the
//! connection drops without a close).

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{io, quic, ClientError, Conn, Http, Transport};

/// One gateway as discovery lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    /// Its `CHAT_GATEWAY_ID`.
    pub id: String,
    /// `host:port` for HTTP and WebSocket (from its `ws_url`).
    pub http: String,
    /// Its QUIC address, if it serves QUIC.
    pub quic_addr: Option<String>,
    /// Its region.
    pub region: String,
    /// Its load in thousandths (connections / capacity).
    pub load_permille: u32,
}

impl Edge {
    /// Reads one entry of `GET /v1/edges` (or of the login's `edges`).
    pub fn from_json(v: &Value) -> Option<Edge> {
        let ws = v["ws_url"].as_str()?;
        let rest = ws.split_once("://").map_or(ws, |(_, r)| r);
        let http = rest.split('/').next().filter(|h| !h.is_empty())?.to_owned();
        Some(Edge {
            id: v["id"].as_str().unwrap_or_default().to_owned(),
            http,
            quic_addr: v["quic_addr"].as_str().map(str::to_owned),
            region: v["region"].as_str().unwrap_or_default().to_owned(),
            load_permille: (v["load"].as_f64().unwrap_or(0.0) * 1000.0) as u32,
        })
    }
}

impl Http {
    /// `GET /v1/edges`: live gateways accepting sessions, best first.
    pub async fn edges(&self, region: Option<&str>) -> Result<Vec<Edge>, ClientError> {
        let path = match region {
            Some(r) => format!("/v1/edges?region={r}"),
            None => "/v1/edges".to_owned(),
        };
        let v = self.ok(hyper::Method::GET, &path, None, None).await?;
        Ok(v["edges"].as_array().into_iter().flatten().filter_map(Edge::from_json).collect())
    }
}

/// Exponential backoff with full jitter: the n-th wait is uniform in
/// `[0, min(max, base * 2^n)]`.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at `base`, never beyond `max`.
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max, attempt: 0 }
    }

    /// The next wait.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.base.saturating_mul(1u32 << self.attempt.min(20)).min(self.max);
        self.attempt += 1;
        let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
        cap.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
    }

    /// After a success: start from `base` again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// How a [`Failover`] session finds and reaches gateways.
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// `host:port` of gateways to ask for edges (and to use if none answers).
    pub seeds: Vec<String>,
    /// The client's region for discovery (default: the asked gateway's).
    pub region: Option<String>,
    /// Use QUIC (to each edge's `quic_addr`) with this trust; else WebSocket.
    pub quic: Option<quic::Trust>,
    /// First reconnect wait bound (doubling, jittered).
    pub backoff_base: Duration,
    /// Largest reconnect wait bound.
    pub backoff_max: Duration,
    /// A read this long without a frame sends a `ping`; two in a row without
    /// an answer count as a dead connection.
    pub ping_after: Duration,
}

impl FailoverConfig {
    /// WebSocket to the given seeds, backoff 100 ms doubling to 5 s, ping
    /// after 5 s of silence.
    pub fn new(seeds: Vec<String>) -> FailoverConfig {
        FailoverConfig {
            seeds,
            region: None,
            quic: None,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            ping_after: Duration::from_secs(5),
        }
    }
}

/// What [`Failover::next`] returns.
#[derive(Debug, Clone)]
pub enum Event {
    /// A `msg` frame (the cursor has moved past it).
    Msg(Value),
    /// The `ack` of a send (no longer pending).
    Ack(Value),
    /// A send refused for good (a non-retryable `error` with its `cid`).
    Refused(Value),
    /// The session moved to another connection.
    Moved {
        /// Gateway id (or address) left.
        from: String,
        /// Gateway id (or address) now used.
        to: String,
        /// The close code that ended the old connection (1006: dropped).
        code: u16,
        /// From noticing the loss to the new connection syncing.
        took: Duration,
    },
    /// Any other frame (`synced`, `presence`, `typing`, `pong`, errors
    /// without a `cid`).
    Other(Value),
}

/// Error codes after which a send is tried again with its `cid`.
pub fn retryable(code: &str) -> bool {
    matches!(code, "timeout" | "unavailable" | "internal" | "draining" | "at_capacity" | "rate_limited")
}

/// The clients of a lost gateway all ask at once: start at a random one of
/// the best edges (same region, load within 5 % of the best) so they do not
/// all land on the same gateway.
fn spread(edges: &mut [Edge]) {
    let Some(best) = edges.first().cloned() else { return };
    let near =
        edges.iter().take_while(|e| e.region == best.region && e.load_permille <= best.load_permille + 50).count();
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    edges[..near].rotate_left((r % near as u64) as usize);
}

/// A session that moves between gateways by itself (see the module docs).
pub struct Failover {
    cfg: FailoverConfig,
    token: String,
    cursor: Option<String>,
    pending: BTreeMap<u64, (String, Value)>,
    by_cid: HashMap<String, u64>,
    next_seq: u64,
    conn: Option<(Conn, Edge)>,
    lost: Option<(Instant, String, u16)>,
    backoff: Backoff,
    silent: u32,
    moves: u64,
    seed_turn: usize,
    connected_once: bool,
}

impl Failover {
    /// A session for `token`, resuming after `cursor`; it connects on the
    /// first [`Failover::next`] or [`Failover::send`].
    pub fn new(cfg: FailoverConfig, token: &str, cursor: Option<String>) -> Failover {
        let backoff = Backoff::new(cfg.backoff_base, cfg.backoff_max);
        Failover {
            cfg,
            token: token.to_owned(),
            cursor,
            pending: BTreeMap::new(),
            by_cid: HashMap::new(),
            next_seq: 0,
            conn: None,
            lost: None,
            backoff,
            silent: 0,
            moves: 0,
            seed_turn: 0,
            connected_once: false,
        }
    }

    /// The cursor after the last message returned.
    pub fn cursor(&self) -> Option<&str> {
        self.cursor.as_deref()
    }

    /// Sends not acked (nor refused) yet.
    pub fn unacked(&self) -> usize {
        self.pending.len()
    }

    /// How many times the session moved.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// The gateway in use, if connected.
    pub fn edge(&self) -> Option<&Edge> {
        self.conn.as_ref().map(|(_, e)| e)
    }

    /// True while connected over QUIC (false over WebSocket or when not
    /// connected): a QUIC session moves to edges with a `quic_addr` and
    /// falls back to WebSocket only on the seeds when discovery fails.
    pub fn over_quic(&self) -> bool {
        self.conn.as_ref().is_some_and(|(c, _)| c.quic().is_some())
    }

    /// Queues a `send` frame (it must carry its `cid`) until its `ack`; it
    /// goes out now if connected, else after the next connect.
    pub async fn send(&mut self, cid: &str, frame: Value) -> Result<(), ClientError> {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.insert(seq, (cid.to_owned(), frame.clone()));
        self.by_cid.insert(cid.to_owned(), seq);
        if let Some((c, _)) = &mut self.conn {
            if c.send_json(&frame).await.is_err() {
                self.lose(1006);
            }
        }
        Ok(())
    }

    /// Closes the current connection cleanly.
    pub async fn close(mut self) {
        if let Some((c, _)) = self.conn.take() {
            c.close().await;
        }
    }

    /// Connects if not connected: rounds over discovery with backoff until a
    /// gateway takes the session; `Some(Event::Moved)` if this was a move.
    /// A caller that cuts [`Failover::next`] short with a timeout (to send,
    /// or to look at a stop flag) calls this uncut while
    /// [`Failover::edge`] is `None`: a reconnect cancelled part-way starts
    /// over, so a timeout shorter than a reconnect under load would keep a
    /// session from ever getting back.
    pub async fn connect(&mut self) -> Result<Option<Event>, ClientError> {
        while self.conn.is_none() {
            if let Some(moved) = self.reconnect().await? {
                return Ok(Some(moved));
            }
        }
        Ok(None)
    }

    /// The next event; reconnects as often as needed (waiting with backoff).
    /// Cancelling it between frames loses nothing; cancelling it during a
    /// reconnect makes the next call start that reconnect over (see
    /// [`Failover::connect`]).
    pub async fn next(&mut self) -> Result<Event, ClientError> {
        loop {
            if self.conn.is_none() {
                if let Some(moved) = self.reconnect().await? {
                    return Ok(moved);
                }
                continue;
            }
            let (c, _) = self.conn.as_mut().expect("connected");
            c.timeout = self.cfg.ping_after;
            match c.next().await {
                Ok(v) => {
                    self.silent = 0;
                    if let Some(e) = self.on_frame(v).await {
                        return Ok(e);
                    }
                }
                Err(ClientError::Timeout(_)) => {
                    self.silent += 1;
                    if self.silent >= 2 || c.send_json(&json!({"type": "ping"})).await.is_err() {
                        self.lose(1006);
                    }
                }
                Err(ClientError::Closed { code, .. }) => self.lose(code),
                Err(_) => self.lose(1006),
            }
        }
    }

    async fn on_frame(&mut self, v: Value) -> Option<Event> {
        match v["type"].as_str() {
            Some("msg") => {
                if let Some(c) = v["cursor"].as_str() {
                    self.cursor = Some(c.to_owned());
                }
                Some(Event::Msg(v))
            }
            Some("synced") => {
                if let Some(c) = v["cursor"].as_str() {
                    self.cursor = Some(c.to_owned());
                }
                Some(Event::Other(v))
            }
            Some("ack") => {
                let seq = self.by_cid.remove(v["cid"].as_str().unwrap_or_default())?;
                self.pending.remove(&seq);
                Some(Event::Ack(v))
            }
            Some("error") if v["cid"].is_string() => {
                let cid = v["cid"].as_str().unwrap_or_default().to_owned();
                let seq = *self.by_cid.get(&cid)?;
                if retryable(v["code"].as_str().unwrap_or_default()) {
                    // Once more on this connection (or after the reconnect).
                    let frame = self.pending.get(&seq).map(|(_, f)| f.clone())?;
                    if let Some((c, _)) = &mut self.conn {
                        if c.send_json(&frame).await.is_err() {
                            self.lose(1006);
                        }
                    }
                    None
                } else {
                    self.by_cid.remove(&cid);
                    self.pending.remove(&seq);
                    Some(Event::Refused(v))
                }
            }
            _ => Some(Event::Other(v)),
        }
    }

    fn lose(&mut self, code: u16) {
        if let Some((_, edge)) = self.conn.take() {
            self.lost = Some((Instant::now(), edge.id.clone(), code));
        }
        self.silent = 0;
    }

    /// Gateways to try, best first: discovery from the last edge or any
    /// seed; the seeds themselves if no gateway answers.
    async fn candidates(&mut self) -> Vec<Edge> {
        let seeds = |seeds: &[String]| -> Vec<Edge> {
            seeds
                .iter()
                .map(|a| Edge {
                    id: a.clone(),
                    http: a.clone(),
                    quic_addr: None,
                    region: String::new(),
                    load_permille: 0,
                })
                .collect()
        };
        // The first connection goes where the client was told (the seeds,
        // e.g. the login's best edge); discovery is for moving.
        if !self.connected_once && self.cfg.quic.is_none() {
            self.connected_once = true;
            return seeds(&self.cfg.seeds);
        }
        let failed = self.lost.as_ref().map(|(_, id, _)| id.clone());
        let n = self.cfg.seeds.len().max(1);
        self.seed_turn = (self.seed_turn + 1) % n;
        let mut ask: Vec<String> = self.cfg.seeds.iter().cycle().skip(self.seed_turn).take(n).cloned().collect();
        ask.dedup();
        for addr in &ask {
            let http = Http::new(addr);
            if let Ok(Ok(mut edges)) =
                tokio::time::timeout(Duration::from_secs(2), http.edges(self.cfg.region.as_deref())).await
            {
                if edges.len() > 1 {
                    edges.retain(|e| Some(&e.id) != failed.as_ref());
                }
                if self.cfg.quic.is_some() {
                    edges.retain(|e| e.quic_addr.is_some());
                }
                if !edges.is_empty() {
                    spread(&mut edges);
                    return edges;
                }
            }
        }
        seeds(&ask)
    }

    /// One round over the candidates, then a backoff wait if none took us.
    async fn reconnect(&mut self) -> Result<Option<Event>, ClientError> {
        if self.cfg.seeds.is_empty() {
            return Err(io("no gateway address to connect to"));
        }
        for edge in self.candidates().await {
            let transport = match (&self.cfg.quic, &edge.quic_addr) {
                (Some(trust), Some(addr)) => Transport::Quic { addr: addr.clone(), trust: trust.clone() },
                _ => Transport::Ws,
            };
            let connect = Conn::connect_with(&transport, &edge.http, &self.token);
            let mut c = match tokio::time::timeout(Duration::from_secs(5), connect).await {
                Ok(Ok(c)) => c,
                // A refused token is refused by every gateway.
                Ok(Err(e @ ClientError::Api { status: 401, .. })) => return Err(e),
                _ => continue,
            };
            let sync = match &self.cursor {
                Some(cur) => json!({"type": "sync", "cursor": cur}),
                None => json!({"type": "sync"}),
            };
            if c.send_json(&sync).await.is_err() {
                continue;
            }
            let mut ok = true;
            for (_, frame) in self.pending.values() {
                if c.send_json(frame).await.is_err() {
                    ok = false;
                    break;
                }
            }
            if !ok {
                continue;
            }
            self.backoff.reset();
            let to = edge.id.clone();
            self.conn = Some((c, edge));
            return Ok(self.lost.take().map(|(at, from, code)| {
                self.moves += 1;
                Event::Moved { from, to, code, took: at.elapsed() }
            }));
        }
        tokio::time::sleep(self.backoff.next_delay()).await;
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_parse_and_backoff_is_bounded_and_jittered() {
        let e = Edge::from_json(&json!({"id": "gw1", "ws_url": "ws://10.0.0.1:8080/v1/ws", "quic_addr": null,
                                       "region": "eu"}))
        .unwrap();
        assert_eq!(
            (e.id.as_str(), e.http.as_str(), e.quic_addr, e.region.as_str()),
            ("gw1", "10.0.0.1:8080", None, "eu")
        );
        assert!(Edge::from_json(&json!({"id": "x"})).is_none());
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let waits: Vec<Duration> = (0..30).map(|_| b.next_delay()).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_secs(1)));
        assert!(waits[..2].iter().all(|w| *w <= Duration::from_millis(200)));
        let distinct: std::collections::HashSet<_> = waits.iter().collect();
        assert!(distinct.len() > 20, "jittered: {waits:?}");
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
