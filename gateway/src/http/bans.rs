//! Operator endpoints for accounts (credential `CHAT_OPERATOR_TOKEN`, see
//! `edges::require_operator`): ban and unban a user, and list a user's devices
//! and live sessions.
//!
//! A ban raises every device's token generation (as a logout does for
//! one device, see `auth::revoked`), so no token issued before it works on
//! any gateway; announces `Ephemeral::Banned` so every open session of the
//! user closes at once with 4011 `banned`, on every gateway; and deletes
//! the user's presence keys. A login answers 403 `banned` until the ban
//! ends (`duration_secs`) or is lifted.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde::Deserialize;
use serde_json::json;

use chat_nats::envelope::Ephemeral;
use chat_nats::subjects;

use crate::error::ClientError;
use crate::http::edges::require_operator;
use crate::http::{json, read_json, Resp};
use crate::store::Ban;
use crate::AppState;

/// Longest ban reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest timed ban: ten years (longer is a ban until lifted).
pub const MAX_BAN_SECS: u64 = 10 * 365 * 24 * 3600;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BanReq {
    #[serde(default)]
    reason: String,
    /// How long; absent: until lifted.
    #[serde(default)]
    duration_secs: Option<u64>,
}

fn ban_json(b: &Option<Ban>) -> serde_json::Value {
    match b {
        Some(b) => json!({"since_ms": b.since_ms, "until_ms": b.until_ms, "reason": b.reason}),
        None => serde_json::Value::Null,
    }
}

/// `PUT /v1/admin/users/{id}/ban`: bans the user (again: replaces the
/// previous ban's end and reason).
pub async fn ban(st: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ClientError> {
    require_operator(st, &req)?;
    let user = crate::http::id(id, "user id")?;
    let r: BanReq = read_json(req).await?;
    if r.reason.chars().count() > MAX_REASON_CHARS {
        return Err(ClientError::bad_request(format!("reason exceeds {MAX_REASON_CHARS} characters")));
    }
    let until_ms = match r.duration_secs {
        None => None,
        Some(s) if (1..=MAX_BAN_SECS).contains(&s) => Some(crate::auth::now_secs() as i64 * 1000 + s as i64 * 1000),
        Some(_) => return Err(ClientError::bad_request(format!("duration_secs must be 1-{MAX_BAN_SECS}"))),
    };
    let devices = st.db.ban(user, until_ms, &r.reason).await?.ok_or_else(|| ClientError::not_found("no such user"))?;
    // No token issued before now passes, on any gateway (a new login is
    // refused while the ban lasts).
    for (device, gen) in &devices {
        let key = subjects::revoked_key(user, device);
        st.revoked_kv.put(&key, gen.to_string().into()).await.map_err(ClientError::unavailable)?;
        st.revoked.apply(&key, Some(gen.to_string().as_bytes()));
    }
    crate::conn::presence::notify(st, user, &Ephemeral::Banned).await;
    let _ = st.client.flush().await;
    for (device, _) in &devices {
        crate::conn::presence::end_device(st, user, device).await.map_err(ClientError::unavailable)?;
    }
    let current = st.db.ban_of(user).await?;
    Ok(json(StatusCode::OK, &json!({"user": user.to_string(), "ban": ban_json(&current), "devices": devices.len()})))
}

/// `DELETE /v1/admin/users/{id}/ban`: lifts the ban (the user logs in
/// again; tokens from before the ban stay void).
pub async fn unban(st: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ClientError> {
    require_operator(st, &req)?;
    let user = crate::http::id(id, "user id")?;
    if !st.db.unban(user).await? {
        return Err(ClientError::not_found("no such user"));
    }
    Ok(json(StatusCode::OK, &json!({"user": user.to_string(), "ban": null})))
}

/// `GET /v1/admin/users/{id}`: the account, its ban, its devices and the
/// sessions live now (one presence key per connection, on any gateway).
pub async fn show(st: &AppState, req: Request<Incoming>, id: &str) -> Result<Resp, ClientError> {
    require_operator(st, &req)?;
    let user = crate::http::id(id, "user id")?;
    let u = st.db.user(user).await?.ok_or_else(|| ClientError::not_found("no such user"))?;
    let ban = st.db.ban_of(user).await?;
    let devices: Vec<_> = st
        .db
        .devices(user)
        .await?
        .into_iter()
        .map(|(device, created_ms, last_login_ms, token_gen)| {
            json!({"device": device, "created_ms": created_ms, "last_login_ms": last_login_ms, "token_gen": token_gen})
        })
        .collect();
    let sessions = live_sessions(st, user).await.map_err(ClientError::unavailable)?;
    Ok(json(
        StatusCode::OK,
        &json!({
            "user": user.to_string(),
            "username": u.username,
            "created_ms": u.created_ms,
            "ban": ban_json(&ban),
            "devices": devices,
            "sessions": sessions,
        }),
    ))
}

/// The user's connections with a live heartbeat key: device and
/// connection number.
async fn live_sessions(st: &AppState, user: i64) -> Result<Vec<serde_json::Value>, async_nats::Error> {
    let kv = &st.storage.presence;
    let filter = format!("{}{user}.*.*", kv.prefix);
    let mut info = kv.stream.info_with_subjects(filter).await?;
    let mut out = Vec::new();
    while let Some((subject, _)) = futures::TryStreamExt::try_next(&mut info).await? {
        let Some(key) = subject.strip_prefix(kv.prefix.as_str()) else { continue };
        let mut parts = key.splitn(3, '.');
        let (_, device, conn) = (parts.next(), parts.next(), parts.next());
        // A deleted key keeps its delete marker's subject until it ages out.
        if let (Some(device), Some(conn), Ok(Some(_))) = (device, conn, kv.get(key).await) {
            out.push(json!({"device": device, "conn": conn}));
        }
    }
    Ok(out)
}
