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
    match history.get_last_raw_message_by_subject(&subjects::history(conv)).await {
        Ok(m) => Ok(Some((m.sequence, serde_json::from_slice(&m.payload)?))),
        Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
        Err(e) => Err(e.into()),
    }
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
}
