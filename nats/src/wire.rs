//! Client-facing WebSocket frames and error codes (see `docs/protocol.md`).
//!
//! Every frame is one JSON object in one text frame with a `type` field.
//! Every id is a decimal string.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum ClientFrame {
    /// Send a message.
    Send {
        /// Client message id, unique per sending device (`[A-Za-z0-9_-]`,
        /// 1–64 characters); a retry with the same `cid` is not duplicated.
        cid: String,
        /// Recipient.
        to: Target,
        /// Message text, 1 to the configured maximum of characters.
        body: String,
        /// The id of an earlier message of the same conversation this
        /// one answers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    /// Change the text of one's own earlier message (within
    /// `CHAT_EDIT_WINDOW_SECS`); answered with `ack`, delivered to every
    /// member as a `msg` of kind `edit`.
    Edit {
        /// Client message id of this change (dedupe, like a send's).
        cid: String,
        /// Conversation id.
        conv: String,
        /// Id of the message to change.
        id: String,
        /// The new text (the same limits as a send's).
        body: String,
    },
    /// Delete an earlier message for everyone: one's own within
    /// `CHAT_EDIT_WINDOW_SECS`, any message of a group one owns or
    /// administers; answered with `ack`, delivered as a `msg` of kind
    /// `delete`.
    Delete {
        /// Client message id of this change.
        cid: String,
        /// Conversation id.
        conv: String,
        /// Id of the message to delete.
        id: String,
    },
    /// Add or remove one's reaction (an emoji) on a message; answered with
    /// `ack`, delivered to every member as a `msg` of kind `react`.
    React {
        /// Client message id of this change.
        cid: String,
        /// Conversation id.
        conv: String,
        /// Id of the message reacted to.
        id: String,
        /// The emoji (see `envelope::valid_emoji`).
        emoji: String,
        /// `add` or `remove`.
        op: crate::envelope::ReactionOp,
    },
    /// Catch up from a cursor, then continue live.
    Sync {
        /// The last cursor the device saw; absent means from the beginning.
        #[serde(default)]
        cursor: Option<String>,
    },
    /// Keep-alive and presence heartbeat; answered with `pong`.
    Ping,
    /// The user is typing in a conversation.
    Typing {
        /// Conversation id.
        conv: String,
    },
    /// Follow these users' presence (beyond friends, e.g. a group's members).
    #[serde(rename = "presence.subscribe")]
    PresenceSubscribe {
        /// User ids.
        users: Vec<String>,
    },
    /// Stop following these users' presence.
    #[serde(rename = "presence.unsubscribe")]
    PresenceUnsubscribe {
        /// User ids.
        users: Vec<String>,
    },
    /// Mark a conversation read up to a message (never moves backwards).
    Read {
        /// Conversation id.
        conv: String,
        /// The message id read up to.
        up_to: String,
    },
    /// Join a live room: answered with its last `CHAT_ROOM_BACKLOG`
    /// messages, then `joined`, then its live messages.
    Join {
        /// Room id.
        room: String,
    },
    /// Leave a live room; answered with `left`.
    Leave {
        /// Room id.
        room: String,
    },
}

/// Presence status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// At least one device is connected and heartbeating.
    Online,
    /// No device is.
    Offline,
}

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Target {
    /// A 1:1 conversation with this user id.
    User(String),
    /// A group conversation (group id).
    Group(String),
    /// A live room (room id).
    Room(String),
}

/// A frame sent by the server.
// A frame lives only from building to serialising it, never in a
// collection, so `Msg` being the largest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum ServerFrame {
    /// A send was stored.
    Ack {
        /// The client's message id.
        cid: String,
        /// The message id.
        id: String,
        /// The conversation id.
        conv: String,
        /// Unix ms of acceptance.
        ts: u64,
    },
    /// A request failed.
    Error {
        /// The client's message id, when the failed frame had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cid: Option<String>,
        /// Stable error code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// With `rate_limited` from flood detection and with `muted`: how
        /// long until a send may succeed, in milliseconds.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// A message, live or during catch-up.
    Msg(MsgFrame),
    /// Catch-up is complete; live frames follow.
    Synced {
        /// Cursor of the last message sent (the request's cursor when none).
        cursor: String,
        /// True when the cursor is older than the oldest retained inbox
        /// message: copies may have expired unseen; read the conversations'
        /// history to fill the gap.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        truncated: bool,
    },
    /// Answer to `ping`.
    Pong,
    /// A followed user's presence (current state on follow, then changes).
    Presence {
        /// The user.
        user: String,
        /// Online or offline.
        status: Status,
        /// Unix ms the user was last seen; absent if never.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_active_at: Option<u64>,
    },
    /// Someone is typing.
    Typing {
        /// Conversation id.
        conv: String,
        /// Who.
        user: String,
    },
    /// The user's read position in a conversation: to the device that sent
    /// the `read` (no cursor) and, from the inbox, to the user's other
    /// devices (with a cursor). Clients keep the highest `up_to`.
    Read {
        /// Conversation id.
        conv: String,
        /// The message read up to.
        up_to: String,
        /// Its ordinal in the conversation (`n` of its `msg` frame): a
        /// client's unread count is its highest `msg` `n` minus this.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<u64>,
        /// Unread messages left in the conversation for the user (0 unless
        /// newer messages arrived meanwhile); only on the answer to `read`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unread: Option<u64>,
        /// Sync cursor after this entry (inbox copies only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cursor: Option<String>,
    },
    /// Some device of the other participant of a 1:1 got the messages up
    /// to `up_to` (a delivery receipt; coalesced, only ever rising).
    Delivered {
        /// Conversation id.
        conv: String,
        /// Who got them.
        user: String,
        /// The newest message delivered.
        up_to: String,
        /// Sync cursor after this entry.
        cursor: String,
    },
    /// A `join` is complete: the backlog (`msg` frames with `room`) was
    /// sent; live messages follow with no gap or duplicate at the seam.
    Joined {
        /// Room id.
        room: String,
        /// How many backlog messages were sent.
        backlog: u64,
        /// The room's approximate live viewer count.
        viewers: u64,
    },
    /// The session no longer receives a room: answer to `leave`, or the
    /// user was banned from it (`reason` `banned`).
    Left {
        /// Room id.
        room: String,
        /// Why, when the session did not ask (`banned`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// This session read too slowly for a room and skipped `missed` of
    /// its messages (they stay in the room's history); newer ones follow.
    Gap {
        /// Room id.
        room: String,
        /// How many messages were skipped.
        missed: u64,
    },
    /// The other participant of a 1:1 read up to a message.
    Receipt {
        /// Conversation id.
        conv: String,
        /// Who read.
        user: String,
        /// The message read up to.
        up_to: String,
        /// Sync cursor after this entry.
        cursor: String,
    },
}

/// A message delivered to a device.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct MsgFrame {
    /// Message id.
    pub id: String,
    /// Conversation id.
    pub conv: String,
    /// Sender user id.
    pub from: String,
    /// `text` or `system`.
    pub kind: crate::envelope::MessageKind,
    /// Message text.
    pub body: String,
    /// Unix ms of acceptance.
    pub ts: u64,
    /// Ordinal in the conversation (from 1, without gaps; an `edit` or
    /// `delete` carries the conversation's last ordinal when it was
    /// stored): unread counts follow from it (`docs/protocol.md`).
    #[serde(default)]
    pub n: u64,
    /// Sync cursor after this message (opaque); absent on room messages
    /// (rooms are not part of the sync cursor).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub cursor: String,
    /// The client message id, only on the device that sent the message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<String>,
    /// On `edit` and `delete`: the id of the message changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// On `system` messages of groups: the membership change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<crate::envelope::GroupEvent>,
    /// On messages of a live room: the room id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// On `react`: the emoji added or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Box<crate::envelope::Reaction>>,
    /// On `react`: the target's reaction counts after it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<crate::envelope::ReactionCount>,
    /// On a reply: the message it answers (id, author, preview).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<crate::envelope::ReplyTo>,
    /// On group texts: the user ids of the members its `@username`s
    /// mention (at most [`crate::envelope::MAX_MENTIONS`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
}

/// Stable error codes, shared by WebSocket `error` frames and HTTP errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not valid JSON (or not a JSON object).
    BadJson,
    /// The frame's `type` is missing or unknown.
    UnknownType,
    /// A field is missing, unknown or of the wrong type.
    BadFrame,
    /// The message body exceeds the configured maximum of characters.
    TooLarge,
    /// The message body is empty.
    EmptyBody,
    /// The `cid` is not 1–64 characters of `[A-Za-z0-9_-]`.
    BadCid,
    /// The recipient user does not exist.
    UnknownUser,
    /// The group does not exist.
    UnknownGroup,
    /// The caller may not do this.
    Forbidden,
    /// The sync cursor is malformed.
    BadCursor,
    /// The client sends faster than the configured rate.
    RateLimited,
    /// The send was not confirmed in time; retry with the same `cid`.
    Timeout,
    /// A dependency (NATS, PostgreSQL) is unreachable; retry later.
    Unavailable,
    /// An unexpected server error.
    Internal,
    /// HTTP: the request body or parameters are invalid.
    BadRequest,
    /// HTTP: the username or password does not meet the rules.
    BadCredentials,
    /// HTTP: the username is taken.
    UsernameTaken,
    /// HTTP: missing, invalid or expired token; or wrong login.
    Unauthorized,
    /// HTTP: no such resource.
    NotFound,
    /// HTTP: method not allowed on this path.
    MethodNotAllowed,
    /// The group is at its maximum size.
    GroupFull,
    /// HTTP: the request conflicts with the current state.
    Conflict,
    /// A per-connection limit (such as presence subscriptions) is reached.
    LimitExceeded,
    /// HTTP: a push registration names a provider this deployment has not
    /// configured.
    PushProviderDisabled,
    /// The gateway holds `CHAT_MAX_CONNECTIONS` sessions: connect to another
    /// edge (HTTP 503 with `Retry-After`).
    AtCapacity,
    /// The gateway is draining (shutting down or told to by an operator):
    /// connect to another edge (HTTP 503 with `Retry-After`).
    Draining,
    /// HTTP: the request body is larger than `CHAT_HTTP_MAX_BODY_BYTES`
    /// (413).
    BodyTooLarge,
    /// HTTP: the account is banned by an operator (403; the message says
    /// until when).
    Banned,
    /// The message contains an entry of the banned-word list and the
    /// policy is `reject` (`CHAT_BANNED_WORDS_POLICY`).
    BannedWord,
    /// The sender is muted for flooding; `retry_after_ms` says until when.
    Muted,
    /// An edit or delete of one's own message after `CHAT_EDIT_WINDOW_SECS`.
    EditWindowClosed,
    /// The room does not exist.
    UnknownRoom,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::EmptyBody => "empty_body",
            ErrorCode::BadCid => "bad_cid",
            ErrorCode::UnknownUser => "unknown_user",
            ErrorCode::UnknownGroup => "unknown_group",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::BadCursor => "bad_cursor",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Timeout => "timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadCredentials => "bad_credentials",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::GroupFull => "group_full",
            ErrorCode::Conflict => "conflict",
            ErrorCode::LimitExceeded => "limit_exceeded",
            ErrorCode::PushProviderDisabled => "push_provider_disabled",
            ErrorCode::AtCapacity => "at_capacity",
            ErrorCode::Draining => "draining",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::Banned => "banned",
            ErrorCode::BannedWord => "banned_word",
            ErrorCode::Muted => "muted",
            ErrorCode::EditWindowClosed => "edit_window_closed",
            ErrorCode::UnknownRoom => "unknown_room",
        }
    }
}

/// A client frame that could not be parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameError {
    /// The `cid` of the frame, when one could be read.
    pub cid: Option<String>,
    /// What was wrong.
    pub code: ErrorCode,
    /// Detail for humans.
    pub message: String,
}

const CLIENT_TYPES: [&str; 12] = [
    "send",
    "edit",
    "delete",
    "react",
    "sync",
    "ping",
    "typing",
    "presence.subscribe",
    "presence.unsubscribe",
    "read",
    "join",
    "leave",
];

/// Parses one client text frame, telling malformed JSON, unknown types and
/// bad fields apart.
pub fn parse_client_frame(text: &str) -> Result<ClientFrame, FrameError> {
    let value: Value = serde_json::from_str(text).map_err(|e| FrameError {
        cid: None,
        code: ErrorCode::BadJson,
        message: format!("invalid JSON: {e}"),
    })?;
    let Some(obj) = value.as_object() else {
        return Err(FrameError {
            cid: None,
            code: ErrorCode::BadJson,
            message: "a frame must be a JSON object".into(),
        });
    };
    let cid = obj.get("cid").and_then(Value::as_str).map(str::to_owned);
    match obj.get("type").and_then(Value::as_str) {
        Some(t) if CLIENT_TYPES.contains(&t) => {}
        Some(t) => {
            return Err(FrameError { cid, code: ErrorCode::UnknownType, message: format!("unknown frame type {t:?}") })
        }
        None => {
            return Err(FrameError {
                cid,
                code: ErrorCode::UnknownType,
                message: "missing string field \"type\"".into(),
            })
        }
    }
    serde_json::from_value(value).map_err(|e| FrameError { cid, code: ErrorCode::BadFrame, message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_send() {
        let f = parse_client_frame(r#"{"type":"send","cid":"c1","to":{"user":"7"},"body":"hi"}"#);
        assert_eq!(
            f,
            Ok(ClientFrame::Send { cid: "c1".into(), to: Target::User("7".into()), body: "hi".into(), reply_to: None })
        );
    }

    #[test]
    fn parses_edit_and_delete() {
        let f = parse_client_frame(r#"{"type":"edit","cid":"e1","conv":"d-1-2","id":"9","body":"fixed"}"#);
        let want = ClientFrame::Edit { cid: "e1".into(), conv: "d-1-2".into(), id: "9".into(), body: "fixed".into() };
        assert_eq!(f, Ok(want));
        let f = parse_client_frame(r#"{"type":"delete","cid":"x1","conv":"g-3","id":"9"}"#);
        assert_eq!(f, Ok(ClientFrame::Delete { cid: "x1".into(), conv: "g-3".into(), id: "9".into() }));
        let e = parse_client_frame(r#"{"type":"delete","cid":"x2","conv":"g-3","id":"9","body":"no"}"#).unwrap_err();
        assert_eq!((e.code, e.cid.as_deref()), (ErrorCode::BadFrame, Some("x2")));
    }

    #[test]
    fn parses_room_frames() {
        assert_eq!(parse_client_frame(r#"{"type":"join","room":"5"}"#), Ok(ClientFrame::Join { room: "5".into() }));
        assert_eq!(parse_client_frame(r#"{"type":"leave","room":"5"}"#), Ok(ClientFrame::Leave { room: "5".into() }));
        let f = parse_client_frame(r#"{"type":"send","cid":"c","to":{"room":"5"},"body":"hi"}"#);
        assert_eq!(
            f,
            Ok(ClientFrame::Send { cid: "c".into(), to: Target::Room("5".into()), body: "hi".into(), reply_to: None })
        );
        let gap = serde_json::to_value(ServerFrame::Gap { room: "5".into(), missed: 3 }).unwrap();
        assert_eq!(gap, serde_json::json!({"type":"gap","room":"5","missed":3}));
    }

    #[test]
    fn tells_errors_apart() {
        let code = |s: &str| parse_client_frame(s).unwrap_err().code;
        assert_eq!(code("{"), ErrorCode::BadJson);
        assert_eq!(code("[1]"), ErrorCode::BadJson);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"cid":"x"}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"send","cid":"c","to":{"user":7},"body":"x"}"#), ErrorCode::BadFrame);
        assert_eq!(code(r#"{"type":"send","cid":"c","body":"x"}"#), ErrorCode::BadFrame);
        let e = parse_client_frame(r#"{"type":"send","cid":"c9","to":"x","body":1}"#).unwrap_err();
        assert_eq!(e.cid.as_deref(), Some("c9"));
    }

    #[test]
    fn server_frames_have_their_wire_shape() {
        let v = serde_json::to_value(ServerFrame::Error {
            cid: None,
            code: ErrorCode::TooLarge,
            message: "m".into(),
            retry_after_ms: None,
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"type":"error","code":"too_large","message":"m"}));
        assert_eq!(serde_json::to_string(&ServerFrame::Pong).unwrap(), r#"{"type":"pong"}"#);
        assert_eq!(ErrorCode::UnknownUser.as_str(), "unknown_user");
        for code in [ErrorCode::BannedWord, ErrorCode::Muted] {
            assert_eq!(serde_json::to_value(code).unwrap(), serde_json::json!(code.as_str()));
        }
        let muted = ServerFrame::Error {
            cid: Some("c".into()),
            code: ErrorCode::Muted,
            message: "m".into(),
            retry_after_ms: Some(250),
        };
        let v = serde_json::to_value(&muted).unwrap();
        assert_eq!((v["code"].as_str(), v["retry_after_ms"].as_u64()), (Some("muted"), Some(250)));
        assert_eq!(serde_json::from_value::<ServerFrame>(v).unwrap(), muted);
    }
}
