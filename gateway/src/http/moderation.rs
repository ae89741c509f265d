//! Operator endpoints of moderation (credential `CHAT_OPERATOR_TOKEN`):
//! the banned-word list (`GET`, `PUT`, `DELETE /v1/admin/banned-words`) and
//! the flood mutes (`GET /v1/admin/flood-events`).
//!
//! A change is written to KV `chat_banned_words` and answered once this
//! gateway applies it; every other gateway applies it from its own watch.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, DeliverPolicy};
use futures::StreamExt;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ClientError;
use crate::http::edges::require_operator;
use crate::http::{json, query, read_json, Resp};
use crate::moderation::flood::FloodEvent;
use crate::moderation::words::{self, Policy};
use crate::AppState;

/// Entries one request may add or remove.
pub const MAX_WORDS_PER_REQUEST: usize = 1000;
/// Most flood events one listing returns (`limit`, default 100).
pub const MAX_EVENTS: u64 = 1000;
/// How long a change waits to be in force on this gateway before it is
/// answered anyway (it is stored; the rebuild is late).
const APPLY_WAIT: Duration = Duration::from_secs(5);

/// Body of `PUT` and `DELETE /v1/admin/banned-words`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WordsBody {
    words: Vec<String>,
}

/// The entries of a body, checked, with their keys.
fn parse(body: &WordsBody) -> Result<Vec<(String, &str)>, ClientError> {
    if body.words.is_empty() || body.words.len() > MAX_WORDS_PER_REQUEST {
        return Err(ClientError::bad_request(format!("words must list 1-{MAX_WORDS_PER_REQUEST} entries")));
    }
    body.words
        .iter()
        .map(|w| {
            let sk = words::check_word(w).map_err(ClientError::bad_request)?;
            Ok((words::key_of(&sk.text), w.as_str()))
        })
        .collect()
}

/// `GET /v1/admin/banned-words`: the list in force on this gateway.
pub async fn list(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    require_operator(st, &req)?;
    let words = st.moderation.words.entries();
    Ok(json(StatusCode::OK, &json!({"count": words.len(), "policy": policy(st), "words": words})))
}

/// `PUT /v1/admin/banned-words` `{"words":[...]}`: adds entries (an entry
/// already there under another spelling of one skeleton is replaced).
pub async fn add(st: &Arc<AppState>, req: Request<Incoming>) -> Result<Resp, ClientError> {
    require_operator(st, &req)?;
    let body: WordsBody = read_json(req).await?;
    let entries = parse(&body)?;
    let kv = &st.storage.banned_words;
    let mut rev = 0;
    for (key, word) in &entries {
        rev = rev.max(kv.put(key, word.to_string().into()).await.map_err(ClientError::unavailable)?);
    }
    answer(st, rev, json!({"added": entries.len()})).await
}

/// `DELETE /v1/admin/banned-words` `{"words":[...]}`: removes entries (any
/// spelling with the entry's skeleton); `removed` counts those that were
/// on the list.
pub async fn remove(st: &Arc<AppState>, req: Request<Incoming>) -> Result<Resp, ClientError> {
    require_operator(st, &req)?;
    let body: WordsBody = read_json(req).await?;
    let entries = parse(&body)?;
    let kv = &st.storage.banned_words;
    let mut removed = 0;
    for (key, _) in &entries {
        // Deleted even when this gateway has not seen the entry yet (added
        // on another gateway a moment ago); counted only when it had.
        removed += usize::from(st.moderation.words.has(key));
        kv.delete(key).await.map_err(ClientError::unavailable)?;
    }
    // A delete returns no revision: the bucket's last sequence, read fresh
    // (`Store::status` answers from a cached copy), covers every marker.
    let rev = kv.stream.get_info().await.map_err(ClientError::unavailable)?.state.last_sequence;
    answer(st, rev, json!({"removed": removed})).await
}

/// Waits until revision `rev` is in force here, then answers 200 with
/// `extra`, the list's size and whether it was applied in time.
async fn answer(st: &AppState, rev: u64, mut extra: Value) -> Result<Resp, ClientError> {
    let applied = st.moderation.words.wait_applied(rev, APPLY_WAIT).await;
    extra["count"] = st.moderation.words.entries().len().into();
    extra["applied"] = applied.into();
    Ok(json(StatusCode::OK, &extra))
}

fn policy(st: &AppState) -> &'static str {
    match st.cfg.moderation.policy {
        Policy::Reject => "reject",
        Policy::Mask => "mask",
    }
}

/// `GET /v1/admin/flood-events[?limit=N]`: the latest mutes, oldest first
/// (every gateway's, from stream `CHAT_MOD_EVENTS`), and this gateway's
/// flood counters.
pub async fn flood_events(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    require_operator(st, &req)?;
    let limit = match query(&req, "limit") {
        None => 100,
        Some(l) => chat_nats::subjects::parse_seq(&l)
            .filter(|n| (1..=MAX_EVENTS).contains(n))
            .ok_or_else(|| ClientError::bad_request(format!("limit must be 1-{MAX_EVENTS}")))?,
    };
    let events = read_events(st, limit).await.map_err(ClientError::unavailable)?;
    let s = &st.moderation.flood.stats;
    let counters = json!({
        "rate_limited": s.limited.load(Ordering::Relaxed),
        "mutes": s.mutes.load(Ordering::Relaxed),
        "muted_sends": s.muted_sends.load(Ordering::Relaxed),
    });
    Ok(json(StatusCode::OK, &json!({"events": events, "gateway": st.cfg.gateway_id, "counters": counters})))
}

/// The last `limit` events, read with one ordered consumer.
async fn read_events(st: &AppState, limit: u64) -> Result<Vec<Value>, async_nats::Error> {
    let mut stream = st.storage.mod_events.clone();
    let state = stream.info().await?.state.clone();
    if state.messages == 0 {
        return Ok(Vec::new());
    }
    let start = state.first_sequence.max(state.last_sequence.saturating_sub(limit - 1));
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: start },
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_secs(5), messages.next()).await {
        let m = m?;
        let seq = m.info()?.stream_sequence;
        match serde_json::from_slice::<FloodEvent>(&m.payload) {
            Ok(e) => {
                let mut v = serde_json::to_value(e)?;
                v["seq"] = seq.into();
                out.push(v);
            }
            Err(e) => tracing::warn!(error = %e, seq, "malformed moderation event skipped"),
        }
        if seq >= state.last_sequence || out.len() as u64 >= limit {
            break;
        }
    }
    Ok(out)
}

/// `DELETE /v1/admin/messages/{conv}/{id}`: an operator deletes any text
/// message, with the effect of its author's delete (an event in the
/// conversation's order to every member's inbox; erased from history,
/// a tombstone in pages). Its cid is derived from the id, so two operators
/// racing store one delete; a repeat afterwards answers 404 `not_found`.
pub async fn delete_message(st: &AppState, req: Request<Incoming>, conv: &str, id: &str) -> Result<Resp, ClientError> {
    crate::http::edges::require_operator(st, &req)?;
    if chat_nats::subjects::parse_seq(id).is_none_or(|v| v == 0) {
        return Err(ClientError::bad_request("id must be a message id"));
    }
    let cid = format!("del-{id}");
    let actor = crate::messaging::change::Actor::Operator;
    let sent =
        crate::messaging::change::apply(st, actor, &cid, conv, id, crate::messaging::change::Change::Delete).await?;
    Ok(json(StatusCode::OK, &json!({"deleted": id, "conv": sent.conv, "event": sent.id.to_string(), "ts": sent.ts})))
}
