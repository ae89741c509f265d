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

use bytes::Bytes;
use chat_nats::envelope::{IngressSend, MessageKind, ReadMark, SeqResult, StoredMessage};
use chat_nats::subjects::{self, ConvId, ConvKind};
use chat_nats::wire::ErrorCode;

use crate::Shared;

/// Spreads one read mark and answers its gateway; `key` is its dedupe key.
pub(crate) async fn process(sh: &Shared, send: &IngressSend, key: &str) -> Result<(), async_nats::Error> {
    let result = match spread(sh, send).await? {
        Ok(()) => SeqResult::Ok {
            id: serde_json::from_str::<ReadMark>(&send.body).map(|m| m.up_to).unwrap_or(0),
            conv: send.conv.clone(),
            ts: now_ms(),
            n: 0,
        },
        Err(message) => SeqResult::Err { code: ErrorCode::BadFrame, message },
    };
    let ack = crate::sequencer::outcome(key, result)?;
    if let Some(reply) = &send.reply {
        sh.client.publish(reply.clone(), ack.clone()).await?;
    }
    sh.storage.acks.put(key, ack).await?;
    Ok(())
}

/// The inbox copies and their wake-ups; `Ok(Err(_))` for a malformed mark.
async fn spread(sh: &Shared, send: &IngressSend) -> Result<Result<(), String>, async_nats::Error> {
    let (Some(conv), Ok(mark)) = (ConvId::parse(&send.conv), serde_json::from_str::<ReadMark>(&send.body)) else {
        return Ok(Err("malformed read mark".into()));
    };
    let delivered = send.kind == MessageKind::Delivered;
    let mut to = if delivered { vec![] } else { vec![send.from] };
    match conv.kind() {
        ConvKind::Direct(a, b) if a == send.from || b == send.from => {
            if (mark.receipt || delivered) && a != b {
                to.push(if a == send.from { b } else { a });
            }
        }
        ConvKind::Direct(..) => return Ok(Err("not a participant".into())),
        ConvKind::Group(_) if delivered => return Ok(Err("delivery receipts are for 1:1s".into())),
        ConvKind::Room(_) => return Ok(Err("rooms have no read positions".into())),
        ConvKind::Group(_) => {}
    }
    let copy = StoredMessage {
        id: mark.up_to,
        conv: send.conv.clone(),
        from: send.from,
        device: send.device.clone(),
        cid: send.cid.clone(),
        kind: send.kind,
        body: String::new(),
        ts: now_ms(),
        n: mark.n,
        ..Default::default()
    };
    let payload = Bytes::from(serde_json::to_vec(&copy)?);
    let mut copies = Vec::with_capacity(to.len());
    for r in to {
        let id = if delivered {
            subjects::delivered_copy_id(send.from, &send.conv, mark.up_to, r)
        } else {
            subjects::read_copy_id(send.from, &send.conv, mark.up_to, r)
        };
        let ack = sh
            .storage
            .js
            .publish_with_headers(subjects::inbox(r), subjects::msg_id(&id), payload.clone())
            .await?
            .await?;
        copies.push((r, ack.sequence));
    }
    crate::sequencer::wake(sh, &copies).await?;
    Ok(Ok(()))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
