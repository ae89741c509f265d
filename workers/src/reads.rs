//! Read marks (`MessageKind::Read` on ingress) and 1:1 delivery receipts
//! (`MessageKind::Delivered`): no history, no id of their own. The mark is copied to the reader's own inbox (their other devices
//! get a `read` frame, offline ones catch it up from their cursor) and, in
//! a 1:1 whose reader allows receipts, to the peer's inbox (a `receipt`
//! frame). Group read positions are not copied to other members: they are
//! read on request (`GET /v1/conversations/{conv}/reads`). A delivery
//! receipt is copied to the 1:1 peer only (a `delivered` frame).
//!
//! Each copy's `Nats-Msg-Id` is [`subjects::read_copy_id`], so a redo after
//! a crash (the ingress message redelivered) stores nothing twice. The
//! gateway already moved the position in KV `chat_read`; this only spreads
//! it, in conversation order (the mark is sequenced on the conversation's
//! partition after the message it names).

use std::collections::HashSet;

use async_nats::HeaderMap;
use bytes::Bytes;
use chat_nats::batch::{AtomicBatch, BatchConfig, DEFAULT_MAX_ENTRIES};
use chat_nats::envelope::{BundledReceipt, IngressSend, MessageKind, ReadMark, SeqResult, StoredMessage};
use chat_nats::history::direct_get;
use chat_nats::subjects::{self, ConvId, ConvKind};
use chat_nats::wire::ErrorCode;

use crate::metrics::Mode;
use crate::round::{ack_record_subject, RECORDS_TIMEOUT};
use crate::Shared;

/// Spreads one read mark and answers its gateway; `key` is its dedupe key.
pub(crate) async fn process(sh: &Shared, send: &IngressSend, key: &str) -> Result<(), async_nats::Error> {
    let result = answer(send, spread(sh, send).await?);
    let ack = crate::sequencer::outcome(key, result)?;
    if let Some(reply) = &send.reply {
        sh.client.publish(reply.clone(), ack.clone()).await?;
    }
    sh.storage.acks.put(key, ack).await?;
    Ok(())
}

/// The inbox copies and their wake-ups; `Ok(Err(_))` for a malformed mark.
async fn spread(sh: &Shared, send: &IngressSend) -> Result<Result<(), String>, async_nats::Error> {
    let to = match copies(send)? {
        Ok(c) => c,
        Err(e) => return Ok(Err(e)),
    };
    let entries =
        to.iter().map(|(r, id, payload)| (subjects::inbox(*r), subjects::msg_id(id), payload.clone())).collect();
    let seqs = store(sh, entries, false).await?;
    let copies: Vec<(i64, u64)> = to.iter().map(|(r, _, _)| *r).zip(seqs).collect();
    crate::sequencer::wake(sh, &copies).await?;
    Ok(Ok(()))
}

/// A mark's inbox copies: (recipient, the copy's dedupe id, the copy);
/// `Ok(Err(_))` for a malformed mark or one its sender may not make. A
/// bundle of receipts ([`MessageKind::Receipts`]) is each of its receipts
/// as a [`MessageKind::Delivered`] of its own (one that may not be made is
/// left out: the gateway checked them, and the others stand).
#[allow(clippy::type_complexity)]
fn copies(send: &IngressSend) -> Result<Result<Vec<(i64, String, Bytes)>, String>, serde_json::Error> {
    if send.kind == MessageKind::Receipts {
        let Ok(bundle) = serde_json::from_str::<Vec<BundledReceipt>>(&send.body) else {
            return Ok(Err("malformed receipts".into()));
        };
        let mut all = Vec::new();
        for r in bundle {
            let cid = format!("d{}", r.mark.up_to);
            match mark_copies(r.user, &send.device, &cid, &r.conv, &r.mark, MessageKind::Delivered)? {
                Ok(c) => all.extend(c),
                Err(e) => tracing::warn!(user_id = r.user, conv = %r.conv, error = %e, "receipt of a bundle left out"),
            }
        }
        return Ok(Ok(all));
    }
    let Ok(mark) = serde_json::from_str::<ReadMark>(&send.body) else {
        return Ok(Err("malformed read mark".into()));
    };
    mark_copies(send.from, &send.device, &send.cid, &send.conv, &mark, send.kind)
}

/// The copies of one read mark or delivery receipt (`kind`) of `from`.
#[allow(clippy::type_complexity)]
fn mark_copies(
    from: i64,
    device: &str,
    cid: &str,
    conv_id: &str,
    mark: &ReadMark,
    kind: MessageKind,
) -> Result<Result<Vec<(i64, String, Bytes)>, String>, serde_json::Error> {
    let Some(conv) = ConvId::parse(conv_id) else {
        return Ok(Err("malformed read mark".into()));
    };
    let delivered = kind == MessageKind::Delivered;
    let mut to = if delivered { vec![] } else { vec![from] };
    match conv.kind() {
        ConvKind::Direct(a, b) if a == from || b == from => {
            if (mark.receipt || delivered) && a != b {
                to.push(if a == from { b } else { a });
            }
        }
        ConvKind::Direct(..) => return Ok(Err("not a participant".into())),
        ConvKind::Group(_) if delivered => return Ok(Err("delivery receipts are for 1:1s".into())),
        ConvKind::Room(_) => return Ok(Err("rooms have no read positions".into())),
        ConvKind::Group(_) => {}
    }
    let copy = StoredMessage {
        id: mark.up_to,
        conv: conv_id.to_owned(),
        from,
        device: device.to_owned(),
        cid: cid.to_owned(),
        kind,
        body: String::new(),
        ts: now_ms(),
        n: mark.n,
        ..Default::default()
    };
    let payload = Bytes::from(serde_json::to_vec(&copy)?);
    let copies = to
        .into_iter()
        .map(|r| {
            let id = if delivered {
                subjects::delivered_copy_id(from, conv_id, mark.up_to, r)
            } else {
                subjects::read_copy_id(from, conv_id, mark.up_to, r)
            };
            (r, id, payload.clone())
        })
        .collect();
    Ok(Ok(copies))
}

/// Spreads a round's marks together instead of one after another: one
/// lookup of their recorded outcomes, every copy in ingress order (one
/// atomic batch when there are at least [`crate::round::MIN_BATCH_ENTRIES`],
/// else plain publishes all in flight at once), the wake-ups, the replies;
/// returns the outcome records, for the caller to write. `Ok(None)` when the round is not
/// taken (a mark that does not parse, or the same mark twice): the caller
/// goes one by one. On an error part of it may be stored; the caller redoes
/// the marks one by one, which finds the recorded ones and whose copies
/// dedupe (a batch holding an already stored copy is refused whole and
/// stores nothing).
pub(crate) async fn process_round(
    sh: &Shared,
    marks: &[async_nats::jetstream::Message],
) -> Result<Option<(Mode, AtomicBatch)>, async_nats::Error> {
    let Some(sends) =
        marks.iter().map(|m| serde_json::from_slice::<IngressSend>(&m.payload).ok()).collect::<Option<Vec<_>>>()
    else {
        return Ok(None);
    };
    let keys: Vec<String> = sends.iter().map(|s| subjects::dedupe_key(s.from, &s.device, &s.cid)).collect();
    if keys.iter().collect::<HashSet<_>>().len() != keys.len() {
        return Ok(None);
    }
    let records: Vec<String> = keys.iter().map(|k| ack_record_subject(k)).collect();
    let stream = format!("KV_{}", subjects::ACKS_BUCKET);
    let mut recorded = direct_get::last_of_many(&sh.client, &stream, &records, RECORDS_TIMEOUT).await?;
    // Per mark: its recorded answer (Err), or the result of spreading it.
    let mut plans: Vec<Result<Result<(), String>, Bytes>> = Vec::with_capacity(sends.len());
    let mut entries: Vec<(i64, String, Bytes)> = Vec::new();
    for (send, record) in sends.iter().zip(&records) {
        if let Some(r) = recorded.remove(record) {
            plans.push(Err(r));
            continue;
        }
        let result = match copies(send)? {
            Ok(to) => {
                entries.extend(to);
                Ok(())
            }
            Err(e) => Err(e),
        };
        plans.push(Ok(result));
    }
    let fits = |n: usize| (crate::round::MIN_BATCH_ENTRIES..=DEFAULT_MAX_ENTRIES).contains(&n);
    let batched = fits(entries.len());
    let seqs = store(
        sh,
        entries.iter().map(|(r, id, p)| (subjects::inbox(*r), subjects::msg_id(id), p.clone())).collect(),
        batched,
    )
    .await?;
    let woken: Vec<(i64, u64)> = entries.iter().zip(&seqs).map(|((r, _, _), seq)| (*r, *seq)).collect();
    crate::sequencer::wake(sh, &woken).await?;
    // The records are the caller's to write (`sequencer::acknowledge`):
    // should they fail, a redelivered mark spreads again (its copies
    // dedupe) and is answered the same.
    let mut records = AtomicBatch::new(BatchConfig::default());
    for ((send, key), plan) in sends.iter().zip(&keys).zip(plans) {
        let ack = match plan {
            Err(recorded) => recorded,
            Ok(result) => {
                let ack = crate::sequencer::outcome(key, answer(send, result))?;
                records.push(ack_record_subject(key), HeaderMap::new(), ack.clone())?;
                ack
            }
        };
        if let Some(reply) = &send.reply {
            sh.client.publish(reply.clone(), ack).await?;
        }
    }
    Ok(Some((if batched { Mode::Batch } else { Mode::Single }, records)))
}

/// Stores entries of one stream in order: as one atomic batch, or as
/// plain publishes all sent before any ack is awaited. Their sequences.
async fn store(
    sh: &Shared,
    entries: Vec<(String, HeaderMap, Bytes)>,
    batch: bool,
) -> Result<Vec<u64>, async_nats::Error> {
    if entries.is_empty() {
        return Ok(Vec::new());
    }
    if batch {
        let mut b = AtomicBatch::new(BatchConfig::default());
        for (subject, h, p) in entries {
            b.push(subject, h, p)?;
        }
        return Ok(b.commit(&sh.client).await?.sequences().collect());
    }
    let mut acks = Vec::with_capacity(entries.len());
    for (subject, h, p) in entries {
        acks.push(sh.storage.js.publish_with_headers(subject, h, p).await?);
    }
    let mut seqs = Vec::with_capacity(acks.len());
    for a in acks {
        seqs.push(a.await?.sequence);
    }
    Ok(seqs)
}

/// What a spread mark answers its gateway.
fn answer(send: &IngressSend, spread: Result<(), String>) -> SeqResult {
    match spread {
        Ok(()) => SeqResult::Ok {
            id: serde_json::from_str::<ReadMark>(&send.body).map(|m| m.up_to).unwrap_or(0),
            conv: send.conv.clone(),
            ts: now_ms(),
            n: 0,
        },
        Err(message) => SeqResult::Err { code: ErrorCode::BadFrame, message },
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
