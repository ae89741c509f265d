//! Delivery receipts of 1:1s: when a message of the peer is handed to a
//! device of its recipient, the peer's devices learn it (`delivered`
//! frames), in conversation order and caught up from their cursors like
//! read receipts.
//!
//! Delivery records (recipient, conversation) → the newest message handed
//! over, in memory; a background task spreads them coalesced, like the
//! delivered marks (`marks.rs`): the first record after a quiet spell
//! starts a timer of `CHAT_DELIVERED_FLUSH_MS`, and everything recorded by
//! then is spread in one round, one receipt per (recipient, conversation)
//! whatever the number of messages. Each raises KV `chat_read`
//! `d.<user>.<conv>` by compare-and-set (never backwards, whichever
//! gateway writes), and only a raise is spread: a second device catching
//! up on messages already receipted costs one KV read, nothing else. The
//! spreading is an ingress message of kind `delivered` on the
//! conversation's partition, which the worker copies to the peer's inbox
//! (`workers/src/reads.rs`) after the messages it names.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chat_nats::envelope::{MessageKind, ReadMark};
use chat_nats::subjects::{self, ConvId};

use crate::error::ClientError;
use crate::messaging::marks::{Coalesced, Raised};
use crate::messaging::reads;
use crate::messaging::send::Outgoing;
use crate::AppState;
use futures::StreamExt;

/// The device name of receipts in their dedupe keys
/// (`<user>.dlv.d<message id>`): no session's device is called this.
const DEVICE: &str = "dlv";

/// Delivery receipts of this gateway waiting to be spread: (recipient,
/// 1:1) → (ordinal, id) of the newest message handed over.
pub type DeliveryReceipts = Coalesced<(i64, ConvId), (u64, u64)>;

/// Spreads recorded receipts (see the module docs) while the gateway lives:
/// each round's positions raised with one read and (under load) one batch
/// (`reads::raise_round_with`), then each one that moved is spread.
pub async fn run(receipts: Arc<DeliveryReceipts>, state: Weak<AppState>, coalesce: Duration) {
    receipts
        .run(coalesce, |round| {
            let state = state.clone();
            async move {
                let Some(state) = state.upgrade() else { return };
                let keyed = round.into_iter().map(|((user, conv), m)| (subjects::delivered_receipt_key(user, &conv), (user, conv, m)));
                let (keys, whom): (Vec<_>, HashMap<_, _>) = keyed.map(|(k, w)| ((k.clone(), w.2), (k, (w.0, w.1)))).unzip();
                let raised = reads::raise_round_with(&state.client, &state.storage.reads, keys.into_iter()).await;
                futures::stream::iter(raised)
                    .for_each_concurrent(SPREAD_CONCURRENCY, |(key, mark, r)| {
                        let state = state.clone();
                        let who = whom.get(&key).cloned();
                        async move {
                            let Some((user, conv)) = who else { return };
                            let done = match r {
                                Raised::Written => send(&state, user, &conv, &mark).await,
                                // Already there: spread again only if an
                                // earlier spread may have failed after its
                                // raise (the receipt's id dedupes).
                                Raised::Ahead(cur) => match serde_json::from_slice::<ReadMark>(&cur) {
                                    Ok(c) if c.n == mark.n => send(&state, user, &conv, &mark).await,
                                    _ => Ok(()),
                                },
                                Raised::Retry => spread(&state, user, &conv, &mark).await,
                            };
                            if let Err(e) = done {
                                tracing::warn!(user_id = user, conv = %conv, error = %e.message, "cannot spread a delivery receipt");
                            }
                        }
                    })
                    .await;
            }
        })
        .await
}

/// Receipts handed to the worker at once per round.
const SPREAD_CONCURRENCY: usize = 64;

/// Raises the recipient's delivered position and, if it moved (or a
/// retry finds it where an earlier spread may have failed), hands the
/// receipt to the worker.
async fn spread(state: &AppState, user: i64, conv: &ConvId, mark: &ReadMark) -> Result<(), ClientError> {
    let key = subjects::delivered_receipt_key(user, conv);
    let now =
        crate::messaging::reads::raise_at(&state.storage.reads, &key, mark).await.map_err(ClientError::unavailable)?;
    if now.n != mark.n {
        return Ok(()); // already further: receipted before
    }
    send(state, user, conv, mark).await
}

/// Hands the receipt to the worker, which copies it to the peer's inbox.
async fn send(state: &AppState, user: i64, conv: &ConvId, mark: &ReadMark) -> Result<(), ClientError> {
    let body = serde_json::to_string(mark)
        .map_err(|e| ClientError::new(chat_nats::wire::ErrorCode::Internal, e.to_string()))?;
    let cid = format!("d{}", mark.up_to);
    let out = Outgoing {
        from: user,
        device: DEVICE,
        cid: &cid,
        conv,
        kind: MessageKind::Delivered,
        body,
        event: None,
        target: None,
        reply_to: None,
        mentions: Vec::new(),
    };
    state.sender.send(out).await.map(|_| ())
}
