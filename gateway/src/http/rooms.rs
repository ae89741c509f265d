//! Live room HTTP API: create, show (with the approximate viewer count),
//! title/topic changes (announced in the room as a system message), each
//! user's standing (moderator, listed poster, invited), and the owner's
//! and moderators' bans and mutes.
//!
//! A ban also removes the user's sessions from the room at once, on every
//! gateway: a [`RoomControl::Ban`] on the room's control subject, which
//! every gateway with viewers of the room receives.

use bytes::Bytes;
use chat_nats::envelope::{GroupEvent, GroupMeta, GroupOp, MessageKind, RoomControl};
use chat_nats::subjects::{self, ConvId};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::error::ClientError;
use crate::http::accounts::authenticate;
use crate::http::{json, read_json, Resp};
use crate::messaging::send::Outgoing;
use crate::rooms::access;
use crate::store::rooms::{JoinPolicy, PostPolicy, Room, Sanction, Standing};
use crate::AppState;

/// Longest room title, in characters.
const MAX_TITLE_CHARS: usize = 100;
/// Longest room topic, in characters.
const MAX_TOPIC_CHARS: usize = 500;
/// Most users one request may list.
const MAX_LISTED: usize = 1000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateReq {
    title: String,
    #[serde(default)]
    topic: String,
    /// `everyone` (default) or `listed`.
    #[serde(default)]
    post: Option<String>,
    /// `anyone` (default) or `invited`.
    #[serde(default)]
    join: Option<String>,
    #[serde(default)]
    posters: Vec<String>,
    #[serde(default)]
    invited: Vec<String>,
    #[serde(default)]
    moderators: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaReq {
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    topic: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StandingReq {
    #[serde(default)]
    moderator: Option<bool>,
    #[serde(default)]
    poster: Option<bool>,
    #[serde(default)]
    invited: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SanctionReq {
    /// How long, in seconds; absent: until lifted.
    #[serde(default)]
    secs: Option<u32>,
}

fn title(t: &str) -> Result<String, ClientError> {
    let t = t.trim();
    if t.is_empty() || t.chars().count() > MAX_TITLE_CHARS {
        return Err(ClientError::bad_request(format!("title must be 1-{MAX_TITLE_CHARS} characters")));
    }
    Ok(t.to_owned())
}

fn topic(t: &str) -> Result<&str, ClientError> {
    if t.chars().count() > MAX_TOPIC_CHARS {
        return Err(ClientError::bad_request(format!("topic exceeds {MAX_TOPIC_CHARS} characters")));
    }
    Ok(t)
}

fn ids(list: &[String], what: &str) -> Result<Vec<i64>, ClientError> {
    if list.len() > MAX_LISTED {
        return Err(ClientError::bad_request(format!("{what} lists more than {MAX_LISTED} users")));
    }
    list.iter().map(|u| crate::http::id(u, what)).collect()
}

fn path_room(s: &str) -> Result<i64, ClientError> {
    crate::http::id(s, "room id")
}

fn room_json(r: &Room, viewers: u64) -> Value {
    json!({"room": r.id.to_string(), "conv": ConvId::room(r.id).to_string(), "title": r.title, "topic": r.topic,
           "owner": r.owner.to_string(), "post": r.post.as_str(), "join": r.join.as_str(), "viewers": viewers})
}

/// `POST /v1/rooms`: any logged-in user creates a room and owns it.
pub async fn create(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let r: CreateReq = read_json(req).await?;
    let t = title(&r.title)?;
    let post = match r.post.as_deref() {
        None => PostPolicy::Everyone,
        Some(p) => PostPolicy::parse(p).ok_or_else(|| ClientError::bad_request("post must be everyone or listed"))?,
    };
    let join = match r.join.as_deref() {
        None => JoinPolicy::Anyone,
        Some(j) => JoinPolicy::parse(j).ok_or_else(|| ClientError::bad_request("join must be anyone or invited"))?,
    };
    let lists = [ids(&r.posters, "posters[]")?, ids(&r.invited, "invited[]")?, ids(&r.moderators, "moderators[]")?];
    let room = st
        .db
        .create_room(me, &t, topic(&r.topic)?, post, join, [&lists[0], &lists[1], &lists[2]])
        .await?
        .ok_or_else(|| ClientError::new(chat_nats::wire::ErrorCode::UnknownUser, "no such user"))?;
    Ok(json(StatusCode::CREATED, &room_json(&room, 0)))
}

/// `GET /v1/rooms/{room}`: whoever may join it; `viewers` is approximate
/// (other gateways' counts are a few seconds old).
pub async fn show(st: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let room = path_room(id)?;
    let a = access::joinable(st, room, me).await?;
    Ok(json(StatusCode::OK, &room_json(&a.room, st.room_viewers(room))))
}

/// `PATCH /v1/rooms/{room}` (owner or moderator): title and topic,
/// announced in the room as a system message (`event.op` `meta`, with
/// `meta.name` the title); returns once it is sequenced.
pub async fn update(st: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let room = path_room(id)?;
    let r: MetaReq = read_json(req).await?;
    access::moderator(st, room, me).await?;
    let t = r.title.as_deref().map(title).transpose()?;
    let tp = r.topic.as_deref().map(topic).transpose()?;
    if t.is_none() && tp.is_none() {
        return Err(ClientError::bad_request("nothing to change: give title or topic"));
    }
    let (updated, version) = st
        .db
        .set_room_meta(room, t.as_deref(), tp)
        .await?
        .ok_or_else(|| ClientError::new(chat_nats::wire::ErrorCode::UnknownRoom, "no such room"))?;
    let meta = GroupMeta { name: updated.title.clone(), topic: updated.topic.clone(), avatar_url: String::new() };
    let event = GroupEvent {
        op: GroupOp::Meta,
        actor: me,
        user: None,
        version: version as u64,
        members: Vec::new(),
        meta: Some(Box::new(meta)),
    };
    let conv = ConvId::room(room);
    let out = Outgoing {
        from: me,
        device: "sys",
        cid: &format!("r{room}m{version}"),
        conv: &conv,
        kind: MessageKind::System,
        body: format!("{me} changed the room's details"),
        event: Some(event),
        target: None,
        reply_to: None,
        mentions: Vec::new(),
    };
    st.sender.send(out).await?;
    Ok(json(StatusCode::OK, &room_json(&updated, st.room_viewers(room))))
}

/// `PUT /v1/rooms/{room}/users/{user}` (owner; moderators for `poster`
/// and `invited`): a user's standing.
pub async fn standing(st: &AppState, req: Request<Incoming>, id: &str, user: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let room = path_room(id)?;
    let user = crate::http::id(user, "user id")?;
    let r: StandingReq = read_json(req).await?;
    let a = access::moderator(st, room, me).await?;
    if r.moderator.is_some() && a.room.owner != me {
        return Err(ClientError::forbidden("only the owner names moderators"));
    }
    let s = Standing { moderator: r.moderator, poster: r.poster, invited: r.invited };
    if !st.db.set_room_standing(room, user, s).await? {
        return Err(ClientError::new(chat_nats::wire::ErrorCode::UnknownUser, "no such user"));
    }
    Ok(json(StatusCode::OK, &json!({"room": room.to_string(), "user": user.to_string()})))
}

/// `PUT`/`DELETE /v1/rooms/{room}/bans/{user}` and `.../mutes/{user}`
/// (owner or moderator; the owner cannot be banned or muted, nor can a
/// moderator be by another moderator): `{"secs": n}` or until lifted.
pub async fn sanction(
    st: &AppState,
    req: Request<Incoming>,
    id: &str,
    user: &str,
    what: Sanction,
    lift: bool,
) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let room = path_room(id)?;
    let user = crate::http::id(user, "user id")?;
    let r: SanctionReq = if lift { SanctionReq::default() } else { read_json(req).await? };
    let a = access::moderator(st, room, me).await?;
    let target = access::of(st, room, user).await?;
    if user == a.room.owner || (target.moderator && a.room.owner != me) {
        return Err(ClientError::forbidden("the owner, and moderators (but by the owner), cannot be banned or muted"));
    }
    if !st.db.sanction_room_user(room, user, what, r.secs.map(i64::from), lift).await? {
        return Err(ClientError::new(chat_nats::wire::ErrorCode::UnknownUser, "no such user"));
    }
    if what == Sanction::Ban && !lift {
        let notice = Bytes::from(serde_json::to_vec(&RoomControl::Ban { user }).expect("serializable"));
        st.client.publish(subjects::room_control(room), notice).await.map_err(ClientError::unavailable)?;
    }
    Ok(json(
        StatusCode::OK,
        &json!({"room": room.to_string(), "user": user.to_string(), "secs": r.secs, "lifted": lift}),
    ))
}
