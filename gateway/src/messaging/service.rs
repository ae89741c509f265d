//! Internal services publish to a subject: request/reply on
//! [`subjects::SERVICE_SEND`] with a [`ServiceSend`] envelope; the reply is
//! the `ack` or `error` frame a client would get. Who may publish there is
//! NATS's authorization (see `docs/subjects.md`); the gateways answer in a
//! queue group, so any one of them takes each request.

use std::sync::Arc;

use chat_nats::envelope::ServiceSend;
use chat_nats::subjects;
use chat_nats::wire::{ErrorCode, ServerFrame};
use futures::StreamExt;

use crate::error::frame;
use crate::error::ClientError;
use crate::messaging::send::send_frame;
use crate::moderation::Origin;
use crate::AppState;

/// Answers service sends until the subscription ends.
pub async fn start(state: Arc<AppState>) -> Result<(), async_nats::Error> {
    let mut sub = state.client.queue_subscribe(subjects::SERVICE_SEND, subjects::SERVICE_QUEUE.into()).await?;
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Some(reply) = msg.reply.clone() else { continue };
            let state = state.clone();
            tokio::spawn(async move {
                let answer = handle(&state, &msg.payload).await;
                if let Err(e) = state.client.publish(reply, frame(&answer).into()).await {
                    tracing::warn!(error = %e, "service reply failed");
                }
            });
        }
    });
    Ok(())
}

async fn handle(state: &AppState, payload: &[u8]) -> ServerFrame {
    let req: ServiceSend = match serde_json::from_slice(payload) {
        Ok(r) => r,
        Err(e) => return ClientError::new(ErrorCode::BadFrame, e.to_string()).into_frame(None),
    };
    let device = format!("svc-{}", req.service);
    if req.service.is_empty() || req.service.len() > 60 || !subjects::is_token(&device) {
        let message = "service must be 1-60 characters of [A-Za-z0-9_-]";
        return ClientError::new(ErrorCode::BadFrame, message).into_frame(Some(req.cid));
    }
    match state.user_exists(req.as_user).await {
        Ok(true) => {}
        Ok(false) => {
            return ClientError::new(ErrorCode::UnknownUser, "no such service account").into_frame(Some(req.cid))
        }
        Err(r) => return r.into_frame(Some(req.cid)),
    }
    let draft = crate::messaging::send::Draft { to: &req.to, body: req.body, reply_to: req.reply_to.as_deref() };
    send_frame(state, req.as_user, &device, Origin::Service, req.cid, draft).await
}
