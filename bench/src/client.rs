//! Bench-side clients: accounts and tokens, and a session connection
//! (WebSocket or QUIC) split into a writer and a reader so one task can
//! send on a schedule while another reads acks and messages.
//!
//! QUIC connections go through a [`Dialer`], which shares a few client
//! endpoints (one UDP socket each) between all of them: one socket per
//! connection would hit the limit of open files per process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use bytes::{Buf, BytesMut};
use chat_client::quic::quinn;
use chat_client::{ClientError, Http};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::Target;

/// Password of every bench account.
pub const PASSWORD: &str = "bench-password-1";

/// A bench account.
#[derive(Debug, Clone)]
pub struct User {
    /// User id.
    pub id: String,
    /// Username.
    pub name: String,
}

/// Creates `n` accounts named `<prefix><i>` through the HTTP API,
/// `concurrency` at a time (signup hashes a password with argon2, the
/// costly part of setting a scenario up).
pub async fn signup_users(t: &Target, prefix: &str, n: usize, concurrency: usize) -> Result<Vec<User>> {
    let sem = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let http = Http::new(t.gateway(i));
        let name = format!("{prefix}{i}");
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let id = http.signup(&name, PASSWORD).await.with_context(|| format!("signup {name}"))?;
            Ok::<_, anyhow::Error>(User { id, name })
        }));
    }
    let mut users = Vec::with_capacity(n);
    for t in tasks {
        users.push(t.await??);
    }
    Ok(users)
}

/// A prefix for account names unique to this run (usernames are 3-32
/// characters of `[a-z0-9_.-]`).
pub fn run_prefix(scenario: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("b{:x}{}-", (nanos as u64) & 0xff_ffff_ffff, &scenario[..scenario.len().min(3)])
}

/// A token for `device` of `user`: minted with the stack's secret when the
/// target knows it (no argon2 login per device), else by logging in.
pub async fn token(t: &Target, user: &User, device: &str) -> Result<String> {
    match &t.token_secret {
        Some(secret) => {
            let claims = chat_gateway::auth::Claims {
                user: user.id.parse().context("user id")?,
                device: device.to_owned(),
                exp: chat_gateway::auth::now_secs() + 24 * 3600,
                gen: 0,
            };
            Ok(chat_gateway::auth::issue(secret, &claims))
        }
        None => Ok(Http::new(t.gateway(0)).login(&user.name, PASSWORD, device).await?.token),
    }
}

/// A server frame, with only the fields the bench reads.
#[derive(Debug, Clone, Deserialize)]
pub struct Frame {
    /// Frame type.
    #[serde(rename = "type")]
    pub ty: String,
    /// Client message id (acks, errors, own messages).
    #[serde(default)]
    pub cid: Option<String>,
    /// Message body.
    #[serde(default)]
    pub body: Option<String>,
    /// Sync cursor (`msg`, `synced`).
    #[serde(default)]
    pub cursor: Option<String>,
    /// Error code.
    #[serde(default)]
    pub code: Option<String>,
    /// Error detail.
    #[serde(default)]
    pub message: Option<String>,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The writing half of a connection (WebSocket or QUIC).
pub struct WsTx(TxInner);

enum TxInner {
    Ws(SplitSink<Ws, Message>),
    Quic { conn: quinn::Connection, send: quinn::SendStream },
}

/// The reading half of a connection (WebSocket or QUIC).
pub struct WsRx(RxInner);

enum RxInner {
    Ws(SplitStream<Ws>),
    Quic { recv: quinn::RecvStream, buf: BytesMut },
}

/// Opens a WebSocket to `addr` with `token` (TCP_NODELAY on).
pub async fn connect(addr: &str, token: &str) -> Result<(WsTx, WsRx)> {
    let mut req = format!("ws://{addr}/v1/ws").into_client_request()?;
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(chat_client::ws_config()), true).await?;
    let (tx, rx) = ws.split();
    Ok((WsTx(TxInner::Ws(tx)), WsRx(RxInner::Ws(rx))))
}

/// [`connect`], retrying up to `tries` times with a growing pause (a
/// reconnect storm may overflow the listen backlog).
pub async fn connect_retry(addr: &str, token: &str, tries: u32) -> Result<(WsTx, WsRx, u32)> {
    retry(tries, || connect(addr, token)).await
}

async fn retry<F, Fut>(tries: u32, f: F) -> Result<(WsTx, WsRx, u32)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<(WsTx, WsRx)>>,
{
    let mut pause = Duration::from_millis(20);
    let mut last = None;
    for attempt in 0..tries.max(1) {
        match f().await {
            Ok((tx, rx)) => return Ok((tx, rx, attempt)),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    Err(last.unwrap_or_else(|| anyhow!("no attempt")))
}

/// The session transport of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// WebSocket (`ws://<gateway>/v1/ws`).
    #[default]
    Ws,
    /// QUIC (the gateway's `CHAT_QUIC_ADDR`), length-prefixed JSON frames.
    Quic,
}

impl Transport {
    /// `ws` or `quic`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Ws => "ws",
            Transport::Quic => "quic",
        }
    }

    /// A report's name: `scenario` over WebSocket, `scenario-quic` over QUIC.
    pub fn scenario(self, scenario: &str) -> String {
        match self {
            Transport::Ws => scenario.to_owned(),
            Transport::Quic => format!("{scenario}-quic"),
        }
    }
}

impl std::str::FromStr for Transport {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Transport> {
        match s {
            "ws" | "websocket" => Ok(Transport::Ws),
            "quic" => Ok(Transport::Quic),
            _ => bail!("transport {s:?}: ws or quic"),
        }
    }
}

/// Opens session connections to a target's gateways over one transport.
/// QUIC connections share `endpoints` client endpoints, round-robin.
#[derive(Clone)]
pub struct Dialer {
    transport: Transport,
    ws: Vec<String>,
    quic: Vec<(String, quinn::ClientConfig)>,
    endpoints: Arc<Vec<quinn::Endpoint>>,
    next: Arc<AtomicUsize>,
}

impl Dialer {
    /// A dialer for `t`'s gateways; for QUIC, with `endpoints` shared
    /// client endpoints (at least one).
    pub fn new(t: &Target, transport: Transport, endpoints: usize) -> Result<Dialer> {
        let mut d = Dialer {
            transport,
            ws: t.gateways.clone(),
            quic: vec![],
            endpoints: Arc::new(vec![]),
            next: Arc::new(AtomicUsize::new(0)),
        };
        if transport == Transport::Quic {
            anyhow::ensure!(
                !t.quic.is_empty() && t.quic.len() == t.gateways.len(),
                "QUIC needs each gateway's QUIC address and certificate fingerprint"
            );
            for q in &t.quic {
                let trust = chat_client::quic::Trust::Fingerprint(q.fingerprint.clone());
                d.quic.push((q.addr.clone(), chat_client::quic::client_config(&trust)?));
            }
            let local: std::net::SocketAddr = "0.0.0.0:0".parse()?;
            let eps = (0..endpoints.max(1)).map(|_| chat_client::quic::endpoint(local)).collect::<Result<_, _>>()?;
            d.endpoints = Arc::new(eps);
        }
        Ok(d)
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The address connections to gateway `gw` go to.
    pub fn addr(&self, gw: usize) -> &str {
        match self.transport {
            Transport::Ws => &self.ws[gw % self.ws.len()],
            Transport::Quic => &self.quic[gw % self.quic.len()].0,
        }
    }

    /// Opens an authenticated session connection to gateway `gw`.
    pub async fn connect(&self, gw: usize, token: &str) -> Result<(WsTx, WsRx)> {
        match self.transport {
            Transport::Ws => connect(self.addr(gw), token).await,
            Transport::Quic => {
                let (addr, cfg) = &self.quic[gw % self.quic.len()];
                let ep = &self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len()];
                let q = chat_client::quic::connect_via(ep, cfg, addr, "localhost", token).await?;
                let (conn, send, recv) = q.into_parts();
                Ok((WsTx(TxInner::Quic { conn, send }), WsRx(RxInner::Quic { recv, buf: BytesMut::new() })))
            }
        }
    }

    /// [`Dialer::connect`], retrying up to `tries` times.
    pub async fn connect_retry(&self, gw: usize, token: &str, tries: u32) -> Result<(WsTx, WsRx, u32)> {
        retry(tries, || self.connect(gw, token)).await
    }

    /// Connects and syncs from `cursor`; returns the halves and the cursor.
    pub async fn live(&self, gw: usize, token: &str, cursor: Option<&str>) -> Result<(WsTx, WsRx, String)> {
        let (mut tx, mut rx, _) = self.connect_retry(gw, token, 8).await?;
        tx.sync(cursor).await?;
        let (_, _, cursor) = rx.until_synced(Duration::from_secs(60)).await?;
        Ok((tx, rx, cursor))
    }
}

impl WsTx {
    /// Sends a JSON frame.
    pub async fn send(&mut self, v: &Value) -> Result<()> {
        match &mut self.0 {
            TxInner::Ws(tx) => tx.send(Message::text(v.to_string())).await.map_err(Into::into),
            TxInner::Quic { send, .. } => {
                let body = v.to_string();
                let mut frame = Vec::with_capacity(4 + body.len());
                frame.extend_from_slice(&(body.len() as u32).to_be_bytes());
                frame.extend_from_slice(body.as_bytes());
                send.write_all(&frame).await.map_err(Into::into)
            }
        }
    }

    /// Sends a `send` frame to `to` (`{"user": id}` or `{"group": id}`).
    pub async fn send_msg(&mut self, cid: &str, to: &Value, body: &str) -> Result<()> {
        self.send(&json!({"type": "send", "cid": cid, "to": to, "body": body})).await
    }

    /// Sends `sync` from `cursor` (the beginning when `None`).
    pub async fn sync(&mut self, cursor: Option<&str>) -> Result<()> {
        match cursor {
            Some(c) => self.send(&json!({"type": "sync", "cursor": c})).await,
            None => self.send(&json!({"type": "sync"})).await,
        }
    }

    /// Closes the connection politely.
    pub async fn close(self) {
        match self.0 {
            TxInner::Ws(mut tx) => {
                let _ = tx.close().await;
            }
            TxInner::Quic { conn, mut send } => {
                let _ = send.finish();
                let _ = tokio::time::timeout(Duration::from_secs(1), send.stopped()).await;
                conn.close(quinn::VarInt::from_u32(1000), b"bye");
            }
        }
    }
}

impl WsRx {
    /// The next frame; `None` when the server closed the connection.
    /// Cancel-safe (may be used in `select!`).
    pub async fn next(&mut self) -> Result<Option<Frame>> {
        let ws = match &mut self.0 {
            RxInner::Ws(ws) => ws,
            RxInner::Quic { recv, buf } => loop {
                if buf.len() >= 4 {
                    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
                    if buf.len() >= 4 + len {
                        buf.advance(4);
                        let body = buf.split_to(len);
                        return Ok(Some(serde_json::from_slice(&body)?));
                    }
                }
                // `read_chunk` loses nothing when cancelled, unlike `read_exact`.
                match recv.read_chunk(64 * 1024, true).await {
                    Ok(Some(chunk)) => buf.extend_from_slice(&chunk.bytes),
                    Ok(None) | Err(quinn::ReadError::ConnectionLost(_)) => return Ok(None),
                    Err(e) => return Err(e.into()),
                }
            },
        };
        loop {
            match ws.next().await {
                None => return Ok(None),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(Message::Text(t))) => return Ok(Some(serde_json::from_str(t.as_str())?)),
                Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame within `timeout`.
    pub async fn next_within(&mut self, timeout: Duration) -> Result<Frame> {
        match tokio::time::timeout(timeout, self.next()).await {
            Err(_) => bail!("no frame within {timeout:?}"),
            Ok(r) => r?.ok_or_else(|| anyhow!("connection closed by the server")),
        }
    }

    /// Reads `msg` frames until `synced`; returns the number of messages,
    /// whether their cursors increased strictly, and the new cursor.
    pub async fn until_synced(&mut self, timeout: Duration) -> Result<(usize, bool, String)> {
        let (mut n, mut ordered, mut last) = (0usize, true, 0u64);
        loop {
            let f = self.next_within(timeout).await.context("waiting for synced")?;
            match f.ty.as_str() {
                "msg" => {
                    n += 1;
                    let c: u64 = f.cursor.as_deref().unwrap_or("0").parse().unwrap_or(0);
                    ordered &= c > last;
                    last = c;
                }
                "synced" => return Ok((n, ordered, f.cursor.unwrap_or_default())),
                "error" => bail!("error frame: {:?} {:?}", f.code, f.message),
                _ => {}
            }
        }
    }
}

/// Connects and syncs from `cursor`; returns the halves and the cursor.
pub async fn live(addr: &str, token: &str, cursor: Option<&str>) -> Result<(WsTx, WsRx, String)> {
    let (mut tx, mut rx, _) = connect_retry(addr, token, 8).await?;
    tx.sync(cursor).await?;
    let (_, _, cursor) = rx.until_synced(Duration::from_secs(60)).await?;
    Ok((tx, rx, cursor))
}

/// POST /v1/groups; `Ok(None)` when the gateway has no groups API (404).
pub async fn create_group(t: &Target, owner_token: &str, name: &str, members: &[String]) -> Result<Option<String>> {
    let body = json!({"name": name, "members": members});
    let (status, v) = Http::new(t.gateway(0))
        .request(chat_client::Method::POST, "/v1/groups", Some(owner_token), Some(body))
        .await
        .map_err(|e: ClientError| anyhow!("create group: {e}"))?;
    match status {
        201 | 200 => Ok(Some(v["group_id"].as_str().ok_or_else(|| anyhow!("no group_id in {v}"))?.to_owned())),
        404 | 405 => Ok(None),
        s => bail!("create group: HTTP {s} {v}"),
    }
}

/// A remark for reports with failed connections: the likely cause past
/// about 1000 live devices.
pub fn consumer_limit_hint(failed: usize, devices: usize) -> Option<String> {
    (failed > 0 && devices > 900).then(|| {
        "nats-server 2.15 allows 1000 consumers per stream by default and every synced device holds one on the \
         inbox stream; the shipped configs raise it with `jetstream { limits { default_max_consumers } }`: check the server's config"
            .to_owned()
    })
}
