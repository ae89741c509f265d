//! Friends: requests, acceptance, removal, and the friend list with
//! presence (`PUT`/`DELETE`/`GET /v1/friends`).

use chat_nats::envelope::{Ephemeral, PresenceState};
use chat_nats::subjects;
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::{json, Value};

use crate::http::accounts::authenticate;
use crate::http::{json, ApiError, Resp};
use crate::store::{Db, DbError};
use crate::AppState;

/// What a friend request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A request is now pending.
    Requested,
    /// Both are friends (accepted, or already were).
    Friends,
}

impl Db {
    /// Sends a friend request, or accepts the other user's pending one.
    pub async fn befriend(&self, me: i64, other: i64) -> Result<Outcome, DbError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let already =
            tx.query_opt("SELECT 1 FROM friends WHERE user_id = $1 AND friend_id = $2", &[&me, &other]).await?;
        if already.is_some() {
            return Ok(Outcome::Friends);
        }
        let theirs =
            tx.execute("DELETE FROM friend_requests WHERE from_id = $1 AND to_id = $2", &[&other, &me]).await? > 0;
        let outcome = if theirs {
            tx.execute(
                "INSERT INTO friends (user_id, friend_id) VALUES ($1, $2), ($2, $1) ON CONFLICT DO NOTHING",
                &[&me, &other],
            )
            .await?;
            tx.execute("DELETE FROM friend_requests WHERE from_id = $1 AND to_id = $2", &[&me, &other]).await?;
            Outcome::Friends
        } else {
            tx.execute(
                "INSERT INTO friend_requests (from_id, to_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&me, &other],
            )
            .await?;
            Outcome::Requested
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Ends a friendship, or withdraws or declines a request. True if
    /// there was a friendship.
    pub async fn unfriend(&self, me: i64, other: i64) -> Result<bool, DbError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "DELETE FROM friends WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)",
                &[&me, &other],
            )
            .await?;
        c.execute(
            "DELETE FROM friend_requests WHERE (from_id = $1 AND to_id = $2) OR (from_id = $2 AND to_id = $1)",
            &[&me, &other],
        )
        .await?;
        Ok(n > 0)
    }

    /// The user's friends' ids.
    pub async fn friend_ids(&self, me: i64) -> Result<Vec<i64>, DbError> {
        let c = self.pool.get().await?;
        Ok(c.query("SELECT friend_id FROM friends WHERE user_id = $1", &[&me])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Friends, incoming and outgoing requests: (kind, user id, username).
    pub async fn friend_list(&self, me: i64) -> Result<Vec<(String, i64, String)>, DbError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT 'friend', u.id, u.username FROM friends f JOIN users u ON u.id = f.friend_id WHERE f.user_id = $1
                 UNION ALL SELECT 'incoming', u.id, u.username FROM friend_requests r JOIN users u ON u.id = r.from_id WHERE r.to_id = $1
                 UNION ALL SELECT 'outgoing', u.id, u.username FROM friend_requests r JOIN users u ON u.id = r.to_id WHERE r.from_id = $1
                 ORDER BY 2",
                &[&me],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Of `users`, those the caller may follow: friends, or members of a
    /// group the caller is in.
    pub async fn visible(&self, me: i64, users: &[i64]) -> Result<Vec<i64>, DbError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT u FROM unnest($2::bigint[]) AS u WHERE u = $1
                   OR EXISTS (SELECT 1 FROM friends WHERE user_id = $1 AND friend_id = u)
                   OR EXISTS (SELECT 1 FROM group_members a JOIN group_members b ON a.group_id = b.group_id
                              WHERE a.user_id = $1 AND b.user_id = u)",
                &[&me, &users],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// A user's recorded presence (offline, never seen, when there is none).
pub async fn status_of(st: &AppState, user: i64) -> Option<PresenceState> {
    let v = st.storage.status.get(subjects::status_key(user)).await.ok()??;
    serde_json::from_slice(&v).ok()
}

async fn notify(st: &AppState, user: i64, ev: &Ephemeral) {
    if let Ok(payload) = serde_json::to_vec(ev) {
        let _ = st.client.publish(subjects::ephemeral(user), payload.into()).await;
    }
}

fn other_user(s: &str) -> Result<i64, ApiError> {
    crate::http::id(s, "user id")
}

/// `PUT /v1/friends/{user}`: request, or accept theirs.
pub async fn put(st: &AppState, req: Request<Incoming>, user: &str) -> Result<Resp, ApiError> {
    let me = authenticate(st, &req).await?.user;
    let other = other_user(user)?;
    if other == me {
        return Err(ApiError::bad_request("you cannot befriend yourself"));
    }
    if st.db.user(other).await?.is_none() {
        return Err(ApiError::not_found("no such user"));
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
pub async fn delete(st: &AppState, req: Request<Incoming>, user: &str) -> Result<Resp, ApiError> {
    let me = authenticate(st, &req).await?.user;
    let other = other_user(user)?;
    if st.db.unfriend(me, other).await? {
        notify(st, me, &Ephemeral::Unfriend { user: other }).await;
        notify(st, other, &Ephemeral::Unfriend { user: me }).await;
    }
    Ok(json(StatusCode::OK, &json!({"user_id": other.to_string(), "status": "none"})))
}

/// `GET /v1/friends`.
pub async fn list(st: &AppState, req: Request<Incoming>) -> Result<Resp, ApiError> {
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

/// `POST /v1/logout`: the device's sessions close and its presence ends
/// at once.
pub async fn logout(st: &AppState, req: Request<Incoming>) -> Result<Resp, ApiError> {
    let claims = authenticate(st, &req).await?;
    // Every token of this device issued so far stops working, on every
    // gateway (see `revoked`); a new login gets the new generation.
    if let Some(gen) = st.db.bump_token_gen(claims.user, &claims.device).await? {
        let key = format!("{}.{}", claims.user, claims.device);
        st.revoked_kv.put(&key, gen.to_string().into()).await.map_err(ApiError::unavailable)?;
        // This gateway refuses them at once; the others as their watch
        // delivers the entry (milliseconds).
        st.revoked.apply(&key, Some(gen.to_string().as_bytes()));
    }
    notify(st, claims.user, &Ephemeral::Logout { device: claims.device.clone() }).await;
    let _ = st.client.flush().await;
    // A logged-out phone must stop showing message previews.
    st.db.delete_registration(claims.user, &claims.device).await?;
    // The open sessions delete their own keys as they close; this also ends
    // connections that dropped without a close and are not yet expired.
    crate::conn::presence::end_device(st, claims.user, &claims.device).await.map_err(ApiError::unavailable)?;
    Ok(json(StatusCode::OK, &json!({"logged_out": claims.device})))
}
