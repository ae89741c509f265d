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

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use chat_nats::envelope::{MessageKind, Original, StoredMessage};
pub use chat_nats::history::INDEX_BLOCK;
use chat_nats::history::{self as hist, direct_get};
use chat_nats::provision::Storage;
use chat_nats::subjects::{self, ConvId};
use futures::StreamExt;

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

/// Index entries this gateway has read. An entry never changes once the
/// sequencer has written it (a block's first message is fixed), so entries
/// are cached without invalidation; only absent entries are not cached.
/// Bounded by `CHAT_HISTORY_INDEX_CACHE` entries (about 100 bytes each):
/// when full, an arbitrary entry makes room.
#[derive(Debug)]
pub struct IndexCache {
    entries: Mutex<HashMap<(ConvId, u64), (u64, u64)>>,
    capacity: usize,
}

impl IndexCache {
    /// An empty cache holding at most `capacity` entries (0: no caching).
    pub fn new(capacity: usize) -> IndexCache {
        IndexCache { entries: Mutex::new(HashMap::new()), capacity }
    }

    fn get(&self, conv: &ConvId, b: u64) -> Option<(u64, u64)> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).get(&(conv.clone(), b)).copied()
    }

    fn put(&self, conv: &ConvId, b: u64, entry: (u64, u64)) {
        if self.capacity == 0 {
            return;
        }
        let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
        }
        map.insert((conv.clone(), b), entry);
    }
}

/// The stream and the index cache a page is read with.
#[derive(Clone, Copy)]
pub struct Reader<'a> {
    /// Streams and buckets.
    pub storage: &'a Storage,
    /// Cached index entries.
    pub cache: &'a IndexCache,
}

/// Reads one page of a conversation, each message in its current state:
/// edited text with `edited_at`, and a tombstone (no body, `deleted`) at a
/// deleted message's place. Deleted messages are erased from history, so
/// a page reads around the gaps they leave and fills them from the
/// conversation's event subjects (one `multi_last` request per page).
pub async fn page(rd: Reader<'_>, conv: &ConvId, page: Page, limit: usize) -> Result<PageOut, async_nats::Error> {
    let st = rd.storage;
    let Some((_, last_n)) = hist::head(&st.history, conv).await? else {
        return Ok(PageOut { messages: vec![], has_more: false });
    };
    let last_seq = hist::last_message(&st.history, conv).await?.map_or(0, |(seq, _)| seq);
    let lim = limit as u64;
    let mut out = match page {
        Page::Latest => {
            let from_n = last_n.saturating_sub(lim) + 1;
            let start = block_start(rd, conv, from_n).await?;
            let msgs = read(st, conv, start, last_seq, |m| m.n >= from_n, u64::MAX, last_n).await?;
            with_changes(rd, conv, msgs, (from_n, last_n), |_| true).await?
        }
        Page::Before(id) => {
            // Block `b` holds the last message with an id below `id` (or
            // none does). One forward read from `limit` messages before that
            // block through the end of it finds the page: ordinals are
            // contiguous (a deleted message's tombstone keeps its place), so
            // the page is the last `limit` entries with an id below `id`.
            let Some(b) = locate(rd, conv, id, last_n).await? else {
                return Ok(PageOut { messages: vec![], has_more: false });
            };
            let from_n = (b * INDEX_BLOCK + 1).saturating_sub(lim).max(1);
            let end_n = ((b + 1) * INDEX_BLOCK).min(last_n);
            let start = block_start(rd, conv, from_n).await?;
            let msgs = read(st, conv, start, last_seq, |m| m.n >= from_n && m.id < id, u64::MAX, end_n).await?;
            with_changes(rd, conv, msgs, (from_n, end_n), |m| m.id < id).await?
        }
        Page::After(id) => {
            let from_n = match locate(rd, conv, id, last_n).await? {
                Some(b) => b * INDEX_BLOCK + 1,
                None => 1,
            };
            let start = block_start(rd, conv, from_n).await?;
            let msgs = read(st, conv, start, last_seq, |m| m.id > id, lim, last_n).await?;
            // Tombstones count up to the last message read, or to the end
            // when the read got fewer than it asked for.
            let to_n = if msgs.len() as u64 >= lim { msgs.last().map_or(last_n, |(_, m)| m.n) } else { last_n };
            let mut all = with_changes(rd, conv, msgs, (from_n, to_n), |m| m.id > id).await?;
            all.truncate(limit);
            let has_more = all.last().is_some_and(|(_, m)| m.n < last_n);
            return Ok(PageOut { messages: all, has_more });
        }
    };
    // Latest and before: the newest `limit` of them.
    let skip = out.len().saturating_sub(limit);
    out.drain(..skip);
    let has_more = out.first().is_some_and(|(_, m)| m.n > 1);
    Ok(PageOut { messages: out, has_more })
}

/// The current state of the messages read and the tombstones of deleted
/// messages with ordinals in `span` that pass `keep`, in ordinal order. A
/// tombstone's sequence is 0.
async fn with_changes(
    rd: Reader<'_>,
    conv: &ConvId,
    mut msgs: Vec<(u64, StoredMessage)>,
    span: (u64, u64),
    keep: impl Fn(&StoredMessage) -> bool,
) -> Result<Vec<(u64, StoredMessage)>, async_nats::Error> {
    let (lo, hi) = (span.0.max(1), span.1);
    if lo > hi {
        return Ok(msgs);
    }
    let blocks = (lo - 1) / INDEX_BLOCK..=(hi - 1) / INDEX_BLOCK;
    // Each message's edit or delete and its reaction counts: at most two
    // entries per message, in one request.
    let filters: Vec<String> = blocks
        .flat_map(|b| [subjects::history_events_of_block(conv, b), subjects::history_reactions_of_block(conv, b)])
        .collect();
    let changes = direct_get::last_matching(
        &rd.storage.js.client(),
        subjects::HISTORY_STREAM,
        &filters,
        direct_get::MAX_SUBJECTS,
        Duration::from_secs(5),
    )
    .await?;
    let mut by_target: HashMap<u64, StoredMessage> = HashMap::with_capacity(changes.len());
    let mut reactions: HashMap<u64, StoredMessage> = HashMap::new();
    let mut deleted: HashSet<u64> = HashSet::new();
    for payload in changes.values() {
        let Ok(e) = serde_json::from_slice::<StoredMessage>(payload) else { continue };
        let Some(t) = e.target else { continue };
        if e.kind == MessageKind::Delete {
            deleted.insert(t);
        }
        if e.kind == MessageKind::React {
            reactions.insert(t, e);
        } else {
            by_target.insert(t, e);
        }
    }
    for (_, m) in msgs.iter_mut() {
        if let Some(e) = by_target.remove(&m.id) {
            apply(m, &e);
        }
        if let Some(r) = reactions.remove(&m.id).filter(|_| !m.deleted) {
            m.reactions = r.reactions;
        }
    }
    replies(rd, conv, &mut msgs, (lo, hi), deleted).await?;
    if by_target.is_empty() {
        return Ok(msgs);
    }
    // What is left: deleted messages, erased from history.
    for e in by_target.into_values() {
        let (Some(target), Some(o)) = (e.target, e.original) else { continue };
        if e.kind != MessageKind::Delete || o.n < lo || o.n > hi {
            continue;
        }
        let mut t = tombstone(conv, target, o);
        apply(&mut t, &e);
        if keep(&t) {
            msgs.push((0, t));
        }
    }
    msgs.sort_by_key(|(_, m)| m.n);
    Ok(msgs)
}

/// Replies whose answered message is deleted lose its preview (and say
/// `deleted`): from the page's own deletes (`gone`) when it lies in `span`, else
/// one lookup of its event subject per such reply (at most one per message
/// of the page, all at once).
async fn replies(
    rd: Reader<'_>,
    conv: &ConvId,
    msgs: &mut [(u64, StoredMessage)],
    span: (u64, u64),
    mut gone: HashSet<u64>,
) -> Result<(), async_nats::Error> {
    let outside: Vec<(u64, u64)> = msgs
        .iter()
        .filter_map(|(_, m)| m.reply_to.as_ref())
        .filter(|r| r.n < span.0 || r.n > span.1)
        .map(|r| (r.n, r.id))
        .collect();
    let history = &rd.storage.history;
    let looked = futures::future::join_all(
        outside
            .iter()
            .map(|&(n, id)| async move { hist::last_on(history, &subjects::history_event(conv, n, id)).await }),
    )
    .await;
    for (&(_, id), e) in outside.iter().zip(looked) {
        if e?.is_some_and(|(_, e)| e.kind == MessageKind::Delete) {
            gone.insert(id);
        }
    }
    for (_, m) in msgs.iter_mut() {
        if m.deleted {
            m.reply_to = None;
        } else if let Some(r) = m.reply_to.as_mut().filter(|r| gone.contains(&r.id)) {
            r.preview = None;
            r.deleted = true;
        }
    }
    Ok(())
}

/// Applies the target's current state (its last edit or its delete).
fn apply(m: &mut StoredMessage, change: &StoredMessage) {
    match change.kind {
        MessageKind::Edit => {
            m.body.clone_from(&change.body);
            m.edited_at = Some(change.ts);
        }
        MessageKind::Delete => {
            m.body.clear();
            m.deleted = true;
            m.edited_at = None;
        }
        _ => {}
    }
}

/// The place of a deleted message in a page.
fn tombstone(conv: &ConvId, id: u64, o: Original) -> StoredMessage {
    StoredMessage {
        id,
        conv: conv.to_string(),
        from: o.from,
        device: String::new(),
        cid: String::new(),
        kind: MessageKind::Text,
        body: String::new(),
        ts: o.ts,
        n: o.n,
        event: None,
        target: None,
        original: None,
        edited_at: None,
        deleted: true,
        ..Default::default()
    }
}

/// One message of a conversation by id, in its current state (edits
/// applied), with its history sequence; `None` if there is no such message
/// or it was deleted.
pub async fn find(rd: Reader<'_>, conv: &ConvId, id: u64) -> Result<Option<(u64, StoredMessage)>, async_nats::Error> {
    let st = rd.storage;
    let Some((_, last_n)) = hist::head(&st.history, conv).await? else { return Ok(None) };
    // The last block whose first id is at or below `id`.
    let Some(b) = locate(rd, conv, id.saturating_add(1), last_n).await? else { return Ok(None) };
    let start = block_start(rd, conv, b * INDEX_BLOCK + 1).await?;
    let end_n = ((b + 1) * INDEX_BLOCK).min(last_n);
    let Some((seq, mut m)) = read(st, conv, start, u64::MAX, |m| m.id == id, 1, end_n).await?.pop() else {
        return Ok(None);
    };
    match hist::last_on(&st.history, &subjects::history_event(conv, m.n, id)).await? {
        Some((_, e)) if e.kind == MessageKind::Delete => return Ok(None),
        Some((_, e)) => apply(&mut m, &e),
        None => {}
    }
    Ok(Some((seq, m)))
}

/// Index entry of a block: (stream sequence, first id).
async fn block(rd: Reader<'_>, conv: &ConvId, b: u64) -> Result<Option<(u64, u64)>, async_nats::Error> {
    if let Some(e) = rd.cache.get(conv, b) {
        return Ok(Some(e));
    }
    let Some(v) = rd.storage.hindex.get(subjects::hindex_key(conv, b)).await? else { return Ok(None) };
    let text = std::str::from_utf8(&v)?;
    let (seq, id) = text.split_once(' ').ok_or("malformed index entry")?;
    let entry = (seq.parse()?, id.parse()?);
    rd.cache.put(conv, b, entry);
    Ok(Some(entry))
}

/// A stream sequence at or before the message with ordinal `n`.
async fn block_start(rd: Reader<'_>, conv: &ConvId, n: u64) -> Result<u64, async_nats::Error> {
    let mut b = n.saturating_sub(1) / INDEX_BLOCK;
    loop {
        if let Some((seq, _)) = block(rd, conv, b).await? {
            return Ok(seq);
        }
        // A missing entry (never expected) falls back to an earlier block.
        if b == 0 {
            return Ok(1);
        }
        b -= 1;
    }
}

/// The last block whose first message has an id below `id`, if any;
/// `last_n` is the conversation's last ordinal. Ids are snowflakes, so they
/// grow with time: the search interpolates on them, falling back to
/// bisection whenever a guess fails to halve the range (at most about twice
/// the probes of a binary search; ~2-4 for evenly spread messages instead
/// of ~14 at a million messages). A missing entry (never expected)
/// degrades to block 0.
async fn locate(rd: Reader<'_>, conv: &ConvId, id: u64, last_n: u64) -> Result<Option<u64>, async_nats::Error> {
    let top = last_n.saturating_sub(1) / INDEX_BLOCK;
    let Some((_, first)) = block(rd, conv, 0).await? else { return Ok(Some(0)) };
    if first >= id {
        return Ok(None);
    }
    let Some((_, last)) = block(rd, conv, top).await? else { return Ok(Some(0)) };
    if last < id {
        return Ok(Some(top));
    }
    let mut s = Search::new(id, (0, first), (top, last));
    while let Some(b) = s.probe() {
        match block(rd, conv, b).await? {
            Some((_, f)) => s.observe(b, f),
            None => return Ok(Some(0)),
        }
    }
    Ok(Some(s.answer()))
}

/// The state of [`locate`]'s search: block `lo` starts below the target
/// id, block `hi` at or above it.
#[derive(Debug, Clone, Copy)]
struct Search {
    target: u64,
    lo: (u64, u64),
    hi: (u64, u64),
    interpolate: bool,
    span: u64,
}

impl Search {
    fn new(target: u64, lo: (u64, u64), hi: (u64, u64)) -> Search {
        Search { target, lo, hi, interpolate: true, span: hi.0 - lo.0 }
    }

    /// The next block to read, or `None` when `lo` is the answer.
    fn probe(&mut self) -> Option<u64> {
        let (lo, hi) = (self.lo.0, self.hi.0);
        if hi - lo <= 1 {
            return None;
        }
        self.span = hi - lo;
        let b = if self.interpolate {
            let frac = (self.target - self.lo.1) as f64 / (self.hi.1 - self.lo.1).max(1) as f64;
            lo + ((hi - lo) as f64 * frac) as u64
        } else {
            lo + (hi - lo) / 2
        };
        Some(b.clamp(lo + 1, hi - 1))
    }

    /// Records block `b`'s first id.
    fn observe(&mut self, b: u64, first: u64) {
        let was = self.interpolate;
        if first < self.target {
            self.lo = (b, first);
        } else {
            self.hi = (b, first);
        }
        // Keep interpolating while it halves the range; after a bisection,
        // try interpolating again.
        self.interpolate = !was || (self.hi.0 - self.lo.0) * 2 <= self.span;
    }

    fn answer(&self) -> u64 {
        self.lo.0
    }
}

/// Messages asked for per batched direct get; `max_bytes` bounds a batch
/// of long messages (the server then ends it early and we ask again).
const BATCH: u64 = 256;
const BATCH_BYTES: u64 = 4 << 20;

/// Reads forward from `start` up to `last_seq` or the message with ordinal
/// `end_n`, keeping messages that pass `keep`, stopping after `max` kept.
///
/// One batched direct get (JetStream 2.11+: `batch` and `next_by_subj` in
/// a `$JS.API.DIRECT.GET` request; the server streams the messages and
/// ends with a `204 EOB` status) instead of creating an ordered consumer
/// per page: one request and no consumer state on the server. async-nats
/// has no API for it, so the request is made here.
async fn read(
    st: &Storage,
    conv: &ConvId,
    start: u64,
    last_seq: u64,
    keep: impl Fn(&StoredMessage) -> bool,
    max: u64,
    end_n: u64,
) -> Result<Vec<(u64, StoredMessage)>, async_nats::Error> {
    let client = st.js.client();
    let api = direct_get::subject(subjects::HISTORY_STREAM);
    let subject = subjects::history(conv);
    let mut out = Vec::new();
    let mut from = start.max(1);
    loop {
        let reply = client.new_inbox();
        let mut responses = client.subscribe(reply.clone()).await?;
        let req = serde_json::json!({"seq": from, "next_by_subj": subject, "batch": BATCH, "max_bytes": BATCH_BYTES});
        client.publish_with_reply(api.clone(), reply, serde_json::to_vec(&req)?.into()).await?;
        let mut got = 0u64;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(5), responses.next()).await;
            let Ok(Some(m)) = next else { return Err("history read timed out".into()) };
            match m.status {
                // End of batch: more may follow if the batch was cut short.
                Some(s) if s.as_u16() == direct_get::END_OF_BATCH => break,
                // Nothing at or after `from`.
                Some(s) if s.as_u16() == direct_get::NOT_FOUND => return Ok(out),
                Some(s) => return Err(format!("history read failed: {s} {:?}", m.description).into()),
                None => {}
            }
            let seq: u64 = m
                .headers
                .as_ref()
                .and_then(|h| h.get(direct_get::SEQUENCE_HEADER))
                .and_then(|v| v.as_str().parse().ok())
                .ok_or("direct get reply without Nats-Sequence")?;
            got += 1;
            from = seq + 1;
            let stored: StoredMessage = serde_json::from_slice(&m.payload)?;
            let at_end = seq >= last_seq || stored.n >= end_n;
            if keep(&stored) {
                out.push((seq, stored));
            }
            if at_end || out.len() as u64 >= max {
                return Ok(out);
            }
        }
        if got == 0 {
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Search;

    /// Runs the search over `firsts` (ascending) for every id from below
    /// the first to above the last; checks the answer and returns the most
    /// probes any search took.
    fn check(firsts: &[u64]) -> usize {
        let mut worst = 0;
        let max = *firsts.last().unwrap() + 2;
        let step = (max / 2000).max(1);
        let mut id = firsts[0] + 1;
        while id < max {
            let want = firsts.iter().rposition(|&f| f < id).unwrap() as u64;
            let top = firsts.len() as u64 - 1;
            let got = if firsts[top as usize] < id {
                top
            } else {
                let mut s = Search::new(id, (0, firsts[0]), (top, firsts[top as usize]));
                let mut probes = 0;
                while let Some(b) = s.probe() {
                    probes += 1;
                    s.observe(b, firsts[b as usize]);
                }
                worst = worst.max(probes);
                s.answer()
            };
            assert_eq!(got, want, "id {id}");
            id += step;
        }
        worst
    }

    #[test]
    fn interpolation_finds_the_block_in_few_probes_when_spread_evenly() {
        let even: Vec<u64> = (0..15_625u64).map(|b| 1_000_000 + b * 64 * 1000).collect();
        assert!(check(&even) <= 4, "{}", check(&even));
    }

    #[test]
    fn skewed_ids_still_take_at_most_twice_a_binary_search() {
        // Bursts: long quiet gaps, then many blocks within a millisecond.
        let mut skewed = Vec::new();
        let mut t = 5u64;
        for b in 0..15_625u64 {
            t += if b % 1000 == 0 { 10_000_000_000 } else { 3 };
            skewed.push(t);
        }
        let worst = check(&skewed);
        assert!(worst <= 2 * 14 + 2, "{worst} probes");
        // Tiny and two-block conversations.
        check(&[10, 20]);
        check(&[10, 20, 30]);
    }
}
