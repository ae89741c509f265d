//! `send`: queued to the session's sender task, which runs sends (and
//! edits and deletes, `edit.rs`, `delete.rs`) one after another so a
//! device's messages and changes keep their order.

use std::sync::Arc;

use chat_nats::wire::{ErrorCode, Target};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::conn::outbound::Outbound;
use crate::conn::session::Session;
use crate::error::frame;
use crate::messaging::change::Change;
use crate::messaging::send::send_frame;
use crate::moderation::Origin;
use crate::AppState;

/// Sends a session may have queued behind the one in progress.
const SEND_QUEUE: usize = 64;

/// A send, edit or delete waiting for the sender task.
pub(crate) struct SendReq {
    pub(crate) cid: String,
    pub(crate) op: Op,
}

/// What a queued request does.
pub(crate) enum Op {
    /// A new message.
    Send {
        /// Recipient.
        to: Target,
        /// Text.
        body: String,
        /// The id of the message it answers.
        reply_to: Option<String>,
    },
    /// An edit or delete of message `id` of `conv`.
    Change {
        /// Conversation.
        conv: String,
        /// Message id.
        id: String,
        /// What to do.
        change: Change,
    },
}

/// Starts a session's sender task.
pub(crate) fn start_sender(
    state: &Arc<AppState>,
    user: i64,
    device: String,
    out: &Outbound,
) -> (mpsc::Sender<SendReq>, JoinHandle<()>) {
    let (sends, mut rx) = mpsc::channel::<SendReq>(SEND_QUEUE);
    let (state, out) = (state.clone(), out.clone());
    let fut = async move {
        while let Some(r) = rx.recv().await {
            // Boxed: an idle sender keeps only its small waiting state.
            let reply = match r.op {
                Op::Send { to, body, reply_to } => {
                    let draft = crate::messaging::send::Draft { to: &to, body, reply_to: reply_to.as_deref() };
                    Box::pin(send_frame(&state, user, &device, Origin::Session, r.cid, draft)).await
                }
                Op::Change { conv, id, change } => {
                    Box::pin(crate::messaging::change::frame(&state, user, &device, r.cid, &conv, &id, change)).await
                }
            };
            if !out.push_wait(frame(&reply), 0, state.cfg.stall_timeout).await {
                break;
            }
        }
    };
    (sends, tokio::spawn(fut))
}

/// Handles `send`.
pub(crate) fn send(s: &mut Session, cid: String, to: Target, body: String, reply_to: Option<String>) {
    queue(s, SendReq { cid, op: Op::Send { to, body, reply_to } });
}

/// Queues a request for the sender task, refusing it when too many wait.
pub(crate) fn queue(s: &mut Session, req: SendReq) {
    let cid = req.cid.clone();
    if !s.queue_send(req) {
        s.error(Some(cid), ErrorCode::RateLimited, "too many sends in flight; wait for acks");
    }
}
