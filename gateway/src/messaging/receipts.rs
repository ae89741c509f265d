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
//! receipts a round raised are spread as one ingress message of kind
//! `receipts` (up to [`MAX_BUNDLE`] each), which the worker owning the
//! partition of its first receipt copies to each peer's inbox
//! (`workers/src/reads.rs`): a receipt names messages already in the peer's
//! inbox, so any partition may take it. One message per flush instead of
//! one per receipt: the receipts of a flush used to reach the ingress
//! stream together as an atomic batch, which the sends stored on it
//! meanwhile waited for (see docs/benchmarks.md, tenth session). A receipt
//! whose raise has to be retried is spread on its own, as `delivered` on
//! its conversation's partition.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chat_nats::envelope::{BundledReceipt, MessageKind, ReadMark};
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
                let mut bundle = Vec::new();
                let mut retry = Vec::new();
                for (key, mark, r) in raised {
                    let Some((user, conv)) = whom.get(&key).cloned() else { continue };
                    match r {
                        Raised::Written => bundle.push(BundledReceipt { user, conv: conv.to_string(), mark }),
                        // Already there: spread again only if an earlier
                        // spread may have failed after its raise (the
                        // receipt's copy id dedupes).
                        Raised::Ahead(cur) => {
                            if serde_json::from_slice::<ReadMark>(&cur).is_ok_and(|c| c.n == mark.n) {
                                bundle.push(BundledReceipt { user, conv: conv.to_string(), mark });
                            }
                        }
                        Raised::Retry => retry.push((user, conv, mark)),
                    }
                }
                let bundles = bundle.chunks(MAX_BUNDLE).map(|b| send_bundle(&state, b));
                for done in futures::future::join_all(bundles).await {
                    if let Err(e) = done {
                        tracing::warn!(error = %e.message, "cannot spread a round of delivery receipts");
                    }
                }
                futures::stream::iter(retry)
                    .for_each_concurrent(SPREAD_CONCURRENCY, |(user, conv, mark)| {
                        let state = state.clone();
                        async move {
                            if let Err(e) = spread(&state, user, &conv, &mark).await {
                                tracing::warn!(user_id = user, conv = %conv, error = %e.message, "cannot spread a delivery receipt");
                            }
                        }
                    })
                    .await;
            }
        })
        .await
}

/// Receipts retried one by one at once per round.
const SPREAD_CONCURRENCY: usize = 64;

/// Most receipts in one `receipts` ingress message (~100 bytes each).
pub const MAX_BUNDLE: usize = 256;

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

/// Hands a round's receipts to a worker as one ingress message, on the
/// partition of the first one's conversation; its cid is a hash of the
/// receipts, so the same bundle sent twice is stored once.
async fn send_bundle(state: &AppState, bundle: &[BundledReceipt]) -> Result<(), ClientError> {
    let Some(first) = bundle.first() else { return Ok(()) };
    let internal = |e: String| ClientError::new(chat_nats::wire::ErrorCode::Internal, e);
    let conv =
        ConvId::parse(&first.conv).ok_or_else(|| internal(format!("receipt of a bad conversation {}", first.conv)))?;
    let body = serde_json::to_string(bundle).map_err(|e| internal(e.to_string()))?;
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&body, &mut h);
    let cid = format!("r{:016x}", std::hash::Hasher::finish(&h));
    hand_over(state, first.user, &conv, &cid, MessageKind::Receipts, body).await
}

/// Hands the receipt to the worker, which copies it to the peer's inbox.
async fn send(state: &AppState, user: i64, conv: &ConvId, mark: &ReadMark) -> Result<(), ClientError> {
    let body = serde_json::to_string(mark)
        .map_err(|e| ClientError::new(chat_nats::wire::ErrorCode::Internal, e.to_string()))?;
    hand_over(state, user, conv, &format!("d{}", mark.up_to), MessageKind::Delivered, body).await
}

/// Sends one receipt ingress message as `user`'s receipt device and waits
/// for the worker's answer.
async fn hand_over(
    state: &AppState,
    user: i64,
    conv: &ConvId,
    cid: &str,
    kind: MessageKind,
    body: String,
) -> Result<(), ClientError> {
    let out = Outgoing {
        from: user,
        device: DEVICE,
        cid,
        conv,
        kind,
        body,
        event: None,
        target: None,
        reply_to: None,
        mentions: Vec::new(),
    };
    state.sender.send(out).await.map(|_| ())
}
