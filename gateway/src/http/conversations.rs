//! `GET /v1/conversations`: the caller's 1:1 and group conversations, each
//! with its last message, newest activity first, a page at a time, and its
//! `unread` count (and `mentions` for groups);
//! `GET /v1/conversations/{conv}/reads`: every participant's read position.

use chat_nats::envelope::StoredMessage;
use chat_nats::subjects::ConvId;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use crate::error::ClientError;
use crate::http::accounts::authenticate;
use crate::http::body::query;
use crate::http::{json, Resp};
use crate::AppState;

/// Conversations per page when `limit` is not given.
const DEFAULT_LIMIT: usize = 50;
/// Most conversations one page returns.
const MAX_LIMIT: usize = 200;

/// Where a page of the list starts: after the conversation whose last
/// activity (its last message's `ts`, 0 without one) and id are these, in
/// the list's order (newest activity first, then conversation id
/// descending). Written `<ts>.<conv>` (`next_before`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Position(u64, String);

impl Position {
    fn parse(s: &str) -> Option<Position> {
        let (ts, conv) = s.split_once('.')?;
        ConvId::parse(conv)?;
        Some(Position(ts.parse().ok()?, conv.to_owned()))
    }

    fn cursor(&self) -> String {
        format!("{}.{}", self.0, self.1)
    }
}

/// Lists the caller's conversations, newest activity first, a page at a
/// time (`limit`, `before`).
pub async fn list(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let limit = match query(&req, "limit") {
        None => DEFAULT_LIMIT,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_LIMIT).contains(l))
            .ok_or_else(|| ClientError::bad_request(format!("limit must be 1-{MAX_LIMIT}")))?,
    };
    let before = match query(&req, "before") {
        None => None,
        Some(v) => Some(Position::parse(&v).ok_or_else(|| {
            ClientError::bad_request("before must be a next_before of an earlier page (<ts>.<conv>)")
        })?),
    };
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
    // The last message, head and read position of each, 32 conversations
    // at a time: the order needs every conversation's last activity.
    let mut lasts = Vec::with_capacity(convs.len());
    for chunk in convs.chunks(32) {
        lasts.extend(futures::future::join_all(chunk.iter().map(|(c, _)| last_and_read(st, me, c))).await);
    }
    // Mentions of the caller above each group's read position and up to
    // the head read above (a mention stored since waits for the next
    // list, as its message does): one query.
    let group_reads: Vec<(String, u64, u64)> = convs
        .iter()
        .zip(&lasts)
        .filter(|((c, _), _)| matches!(c.kind(), chat_nats::subjects::ConvKind::Group(_)))
        .map(|((c, _), l)| {
            let l = l.as_ref().ok();
            let read = l.and_then(|l| l.read.as_ref()).map_or(0, |r| r.n);
            (c.to_string(), read, l.map_or(0, |l| l.head_n))
        })
        .collect();
    let mentions = st.db.mention_counts(me, &group_reads).await?;
    let mut out = Vec::with_capacity(convs.len());
    for ((conv, mut info), last) in convs.into_iter().zip(lasts) {
        let LastAndRead { last, head_n, read } = last.map_err(ClientError::unavailable)?;
        // Everything after the read position counts (the user's own sends
        // move the position to themselves), up to the head: the highest
        // ordinal stored, which an edit or delete carries too, so deleting
        // the newest message does not change the count (protocol.md,
        // "Unread counts").
        let read_n = read.as_ref().map_or(0, |r| r.n);
        let unread = match &last {
            Some(m) if m.from == me && m.n >= head_n => 0,
            _ => head_n.saturating_sub(read_n),
        };
        info["unread"] = json!(unread);
        info["last_n"] = json!(head_n);
        if matches!(conv.kind(), chat_nats::subjects::ConvKind::Group(_)) {
            info["mentions"] = json!(mentions.get(&conv.to_string()).copied().unwrap_or(0));
        }
        info["read_up_to"] = json!(read.map(|r| r.up_to.to_string()));
        info["conv"] = json!(conv.to_string());
        info["last_message"] = match &last {
            Some(m) => {
                json!({"id": m.id.to_string(), "from": m.from.to_string(), "kind": m.kind, "body": m.body, "ts": m.ts, "n": m.n, "event": m.event})
            }
            None => Value::Null,
        };
        out.push((Position(last.map(|m| m.ts).unwrap_or(0), conv.to_string()), info));
    }
    out.sort_by(|a, b| b.0.cmp(&a.0));
    let mut page: Vec<(Position, Value)> =
        out.into_iter().filter(|(p, _)| before.as_ref().is_none_or(|b| p < b)).take(limit + 1).collect();
    let more = page.len() > limit;
    page.truncate(limit);
    let next_before = if more { page.last().map(|(p, _)| p.cursor()) } else { None };
    let conversations: Vec<Value> = page.into_iter().map(|(_, v)| v).collect();
    Ok(json(StatusCode::OK, &json!({ "conversations": conversations, "next_before": next_before })))
}

struct LastAndRead {
    last: Option<StoredMessage>,
    head_n: u64,
    read: Option<chat_nats::envelope::ReadMark>,
}

async fn last_and_read(st: &AppState, me: i64, conv: &ConvId) -> Result<LastAndRead, async_nats::Error> {
    let h = &st.storage.history;
    let events = chat_nats::subjects::history_events(conv);
    let (last, event, read) = futures::try_join!(
        chat_nats::history::last_message(h, conv),
        chat_nats::history::last_on(h, &events),
        crate::messaging::reads::get(&st.storage.reads, me, conv),
    )?;
    let last = last.map(|(_, m)| m);
    let head_n = last.as_ref().map_or(0, |m| m.n).max(event.map_or(0, |(_, e)| e.n));
    Ok(LastAndRead { last, head_n, read })
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
