//! Delivery of a user's inbox to one device: catch-up from a cursor through
//! an ordered JetStream consumer on the user's inbox subject, up to the last
//! message that existed when catch-up began, then `synced`, then live.
//!
//! Live delivery holds no consumer: the device's task subscribes to its
//! user's wake-ups (see `live`) *before* catch-up starts. A wake-up that is
//! the copy right after the last one delivered (the inbox stream
//! republished it with that predecessor) is delivered as it came; any
//! other makes the task read the inbox stream forward from the last
//! sequence it delivered (direct gets of the next message on the user's
//! subject, up to the copy the wake-up names). Both phases deliver the
//! stream in sequence order from the last delivered message, so the seam
//! has no gap and no duplicate, and a lost wake-up delays a message until
//! the next one instead of losing it.
//!
//! The cursor is the inbox stream sequence of the last message delivered,
//! as a decimal string. Stream sequences are assigned by JetStream, so a
//! cursor cannot miss a message whatever the ID workers' clocks say.

use std::sync::Arc;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream::{DirectGetErrorKind, RawMessageErrorKind};
use chat_nats::envelope::{MessageKind, StoredMessage};
use chat_nats::subjects::{self, ConvId, ConvKind};
use chat_nats::wire::{ErrorCode, MsgFrame, ServerFrame};
use futures::StreamExt;

use crate::conn::outbound::{Outbound, CLOSE_INTERNAL};
use crate::error::frame;
use crate::messaging::live::Wake;
use crate::metrics::{LiveCopy, Phase};
use crate::AppState;

/// Where delivery starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Every message after this cursor (0: from the beginning), then
    /// `synced`, then live.
    After(u64),
}

/// Streams the inbox to `out` until the connection closes. Frames are
/// queued under `epoch` (see [`Outbound::new_epoch`]).
pub async fn run(state: Arc<AppState>, user: i64, device: String, start: Start, out: Outbound, epoch: u64) {
    let sink = Sink { out: &out, epoch, stall: state.cfg.stall_timeout };
    if let Err(e) = stream(&state, user, &device, start, &sink).await {
        tracing::warn!(user_id = user, error = %e, "inbox delivery failed; closing so the client resyncs");
        out.close(CLOSE_INTERNAL);
    }
}

struct Sink<'a> {
    out: &'a Outbound,
    epoch: u64,
    stall: std::time::Duration,
}

impl Sink<'_> {
    async fn push(&self, f: &ServerFrame) -> bool {
        self.out.push_wait(frame(f), self.epoch, self.stall).await
    }

    /// Queues a `msg` frame of a message stored at `ts`.
    async fn push_msg(&self, f: &ServerFrame, ts: u64, phase: Phase) -> bool {
        self.out.push_stored(frame(f), self.epoch, self.stall, Some((ts, phase))).await
    }
}

async fn stream(
    state: &AppState,
    user: i64,
    device: &str,
    start: Start,
    out: &Sink<'_>,
) -> Result<(), async_nats::Error> {
    let subject = subjects::inbox(user);
    let inbox = &state.storage.inbox;
    // Wake-ups first: whatever is stored from now on is announced.
    // Every await but the wake-up wait is boxed: an idle delivery task then
    // keeps only its small waiting state resident (see docs/benchmarks.md).
    let started = std::time::Instant::now();
    let mut wakeups = Box::pin(crate::messaging::live::watch(&state.hub, user)).await?;
    let Start::After(cursor) = start;
    let info = Box::pin(inbox.get_info()).await?.state;
    if cursor > info.last_sequence {
        let message = "cursor is ahead of the inbox: not issued by this deployment";
        Box::pin(out.push(&crate::error::ClientError::new(ErrorCode::BadCursor, message).into_frame(None))).await;
        return Ok(());
    }
    // Copies older than the retention may have expired unseen.
    let truncated = cursor > 0 && cursor + 1 < info.first_sequence;
    // The last message that exists now: `synced` follows it.
    let last = match Box::pin(inbox.direct_get_last_for_subject(&subject)).await {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    let mut delivered = cursor;
    let mut caught_up = 0;
    if last > cursor {
        match Box::pin(catch_up(state, user, device, cursor, last, out)).await? {
            Some((seq, n)) => (delivered, caught_up) = (seq, n),
            None => return Ok(()),
        }
    }
    if !Box::pin(out.push(&ServerFrame::Synced { cursor: delivered.to_string(), truncated })).await {
        return Ok(());
    }
    state.metrics.catch_up(caught_up, started);
    // Live: read the inbox forward from the last delivered message on every
    // wake-up (and once now, for what arrived during catch-up). Reading the
    // stream, not the notifications, keeps inbox order with no gap. A
    // wake-up names the copy it announces: the reader stops once that copy
    // is delivered instead of asking once more to learn that nothing
    // follows (one read per delivered copy, not two); a copy stored after
    // it has a wake-up of its own.
    let mut wake = Wake::All;
    loop {
        let up_to = match &wake {
            // The copy right after the last one delivered, as the stream
            // vouched when it stored it: delivered as it came.
            Wake::Copy { seq, last, payload } if *last <= delivered && delivered < *seq => {
                delivered = *seq;
                state.metrics.live_copy(LiveCopy::Pushed);
                if !Box::pin(deliver(state, user, device, *seq, payload, out, Phase::Live)).await {
                    return Ok(());
                }
                Some(*seq)
            }
            Wake::Copy { seq, .. } | Wake::UpTo(seq) => Some(*seq),
            Wake::All => None,
        };
        loop {
            if up_to.is_some_and(|seq| delivered >= seq) {
                break;
            }
            let Some(m) = Box::pin(next_copy(state, &subject, delivered + 1)).await? else { break };
            delivered = m.sequence;
            state.metrics.live_copy(LiveCopy::Read);
            if !Box::pin(deliver(state, user, device, m.sequence, &m.payload, out, Phase::Live)).await {
                return Ok(());
            }
        }
        // A reader that stopped at a named copy reads once more until
        // nothing is left if no wake-up follows within SETTLE: a copy whose
        // own wake-up was lost (core NATS, a cluster node dying) then waits
        // seconds, not `CHAT_LIVE_POLL_SECS`, for one extra read per quiet
        // spell instead of one per copy.
        let settle = up_to.is_some();
        wake = tokio::select! {
            w = wakeups.changed() => w.ok_or("live wake-ups ended")?,
            _ = tokio::time::sleep(SETTLE), if settle => Wake::All,
        };
    }
}

/// How long after its last wake-up a live reader looks once more for
/// copies whose wake-ups were lost.
const SETTLE: std::time::Duration = std::time::Duration::from_secs(2);

/// The first copy on `subject` at or after `seq`, or `None`. A direct get
/// may be answered by any replica, and on an R3 stream a follower can be
/// a few writes behind the leader that acknowledged them (and so behind the
/// wake-up): its "not found" is checked with the leader, or the newest copy
/// would wait for the next wake-up, which may not come.
async fn next_copy(
    state: &AppState,
    subject: &str,
    seq: u64,
) -> Result<Option<async_nats::jetstream::message::StreamMessage>, async_nats::Error> {
    let inbox = &state.storage.inbox;
    match inbox.direct_get_next_for_subject(subject, Some(seq)).await {
        Ok(m) => return Ok(Some(m)),
        Err(e) if e.kind() == DirectGetErrorKind::NotFound && state.storage.settings.replicas > 1 => {}
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    match inbox.raw_message_builder().sequence(seq).next_by_subject(subject).send().await {
        Ok(m) => Ok(Some(m)),
        Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Delivers every message after `cursor` up to `until` through one ordered
/// consumer; the sequence of the last one and how many were delivered, or
/// `None` if the connection went.
async fn catch_up(
    state: &AppState,
    user: i64,
    device: &str,
    cursor: u64,
    until: u64,
    out: &Sink<'_>,
) -> Result<Option<(u64, u64)>, async_nats::Error> {
    let deliver_policy = match cursor {
        0 => DeliverPolicy::All,
        c => DeliverPolicy::ByStartSequence { start_sequence: c + 1 },
    };
    // A pull consumer: the gateway asks for the next batch only as the
    // client drains, so a slow client never makes the NATS client drop
    // pushed messages (an ordered push consumer then stalls until its idle
    // heartbeat notices the gap and recreates itself).
    let consumer = state
        .storage
        .inbox
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::inbox(user),
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut n = 0;
    while let Some(m) = messages.next().await {
        let m = m?;
        let (seq, pending) = {
            let info = m.info()?;
            (info.stream_sequence, info.pending)
        };
        // async-nats 0.51 recreates an ordered consumer that missed its
        // heartbeats (an R3 stream changing leader, say) from the stream's
        // start if it had delivered nothing yet, dropping the start
        // sequence: what the cursor already covers is skipped, never sent
        // twice.
        if seq <= cursor {
            continue;
        }
        if !deliver(state, user, device, seq, &m.payload, out, Phase::CatchUp).await {
            return Ok(None);
        }
        n += 1;
        if seq >= until || pending == 0 {
            return Ok(Some((seq, n)));
        }
    }
    Err("inbox consumer ended".into())
}

/// Sends one inbox message as a `msg` frame; `false` if the connection went.
async fn deliver(
    state: &AppState,
    user: i64,
    device: &str,
    seq: u64,
    payload: &[u8],
    out: &Sink<'_>,
    phase: Phase,
) -> bool {
    let stored: StoredMessage = match serde_json::from_slice(payload) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(seq, error = %e, "undecodable inbox message skipped");
            return true;
        }
    };
    let from_self = stored.from == user;
    let own = from_self && stored.device == device;
    let ts = stored.ts;
    if stored.kind == MessageKind::Delivered {
        // A 1:1 peer's devices got our messages up to `id`.
        let f = ServerFrame::Delivered {
            conv: stored.conv,
            user: stored.from.to_string(),
            up_to: stored.id.to_string(),
            cursor: seq.to_string(),
        };
        return out.push(&f).await;
    }
    if stored.kind == MessageKind::Read {
        // A read mark: the user's own (other devices; the device that sent
        // it already has the answer to its `read`) or a 1:1 peer's receipt.
        let f = if !from_self {
            ServerFrame::Receipt {
                conv: stored.conv,
                user: stored.from.to_string(),
                up_to: stored.id.to_string(),
                cursor: seq.to_string(),
            }
        } else if own {
            return true;
        } else {
            ServerFrame::Read {
                conv: stored.conv,
                up_to: stored.id.to_string(),
                n: Some(stored.n),
                unread: None,
                cursor: Some(seq.to_string()),
            }
        };
        return out.push(&f).await;
    }
    // A peer's 1:1 text: its delivery receipt (coalesced, see `receipts`).
    let receipt = (!from_self && stored.kind == MessageKind::Text && state.cfg.delivery_receipts)
        .then(|| ConvId::parse(&stored.conv))
        .flatten()
        .filter(|c| matches!(c.kind(), ConvKind::Direct(..)))
        .map(|c| (c, stored.id, stored.n));
    let msg = ServerFrame::Msg(MsgFrame {
        id: stored.id.to_string(),
        conv: stored.conv,
        from: stored.from.to_string(),
        kind: stored.kind,
        body: stored.body,
        ts: stored.ts,
        n: stored.n,
        cursor: seq.to_string(),
        cid: own.then_some(stored.cid),
        target: stored.target.map(|t| t.to_string()),
        event: stored.event,
        room: None,
        reaction: stored.reaction.map(Box::new),
        reactions: stored.reactions,
        reply_to: stored.reply_to,
        mentions: stored.mentions,
    });
    if !out.push_msg(&msg, ts, phase).await {
        return false;
    }
    // The push planner never pushes a user's own messages, so only copies
    // of others' raise the mark it reads (half the mark writes of a 1:1
    // exchange).
    if !from_self {
        state.delivered.record(user, seq);
    }
    if let Some((conv, id, n)) = receipt {
        state.receipts.record((user, conv), (n, id));
    }
    true
}
