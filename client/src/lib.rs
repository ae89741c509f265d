//! A Rust client for the chat gateway: the HTTP API ([`Http`]) and a
//! WebSocket connection ([`Conn`]) speaking the frames of `docs/protocol.md`.
//! The `chat` command-line tool ([`cli`]) is built on it, and so are the
//! integration tests and the benchmark.
#![forbid(unsafe_code)]

pub mod cli;
pub mod failover;
pub mod quic;
pub mod unread;

pub use failover::{Edge, Event, Failover, FailoverConfig};
pub use unread::Unread;

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full};
pub use hyper::Method;
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use thiserror::Error;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Client failures.
#[derive(Debug, Error)]
pub enum ClientError {
    /// The server could not be reached or the connection broke.
    #[error("connection: {0}")]
    Io(String),
    /// The server answered with an error.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status (0 for WebSocket `error` frames).
        status: u16,
        /// Stable error code.
        code: String,
        /// Detail.
        message: String,
    },
    /// No answer in time.
    #[error("timed out waiting for {0}")]
    Timeout(String),
    /// The WebSocket was closed by the server.
    #[error("closed by server: {code} {reason}")]
    Closed {
        /// Close code.
        code: u16,
        /// Close reason.
        reason: String,
    },
}

pub(crate) fn io(e: impl std::fmt::Display) -> ClientError {
    ClientError::Io(e.to_string())
}

/// The HTTP API of one gateway.
#[derive(Debug, Clone)]
pub struct Http {
    /// `host:port` of the gateway.
    pub addr: String,
}

/// A login session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Login {
    /// Access token.
    pub token: String,
    /// User id.
    pub user_id: String,
    /// Device id.
    pub device_id: String,
    /// Gateways to connect to, best first (the login response's `edges`).
    pub edges: Vec<failover::Edge>,
}

impl Http {
    /// A client for `addr` (`host:port`, or an `http://` URL).
    pub fn new(addr: &str) -> Http {
        Http { addr: addr.trim_start_matches("http://").trim_end_matches('/').to_owned() }
    }

    /// Any request; returns the status and the JSON body (`null` if empty).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<(u16, Value), ClientError> {
        let stream = TcpStream::connect(&self.addr).await.map_err(io)?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(io)?;
        tokio::spawn(conn);
        let mut req = Request::builder().method(method).uri(path).header("host", &self.addr);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let body = match body {
            Some(v) => {
                req = req.header("content-type", "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let resp = sender.send_request(req.body(Full::new(body)).map_err(io)?).await.map_err(io)?;
        let status = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.map_err(io)?.to_bytes();
        let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).map_err(io)? };
        Ok((status, value))
    }

    pub(crate) async fn ok(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Result<Value, ClientError> {
        let (status, v) = self.request(method, path, token, body).await?;
        if (200..300).contains(&status) {
            Ok(v)
        } else {
            Err(ClientError::Api {
                status,
                code: v["error"]["code"].as_str().unwrap_or("").to_owned(),
                message: v["error"]["message"].as_str().unwrap_or("").to_owned(),
            })
        }
    }

    /// Creates an account; returns the user id.
    pub async fn signup(&self, username: &str, password: &str) -> Result<String, ClientError> {
        let v = self
            .ok(Method::POST, "/v1/signup", None, Some(json!({"username": username, "password": password})))
            .await?;
        Ok(v["user_id"].as_str().unwrap_or_default().to_owned())
    }

    /// Logs a device in.
    pub async fn login(&self, username: &str, password: &str, device: &str) -> Result<Login, ClientError> {
        let body = json!({"username": username, "password": password, "device_id": device});
        let v = self.ok(Method::POST, "/v1/login", None, Some(body)).await?;
        let s = |k: &str| v[k].as_str().unwrap_or_default().to_owned();
        let edges = v["edges"].as_array().into_iter().flatten().filter_map(failover::Edge::from_json).collect();
        Ok(Login { token: s("token"), user_id: s("user_id"), device_id: s("device_id"), edges })
    }

    /// A user's profile.
    pub async fn user(&self, token: &str, user_id: &str) -> Result<Value, ClientError> {
        self.ok(Method::GET, &format!("/v1/users/{user_id}"), Some(token), None).await
    }

    /// A page of history; `query` is e.g. `limit=50&before=123`.
    pub async fn history(&self, token: &str, conv: &str, query: &str) -> Result<Value, ClientError> {
        self.ok(Method::GET, &format!("/v1/conversations/{conv}/messages?{query}"), Some(token), None).await
    }

    /// `GET /v1/search`: messages the caller may read that contain `q`,
    /// newest first; `conv`, `before` (a message id) and `limit` as given.
    pub async fn search(
        &self,
        token: &str,
        q: &str,
        conv: Option<&str>,
        before: Option<&str>,
        limit: Option<usize>,
    ) -> Result<Value, ClientError> {
        let mut path = format!("/v1/search?q={}", encode_query(q));
        for (name, v) in [("conv", conv), ("before", before)] {
            if let Some(v) = v {
                path.push_str(&format!("&{name}={}", encode_query(v)));
            }
        }
        if let Some(l) = limit {
            path.push_str(&format!("&limit={l}"));
        }
        self.ok(Method::GET, &path, Some(token), None).await
    }

    /// One page of `GET /v1/conversations` (newest activity first):
    /// `limit` conversations (the server's default when `None`) after the
    /// `next_before` of the page before.
    pub async fn conversations(
        &self,
        token: &str,
        limit: Option<usize>,
        before: Option<&str>,
    ) -> Result<Value, ClientError> {
        let mut q = Vec::new();
        if let Some(l) = limit {
            q.push(format!("limit={l}"));
        }
        if let Some(b) = before {
            q.push(format!("before={}", encode_query(b)));
        }
        let path =
            if q.is_empty() { "/v1/conversations".to_owned() } else { format!("/v1/conversations?{}", q.join("&")) };
        self.ok(Method::GET, &path, Some(token), None).await
    }
}

/// A frame answering a request: an `error` frame as [`ClientError::Api`]
/// (status 0), any other as it is.
fn frame_result(v: Value) -> Result<Value, ClientError> {
    if v["type"] == "error" {
        return Err(api_error(&v));
    }
    Ok(v)
}

/// An `error` frame as [`ClientError::Api`] (status 0).
fn api_error(v: &Value) -> ClientError {
    ClientError::Api {
        status: 0,
        code: v["code"].as_str().unwrap_or("").into(),
        message: v["message"].as_str().unwrap_or("").into(),
    }
}

/// Percent-encodes a query parameter value (everything but unreserved
/// ASCII).
pub fn encode_query(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The 1:1 conversation id of two users.
pub fn direct_conv(a: &str, b: &str) -> String {
    let (a, b): (i64, i64) = (a.parse().unwrap_or(0), b.parse().unwrap_or(0));
    format!("dm-{}-{}", a.min(b), a.max(b))
}

/// Which transport a [`Conn`] uses.
#[derive(Debug, Clone)]
pub enum Transport {
    /// WebSocket at `ws://<addr>/v1/ws`.
    Ws,
    /// QUIC at the given UDP address, trusting the certificate as told.
    Quic {
        /// `host:port` of the gateway's QUIC endpoint.
        addr: String,
        /// How to trust its certificate.
        trust: quic::Trust,
    },
}

enum Inner {
    Ws(Box<WebSocketStream<MaybeTlsStream<TcpStream>>>),
    Quic(Box<quic::QuicConn>),
}

/// A session connection to a gateway, over WebSocket or QUIC.
pub struct Conn {
    inner: Inner,
    buffered: VecDeque<Value>,
    /// How long reads wait before [`ClientError::Timeout`].
    pub timeout: Duration,
}

/// The WebSocket settings of this crate's connections (and the bench's).
///
/// tungstenite zero-fills its whole read buffer before every socket read
/// (`resize` up to the buffer's size), so its 128 KiB default costs a 128
/// KiB `memset` per frame read: about half the CPU of a client that reads
/// many small frames (measured with `perf` on `chat-bench room`, see
/// docs/benchmarks.md). 8 KiB holds several frames; the buffer still grows
/// for a larger frame.
pub fn ws_config() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(8 * 1024)
}

impl Conn {
    /// Connects with a token (sent as `Authorization: Bearer`).
    pub async fn connect(addr: &str, token: &str) -> Result<Conn, ClientError> {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/');
        let mut req = format!("ws://{addr}/v1/ws").into_client_request().map_err(io)?;
        req.headers_mut().insert("authorization", format!("Bearer {token}").parse().map_err(io)?);
        let (ws, _) =
            tokio_tungstenite::connect_async_with_config(req, Some(ws_config()), false).await.map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(resp) => {
                    let body: Value =
                        resp.body().as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
                    let code = body["error"]["code"].as_str().unwrap_or(if resp.status() == 401 {
                        "unauthorized"
                    } else {
                        ""
                    });
                    ClientError::Api {
                        status: resp.status().as_u16(),
                        code: code.into(),
                        message: body["error"]["message"].as_str().unwrap_or("upgrade refused").into(),
                    }
                }
                e => io(e),
            })?;
        Ok(Conn { inner: Inner::Ws(Box::new(ws)), buffered: VecDeque::new(), timeout: Duration::from_secs(10) })
    }

    /// Connects over `transport`: `addr` is the HTTP address (for
    /// WebSocket); QUIC uses the transport's own address.
    pub async fn connect_with(transport: &Transport, addr: &str, token: &str) -> Result<Conn, ClientError> {
        match transport {
            Transport::Ws => Conn::connect(addr, token).await,
            Transport::Quic { addr, trust } => {
                let q = quic::connect(addr, &quic::server_name(addr), token, trust).await?;
                Ok(Conn {
                    inner: Inner::Quic(Box::new(q)),
                    buffered: VecDeque::new(),
                    timeout: Duration::from_secs(10),
                })
            }
        }
    }

    /// The QUIC connection, if this is one (to rebind it, say).
    pub fn quic(&self) -> Option<&quic::QuicConn> {
        match &self.inner {
            Inner::Quic(q) => Some(q),
            Inner::Ws(_) => None,
        }
    }

    /// Sends a JSON frame.
    pub async fn send_json(&mut self, v: &Value) -> Result<(), ClientError> {
        self.send_text(v.to_string()).await
    }

    /// Sends a raw text frame (tests use it for malformed input).
    pub async fn send_text(&mut self, text: String) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Ws(ws) => ws.send(Message::text(text)).await.map_err(io),
            Inner::Quic(q) => quic::write_frame(&mut q.send, text.as_bytes()).await,
        }
    }

    /// Sends a frame of raw bytes: a WebSocket binary frame, or a QUIC
    /// frame body that need not be UTF-8 (tests use it for bad input).
    pub async fn send_bytes(&mut self, bytes: Vec<u8>) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Ws(ws) => ws.send(Message::Binary(bytes.into())).await.map_err(io),
            Inner::Quic(q) => quic::write_frame(&mut q.send, &bytes).await,
        }
    }

    /// Sends a raw WebSocket message.
    pub async fn send_raw(&mut self, m: Message) -> Result<(), ClientError> {
        match &mut self.inner {
            Inner::Ws(ws) => ws.send(m).await.map_err(io),
            Inner::Quic(_) => Err(io("raw WebSocket messages need a WebSocket connection")),
        }
    }

    /// The next frame from the server (buffered ones first).
    pub async fn next(&mut self) -> Result<Value, ClientError> {
        if let Some(v) = self.buffered.pop_front() {
            return Ok(v);
        }
        self.read().await
    }

    async fn read(&mut self) -> Result<Value, ClientError> {
        let ws = match &mut self.inner {
            Inner::Ws(ws) => ws,
            Inner::Quic(q) => {
                let body = tokio::time::timeout(self.timeout, quic::read_frame(&mut q.recv))
                    .await
                    .map_err(|_| ClientError::Timeout("a frame".into()))??;
                return serde_json::from_slice(&body).map_err(io);
            }
        };
        loop {
            let m = tokio::time::timeout(self.timeout, ws.next())
                .await
                .map_err(|_| ClientError::Timeout("a frame".into()))?;
            match m {
                None => return Err(ClientError::Closed { code: 1006, reason: "eof".into() }),
                Some(Err(e)) => return Err(io(e)),
                Some(Ok(Message::Text(t))) => return serde_json::from_str(t.as_str()).map_err(io),
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) =
                        f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new()));
                    return Err(ClientError::Closed { code, reason });
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Reads until a frame matches `pred`, keeping the others for later.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value, ClientError> {
        if let Some(i) = self.buffered.iter().position(&pred) {
            return Ok(self.buffered.remove(i).expect("index is valid"));
        }
        loop {
            let v = self.read().await.map_err(|e| match e {
                ClientError::Timeout(_) => ClientError::Timeout(what.to_owned()),
                e => e,
            })?;
            if pred(&v) {
                return Ok(v);
            }
            self.buffered.push_back(v);
        }
    }

    /// Sends a message to a user and waits for its `ack` (or `error`).
    pub async fn send_to_user(&mut self, cid: &str, user: &str, body: &str) -> Result<Value, ClientError> {
        self.send_frame_and_ack(json!({"type": "send", "cid": cid, "to": {"user": user}, "body": body}), cid).await
    }

    /// Edits one's own message `id` of `conv`; waits for the `ack`.
    pub async fn edit(&mut self, cid: &str, conv: &str, id: &str, body: &str) -> Result<Value, ClientError> {
        self.send_frame_and_ack(json!({"type": "edit", "cid": cid, "conv": conv, "id": id, "body": body}), cid).await
    }

    /// Deletes message `id` of `conv` for everyone; waits for the `ack`.
    pub async fn delete(&mut self, cid: &str, conv: &str, id: &str) -> Result<Value, ClientError> {
        self.send_frame_and_ack(json!({"type": "delete", "cid": cid, "conv": conv, "id": id}), cid).await
    }

    /// Adds (`remove` false) or removes one's reaction `emoji` on message
    /// `id` of `conv`; waits for the `ack`.
    pub async fn react(
        &mut self,
        cid: &str,
        conv: &str,
        id: &str,
        emoji: &str,
        remove: bool,
    ) -> Result<Value, ClientError> {
        let op = if remove { "remove" } else { "add" };
        let frame = json!({"type": "react", "cid": cid, "conv": conv, "id": id, "emoji": emoji, "op": op});
        self.send_frame_and_ack(frame, cid).await
    }

    /// Sends a `send` frame and waits for the `ack` or `error` with its cid.
    pub async fn send_frame_and_ack(&mut self, frame: Value, cid: &str) -> Result<Value, ClientError> {
        self.send_json(&frame).await?;
        let v = self.wait_for("ack", |v| (v["type"] == "ack" || v["type"] == "error") && v["cid"] == cid).await?;
        frame_result(v)
    }

    /// Whether a frame already read but not yet consumed matches `pred`.
    pub fn buffered_any(&self, pred: impl Fn(&Value) -> bool) -> bool {
        self.buffered.iter().any(pred)
    }

    /// Marks `conv` read up to message `up_to` and waits for the answer:
    /// the `read` frame with the position (never moved backwards) and
    /// `unread`, or the `error`.
    pub async fn read_up_to(&mut self, conv: &str, up_to: &str) -> Result<Value, ClientError> {
        self.send_json(&json!({"type": "read", "conv": conv, "up_to": up_to})).await?;
        let v = self
            .wait_for("read", |v| {
                (v["type"] == "read" && v["conv"] == conv && v.get("cursor").is_none()) || v["type"] == "error"
            })
            .await?;
        frame_result(v)
    }

    /// Joins a live room: the backlog's `msg` frames and the `joined`
    /// frame that ends it (or the `error`). Live messages follow.
    pub async fn join_room(&mut self, room: &str) -> Result<(Vec<Value>, Value), ClientError> {
        self.send_json(&json!({"type": "join", "room": room})).await?;
        let mut backlog = Vec::new();
        loop {
            let v = self
                .wait_for("joined", |v| {
                    ((v["type"] == "msg" || v["type"] == "joined") && v["room"] == room) || v["type"] == "error"
                })
                .await?;
            match v["type"].as_str() {
                Some("joined") => return Ok((backlog, v)),
                Some("error") => return Err(api_error(&v)),
                _ => backlog.push(v),
            }
        }
    }

    /// Leaves a live room and waits for `left`.
    pub async fn leave_room(&mut self, room: &str) -> Result<Value, ClientError> {
        self.send_json(&json!({"type": "leave", "room": room})).await?;
        self.wait_for("left", |v| v["type"] == "left" && v["room"] == room).await
    }

    /// Posts in a live room and waits for the `ack` (or `error`).
    pub async fn send_to_room(&mut self, cid: &str, room: &str, body: &str) -> Result<Value, ClientError> {
        self.send_frame_and_ack(json!({"type": "send", "cid": cid, "to": {"room": room}, "body": body}), cid).await
    }

    /// The next `msg` frame.
    pub async fn next_msg(&mut self) -> Result<Value, ClientError> {
        self.wait_for("msg", |v| v["type"] == "msg").await
    }

    /// Sends `sync` and collects the `msg` frames up to `synced`; returns
    /// them and the new cursor.
    pub async fn sync(&mut self, cursor: Option<&str>) -> Result<(Vec<Value>, String), ClientError> {
        let frame = match cursor {
            Some(c) => json!({"type": "sync", "cursor": c}),
            None => json!({"type": "sync"}),
        };
        self.send_json(&frame).await?;
        let mut msgs = Vec::new();
        loop {
            let v = self
                .wait_for("synced", |v| v["type"] == "msg" || v["type"] == "synced" || v["type"] == "error")
                .await?;
            match v["type"].as_str() {
                Some("synced") => return Ok((msgs, v["cursor"].as_str().unwrap_or_default().to_owned())),
                Some("error") => return Err(api_error(&v)),
                _ => msgs.push(v),
            }
        }
    }

    /// Closes the connection cleanly (a close frame, or a finished QUIC
    /// stream).
    pub async fn close(self) {
        match self.inner {
            Inner::Ws(mut ws) => {
                let _ = WebSocketStream::close(&mut ws, None).await;
            }
            Inner::Quic(q) => q.close().await,
        }
    }
}
