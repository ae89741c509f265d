//! Push registrations and muted conversations (HTTP API; the SQL is in
//! `store::push`).
//!
//! - `PUT|GET|DELETE /v1/devices/{device}/push`: one registration per
//!   device of the caller (`fcm` or `apns` token, or a Web Push
//!   subscription). The device must be one the caller has logged in from.
//! - `PUT|DELETE /v1/conversations/{conv}/mute`: participants only.
//!
//! After a change the gateway publishes the user id on
//! [`subjects::PUSH_CHANGED`] so push planners drop what they cached.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chat_nats::subjects;
use chat_nats::wire::ErrorCode;
use hyper::body::Incoming;
use hyper::{Request, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::error::ClientError;
use crate::http::accounts::authenticate;
use crate::http::messages::participant;
use crate::http::{json, read_json, Resp};
use crate::AppState;

/// Longest FCM or APNs token accepted.
pub const MAX_TOKEN_CHARS: usize = 4096;
/// Longest Web Push endpoint accepted.
pub const MAX_ENDPOINT_CHARS: usize = 2048;

/// A registration request body.
#[derive(Debug, Deserialize)]
#[serde(tag = "provider", rename_all = "lowercase")]
enum PushReq {
    Fcm { token: String },
    Apns { token: String },
    Webpush { subscription: Subscription },
}

/// A Web Push subscription, as a browser's `PushSubscription.toJSON()`
/// gives it (keys in base64url).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    /// The push service URL.
    pub endpoint: String,
    /// The user agent's keys.
    pub keys: SubscriptionKeys,
}

/// Keys of a [`Subscription`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionKeys {
    /// The user agent's P-256 public key, uncompressed (65 bytes), base64url.
    pub p256dh: String,
    /// The 16-byte authentication secret, base64url.
    pub auth: String,
}

fn decode_b64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

impl Subscription {
    /// Checks the endpoint and keys; the error says what is wrong.
    pub fn validate(&self, allow_http: bool) -> Result<(), String> {
        if self.endpoint.len() > MAX_ENDPOINT_CHARS {
            return Err(format!("subscription.endpoint is longer than {MAX_ENDPOINT_CHARS} characters"));
        }
        let uri: Uri = self.endpoint.parse().map_err(|_| "subscription.endpoint is not a URL".to_string())?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if allow_http => {}
            _ => return Err("subscription.endpoint must be an https:// URL".into()),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err("subscription.endpoint has no host".into());
        }
        match decode_b64url(&self.keys.p256dh) {
            Some(k) if k.len() == 65 && k[0] == 4 => {}
            _ => {
                return Err("subscription.keys.p256dh must be an uncompressed P-256 point (65 bytes, base64url)".into())
            }
        }
        match decode_b64url(&self.keys.auth) {
            Some(k) if k.len() == 16 => {}
            _ => return Err("subscription.keys.auth must be 16 bytes, base64url".into()),
        }
        Ok(())
    }
}

fn check_token(provider: &str, token: &str) -> Result<(), ClientError> {
    let ok = match provider {
        // APNs device tokens are hex (64 characters today).
        "apns" => (16..=512).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_hexdigit()),
        _ => (1..=MAX_TOKEN_CHARS).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic()),
    };
    if ok {
        Ok(())
    } else {
        Err(ClientError::bad_request(match provider {
            "apns" => "token must be 16-512 hexadecimal characters".to_string(),
            _ => format!("token must be 1-{MAX_TOKEN_CHARS} printable ASCII characters"),
        }))
    }
}

fn disabled(provider: &str) -> ClientError {
    ClientError::new(
        ErrorCode::PushProviderDisabled,
        format!("push provider {provider} is not configured on this deployment"),
    )
}

/// Checks the path's device belongs to the caller.
async fn own_device(st: &AppState, user: i64, device: &str) -> Result<(), ClientError> {
    if !subjects::is_token(device) {
        return Err(ClientError::bad_request("device id must be 1-64 characters of [A-Za-z0-9_-]"));
    }
    if st.db.has_device(user, device).await? {
        Ok(())
    } else {
        Err(ClientError::not_found("no such device for this user (log in from it first)"))
    }
}

async fn changed(st: &AppState, user: i64) {
    if let Err(e) = st.client.publish(subjects::PUSH_CHANGED, user.to_string().into()).await {
        tracing::warn!(user_id = user, error = %e, "cannot announce a push change");
    }
}

/// `PUT /v1/devices/{device}/push`.
pub async fn put_device(st: &AppState, req: Request<Incoming>, device: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    own_device(st, me, device).await?;
    let providers = st.cfg.push_providers;
    let req = read_json::<PushReq>(req).await?;
    let (provider, enabled) = match &req {
        PushReq::Fcm { .. } => ("fcm", providers.fcm),
        PushReq::Apns { .. } => ("apns", providers.apns),
        PushReq::Webpush { .. } => ("webpush", providers.webpush),
    };
    // A provider this deployment does not run is refused before its
    // credentials are looked at, the same for every provider.
    if !enabled {
        return Err(disabled(provider));
    }
    let token = match req {
        PushReq::Fcm { token } | PushReq::Apns { token } => {
            check_token(provider, &token)?;
            token
        }
        PushReq::Webpush { subscription } => {
            subscription.validate(st.cfg.webpush_allow_http).map_err(ClientError::bad_request)?;
            serde_json::to_string(&subscription).map_err(ClientError::unavailable)?
        }
    };
    st.db.put_registration(me, device, provider, &token).await?;
    changed(st, me).await;
    Ok(json(StatusCode::OK, &json!({"device_id": device, "provider": provider})))
}

/// `GET /v1/devices/{device}/push`.
pub async fn get_device(st: &AppState, req: Request<Incoming>, device: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    own_device(st, me, device).await?;
    let (provider, token) =
        st.db.registration(me, device).await?.ok_or_else(|| ClientError::not_found("no push registration"))?;
    let mut body = json!({"device_id": device, "provider": provider});
    if provider == "webpush" {
        body["subscription"] = serde_json::from_str(&token).unwrap_or_default();
    } else {
        body["token"] = json!(token);
    }
    Ok(json(StatusCode::OK, &body))
}

/// `DELETE /v1/devices/{device}/push`.
pub async fn delete_device(st: &AppState, req: Request<Incoming>, device: &str) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    own_device(st, me, device).await?;
    let deleted = st.db.delete_registration(me, device).await?;
    changed(st, me).await;
    Ok(json(StatusCode::OK, &json!({"device_id": device, "deleted": deleted})))
}

/// `PUT` (mute) or `DELETE` (unmute) `/v1/conversations/{conv}/mute`.
pub async fn mute(st: &AppState, req: Request<Incoming>, conv: &str, on: bool) -> Result<Resp, ClientError> {
    let me = authenticate(st, &req).await?.user;
    let conv = crate::http::conv(conv)?;
    if !participant(st, &conv, me).await? {
        return Err(ClientError::forbidden("not a participant of this conversation"));
    }
    st.db.set_mute(me, conv.as_str(), on).await?;
    changed(st, me).await;
    Ok(json(StatusCode::OK, &json!({"conv": conv.as_str(), "muted": on})))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(endpoint: &str, p256dh: &str, auth: &str) -> Subscription {
        Subscription { endpoint: endpoint.into(), keys: SubscriptionKeys { p256dh: p256dh.into(), auth: auth.into() } }
    }

    #[test]
    fn subscriptions_are_validated() {
        let mut point = vec![4u8];
        point.extend([7u8; 64]);
        let p = URL_SAFE_NO_PAD.encode(&point);
        let a = URL_SAFE_NO_PAD.encode([1u8; 16]);
        assert!(sub("https://push.example/x", &p, &a).validate(false).is_ok());
        assert!(sub("http://127.0.0.1:1/x", &p, &a).validate(false).is_err());
        assert!(sub("http://127.0.0.1:1/x", &p, &a).validate(true).is_ok());
        assert!(sub("ftp://x/y", &p, &a).validate(true).is_err());
        assert!(sub("https://push.example/x", &a, &a).validate(false).unwrap_err().contains("p256dh"));
        assert!(sub("https://push.example/x", &p, &p).validate(false).unwrap_err().contains("auth"));
        assert!(sub("https://push.example/x", &p, &format!("{a}==")).validate(false).is_ok());
    }

    #[test]
    fn tokens_are_checked_per_provider() {
        assert!(check_token("apns", &"ab".repeat(32)).is_ok());
        assert!(check_token("apns", "not hex").is_err());
        assert!(check_token("fcm", "abc:DEF-123_x").is_ok());
        assert!(check_token("fcm", "with space").is_err());
        assert!(check_token("fcm", "").is_err());
    }
}
