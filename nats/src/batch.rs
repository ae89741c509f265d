//! Atomic batch publishing (ADR-50) over a plain [`async_nats::Client`].
//!
//! An atomic batch is up to [`DEFAULT_MAX_ENTRIES`] messages to the
//! subjects of **one** stream that the server stores all together or not at
//! all, with consecutive sequences in batch order. nats-server 2.15.1
//! fsyncs the whole batch once (see [`crate::provision::check_batch_server`]),
//! which is why the write path groups many messages into one.
//!
//! The protocol is three headers on ordinary messages: every entry carries
//! `Nats-Batch-Id` and `Nats-Batch-Sequence: 1..n`; entries `1..n-1` are
//! plain publishes with no reply subject, and entry `n` also carries
//! `Nats-Batch-Commit: 1` and is sent as a request. The server answers the
//! commit with one ack `{"stream":..,"seq":<last>,"batch":..,"count":n}`,
//! from which entry `i` (1-based) has sequence `seq - count + i`, or with an
//! error that rejected the whole batch ([`BatchError`]).
//!
//! The stream must have `allow_atomic_publish` (JSON `allow_atomic`) set.
//!
//! A batch has a fixed cost (several ms on this machine, against one fsync
//! for a plain publish), so a lone message is better sent as a plain
//! publish; a batch of one entry works nonetheless.
//!
//! # Rules a caller must keep
//!
//! - One stream per batch: a batch whose subjects span streams is rejected
//!   and stores nothing.
//! - `Nats-Msg-Id` is allowed, but one id already known to the stream's
//!   duplicate window rejects the **whole** batch
//!   ([`BatchError::DuplicateMsgId`]): never mix retried and new messages.
//! - Only entry 1 may carry `Nats-Expected-Last-Sequence`; set it with
//!   [`AtomicBatch::expect_last_sequence`]. A single writer uses it to learn
//!   the fate of a batch whose outcome was unknown: commit the same entries
//!   again with the same expectation; [`BatchError::WrongLastSequence`]
//!   then reports the stream's actual last sequence (the first attempt
//!   landed if it moved by exactly the batch's length).
//! - Every [`AtomicBatch::commit`] call uses a fresh batch id, so calling it
//!   again after a failure never joins a half-sent earlier attempt.

use std::ops::RangeInclusive;
use std::time::Duration;

use async_nats::header::{NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE, NATS_EXPECTED_LAST_SEQUENCE};
use async_nats::{HeaderMap, Subject};
use bytes::Bytes;
use serde::Deserialize;
use thiserror::Error;

/// Entries per batch that nats-server accepts unless its
/// `jetstream.limits.batch.max_msgs` raises the limit.
pub const DEFAULT_MAX_ENTRIES: usize = 1000;
/// Longest batch id the server accepts.
pub const MAX_BATCH_ID_LEN: usize = 64;
/// How long a commit waits for the server's ack before the outcome is
/// unknown. A 1,000-entry commit takes tens of ms here.
pub const DEFAULT_COMMIT_TIMEOUT: Duration = Duration::from_secs(5);

/// nats-server error codes of batch publishing (`server/errors.json`).
mod code {
    pub const WRONG_LAST_SEQUENCE: u64 = 10071;
    pub const WRONG_LAST_SEQUENCE_CONSTANT: u64 = 10164;
    pub const DISABLED: u64 = 10174;
    pub const INCOMPLETE: u64 = 10176;
    pub const TOO_LARGE: u64 = 10199;
    pub const DUPLICATE_MSG_ID: u64 = 10201;
}

/// Limits of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    /// Most entries [`AtomicBatch::push`] accepts (the server's
    /// `jetstream.limits.batch.max_msgs`, [`DEFAULT_MAX_ENTRIES`] unless
    /// raised there).
    pub max_entries: usize,
    /// How long [`AtomicBatch::commit`] waits for the ack.
    pub commit_timeout: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig { max_entries: DEFAULT_MAX_ENTRIES, commit_timeout: DEFAULT_COMMIT_TIMEOUT }
    }
}

/// One message of a batch.
#[derive(Debug, Clone)]
pub struct Entry {
    /// A subject of the batch's stream.
    pub subject: Subject,
    /// The caller's headers (`Nats-Msg-Id`, say); the batch headers are
    /// added on commit and replace any of the same name.
    pub headers: HeaderMap,
    /// The message body.
    pub payload: Bytes,
}

/// A batch that [`AtomicBatch::commit`] stores all at once.
#[derive(Debug, Clone)]
pub struct AtomicBatch {
    entries: Vec<Entry>,
    expected_last_seq: Option<u64>,
    config: BatchConfig,
}

/// What the server stored: entry `i` (0-based, in push order) has stream
/// sequence `first_seq() + i`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    /// The stream that stored the batch.
    pub stream: String,
    /// The id this commit used.
    pub batch_id: String,
    /// Sequence of the last entry.
    pub last_seq: u64,
    /// Number of entries stored (the batch's length).
    pub count: u64,
}

impl Committed {
    /// Sequence of the first entry.
    pub fn first_seq(&self) -> u64 {
        self.last_seq + 1 - self.count
    }

    /// Sequence of entry `index` (0-based), if the batch has it.
    pub fn seq_of(&self, index: usize) -> Option<u64> {
        (index < self.count as usize).then(|| self.first_seq() + index as u64)
    }

    /// Every entry's sequence, in push order.
    pub fn sequences(&self) -> RangeInclusive<u64> {
        self.first_seq()..=self.last_seq
    }
}

/// Why a batch was not (or may not have been) stored.
#[derive(Debug, Error)]
pub enum BatchError {
    /// [`AtomicBatch::commit`] on a batch with no entries; nothing sent.
    #[error("an atomic batch needs at least one entry")]
    Empty,
    /// [`AtomicBatch::push`] beyond [`BatchConfig::max_entries`]; the entry
    /// was not added.
    #[error("atomic batch is full: {max} entries at most (raise jetstream.limits.batch.max_msgs on the server first)")]
    Full {
        /// The configured limit.
        max: usize,
    },
    /// The server's batch limit is lower than the batch (10199); nothing
    /// stored.
    #[error("atomic batch of {entries} entries exceeds the server's limit: {description}")]
    TooLarge {
        /// Entries in the batch.
        entries: usize,
        /// What the server said.
        description: String,
    },
    /// An entry's `Nats-Msg-Id` is already in the stream's duplicate
    /// window, or repeats inside the batch (10201); nothing stored.
    #[error("atomic batch rejected: it contains a duplicate Nats-Msg-Id ({description})")]
    DuplicateMsgId {
        /// What the server said.
        description: String,
    },
    /// The stream's last sequence is not the one set with
    /// [`AtomicBatch::expect_last_sequence`] (10071, or 10164 without a
    /// sequence); nothing stored.
    #[error("atomic batch rejected: expected last sequence {expected:?}, the stream's is {actual:?}")]
    WrongLastSequence {
        /// What the batch expected.
        expected: Option<u64>,
        /// The stream's actual last sequence, when the server said it.
        actual: Option<u64>,
    },
    /// The stream does not have `allow_atomic_publish` set (10174); nothing
    /// stored.
    #[error("stream {stream:?} does not allow atomic publish: set allow_atomic_publish in its config")]
    AtomicPublishDisabled {
        /// The stream, when the server named it.
        stream: Option<String>,
    },
    /// The server saw a gap in the batch's entries and abandoned it
    /// (10176): entries lost on a reconnect, the batch idle for more than
    /// 10 s, or subjects spanning two streams; nothing stored.
    #[error("atomic batch incomplete and abandoned by the server: {description}")]
    Incomplete {
        /// What the server said.
        description: String,
    },
    /// No stream listens on the commit's subject; nothing stored.
    #[error("no stream stores subject {subject}")]
    NoStream {
        /// The commit's subject.
        subject: String,
    },
    /// Entry `index` could not be handed to the client (bad subject, larger
    /// than `max_payload`, connection closed); the commit was not sent, so
    /// nothing is stored (the server drops the open batch after 10 s).
    #[error("entry {index} of the atomic batch was not sent: {source}")]
    NotSent {
        /// 0-based index of the entry.
        index: usize,
        /// The client's error.
        source: async_nats::Error,
    },
    /// The commit was sent but no ack arrived (timeout, connection lost):
    /// the batch may or may not be stored. Find out (see the module docs)
    /// before acting on it.
    #[error("atomic batch {batch_id}: outcome unknown ({source})")]
    OutcomeUnknown {
        /// The id the commit used.
        batch_id: String,
        /// The client's error.
        source: async_nats::Error,
    },
    /// The server replied with something that is not a batch ack, or an
    /// ack that does not match the batch: treat the outcome as unknown.
    #[error("atomic batch {batch_id}: unexpected reply: {reason}")]
    BadAck {
        /// The id the commit used.
        batch_id: String,
        /// What was wrong with it.
        reason: String,
    },
    /// Any other JetStream API error; nothing stored.
    #[error("atomic batch rejected: {description} (status {status}, code {err_code})")]
    Api {
        /// HTTP-like status (400, 429, 503, ...).
        status: u16,
        /// JetStream error code.
        err_code: u64,
        /// What the server said.
        description: String,
    },
}

impl BatchError {
    /// True when the batch may have been stored despite the error: the
    /// caller must find out whether it landed before retrying or failing
    /// its senders. Every other error means nothing was stored.
    pub fn outcome_unknown(&self) -> bool {
        matches!(self, BatchError::OutcomeUnknown { .. } | BatchError::BadAck { .. })
    }
}

impl AtomicBatch {
    /// An empty batch.
    pub fn new(config: BatchConfig) -> Self {
        AtomicBatch { entries: Vec::new(), expected_last_seq: None, config }
    }

    /// Adds an entry; [`BatchError::Full`] once the batch holds
    /// [`BatchConfig::max_entries`].
    pub fn push(&mut self, subject: impl Into<Subject>, headers: HeaderMap, payload: Bytes) -> Result<(), BatchError> {
        if self.is_full() {
            return Err(BatchError::Full { max: self.config.max_entries });
        }
        self.entries.push(Entry { subject: subject.into(), headers, payload });
        Ok(())
    }

    /// Makes the commit conditional on the stream's last sequence being
    /// `seq` before the batch (`Nats-Expected-Last-Sequence` on entry 1).
    pub fn expect_last_sequence(&mut self, seq: u64) -> &mut Self {
        self.expected_last_seq = Some(seq);
        self
    }

    /// The entries, in push order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True if no entry was pushed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// True if [`AtomicBatch::push`] would refuse another entry.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.config.max_entries
    }

    /// Publishes every entry under a fresh batch id and waits for the
    /// commit's ack. On `Ok`, every entry is stored (and fsynced, with
    /// `sync_interval: always`); on an error for which
    /// [`BatchError::outcome_unknown`] is false, none is.
    pub async fn commit(&self, client: &async_nats::Client) -> Result<Committed, BatchError> {
        let Some((last, rest)) = self.entries.split_last() else {
            return Err(BatchError::Empty);
        };
        let id = new_batch_id();
        let n = self.entries.len();
        for (i, e) in rest.iter().enumerate() {
            let headers = self.entry_headers(&e.headers, &id, i + 1, false);
            client
                .publish_with_headers(e.subject.clone(), headers, e.payload.clone())
                .await
                .map_err(|err| BatchError::NotSent { index: i, source: err.into() })?;
        }
        let request = async_nats::Request::new()
            .headers(self.entry_headers(&last.headers, &id, n, true))
            .payload(last.payload.clone())
            .timeout(Some(self.config.commit_timeout));
        let reply = match client.send_request(last.subject.clone(), request).await {
            Ok(reply) => reply,
            Err(err) => return Err(request_error(err, n - 1, &last.subject, id)),
        };
        parse_ack(&reply.payload, n, self.expected_last_seq, id)
    }

    /// Entry `seq`'s (1-based) headers: the caller's plus the batch's.
    fn entry_headers(&self, base: &HeaderMap, id: &str, seq: usize, commit: bool) -> HeaderMap {
        let mut h = base.clone();
        h.insert(NATS_BATCH_ID, id);
        h.insert(NATS_BATCH_SEQUENCE, seq.to_string().as_str());
        if commit {
            h.insert(NATS_BATCH_COMMIT, async_nats::header::NATS_BATCH_COMMIT_FINAL);
        }
        if let (1, Some(expected)) = (seq, self.expected_last_seq) {
            h.insert(NATS_EXPECTED_LAST_SEQUENCE, expected.to_string().as_str());
        }
        h
    }
}

/// A random batch id: a NUID, 22 characters (well under
/// [`MAX_BATCH_ID_LEN`]), unique across processes.
pub fn new_batch_id() -> String {
    nuid::next().to_string()
}

/// Maps a failed commit request: before the request left the client,
/// nothing is stored; after, the outcome is unknown.
fn request_error(err: async_nats::RequestError, index: usize, subject: &Subject, batch_id: String) -> BatchError {
    use async_nats::RequestErrorKind as K;
    match err.kind() {
        K::NoResponders => BatchError::NoStream { subject: subject.to_string() },
        K::InvalidSubject | K::MaxPayloadExceeded => BatchError::NotSent { index, source: err.into() },
        K::TimedOut | K::Other => BatchError::OutcomeUnknown { batch_id, source: err.into() },
    }
}

#[derive(Deserialize)]
struct AckWire {
    #[serde(default)]
    stream: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    batch: Option<String>,
    #[serde(default)]
    count: Option<u64>,
    #[serde(default)]
    error: Option<ApiErrorWire>,
}

#[derive(Deserialize)]
struct ApiErrorWire {
    #[serde(default)]
    code: u16,
    #[serde(default)]
    err_code: u64,
    #[serde(default)]
    description: String,
}

/// Reads the commit's reply for a batch of `entries` entries.
fn parse_ack(payload: &[u8], entries: usize, expected: Option<u64>, batch_id: String) -> Result<Committed, BatchError> {
    let bad = |reason: String| BatchError::BadAck { batch_id: batch_id.clone(), reason };
    let ack: AckWire =
        serde_json::from_slice(payload).map_err(|e| bad(format!("{e}: {:?}", String::from_utf8_lossy(payload))))?;
    if let Some(e) = ack.error {
        return Err(api_error(e, ack.stream, entries, expected));
    }
    let (Some(stream), Some(last_seq), Some(count)) = (ack.stream, ack.seq, ack.count) else {
        return Err(bad(format!("not a batch ack: {:?}", String::from_utf8_lossy(payload))));
    };
    if ack.batch.as_deref() != Some(batch_id.as_str()) {
        return Err(bad(format!("ack for batch {:?}", ack.batch)));
    }
    if count != entries as u64 || last_seq < count {
        return Err(bad(format!("ack says {count} entries ending at {last_seq}, the batch has {entries}")));
    }
    Ok(Committed { stream, batch_id, last_seq, count })
}

fn api_error(e: ApiErrorWire, stream: Option<String>, entries: usize, expected: Option<u64>) -> BatchError {
    match e.err_code {
        code::DUPLICATE_MSG_ID => BatchError::DuplicateMsgId { description: e.description },
        code::WRONG_LAST_SEQUENCE | code::WRONG_LAST_SEQUENCE_CONSTANT => {
            BatchError::WrongLastSequence { expected, actual: trailing_number(&e.description) }
        }
        code::DISABLED => BatchError::AtomicPublishDisabled { stream },
        code::INCOMPLETE => BatchError::Incomplete { description: e.description },
        code::TOO_LARGE => BatchError::TooLarge { entries, description: e.description },
        _ => BatchError::Api { status: e.code, err_code: e.err_code, description: e.description },
    }
}

/// The number ending `wrong last sequence: 42`, if any.
fn trailing_number(s: &str) -> Option<u64> {
    s.rsplit(|c: char| !c.is_ascii_digit()).next().filter(|d| !d.is_empty())?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(json: &str, entries: usize) -> Result<Committed, BatchError> {
        parse_ack(json.as_bytes(), entries, Some(7), "B1".into())
    }

    #[test]
    fn an_ack_gives_every_entry_its_sequence() {
        let c = ack(r#"{"stream":"S","seq":12,"batch":"B1","count":3}"#, 3).unwrap();
        assert_eq!((c.first_seq(), c.last_seq), (10, 12));
        assert_eq!(c.sequences().collect::<Vec<_>>(), [10, 11, 12]);
        assert_eq!((c.seq_of(0), c.seq_of(2), c.seq_of(3)), (Some(10), Some(12), None));
        let one = ack(r#"{"stream":"S","seq":1,"batch":"B1","count":1}"#, 1).unwrap();
        assert_eq!(one.sequences().collect::<Vec<_>>(), [1]);
    }

    #[test]
    fn acks_that_do_not_match_the_batch_are_unknown_outcomes() {
        for bad in [
            r#"{"stream":"S","seq":12,"batch":"B1","count":2}"#,
            r#"{"stream":"S","seq":12,"batch":"B2","count":3}"#,
            r#"{"stream":"S","seq":2,"batch":"B1","count":3}"#,
            r#"{"stream":"S","seq":12}"#,
            "",
            "not json",
        ] {
            let e = ack(bad, 3).unwrap_err();
            assert!(matches!(e, BatchError::BadAck { .. }) && e.outcome_unknown(), "{bad}: {e:?}");
        }
    }

    #[test]
    fn server_errors_map_to_typed_variants() {
        let err = |code: u64, desc: &str| {
            let json = format!(r#"{{"stream":"S","error":{{"code":400,"err_code":{code},"description":"{desc}"}}}}"#);
            ack(&json, 3).unwrap_err()
        };
        assert!(matches!(err(10201, "dup"), BatchError::DuplicateMsgId { .. }));
        assert!(matches!(
            err(10071, "wrong last sequence: 42"),
            BatchError::WrongLastSequence { expected: Some(7), actual: Some(42) }
        ));
        assert!(matches!(
            err(10164, "wrong last sequence"),
            BatchError::WrongLastSequence { expected: Some(7), actual: None }
        ));
        assert!(matches!(err(10174, "x"), BatchError::AtomicPublishDisabled { stream: Some(s) } if s == "S"));
        assert!(matches!(err(10176, "x"), BatchError::Incomplete { .. }));
        assert!(matches!(err(10199, "x"), BatchError::TooLarge { entries: 3, .. }));
        let other = err(10210, "atomic publish too many inflight");
        assert!(matches!(other, BatchError::Api { status: 400, err_code: 10210, .. }));
        assert!(!other.outcome_unknown());
    }

    #[test]
    fn headers_number_entries_and_mark_the_commit() {
        let mut b = AtomicBatch::new(BatchConfig::default());
        b.expect_last_sequence(5);
        let mut base = HeaderMap::new();
        base.insert("Nats-Msg-Id", "m1");
        base.insert(NATS_BATCH_SEQUENCE, "99");
        let first = b.entry_headers(&base, "B", 1, false);
        assert_eq!(first.get("Nats-Msg-Id").unwrap().as_str(), "m1");
        assert_eq!(first.get(NATS_BATCH_ID).unwrap().as_str(), "B");
        assert_eq!(first.get(NATS_BATCH_SEQUENCE).unwrap().as_str(), "1");
        assert_eq!(first.get(NATS_EXPECTED_LAST_SEQUENCE).unwrap().as_str(), "5");
        assert!(first.get(NATS_BATCH_COMMIT).is_none());
        let last = b.entry_headers(&HeaderMap::new(), "B", 3, true);
        assert_eq!(last.get(NATS_BATCH_SEQUENCE).unwrap().as_str(), "3");
        assert_eq!(last.get(NATS_BATCH_COMMIT).unwrap().as_str(), "1");
        assert!(last.get(NATS_EXPECTED_LAST_SEQUENCE).is_none());
    }

    #[test]
    fn push_stops_at_the_limit_and_ids_are_short_and_distinct() {
        let mut b = AtomicBatch::new(BatchConfig { max_entries: 2, ..Default::default() });
        b.push("a", HeaderMap::new(), Bytes::new()).unwrap();
        b.push("a", HeaderMap::new(), Bytes::new()).unwrap();
        assert!(matches!(b.push("a", HeaderMap::new(), Bytes::new()), Err(BatchError::Full { max: 2 })));
        assert_eq!(b.len(), 2);
        let (x, y) = (new_batch_id(), new_batch_id());
        assert!(x != y && x.len() <= MAX_BATCH_ID_LEN && !x.contains(char::is_whitespace));
    }

    #[test]
    fn trailing_numbers() {
        assert_eq!(trailing_number("wrong last sequence: 42"), Some(42));
        assert_eq!(trailing_number("wrong last sequence"), None);
        assert_eq!(trailing_number(""), None);
    }
}
