//! Group HTTP API: create, list, show, add, remove/leave, roles, meta
//! information (name, topic, avatar URL).
//!
//! PostgreSQL decides who may do what and orders changes by a per-group
//! version; each committed change is then announced as a system message
//! through the sequencer, which applies the new member list in
//! conversation order. The request returns once that system message is
//! sequenced, so anything sent after the response sees the new membership.

use chat_nats::envelope::{GroupEvent, GroupOp, MessageKind};
use chat_nats::subjects::ConvId;
use chat_nats::wire::ErrorCode;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::error::ClientError;
use crate::http::accounts::authenticate;
use crate::http::{json, read_json, Resp};
use crate::messaging::send::Outgoing;
use crate::store::groups::{Change, GroupError, Op, Role};
use crate::AppState;

impl From<GroupError> for ClientError {
    fn from(e: GroupError) -> ClientError {
        match e {
            GroupError::NotFound => ClientError::not_found("no such group"),
            GroupError::Forbidden(m) => ClientError::forbidden(m),
            GroupError::Full(n) => ClientError::new(ErrorCode::GroupFull, format!("the group is full ({n} members)")),
            GroupError::UnknownUser => ClientError::new(ErrorCode::UnknownUser, "no such user"),
            GroupError::Invalid(m) => ClientError::new(ErrorCode::Conflict, m),
            GroupError::Db(e) => ClientError::unavailable(e),
        }
    }
}

fn parse_id(s: &str, what: &str) -> Result<i64, ClientError> {
    crate::http::id(s, what)
}

fn path_group(s: &str) -> Result<i64, ClientError> {
    crate::http::id(s, "group id")
}

#[derive(Deserialize)]
struct CreateReq {
    name: String,
    #[serde(default)]
    members: Vec<String>,
}

#[derive(Deserialize)]
struct AddReq {
    user_id: String,
}

#[derive(Deserialize)]
struct RoleReq {
    role: String,
}

/// Announces a committed change as a system message and waits until it is
/// sequenced.
async fn announce(
    st: &AppState,
    actor: i64,
    group: i64,
    op: GroupOp,
    user: Option<i64>,
    change: &Change,
) -> Result<(), ClientError> {
    let event = GroupEvent {
        op,
        actor,
        user: user.map(|u| u.to_string()),
        version: change.version,
        members: change.members.iter().map(i64::to_string).collect(),
        meta: None,
    };
    let body = match (op, user) {
        (GroupOp::Created, _) => format!("{actor} created the group"),
        (GroupOp::Added, Some(u)) => format!("{actor} added {u}"),
        (GroupOp::Removed, Some(u)) => format!("{actor} removed {u}"),
        (GroupOp::Left, _) => format!("{actor} left"),
        (GroupOp::Role, Some(u)) => format!("{actor} changed the role of {u}"),
        _ => "membership changed".to_string(),
    };
    post_system(st, actor, group, &format!("g{group}v{}", change.version), body, event).await
}

/// Sends a group system message carrying `event` and waits until it is
/// sequenced; `cid` makes it idempotent.
async fn post_system(
    st: &AppState,
    actor: i64,
    group: i64,
    cid: &str,
    body: String,
    event: GroupEvent,
) -> Result<(), ClientError> {
    let conv = ConvId::group(group);
    let out = Outgoing {
        from: actor,
        device: "sys",
        cid,
        conv: &conv,
        kind: MessageKind::System,
        body,
        event: Some(event),
        target: None,
        reply_to: None,
        mentions: Vec::new(),
    };
    let sent = st.sender.send(out).await?;
    // The actor's own system message counts as read by them, like an own
    // send (the unread counts of protocol.md count it so on the device).
    if st.cfg.own_send_reads && sent.n > 0 {
        st.own_reads.record((actor, conv), (sent.n, sent.id));
    }
    Ok(())
}

/// A group name as stored: trimmed, 1-100 characters.
fn group_name(name: &str) -> Result<String, ClientError> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ClientError::bad_request("name must be 1-100 characters"));
    }
    Ok(name.to_owned())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MetaReq {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    avatar_url: Option<String>,
}

/// Longest group topic, in characters.
pub const MAX_TOPIC_CHARS: usize = 500;
/// Longest avatar URL, in bytes.
pub const MAX_AVATAR_URL_BYTES: usize = 500;

/// `PATCH /v1/groups/{id}` (owner or admin): sets the name, topic or
/// avatar URL, and announces the change to the members as a system message
/// (`event.op` `meta`) in conversation order; returns once it is sequenced.
pub async fn update(st: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let gid = path_group(id)?;
    let r: MetaReq = read_json(req).await?;
    let name = r.name.as_deref().map(group_name).transpose()?;
    if r.topic.as_ref().is_some_and(|t| t.chars().count() > MAX_TOPIC_CHARS) {
        return Err(ClientError::bad_request(format!("topic exceeds {MAX_TOPIC_CHARS} characters")));
    }
    if let Some(u) = &r.avatar_url {
        let ok = u.is_empty()
            || (u.len() <= MAX_AVATAR_URL_BYTES
                && u.starts_with("https://")
                && u.len() > "https://".len()
                && !u.chars().any(|c| c.is_whitespace() || c.is_control()));
        if !ok {
            return Err(ClientError::bad_request(format!(
                "avatar_url must be empty or an https:// URL of at most {MAX_AVATAR_URL_BYTES} bytes without spaces"
            )));
        }
    }
    if name.is_none() && r.topic.is_none() && r.avatar_url.is_none() {
        return Err(ClientError::bad_request("nothing to change: give name, topic or avatar_url"));
    }
    let (meta, meta_version, change) =
        st.db.set_meta(gid, me, name.as_deref(), r.topic.as_deref(), r.avatar_url.as_deref()).await?;
    let event = GroupEvent {
        op: GroupOp::Meta,
        actor: me,
        user: None,
        version: change.version,
        members: change.members.iter().map(i64::to_string).collect(),
        meta: Some(Box::new(meta.clone())),
    };
    post_system(st, me, gid, &format!("g{gid}m{meta_version}"), format!("{me} changed the group's details"), event)
        .await?;
    Ok(json(
        StatusCode::OK,
        &json!({"group_id": gid.to_string(), "name": meta.name, "topic": meta.topic, "avatar_url": meta.avatar_url,
                "meta_version": meta_version}),
    ))
}

/// `POST /v1/groups`.
pub async fn create(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let r: CreateReq = read_json(req).await?;
    let name = group_name(&r.name)?;
    let members = r.members.iter().map(|m| parse_id(m, "members[]")).collect::<Result<Vec<_>, _>>()?;
    let (gid, change) = st.db.create_group(me, &name, &members, st.cfg.group_max_members).await?;
    announce(st, me, gid, GroupOp::Created, None, &change).await?;
    let members: Vec<String> = change.members.iter().map(i64::to_string).collect();
    Ok(json(
        StatusCode::CREATED,
        &json!({"group_id": gid.to_string(), "conv": ConvId::group(gid).to_string(), "name": name, "members": members}),
    ))
}

/// `GET /v1/groups`.
pub async fn list(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let groups: Vec<_> = st
        .db
        .my_groups(me)
        .await?
        .into_iter()
        .map(|(id, name, role, count)| {
            json!({"group_id": id.to_string(), "conv": ConvId::group(id).to_string(), "name": name,
                   "role": role.as_str(), "members_count": count})
        })
        .collect();
    Ok(json(StatusCode::OK, &json!({ "groups": groups })))
}

/// `GET /v1/groups/{id}` (members only).
pub async fn show(st: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let gid = path_group(id)?;
    let (name, members) = st.db.group(gid).await?.ok_or_else(|| ClientError::not_found("no such group"))?;
    if !members.iter().any(|m| m.user_id == me) {
        return Err(ClientError::forbidden("not a member of this group"));
    }
    let (topic, avatar_url) = st.db.group_meta(gid).await?.unwrap_or_default();
    let members: Vec<_> = members
        .iter()
        .map(|m| json!({"user_id": m.user_id.to_string(), "username": m.username, "role": m.role.as_str()}))
        .collect();
    Ok(json(
        StatusCode::OK,
        &json!({"group_id": gid.to_string(), "conv": ConvId::group(gid).to_string(), "name": name,
                "topic": topic, "avatar_url": avatar_url,
                "max_members": st.cfg.group_max_members, "members": members}),
    ))
}

async fn change(st: &AppState, me: i64, gid: i64, user: i64, op: Op) -> Result<Resp, ClientError> {
    let changed = st.db.change_member(gid, me, user, op, st.cfg.group_max_members).await?;
    let version = match changed {
        Some((kind, change)) => {
            if matches!(kind, GroupOp::Removed | GroupOp::Left) {
                // Committed: follows the membership allowed end now, even if
                // the announcement below fails.
                crate::conn::presence::relationship_ended(st, user, &change.members).await;
            }
            announce(st, me, gid, kind, Some(user), &change).await?;
            change.version
        }
        None => 0,
    };
    Ok(json(StatusCode::OK, &json!({"group_id": gid.to_string(), "user_id": user.to_string(), "version": version})))
}

/// `POST /v1/groups/{id}/members` (owner or admin).
pub async fn add(st: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let gid = path_group(id)?;
    let r: AddReq = read_json(req).await?;
    change(st, me, gid, parse_id(&r.user_id, "user_id")?, Op::Add).await
}

/// `DELETE /v1/groups/{id}/members/{user}`: remove (owner/admin) or leave.
pub async fn remove(st: &AppState, req: Request<Incoming>, id: &str, user: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let gid = path_group(id)?;
    change(st, me, gid, parse_id(user, "user")?, Op::Remove).await
}

/// `PUT /v1/groups/{id}/members/{user}/role` (owner).
pub async fn set_role(st: &AppState, req: Request<Incoming>, id: &str, user: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let gid = path_group(id)?;
    let user = parse_id(user, "user")?;
    let r: RoleReq = read_json(req).await?;
    let role = Role::parse(&r.role).ok_or_else(|| ClientError::bad_request("role must be admin or member"))?;
    change(st, me, gid, user, Op::SetRole(role)).await
}
