//! Facts about the history stream that the sequencer (writer), the
//! gateways (readers) and the benchmarks share: the index block size, the
//! last-message lookup, and the JetStream direct-get protocol used to read
//! pages (async-nats 0.51 has no API for batched direct gets).

use async_nats::jetstream::stream::{LastRawMessageErrorKind, Stream};

use crate::envelope::StoredMessage;
use crate::subjects::{self, ConvId};

/// Messages per history index block: the sequencer writes an index entry
/// (KV `chat_hindex`, key `<conv>.<block>`) for the first message of each
/// block, and readers page from block boundaries.
pub const INDEX_BLOCK: u64 = 64;

/// The last stored message of a conversation with its stream sequence, or
/// `None` for a conversation with no messages yet.
pub async fn last_message(history: &Stream, conv: &ConvId) -> Result<Option<(u64, StoredMessage)>, async_nats::Error> {
    last_on(history, &subjects::history(conv)).await
}

/// The last history entry on `subject` (wildcards allowed) with its stream
/// sequence, or `None` when there is none: a conversation's last message,
/// a target's current state on its event subject, or a conversation's
/// last event.
pub async fn last_on(history: &Stream, subject: &str) -> Result<Option<(u64, StoredMessage)>, async_nats::Error> {
    match history.get_last_raw_message_by_subject(subject).await {
        Ok(m) => Ok(Some((m.sequence, serde_json::from_slice(&m.payload)?))),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A conversation's head: the highest id and ordinal anything of it was
/// stored with. Its last message alone is not enough: an edit or delete
/// (on the event subjects) has a higher id, and a deleted last message is
/// erased, so the last one left may have a lower ordinal than the
/// conversation reached (events carry the ordinal reached when they were
/// stored). `None` for a conversation with nothing stored.
pub async fn head(history: &Stream, conv: &ConvId) -> Result<Option<(u64, u64)>, async_nats::Error> {
    let last = last_message(history, conv).await?.map(|(_, m)| (m.id, m.n));
    let event = last_on(history, &subjects::history_events(conv)).await?.map(|(_, e)| (e.id, e.n));
    Ok(match (last, event) {
        (Some(a), Some(b)) => Some((a.0.max(b.0), a.1.max(b.1))),
        (a, b) => a.or(b),
    })
}

/// The JetStream direct-get API (2.11+ batch form): a request
/// `{"seq", "next_by_subj", "batch", "max_bytes"}` on
/// [`direct_get::subject`] is answered by one message per stored entry,
/// each with its sequence in [`direct_get::SEQUENCE_HEADER`], then a status
/// message [`direct_get::END_OF_BATCH`].
pub mod direct_get {
    /// The request subject for `stream`.
    pub fn subject(stream: &str) -> String {
        format!("$JS.API.DIRECT.GET.{stream}")
    }

    /// Status that ends a batch (`204 EOB`); more may follow if the batch
    /// was cut short by `max_bytes`.
    pub const END_OF_BATCH: u16 = 204;

    /// Status when nothing is stored at or after the requested sequence.
    pub const NOT_FOUND: u16 = 404;

    /// Header carrying each reply's stream sequence.
    pub const SEQUENCE_HEADER: &str = "Nats-Sequence";

    /// Header carrying each reply's subject.
    pub const SUBJECT_HEADER: &str = "Nats-Subject";

    /// Most subjects asked for in one [`last_of_many`] request (the server
    /// answers at most 1,024).
    pub const MAX_SUBJECTS: usize = 1024;

    /// The last message of each of `subjects` in `stream`, by subject, in
    /// one request (`multi_last`) instead of one per subject. A subject
    /// with no message, or whose last message is a KV delete or purge
    /// marker, is absent from the answer.
    pub async fn last_of_many(
        client: &async_nats::Client,
        stream: &str,
        subjects: &[String],
        timeout: std::time::Duration,
    ) -> Result<std::collections::HashMap<String, bytes::Bytes>, async_nats::Error> {
        let mut out = std::collections::HashMap::with_capacity(subjects.len());
        for chunk in subjects.chunks(MAX_SUBJECTS) {
            out.extend(last_matching(client, stream, chunk, chunk.len(), timeout).await?);
        }
        Ok(out)
    }

    /// The last message of every subject matching one of `filters`
    /// (wildcards allowed), at most `max` of them (at most
    /// [`MAX_SUBJECTS`]), by subject, in one `multi_last` request. As in
    /// [`last_of_many`], KV delete and purge markers are left out.
    pub async fn last_matching(
        client: &async_nats::Client,
        stream: &str,
        filters: &[String],
        max: usize,
        timeout: std::time::Duration,
    ) -> Result<std::collections::HashMap<String, bytes::Bytes>, async_nats::Error> {
        let all = last_entries(client, stream, filters, max, timeout).await?;
        Ok(all.into_iter().filter_map(|(subject, e)| e.payload.map(|p| (subject, p))).collect())
    }

    /// The last entry of a subject: its stream sequence (a KV key's
    /// revision) and its payload, `None` for a KV delete or purge marker.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct LastEntry {
        /// Stream sequence of the entry.
        pub seq: u64,
        /// The payload; `None` if the entry is a KV delete or purge marker.
        pub payload: Option<bytes::Bytes>,
    }

    /// Like [`last_matching`], with each entry's sequence, markers included:
    /// what a compare-and-set of many keys at once needs.
    pub async fn last_entries(
        client: &async_nats::Client,
        stream: &str,
        filters: &[String],
        max: usize,
        timeout: std::time::Duration,
    ) -> Result<std::collections::HashMap<String, LastEntry>, async_nats::Error> {
        use futures::StreamExt;
        let mut out = std::collections::HashMap::new();
        if filters.is_empty() {
            return Ok(out);
        }
        let reply = client.new_inbox();
        let mut responses = client.subscribe(reply.clone()).await?;
        let req = serde_json::json!({"multi_last": filters, "batch": max.min(MAX_SUBJECTS)});
        client.publish_with_reply(subject(stream), reply, serde_json::to_vec(&req)?.into()).await?;
        loop {
            let Ok(Some(m)) = tokio::time::timeout(timeout, responses.next()).await else {
                return Err(format!("direct get of {} filters from {stream} timed out", filters.len()).into());
            };
            match m.status {
                Some(s) if s.as_u16() == END_OF_BATCH || s.as_u16() == NOT_FOUND => break,
                Some(s) => return Err(format!("direct get from {stream} failed: {s} {:?}", m.description).into()),
                None => {}
            }
            let headers = m.headers.as_ref();
            let deleted = headers.and_then(|h| h.get("KV-Operation")).is_some();
            let Some(subject) = headers.and_then(|h| h.get(SUBJECT_HEADER)) else {
                return Err("direct get reply without Nats-Subject".into());
            };
            let Some(seq) = headers.and_then(|h| h.get(SEQUENCE_HEADER)).and_then(|v| v.as_str().parse().ok()) else {
                return Err("direct get reply without Nats-Sequence".into());
            };
            let payload = (!deleted).then_some(m.payload);
            out.insert(subject.as_str().to_owned(), LastEntry { seq, payload });
        }
        Ok(out)
    }
}
