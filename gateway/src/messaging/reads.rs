//! Read positions (KV `chat_read`, key `r.<user>.<conv>`, value a
//! [`ReadMark`]): moved by `read` frames and by the user's own sends
//! ([`OwnReads`]), only ever forwards (compare-and-set), and spread to the
//! user's other devices (and a 1:1 peer, as a receipt) through the worker,
//! which alone writes inboxes (`workers/src/reads.rs`).

use async_nats::jetstream::kv::{self, Operation};
use bytes::Bytes;
use chat_nats::envelope::{MessageKind, ReadMark, StoredMessage};
use chat_nats::subjects::{self, ConvId, ConvKind};
use chat_nats::wire::{ErrorCode, ServerFrame};

use crate::error::ClientError;
use crate::messaging::history::{self, Page, Reader};
use crate::messaging::marks::{self, Coalesced};
use crate::messaging::send::Outgoing;
use crate::AppState;

/// The conversation, if `user` takes part in it now (1:1 participant,
/// current group member); else `forbidden` (also for a malformed or
/// unknown one: the caller learns nothing).
pub async fn participant(state: &AppState, user: i64, conv: &str) -> Result<ConvId, ClientError> {
    let forbidden = || ClientError::forbidden("not a participant of this conversation");
    let c = ConvId::parse(conv).ok_or_else(forbidden)?;
    match c.kind() {
        ConvKind::Direct(a, b) if a == user || b == user => Ok(c),
        ConvKind::Direct(..) => Err(forbidden()),
        // Rooms have no read state (not part of the sync cursor either).
        ConvKind::Room(_) => Err(forbidden()),
        ConvKind::Group(g) => match state.db.role(g, user).await? {
            Some(_) => Ok(c),
            None => Err(forbidden()),
        },
    }
}

/// The stored message `id` of `conv`, if there is one.
pub async fn find(state: &AppState, conv: &ConvId, id: u64) -> Result<Option<StoredMessage>, ClientError> {
    if id == 0 {
        return Ok(None);
    }
    let rd = Reader { storage: &state.storage, cache: &state.history_index };
    let page = history::page(rd, conv, Page::After(id - 1), 1).await.map_err(ClientError::unavailable)?;
    Ok(page.messages.into_iter().map(|(_, m)| m).find(|m| m.id == id))
}

/// The user's read position in `conv`.
pub async fn get(kv: &kv::Store, user: i64, conv: &ConvId) -> Result<Option<ReadMark>, async_nats::Error> {
    Ok(match kv.entry(subjects::read_key(user, conv)).await? {
        Some(e) if e.operation == Operation::Put => serde_json::from_slice(&e.value).ok(),
        _ => None,
    })
}

/// Moves the position to `mark` unless it is already further; the position
/// after the call.
pub async fn raise(kv: &kv::Store, user: i64, conv: &ConvId, mark: &ReadMark) -> Result<ReadMark, async_nats::Error> {
    raise_at(kv, &subjects::read_key(user, conv), mark).await
}

/// Moves the position at `key` to `mark` unless it is already further (by
/// ordinal); the position after the call.
pub async fn raise_at(kv: &kv::Store, key: &str, mark: &ReadMark) -> Result<ReadMark, async_nats::Error> {
    let stored = ReadMark { receipt: false, ..mark.clone() };
    let value = Bytes::from(serde_json::to_vec(&stored)?);
    let ahead = |cur: &[u8]| serde_json::from_slice::<ReadMark>(cur).is_ok_and(|cur| cur.n >= mark.n);
    match crate::messaging::marks::raise_one(kv, key, value, 16, ahead).await {
        Ok(None) => Ok(stored),
        Ok(Some(cur)) => Ok(serde_json::from_slice(&cur)?),
        Err(e) => Err(format!("read position {e}").into()),
    }
}

/// Handles a `read` frame: the answer for the device that sent it.
pub async fn mark(
    state: &AppState,
    user: i64,
    device: &str,
    conv: &str,
    up_to: &str,
) -> Result<ServerFrame, ClientError> {
    let conv = participant(state, user, conv).await?;
    let id = subjects::parse_seq(up_to)
        .ok_or_else(|| ClientError::new(ErrorCode::BadFrame, "up_to must be a message id"))?;
    let msg = find(state, &conv, id)
        .await?
        .filter(|m| !m.kind.is_mark())
        .ok_or_else(|| ClientError::not_found("no such message in this conversation"))?;
    let wanted = ReadMark { up_to: msg.id, n: msg.n, receipt: false };
    let now = raise(&state.storage.reads, user, &conv, &wanted).await.map_err(ClientError::unavailable)?;
    if now.n == wanted.n {
        // Spread it (again, if an earlier attempt failed after the KV
        // write: the copies' ids dedupe).
        let receipt = matches!(conv.kind(), ConvKind::Direct(..)) && state.db.read_receipts(user).await?;
        let body = serde_json::to_string(&ReadMark { receipt, ..wanted.clone() })
            .map_err(|e| ClientError::new(ErrorCode::Internal, e.to_string()))?;
        let cid = format!("r{}", msg.id);
        let out = Outgoing {
            from: user,
            device,
            cid: &cid,
            conv: &conv,
            kind: MessageKind::Read,
            body,
            event: None,
            target: None,
            reply_to: None,
            mentions: Vec::new(),
        };
        state.sender.send(out).await?;
    }
    // The head, as the conversation list counts: an edit or delete carries
    // the ordinal reached.
    let last_n = chat_nats::history::head(&state.storage.history, &conv)
        .await
        .map_err(ClientError::unavailable)?
        .map_or(0, |(_, n)| n);
    Ok(ServerFrame::Read {
        conv: conv.to_string(),
        up_to: now.up_to.to_string(),
        n: Some(now.n),
        unread: Some(last_n.saturating_sub(now.n)),
        cursor: None,
    })
}

/// Read positions of users' own sends, coalesced: (user, conversation) →
/// (ordinal, id) of their latest own message. Sending from a session counts
/// as reading up to it; the position moves once per `CHAT_OWN_READ_FLUSH_MS`
/// per conversation however many messages were sent, and never waits on
/// the ack's path (the ack carries the ordinal, so nothing is looked up).
pub type OwnReads = Coalesced<(i64, ConvId), (u64, u64)>;

/// Writes own sends' read positions until the process ends (silently: every
/// device gets the message itself, and the conversation list counts
/// nothing up to a user's own last message as unread in the meantime).
/// Each round is one read and (under load) one batch
/// ([`marks::raise_many`]); a key a racing writer changed is raised on its
/// own.
pub async fn run_own(
    own: std::sync::Arc<OwnReads>,
    client: async_nats::Client,
    kv: kv::Store,
    coalesce: std::time::Duration,
) {
    own.run(coalesce, |round| {
        let (kv, client) = (kv.clone(), client.clone());
        async move {
            for (key, mark) in
                raise_round(&client, &kv, round.into_iter().map(|((u, c), m)| (subjects::read_key(u, &c), m))).await
            {
                if let Err(e) = raise_at(&kv, &key, &mark).await {
                    tracing::warn!(key, error = %e, "cannot move the read position to an own send");
                }
            }
        }
    })
    .await
}

/// Raises the read positions `(key, (ordinal, id))` of a round at once;
/// what is left to raise one by one (see [`marks::Raised::Retry`]), and
/// with [`marks::Raised`] for the others.
pub async fn raise_round(
    client: &async_nats::Client,
    kv: &kv::Store,
    round: impl Iterator<Item = (String, (u64, u64))>,
) -> Vec<(String, ReadMark)> {
    raise_round_with(client, kv, round)
        .await
        .into_iter()
        .filter(|(_, _, r)| *r == marks::Raised::Retry)
        .map(|(k, m, _)| (k, m))
        .collect()
}

/// [`raise_round`], with what happened to every key.
pub async fn raise_round_with(
    client: &async_nats::Client,
    kv: &kv::Store,
    round: impl Iterator<Item = (String, (u64, u64))>,
) -> Vec<(String, ReadMark, marks::Raised)> {
    let items: Vec<(String, Bytes)> = round
        .filter_map(|(key, (n, up_to))| {
            let stored = ReadMark { up_to, n, receipt: false };
            serde_json::to_vec(&stored).ok().map(|v| (key, Bytes::from(v)))
        })
        .collect();
    let n_of = |v: &[u8]| serde_json::from_slice::<ReadMark>(v).ok().map(|m| m.n);
    marks::raise_many(client, kv, items, |cur, want| n_of(cur).is_some_and(|c| Some(c) >= n_of(want)))
        .await
        .into_iter()
        .filter_map(|(key, value, r)| serde_json::from_slice::<ReadMark>(&value).ok().map(|m| (key, m, r)))
        .collect()
}
