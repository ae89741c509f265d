//! `send`: queued to the session's sender task, which runs sends one after
//! another so a device's messages keep their order.

use std::sync::Arc;

use chat_nats::wire::{ErrorCode, Target};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::Claims;
use crate::conn::outbound::Outbound;
use crate::conn::session::Session;
use crate::error::frame;
use crate::messaging::send::send_frame;
use crate::moderation::Origin;
use crate::AppState;

/// Sends a session may have queued behind the one in progress.
const SEND_QUEUE: usize = 64;

/// A send waiting for the sender task.
pub(crate) struct SendReq {
    cid: String,
    to: Target,
    body: String,
}

/// Starts a session's sender task.
pub(crate) fn start_sender(
    state: &Arc<AppState>,
    claims: &Claims,
    out: &Outbound,
) -> (mpsc::Sender<SendReq>, JoinHandle<()>) {
    let (sends, mut rx) = mpsc::channel::<SendReq>(SEND_QUEUE);
    let (state, out, user, device) = (state.clone(), out.clone(), claims.user, claims.device.clone());
    let fut = async move {
        while let Some(r) = rx.recv().await {
            // Boxed: an idle sender keeps only its small waiting state.
            let reply = Box::pin(send_frame(&state, user, &device, Origin::Session, r.cid, &r.to, r.body)).await;
            if !out.push_wait(frame(&reply), 0, state.cfg.stall_timeout).await {
                break;
            }
        }
    };
    (sends, tokio::spawn(fut))
}

/// Handles `send`.
pub(crate) fn send(s: &mut Session, cid: String, to: Target, body: String) {
    let req = SendReq { cid: cid.clone(), to, body };
    if s.sends.try_send(req).is_err() {
        s.error(Some(cid), ErrorCode::RateLimited, "too many sends in flight; wait for acks");
    }
}
