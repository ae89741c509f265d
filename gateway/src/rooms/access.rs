//! Who may join, read, post in and moderate a room (PostgreSQL decides,
//! one query per check: see `store::rooms`).

use chat_nats::wire::ErrorCode;

use crate::error::ClientError;
use crate::store::rooms::Access;
use crate::AppState;

/// Parses a room id from a frame or a path.
pub fn room_id(s: &str) -> Result<i64, ClientError> {
    chat_nats::subjects::parse_id(s)
        .ok_or_else(|| ClientError::new(ErrorCode::BadFrame, "room must be an id: decimal, no sign or leading zero"))
}

/// The caller's standing in a room; `unknown_room` if there is none.
pub async fn of(state: &AppState, room: i64, user: i64) -> Result<Access, ClientError> {
    state
        .db
        .room_access(room, user)
        .await?
        .ok_or_else(|| ClientError::new(ErrorCode::UnknownRoom, format!("no room {room}")))
}

/// The caller may join (and read the history of) the room.
pub async fn joinable(state: &AppState, room: i64, user: i64) -> Result<Access, ClientError> {
    let a = of(state, room, user).await?;
    if a.banned_until_ms.is_some() {
        return Err(ClientError::forbidden("banned from this room"));
    }
    if !a.may_join() {
        return Err(ClientError::forbidden("this room is by invitation"));
    }
    Ok(a)
}

/// The caller may post in the room now.
pub async fn postable(state: &AppState, room: i64, user: i64) -> Result<(), ClientError> {
    let a = joinable(state, room, user).await?;
    if !a.may_post() {
        return Err(ClientError::forbidden("only listed users may post in this room"));
    }
    if let Some(until) = a.muted_until_ms {
        let now = (crate::auth::now_secs() * 1000) as i64;
        let ms = until.saturating_sub(now).max(1) as u64;
        return Err(ClientError::retry_later(ErrorCode::Muted, "muted in this room", ms));
    }
    Ok(())
}

/// The caller owns or moderates the room.
pub async fn moderator(state: &AppState, room: i64, user: i64) -> Result<Access, ClientError> {
    let a = of(state, room, user).await?;
    if !a.moderator {
        return Err(ClientError::forbidden("only the room's owner and moderators may do this"));
    }
    Ok(a)
}
