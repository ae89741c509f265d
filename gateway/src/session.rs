//! The per-connection session, independent of the transport: WebSocket
//! (and later QUIC) feed it text frames and write out what it queues.
//!
//! Inbox delivery starts with the first `sync` (catch-up from its cursor,
//! then live); a later `sync` restarts it from the new cursor.
//! A session answers `ping` and `sync` at once, runs sends one after
//! another in a task of their own (so a device's messages keep their order
//! and a slow send does not stall `ping`), and owns the inbox delivery task.

use std::sync::Arc;
use std::time::Instant;

use chat_nats::wire::{parse_client_frame, ClientFrame, ErrorCode, ServerFrame, Target};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::Claims;
use crate::delivery::{self, frame, Start};
use crate::outbound::Outbound;
use crate::send::send_frame;
use crate::AppState;

/// Sends a session may have queued behind the one in progress.
const SEND_QUEUE: usize = 64;

struct SendReq {
    cid: String,
    to: Target,
    body: String,
}

/// One authenticated connection.
pub struct Session {
    state: Arc<AppState>,
    user: i64,
    device: String,
    out: Outbound,
    delivery: Option<JoinHandle<()>>,
    sends: mpsc::Sender<SendReq>,
    sender: JoinHandle<()>,
    bucket: TokenBucket,
}

impl Session {
    /// Starts a session. Delivery begins with the client's first `sync`.
    pub fn start(state: Arc<AppState>, claims: Claims, out: Outbound) -> Session {
        let delivery = None;
        let (sends, mut rx) = mpsc::channel::<SendReq>(SEND_QUEUE);
        let sender = {
            let (state, out, user, device) = (state.clone(), out.clone(), claims.user, claims.device.clone());
            tokio::spawn(async move {
                while let Some(r) = rx.recv().await {
                    let reply = send_frame(&state, user, &device, r.cid, &r.to, r.body).await;
                    if !out.push_wait(frame(&reply), 0, state.cfg.stall_timeout).await {
                        break;
                    }
                }
            })
        };
        let bucket = TokenBucket::new(state.cfg.rate_per_sec, state.cfg.rate_burst);
        Session { state, user: claims.user, device: claims.device, out, delivery, sends, sender, bucket }
    }

    /// Handles one text frame from the client.
    pub fn on_text(&mut self, text: &str) {
        let parsed = parse_client_frame(text);
        if !self.bucket.take() {
            let cid = match &parsed {
                Ok(ClientFrame::Send { cid, .. }) => Some(cid.clone()),
                Ok(_) => None,
                Err(e) => e.cid.clone(),
            };
            self.error(cid, ErrorCode::RateLimited, "too many frames; slow down");
            return;
        }
        match parsed {
            Err(e) => self.error(e.cid, e.code, &e.message),
            Ok(ClientFrame::Ping) => {
                self.out.push(frame(&ServerFrame::Pong));
            }
            Ok(ClientFrame::Sync { cursor }) => self.sync(cursor),
            Ok(ClientFrame::Send { cid, to, body }) => {
                let req = SendReq { cid: cid.clone(), to, body };
                if self.sends.try_send(req).is_err() {
                    self.error(Some(cid), ErrorCode::RateLimited, "too many sends in flight; wait for acks");
                }
            }
        }
    }

    /// Handles a binary frame: not part of the protocol.
    pub fn on_binary(&mut self) {
        self.error(None, ErrorCode::BadJson, "binary frames are not supported; send JSON text frames");
    }

    fn sync(&mut self, cursor: Option<String>) {
        let start = match cursor.as_deref() {
            None => 0,
            Some(c) => match c.parse::<u64>() {
                Ok(v) => v,
                Err(_) => return self.error(None, ErrorCode::BadCursor, "cursor is not one this server issued"),
            },
        };
        if let Some(d) = self.delivery.take() {
            d.abort();
        }
        let epoch = self.out.new_epoch();
        self.delivery = Some(tokio::spawn(delivery::run(
            self.state.clone(),
            self.user,
            self.device.clone(),
            Start::After(start),
            self.out.clone(),
            epoch,
        )));
    }

    fn error(&self, cid: Option<String>, code: ErrorCode, message: &str) {
        self.out.push(frame(&ServerFrame::Error { cid, code, message: message.into() }));
    }

    /// The session's user id.
    pub fn user(&self) -> i64 {
        self.user
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if let Some(d) = self.delivery.take() {
            d.abort();
        }
        self.sender.abort();
    }
}

/// A token bucket: `rate` tokens per second, up to `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket.
    pub fn new(rate: u32, burst: u32) -> TokenBucket {
        TokenBucket { rate: rate.into(), burst: burst.into(), tokens: burst.into(), at: Instant::now() }
    }

    /// Takes a token if one is there.
    pub fn take(&mut self) -> bool {
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.at).as_secs_f64() * self.rate).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
