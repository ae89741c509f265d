//! `GET /v1/conversations`: the caller's 1:1 and group conversations, each
//! with its last message, newest activity first, and its `unread` count;
//! `GET /v1/conversations/{conv}/reads`: every participant's read position.

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
        lasts.extend(futures::future::join_all(chunk.iter().map(|(c, _)| last_and_read(st, me, c))).await);
    }
    let mut out = Vec::with_capacity(convs.len());
    for ((conv, mut info), last) in convs.into_iter().zip(lasts) {
        let (last, read) = last.map_err(ClientError::unavailable)?;
        // Everything after the read position is from others: the user's
        // own sends move the position to themselves.
        let read_n = read.as_ref().map_or(0, |r| r.n);
        let unread = match &last {
            Some(m) if m.from != me => m.n.saturating_sub(read_n),
            _ => 0,
        };
        info["unread"] = json!(unread);
        if matches!(conv.kind(), chat_nats::subjects::ConvKind::Group(_)) {
            info["mentions"] = json!(0);
        }
        info["read_up_to"] = json!(read.map(|r| r.up_to.to_string()));
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

type LastAndRead = (Option<StoredMessage>, Option<chat_nats::envelope::ReadMark>);

async fn last_and_read(st: &AppState, me: i64, conv: &ConvId) -> Result<LastAndRead, async_nats::Error> {
    let last = chat_nats::history::last_message(&st.storage.history, conv).await?.map(|(_, m)| m);
    let read = crate::messaging::reads::get(&st.storage.reads, me, conv).await?;
    Ok((last, read))
}

/// `GET /v1/conversations/{conv}/reads`: each participant's read position
/// (`up_to`, `null` if none or if that user turned read receipts off; the
/// caller always sees their own). Participants only (`forbidden`).
pub async fn reads(st: &AppState, req: Request<Incoming>, conv: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let conv = crate::messaging::reads::participant(st, me, conv).await?;
    let users: Vec<i64> = match conv.kind() {
        chat_nats::subjects::ConvKind::Direct(a, b) => {
            if a == b {
                vec![a]
            } else {
                vec![a, b]
            }
        }
        chat_nats::subjects::ConvKind::Room(_) => Vec::new(),
        chat_nats::subjects::ConvKind::Group(g) => {
            st.db.group(g).await?.map(|(_, m)| m.iter().map(|m| m.user_id).collect()).unwrap_or_default()
        }
    };
    let off = st.db.receipts_off(&users).await?;
    let mut marks = Vec::with_capacity(users.len());
    for chunk in users.chunks(64) {
        let got =
            futures::future::join_all(chunk.iter().map(|&u| crate::messaging::reads::get(&st.storage.reads, u, &conv)))
                .await;
        marks.extend(got);
    }
    let mut out = Vec::with_capacity(users.len());
    for (u, m) in users.into_iter().zip(marks) {
        let m = m.map_err(ClientError::unavailable)?;
        let shown = if u == me || !off.contains(&u) { m.map(|m| m.up_to.to_string()) } else { None };
        out.push(json!({"user_id": u.to_string(), "up_to": shown}));
    }
    Ok(json(StatusCode::OK, &json!({"conv": conv.to_string(), "reads": out})))
}
