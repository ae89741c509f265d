//! Hand-offs (experimental, off by default): a gateway hands each text send
//! to its partition's owner over core NATS (`chat.fast.<p>`,
//! `CHAT_SEND_PATH=beside|direct`), and the owner sequences
//! the hand-offs as a round of their own, so delivery and the sender's ack
//! wait for the history and inbox writes only, not for an ingress write's
//! fsync and the consumer delivery after it.
//!
//! With `direct` the hand-off is a request, answered on its
//! reply subject once the send is stored, and nothing is written to
//! ingress unless no owner answers (the gateway then writes it there: see
//! `docs/architecture.md`, "A message's path", step 2). With `beside` the
//! gateway writes the ingress message too and it stays the send's record:
//! when the ingress message of a send stored from its hand-off arrives, it
//! is not sequenced again but waits ([`Handled`]) until the send's outcome
//! record is written, then is acked (an ingress message is never acked
//! before its record); a worker killed in between leaves it unacked, and
//! the next owner redoes it like any other (history duplicate, same id,
//! same copy ids). A hand-off round that fails is redone at once, one by
//! one, like an ingress round.
//!
//! Only what a round takes goes this way: texts, not membership changes,
//! marks, edits or reactions; not the sends of a conversation waiting for a
//! lane, nor a group message too big for one commit (`lane`). Those are
//! left to ingress (a request gets an empty answer and its gateway writes
//! the send there) and come in their order there.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind};
use chat_nats::batch::AtomicBatch;
use chat_nats::envelope::IngressSend;
use chat_nats::subjects::{self, ConvId, ConvKind};

use crate::metrics::Mode;
use crate::sequencer::{Caches, Route};
use crate::Shared;

/// How long a send stored from its hand-off is remembered once its record
/// is written, for its ingress message to be acked without a redo (it
/// comes within milliseconds; one arriving later is redone, which stores
/// nothing twice).
pub const REMEMBER: Duration = Duration::from_secs(60);

/// Attempts at writing a hand-off round's outcome records (100 ms, then
/// doubling, between them).
const RECORD_ATTEMPTS: u32 = 5;

/// Sends a partition owner stored from their hand-offs, by dedupe key.
#[derive(Debug, Default)]
pub(crate) struct Handled {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<String, Entry>,
    swept: Option<Instant>,
    /// Hand-offs came (none do with the default `CHAT_SEND_PATH=ingress`,
    /// and then nothing is remembered).
    active: bool,
}

impl Inner {
    /// Forgets, at most once a second, what is older than [`REMEMBER`].
    fn sweep(&mut self) {
        let now = Instant::now();
        if self.swept.is_none_or(|t| now.duration_since(t) > Duration::from_secs(1)) {
            let old = |at: &Instant| now.duration_since(*at) > REMEMBER;
            self.keys.retain(|_, e| !matches!(e, Entry::Done(at) | Entry::Ingress(at) if old(at)));
            self.swept = Some(now);
        }
    }
}

#[derive(Debug)]
enum Entry {
    /// Stored, its outcome record not yet written: its ingress message, if
    /// it came, waits here to be acked once it is.
    Pending(Vec<jetstream::Message>),
    /// Stored and recorded (when).
    Done(Instant),
    /// Its ingress message came first and is sequenced from there (when):
    /// a hand-off coming after it is dropped.
    Ingress(Instant),
}

impl Handled {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a hand-off of this send is dropped: this owner is storing
    /// it (its record not yet written: a client's retry then hears of it
    /// through the record) or takes it from ingress. One stored and recorded
    /// is taken again, and its round answers it from the record.
    fn drops(&self, key: &str) -> bool {
        matches!(self.lock().keys.get(key), Some(Entry::Pending(_) | Entry::Ingress(_)))
    }

    fn activate(&self) {
        self.lock().active = true;
    }

    fn begin(&self, keys: &[String]) {
        let mut inner = self.lock();
        inner.sweep();
        for k in keys {
            inner.keys.insert(k.clone(), Entry::Pending(Vec::new()));
        }
    }

    /// The sends' records are written (`recorded`) or not: their waiting
    /// ingress messages, to ack or to have redelivered.
    fn finish(&self, keys: &[String], recorded: bool) -> Vec<jetstream::Message> {
        let mut inner = self.lock();
        let mut parked = Vec::new();
        let now = Instant::now();
        for k in keys {
            let Some(Entry::Pending(waiting)) = inner.keys.remove(k) else { continue };
            if recorded && waiting.is_empty() {
                inner.keys.insert(k.clone(), Entry::Done(now));
            }
            parked.extend(waiting);
        }
        parked
    }

    /// An ingress message to sequence, or `None` when its hand-off stored
    /// its send: then it is acked once the send's record is written (at
    /// once if it is). Once hand-offs come, one to sequence is remembered,
    /// so that its hand-off, should it come later, is dropped.
    pub(crate) fn claim(&self, msg: jetstream::Message) -> Option<jetstream::Message> {
        let mut inner = self.lock();
        if !inner.active {
            return Some(msg);
        }
        let Some(key) = msg.headers.as_ref().and_then(|h| h.get("Nats-Msg-Id")).map(|v| v.as_str().to_owned()) else {
            return Some(msg);
        };
        match inner.keys.get_mut(&key) {
            None => {
                inner.sweep();
                inner.keys.insert(key, Entry::Ingress(Instant::now()));
                Some(msg)
            }
            Some(Entry::Ingress(_)) => Some(msg),
            Some(Entry::Pending(waiting)) => {
                waiting.push(msg);
                None
            }
            Some(Entry::Done(_)) => {
                inner.keys.remove(&key);
                tokio::spawn(ack(vec![msg], AckKind::Ack));
                None
            }
        }
    }
}

async fn ack(messages: Vec<jetstream::Message>, kind: AckKind) {
    for msg in messages {
        if let Err(e) = msg.ack_with(kind).await {
            tracing::warn!(error = %e, "ingress ack failed; the message will be redelivered and deduped");
        }
    }
}

/// Leaves hand-offs to their ingress messages (a new owner still
/// sequencing what was stored before it took the partition).
pub(crate) async fn leave_to_ingress(sh: &Shared, messages: Vec<async_nats::Message>) -> Result<(), async_nats::Error> {
    for m in messages {
        leave(sh, m).await?;
    }
    Ok(())
}

/// Leaves one hand-off to its ingress message: a request hears so at once
/// (an empty answer) and its gateway writes it there.
async fn leave(sh: &Shared, m: async_nats::Message) -> Result<(), async_nats::Error> {
    if let Some(reply) = m.reply {
        sh.client.publish(reply, bytes::Bytes::new()).await?;
    }
    Ok(())
}

/// The send of a hand-off the round takes, with its dedupe key; `None`
/// when it is left to ingress (see the module's introduction).
async fn take(
    sh: &Shared,
    caches: &mut Caches,
    lanes: &crate::lane::Lanes,
    handled: &Handled,
    partition: u32,
    seen: &HashSet<String>,
    m: &async_nats::Message,
) -> Result<Option<(String, IngressSend)>, async_nats::Error> {
    let Ok(send) = serde_json::from_slice::<IngressSend>(&m.payload) else { return Ok(None) };
    let Some(conv) = ConvId::parse(&send.conv).filter(|c| c.partition(sh.storage.settings.partitions) == partition)
    else {
        return Ok(None);
    };
    let key = subjects::dedupe_key(send.from, &send.device, &send.cid);
    if !send.may_hand_off() || lanes.busy(&conv) || handled.drops(&key) || seen.contains(&key) {
        return Ok(None);
    }
    if matches!(conv.kind(), ConvKind::Group(_)) {
        if let Route::To(_, members) = crate::sequencer::route(sh, caches, &send).await? {
            if members.len() > crate::lane::MIN_COPIES {
                return Ok(None); // a lane's
            }
        }
    }
    Ok(Some((key, send)))
}

/// Sequences a round of hand-offs (`round::run`); what it does not take
/// is left to the sends' ingress messages. A round that fails is redone at
/// once, message by message, before anything else of the partition (a
/// later message of the same conversation stored first would put the two
/// in different orders in history and in the inboxes). False once the
/// lease is lost.
pub(crate) async fn round(
    sh: &Arc<Shared>,
    caches: &mut Caches,
    lanes: &crate::lane::Lanes,
    handled: &Arc<Handled>,
    valid: &crate::Validity,
    partition: u32,
    messages: Vec<async_nats::Message>,
) -> Result<bool, async_nats::Error> {
    handled.activate();
    let mut keys = Vec::with_capacity(messages.len());
    let mut seen = HashSet::with_capacity(messages.len());
    let mut sends = Vec::with_capacity(messages.len());
    // The hand-offs as they came, for a redo (`round::run` takes the sends).
    let mut raw = Vec::with_capacity(messages.len());
    for m in messages {
        match take(sh, caches, lanes, handled, partition, &seen, &m).await? {
            Some((key, mut send)) => {
                // A request (`direct`) is answered on its reply subject.
                if let Some(reply) = &m.reply {
                    send.reply = Some(reply.to_string());
                }
                seen.insert(key.clone());
                keys.push(key);
                sends.push(send);
                raw.push(m);
            }
            None => leave(sh, m).await?,
        }
    }
    if sends.is_empty() {
        return Ok(true);
    }
    sh.metrics.round(sends.len());
    let started = Instant::now();
    let n = sends.len();
    handled.begin(&keys);
    match crate::round::run(sh, caches, sends).await {
        Ok(records) => {
            sh.metrics.committed(Mode::Fast, n, started);
            tokio::spawn(record(sh.clone(), handled.clone(), partition, keys, records));
        }
        Err(e) => {
            // Part of it may be stored: redone one by one, idempotently
            // (history first, a duplicate leads back to the stored message
            // and its id), each with its record written.
            tracing::warn!(partition, error = %e, "hand-off round failed; redoing its messages one by one");
            caches.clear();
            for m in &raw {
                // Answered where its round would have answered it.
                let payload: std::borrow::Cow<[u8]> = match &m.reply {
                    None => (&m.payload[..]).into(),
                    Some(reply) => {
                        let mut send: IngressSend = serde_json::from_slice(&m.payload)?;
                        send.reply = Some(reply.to_string());
                        serde_json::to_vec(&send)?.into()
                    }
                };
                let started = Instant::now();
                if !crate::sequencer::one_by_one(sh, caches, &payload, false, valid, partition).await {
                    // Their ingress messages, unacked, go to the next owner.
                    handled.finish(&keys, false);
                    return Ok(false);
                }
                sh.metrics.committed(Mode::Single, 1, started);
            }
            let parked = handled.finish(&keys, true);
            ack(parked, AckKind::Ack).await;
        }
    }
    Ok(true)
}

/// Writes a fast round's outcome records, then acks the ingress messages
/// of its sends that came meanwhile (those still to come are acked as
/// they come); without the records they are redelivered and redone.
async fn record(sh: Arc<Shared>, handled: Arc<Handled>, partition: u32, keys: Vec<String>, records: AtomicBatch) {
    // Tried a few times: a `direct` hand-off has no ingress message to
    // redo it (a retry of its send after the history dedupe window would
    // find no record).
    let mut recorded = false;
    let mut backoff = Duration::from_millis(100);
    for attempt in 1..=RECORD_ATTEMPTS {
        match sh.commits.acks.store(records.clone()).await {
            Ok(_) => {
                recorded = true;
                break;
            }
            Err(e) if attempt < RECORD_ATTEMPTS => {
                tracing::warn!(partition, attempt, error = %e, "outcome records of a hand-off round not written; again");
                tokio::time::sleep(backoff).await;
                backoff *= 2;
            }
            Err(e) => tracing::error!(
                partition,
                error = %e,
                "outcome records of a hand-off round not written; ingress messages of its sends redo them"
            ),
        }
    }
    let parked = handled.finish(&keys, recorded);
    ack(parked, if recorded { AckKind::Ack } else { AckKind::Nak(Some(Duration::from_secs(1))) }).await;
}
