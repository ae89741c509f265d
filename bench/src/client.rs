//! Bench-side clients: accounts and tokens, and a WebSocket connection
//! split into a writer and a reader so one task can send on a schedule
//! while another reads acks and messages.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
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

/// The writing half of a connection.
pub struct WsTx(SplitSink<Ws, Message>);

/// The reading half of a connection.
pub struct WsRx(SplitStream<Ws>);

/// Opens a WebSocket to `addr` with `token` (TCP_NODELAY on).
pub async fn connect(addr: &str, token: &str) -> Result<(WsTx, WsRx)> {
    let mut req = format!("ws://{addr}/v1/ws").into_client_request()?;
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true).await?;
    let (tx, rx) = ws.split();
    Ok((WsTx(tx), WsRx(rx)))
}

/// [`connect`], retrying up to `tries` times with a growing pause (a
/// reconnect storm may overflow the listen backlog).
pub async fn connect_retry(addr: &str, token: &str, tries: u32) -> Result<(WsTx, WsRx, u32)> {
    let mut pause = Duration::from_millis(20);
    let mut last = None;
    for attempt in 0..tries.max(1) {
        match connect(addr, token).await {
            Ok((tx, rx)) => return Ok((tx, rx, attempt)),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
    Err(last.unwrap_or_else(|| anyhow!("no attempt")))
}

impl WsTx {
    /// Sends a JSON frame.
    pub async fn send(&mut self, v: &Value) -> Result<()> {
        self.0.send(Message::text(v.to_string())).await.map_err(Into::into)
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
    pub async fn close(mut self) {
        let _ = self.0.close().await;
    }
}

impl WsRx {
    /// The next frame; `None` when the server closed the connection.
    pub async fn next(&mut self) -> Result<Option<Frame>> {
        loop {
            match self.0.next().await {
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
