//! Apple Push Notification service, HTTP/2 with token authentication.
//!
//! The provider token is an ES256 JWT (header `kid` = key id, claims
//! `iss` = team id and `iat`) signed with the `.p8` key; Apple refuses
//! tokens older than an hour and throttles ones renewed more often than
//! every 20 minutes, so it is renewed every 50 minutes. A notification is
//! `POST {endpoint}/3/device/{token}` over HTTP/2.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use ring::signature::EcdsaKeyPair;
use serde_json::{json, Value};
use std::sync::Mutex;

use super::config::ApnsConfig;
use super::http::{HttpClient, Version};
use super::{jwt, Notification, Outcome, PushError};
use chat_nats::envelope::PushJob;

/// Provider tokens are renewed after this long.
pub const TOKEN_REFRESH: Duration = Duration::from_secs(50 * 60);

/// The APNs provider.
pub struct Apns {
    key: EcdsaKeyPair,
    key_id: String,
    team_id: String,
    topic: String,
    endpoint: String,
    jwt: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Apns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Apns").field("key_id", &self.key_id).field("topic", &self.topic).finish_non_exhaustive()
    }
}

impl Apns {
    /// Reads the `.p8` key.
    pub fn load(cfg: &ApnsConfig) -> Result<Apns, PushError> {
        let pem =
            std::fs::read_to_string(&cfg.key).map_err(|e| PushError::Read { path: cfg.key.clone(), source: e })?;
        Ok(Apns {
            key: jwt::p256_from_pem(&pem, "CHAT_APNS_KEY")?,
            key_id: cfg.key_id.clone(),
            team_id: cfg.team_id.clone(),
            topic: cfg.topic.clone(),
            endpoint: cfg.endpoint.trim_end_matches('/').to_owned(),
            jwt: Mutex::new(None),
        })
    }

    fn bearer(&self) -> Result<String, PushError> {
        let mut cached = self.jwt.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((t, at)) = cached.as_ref() {
            if at.elapsed() < TOKEN_REFRESH {
                return Ok(t.clone());
            }
        }
        let t = jwt::es256(
            &self.key,
            &json!({"alg": "ES256", "kid": self.key_id}),
            &json!({"iss": self.team_id, "iat": jwt::now_secs()}),
        )?;
        *cached = Some((t.clone(), Instant::now()));
        Ok(t)
    }

    /// Sends one notification.
    pub async fn send(&self, http: &HttpClient, job: &PushJob, token: &str) -> Outcome {
        let bearer = match self.bearer() {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let n = Notification::of(job);
        let body = json!({
            "aps": {"alert": {"title": n.title, "body": n.body}, "sound": "default", "thread-id": job.conv},
            "conv": job.conv,
            "message_id": job.message_id.to_string(),
            "from": job.from.to_string(),
        });
        let req = match Request::post(format!("{}/3/device/{token}", self.endpoint))
            .header("authorization", format!("bearer {bearer}"))
            .header("apns-topic", &self.topic)
            .header("apns-push-type", "alert")
            .header("apns-priority", "10")
            .header("apns-collapse-id", &job.conv)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
        {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("APNs request: {e}")),
        };
        let resp = match http.send(req, Version::H2).await {
            Ok(r) => r,
            Err(e) => return Outcome::Retry { after: None, reason: e },
        };
        let reason = serde_json::from_slice::<Value>(&resp.body)
            .ok()
            .and_then(|v| v["reason"].as_str().map(str::to_owned))
            .unwrap_or_default();
        match (resp.status, reason.as_str()) {
            (200, _) => Outcome::Sent,
            (410, _) | (400, "BadDeviceToken" | "DeviceTokenNotForTopic") => {
                Outcome::InvalidToken(format!("HTTP {}: {reason}", resp.status))
            }
            (403, "ExpiredProviderToken" | "InvalidProviderToken") => {
                *self.jwt.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Outcome::Retry { after: None, reason: format!("HTTP 403: {reason}; renewing the provider token") }
            }
            _ => Outcome::from_status(&resp),
        }
    }
}
