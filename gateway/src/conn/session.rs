//! The per-connection session, independent of the transport: WebSocket and
//! QUIC feed it text frames and write out what it queues.
//!
//! Each client frame type has its handler file under [`crate::conn::cmd`],
//! dispatched by one `match` there. Inbox delivery starts with the first
//! `sync` (catch-up from its cursor, then live); a later `sync` restarts it
//! from the new cursor. A session answers `ping` and `sync` at once, runs
//! sends one after another in a task of their own (so a device's messages
//! keep their order and a slow send does not stall `ping`), and owns the
//! inbox delivery task. The send task and its queue are made by the first
//! send: an idle connection (most of them) holds neither.

use std::sync::Arc;
use std::time::Instant;

use chat_nats::wire::{parse_client_frame, ClientFrame, ErrorCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::Claims;
use crate::conn::cmd::{self, send::SendReq};
use crate::conn::outbound::Outbound;
use crate::conn::presence;
use crate::conn::rate::TokenBucket;
use crate::error::frame;
use crate::error::ClientError;
use crate::AppState;

/// One authenticated connection.
pub struct Session {
    pub(in crate::conn) state: Arc<AppState>,
    pub(in crate::conn) user: i64,
    pub(in crate::conn) device: String,
    pub(in crate::conn) out: Outbound,
    pub(in crate::conn) delivery: Option<JoinHandle<()>>,
    /// The send queue and its task, from the first send on.
    sender: Option<(mpsc::Sender<SendReq>, JoinHandle<()>)>,
    /// Set by [`Session::finish_sends`]: no more sends are taken.
    sends_closed: bool,
    bucket: TokenBucket,
    pub(in crate::conn) presence: presence::Commands,
    pub(in crate::conn) last_typing: Option<Instant>,
    /// Joined rooms: each room's task holds the session's place in it.
    pub(in crate::conn) rooms: std::collections::HashMap<i64, JoinHandle<()>>,
    clean: bool,
}

impl Session {
    /// Starts a session. Delivery begins with the client's first `sync`.
    pub async fn start(state: Arc<AppState>, claims: Claims, out: Outbound) -> Session {
        let bucket = TokenBucket::new(state.cfg.rate_per_sec, state.cfg.rate_burst);
        let presence = presence::start(state.clone(), claims.user, claims.device.clone(), out.clone()).await;
        Session {
            state,
            user: claims.user,
            device: claims.device,
            out,
            delivery: None,
            sender: None,
            sends_closed: false,
            bucket,
            presence,
            last_typing: None,
            rooms: std::collections::HashMap::new(),
            clean: false,
        }
    }

    /// Handles one text frame from the client.
    pub fn on_text(&mut self, text: &str) {
        let parsed = parse_client_frame(text);
        self.state.metrics.frame_in(parsed.as_ref().map_err(|_| ()));
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
            Ok(f) => cmd::dispatch(self, f),
        }
    }

    /// Handles a binary frame: not part of the protocol.
    pub fn on_binary(&mut self) {
        self.state.metrics.binary_in();
        self.error(None, ErrorCode::BadJson, "binary frames are not supported; send JSON text frames");
    }

    /// The client closed the connection properly: its presence ends now.
    pub fn closed_cleanly(&mut self) {
        self.clean = true;
    }

    /// Lets the sends already queued finish (each queues its `ack` or
    /// `error`) and takes no more; gives up at `deadline`.
    pub async fn finish_sends(&mut self, deadline: tokio::time::Instant) {
        self.sends_closed = true;
        if let Some((sends, mut task)) = self.sender.take() {
            drop(sends);
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    /// Queues a request for the send task (started by the first one);
    /// false when too many wait or the session takes no more.
    pub(in crate::conn) fn queue_send(&mut self, req: SendReq) -> bool {
        if self.sends_closed {
            return false;
        }
        let (sends, _) = self
            .sender
            .get_or_insert_with(|| cmd::send::start_sender(&self.state, self.user, self.device.clone(), &self.out));
        sends.try_send(req).is_ok()
    }

    /// Queues an `error` frame for the client.
    pub(in crate::conn) fn error(&self, cid: Option<String>, code: ErrorCode, message: &str) {
        self.out.push(frame(&ClientError::new(code, message).into_frame(cid)));
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
        if let Some((_, task)) = self.sender.take() {
            task.abort();
        }
        for (_, room) in self.rooms.drain() {
            room.abort();
        }
        self.presence.send(presence::Cmd::End { clean: self.clean });
    }
}
