//! `GET /v1/conversations/{conv}/messages`: history pages, and who may
//! read them.

use chat_nats::subjects::{self, ConvId, ConvKind};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use crate::error::ClientError;
use crate::http::accounts::authenticate;
use crate::http::{json, query, Resp};
use crate::messaging::history::{self, Page};
use crate::AppState;

/// True when `user` takes part in `conv` (for groups: is a member now;
/// for rooms: may join it).
pub async fn participant(st: &AppState, conv: &ConvId, user: i64) -> Result<bool, ClientError> {
    match conv.kind() {
        ConvKind::Direct(a, b) => Ok(user == a || user == b),
        ConvKind::Group(g) => Ok(st.db.role(g, user).await?.is_some()),
        // A room's history: whoever may join it (not banned, invited if
        // the room is by invitation).
        ConvKind::Room(r) => Ok(st.db.room_access(r, user).await?.is_some_and(|a| a.may_join())),
    }
}

/// `GET /v1/conversations/{conv}/messages?before=&after=&around=&limit=`.
pub async fn page(st: &AppState, req: Request<Incoming>, conv: &str) -> Result<Resp, ClientError> {
    let claims = authenticate(st, &req).await?;
    let conv = crate::http::conv(conv)?;
    if !participant(st, &conv, claims.user).await? {
        return Err(ClientError::forbidden("not a participant of this conversation"));
    }
    let id_param = |name: &str| -> Result<Option<u64>, ClientError> {
        query(&req, name)
            .map(|v| {
                subjects::parse_seq(&v).ok_or_else(|| ClientError::bad_request(format!("{name} must be a message id")))
            })
            .transpose()
    };
    let (before, after, around) = (id_param("before")?, id_param("after")?, id_param("around")?);
    let page = match (before, after) {
        _ if around.is_some() && (before.is_some() || after.is_some()) => {
            return Err(ClientError::bad_request("give around alone, without before or after"))
        }
        (Some(_), Some(_)) => return Err(ClientError::bad_request("give before or after, not both")),
        (Some(b), None) => Page::Before(b),
        (None, Some(a)) => Page::After(a),
        (None, None) => Page::Latest,
    };
    let limit = match query(&req, "limit") {
        None => 50,
        Some(l) => subjects::parse_seq(&l)
            .filter(|l| (1..=100).contains(l))
            .map(|l| l as usize)
            .ok_or_else(|| ClientError::bad_request("limit must be 1-100"))?,
    };
    let rd = history::Reader { storage: &st.storage, cache: &st.history_index };
    let (out, has_more_after) = match around {
        // The page centred on a message: it and up to half the limit older
        // (rounded up), then up to half newer.
        Some(id) => {
            let older = history::page(rd, &conv, Page::Before(id.saturating_add(1)), limit - limit / 2);
            let mut out = older.await.map_err(ClientError::unavailable)?;
            if limit / 2 > 0 {
                let newer = history::page(rd, &conv, Page::After(id), limit / 2).await;
                let newer = newer.map_err(ClientError::unavailable)?;
                out.messages.extend(newer.messages);
                (out, Some(newer.has_more))
            } else {
                (out, Some(false))
            }
        }
        None => (history::page(rd, &conv, page, limit).await.map_err(ClientError::unavailable)?, None),
    };
    let messages: Vec<_> = out
        .messages
        .into_iter()
        .map(|(_, m)| {
            let mut v = json!({"id": m.id.to_string(), "conv": m.conv, "from": m.from.to_string(), "kind": m.kind,
                               "body": m.body, "ts": m.ts, "event": m.event});
            if let Some(at) = m.edited_at {
                v["edited_at"] = json!(at);
            }
            if m.deleted {
                v["deleted"] = json!(true);
            }
            if !m.reactions.is_empty() {
                v["reactions"] = json!(m.reactions);
            }
            if let Some(r) = &m.reply_to {
                v["reply_to"] = json!(r);
            }
            if !m.mentions.is_empty() && !m.deleted {
                v["mentions"] = json!(m.mentions);
            }
            v
        })
        .collect();
    let mut body = json!({"messages": messages, "has_more": out.has_more});
    if let Some(after) = has_more_after {
        body["has_more_after"] = json!(after);
    }
    Ok(json(StatusCode::OK, &body))
}
