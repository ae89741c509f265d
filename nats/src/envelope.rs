//! What travels between processes over NATS.
//!
//! Ids are 64-bit integers inside the system and decimal strings on the
//! wire (JSON clients cannot hold 64-bit integers exactly).

use serde::{Deserialize, Serialize};

use crate::wire::ErrorCode;

/// A send accepted by a gateway (or an internal service), published on the
/// ingress stream with `Nats-Msg-Id` = [`crate::subjects::dedupe_key`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IngressSend {
    /// Sender user id.
    #[serde(with = "id_str")]
    pub from: i64,
    /// Sending device id (`svc-<name>` for internal services).
    pub device: String,
    /// Client message id, unique per sending device.
    pub cid: String,
    /// Conversation id ([`crate::subjects::ConvId`]).
    pub conv: String,
    /// Message kind.
    #[serde(default)]
    pub kind: MessageKind,
    /// Message text.
    pub body: String,
    /// Core NATS subject on which the sequencer publishes the [`SeqAck`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<String>,
    /// For system messages of groups: the membership change it records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<GroupEvent>,
    /// For `edit` and `delete`: the id of the message it changes.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_u64_str")]
    pub target: Option<u64>,
    /// For `edit` and `delete`: where the changed message is, as the
    /// gateway found it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Original>,
    /// A reply: the message it answers, as the gateway found it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    /// On group texts: the user ids its `@username`s resolved to (current
    /// members, at most [`MAX_MENTIONS`], distinct, in order of first use).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
}

impl IngressSend {
    /// Whether a gateway may hand this send straight to its partition's
    /// owner (`CHAT_SEND_PATH`): a text, no event. Marks, edits, reactions
    /// and membership changes go through ingress alone.
    pub fn may_hand_off(&self) -> bool {
        self.kind == MessageKind::Text && self.event.is_none()
    }
}

/// The most distinct users one message can mention (further `@names` are
/// left as text).
pub const MAX_MENTIONS: usize = 50;

/// The message an `edit` or `delete` changes, as the gateway found it in
/// history: the sequencer erases a deleted one at `seq` (after checking it
/// is that message) and history pages put its tombstone at ordinal `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Original {
    /// Its ordinal in the conversation.
    pub n: u64,
    /// Its history stream sequence.
    pub seq: u64,
    /// Its author.
    #[serde(with = "id_str")]
    pub from: i64,
    /// Unix ms it was accepted.
    pub ts: u64,
}

/// Most characters of a reply's preview of the message it answers.
pub const REPLY_PREVIEW_CHARS: usize = 100;

/// The message a reply answers: its id, ordinal and author and the start of
/// its text when the reply was sent. History pages drop the preview (and
/// set `deleted`) once the answered message is deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The answered message's id.
    #[serde(with = "u64_str")]
    pub id: u64,
    /// Its ordinal in the conversation.
    pub n: u64,
    /// Its author.
    #[serde(with = "id_str")]
    pub from: i64,
    /// Its first [`REPLY_PREVIEW_CHARS`] characters; absent once deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// The answered message was deleted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl ReplyTo {
    /// The reference to `m` (in its current state) a reply carries.
    pub fn to(m: &StoredMessage) -> ReplyTo {
        ReplyTo {
            id: m.id,
            n: m.n,
            from: m.from,
            preview: Some(m.body.chars().take(REPLY_PREVIEW_CHARS).collect()),
            deleted: false,
        }
    }
}

/// A group membership change, carried by a system message. The sequencer
/// applies `members` as the group's member list when `version` is newer
/// than the one it has, so changes apply in conversation order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupEvent {
    /// What happened.
    pub op: GroupOp,
    /// Who did it.
    #[serde(with = "id_str")]
    pub actor: i64,
    /// Whom it was done to (absent for `created`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The membership version after the change (1 at creation).
    pub version: u64,
    /// Every member after the change.
    pub members: Vec<String>,
    /// For `meta`: the name, topic and avatar after the change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta: Option<Box<GroupMeta>>,
}

/// A group's member list as the sequencer last applied it (KV
/// `chat_groups`, key [`crate::subjects::group_key`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMembers {
    /// Membership version.
    pub version: u64,
    /// Member user ids.
    pub members: Vec<String>,
    /// Users the change of this version dropped (they still get its
    /// system message, also when it is redelivered after a crash).
    #[serde(default)]
    pub dropped: Vec<String>,
}

/// Kinds of membership change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupOp {
    /// The group was created with its first members.
    Created,
    /// A member was added.
    Added,
    /// A member was removed by an owner or admin.
    Removed,
    /// A member left.
    Left,
    /// A member's role changed.
    Role,
    /// The group's name, topic or avatar changed (`GroupEvent::meta`);
    /// the membership did not (`version` and `members` are as they were).
    Meta,
}

/// A group's meta information as a `meta` event sets it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    /// Display name (title), 1-100 characters.
    pub name: String,
    /// Topic, up to 500 characters (may be empty).
    pub topic: String,
    /// Avatar image URL (`https://`, up to 500 characters) or empty.
    pub avatar_url: String,
}

/// The kind of a stored message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    /// A user's text message.
    #[default]
    Text,
    /// A message written by the system (membership changes and the like).
    System,
    /// A change of the text of an earlier message (`target`): `body` is the
    /// new text. An event: it has an id in the conversation's order but no
    /// ordinal of its own, is stored on the conversation's event subject
    /// ([`crate::subjects::history_event`]) and is never pushed.
    Edit,
    /// The deletion of an earlier message (`target`); `body` is empty. An
    /// event, like `edit`; the deleted message is erased from history.
    Delete,
    /// A read mark (`read` frame): never in history; its ingress `body` is
    /// a [`ReadMark`] as JSON, and its inbox copies are [`StoredMessage`]s
    /// whose `id`/`n` are the message read up to and `from` the reader.
    Read,
    /// A delivery receipt of a 1:1 (some device of the recipient got the
    /// messages up to `id`): like [`MessageKind::Read`], never in history;
    /// its ingress `body` is a [`ReadMark`], copied to the peer's inbox
    /// only, with `from` the recipient who got them.
    Delivered,
    /// Delivery receipts of many 1:1s in one ingress message (a gateway's
    /// flush round, see `gateway/src/messaging/receipts.rs`): its ingress
    /// `body` is a list of [`BundledReceipt`]s, each spread as its own
    /// [`MessageKind::Delivered`]; never stored as this kind. Any partition
    /// may take it: a receipt names messages already in the peer's inbox.
    Receipts,
    /// A reaction added to or removed from an earlier message (`target`,
    /// `reaction`); `body` is empty. An event, like `edit`, stored on the
    /// target's reaction subject ([`crate::subjects::history_reactions`])
    /// with the message's reaction counts after it (`reactions`).
    React,
}

impl MessageKind {
    /// An edit, a delete or a reaction: changes an earlier message instead
    /// of adding one (an event without an ordinal of its own).
    pub fn is_change(self) -> bool {
        matches!(self, MessageKind::Edit | MessageKind::Delete | MessageKind::React)
    }

    /// A read mark or a delivery receipt: no history, no id of its own.
    pub fn is_mark(self) -> bool {
        matches!(self, MessageKind::Read | MessageKind::Delivered | MessageKind::Receipts)
    }
}

/// Most distinct emoji on one message: an `add` of another is refused with
/// `limit_exceeded`.
pub const MAX_REACTION_EMOJI: usize = 20;

/// Most users listed per emoji in a message's reaction counts (the count
/// itself is exact).
pub const REACTION_USERS_LISTED: usize = 10;

/// Most bytes of an emoji (UTF-8); also at most [`MAX_EMOJI_CHARS`]
/// Unicode scalar values, no whitespace or control characters.
pub const MAX_EMOJI_BYTES: usize = 32;

/// Most Unicode scalar values of an emoji (a family of four joined by
/// zero-width joiners is 7).
pub const MAX_EMOJI_CHARS: usize = 10;

/// True when `emoji` is acceptable as a reaction: 1 to
/// [`MAX_EMOJI_CHARS`] scalar values and at most [`MAX_EMOJI_BYTES`]
/// bytes, none of them whitespace or a control character. It is not
/// checked against a list of emoji (new ones appear every year).
pub fn valid_emoji(emoji: &str) -> bool {
    !emoji.is_empty()
        && emoji.len() <= MAX_EMOJI_BYTES
        && emoji.chars().count() <= MAX_EMOJI_CHARS
        && !emoji.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// A reaction change (the `react` frame).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The emoji ([`valid_emoji`]).
    pub emoji: String,
    /// Added or removed.
    pub op: ReactionOp,
}

/// Whether a reaction is added or removed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReactionOp {
    /// The user adds the emoji (nothing changes if they have it already).
    Add,
    /// The user removes it (nothing changes if they do not have it).
    Remove,
}

/// One emoji's reactions on a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReactionCount {
    /// The emoji.
    pub emoji: String,
    /// How many users reacted with it (exact).
    pub count: u64,
    /// Up to [`REACTION_USERS_LISTED`] of them, in the order they reacted.
    #[serde(default, with = "ids_str")]
    pub users: Vec<i64>,
}

/// A user's read position in a conversation: the message read up to and
/// its ordinal (KV `chat_read`, and the body of a [`MessageKind::Read`]
/// ingress message).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMark {
    /// The message read up to.
    #[serde(with = "u64_str")]
    pub up_to: u64,
    /// Its ordinal in the conversation.
    pub n: u64,
    /// Whether the other participant of a 1:1 gets a receipt (the reader's
    /// `read_receipts` setting); only in ingress bodies.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub receipt: bool,
}

/// One delivery receipt of a [`MessageKind::Receipts`] bundle: `user`'s
/// device got the messages of the 1:1 `conv` up to `mark`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundledReceipt {
    /// The recipient who got them.
    #[serde(with = "id_str")]
    pub user: i64,
    /// The 1:1 ([`crate::subjects::ConvId`]).
    pub conv: String,
    /// Up to where.
    pub mark: ReadMark,
}

/// A sequenced message, as stored in history and in every member's inbox.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The message id: unique, strictly increasing within the conversation.
    #[serde(with = "u64_str")]
    pub id: u64,
    /// Conversation id.
    pub conv: String,
    /// Sender user id.
    #[serde(with = "id_str")]
    pub from: i64,
    /// Sending device.
    pub device: String,
    /// Client message id of the send.
    pub cid: String,
    /// Message kind.
    pub kind: MessageKind,
    /// Message text.
    pub body: String,
    /// Unix ms at which the sequencer accepted it.
    pub ts: u64,
    /// Ordinal within the conversation, from 1, without gaps. An edit or
    /// delete has none of its own: it carries the conversation's last
    /// ordinal when it was stored.
    pub n: u64,
    /// The membership change a system message records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<GroupEvent>,
    /// For `edit` and `delete`: the id of the message it changes.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_u64_str")]
    pub target: Option<u64>,
    /// For `edit` and `delete`: the changed message's place.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original: Option<Original>,
    /// In history pages only (never stored): when the message was last
    /// edited (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// In history pages only (never stored): the message was deleted; its
    /// body is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// For `react`: the emoji added or removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Reaction>,
    /// On `react` events as stored on the target's reaction subject, and
    /// in history pages: the message's reaction counts (at most
    /// [`MAX_REACTION_EMOJI`] emoji, in the order first used). On a user's
    /// own reaction entry: the emoji that user has on the message.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<ReactionCount>,
    /// On a reply: the message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<ReplyTo>,
    /// On group texts: the user ids it mentions (from the send, see
    /// [`IngressSend::mentions`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<String>,
}

/// The result of sequencing one send, stored in the acks bucket and
/// published to the sender's gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeqAck {
    /// Dedupe key of the send ([`crate::subjects::dedupe_key`]).
    pub key: String,
    /// What became of it.
    pub result: SeqResult,
}

/// Outcome of a send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "status")]
pub enum SeqResult {
    /// Stored with this id.
    Ok {
        /// Message id.
        #[serde(with = "u64_str")]
        id: u64,
        /// Conversation id.
        conv: String,
        /// Unix ms of acceptance.
        ts: u64,
        /// The message's ordinal in its conversation (`StoredMessage::n`);
        /// 0 for events (edits, deletes, read marks), which have none, and
        /// in outcomes recorded before it was carried.
        #[serde(default)]
        n: u64,
    },
    /// Refused by the sequencer.
    Err {
        /// Stable error code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
    },
}

/// A send by a trusted internal service on [`crate::subjects::SERVICE_SEND`]
/// (request/reply; the reply is a [`ServiceReply`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceSend {
    /// The service's name (`[A-Za-z0-9_-]`, at most 60 characters); the
    /// message is sent by the service's user account with device
    /// `svc-<service>`.
    pub service: String,
    /// User id the service speaks as (its service account).
    #[serde(rename = "as", with = "id_str")]
    pub as_user: i64,
    /// Client message id, for dedupe.
    pub cid: String,
    /// Recipient, as in a client `send` frame.
    pub to: crate::wire::Target,
    /// Message text.
    pub body: String,
    /// As in a client `send` frame: the id of the message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
}

/// The reply to a [`ServiceSend`]: exactly the frame a client would get.
pub type ServiceReply = crate::wire::ServerFrame;

/// A user's presence status, as stored in the status bucket and published
/// on the user's presence subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceState {
    /// The user.
    #[serde(with = "id_str")]
    pub user: i64,
    /// Online or offline.
    pub status: crate::wire::Status,
    /// Unix ms the user was last seen (the last heartbeat when offline).
    pub last_active_at: u64,
}

/// An ephemeral event for a user's sessions on [`crate::subjects::ephemeral`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Ephemeral {
    /// Someone is typing in a conversation the user takes part in.
    Typing {
        /// Conversation.
        conv: String,
        /// Who is typing.
        #[serde(with = "id_str")]
        user: i64,
    },
    /// A device logged out: its sessions close.
    Logout {
        /// The device.
        device: String,
    },
    /// An operator banned the user: every session of every device closes.
    Banned,
    /// The user has a new friend: follow their presence.
    Friend {
        /// The friend.
        #[serde(with = "id_str")]
        user: i64,
    },
    /// A friendship ended: stop following (and re-check an on-demand
    /// follow of the former friend, which the friendship may have allowed).
    Unfriend {
        /// The former friend.
        #[serde(with = "id_str")]
        user: i64,
    },
    /// A relationship with these users ended (a group membership: the user
    /// left or was removed, or one of them did): re-check the on-demand
    /// follows of them and end those no longer allowed.
    Recheck {
        /// The users whose follows to re-check.
        #[serde(with = "ids_str")]
        users: Vec<i64>,
    },
}

/// One push notification to send: a message for one device of a user,
/// planned by the push planner and published on
/// [`crate::subjects::push_job`] with `Nats-Msg-Id` =
/// [`crate::subjects::push_job_id`]. The device's token is read when the
/// job is sent, so a token removed or replaced meanwhile is honoured.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushJob {
    /// Recipient user.
    #[serde(with = "id_str")]
    pub user: i64,
    /// Recipient device.
    pub device: String,
    /// The message.
    #[serde(with = "u64_str")]
    pub message_id: u64,
    /// Its conversation (notifications collapse per conversation).
    pub conv: String,
    /// Sender user id.
    #[serde(with = "id_str")]
    pub from: i64,
    /// Sender's username.
    pub sender_name: String,
    /// The group's name, for group conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_name: Option<String>,
    /// The body, truncated; absent when previews are turned off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview: Option<String>,
    /// Unix ms the message was accepted.
    pub ts: u64,
}

/// What the push planner is given by a sequencer: the text messages it
/// stored (in a round, or one) with the inbox copies each went to, so the
/// planner decides per recipient without reading the copies. Published on
/// [`crate::subjects::push_plan`] with `Nats-Msg-Id` =
/// [`crate::subjects::push_plan_id`], after the copies are stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PushPlan {
    /// The messages, in the order they were stored.
    pub messages: Vec<PlannedMessage>,
}

/// One message of a [`PushPlan`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedMessage {
    /// The message, its body cut to [`PLAN_BODY_CHARS`] characters (what
    /// any preview needs).
    pub msg: StoredMessage,
    /// (recipient, inbox sequence of its copy), the sender's own included.
    pub copies: Vec<(i64, u64)>,
}

/// Characters of a body a [`PlannedMessage`] keeps: one more than the
/// longest preview (`CHAT_PUSH_PREVIEW_CHARS` ≤ 500), so a preview cut from
/// it is the one cut from the whole body.
pub const PLAN_BODY_CHARS: usize = 501;

impl PlannedMessage {
    /// `msg` with its body cut, and its copies.
    pub fn new(msg: &StoredMessage, copies: &[(i64, u64)]) -> PlannedMessage {
        let mut msg = msg.clone();
        if let Some((at, _)) = msg.body.char_indices().nth(PLAN_BODY_CHARS) {
            msg.body.truncate(at);
        }
        PlannedMessage { msg, copies: copies.to_vec() }
    }
}

/// A push job that failed for good, as kept in the dead-letter stream
/// ([`crate::subjects::push_dead`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadPush {
    /// The job.
    pub job: PushJob,
    /// Provider of the device's registration (`fcm`, `apns`, `webpush`).
    pub provider: String,
    /// Why it failed (the last error).
    pub error: String,
    /// Delivery attempts made.
    pub attempts: u64,
    /// Unix ms it was given up.
    pub at: u64,
}

/// Serde adapter: `u64` as a decimal string.
pub mod u64_str {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// Serializes as a string.
    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Deserializes from a string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// Serde adapter: `Option<u64>` as an optional decimal string.
pub mod opt_u64_str {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// Serializes as a string (called only for `Some`).
    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => s.collect_str(v),
            None => s.serialize_none(),
        }
    }

    /// Deserializes from a string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        let s = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        s.map(|s| s.parse().map_err(D::Error::custom)).transpose()
    }
}

/// Serde adapter: `i64` id as a decimal string.
pub mod id_str {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// Serializes as a string.
    pub fn serialize<S: Serializer>(v: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Deserializes from a string in canonical form only (what
    /// `serialize` writes: no `+`, no leading zeros), so `"0334"` is not 334.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        let v: i64 = s.parse().map_err(D::Error::custom)?;
        if v.to_string() != *s {
            return Err(D::Error::custom(format!(
                "id {s:?} is not in canonical form (decimal, no sign or leading zero)"
            )));
        }
        Ok(v)
    }
}

/// Serde adapter: a list of `i64` ids as decimal strings.
pub mod ids_str {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    /// Serializes as an array of strings.
    pub fn serialize<S: Serializer>(v: &[i64], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(i64::to_string))
    }

    /// Deserializes from an array of strings.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i64>, D::Error> {
        let v = <Vec<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        v.iter().map(|s| s.parse().map_err(D::Error::custom)).collect()
    }
}

/// One gateway's entry in the registry (KV `chat_gateways`, key = its
/// `CHAT_GATEWAY_ID`): where clients reach it and how loaded it is. Also
/// the shape of each edge in `GET /v1/edges` and in the login response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayEntry {
    /// `CHAT_GATEWAY_ID`.
    pub id: String,
    /// Public WebSocket URL (`CHAT_PUBLIC_WS_URL`), e.g. `ws://host:8080/v1/ws`.
    pub ws_url: String,
    /// Public QUIC address (`CHAT_PUBLIC_QUIC_ADDR`), `null` without QUIC.
    pub quic_addr: Option<String>,
    /// `CHAT_REGION`.
    pub region: String,
    /// Open sessions now.
    pub connections: u64,
    /// `CHAT_MAX_CONNECTIONS`.
    pub capacity: u64,
    /// Draining: it accepts no new sessions.
    pub draining: bool,
    /// At capacity: it accepts no new sessions.
    pub at_capacity: bool,
    /// Unix ms of this write.
    pub updated_ms: u64,
    /// Live viewers of each room on this gateway (room id → viewers), for
    /// the approximate count of `GET /v1/rooms/{room}`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub rooms: std::collections::BTreeMap<String, u64>,
}

/// A moderation action a gateway announces to every gateway with viewers
/// of a room ([`crate::subjects::room_control`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum RoomControl {
    /// The user was banned from the room: their sessions leave it now.
    Ban {
        /// The banned user.
        #[serde(with = "id_str")]
        user: i64,
    },
}

impl GatewayEntry {
    /// Connections per unit of capacity (0 = idle, 1 = full).
    pub fn load(&self) -> f64 {
        self.connections as f64 / self.capacity.max(1) as f64
    }

    /// Whether discovery may send clients here.
    pub fn accepts(&self) -> bool {
        !self.draining && !self.at_capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_message_ids_are_strings_on_the_wire() {
        let m = StoredMessage {
            id: u64::MAX,
            conv: "dm-1-2".into(),
            from: 1,
            device: "d".into(),
            cid: "c".into(),
            kind: MessageKind::Text,
            body: "hi".into(),
            ts: 5,
            n: 1,
            event: None,
            target: None,
            original: None,
            edited_at: None,
            deleted: false,
            ..Default::default()
        };
        let v: serde_json::Value = serde_json::to_value(&m).unwrap();
        assert_eq!(v["id"], "18446744073709551615");
        assert_eq!(v["from"], "1");
        assert_eq!(serde_json::from_value::<StoredMessage>(v).unwrap(), m);
    }

    #[test]
    fn emoji_are_short_and_printable() {
        for ok in ["👍", "❤️", "👨‍👩‍👧‍👦", "🇰🇷", "1️⃣", "+1", "ㅋ"] {
            assert!(valid_emoji(ok), "{ok:?}");
        }
        let long = "👍".repeat(MAX_EMOJI_BYTES / 4 + 1);
        for bad in ["", " ", "👍 ", "a\nb", "\u{7}", long.as_str(), "abcdefghijk"] {
            assert!(!valid_emoji(bad), "{bad:?}");
        }
    }

    #[test]
    fn service_ids_must_be_canonical() {
        let req = |as_user: &str| {
            serde_json::from_value::<ServiceSend>(serde_json::json!({
                "service": "bot", "as": as_user, "cid": "c", "to": {"user": "2"}, "body": "x"
            }))
        };
        assert_eq!(req("7").unwrap().as_user, 7);
        for bad in ["07", "+7", " 7", "7 ", ""] {
            assert!(req(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn recheck_carries_ids_as_strings() {
        let ev = Ephemeral::Recheck { users: vec![3, i64::MAX] };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v, serde_json::json!({"type": "recheck", "users": ["3", "9223372036854775807"]}));
        assert_eq!(serde_json::from_value::<Ephemeral>(v).unwrap(), ev);
    }
}
