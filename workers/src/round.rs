//! Group commit: a partition owner sequences every ingress message already
//! waiting as one round, stored with one commit per stream (`commit`: one
//! atomic batch and one fsync for the round, and for the rounds of other
//! partitions committed with it, when they hold enough entries; plain
//! publishes for a lone message, whose writes a batch's fixed cost of
//! several ms would slow down).
//!
//! A round is taken only of messages no earlier attempt can have touched
//! (`fresh`), with no membership change among them. Otherwise, and after
//! any failure, the messages go one by one through `sequencer::process`,
//! which is idempotent.
//!
//! Order of a round, and what a crash at each step leaves:
//! 1. ids and ordinals are assigned in ingress order (nothing stored);
//! 2. the history batch commits (all or nothing; a crash before the ack is
//!    completed or rolled back by the server at restart), or, when the
//!    commit holds fewer than [`MIN_BATCH_PART`] entries and no more than
//!    [`MAX_PLAIN_RUN`](crate::commit::MAX_PLAIN_RUN) of one conversation,
//!    they go as plain
//!    publishes, one at a time per conversation (a crash leaves a prefix of
//!    each conversation's entries stored, which the redo finds as
//!    duplicates). Each part goes through the stream's committer
//!    (`commit`), which stores the parts of concurrent rounds of other
//!    partitions in the same batch;
//! 3. the inbox batches commit, in order, each all or nothing (or, below
//!    [`MIN_BATCH_PART`], plain publishes one at a time per user). Only after
//!    history: a failure here is redone by `process`, whose history append
//!    turns out a duplicate and leads to the stored message and its id, so
//!    the copies it writes carry the same copy ids and dedupe;
//! 4. wake-ups and index entries, then each sender's reply (the message and
//!    every copy are durable), then the outcome records as one batch.

use async_nats::HeaderMap;
use bytes::Bytes;
use chat_nats::batch::{AtomicBatch, BatchConfig, DEFAULT_MAX_ENTRIES};
use chat_nats::envelope::{IngressSend, SeqResult, StoredMessage};
use chat_nats::history::direct_get;
use chat_nats::subjects::{self, msg_id, ConvId};

pub use crate::commit::MIN_BATCH_PART;
use crate::sequencer::{self, outcome, Caches, ConvState, Route};
use crate::Shared;

/// Fewest copies of a message stored one by one (`sequencer::process`) or
/// of read marks spread together (`reads`) for which they go as one atomic
/// batch rather than plain writes.
pub const MIN_BATCH_ENTRIES: usize = 24;

/// Most ingress messages in one round (its history appends fit one batch).
pub const MAX_ROUND: usize = 256;
const _: () = assert!(MAX_ROUND <= DEFAULT_MAX_ENTRIES);

/// How long the round's lookup of recorded outcomes may take.
pub(crate) const RECORDS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The subject of a send's outcome record in the acks bucket.
pub(crate) fn ack_record_subject(key: &str) -> String {
    format!("$KV.{}.{key}", subjects::ACKS_BUCKET)
}

/// One message of a round once its recipients are known.
struct Planned {
    send: IngressSend,
    key: String,
    outcome: Plan,
}

enum Plan {
    /// Answered without storing anything (refused, or done before).
    Answer(Bytes),
    /// To be stored: the message, its conversation and its recipients.
    Store { conv: ConvId, msg: Box<StoredMessage>, payload: Bytes, members: Vec<i64> },
}

/// Where a stored message's entries went in the round's batches: its
/// history entry's index, and per copy (member, inbox batch, index in it).
struct Placed {
    history: usize,
    copies: Vec<(i64, usize, usize)>,
}

/// Whether an ingress payload is a read mark or a delivery receipt (read
/// without decoding the whole send).
pub fn is_mark(payload: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind {
        #[serde(default)]
        kind: chat_nats::envelope::MessageKind,
    }
    serde_json::from_slice::<Kind>(payload).is_ok_and(|k| k.kind.is_mark())
}

/// Whether `payloads` (all fresh) may be taken as one batched round: they
/// parse and hold no membership change. Returns the parsed sends when they
/// may. (Whether the round is large enough is known once its recipients
/// are: see [`run`].)
pub fn batchable(payloads: &[&[u8]]) -> Option<Vec<IngressSend>> {
    let sends: Vec<IngressSend> = payloads.iter().map(|p| serde_json::from_slice(p).ok()).collect::<Option<_>>()?;
    if sends
        .iter()
        .any(|s| !matches!(s.kind, chat_nats::envelope::MessageKind::Text | chat_nats::envelope::MessageKind::System))
    {
        return None; // read marks (and other non-message kinds) go one by one
    }
    // The same send twice in a round goes one by one (the second finds the
    // first in history).
    let keys: std::collections::HashSet<_> = sends.iter().map(|s| (s.from, &s.device, &s.cid)).collect();
    (keys.len() == sends.len() && !sends.iter().any(|s| s.event.is_some() || s.kind.is_change())).then_some(sends)
}

/// Sequences a round of fresh messages, each stream's part through its
/// committer (`commit`: an atomic batch when the part, or the parts of
/// other partitions' rounds committed with it, hold enough entries, else
/// plain publishes). On an error the caller redoes every message of the
/// round through `sequencer::process` (not fresh), which finishes whatever
/// the round stored. On success, the round's outcome records, for the
/// caller to write before it acks the ingress messages
/// (`sequencer::acknowledge`): every sender has its answer already.
pub(crate) async fn run(
    sh: &Shared,
    caches: &mut Caches,
    sends: Vec<IngressSend>,
) -> Result<AtomicBatch, async_nats::Error> {
    let routed = route(sh, caches, sends).await?;
    let planned = plan(sh, caches, routed).await?;
    let mut history = AtomicBatch::new(BatchConfig::default());
    let mut inboxes: Vec<AtomicBatch> = vec![AtomicBatch::new(BatchConfig::default())];
    // Where each message's entries went: its history index, then
    // (member, inbox batch, index in it) per copy.
    let mut placed: Vec<Option<Placed>> = Vec::with_capacity(planned.len());
    for p in &planned {
        let Plan::Store { conv, msg, payload, members } = &p.outcome else {
            placed.push(None);
            continue;
        };
        let h = history.len();
        history.push(subjects::history(conv), msg_id(&p.key), payload.clone())?;
        let mut copies = Vec::with_capacity(members.len());
        for &m in members {
            if inboxes.last().is_some_and(|b| b.len() >= DEFAULT_MAX_ENTRIES) {
                inboxes.push(AtomicBatch::new(BatchConfig::default()));
            }
            let b = inboxes.len() - 1;
            let batch = inboxes.last_mut().expect("at least one batch");
            copies.push((m, b, batch.len()));
            batch.push(subjects::inbox(m), msg_id(&subjects::inbox_copy_id(msg.id, m)), payload.clone())?;
        }
        placed.push(Some(Placed { history: h, copies }));
    }
    let (history_done, inbox_done) = if history.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let h = sh.commits.history.store(history).await?;
        let mut done = Vec::with_capacity(inboxes.len());
        for b in inboxes.into_iter().filter(|b| !b.is_empty()) {
            done.push(sh.commits.inbox.store(b).await?);
        }
        (h, done)
    };
    finish(sh, planned, placed, &history_done, &inbox_done).await
}

/// A send of the round with its dedupe key and either its conversation and
/// recipients or the answer it gets without storing anything.
type Routed = (IngressSend, String, Result<(ConvId, Vec<i64>), Bytes>);

/// Works out, for each send, who gets a copy (or its answer: done before,
/// refused). Stores nothing and assigns no id.
async fn route(sh: &Shared, caches: &mut Caches, sends: Vec<IngressSend>) -> Result<Vec<Routed>, async_nats::Error> {
    let keys: Vec<String> = sends.iter().map(|s| subjects::dedupe_key(s.from, &s.device, &s.cid)).collect();
    // Outcomes already recorded (retries of completed sends), all in one
    // request instead of one get per send.
    let records: Vec<String> = keys.iter().map(|k| ack_record_subject(k)).collect();
    let stream = format!("KV_{}", subjects::ACKS_BUCKET);
    let mut done = direct_get::last_of_many(&sh.client, &stream, &records, RECORDS_TIMEOUT).await?;
    let mut routed = Vec::with_capacity(sends.len());
    for ((send, key), record) in sends.into_iter().zip(keys).zip(&records) {
        if let Some(recorded) = done.remove(record) {
            routed.push((send, key, Err(recorded)));
            continue;
        }
        let to = match sequencer::route(sh, caches, &send).await? {
            Route::Refused(refusal) => Err(outcome(&key, refusal)?),
            Route::To(conv, members) => Ok((conv, members)),
        };
        routed.push((send, key, to));
    }
    Ok(routed)
}

/// Assigns ids and ordinals in ingress order.
async fn plan(sh: &Shared, caches: &mut Caches, routed: Vec<Routed>) -> Result<Vec<Planned>, async_nats::Error> {
    let mut planned = Vec::with_capacity(routed.len());
    for (send, key, to) in routed {
        let outcome = match to {
            Err(answer) => Plan::Answer(answer),
            Ok((conv, members)) => {
                let state = sequencer::conv_state(sh, &caches.convs, &conv).await?;
                let msg = sequencer::assign_id(sh, &send, &conv, state).await?;
                caches.convs.insert(conv.clone(), ConvState { last_id: msg.id, n: msg.n });
                let payload = Bytes::from(serde_json::to_vec(&msg)?);
                Plan::Store { conv, msg: Box::new(msg), payload, members }
            }
        };
        planned.push(Planned { send, key, outcome });
    }
    Ok(planned)
}

/// After the commits: wake-ups, push plan, index entries, replies; the
/// outcome records to write.
async fn finish(
    sh: &Shared,
    planned: Vec<Planned>,
    placed: Vec<Option<Placed>>,
    history: &[u64],
    inboxes: &[Vec<u64>],
) -> Result<AtomicBatch, async_nats::Error> {
    let mut acks = AtomicBatch::new(BatchConfig::default());
    let mut index = Vec::new();
    let mut replies = Vec::with_capacity(planned.len());
    let mut pushes = Vec::new();
    for (p, place) in planned.into_iter().zip(placed) {
        let ack = match (p.outcome, place) {
            (Plan::Answer(recorded), _) => {
                replies.push((p.send.reply, recorded));
                continue;
            }
            (Plan::Store { conv, msg, .. }, Some(Placed { history: h, copies })) => {
                let mut woken = Vec::with_capacity(copies.len());
                for (m, b, i) in copies {
                    woken.push((m, *inboxes.get(b).and_then(|c| c.get(i)).ok_or("inbox batch without its sequence")?));
                }
                sequencer::wake(sh, &woken).await?;
                sequencer::announce(sh, &conv, &msg).await?;
                let history_seq = *history.get(h).ok_or("history batch without its sequence")?;
                index.extend(sequencer::index_entry(&conv, &msg, history_seq));
                let ack = outcome(&p.key, SeqResult::Ok { id: msg.id, conv: msg.conv.clone(), ts: msg.ts, n: msg.n })?;
                pushes.extend(sequencer::planned(&msg, &woken));
                ack
            }
            _ => return Err("a stored message of the round has no place in its batches".into()),
        };
        acks.push(ack_record_subject(&p.key), HeaderMap::new(), ack.clone())?;
        replies.push((p.send.reply, ack));
    }
    // The round's push plan, once its copies are all stored.
    sequencer::plan_pushes(sh, pushes).await;
    let puts = index.into_iter().map(|(key, entry)| sh.storage.hindex.put(key, entry));
    for r in futures::future::join_all(puts).await {
        r?;
    }
    // Every message and copy is durable: the senders may hear of it now.
    for (reply, ack) in replies {
        if let Some(reply) = reply {
            sh.client.publish(reply, ack).await?;
        }
    }
    // The outcome records (for retries after the history dedupe window):
    // the caller's to write.
    Ok(acks)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(cid: &str, event: bool) -> Vec<u8> {
        let mut v = serde_json::json!({"from": "1", "device": "d", "cid": cid, "conv": "dm-1-2", "kind": "text",
                                       "body": "x", "reply": null});
        if event {
            v["event"] = serde_json::json!({"op": "added", "actor": "1", "version": 2, "members": ["1", "2"]});
        }
        serde_json::to_vec(&v).unwrap()
    }

    #[test]
    fn rounds_with_a_membership_change_or_a_repeated_send_are_not_batchable() {
        let sends: Vec<Vec<u8>> = (0..8).map(|i| send(&format!("c{i}"), false)).collect();
        let many: Vec<&[u8]> = sends.iter().map(Vec::as_slice).collect();
        assert_eq!(batchable(&many).map(|s| s.len()), Some(8));
        let twice: Vec<&[u8]> = vec![&sends[0], &sends[1], &sends[0]];
        assert!(batchable(&twice).is_none(), "the same send twice goes one by one");
        let change = send("g", true);
        let mut mixed = many.clone();
        mixed.push(&change);
        assert!(batchable(&mixed).is_none(), "membership changes go one by one");
        let bad: Vec<&[u8]> = vec![b"{".as_slice(); 10];
        assert!(batchable(&bad).is_none());
    }
}
