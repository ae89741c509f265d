//! Edits and deletes of earlier messages, from sessions (`edit`, `delete`
//! frames) and from operators (`DELETE /v1/admin/messages/{conv}/{id}`).
//!
//! The gateway finds the message in history and decides who may change
//! it; the change then goes through ingress like a send, so it takes its
//! place in the conversation's order, reaches every member's inbox and is
//! acked only once it is durable (see `sequencer::change` in the worker).
//!
//! Rules: only text messages change. The author edits, and deletes for
//! everyone, within `CHAT_EDIT_WINDOW_SECS` of sending; a group's owner
//! and admins delete any of its messages at any time; an operator deletes
//! any message. Any participant reacts to a text message (`react`). A
//! deleted message takes no further change (`not_found`).

use chat_nats::envelope::{valid_emoji, MessageKind, Original, Reaction};
use chat_nats::subjects::{self, ConvId, ConvKind};
use chat_nats::wire::{ErrorCode, ServerFrame};

use crate::error::ClientError;
use crate::messaging::history::{self, Reader};
use crate::messaging::send::{check_body, Outgoing};
use crate::moderation::Origin;
use crate::store::groups::Role;
use crate::AppState;

/// What to do to the message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Replace its text.
    Edit(String),
    /// Delete it for everyone.
    Delete,
    /// Add or remove the caller's reaction (any participant may).
    React(Reaction),
}

/// Who asks.
#[derive(Debug, Clone, Copy)]
pub enum Actor<'a> {
    /// A user's device.
    User {
        /// The user.
        user: i64,
        /// The device.
        device: &'a str,
    },
    /// An operator (admin API).
    Operator,
}

/// Checks and stores a change; the change's own id, its timestamp and the
/// conversation, as a send's ack carries them.
pub async fn apply(
    state: &AppState,
    actor: Actor<'_>,
    cid: &str,
    conv: &str,
    id: &str,
    change: Change,
) -> Result<crate::messaging::send::Sent, ClientError> {
    if !subjects::is_token(cid) {
        return Err(ClientError::new(ErrorCode::BadCid, "cid must be 1-64 characters of [A-Za-z0-9_-]"));
    }
    let conv = ConvId::parse(conv).ok_or_else(|| ClientError::new(ErrorCode::BadFrame, "malformed conversation id"))?;
    let id = subjects::parse_seq(id)
        .filter(|v| *v > 0)
        .ok_or_else(|| ClientError::new(ErrorCode::BadFrame, "id must be a message id"))?;
    if let Change::Edit(body) = &change {
        if matches!(actor, Actor::Operator) {
            return Err(ClientError::forbidden("operators delete messages; they do not edit them"));
        }
        check_body(state, body)?;
    }
    if let Change::React(r) = &change {
        if matches!(actor, Actor::Operator) {
            return Err(ClientError::forbidden("operators do not react"));
        }
        if !valid_emoji(&r.emoji) {
            let m = "emoji must be 1-10 characters and at most 32 bytes, without whitespace or control characters";
            return Err(ClientError::new(ErrorCode::BadFrame, m));
        }
    }
    // Who the caller is in the conversation: not in it learns nothing,
    // not even whether the message exists.
    let role = match actor {
        Actor::Operator => None,
        Actor::User { user, .. } => {
            let allowed = match conv.kind() {
                ConvKind::Direct(a, b) => (user == a || user == b).then_some(None),
                ConvKind::Group(g) => state.db.role(g, user).await?.map(Some),
                // A room's owner and moderators delete like a group's admins.
                ConvKind::Room(r) => state
                    .db
                    .room_access(r, user)
                    .await?
                    .filter(|a| a.may_join())
                    .map(|a| a.moderator.then_some(Role::Admin)),
            };
            match allowed {
                Some(role) => role,
                None => return Err(ClientError::forbidden("not a participant of this conversation")),
            }
        }
    };
    let reader = Reader { storage: &state.storage, cache: &state.history_index };
    let (seq, original) = history::find(reader, &conv, id)
        .await
        .map_err(ClientError::unavailable)?
        .ok_or_else(|| ClientError::not_found("no such message in this conversation (or it was deleted)"))?;
    if original.kind != MessageKind::Text {
        return Err(ClientError::forbidden("only text messages can be edited or deleted"));
    }
    let (from, device) = match actor {
        Actor::Operator => (0, subjects::OPERATOR_DEVICE),
        Actor::User { user, device } => {
            let author = original.from == user;
            let age_ms = (crate::auth::now_secs() * 1000).saturating_sub(original.ts);
            let in_window = age_ms <= state.cfg.edit_window.as_millis() as u64;
            let moderator = matches!(role, Some(Role::Owner | Role::Admin));
            let allowed = match &change {
                Change::React(_) => Ok(()),
                Change::Edit(_) if !author => Err(ClientError::forbidden("only the author may edit a message")),
                Change::Delete if !author && !moderator => {
                    Err(ClientError::forbidden("only the author, or a group's owner or admins, may delete a message"))
                }
                _ if author && !in_window && !(change == Change::Delete && moderator) => Err(ClientError::new(
                    ErrorCode::EditWindowClosed,
                    format!("messages can be changed for {} s after sending", state.cfg.edit_window.as_secs()),
                )),
                _ => Ok(()),
            };
            allowed?;
            (user, device)
        }
    };
    let (kind, body) = match change {
        Change::Edit(body) => (MessageKind::Edit, state.moderation.screen(from, device, Origin::Session, body).await?),
        Change::Delete => (MessageKind::Delete, String::new()),
        // The reaction travels as the ingress body, like a read mark.
        Change::React(r) => (
            MessageKind::React,
            serde_json::to_string(&r).map_err(|e| ClientError::new(ErrorCode::Internal, e.to_string()))?,
        ),
    };
    let target = Some((id, Original { n: original.n, seq, from: original.from, ts: original.ts }));
    let out = Outgoing {
        from,
        device,
        cid,
        conv: &conv,
        kind,
        body,
        event: None,
        target,
        reply_to: None,
        mentions: Vec::new(),
    };
    let sent = state.sender.send(out).await?;
    if kind == MessageKind::Delete && matches!(conv.kind(), chat_nats::subjects::ConvKind::Group(_)) {
        // A deleted message's mentions stop counting (a retry deletes again).
        state.db.delete_mentions(&conv.to_string(), id).await.map_err(ClientError::unavailable)?;
    }
    Ok(sent)
}

/// [`apply`] for a session's frame: its `ack` or `error`.
pub async fn frame(
    state: &AppState,
    user: i64,
    device: &str,
    cid: String,
    conv: &str,
    id: &str,
    change: Change,
) -> ServerFrame {
    match apply(state, Actor::User { user, device }, &cid, conv, id, change).await {
        Ok(s) => ServerFrame::Ack { cid, id: s.id.to_string(), conv: s.conv, ts: s.ts },
        Err(e) => e.into_frame(Some(cid)),
    }
}
