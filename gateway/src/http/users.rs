//! User profiles: `GET /v1/users/{id}` and `GET /v1/users/by-name/{name}`.
//!
//! A lookup answers one exact id or one exact username, never a list or a
//! prefix, and every lookup (found or not) spends one token of the
//! caller's lookup budget ([`Lookups`]: `CHAT_USER_LOOKUP_PER_MIN`, burst
//! `CHAT_USER_LOOKUP_BURST`, per user and per gateway), so the routes
//! cannot be used to walk through every account.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::json;

use crate::error::ClientError;
use crate::http::accounts::{authenticate, normalize_username};
use crate::http::limits::Budget;
use crate::http::{json, Resp};
use crate::store::User;
use crate::AppState;

/// Each user's lookup budget on this gateway.
#[derive(Debug)]
pub struct Lookups(Budget<i64>);

impl Lookups {
    /// `per_min` lookups a minute per user, up to `burst` at once.
    pub fn new(per_min: u32, burst: u32) -> Lookups {
        Lookups(Budget::new(per_min, burst))
    }

    /// Spends one of `user`'s lookups, or refuses with `rate_limited`.
    pub fn spend(&self, user: i64) -> Result<(), ClientError> {
        self.0.spend(user).map_err(|wait| {
            ClientError::rate_limited(
                format!("too many user lookups (at most {} a minute); retry later", self.0.per_min()),
                wait,
            )
        })
    }
}

fn profile(u: User) -> Resp {
    json(StatusCode::OK, &json!({"user_id": u.id.to_string(), "username": u.username, "created_at": u.created_ms}))
}

/// `GET /v1/users/{id}`.
pub async fn by_id(st: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let id = crate::http::id(id, "user id")?;
    st.lookups.spend(me)?;
    let u = st.db.user(id).await?.ok_or_else(|| ClientError::not_found("no such user"))?;
    Ok(profile(u))
}

/// `GET /v1/users/by-name/{name}`: the one user with exactly that username
/// (case-insensitive, as at login).
pub async fn by_name(st: &AppState, req: Request<Incoming>, name: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let name = normalize_username(name)
        .ok_or_else(|| ClientError::bad_request("a username is 3-32 characters of a-z, 0-9, '_', '.', '-'"))?;
    st.lookups.spend(me)?;
    let u = st.db.user_by_name(&name).await?.ok_or_else(|| ClientError::not_found("no such user"))?;
    Ok(profile(u))
}

/// The body of `PATCH /v1/users/{id}`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Update {
    /// Send read receipts to 1:1 peers (and show the read position to
    /// other participants).
    read_receipts: Option<bool>,
}

/// `PATCH /v1/users/{id}`: the caller's own settings (`forbidden` for
/// another user's); answers `{"user_id", "read_receipts"}`.
pub async fn update(st: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let id = crate::http::id(id, "user id")?;
    if id != me {
        return Err(ClientError::forbidden("only your own profile"));
    }
    let body: Update = crate::http::body::read_json(req).await?;
    if let Some(on) = body.read_receipts {
        st.db.set_read_receipts(me, on).await?;
    }
    let on = st.db.read_receipts(me).await?;
    Ok(json(StatusCode::OK, &json!({"user_id": me.to_string(), "read_receipts": on})))
}

#[cfg(test)]
mod tests {
    use super::Lookups;

    #[test]
    fn each_user_has_a_budget_of_their_own() {
        let l = Lookups::new(1, 3);
        for _ in 0..3 {
            assert!(l.spend(1).is_ok());
        }
        assert_eq!(l.spend(1).unwrap_err().code, chat_nats::wire::ErrorCode::RateLimited);
        assert!(l.spend(2).is_ok());
    }
}
