//! Firebase Cloud Messaging, HTTP v1 API.
//!
//! Authorisation is the OAuth 2.0 service-account flow: an RS256-signed JWT
//! assertion (`iss` = the account's `client_email`, `aud` = its `token_uri`,
//! scope `firebase.messaging`) is exchanged at `token_uri` for an access
//! token, cached until a minute before it expires. A message is
//! `POST {endpoint}/v1/projects/{project_id}/messages:send`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::Request;
use ring::signature::RsaKeyPair;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use super::config::FcmConfig;
use super::http::{HttpClient, Version};
use super::{jwt, Notification, Outcome, PushError};
use chat_nats::envelope::PushJob;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// An access token is renewed this long before it expires.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

#[derive(Deserialize)]
struct ServiceAccount {
    project_id: String,
    private_key: String,
    client_email: String,
    #[serde(default = "default_token_uri")]
    token_uri: String,
}

fn default_token_uri() -> String {
    "https://oauth2.googleapis.com/token".into()
}

/// The FCM provider.
pub struct Fcm {
    project_id: String,
    client_email: String,
    token_uri: String,
    key: RsaKeyPair,
    endpoint: String,
    token: Mutex<Option<(String, Instant)>>,
}

impl std::fmt::Debug for Fcm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fcm").field("project_id", &self.project_id).finish_non_exhaustive()
    }
}

impl Fcm {
    /// Reads the service-account JSON.
    pub fn load(cfg: &FcmConfig) -> Result<Fcm, PushError> {
        let text = std::fs::read_to_string(&cfg.credentials)
            .map_err(|e| PushError::Read { path: cfg.credentials.clone(), source: e })?;
        let sa: ServiceAccount = serde_json::from_str(&text)
            .map_err(|e| PushError::Key(format!("CHAT_FCM_CREDENTIALS: not a service-account JSON: {e}")))?;
        let key = jwt::rsa_from_pem(&sa.private_key, "CHAT_FCM_CREDENTIALS private_key")?;
        Ok(Fcm {
            project_id: sa.project_id,
            client_email: sa.client_email,
            token_uri: sa.token_uri,
            key,
            endpoint: cfg.endpoint.trim_end_matches('/').to_owned(),
            token: Mutex::new(None),
        })
    }

    /// A valid access token (cached, else fetched).
    async fn access_token(&self, http: &HttpClient) -> Result<String, Outcome> {
        let mut cached = self.token.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if Instant::now() + TOKEN_MARGIN < *until {
                return Ok(t.clone());
            }
        }
        let iat = jwt::now_secs();
        let assertion = jwt::rs256(
            &self.key,
            &json!({"alg": "RS256", "typ": "JWT"}),
            &json!({"iss": self.client_email, "scope": SCOPE, "aud": self.token_uri, "iat": iat, "exp": iat + 3600}),
        )
        .map_err(|e| Outcome::Failed(e.to_string()))?;
        let form = format!("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}");
        let req = Request::post(&self.token_uri)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .map_err(|e| Outcome::Failed(format!("token_uri: {e}")))?;
        let resp = http
            .send(req, Version::Any)
            .await
            .map_err(|e| Outcome::Retry { after: None, reason: format!("OAuth token request: {e}") })?;
        if resp.status != 200 {
            // Bad credentials are an operator's problem: retry (and
            // dead-letter eventually) rather than drop at once.
            let body = String::from_utf8_lossy(&resp.body).chars().take(300).collect::<String>();
            return Err(Outcome::Retry {
                after: resp.retry_after(),
                reason: format!("OAuth token request: HTTP {}: {body}", resp.status),
            });
        }
        #[derive(Deserialize)]
        struct TokenResp {
            access_token: String,
            #[serde(default = "default_expiry")]
            expires_in: u64,
        }
        fn default_expiry() -> u64 {
            3600
        }
        let t: TokenResp = serde_json::from_slice(&resp.body)
            .map_err(|e| Outcome::Retry { after: None, reason: format!("OAuth token response: {e}") })?;
        *cached = Some((t.access_token.clone(), Instant::now() + Duration::from_secs(t.expires_in)));
        Ok(t.access_token)
    }

    /// Sends one notification.
    pub async fn send(&self, http: &HttpClient, job: &PushJob, token: &str) -> Outcome {
        let access = match self.access_token(http).await {
            Ok(t) => t,
            Err(o) => return o,
        };
        let n = Notification::of(job);
        let body = json!({"message": {
            "token": token,
            "notification": {"title": n.title, "body": n.body},
            "data": {"conv": job.conv, "message_id": job.message_id.to_string(), "from": job.from.to_string()},
            "android": {"collapse_key": job.conv, "priority": "high"},
            "apns": {"headers": {"apns-collapse-id": job.conv}},
        }});
        let url = format!("{}/v1/projects/{}/messages:send", self.endpoint, self.project_id);
        let req = match Request::post(url)
            .header("authorization", format!("Bearer {access}"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
        {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("FCM request: {e}")),
        };
        let resp = match http.send(req, Version::Any).await {
            Ok(r) => r,
            Err(e) => return Outcome::Retry { after: None, reason: e },
        };
        match resp.status {
            200 => Outcome::Sent,
            404 => Outcome::InvalidToken("HTTP 404".into()),
            401 => {
                *self.token.lock().await = None;
                Outcome::Retry { after: None, reason: "HTTP 401: access token refused; renewing".into() }
            }
            _ if unregistered(&resp.body) => Outcome::InvalidToken(format!("HTTP {}: UNREGISTERED", resp.status)),
            _ => Outcome::from_status(&resp),
        }
    }
}

/// True when an FCM error body carries `errorCode: UNREGISTERED`.
fn unregistered(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<Value>(body) else { return false };
    v["error"]["details"].as_array().is_some_and(|d| d.iter().any(|d| d["errorCode"] == "UNREGISTERED"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn unregistered_is_recognised() {
        let body = br#"{"error":{"code":404,"status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}}"#;
        assert!(super::unregistered(body));
        assert!(!super::unregistered(br#"{"error":{"code":400,"status":"INVALID_ARGUMENT"}}"#));
        assert!(!super::unregistered(b"not json"));
    }
}
