//! Friends: requests, acceptance, removal, and the friend list with
//! presence (`PUT`/`DELETE`/`GET /v1/friends`).

use chat_nats::envelope::{Ephemeral, PresenceState};
use chat_nats::subjects;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use crate::conn::presence::notify;
use crate::error::ClientError;
use crate::http::accounts::authenticate;
use crate::http::{json, Resp};
use crate::store::friends::Outcome;
use crate::AppState;

/// A user's recorded presence (offline, never seen, when there is none).
pub async fn status_of(st: &AppState, user: i64) -> Option<PresenceState> {
    let v = st.storage.status.get(subjects::status_key(user)).await.ok()??;
    serde_json::from_slice(&v).ok()
}

fn other_user(s: &str) -> Result<i64, ClientError> {
    crate::http::id(s, "user id")
}

/// `PUT /v1/friends/{user}`: request, or accept theirs.
pub async fn put(st: &AppState, req: Request<Incoming>, user: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let other = other_user(user)?;
    if other == me {
        return Err(ClientError::bad_request("you cannot befriend yourself"));
    }
    if st.db.user(other).await?.is_none() {
        return Err(ClientError::not_found("no such user"));
    }
    let outcome = st.db.befriend(me, other).await?;
    if outcome == Outcome::Friends {
        notify(st, me, &Ephemeral::Friend { user: other }).await;
        notify(st, other, &Ephemeral::Friend { user: me }).await;
    }
    let (status, word) = match outcome {
        Outcome::Friends => (StatusCode::OK, "friends"),
        Outcome::Requested => (StatusCode::ACCEPTED, "requested"),
    };
    Ok(json(status, &json!({"user_id": other.to_string(), "status": word})))
}

/// `DELETE /v1/friends/{user}`: unfriend, withdraw or decline.
pub async fn delete(st: &AppState, req: Request<Incoming>, user: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let other = other_user(user)?;
    if st.db.unfriend(me, other).await? {
        notify(st, me, &Ephemeral::Unfriend { user: other }).await;
        notify(st, other, &Ephemeral::Unfriend { user: me }).await;
    }
    Ok(json(StatusCode::OK, &json!({"user_id": other.to_string(), "status": "none"})))
}

/// `GET /v1/friends`.
pub async fn list(st: &AppState, req: Request<Incoming>) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let (mut friends, mut incoming, mut outgoing) = (Vec::new(), Vec::new(), Vec::new());
    for (kind, id, username) in st.db.friend_list(me).await? {
        let mut entry = json!({"user_id": id.to_string(), "username": username});
        match kind.as_str() {
            "friend" => {
                let state = status_of(st, id).await;
                entry["status"] = json!(state.as_ref().map(|s| s.status).unwrap_or(chat_nats::wire::Status::Offline));
                entry["last_active_at"] = state.map(|s| json!(s.last_active_at)).unwrap_or(Value::Null);
                friends.push(entry);
            }
            "incoming" => incoming.push(entry),
            _ => outgoing.push(entry),
        }
    }
    Ok(json(StatusCode::OK, &json!({"friends": friends, "incoming": incoming, "outgoing": outgoing})))
}
