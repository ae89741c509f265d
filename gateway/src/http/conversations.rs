//! `GET /v1/conversations`: the caller's 1:1 and group conversations, each
//! with its last message, newest activity first.

use chat_nats::envelope::StoredMessage;
use chat_nats::subjects::ConvId;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use crate::error::ClientError;
use crate::http::accounts::authenticate;
use crate::http::{json, Resp};
use crate::AppState;

/// Lists the caller's conversations.
pub async fn list(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let mut convs: Vec<(ConvId, Value)> = Vec::new();
    for (peer, username) in st.db.direct_peers(me).await? {
        convs.push((
            ConvId::direct(me, peer),
            json!({"type": "direct", "user_id": peer.to_string(), "username": username, "title": username}),
        ));
    }
    for (gid, name, role, count) in st.db.my_groups(me).await? {
        convs.push((
            ConvId::group(gid),
            json!({"type": "group", "group_id": gid.to_string(), "name": name, "title": name, "role": role.as_str(), "members_count": count}),
        ));
    }
    // The last message of each, 32 lookups at a time.
    let mut lasts = Vec::with_capacity(convs.len());
    for chunk in convs.chunks(32) {
        lasts.extend(futures::future::join_all(chunk.iter().map(|(c, _)| last_message(st, c))).await);
    }
    let mut out = Vec::with_capacity(convs.len());
    for ((conv, mut info), last) in convs.into_iter().zip(lasts) {
        let last = last.map_err(ClientError::unavailable)?;
        info["conv"] = json!(conv.to_string());
        info["last_message"] = match &last {
            Some(m) => {
                json!({"id": m.id.to_string(), "from": m.from.to_string(), "kind": m.kind, "body": m.body, "ts": m.ts, "event": m.event})
            }
            None => Value::Null,
        };
        out.push((last.map(|m| m.ts).unwrap_or(0), info));
    }
    out.sort_by_key(|c| std::cmp::Reverse(c.0));
    let conversations: Vec<Value> = out.into_iter().map(|(_, v)| v).collect();
    Ok(json(StatusCode::OK, &json!({ "conversations": conversations })))
}

async fn last_message(st: &AppState, conv: &ConvId) -> Result<Option<StoredMessage>, async_nats::Error> {
    Ok(chat_nats::history::last_message(&st.storage.history, conv).await?.map(|(_, m)| m))
}
