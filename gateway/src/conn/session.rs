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

use chat_nats::subjects::parse_id;
use chat_nats::wire::{parse_client_frame, ClientFrame, ErrorCode, ServerFrame, Target};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::Claims;
use crate::conn::outbound::Outbound;
use crate::conn::presence;
use crate::messaging::delivery::{self, frame, Start};
use crate::messaging::send::send_frame;
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
    presence: mpsc::UnboundedSender<presence::Cmd>,
    last_typing: Option<Instant>,
    clean: bool,
}

impl Session {
    /// Starts a session. Delivery begins with the client's first `sync`.
    pub async fn start(state: Arc<AppState>, claims: Claims, out: Outbound) -> Session {
        let delivery = None;
        let (sends, mut rx) = mpsc::channel::<SendReq>(SEND_QUEUE);
        let sender = {
            let (state, out, user, device) = (state.clone(), out.clone(), claims.user, claims.device.clone());
            let fut = async move {
                while let Some(r) = rx.recv().await {
                    // Boxed: an idle sender keeps only its small waiting state.
                    let reply = Box::pin(send_frame(&state, user, &device, r.cid, &r.to, r.body)).await;
                    if !out.push_wait(frame(&reply), 0, state.cfg.stall_timeout).await {
                        break;
                    }
                }
            };
            tokio::spawn(fut)
        };
        let bucket = TokenBucket::new(state.cfg.rate_per_sec, state.cfg.rate_burst);
        let presence = presence::start(state.clone(), claims.user, claims.device.clone(), out.clone()).await;
        Session {
            state,
            user: claims.user,
            device: claims.device,
            out,
            delivery,
            sends,
            sender,
            bucket,
            presence,
            last_typing: None,
            clean: false,
        }
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
                let _ = self.presence.send(presence::Cmd::Heartbeat);
                self.out.push(frame(&ServerFrame::Pong));
            }
            Ok(ClientFrame::Typing { conv }) => self.typing(conv),
            Ok(ClientFrame::PresenceSubscribe { users }) => self.presence_cmd(&users, presence::Cmd::Follow),
            Ok(ClientFrame::PresenceUnsubscribe { users }) => self.presence_cmd(&users, presence::Cmd::Unfollow),
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
            Some(c) => match chat_nats::subjects::parse_seq(c) {
                Some(v) => v,
                None => return self.error(None, ErrorCode::BadCursor, "cursor is not one this server issued"),
            },
        };
        if let Some(d) = self.delivery.take() {
            d.abort();
        }
        let epoch = self.out.new_epoch();
        let fut = delivery::run(
            self.state.clone(),
            self.user,
            self.device.clone(),
            Start::After(start),
            self.out.clone(),
            epoch,
        );
        self.delivery = Some(tokio::spawn(fut));
    }

    /// The client closed the connection properly: its presence ends now.
    pub fn closed_cleanly(&mut self) {
        self.clean = true;
    }

    fn typing(&mut self, conv: String) {
        let interval = self.state.cfg.typing_interval;
        if self.last_typing.is_some_and(|t| t.elapsed() < interval) {
            return; // rate-limited: dropped silently
        }
        self.last_typing = Some(Instant::now());
        let (state, out, user) = (self.state.clone(), self.out.clone(), self.user);
        tokio::spawn(async move {
            if let Err(r) = relay_typing(&state, user, &conv).await {
                out.push(frame(&ServerFrame::Error { cid: None, code: r.code, message: r.message }));
            }
        });
    }

    /// `presence.subscribe`/`unsubscribe`: ids in canonical form or the
    /// frame is a `bad_frame`; an empty list does nothing. The presence task
    /// does the rest (limit, who may be followed, answers).
    fn presence_cmd(&mut self, users: &[String], cmd: fn(Vec<i64>) -> presence::Cmd) {
        let Some(ids) = users.iter().map(|u| parse_id(u)).collect::<Option<Vec<i64>>>() else {
            let message = "users must be user ids (decimal digits, no sign, no leading zero)";
            return self.error(None, ErrorCode::BadFrame, message);
        };
        if !ids.is_empty() {
            let _ = self.presence.send(cmd(ids));
        }
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
        let _ = self.presence.send(presence::Cmd::End { clean: self.clean });
    }
}

/// Relays a typing event to the conversation's other participants.
async fn relay_typing(state: &AppState, user: i64, conv: &str) -> Result<(), crate::messaging::send::Refusal> {
    use chat_nats::subjects::{ConvId, ConvKind};
    let forbidden =
        || crate::messaging::send::Refusal::new(ErrorCode::Forbidden, "not a participant of this conversation");
    let c = ConvId::parse(conv).ok_or_else(forbidden)?;
    let others: Vec<i64> = match c.kind() {
        ConvKind::Direct(a, b) if a == user || b == user => vec![if a == user { b } else { a }],
        ConvKind::Direct(..) => return Err(forbidden()),
        ConvKind::Group(g) => {
            let db =
                |e: crate::store::DbError| crate::messaging::send::Refusal::new(ErrorCode::Unavailable, e.to_string());
            let (_, members) = state.db.group(g).await.map_err(db)?.ok_or_else(forbidden)?;
            if !members.iter().any(|m| m.user_id == user) {
                return Err(forbidden());
            }
            members.iter().map(|m| m.user_id).filter(|u| *u != user).collect()
        }
    };
    let ev = chat_nats::envelope::Ephemeral::Typing { conv: c.to_string(), user };
    let payload = bytes::Bytes::from(serde_json::to_vec(&ev).expect("serializable"));
    for o in others {
        let _ = state.client.publish(chat_nats::subjects::ephemeral(o), payload.clone()).await;
    }
    Ok(())
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
