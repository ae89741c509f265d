//! Subject names, KV keys and conversation ids.
//!
//! Subjects are built only here. Tokens that reach a subject (user ids,
//! device ids, client message ids, conversation ids) are validated first so
//! that no input can inject `.`, `*` or `>` into a subject.

use std::fmt;

/// Prefix of every subject the system uses.
pub const PREFIX: &str = "chat";

/// Stream holding accepted sends until a sequencer has processed them.
pub const INGRESS_STREAM: &str = "CHAT_INGRESS";
/// Stream holding every conversation's permanent history.
pub const HISTORY_STREAM: &str = "CHAT_HISTORY";
/// Stream holding every user's inbox: the per-user sync queue.
pub const INBOX_STREAM: &str = "CHAT_INBOX";
/// KV bucket of leases (ID worker machine ids, sequencer partitions).
pub const LEASES_BUCKET: &str = "chat_leases";
/// KV bucket of processed sends, keyed by sender, device and client id.
pub const ACKS_BUCKET: &str = "chat_acks";
/// KV bucket of history block index entries (see `docs/architecture.md`).
pub const HINDEX_BUCKET: &str = "chat_hindex";
/// KV bucket of group member lists as the sequencers apply them.
pub const GROUPS_BUCKET: &str = "chat_groups";
/// KV bucket of live connections for presence: key `<user>.<device>.<conn>`,
/// rewritten on every heartbeat, expiring after the presence timeout.
pub const PRESENCE_BUCKET: &str = "chat_presence";
/// KV bucket of each user's published presence status (never expires).
pub const STATUS_BUCKET: &str = "chat_status";
/// Lease held by the single active presence worker.
pub const PRESENCE_LEASE: &str = "presence";
/// KV bucket of ID high-water marks per machine id (never expires).
pub const IDHW_BUCKET: &str = "chat_idhw";
/// KV bucket of each user's delivered mark: the highest inbox stream
/// sequence a gateway has handed to any of the user's devices (key
/// [`delivered_key`]). The push planner does not push what is below it.
pub const DELIVERED_BUCKET: &str = "chat_delivered";
/// KV bucket of read positions: key [`read_key`] (user, conversation),
/// value a [`crate::envelope::ReadMark`]; written by gateways only ever
/// forwards (compare-and-set).
pub const READ_BUCKET: &str = "chat_read";
/// KV bucket of device token generations raised by logout (key
/// [`revoked_key`]); every gateway watches it into memory.
pub const REVOKED_BUCKET: &str = "chat_revoked";
/// KV bucket of live gateways (service discovery): key = `CHAT_GATEWAY_ID`,
/// value a [`crate::envelope::GatewayEntry`], rewritten every few seconds
/// and gone [`crate::provision::StorageSettings::registry_ttl`] after the
/// gateway stops writing it.
pub const GATEWAYS_BUCKET: &str = "chat_gateways";
/// Work-queue stream of push jobs, one per (message, device).
pub const PUSH_STREAM: &str = "CHAT_PUSH";
/// Stream of push jobs that failed for good (dead letters), kept for
/// operators to inspect.
pub const PUSH_DEAD_STREAM: &str = "CHAT_PUSH_DEAD";
/// KV bucket of pushes already sent, keyed by [`push_job_id`]: checked
/// before sending so a redelivered job never buzzes a device twice.
pub const PUSH_SENT_BUCKET: &str = "chat_push_sent";
/// Stream of the sequencers' push plans ([`PUSH_PLAN_ALL`]): a work queue
/// in memory (a plan is worth no fsync: see
/// `provision::StorageSettings::push_plan_max_bytes`).
pub const PUSH_PLAN_STREAM: &str = "CHAT_PUSH_PLANS";
/// Durable consumer on the plan stream that plans pushes from the
/// sequencers' plans ([`PUSH_PLAN_ALL`]). (Before December 2026 a consumer
/// of this name on the inbox stream read every copy; workers delete it.)
pub const PUSH_PLANNER: &str = "push-planner";
/// Durable consumer on the push stream that sends them.
pub const PUSH_SENDER: &str = "push-sender";
/// Subject filter of the push stream.
pub const PUSH_ALL: &str = "chat.push.job.>";
/// Subject filter of the plan stream ([`PUSH_PLAN_STREAM`]): one
/// [`crate::envelope::PushPlan`] per stored text message or round of them.
pub const PUSH_PLAN_ALL: &str = "chat.push.plan.>";
/// Subject filter of the dead-letter stream.
pub const PUSH_DEAD_ALL: &str = "chat.push.dead.>";
/// Core subject on which gateways announce that a user's push
/// registrations or mutes changed (payload: the user id), so planners drop
/// what they cached.
pub const PUSH_CHANGED: &str = "chat.push.changed";

/// KV bucket of the banned-word list: one key per entry (`w.<hex of the
/// entry's matching skeleton>`), value the entry as the operator wrote it.
/// Every gateway watches it and applies it to every send.
pub const BANNED_WORDS_BUCKET: &str = "chat_banned_words";
/// KV bucket (memory) of each user's flood window (key [`flood_key`]),
/// updated with revision checks by every gateway the user sends through.
pub const FLOOD_BUCKET: &str = "chat_flood";
/// Stream of moderation events for operators (flood mutes), kept
/// [`crate::provision::MOD_EVENTS_MAX_AGE`].
pub const MOD_EVENTS_STREAM: &str = "CHAT_MOD_EVENTS";
/// Subject filter of the moderation events stream.
pub const MOD_EVENTS_ALL: &str = "chat.mod.>";
/// Reply-subject prefix of the gateways' NATS connections (their
/// `authorization` lets them subscribe to `_INBOX_GW.>` only).
pub const GATEWAY_INBOX_PREFIX: &str = "_INBOX_GW";
/// Reply-subject prefix of the workers' NATS connections.
pub const WORKER_INBOX_PREFIX: &str = "_INBOX_WK";

/// Subject filter of the ingress stream.
pub const INGRESS_ALL: &str = "chat.ingress.>";
/// Subject filter of the history stream.
pub const HISTORY_ALL: &str = "chat.hist.>";
/// Subject filter of the inbox stream.
pub const INBOX_ALL: &str = "chat.inbox.>";
/// Request/reply subject on which trusted internal services send messages.
pub const SERVICE_SEND: &str = "chat.svc.send";
/// Queue group shared by the gateways answering [`SERVICE_SEND`].
pub const SERVICE_QUEUE: &str = "chat-gateways";

/// True when `s` is 1..=64 characters of `[A-Za-z0-9_-]`: safe as a subject
/// token and as a KV key part. Used for device ids and client message ids.
pub fn is_token(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Headers carrying `id` as JetStream's dedupe id (`Nats-Msg-Id`): a
/// second message with the same id within the stream's duplicate window is
/// not stored again (its publish ack says `duplicate`).
pub fn msg_id(id: &str) -> async_nats::HeaderMap {
    let mut h = async_nats::HeaderMap::new();
    h.insert("Nats-Msg-Id", id);
    h
}

/// Ingress subject of a partition.
pub fn ingress(partition: u32) -> String {
    format!("{PREFIX}.ingress.{partition}")
}

/// Hand-off subject of a partition (core NATS, no stream): a gateway
/// hands a text send straight to the partition's owner here, as a request
/// or beside its ingress write (`CHAT_SEND_PATH`).
pub fn fast(partition: u32) -> String {
    format!("{PREFIX}.fast.{partition}")
}

/// History subject of a conversation.
pub fn history(conv: &ConvId) -> String {
    format!("{PREFIX}.hist.{conv}")
}

/// History subject of the edits and deletes of message `target` (ordinal
/// `n`) of a conversation: `chat.hist.<conv>.e.<block>.<target>`, with the
/// target's index block, so that one page reads the current state of its
/// messages with one `multi_last` over its blocks, and the last entry of a
/// target is its current state. Not matched by [`history`]'s exact subject:
/// events take no ordinal and pages of messages never see them.
pub fn history_event(conv: &ConvId, n: u64, target: u64) -> String {
    format!("{PREFIX}.hist.{conv}.e.{}.{target}", n.saturating_sub(1) / crate::history::INDEX_BLOCK)
}

/// Filter of the edit and delete subjects of one index block of a
/// conversation (one token per target: not the reaction subjects below a
/// target).
pub fn history_events_of_block(conv: &ConvId, block: u64) -> String {
    format!("{PREFIX}.hist.{conv}.e.{block}.*")
}

/// Every history subject below message `target`'s event subject: its
/// reaction counts and each user's reactions (purged when it is deleted).
pub fn history_event_all(conv: &ConvId, n: u64, target: u64) -> String {
    format!("{}.>", history_event(conv, n, target))
}

/// History subject of the reaction events of message `target` (ordinal
/// `n`): `chat.hist.<conv>.e.<block>.<target>.r`. Its last entry holds the
/// message's reaction counts; the sequencer keeps only that one.
pub fn history_reactions(conv: &ConvId, n: u64, target: u64) -> String {
    format!("{}.r", history_event(conv, n, target))
}

/// History subject of one user's reactions on message `target`:
/// `chat.hist.<conv>.e.<block>.<target>.r.<user>`, whose one entry lists
/// the emoji the user has on it (what makes add and remove idempotent).
pub fn history_reactions_of(conv: &ConvId, n: u64, target: u64, user: i64) -> String {
    format!("{}.{user}", history_reactions(conv, n, target))
}

/// Filter of the reaction-count subjects of one index block.
pub fn history_reactions_of_block(conv: &ConvId, block: u64) -> String {
    format!("{PREFIX}.hist.{conv}.e.{block}.*.r")
}

/// Filter of every event of a conversation.
pub fn history_events(conv: &ConvId) -> String {
    format!("{PREFIX}.hist.{conv}.e.>")
}

/// The device name of an operator's action (admin API deletes), with user
/// id 0 as the actor. Only gateways publish it, from the admin API.
pub const OPERATOR_DEVICE: &str = "operator";

/// Inbox subject of a user: the per-user sync queue.
pub fn inbox(user: i64) -> String {
    format!("{PREFIX}.inbox.{user}")
}

/// Core subject on which the sequencer publishes every stored message of a
/// room (payload: the [`crate::envelope::StoredMessage`] as stored in
/// history), once, for every gateway with viewers of the room. Never
/// persisted: the room's history is.
pub fn room_live(room: i64) -> String {
    format!("{PREFIX}.room.{room}.m")
}

/// Core subject on which a gateway tells the others' viewers of a room
/// about a moderation action (payload: a [`crate::envelope::RoomControl`]).
pub fn room_control(room: i64) -> String {
    format!("{PREFIX}.room.{room}.c")
}

/// What a gateway subscribes to, once per room with local viewers: the
/// room's [`room_live`] and [`room_control`] subjects.
pub fn room_all(room: i64) -> String {
    format!("{PREFIX}.room.{room}.*")
}

/// Subject on which a gateway instance receives sequencer acks.
pub fn gateway_acks(gateway_id: &str) -> String {
    format!("{PREFIX}.gwack.{gateway_id}")
}

/// Core subject on which the sequencer announces each inbox copy it stored
/// (payload: the inbox stream sequence). Wakes delivery; never persisted.
pub fn live(user: i64) -> String {
    format!("{}{user}", live_prefix())
}

/// Core subject a worker publishes on when its NATS connection came back:
/// wake-ups it published just before may have been lost with the old
/// connection, so every gateway re-reads every connected user's inbox.
pub fn wake_all() -> String {
    format!("{PREFIX}.wake.all")
}

/// When, after a NATS reconnect, a worker publishes [`wake_all`] and a
/// gateway re-reads every connected user's inbox: at once, and twice more
/// while the cluster settles (a restarted node's routes, and with them the
/// interest that carries wake-ups between nodes, take a moment to form).
pub const REWAKE_AFTER: [std::time::Duration; 3] =
    [std::time::Duration::ZERO, std::time::Duration::from_secs(2), std::time::Duration::from_secs(6)];

/// What every [`live`] subject starts with.
pub fn live_prefix() -> String {
    format!("{PREFIX}.live.")
}

/// Core subject on which a user's presence transitions are published.
pub fn presence(user: i64) -> String {
    format!("{PREFIX}.presence.{user}")
}

/// Core subject of ephemeral events for a user's sessions (typing, logout,
/// friend changes): never persisted.
pub fn ephemeral(user: i64) -> String {
    format!("{PREFIX}.eph.{user}")
}

/// KV key of a user's flood window in [`FLOOD_BUCKET`].
pub fn flood_key(user: i64) -> String {
    format!("u.{user}")
}

/// Subject of a user's flood mute events in [`MOD_EVENTS_STREAM`].
pub fn flood_event(user: i64) -> String {
    format!("{PREFIX}.mod.flood.{user}")
}

/// KV key of a device in [`REVOKED_BUCKET`]: `<user>.<device>`.
pub fn revoked_key(user: i64, device: &str) -> String {
    format!("{user}.{device}")
}

/// The user and device of a [`revoked_key`].
pub fn parse_revoked_key(key: &str) -> Option<(i64, &str)> {
    let (user, device) = key.split_once('.')?;
    Some((parse_id(user)?, device)).filter(|(_, d)| is_token(d))
}

/// KV key of one connection in [`PRESENCE_BUCKET`].
pub fn presence_key(user: i64, device: &str, conn: u64) -> String {
    format!("{user}.{device}.{conn}")
}

/// KV key filter matching every connection of one device in
/// [`PRESENCE_BUCKET`] (on every gateway). `device` is a subject token
/// (`[A-Za-z0-9_-]`, as login requires), so it matches that device only.
pub fn presence_device_keys(user: i64, device: &str) -> String {
    format!("{user}.{device}.*")
}

/// KV key of a user's status in [`STATUS_BUCKET`].
pub fn status_key(user: i64) -> String {
    format!("u.{user}")
}

/// Dedupe key of a send: sender, sending device and client message id.
/// Used as `Nats-Msg-Id` and as the key in [`ACKS_BUCKET`].
pub fn dedupe_key(user: i64, device: &str, cid: &str) -> String {
    format!("{user}.{device}.{cid}")
}

/// Dedupe id of one inbox copy of a message.
pub fn inbox_copy_id(message_id: u64, user: i64) -> String {
    format!("{message_id}.{user}")
}

/// Subject of a user's push jobs in [`PUSH_STREAM`].
pub fn push_job(user: i64) -> String {
    format!("{PREFIX}.push.job.{user}")
}

/// Subject of a partition's push plans in [`PUSH_PLAN_STREAM`].
pub fn push_plan(partition: u32) -> String {
    format!("{PREFIX}.push.plan.{partition}")
}

/// Dedupe id of the push plan of the text messages `first..=last` of a
/// round (a redo of the same round publishes the same plan).
pub fn push_plan_id(first: u64, last: u64) -> String {
    format!("plan.{first}.{last}")
}

/// Subject of a user's dead push jobs in [`PUSH_DEAD_STREAM`].
pub fn push_dead(user: i64) -> String {
    format!("{PREFIX}.push.dead.{user}")
}

/// Dedupe id of the push of one message to one device: `Nats-Msg-Id` of
/// the job and its key in [`PUSH_SENT_BUCKET`].
pub fn push_job_id(message_id: u64, user: i64, device: &str) -> String {
    format!("{message_id}.{user}.{device}")
}

/// KV key of a user's read position in a conversation in [`READ_BUCKET`].
pub fn read_key(user: i64, conv: &ConvId) -> String {
    format!("r.{user}.{conv}")
}

/// Dedupe id of the inbox copy of a read mark for `recipient`.
pub fn read_copy_id(user: i64, conv: &str, up_to: u64, recipient: i64) -> String {
    format!("read.{user}.{conv}.{up_to}.{recipient}")
}

/// KV key in [`READ_BUCKET`] of how far a user's devices got a 1:1's
/// messages (delivery receipts): a [`crate::envelope::ReadMark`], only
/// ever raised.
pub fn delivered_receipt_key(user: i64, conv: &ConvId) -> String {
    format!("d.{user}.{conv}")
}

/// Dedupe id of the inbox copy of a delivery receipt for `recipient`.
pub fn delivered_copy_id(user: i64, conv: &str, up_to: u64, recipient: i64) -> String {
    format!("delivered.{user}.{conv}.{up_to}.{recipient}")
}

/// KV key of a user's delivered mark in [`DELIVERED_BUCKET`].
pub fn delivered_key(user: i64) -> String {
    format!("u.{user}")
}

/// The user of an inbox subject (`chat.inbox.<user>`).
pub fn inbox_user(subject: &str) -> Option<i64> {
    subject.strip_prefix("chat.inbox.")?.parse().ok()
}

/// KV key of an ID worker machine-id lease.
pub fn machine_lease(machine: u16) -> String {
    format!("machine.{machine}")
}

/// KV key of a sequencer partition lease.
pub fn partition_lease(partition: u32) -> String {
    format!("part.{partition}")
}

/// Durable consumer name of a sequencer partition.
pub fn partition_consumer(partition: u32) -> String {
    format!("seq-{partition}")
}

/// KV key of a group's member list.
pub fn group_key(group_id: i64) -> String {
    format!("g.{group_id}")
}

/// KV key of history block `block` of a conversation.
pub fn hindex_key(conv: &ConvId, block: u64) -> String {
    format!("{conv}.{block}")
}

/// A conversation id. `dm-<a>-<b>` for 1:1 (a ≤ b, user ids),
/// `g-<group id>` for groups and `r-<room id>` for live rooms. Safe as a
/// subject token.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConvId(String);

/// What a conversation id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConvKind {
    /// A 1:1 conversation between two users (the same user twice is a
    /// "note to self").
    Direct(i64, i64),
    /// A group conversation.
    Group(i64),
    /// A live room: history only, no inbox copies (read fan-out).
    Room(i64),
}

impl ConvId {
    /// The 1:1 conversation of two users, whichever order they come in.
    pub fn direct(a: i64, b: i64) -> ConvId {
        let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
        ConvId(format!("dm-{lo}-{hi}"))
    }

    /// The conversation of a group.
    pub fn group(group_id: i64) -> ConvId {
        ConvId(format!("g-{group_id}"))
    }

    /// The conversation of a live room.
    pub fn room(room_id: i64) -> ConvId {
        ConvId(format!("r-{room_id}"))
    }

    /// Parses a conversation id received from outside; `None` if malformed.
    pub fn parse(s: &str) -> Option<ConvId> {
        let kind = Self::kind_of(s)?;
        Some(match kind {
            ConvKind::Direct(a, b) => ConvId::direct(a, b),
            ConvKind::Group(g) => ConvId::group(g),
            ConvKind::Room(r) => ConvId::room(r),
        })
        .filter(|c| c.0 == s)
    }

    fn kind_of(s: &str) -> Option<ConvKind> {
        if let Some(rest) = s.strip_prefix("dm-") {
            let (a, b) = rest.split_once('-')?;
            let (a, b) = (parse_id(a)?, parse_id(b)?);
            (a <= b).then_some(ConvKind::Direct(a, b))
        } else if let Some(room) = s.strip_prefix("r-") {
            parse_id(room).map(ConvKind::Room)
        } else {
            s.strip_prefix("g-").and_then(parse_id).map(ConvKind::Group)
        }
    }

    /// What this conversation is.
    pub fn kind(&self) -> ConvKind {
        Self::kind_of(&self.0).expect("ConvId is always well formed")
    }

    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The ingress partition of this conversation (FNV-1a, stable across
    /// processes and versions).
    pub fn partition(&self, partitions: u32) -> u32 {
        let mut h: u32 = 0x811c_9dc5;
        for b in self.0.bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
        h % partitions.max(1)
    }
}

/// Parses a user or group id received from outside in its one canonical
/// form: decimal digits, no sign, no leading zero, no whitespace, 1 to
/// 2^63-1. `"0334"`, `"+334"`, `" 334"`, `"0"` and `"-1"` are all `None`.
/// Every id read from a frame, a path, a query, a token or a cursor goes
/// through this (or [`parse_seq`]), so one spelling means one id everywhere.
pub fn parse_id(s: &str) -> Option<i64> {
    parse_seq(s).filter(|v| *v > 0).and_then(|v| i64::try_from(v).ok())
}

/// Parses an unsigned decimal (message id, cursor) in canonical form:
/// digits only, no sign, no leading zero except `"0"` itself.
pub fn parse_seq(s: &str) -> Option<u64> {
    let canonical =
        !s.is_empty() && s.len() <= 20 && s.bytes().all(|b| b.is_ascii_digit()) && (s == "0" || !s.starts_with('0'));
    canonical.then(|| s.parse().ok()).flatten()
}

impl fmt::Display for ConvId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direct_conv_is_order_independent_and_parses_back() {
        let c = ConvId::direct(42, 7);
        assert_eq!(c.as_str(), "dm-7-42");
        assert_eq!(ConvId::direct(7, 42), c);
        assert_eq!(ConvId::parse("dm-7-42"), Some(c.clone()));
        assert_eq!(c.kind(), ConvKind::Direct(7, 42));
    }

    #[test]
    fn malformed_conv_ids_are_rejected() {
        for bad in ["", "dm-42-7", "dm-7", "dm-07-42", "g-", "g-1.2", "g->", "x-1", "dm-1-2-3", "g-0"] {
            assert_eq!(ConvId::parse(bad), None, "{bad}");
        }
        assert_eq!(ConvId::parse("g-5").map(|c| c.kind()), Some(ConvKind::Group(5)));
        assert_eq!(ConvId::parse("r-9").map(|c| c.kind()), Some(ConvKind::Room(9)));
        for bad in ["r-", "r-0", "r-09", "r-1.2"] {
            assert_eq!(ConvId::parse(bad), None, "{bad}");
        }
        assert_eq!(room_all(9), "chat.room.9.*");
    }

    #[test]
    fn ids_have_one_canonical_form() {
        assert_eq!(parse_id("334"), Some(334));
        assert_eq!(parse_id("9223372036854775807"), Some(i64::MAX));
        for bad in ["", "0", "0334", "+334", "-1", " 334", "334 ", "3_4", "9223372036854775808", "1e3", "０"] {
            assert_eq!(parse_id(bad), None, "{bad:?}");
        }
        assert_eq!(parse_seq("0"), Some(0));
        assert_eq!(parse_seq("18446744073709551615"), Some(u64::MAX));
        for bad in ["", "00", "01", "+1", "-0", "18446744073709551616", "1 "] {
            assert_eq!(parse_seq(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tokens_exclude_subject_wildcards() {
        assert!(is_token("phone-1_A"));
        for bad in ["", "a.b", "a*", ">", "a b", &"x".repeat(65)] {
            assert!(!is_token(bad), "{bad}");
        }
    }

    #[test]
    fn revoked_keys_round_trip() {
        assert_eq!(parse_revoked_key(&revoked_key(7, "phone")), Some((7, "phone")));
        assert_eq!(parse_revoked_key("07.phone"), None);
        assert_eq!(parse_revoked_key("7"), None);
        assert_eq!(parse_revoked_key("7.a.b"), None);
    }

    #[test]
    fn inbox_user_round_trips() {
        assert_eq!(inbox_user(&inbox(42)), Some(42));
        assert_eq!(inbox_user("chat.hist.42"), None);
        assert_eq!(push_job_id(7, 3, "phone"), "7.3.phone");
    }

    #[test]
    fn partition_is_stable() {
        let c = ConvId::direct(1, 2);
        assert_eq!(c.partition(16), c.partition(16));
        assert!(c.partition(16) < 16);
        assert_eq!(c.partition(0), 0);
    }
}
