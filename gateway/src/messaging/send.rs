//! The send path shared by WebSocket sessions and internal services:
//! validate, hand the send to its partition's owner (a text, with
//! `CHAT_SEND_PATH=direct`) or publish it on ingress with a dedupe id, wait
//! for the sequencer.
//!
//! The gateway acks a client only once the message has an id and is in
//! history and in every member's inbox. A send that is not confirmed within
//! the timeout gets `timeout`; it may still be stored, and a retry with the
//! same `cid` returns the same id without storing it twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::client::RequestErrorKind;
use bytes::Bytes;
use chat_nats::envelope::{GroupEvent, IngressSend, MessageKind, Original, ReplyTo, SeqAck, SeqResult};
use chat_nats::provision::Storage;
use chat_nats::subjects::{self, ConvId};
use chat_nats::wire::{ErrorCode, ServerFrame, Target};
use futures::StreamExt;
use tokio::sync::oneshot;

use crate::config::SendPath;
use crate::error::ClientError;
use crate::moderation::Origin;
use crate::AppState;

/// One message for the sequencer.
#[derive(Debug)]
pub struct Outgoing<'a> {
    /// Sender user id.
    pub from: i64,
    /// Sending device (`sys` for system messages, `svc-<name>` for services).
    pub device: &'a str,
    /// Client message id (dedupe with `from` and `device`).
    pub cid: &'a str,
    /// Where it goes.
    pub conv: &'a ConvId,
    /// Text or system.
    pub kind: MessageKind,
    /// The text.
    pub body: String,
    /// A group membership change, on system messages.
    pub event: Option<GroupEvent>,
    /// On edits and deletes: the id of the message changed and where it is.
    pub target: Option<(u64, Original)>,
    /// On a reply: the message it answers.
    pub reply_to: Option<ReplyTo>,
    /// On a group text: the user ids its `@username`s resolved to.
    pub mentions: Vec<i64>,
}

/// Sends waiting for their outcome: dedupe key → (token, reply channel).
type Waiters = HashMap<String, Vec<(u64, oneshot::Sender<SeqResult>)>>;

/// Publishes sends and matches the sequencer's acks to waiting senders.
#[derive(Debug)]
pub struct Sender {
    storage: Storage,
    ingress: crate::messaging::ingress::Ingress,
    ack_subject: String,
    /// Waiting sends by dedupe key; several may wait on one key (the same
    /// device retrying on two connections), each with its own token.
    waiters: Mutex<Waiters>,
    next_token: std::sync::atomic::AtomicU64,
    timeout: Duration,
    /// The connection text sends are handed to their partition's owner on.
    client: async_nats::Client,
    /// `CHAT_SEND_PATH`.
    path: SendPath,
    /// `CHAT_SEND_HANDOFF_WAIT_MS`.
    handoff_wait: Duration,
}

/// A stored send, as its outcome reports it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// Message id.
    pub id: u64,
    /// Unix ms of acceptance.
    pub ts: u64,
    /// Conversation id.
    pub conv: String,
    /// Ordinal in the conversation (0 for events).
    pub n: u64,
}

impl Sender {
    /// Subscribes to this gateway's ack subject and starts dispatching.
    pub async fn start(
        client: &async_nats::Client,
        storage: Storage,
        gateway_id: &str,
        timeout: Duration,
        path: SendPath,
        handoff_wait: Duration,
    ) -> Result<Arc<Sender>, async_nats::Error> {
        let ack_subject = subjects::gateway_acks(gateway_id);
        let mut sub = client.subscribe(ack_subject.clone()).await?;
        let sender = Arc::new(Sender {
            ingress: crate::messaging::ingress::Ingress::start(storage.js.clone()),
            storage,
            ack_subject,
            waiters: Mutex::default(),
            next_token: std::sync::atomic::AtomicU64::new(0),
            timeout,
            client: client.clone(),
            path,
            // A send left to ingress after the wait still needs time there.
            handoff_wait: handoff_wait.min(timeout / 2),
        });
        let weak = Arc::downgrade(&sender);
        tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                let Some(sender) = weak.upgrade() else { break };
                match serde_json::from_slice::<SeqAck>(&msg.payload) {
                    Ok(ack) => {
                        for (_, tx) in sender.lock().remove(&ack.key).unwrap_or_default() {
                            let _ = tx.send(ack.result.clone());
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "malformed sequencer ack"),
                }
            }
        });
        Ok(sender)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes one send and waits for its outcome (a retry reports the
    /// first attempt's).
    pub async fn send(&self, m: Outgoing<'_>) -> Result<Sent, ClientError> {
        let Outgoing { from, device, cid, conv, kind, body, event, target, reply_to, mentions } = m;
        let key = subjects::dedupe_key(from, device, cid);
        let (tx, mut rx) = oneshot::channel();
        let token = self.next_token.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.lock().entry(key.clone()).or_default().push((token, tx));
        let env = IngressSend {
            from,
            device: device.to_owned(),
            cid: cid.to_owned(),
            conv: conv.to_string(),
            kind,
            body,
            reply: Some(self.ack_subject.clone()),
            event,
            target: target.map(|t| t.0),
            original: target.map(|t| t.1),
            reply_to,
            mentions: mentions.iter().map(i64::to_string).collect(),
        };
        let outcome = self.publish_and_wait(&key, conv, env, &mut rx).await;
        {
            let mut waiters = self.lock();
            if let Some(list) = waiters.get_mut(&key) {
                list.retain(|(t, _)| *t != token);
                if list.is_empty() {
                    waiters.remove(&key);
                }
            }
        }
        match outcome? {
            SeqResult::Ok { id, ts, conv, n } => Ok(Sent { id, ts, conv, n }),
            SeqResult::Err { code, message } => Err(ClientError::new(code, message)),
        }
    }

    async fn publish_and_wait(
        &self,
        key: &str,
        conv: &ConvId,
        env: IngressSend,
        rx: &mut oneshot::Receiver<SeqResult>,
    ) -> Result<SeqResult, ClientError> {
        let payload =
            Bytes::from(serde_json::to_vec(&env).map_err(|e| ClientError::new(ErrorCode::Internal, e.to_string()))?);
        let partition = conv.partition(self.storage.settings.partitions);
        let unavailable =
            |e: String| ClientError::new(ErrorCode::Unavailable, format!("message store unavailable: {e}"));
        let closed = |_| ClientError::new(ErrorCode::Internal, "gateway shutting down");
        // Hand-offs (texts only, off by default): with `beside` the
        // partition's owner gets the send at once and the ingress write
        // goes too, and stays the send's record; with `direct` the owner
        // gets it as a request and answers it once the send is stored, and
        // it is written to ingress only when no owner answers.
        let path = if env.may_hand_off() { self.path } else { SendPath::Ingress };
        // Whether a `direct` owner may hold the send: its answer may then
        // come through the record rather than to this gateway.
        let mut watch_record = false;
        match path {
            SendPath::Direct => {
                let request = async_nats::Request::new().payload(payload.clone()).timeout(Some(self.handoff_wait));
                match self.client.send_request(subjects::fast(partition), request).await {
                    Ok(answer) if !answer.payload.is_empty() => return parse_recorded(&answer.payload),
                    // Left to ingress by the owner: perhaps one it is
                    // storing already (a retry), whose outcome then comes
                    // through the record.
                    Ok(_) => watch_record = true,
                    // No owner right now: ingress keeps it for the next.
                    Err(e) if e.kind() == RequestErrorKind::NoResponders => {}
                    Err(e) => {
                        // No answer in time (an owner killed mid-send, or far
                        // behind): ingress brings it to the next owner,
                        // which finishes what the first stored.
                        tracing::debug!(error = %e, "no answer to a hand-off; writing the send to ingress");
                        watch_record = true;
                    }
                }
            }
            SendPath::Beside => {
                if let Err(e) = self.client.publish(subjects::fast(partition), payload.clone()).await {
                    tracing::debug!(error = %e, "hand-off not sent; the ingress message brings it");
                }
            }
            SendPath::Ingress => {}
        }
        // Stored with the sends of other sessions that wait at the same time
        // (one fsync for many, see `ingress`). With `beside` the owner's
        // answer may come first: then the send is stored, whatever the
        // ingress write still does.
        let ack = tokio::select! {
            r = &mut *rx => return r.map_err(closed),
            ack = self.ingress.publish(subjects::ingress(partition), key, payload) => ack.map_err(unavailable)?,
        };
        if ack.duplicate || watch_record {
            // A retry, or a hand-off the owner may have stored: the outcome
            // may already be recorded, or may still be in flight to another
            // waiter (or to this one).
            return tokio::time::timeout(self.timeout, async {
                tokio::select! {
                    r = &mut *rx => r.map_err(closed),
                    r = self.recorded(key) => r,
                }
            })
            .await
            .unwrap_or_else(|_| Err(timed_out()));
        }
        tokio::select! {
            r = &mut *rx => r.map_err(closed),
            _ = tokio::time::sleep(self.timeout) => {
                match self.storage.acks.get(key).await {
                    Ok(Some(v)) => parse_recorded(&v),
                    _ => Err(timed_out()),
                }
            }
        }
    }

    /// Waits for the recorded outcome of a send (the acks bucket).
    async fn recorded(&self, key: &str) -> Result<SeqResult, ClientError> {
        let mut watch = self.storage.acks.watch_with_history(key).await.map_err(ClientError::unavailable)?;
        while let Some(entry) = watch.next().await {
            if let Ok(entry) = entry {
                if entry.operation == async_nats::jetstream::kv::Operation::Put {
                    return parse_recorded(&entry.value);
                }
            }
        }
        Err(timed_out())
    }
}

fn timed_out() -> ClientError {
    ClientError::new(ErrorCode::Timeout, "not confirmed in time; it may still be stored: retry with the same cid")
}

fn parse_recorded(v: &[u8]) -> Result<SeqResult, ClientError> {
    serde_json::from_slice::<SeqAck>(v)
        .map(|a| a.result)
        .map_err(|e| ClientError::new(ErrorCode::Internal, e.to_string()))
}

fn bad_id(field: &str) -> ClientError {
    ClientError::new(ErrorCode::BadFrame, format!("{field} must be an id: decimal, no sign or leading zero"))
}

/// A message body's limits: not blank, at most `CHAT_MAX_BODY_CHARS`.
pub fn check_body(state: &AppState, body: &str) -> Result<(), ClientError> {
    if body.trim().is_empty() {
        return Err(ClientError::new(ErrorCode::EmptyBody, "body is empty"));
    }
    let max = state.cfg.max_body_chars;
    if body.len() > max && body.chars().count() > max {
        return Err(ClientError::new(ErrorCode::TooLarge, format!("body exceeds {max} characters")));
    }
    Ok(())
}

/// Validates a send and resolves its conversation.
pub async fn prepare(state: &AppState, from: i64, cid: &str, to: &Target, body: &str) -> Result<ConvId, ClientError> {
    if !subjects::is_token(cid) {
        return Err(ClientError::new(ErrorCode::BadCid, "cid must be 1-64 characters of [A-Za-z0-9_-]"));
    }
    check_body(state, body)?;
    match to {
        Target::User(u) => {
            let id = subjects::parse_id(u).ok_or_else(|| bad_id("to.user"))?;
            if state.user_exists(id).await? {
                Ok(ConvId::direct(from, id))
            } else {
                Err(ClientError::new(ErrorCode::UnknownUser, format!("no user {u:?}")))
            }
        }
        Target::Room(r) => {
            let room = crate::rooms::access::room_id(r)?;
            crate::rooms::access::postable(state, room, from).await?;
            Ok(ConvId::room(room))
        }
        Target::Group(g) => {
            let unknown = || ClientError::new(ErrorCode::UnknownGroup, format!("no group {g:?}"));
            let gid = subjects::parse_id(g).ok_or_else(|| bad_id("to.group"))?;
            let db = |e: crate::store::DbError| ClientError::unavailable(e);
            if state.db.role(gid, from).await.map_err(db)?.is_some() {
                Ok(ConvId::group(gid))
            } else if state.db.group_exists(gid).await.map_err(db)? {
                Err(ClientError::new(ErrorCode::Forbidden, "not a member of this group"))
            } else {
                Err(unknown())
            }
        }
    }
}

/// The message a reply answers, in its current state: a text message of
/// the same conversation that is not deleted (`not_found` otherwise; the
/// caller is a participant, `prepare` checked).
async fn answered(state: &AppState, conv: &ConvId, reply_to: Option<&str>) -> Result<Option<ReplyTo>, ClientError> {
    let Some(raw) = reply_to else { return Ok(None) };
    let id = subjects::parse_seq(raw)
        .filter(|v| *v > 0)
        .ok_or_else(|| ClientError::new(ErrorCode::BadFrame, "reply_to must be a message id"))?;
    let reader = crate::messaging::history::Reader { storage: &state.storage, cache: &state.history_index };
    let found = crate::messaging::history::find(reader, conv, id).await.map_err(ClientError::unavailable)?;
    match found {
        Some((_, m)) if m.kind == MessageKind::Text => Ok(Some(ReplyTo::to(&m))),
        _ => Err(ClientError::not_found("reply_to: no such message in this conversation (or it was deleted)")),
    }
}

/// What a `send` asks for.
#[derive(Debug)]
pub struct Draft<'a> {
    /// The recipient.
    pub to: &'a Target,
    /// The text.
    pub body: String,
    /// The id of the message it answers.
    pub reply_to: Option<&'a str>,
}

/// Validates, screens (banned words, flood: [`crate::moderation`]), sends
/// and turns the outcome into the frame the client gets.
pub async fn send_frame(
    state: &AppState,
    from: i64,
    device: &str,
    origin: Origin,
    cid: String,
    draft: Draft<'_>,
) -> ServerFrame {
    let Draft { to, body, reply_to } = draft;
    let started = std::time::Instant::now();
    let result = async {
        let conv = prepare(state, from, &cid, to, &body).await?;
        let reply_to = answered(state, &conv, reply_to).await?;
        let body = state.moderation.screen(from, device, origin, body).await?;
        // A retry of an earlier send reports where that message went.
        let mentions = match conv.kind() {
            chat_nats::subjects::ConvKind::Group(g) => {
                crate::messaging::mentions::resolve(state, g, from, &body).await?
            }
            _ => Vec::new(),
        };
        let kind = MessageKind::Text;
        let out = Outgoing {
            from,
            device,
            cid: &cid,
            conv: &conv,
            kind,
            body,
            event: None,
            target: None,
            reply_to,
            mentions: mentions.clone(),
        };
        let Sent { id, ts, conv, n } = state.sender.send(out).await?;
        let conv = ConvId::parse(&conv).ok_or_else(|| ClientError::new(ErrorCode::Internal, "bad conversation id"))?;
        // Counted in the list before the ack (a retry records it again).
        if !mentions.is_empty() && n > 0 {
            state.db.record_mentions(&conv.to_string(), id, n, &mentions).await.map_err(ClientError::unavailable)?;
        }
        if let chat_nats::subjects::ConvKind::Direct(a, b) = conv.kind() {
            state.remember_direct(a, b).await;
        }
        // The sender has read the conversation up to their own message
        // (written later, coalesced: `reads::OwnReads`). Not for services,
        // and not from an outcome recorded without its ordinal.
        if origin == Origin::Session && n > 0 && state.cfg.own_send_reads {
            state.own_reads.record((from, conv.clone()), (n, id));
        }
        Ok::<_, ClientError>((conv, id, ts))
    }
    .await;
    let reply = match result {
        Ok((conv, id, ts)) => ServerFrame::Ack { cid, id: id.to_string(), conv: conv.to_string(), ts },
        Err(r) => r.into_frame(Some(cid)),
    };
    state.metrics.send_answered(&reply, started);
    reply
}
