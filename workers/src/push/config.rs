//! Push settings (`CHAT_PUSH_*`, `CHAT_FCM_*`, `CHAT_APNS_*`, `CHAT_VAPID_*`,
//! `CHAT_WEBPUSH_*`); see `docs/operations.md#push-notifications`.

use std::time::Duration;

use chat_nats::config::{bounded, shared, var, ConfigError, Source};

/// Firebase Cloud Messaging settings.
#[derive(Debug, Clone)]
pub struct FcmConfig {
    /// `CHAT_FCM_CREDENTIALS`: path of the service-account JSON.
    pub credentials: String,
    /// `CHAT_FCM_ENDPOINT`: default `https://fcm.googleapis.com`.
    pub endpoint: String,
}

/// APNs settings.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    /// `CHAT_APNS_KEY`: path of the `.p8` key (PEM PKCS#8, P-256).
    pub key: String,
    /// `CHAT_APNS_KEY_ID`: the key's id (JWT `kid`).
    pub key_id: String,
    /// `CHAT_APNS_TEAM_ID`: the team id (JWT `iss`).
    pub team_id: String,
    /// `CHAT_APNS_TOPIC`: the app's bundle id (`apns-topic`).
    pub topic: String,
    /// `CHAT_APNS_ENDPOINT`: default `https://api.push.apple.com`.
    pub endpoint: String,
}

/// Web Push settings.
#[derive(Debug, Clone)]
pub struct WebPushConfig {
    /// `CHAT_VAPID_PRIVATE_KEY`: path of the VAPID key (PEM PKCS#8, P-256).
    pub key: String,
    /// `CHAT_VAPID_SUBJECT`: `mailto:` or `https:` contact for push services.
    pub subject: String,
    /// `CHAT_WEBPUSH_TTL_SECS`: how long a push service keeps an
    /// undelivered notification.
    pub ttl: Duration,
    /// `CHAT_WEBPUSH_ALLOW_HTTP`: allow `http://` endpoints (tests only).
    pub allow_http: bool,
}

/// Every push setting.
#[derive(Debug, Clone)]
pub struct PushConfig {
    /// `CHAT_PUSH_ENABLED`: run the planner and sender (default true).
    pub enabled: bool,
    /// `CHAT_DATABASE_URL`: PostgreSQL (registrations, mutes, names).
    pub database_url: String,
    /// `CHAT_DB_POOL_SIZE`: PostgreSQL connections of the worker.
    pub db_pool_size: usize,
    /// `CHAT_PUSH_DELAY_MS`: grace delay before a copy is pushed.
    pub delay: Duration,
    /// `CHAT_PUSH_PLAN_LINGER_MS`: how long a worker gathers its rounds'
    /// push plans into one before publishing it (0-10000, default 100;
    /// see `plans`).
    pub plan_linger: Duration,
    /// `CHAT_PUSH_MAX_AGE_SECS`: copies older than this are not pushed (a
    /// planner that fell behind does not buzz for old news).
    pub max_age: Duration,
    /// `CHAT_PUSH_PREVIEW`: include the message text.
    pub preview: bool,
    /// `CHAT_PUSH_PREVIEW_CHARS`: longest preview, in characters.
    pub preview_chars: usize,
    /// `CHAT_PUSH_MAX_ATTEMPTS`: deliveries of a job before it is dead.
    pub max_attempts: u64,
    /// `CHAT_PUSH_RETRY_BASE_MS`: first retry delay (doubles per attempt).
    pub retry_base: Duration,
    /// `CHAT_PUSH_RETRY_MAX_MS`: longest retry delay from backoff.
    pub retry_max: Duration,
    /// `CHAT_PUSH_CONCURRENCY`: provider requests in flight per worker.
    pub concurrency: usize,
    /// `CHAT_PUSH_HTTP_TIMEOUT_MS`: one provider request.
    pub http_timeout: Duration,
    /// `CHAT_PUSH_ACK_WAIT_MS`: a job (or planned copy) not finished by a
    /// worker in this time is redelivered (e.g. the worker died).
    pub ack_wait: Duration,
    /// `CHAT_PUSH_PLANNER_MAX_PENDING`: inbox copies the planner may hold
    /// unacknowledged (waiting out the delay) across all workers.
    pub planner_max_pending: i64,
    /// FCM, when `CHAT_FCM_CREDENTIALS` is set.
    pub fcm: Option<FcmConfig>,
    /// APNs, when `CHAT_APNS_KEY` is set.
    pub apns: Option<ApnsConfig>,
    /// Web Push, when `CHAT_VAPID_PRIVATE_KEY` is set.
    pub webpush: Option<WebPushConfig>,
}

fn required(src: &dyn Source, name: &str, because: &str) -> Result<String, ConfigError> {
    src.get(name).ok_or_else(|| ConfigError::Invalid {
        name: name.into(),
        value: String::new(),
        reason: format!("required when {because} is set"),
    })
}

fn ms(src: &dyn Source, name: &str, default: u64, min: u64, max: u64) -> Result<Duration, ConfigError> {
    bounded(src, name, default, min, max).map(Duration::from_millis)
}

impl PushConfig {
    /// Reads and validates the push settings.
    pub fn from_source(src: &dyn Source) -> Result<PushConfig, ConfigError> {
        let fcm = match src.get(shared::FCM_CREDENTIALS) {
            None => None,
            Some(credentials) => Some(FcmConfig {
                credentials,
                endpoint: var(src, "CHAT_FCM_ENDPOINT", "https://fcm.googleapis.com".to_string())?,
            }),
        };
        let apns = match src.get(shared::APNS_KEY) {
            None => None,
            Some(key) => Some(ApnsConfig {
                key,
                key_id: required(src, "CHAT_APNS_KEY_ID", shared::APNS_KEY)?,
                team_id: required(src, "CHAT_APNS_TEAM_ID", shared::APNS_KEY)?,
                topic: required(src, "CHAT_APNS_TOPIC", shared::APNS_KEY)?,
                endpoint: var(src, "CHAT_APNS_ENDPOINT", "https://api.push.apple.com".to_string())?,
            }),
        };
        let allow_http = var(src, "CHAT_WEBPUSH_ALLOW_HTTP", false)?;
        let webpush = match src.get(shared::VAPID_PRIVATE_KEY) {
            None => None,
            Some(key) => Some(WebPushConfig {
                key,
                subject: required(src, "CHAT_VAPID_SUBJECT", shared::VAPID_PRIVATE_KEY)?,
                ttl: Duration::from_secs(bounded(src, "CHAT_WEBPUSH_TTL_SECS", 86_400, 0, 2_419_200)?),
                allow_http,
            }),
        };
        let http_timeout = ms(src, "CHAT_PUSH_HTTP_TIMEOUT_MS", 10_000, 100, 120_000)?;
        let ack_wait = ms(src, "CHAT_PUSH_ACK_WAIT_MS", 30_000, 500, 3_600_000)?;
        if ack_wait <= http_timeout {
            return Err(ConfigError::Invalid {
                name: "CHAT_PUSH_ACK_WAIT_MS".into(),
                value: ack_wait.as_millis().to_string(),
                reason: "must be longer than CHAT_PUSH_HTTP_TIMEOUT_MS".into(),
            });
        }
        let retry_base = ms(src, "CHAT_PUSH_RETRY_BASE_MS", 1_000, 10, 600_000)?;
        let retry_max = ms(src, "CHAT_PUSH_RETRY_MAX_MS", 300_000, 10, 86_400_000)?.max(retry_base);
        Ok(PushConfig {
            enabled: var(src, "CHAT_PUSH_ENABLED", true)?,
            database_url: shared::database_url(src)?,
            db_pool_size: shared::db_pool_size(src)?,
            delay: ms(src, "CHAT_PUSH_DELAY_MS", 3_000, 0, 600_000)?,
            plan_linger: ms(src, "CHAT_PUSH_PLAN_LINGER_MS", super::plans::DEFAULT_LINGER_MS, 0, 10_000)?,
            max_age: Duration::from_secs(bounded(src, "CHAT_PUSH_MAX_AGE_SECS", 3_600, 1, 7 * 86_400)?),
            preview: var(src, "CHAT_PUSH_PREVIEW", true)?,
            preview_chars: bounded(src, "CHAT_PUSH_PREVIEW_CHARS", 100, 1, 500)? as usize,
            max_attempts: bounded(src, "CHAT_PUSH_MAX_ATTEMPTS", 8, 1, 100)?,
            retry_base,
            retry_max,
            concurrency: bounded(src, "CHAT_PUSH_CONCURRENCY", 32, 1, 1024)? as usize,
            http_timeout,
            ack_wait,
            planner_max_pending: bounded(src, "CHAT_PUSH_PLANNER_MAX_PENDING", 20_000, 100, 1_000_000)? as i64,
            fcm,
            apns,
            webpush,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn src(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_and_bounds() {
        let c = PushConfig::from_source(&src(&[])).unwrap();
        assert_eq!(c.delay, Duration::from_secs(3));
        assert_eq!(c.plan_linger, Duration::from_millis(100));
        assert_eq!(c.max_attempts, 8);
        assert!(c.fcm.is_none() && c.apns.is_none() && c.webpush.is_none());
        let e = PushConfig::from_source(&src(&[("CHAT_PUSH_PREVIEW_CHARS", "0")])).unwrap_err().to_string();
        assert!(e.contains("CHAT_PUSH_PREVIEW_CHARS"), "{e}");
        let e = PushConfig::from_source(&src(&[("CHAT_APNS_KEY", "/k.p8")])).unwrap_err().to_string();
        assert!(e.contains("CHAT_APNS_KEY_ID"), "{e}");
        let e =
            PushConfig::from_source(&src(&[("CHAT_PUSH_ACK_WAIT_MS", "1000"), ("CHAT_PUSH_HTTP_TIMEOUT_MS", "2000")]))
                .unwrap_err()
                .to_string();
        assert!(e.contains("CHAT_PUSH_ACK_WAIT_MS"), "{e}");
    }
}
