//! Reactions, sequenced like edits (see `sequencer::change`): an event with
//! an id in the conversation's order, copied to every member's inbox, never
//! pushed. Two history subjects below the target's event subject hold its
//! state, each trimmed to its last entry:
//!
//! - `<target>.r.<user>`: the emoji that user has on the message, which
//!   makes `add` and `remove` idempotent;
//! - `<target>.r`: the event itself with the message's reaction counts
//!   after it (at most `MAX_REACTION_EMOJI` emoji, up to
//!   `REACTION_USERS_LISTED` users listed each, counts exact), which is all
//!   a history page reads: one bounded entry per message.
//!
//! The sequencer owns the conversation's partition, so the read-modify-
//! write of the counts is serialised in conversation order.

use std::collections::HashMap;

use bytes::Bytes;
use chat_nats::envelope::{
    IngressSend, MessageKind, Reaction, ReactionCount, ReactionOp, SeqResult, StoredMessage, MAX_REACTION_EMOJI,
    REACTION_USERS_LISTED,
};
use chat_nats::history::last_on;
use chat_nats::subjects::{self, ConvId};
use chat_nats::wire::ErrorCode;

use crate::sequencer::{announce, conv_state, copy_all, publish, stored_at, wake, ConvState};
use crate::Shared;

/// Sequences one `react` (the gateway checked the caller takes part and
/// the target is a text message of the conversation).
pub(crate) async fn react(
    sh: &Shared,
    convs: &mut HashMap<ConvId, ConvState>,
    send: &IngressSend,
    key: &str,
    conv: ConvId,
    members: &[i64],
) -> Result<SeqResult, async_nats::Error> {
    let (Some(target), Some(original), Ok(r)) =
        (send.target, send.original, serde_json::from_str::<Reaction>(&send.body))
    else {
        return Ok(SeqResult::Err {
            code: ErrorCode::BadFrame,
            message: "a reaction names no message or emoji".into(),
        });
    };
    let n = original.n;
    if let Some((_, last)) = last_on(&sh.storage.history, &subjects::history_event(&conv, n, target)).await? {
        if last.kind == MessageKind::Delete {
            return Ok(SeqResult::Err { code: ErrorCode::NotFound, message: "the message was deleted".into() });
        }
    }
    let counts_subject = subjects::history_reactions(&conv, n, target);
    let mine_subject = subjects::history_reactions_of(&conv, n, target, send.from);
    let of_key = |m: &StoredMessage| subjects::dedupe_key(m.from, &m.device, &m.cid) == key;
    let counts = last_on(&sh.storage.history, &counts_subject).await?;
    let (msg, payload) = match counts {
        // A redo of this very reaction finds it stored: finish it.
        Some((seq, m)) if of_key(&m) => stored_at(sh, seq).await?,
        counts => {
            let mine = last_on(&sh.storage.history, &mine_subject).await?;
            // A redo that stored only the user's entry: its change is due.
            let redo = mine.as_ref().is_some_and(|(_, m)| of_key(m));
            let mut emoji: Vec<String> =
                mine.map(|(_, m)| m.reactions.into_iter().map(|c| c.emoji).collect()).unwrap_or_default();
            let had = emoji.contains(&r.emoji);
            let mut totals = counts.as_ref().map(|(_, m)| m.reactions.clone()).unwrap_or_default();
            if !redo && had == (r.op == ReactionOp::Add) {
                // Nothing changes: acked with the last reaction event's id.
                let (id, ts) = counts.map_or((target, original.ts), |(_, m)| (m.id, m.ts));
                return Ok(SeqResult::Ok { id, conv: conv.to_string(), ts, n: 0 });
            }
            if !redo && !apply(&mut totals, &r, send.from) {
                let message = format!("a message has at most {MAX_REACTION_EMOJI} different emoji");
                return Ok(SeqResult::Err { code: ErrorCode::LimitExceeded, message });
            }
            match r.op {
                ReactionOp::Add if !had => emoji.push(r.emoji.clone()),
                ReactionOp::Remove => emoji.retain(|e| *e != r.emoji),
                _ => {}
            }
            let state = conv_state(sh, convs, &conv).await?;
            let msg = StoredMessage {
                id: sh.ids.next_after(state.last_id).await?,
                conv: conv.to_string(),
                from: send.from,
                device: send.device.clone(),
                cid: send.cid.clone(),
                kind: MessageKind::React,
                ts: sh.clock.now_ms(),
                n: state.n,
                target: Some(target),
                original: Some(original),
                reaction: Some(r.clone()),
                ..Default::default()
            };
            let own = emoji.into_iter().map(|emoji| ReactionCount { emoji, count: 1, users: vec![] }).collect();
            let mine = StoredMessage { reactions: own, ..msg.clone() };
            publish(sh, mine_subject.clone(), format!("{key}.u"), Bytes::from(serde_json::to_vec(&mine)?)).await?;
            let msg = StoredMessage { reactions: totals, ..msg };
            let payload = Bytes::from(serde_json::to_vec(&msg)?);
            let ack = publish(sh, counts_subject.clone(), key.to_owned(), payload.clone()).await?;
            if ack.duplicate {
                stored_at(sh, ack.sequence).await?
            } else {
                (msg, payload)
            }
        }
    };
    // Only the last entry of each is ever read.
    sh.storage.history.purge().filter(mine_subject).keep(1).await?;
    sh.storage.history.purge().filter(counts_subject).keep(1).await?;
    // Members get the change and the counts after it.
    let written = copy_all(sh, msg.id, members, payload).await?;
    let copies: Vec<(i64, u64)> = members.iter().copied().zip(written).collect();
    wake(sh, &copies).await?;
    // A room has no inboxes: its viewers get the change on its live subject.
    announce(sh, &conv, &msg).await?;
    let state = conv_state(sh, convs, &conv).await?;
    convs.insert(conv.clone(), ConvState { last_id: msg.id.max(state.last_id), n: state.n });
    Ok(SeqResult::Ok { id: msg.id, conv: conv.to_string(), ts: msg.ts, n: 0 })
}

/// Applies one user's change to a message's counts; false when an `add`
/// would exceed [`MAX_REACTION_EMOJI`] distinct emoji.
fn apply(totals: &mut Vec<ReactionCount>, r: &Reaction, user: i64) -> bool {
    let at = totals.iter().position(|c| c.emoji == r.emoji);
    match (r.op, at) {
        (ReactionOp::Add, Some(i)) => {
            let c = &mut totals[i];
            c.count += 1;
            if c.users.len() < REACTION_USERS_LISTED {
                c.users.push(user);
            }
        }
        (ReactionOp::Add, None) if totals.len() >= MAX_REACTION_EMOJI => return false,
        (ReactionOp::Add, None) => totals.push(ReactionCount { emoji: r.emoji.clone(), count: 1, users: vec![user] }),
        (ReactionOp::Remove, Some(i)) => {
            let c = &mut totals[i];
            c.count = c.count.saturating_sub(1);
            c.users.retain(|u| *u != user);
            if c.count == 0 {
                totals.remove(i);
            }
        }
        (ReactionOp::Remove, None) => {}
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(emoji: &str, op: ReactionOp) -> Reaction {
        Reaction { emoji: emoji.into(), op }
    }

    #[test]
    fn counts_are_exact_and_lists_bounded() {
        let mut t = vec![];
        for u in 0..(REACTION_USERS_LISTED as i64 + 5) {
            assert!(apply(&mut t, &r("👍", ReactionOp::Add), u));
        }
        assert_eq!((t[0].count, t[0].users.len()), (REACTION_USERS_LISTED as u64 + 5, REACTION_USERS_LISTED));
        assert!(apply(&mut t, &r("👍", ReactionOp::Remove), 0));
        assert_eq!(t[0].count, REACTION_USERS_LISTED as u64 + 4);
        assert!(!t[0].users.contains(&0));
        for i in 1..MAX_REACTION_EMOJI {
            assert!(apply(&mut t, &r(&format!("e{i}"), ReactionOp::Add), 1));
        }
        assert!(!apply(&mut t, &r("one-too-many", ReactionOp::Add), 1));
        assert!(apply(&mut t, &r("e1", ReactionOp::Remove), 1));
        assert_eq!(t.len(), MAX_REACTION_EMOJI - 1);
    }
}
