//! History pages read from the history stream.
//!
//! JetStream has no backward read, so the sequencer keeps an index: for
//! every block of [`INDEX_BLOCK`] messages of a conversation, the stream
//! sequence and id of the block's first message (KV `chat_hindex`, key
//! `<conv>.<block>`). Every stored message carries its ordinal `n` in the
//! conversation. A page is then one forward read of at most `limit` plus
//! one block of messages, starting at a block boundary: the newest page
//! from the last message's ordinal, `before`/`after` by a binary search of
//! the blocks' first ids.

use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use async_nats::jetstream::stream::LastRawMessageErrorKind;
use chat_nats::envelope::StoredMessage;
use chat_nats::provision::Storage;
use chat_nats::subjects::{self, ConvId};
use futures::StreamExt;

/// Messages per index block (the sequencer's constant).
pub const INDEX_BLOCK: u64 = 64;

/// Which page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// The newest messages.
    Latest,
    /// Messages with ids below this one (older).
    Before(u64),
    /// Messages with ids above this one (newer).
    After(u64),
}

/// A page, oldest first, and whether more exist beyond it in its direction.
#[derive(Debug, Clone)]
pub struct PageOut {
    /// The messages, oldest first.
    pub messages: Vec<(u64, StoredMessage)>,
    /// More messages exist past this page.
    pub has_more: bool,
}

/// Reads one page of a conversation.
pub async fn page(st: &Storage, conv: &ConvId, page: Page, limit: usize) -> Result<PageOut, async_nats::Error> {
    let subject = subjects::history(conv);
    let last = match st.history.get_last_raw_message_by_subject(&subject).await {
        Ok(m) => (m.sequence, serde_json::from_slice::<StoredMessage>(&m.payload)?),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => {
            return Ok(PageOut { messages: vec![], has_more: false })
        }
        Err(e) => return Err(e.into()),
    };
    let (last_seq, last_n) = (last.0, last.1.n);
    let limit = limit as u64;
    match page {
        Page::Latest => {
            let from_n = last_n.saturating_sub(limit) + 1;
            let msgs =
                read(st, conv, block_start(st, conv, from_n).await?, last_seq, |m| m.n >= from_n, u64::MAX).await?;
            Ok(PageOut { has_more: from_n > 1, messages: msgs })
        }
        Page::Before(id) => {
            // Ordinal of the first message with an id >= `id`.
            let start = locate(st, conv, id).await?;
            let firsts = read(st, conv, start, last_seq, |m| m.id >= id, 1).await?;
            let end_n = firsts.first().map(|(_, m)| m.n).unwrap_or(last_n + 1) - 1;
            if end_n == 0 {
                return Ok(PageOut { messages: vec![], has_more: false });
            }
            let from_n = end_n.saturating_sub(limit) + 1;
            let msgs = read(
                st,
                conv,
                block_start(st, conv, from_n).await?,
                last_seq,
                |m| m.n >= from_n && m.n <= end_n,
                limit,
            )
            .await?;
            Ok(PageOut { has_more: from_n > 1, messages: msgs })
        }
        Page::After(id) => {
            let start = locate(st, conv, id).await?;
            let msgs = read(st, conv, start, last_seq, |m| m.id > id, limit).await?;
            let has_more = msgs.last().map(|(_, m)| m.n < last_n).unwrap_or(false);
            Ok(PageOut { messages: msgs, has_more })
        }
    }
}

/// Index entry of a block: (stream sequence, first id).
async fn block(st: &Storage, conv: &ConvId, b: u64) -> Result<Option<(u64, u64)>, async_nats::Error> {
    let Some(v) = st.hindex.get(subjects::hindex_key(conv, b)).await? else { return Ok(None) };
    let text = std::str::from_utf8(&v)?;
    let (seq, id) = text.split_once(' ').ok_or("malformed index entry")?;
    Ok(Some((seq.parse()?, id.parse()?)))
}

/// A stream sequence at or before the message with ordinal `n`.
async fn block_start(st: &Storage, conv: &ConvId, n: u64) -> Result<u64, async_nats::Error> {
    let mut b = n.saturating_sub(1) / INDEX_BLOCK;
    loop {
        if let Some((seq, _)) = block(st, conv, b).await? {
            return Ok(seq);
        }
        // A missing entry (never expected) falls back to an earlier block.
        if b == 0 {
            return Ok(1);
        }
        b -= 1;
    }
}

/// A stream sequence at or before the first message with an id >= `id`.
async fn locate(st: &Storage, conv: &ConvId, id: u64) -> Result<u64, async_nats::Error> {
    let subject = subjects::history(conv);
    let last: StoredMessage =
        serde_json::from_slice(&st.history.get_last_raw_message_by_subject(&subject).await?.payload)?;
    let (mut lo, mut hi) = (0u64, last.n.saturating_sub(1) / INDEX_BLOCK);
    let mut best = 1u64;
    // Largest block whose first id is below `id`.
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        match block(st, conv, mid).await? {
            Some((seq, first)) if first < id => {
                best = seq;
                lo = mid + 1;
            }
            Some(_) => {
                if mid == 0 {
                    break;
                }
                hi = mid - 1;
            }
            None => return Ok(1),
        }
    }
    Ok(best)
}

/// Reads forward from `start` up to `last_seq`, keeping messages that pass
/// `keep`, stopping after `max` kept.
async fn read(
    st: &Storage,
    conv: &ConvId,
    start: u64,
    last_seq: u64,
    keep: impl Fn(&StoredMessage) -> bool,
    max: u64,
) -> Result<Vec<(u64, StoredMessage)>, async_nats::Error> {
    let consumer = st
        .history
        .create_consumer(pull::OrderedConfig {
            filter_subject: subjects::history(conv),
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start.max(1) },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::new();
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let Ok(Some(m)) = next else { return Err("history read timed out".into()) };
        let m = m?;
        let seq = m.info()?.stream_sequence;
        let stored: StoredMessage = serde_json::from_slice(&m.payload)?;
        if keep(&stored) {
            out.push((seq, stored));
        }
        if seq >= last_seq || out.len() as u64 >= max {
            return Ok(out);
        }
    }
}
