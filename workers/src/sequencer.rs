//! The sequencer: one active owner per ingress partition assigns message
//! ids in ingress order, appends to history, copies into every member's
//! inbox, records the outcome for dedupe and acks the sender's gateway.
//!
//! Every step is idempotent (history and inbox copies carry `Nats-Msg-Id`,
//! the ack record is a keyed put), so a message redelivered after a crash
//! at any point is completed, never duplicated. Messages of a partition are
//! processed strictly one after another: message k's copies are all stored
//! before message k+1 is touched, so every inbox sees a conversation in id
//! order. A message no earlier attempt can have touched (its first
//! delivery, stored after this owner took the partition) has its history
//! append and inbox copies written at once; any other goes history first,
//! so that a duplicate append leads back to the stored message and its id.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use bytes::Bytes;
use chat_nats::batch::{AtomicBatch, BatchConfig, DEFAULT_MAX_ENTRIES};
use chat_nats::envelope::{
    GroupMembers, GroupOp, IngressSend, MessageKind, PlannedMessage, SeqAck, SeqResult, StoredMessage,
};
use chat_nats::subjects::{self, ConvId, ConvKind};
use chat_nats::wire::ErrorCode;
use futures::{FutureExt, StreamExt};

use crate::metrics::Mode;
use crate::Shared;

pub use chat_nats::history::INDEX_BLOCK;

/// Last id and ordinal of a conversation, as the owner last wrote it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ConvState {
    pub(crate) last_id: u64,
    pub(crate) n: u64,
}

/// Runs one owned partition until the lease lapses or the consumer fails.
pub async fn run_partition(
    sh: Arc<Shared>,
    partition: u32,
    valid: Arc<crate::Validity>,
) -> Result<(), async_nats::Error> {
    let name = subjects::partition_consumer(partition);
    // A fresh consumer starts at the oldest unprocessed message (the ingress
    // stream is a work queue), so a new owner resumes in order.
    let _ = sh.storage.ingress.delete_consumer(&name).await;
    // Messages stored after this point can never have reached a previous
    // owner (its consumer is gone): their first attempt may write history
    // and inbox copies at once (see `sequence`).
    let takeover_seq = sh.storage.ingress.get_info().await?.state.last_sequence;
    let consumer = sh
        .storage
        .ingress
        .create_consumer(pull::Config {
            durable_name: Some(name),
            filter_subject: subjects::ingress(partition),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1024,
            ..Default::default()
        })
        .await?;
    // Hand-offs wait until the ingress messages stored before this owner
    // took the partition are sequenced: a previous owner may have left one
    // of them half stored, and a later message of its conversation must not
    // be stored before it is finished (its copies would come first in the
    // inboxes). Until then hand-offs are left to ingress.
    let mut caught_up = consumer.cached_info().num_pending == 0;
    let mut messages =
        consumer.stream().max_messages_per_batch(256).max_bytes_per_batch(8 * 1024 * 1024).messages().await?;
    // Hand-offs (`fast`), taken from here on.
    let mut handoffs = sh.client.subscribe(subjects::fast(partition)).await?;
    let handled = Arc::new(crate::fast::Handled::default());
    let mut convs = Caches::default();
    let mut lanes = crate::lane::Lanes::new();
    let (marks_tx, marks_rx) = tokio::sync::mpsc::channel(MARK_ROUNDS);
    tokio::spawn(spread_marks(sh.clone(), valid.clone(), partition, marks_rx));
    tracing::info!(partition, "partition acquired");
    let fresh = |m: &jetstream::Message| m.info().is_ok_and(|i| i.delivered == 1 && i.stream_sequence > takeover_seq);
    loop {
        // A round: messages released by finished lanes first, then the
        // first new message (or the next release) and whatever else is
        // already waiting.
        let mut round = lanes.released();
        let mut quick = Vec::new();
        if round.is_empty() {
            tokio::select! {
                m = messages.next() => match m {
                    Some(m) => round.push(m?),
                    None => return Ok(()),
                },
                h = handoffs.next() => match h {
                    Some(h) => quick.push(h),
                    None => return Ok(()),
                },
                released = lanes.next_release(), if lanes.any() => round = released,
            }
        }
        while round.len() < crate::round::MAX_ROUND {
            match messages.next().now_or_never() {
                Some(Some(m)) => round.push(m?),
                _ => break,
            }
        }
        // Then the hand-offs (a send's hand-off reaches the owner before its
        // ingress message, so every hand-off of the ingress messages taken
        // is here), stored first: their ingress messages, in this round or
        // still to come, find them stored (`fast::Handled::claim`).
        while quick.len() < crate::round::MAX_ROUND {
            match handoffs.next().now_or_never() {
                Some(Some(h)) => quick.push(h),
                _ => break,
            }
        }
        if !valid.holds() {
            return Ok(());
        }
        // Whether this round takes the last of the backlog.
        let drains = !caught_up
            && round.iter().any(|m| m.info().is_ok_and(|i| i.stream_sequence > takeover_seq || i.pending == 0));
        if !caught_up {
            crate::fast::leave_to_ingress(&sh, quick).await?;
        } else if !quick.is_empty()
            && !crate::fast::round(&sh, &mut convs, &lanes, &handled, &valid, partition, quick).await?
        {
            return Ok(()); // the lease is lost
        }
        let round: Vec<_> = round.into_iter().filter_map(|m| handled.claim(m)).collect();
        if round.is_empty() {
            caught_up |= drains;
            continue;
        }
        if !valid.holds() {
            return Ok(());
        }
        // Messages too big for one commit get lanes of their own (after
        // what the round stores); messages of their conversations wait.
        let (round, big) = lanes.split(&sh, &mut convs, round, fresh).await?;
        // Read marks and delivery receipts go to the partition's mark task
        // (`spread_marks`), so that they never keep a round from being
        // batched nor wait in its way. Each names a message already stored
        // (its gateway saw it in history or an inbox), so an earlier round
        // had it.
        let (marks, round): (Vec<_>, Vec<_>) = round.into_iter().partition(|m| crate::round::is_mark(&m.payload));
        sh.metrics.round(round.len());
        let started = std::time::Instant::now();
        let payloads: Vec<&[u8]> = round.iter().map(|m| m.payload.as_ref()).collect();
        // Ok(Some(records)): stored as a round, its outcome records still to
        // write; Ok(None): not taken as one (a redelivery, a membership
        // change), one by one as delivered; Err: part of it may be stored,
        // so one by one (idempotent) and never as fresh.
        let taken =
            (!round.is_empty() && round.iter().all(fresh)).then(|| crate::round::batchable(&payloads)).flatten();
        let batched = match taken {
            Some(sends) => crate::round::run(&sh, &mut convs, sends).await.map(Some).map_err(|e| {
                tracing::warn!(partition, error = %e, "batched round failed; redoing its messages one by one");
                convs.clear();
            }),
            None => Ok(None),
        };
        let records = match batched {
            Ok(Some(records)) => {
                sh.metrics.committed(Mode::Batch, round.len(), started);
                records
            }
            _ => {
                for msg in &round {
                    let started = std::time::Instant::now();
                    if !one_by_one(&sh, &mut convs, &msg.payload, fresh(msg) && batched.is_ok(), &valid, partition)
                        .await
                    {
                        return Ok(());
                    }
                    sh.metrics.committed(Mode::Single, 1, started);
                }
                AtomicBatch::new(BatchConfig::default())
            }
        };
        // Marks are spread by their own task, after the messages they name
        // and in ingress order among themselves, never holding up the
        // partition's next round.
        if !marks.is_empty() && marks_tx.send(marks).await.is_err() {
            return Ok(());
        }
        acknowledge(sh.clone(), partition, records, round);
        caught_up |= drains;
        for b in big {
            lanes.start(&sh, &mut convs, &valid, b).await?;
        }
    }
}

/// Writes a round's outcome records, then acks its ingress messages. The
/// senders have their answers already and the next round needs neither, so
/// with records to write this goes on in a task of its own while the
/// partition takes its next round, and the records' committer may wait for
/// other rounds' records to share a commit (`CHAT_RECORD_LINGER_MS`). A
/// worker that dies before the acks leaves the messages to be redelivered
/// to the next owner, whose redo finds each one in history and writes its
/// record: an ingress message is never acked before its record is written.
pub(crate) fn acknowledge(sh: Arc<Shared>, partition: u32, records: AtomicBatch, messages: Vec<jetstream::Message>) {
    let ack = async move {
        // Without their records the messages are not done: a client's
        // retry after the ingress dedupe window would find neither, and one
        // within it waits for the record. Redelivered instead, they are
        // redone (history duplicates, same ids) and their records written.
        let kind = match sh.commits.acks.store(records).await {
            Ok(_) => AckKind::Ack,
            Err(e) => {
                tracing::warn!(partition, error = %e, "outcome records not written; redoing their messages");
                AckKind::Nak(Some(REDO_AFTER))
            }
        };
        for msg in messages {
            if let Err(e) = msg.ack_with(kind).await {
                tracing::warn!(partition, error = %e, "ingress ack failed; the message will be redelivered and deduped");
            }
        }
    };
    tokio::spawn(ack);
}

/// How soon the messages of a round whose outcome records were not
/// written are redelivered to be redone.
const REDO_AFTER: Duration = Duration::from_secs(1);

/// Rounds of read marks waiting for the partition's mark task before the
/// partition waits for it.
const MARK_ROUNDS: usize = 16;

/// Most marks spread as one round by the mark task.
const MAX_MARK_ROUND: usize = 256;

/// The partition's read marks and delivery receipts (`round::is_mark`):
/// each names a message an earlier round stored, so it needs nothing the
/// partition's later rounds do; marks of one conversation keep their
/// ingress order here. Whatever waits is taken as one round (see
/// `reads::process_round`), else one by one; acked once spread. Ends with
/// the partition (its sender dropped) or the lease; marks left unacked are
/// redelivered to the next owner, and spreading again stores nothing twice.
async fn spread_marks(
    sh: Arc<Shared>,
    valid: Arc<crate::Validity>,
    partition: u32,
    mut rx: tokio::sync::mpsc::Receiver<Vec<jetstream::Message>>,
) {
    while let Some(mut marks) = rx.recv().await {
        while marks.len() < MAX_MARK_ROUND {
            match rx.try_recv() {
                Ok(more) => marks.extend(more),
                Err(_) => break,
            }
        }
        if !valid.holds() {
            return;
        }
        let started = std::time::Instant::now();
        let together = crate::reads::process_round(&sh, &marks).await.unwrap_or_else(|e| {
            tracing::warn!(partition, error = %e, "read marks of a round failed together; redoing them one by one");
            None
        });
        let records = match together {
            Some((mode, records)) => {
                sh.metrics.committed(mode, marks.len(), started);
                records
            }
            None => {
                let mut none = Caches::default();
                for msg in &marks {
                    let started = std::time::Instant::now();
                    if !one_by_one(&sh, &mut none, &msg.payload, false, &valid, partition).await {
                        return;
                    }
                    sh.metrics.committed(Mode::Single, 1, started);
                }
                AtomicBatch::new(BatchConfig::default())
            }
        };
        acknowledge(sh.clone(), partition, records, marks);
    }
}

/// Sequences one message, retrying with backoff until it is done; false
/// once the lease is lost.
pub(crate) async fn one_by_one(
    sh: &Shared,
    convs: &mut Caches,
    payload: &[u8],
    mut fresh: bool,
    valid: &crate::Validity,
    partition: u32,
) -> bool {
    let mut backoff = Duration::from_millis(20);
    loop {
        if !valid.holds() {
            return false;
        }
        match process(sh, convs, payload, fresh).await {
            Ok(()) => return true,
            Err(e) => {
                tracing::warn!(partition, error = %e, "sequencing failed; retrying");
                // The failed attempt may have stored some of its writes.
                fresh = false;
                convs.clear();
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}

/// What a partition owner remembers between messages; rebuilt from
/// history and KV after any failure or change of owner.
#[derive(Debug, Default)]
pub(crate) struct Caches {
    pub(crate) convs: HashMap<ConvId, ConvState>,
    groups: HashMap<i64, GroupMembers>,
}

impl Caches {
    pub(crate) fn clear(&mut self) {
        self.convs.clear();
        self.groups.clear();
    }
}

/// Sequences one ingress message. `fresh`: no earlier attempt can have
/// stored anything for it (first delivery, sent after this owner took the
/// partition, no failed attempt).
async fn process(sh: &Shared, caches: &mut Caches, payload: &[u8], fresh: bool) -> Result<(), async_nats::Error> {
    let send: IngressSend = match serde_json::from_slice(payload) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "dropping malformed ingress message");
            return Ok(());
        }
    };
    let key = subjects::dedupe_key(send.from, &send.device, &send.cid);
    if let Some(done) = sh.storage.acks.get(&key).await? {
        return reply(sh, &send, done).await;
    }
    if send.kind.is_mark() {
        return crate::reads::process(sh, &send, &key).await;
    }
    let result = match route(sh, caches, &send).await? {
        Route::Refused(refusal) => refusal,
        Route::To(conv, members) => sequence(sh, &mut caches.convs, &send, &key, conv, &members, fresh).await?,
    };
    let ack = outcome(&key, result)?;
    // Everything is stored: the sender may hear of it before the outcome is
    // recorded. Should the record fail, the ingress message is redone and
    // the history dedupe id leads it back to the stored message.
    reply(sh, &send, ack.clone()).await?;
    sh.storage.acks.put(&key, ack).await?;
    Ok(())
}

/// The outcome record of a send, as replied to its gateway and kept in the
/// acks bucket.
pub(crate) fn outcome(key: &str, result: SeqResult) -> Result<Bytes, serde_json::Error> {
    Ok(Bytes::from(serde_json::to_vec(&SeqAck { key: key.to_owned(), result })?))
}

/// Where a send goes: its conversation and who gets a copy, or the refusal
/// the sender gets.
pub(crate) enum Route {
    /// Stored in this conversation, copied to these users (the sender, if
    /// one of them, last: see [`sender_last`]).
    To(ConvId, Vec<i64>),
    /// Refused (malformed conversation, unknown group, not a member).
    Refused(SeqResult),
}

/// Routes one send (see [`recipients`]).
pub(crate) async fn route(sh: &Shared, caches: &mut Caches, send: &IngressSend) -> Result<Route, async_nats::Error> {
    let Some(conv) = ConvId::parse(&send.conv) else {
        let message = "malformed conversation id".into();
        return Ok(Route::Refused(SeqResult::Err { code: ErrorCode::BadFrame, message }));
    };
    Ok(match recipients(sh, caches, &conv, send).await? {
        Recipients::Refused { code, message } => Route::Refused(SeqResult::Err { code, message }),
        Recipients::To(members) => Route::To(conv, sender_last(members, send.from)),
    })
}

/// `members` with the sender's own inbox moved to the end. Plain copies
/// (a lone message: `commit`) are published in this order and the inbox
/// stream fsyncs them one after another, so the peer's copy of a 1:1
/// message, which its delivery waits for, is stored first; the sender's
/// copy (for its other devices) one fsync later. The ack waits for both
/// either way.
fn sender_last(mut members: Vec<i64>, from: i64) -> Vec<i64> {
    if let Some(i) = members.iter().position(|&m| m == from) {
        let own = members.remove(i);
        members.push(own);
    }
    members
}

/// Whose inboxes get a copy of a message, or why its send is refused.
enum Recipients {
    /// These users' inboxes (sorted, no duplicates for groups).
    To(Vec<i64>),
    /// The send is refused (unknown group, sender not a member).
    Refused {
        /// Stable code for the sender.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
}

impl Recipients {
    fn refused(code: ErrorCode, message: impl Into<String>) -> Recipients {
        Recipients::Refused { code, message: message.into() }
    }
}

/// Whose inboxes get a copy, or why the send is refused. For a group the
/// member list is the sequencer's own (applied in conversation order), so
/// a member removed before this message gets nothing, and a sender who is
/// no longer a member is refused even if the gateway's check raced.
async fn recipients(
    sh: &Shared,
    caches: &mut Caches,
    conv: &ConvId,
    send: &IngressSend,
) -> Result<Recipients, async_nats::Error> {
    let group = match conv.kind() {
        ConvKind::Direct(a, b) if a == b => return Ok(Recipients::To(vec![a])),
        ConvKind::Direct(a, b) => return Ok(Recipients::To(vec![a, b])),
        // A room is read fan-out: stored once in history, no inbox copy;
        // the gateway checked who may post (PostgreSQL), and viewers get
        // it from the room's live subject (see `announce`).
        ConvKind::Room(_) => return Ok(Recipients::To(Vec::new())),
        ConvKind::Group(g) => g,
    };
    if let std::collections::hash_map::Entry::Vacant(slot) = caches.groups.entry(group) {
        if let Some(v) = sh.storage.groups.get(subjects::group_key(group)).await? {
            slot.insert(serde_json::from_slice(&v)?);
        }
    }
    let current = caches.groups.get(&group);
    let ids = |m: &GroupMembers| m.members.iter().filter_map(|u| u.parse::<i64>().ok()).collect::<Vec<_>>();
    match (&send.event, current) {
        // A meta change reaches the members of this point of the
        // conversation, and nobody a membership change dropped before it.
        (Some(ev), Some(cur)) if send.kind == MessageKind::System && ev.op == GroupOp::Meta => {
            Ok(Recipients::To(ids(cur)))
        }
        (Some(ev), cur) if send.kind == MessageKind::System => {
            let mut to: Vec<i64> = cur.map(ids).unwrap_or_default();
            if let Some(c) = cur.filter(|c| c.version == ev.version) {
                // Already applied (a redelivery): reach the dropped too.
                to.extend(c.dropped.iter().filter_map(|u| u.parse::<i64>().ok()));
            }
            let newer = cur.is_none_or(|c| ev.version > c.version);
            if newer {
                let dropped = cur
                    .map(|c| c.members.iter().filter(|m| !ev.members.contains(m)).cloned().collect())
                    .unwrap_or_default();
                let next = GroupMembers { version: ev.version, members: ev.members.clone(), dropped };
                sh.storage.groups.put(subjects::group_key(group), Bytes::from(serde_json::to_vec(&next)?)).await?;
                to.extend(ids(&next));
                caches.groups.insert(group, next);
            }
            // The old and the new members both see the change.
            to.sort_unstable();
            to.dedup();
            Ok(Recipients::To(to))
        }
        (_, None) => Ok(Recipients::refused(ErrorCode::UnknownGroup, format!("no group {group}"))),
        (_, Some(cur)) => {
            let members = ids(cur);
            if members.contains(&send.from) || by_operator(send) {
                Ok(Recipients::To(members))
            } else {
                Ok(Recipients::refused(ErrorCode::Forbidden, "not a member of this group"))
            }
        }
    }
}

/// An operator's delete from the admin API (user 0, device
/// [`subjects::OPERATOR_DEVICE`]): allowed in any conversation.
fn by_operator(send: &IngressSend) -> bool {
    send.kind == MessageKind::Delete && send.from == 0 && send.device == subjects::OPERATOR_DEVICE
}

/// Sequences one accepted message, as named steps: assign its id, store it
/// (history and every inbox copy), wake the members' delivery, index it for
/// history pages, and remember the conversation's new state.
async fn sequence(
    sh: &Shared,
    convs: &mut HashMap<ConvId, ConvState>,
    send: &IngressSend,
    key: &str,
    conv: ConvId,
    members: &[i64],
    fresh: bool,
) -> Result<SeqResult, async_nats::Error> {
    if send.kind == MessageKind::React {
        return crate::reactions::react(sh, convs, send, key, conv, members).await;
    }
    if send.kind.is_change() {
        return change(sh, convs, send, key, conv, members).await;
    }
    let state = conv_state(sh, convs, &conv).await?;
    let draft = assign_id(sh, send, &conv, state).await?;
    let stored = store(sh, key, &conv, draft, members, fresh).await?;
    wake(sh, &stored.copies).await?;
    plan_pushes(sh, planned(&stored.msg, &stored.copies).into_iter().collect()).await;
    announce(sh, &conv, &stored.msg).await?;
    index(sh, &conv, &stored).await?;
    let next = ConvState { last_id: stored.msg.id.max(state.last_id), n: stored.msg.n.max(state.n) };
    convs.insert(conv.clone(), next);
    Ok(SeqResult::Ok { id: stored.msg.id, conv: conv.to_string(), ts: stored.msg.ts, n: stored.msg.n })
}

/// Sequences an edit or a delete of an earlier message: an event with an id
/// in the conversation's order (above every earlier id) but no ordinal of
/// its own. It is appended to the target's event subject
/// ([`subjects::history_event`], whose last entry is the target's current
/// state), a delete then erases the target from history and drops the
/// target's earlier edits, and every member's inbox gets a copy, so devices
/// catch up on it from their cursors like on messages. The gateway checked
/// who may do it; here a deleted message refuses further changes
/// (`not_found`), decided in conversation order.
async fn change(
    sh: &Shared,
    convs: &mut HashMap<ConvId, ConvState>,
    send: &IngressSend,
    key: &str,
    conv: ConvId,
    members: &[i64],
) -> Result<SeqResult, async_nats::Error> {
    let (Some(target), Some(original)) = (send.target, send.original) else {
        let message = "an edit or delete names no message".into();
        return Ok(SeqResult::Err { code: ErrorCode::BadFrame, message });
    };
    let subject = subjects::history_event(&conv, original.n, target);
    if let Some((_, last)) = chat_nats::history::last_on(&sh.storage.history, &subject).await? {
        // A redo of this very delete finds itself: go on and finish it.
        if last.kind == MessageKind::Delete && subjects::dedupe_key(last.from, &last.device, &last.cid) != key {
            return Ok(SeqResult::Err { code: ErrorCode::NotFound, message: "the message was deleted".into() });
        }
    }
    let state = conv_state(sh, convs, &conv).await?;
    let mut msg = StoredMessage {
        id: sh.ids.next_after(state.last_id).await?,
        conv: conv.to_string(),
        from: send.from,
        device: send.device.clone(),
        cid: send.cid.clone(),
        kind: send.kind,
        body: if send.kind == MessageKind::Delete { String::new() } else { send.body.clone() },
        ts: sh.clock.now_ms(),
        n: state.n,
        event: None,
        target: Some(target),
        original: Some(original),
        edited_at: None,
        deleted: false,
        ..Default::default()
    };
    let mut payload = Bytes::from(serde_json::to_vec(&msg)?);
    let ack = publish(sh, subject.clone(), key.to_owned(), payload.clone()).await?;
    if ack.duplicate {
        (msg, payload) = stored_at(sh, ack.sequence).await?;
    }
    if msg.kind == MessageKind::Delete {
        erase(sh, &conv, target, original.seq).await?;
        // The target's earlier edits held its text too; its reactions go.
        sh.storage.history.purge().filter(subject).keep(1).await?;
        sh.storage.history.purge().filter(subjects::history_event_all(&conv, original.n, target)).await?;
    }
    let written = copy_all(sh, msg.id, members, payload).await?;
    let copies: Vec<(i64, u64)> = members.iter().copied().zip(written).collect();
    wake(sh, &copies).await?;
    announce(sh, &conv, &msg).await?;
    convs.insert(conv.clone(), ConvState { last_id: msg.id.max(state.last_id), n: state.n });
    Ok(SeqResult::Ok { id: msg.id, conv: conv.to_string(), ts: msg.ts, n: 0 })
}

/// Erases message `target` of `conv` from history (JetStream overwrites a
/// deleted message's bytes), after checking that `seq` holds it: the
/// gateway's word on where it is is not enough to erase anything.
async fn erase(sh: &Shared, conv: &ConvId, target: u64, seq: u64) -> Result<(), async_nats::Error> {
    let m = match sh.storage.history.get_raw_message(seq).await {
        Ok(m) => m,
        // Already erased (a redo).
        Err(e) if e.kind() == async_nats::jetstream::stream::RawMessageErrorKind::NoMessageFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let found: Option<StoredMessage> = serde_json::from_slice(&m.payload).ok();
    if m.subject.as_str() != subjects::history(conv) || found.map(|f| f.id) != Some(target) {
        tracing::error!(%conv, target, seq, "a delete names a history sequence holding another message; not erased");
        return Ok(());
    }
    sh.storage.history.delete_message(seq).await?;
    Ok(())
}

/// A message as stored: the history entry (its sequence) and the inbox
/// copies (member, inbox sequence).
struct Stored {
    msg: StoredMessage,
    history_seq: u64,
    copies: Vec<(i64, u64)>,
}

/// A big message of a lane (see `lane`), stored history first: its copies
/// in batches, then wake-ups, index entry, the sender's reply and the
/// outcome record. Idempotent like `process`: a redo finds the history
/// duplicate and finishes that message with its id.
pub(crate) async fn store_big(
    sh: &Shared,
    key: &str,
    conv: &ConvId,
    draft: StoredMessage,
    members: &[i64],
    send: &IngressSend,
) -> Result<(), async_nats::Error> {
    let stored = store(sh, key, conv, draft, members, false).await?;
    wake(sh, &stored.copies).await?;
    plan_pushes(sh, planned(&stored.msg, &stored.copies).into_iter().collect()).await;
    index(sh, conv, &stored).await?;
    let ack =
        outcome(key, SeqResult::Ok { id: stored.msg.id, conv: conv.to_string(), ts: stored.msg.ts, n: stored.msg.n })?;
    reply(sh, send, ack.clone()).await?;
    sh.storage.acks.put(key, ack).await?;
    Ok(())
}

/// Step 1: the message with its id (above the conversation's last) and its
/// ordinal in the conversation.
pub(crate) async fn assign_id(
    sh: &Shared,
    send: &IngressSend,
    conv: &ConvId,
    state: ConvState,
) -> Result<StoredMessage, async_nats::Error> {
    Ok(StoredMessage {
        id: sh.ids.next_after(state.last_id).await?,
        conv: conv.to_string(),
        from: send.from,
        device: send.device.clone(),
        cid: send.cid.clone(),
        kind: send.kind,
        body: send.body.clone(),
        ts: sh.clock.now_ms(),
        n: state.n + 1,
        event: send.event.clone(),
        reply_to: send.reply_to.clone(),
        target: None,
        original: None,
        edited_at: None,
        deleted: false,
        mentions: if send.kind == MessageKind::Text { send.mentions.clone() } else { Vec::new() },
        ..Default::default()
    })
}

/// Step 2: the history append and one inbox copy per member. A history
/// duplicate (an earlier attempt stored it and died) finishes that stored
/// message, with its id, instead of the draft.
async fn store(
    sh: &Shared,
    key: &str,
    conv: &ConvId,
    mut msg: StoredMessage,
    members: &[i64],
    fresh: bool,
) -> Result<Stored, async_nats::Error> {
    let mut payload = Bytes::from(serde_json::to_vec(&msg)?);
    // History first, copies only once it is stored, even for a message no
    // earlier attempt touched (`fresh`). Written concurrently, copies could
    // land while the history append failed (a cluster electing a leader),
    // and the redo, finding no history, would store the message again under
    // a new id next to the orphaned copies of the first: two messages for
    // one send (found by `cluster::the_meta_leader_killed_*`).
    let ack = publish(sh, subjects::history(conv), key.to_owned(), payload.clone()).await?;
    if ack.duplicate {
        // Stored by an earlier attempt that died before finishing: finish
        // that message, with its id.
        if fresh {
            tracing::warn!(key, "history duplicate on a fresh message: finishing the stored one");
        }
        (msg, payload) = stored_at(sh, ack.sequence).await?;
    }
    let written = copy_all(sh, msg.id, members, payload).await;
    let copies = members.iter().copied().zip(written?).collect();
    Ok(Stored { msg, history_seq: ack.sequence, copies })
}

/// Stores the inbox copies of message `id` for `members` and returns each
/// copy's inbox sequence, in member order. A few go as concurrent plain
/// publishes (one fsync wait); a big group's go as atomic batches of up to
/// [`DEFAULT_MAX_ENTRIES`], one fsync each instead of one per copy (5,000
/// plain copies would hold the partition for seconds). A batch refused
/// because some of its copies are already stored (a redo after a crash:
/// one duplicate `Nats-Msg-Id` rejects the batch) or whose outcome is
/// unknown goes again as plain publishes, which dedupe copy by copy.
pub(crate) async fn copy_all(
    sh: &Shared,
    id: u64,
    members: &[i64],
    payload: Bytes,
) -> Result<Vec<u64>, async_nats::Error> {
    if members.len() < crate::round::MIN_BATCH_ENTRIES {
        return copy_plain(sh, id, members, &payload).await;
    }
    let mut seqs = Vec::with_capacity(members.len());
    for chunk in members.chunks(DEFAULT_MAX_ENTRIES) {
        let mut batch = AtomicBatch::new(BatchConfig::default());
        for &m in chunk {
            batch.push(subjects::inbox(m), subjects::msg_id(&subjects::inbox_copy_id(id, m)), payload.clone())?;
        }
        match batch.commit(&sh.client).await {
            Ok(done) => seqs.extend(done.sequences()),
            Err(e) => {
                tracing::debug!(error = %e, copies = chunk.len(), "copies not stored as one batch; one by one");
                seqs.extend(copy_plain(sh, id, chunk, &payload).await?);
            }
        }
    }
    Ok(seqs)
}

/// The copies as concurrent plain publishes, each deduplicated by its id.
async fn copy_plain(sh: &Shared, id: u64, members: &[i64], payload: &Bytes) -> Result<Vec<u64>, async_nats::Error> {
    let writes =
        members.iter().map(|&m| publish(sh, subjects::inbox(m), subjects::inbox_copy_id(id, m), payload.clone()));
    futures::future::join_all(writes).await.into_iter().map(|w| w.map(|a| a.sequence)).collect()
}

/// Step 3: wake the members' delivery (gateways read the inbox from their
/// own position; a lost wake-up only delays). Also after a duplicate, so a
/// message finished after a crash is announced too. Nothing to do when the
/// inbox stream republishes its copies itself (as provisioned): the server
/// announced each copy as it stored it, and better (see
/// `chat_nats::provision::inbox_republish`).
pub(crate) async fn wake(sh: &Shared, copies: &[(i64, u64)]) -> Result<(), async_nats::Error> {
    if sh.storage.inbox.cached_info().config.republish.is_some() {
        return Ok(());
    }
    for (m, seq) in copies {
        sh.client.publish(subjects::live(*m), Bytes::from(seq.to_string())).await?;
    }
    Ok(())
}

/// A stored message with the copies it went to, as its push plan holds it;
/// `None` for what is never pushed (rooms, which have no copies; system
/// messages, marks, reactions, edits and deletes).
pub(crate) fn planned(msg: &StoredMessage, copies: &[(i64, u64)]) -> Option<PlannedMessage> {
    (msg.kind == MessageKind::Text && !copies.is_empty()).then(|| PlannedMessage::new(msg, copies))
}

/// Step 3 too: the push plan of the messages stored (see [`planned`] and
/// `push::planner`), handed to the worker's plan task (`push::plans`),
/// which publishes the plans of many rounds as one: a push is not part of
/// what an ack promises (see docs/architecture.md, "Push").
pub(crate) async fn plan_pushes(sh: &Shared, messages: Vec<PlannedMessage>) {
    if let Some(plans) = &sh.push_plans {
        plans.add(messages).await;
    }
}

/// Step 3 for a room: the stored message, once, on the room's live
/// subject, which every gateway with viewers of the room subscribes to
/// (core NATS: a lost notice shows up as a skipped ordinal and the gateway
/// reads history to fill it). Also after a duplicate, like `wake`.
pub(crate) async fn announce(sh: &Shared, conv: &ConvId, msg: &StoredMessage) -> Result<(), async_nats::Error> {
    if let ConvKind::Room(room) = conv.kind() {
        sh.client.publish(subjects::room_live(room), Bytes::from(serde_json::to_vec(msg)?)).await?;
    }
    Ok(())
}

/// Step 4: the history index entry of a block's first message.
async fn index(sh: &Shared, conv: &ConvId, stored: &Stored) -> Result<(), async_nats::Error> {
    if let Some((key, entry)) = index_entry(conv, &stored.msg, stored.history_seq) {
        sh.storage.hindex.put(key, entry).await?;
    }
    Ok(())
}

/// The history index entry (key, value) a message writes when it is the
/// first of its block: the block's first stream sequence and id.
pub(crate) fn index_entry(conv: &ConvId, msg: &StoredMessage, history_seq: u64) -> Option<(String, Bytes)> {
    (msg.n % INDEX_BLOCK == 1)
        .then(|| (subjects::hindex_key(conv, msg.n / INDEX_BLOCK), Bytes::from(format!("{history_seq} {}", msg.id))))
}

/// The history message stored at `seq`, decoded and as stored.
pub(crate) async fn stored_at(sh: &Shared, seq: u64) -> Result<(StoredMessage, Bytes), async_nats::Error> {
    let original = sh.storage.history.get_raw_message(seq).await?;
    Ok((serde_json::from_slice(&original.payload)?, original.payload))
}

pub(crate) async fn publish(
    sh: &Shared,
    subject: String,
    msg_id: String,
    payload: Bytes,
) -> Result<jetstream::publish::PublishAck, async_nats::Error> {
    Ok(sh.storage.js.publish_with_headers(subject, subjects::msg_id(&msg_id), payload).await?.await?)
}

/// The conversation's last id and ordinal: as this owner last wrote them,
/// else read from history.
pub(crate) async fn conv_state(
    sh: &Shared,
    convs: &HashMap<ConvId, ConvState>,
    conv: &ConvId,
) -> Result<ConvState, async_nats::Error> {
    if let Some(s) = convs.get(conv) {
        return Ok(*s);
    }
    Ok(match chat_nats::history::head(&sh.storage.history, conv).await? {
        Some((last_id, n)) => ConvState { last_id, n },
        None => ConvState::default(),
    })
}

async fn reply(sh: &Shared, send: &IngressSend, ack: Bytes) -> Result<(), async_nats::Error> {
    if let Some(reply) = &send.reply {
        sh.client.publish(reply.clone(), ack).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::sender_last;

    #[test]
    fn the_sender_s_own_copy_goes_last_and_the_others_keep_their_order() {
        assert_eq!(sender_last(vec![1, 2], 1), vec![2, 1]);
        assert_eq!(sender_last(vec![1, 2], 2), vec![1, 2]);
        assert_eq!(sender_last(vec![3, 5, 7, 9], 5), vec![3, 7, 9, 5]);
        // An operator's system message: the sender is no member.
        assert_eq!(sender_last(vec![3, 5], 4), vec![3, 5]);
        assert_eq!(sender_last(vec![4], 4), vec![4]);
        assert_eq!(sender_last(Vec::new(), 4), Vec::<i64>::new());
    }
}
