//! Messages too big for one commit get a lane of their own.
//!
//! A group message whose inbox copies do not fit one atomic batch (more
//! than [`MIN_COPIES`]: a group of up to `CHAT_GROUP_MAX_MEMBERS`, 5,000
//! allowed) takes several commits. In the partition's round it would hold
//! every other conversation of the partition for all of them; in a lane it
//! is stored by a task of its own (history first, then its copies in
//! batches, then wake-ups, the sender's ack and the outcome record, then
//! its ingress ack), while the partition goes on with its other
//! conversations. Later messages of the same conversation wait, unacked,
//! until the lane is done, so the conversation keeps its order in history
//! and in every inbox; a membership change of that group waits too.
//!
//! Only a first delivery (`fresh`) that changes no membership gets a lane,
//! and only when no earlier message of its conversation is in the same
//! round (those are stored first, by the round). A worker killed mid-lane
//! leaves the ingress message unacked: the next owner redoes it one by one
//! (history duplicate, same id, same copy ids), like any other.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use chat_nats::batch::DEFAULT_MAX_ENTRIES;
use chat_nats::envelope::{IngressSend, StoredMessage};
use chat_nats::subjects::{self, ConvId, ConvKind};
use tokio::sync::mpsc;

use crate::sequencer::{self, Caches, ConvState, Route};
use crate::Shared;

/// Most copies a message may have and still be stored in its round (one
/// atomic batch).
pub const MIN_COPIES: usize = DEFAULT_MAX_ENTRIES;

/// A partition's lanes and the messages waiting for them.
pub(crate) struct Lanes {
    busy: HashSet<ConvId>,
    /// Messages of a busy conversation, in arrival order.
    waiting: VecDeque<(ConvId, jetstream::Message)>,
    done_tx: mpsc::UnboundedSender<ConvId>,
    done: mpsc::UnboundedReceiver<ConvId>,
}

/// One message to be stored in a lane.
pub(crate) struct Big {
    msg: jetstream::Message,
    send: IngressSend,
    conv: ConvId,
    members: Vec<i64>,
}

impl Lanes {
    pub(crate) fn new() -> Lanes {
        let (done_tx, done) = mpsc::unbounded_channel();
        Lanes { busy: HashSet::new(), waiting: VecDeque::new(), done_tx, done }
    }

    /// Messages released by lanes that finished since the last call, in
    /// order (they go first in the next round).
    pub(crate) fn released(&mut self) -> Vec<jetstream::Message> {
        let mut out = Vec::new();
        while let Ok(conv) = self.done.try_recv() {
            self.release(conv, &mut out);
        }
        out
    }

    /// Waits until a lane finishes; the messages it releases.
    pub(crate) async fn next_release(&mut self) -> Vec<jetstream::Message> {
        let mut out = Vec::new();
        if let Some(conv) = self.done.recv().await {
            self.release(conv, &mut out);
        }
        out.extend(self.released());
        out
    }

    /// Whether a lane of `conv` is running (its later messages wait).
    pub(crate) fn busy(&self, conv: &ConvId) -> bool {
        self.busy.contains(conv)
    }

    /// Whether any lane is running.
    pub(crate) fn any(&self) -> bool {
        !self.busy.is_empty()
    }

    fn release(&mut self, conv: ConvId, out: &mut Vec<jetstream::Message>) {
        self.busy.remove(&conv);
        let (mine, rest): (VecDeque<_>, VecDeque<_>) = self.waiting.drain(..).partition(|(c, _)| *c == conv);
        self.waiting = rest;
        out.extend(mine.into_iter().map(|(_, m)| m));
    }

    /// Splits a round: the messages the round stores now, in order, and the
    /// big ones that get lanes; messages of a conversation with a lane wait.
    pub(crate) async fn split(
        &mut self,
        sh: &Shared,
        caches: &mut Caches,
        round: Vec<jetstream::Message>,
        fresh: impl Fn(&jetstream::Message) -> bool,
    ) -> Result<(Vec<jetstream::Message>, Vec<Big>), async_nats::Error> {
        let mut now = Vec::with_capacity(round.len());
        let mut in_round: HashSet<ConvId> = HashSet::new();
        let mut big: Vec<Big> = Vec::new();
        for msg in round {
            let Some(send) = serde_json::from_slice::<IngressSend>(&msg.payload).ok() else {
                now.push(msg);
                continue;
            };
            let Some(conv) = ConvId::parse(&send.conv) else {
                now.push(msg);
                continue;
            };
            if self.busy.contains(&conv) || big.iter().any(|b| b.conv == conv) {
                self.waiting.push_back((conv, msg));
                continue;
            }
            let candidate = matches!(conv.kind(), ConvKind::Group(_))
                && send.event.is_none()
                && !send.kind.is_change()
                && !send.kind.is_mark()
                && !in_round.contains(&conv)
                && fresh(&msg);
            if candidate {
                if let Route::To(conv, members) = sequencer::route(sh, caches, &send).await? {
                    if members.len() > MIN_COPIES {
                        big.push(Big { msg, send, conv, members });
                        continue;
                    }
                }
            }
            in_round.insert(conv);
            now.push(msg);
        }
        Ok((now, big))
    }

    /// Gives `b` its id (after everything the round stored) and starts its
    /// lane.
    pub(crate) async fn start(
        &mut self,
        sh: &Arc<Shared>,
        caches: &mut Caches,
        valid: &Arc<crate::Validity>,
        b: Big,
    ) -> Result<(), async_nats::Error> {
        let state = sequencer::conv_state(sh, &caches.convs, &b.conv).await?;
        let draft = sequencer::assign_id(sh, &b.send, &b.conv, state).await?;
        caches.convs.insert(b.conv.clone(), ConvState { last_id: draft.id, n: draft.n });
        self.busy.insert(b.conv.clone());
        let (sh, valid, done) = (sh.clone(), valid.clone(), self.done_tx.clone());
        tokio::spawn(async move {
            let conv = b.conv.clone();
            if run(&sh, &valid, b, draft).await {
                let _ = done.send(conv);
            }
        });
        Ok(())
    }
}

/// Stores one big message, retrying (idempotently) until done; `false` if
/// the lease was lost first (the message stays unacked for the next owner).
async fn run(sh: &Shared, valid: &crate::Validity, b: Big, draft: StoredMessage) -> bool {
    let key = subjects::dedupe_key(b.send.from, &b.send.device, &b.send.cid);
    let mut backoff = Duration::from_millis(20);
    loop {
        if !valid.holds() {
            return false;
        }
        match sequencer::store_big(sh, &key, &b.conv, draft.clone(), &b.members, &b.send).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(conv = %b.conv, error = %e, "big message not stored yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
    if let Err(e) = b.msg.ack_with(AckKind::Ack).await {
        tracing::warn!(error = %e, "ingress ack failed; the message will be redelivered and deduped");
    }
    true
}
