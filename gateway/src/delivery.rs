//! Delivery of a user's inbox to one device: catch-up from a cursor, then
//! live, through a single ordered JetStream consumer on the user's inbox
//! subject. One consumer for both means there is no seam to get wrong:
//! messages arrive in inbox order, each once, and `synced` is sent after
//! the last message that existed when catch-up began.
//!
//! The cursor is the inbox stream sequence of the last message delivered,
//! as a decimal string. Stream sequences are assigned by JetStream, so a
//! cursor cannot miss a message whatever the ID workers' clocks say.

use std::sync::Arc;

use async_nats::jetstream::consumer::{push, DeliverPolicy};
use async_nats::jetstream::stream::DirectGetErrorKind;
use chat_nats::envelope::StoredMessage;
use chat_nats::subjects;
use chat_nats::wire::{ErrorCode, MsgFrame, ServerFrame};
use futures::StreamExt;

use crate::outbound::{Outbound, CLOSE_INTERNAL};
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
    // The last message that exists now: `synced` follows it.
    let mut catch_up_until = None;
    let Start::After(cursor) = start;
    let info = inbox.get_info().await?.state;
    if cursor > info.last_sequence {
        let message = "cursor is ahead of the inbox: not issued by this deployment".into();
        out.push(&ServerFrame::Error { cid: None, code: ErrorCode::BadCursor, message }).await;
        return Ok(());
    }
    // Copies older than the retention may have expired unseen.
    let truncated = cursor > 0 && cursor + 1 < info.first_sequence;
    let last = match inbox.direct_get_last_for_subject(&subject).await {
        Ok(m) => m.sequence,
        Err(e) if e.kind() == DirectGetErrorKind::NotFound => 0,
        Err(e) => return Err(e.into()),
    };
    if last <= cursor {
        out.push(&ServerFrame::Synced { cursor: cursor.to_string(), truncated }).await;
    } else {
        catch_up_until = Some(last);
    }
    let deliver_policy = match cursor {
        0 => DeliverPolicy::All,
        c => DeliverPolicy::ByStartSequence { start_sequence: c + 1 },
    };
    let consumer = inbox
        .create_consumer(push::OrderedConfig {
            deliver_subject: state.client.new_inbox(),
            filter_subject: subject,
            deliver_policy,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    while let Some(m) = messages.next().await {
        let m = m?;
        let (seq, pending) = {
            let info = m.info()?;
            (info.stream_sequence, info.pending)
        };
        let stored: StoredMessage = match serde_json::from_slice(&m.payload) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(seq, error = %e, "undecodable inbox message skipped");
                continue;
            }
        };
        let own = stored.from == user && stored.device == device;
        let msg = ServerFrame::Msg(MsgFrame {
            id: stored.id.to_string(),
            conv: stored.conv,
            from: stored.from.to_string(),
            kind: stored.kind,
            body: stored.body,
            ts: stored.ts,
            cursor: seq.to_string(),
            cid: own.then_some(stored.cid),
            event: stored.event,
        });
        if !out.push(&msg).await {
            return Ok(());
        }
        state.delivered.record(user, seq);
        if let Some(until) = catch_up_until {
            if seq >= until || pending == 0 {
                catch_up_until = None;
                if !out.push(&ServerFrame::Synced { cursor: seq.to_string(), truncated }).await {
                    return Ok(());
                }
            }
        }
    }
    Err("inbox consumer ended".into())
}

/// Serializes a server frame.
pub fn frame(f: &ServerFrame) -> String {
    serde_json::to_string(f).expect("server frames always serialize")
}
