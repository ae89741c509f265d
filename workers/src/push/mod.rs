//! Push notifications for messages nobody has seen.
//!
//! Data flow: inbox copy (`CHAT_INBOX`) → [`planner`] (durable consumer
//! `push-planner`: waits `CHAT_PUSH_DELAY_MS`, skips what a device already
//! received, muted conversations, the sender's own copies, system messages
//! and connected devices) → one [`PushJob`] per device on `CHAT_PUSH`
//! (`Nats-Msg-Id` = message.user.device) → [`sender`] (durable consumer
//! `push-sender`: provider HTTP call, retries with backoff, token clean-up,
//! dead letters to `CHAT_PUSH_DEAD`). Providers: [`fcm`], [`apns`],
//! [`webpush`]; [`http`] is their client, [`jwt`] their signing.
//!
//! Both consumers are shared by every worker process, so the work is split
//! between them; the `chat_push_sent` bucket makes each (message, device)
//! buzz once even when a job is redelivered.
//!
//! [`PushJob`]: chat_nats::envelope::PushJob

pub mod apns;
pub mod config;
pub mod fcm;
pub mod http;
pub mod jwt;
pub mod planner;
pub mod plans;
pub mod sender;
pub mod store;
pub mod webpush;

use std::sync::Arc;
use std::time::Duration;

use chat_nats::envelope::PushJob;
use chat_nats::provision::Storage;
use thiserror::Error;

pub use config::PushConfig;

/// Push set-up failures.
#[derive(Debug, Error)]
pub enum PushError {
    /// A credentials or key file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A key or credentials file is not what it should be.
    #[error("push key: {0}")]
    Key(String),
    /// Signing or encryption failed.
    #[error("push crypto: {0}")]
    Crypto(String),
    /// The database URL is invalid.
    #[error("push database: {0}")]
    Db(String),
    /// A consumer could not be created.
    #[error("push consumer: {0}")]
    Nats(async_nats::Error),
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The provider accepted the notification.
    Sent,
    /// The provider says the token or subscription is gone: delete it.
    InvalidToken(String),
    /// Worth retrying (429, 5xx, network), after at least `after` if given.
    Retry {
        /// The provider's `Retry-After`.
        after: Option<Duration>,
        /// What went wrong.
        reason: String,
    },
    /// Will never work (4xx other than the above, provider not configured).
    Failed(String),
}

impl Outcome {
    /// The outcome for a provider error status that is neither success nor
    /// an invalid token.
    pub fn from_status(resp: &http::Response) -> Outcome {
        let reason = format!(
            "HTTP {}: {}",
            resp.status,
            String::from_utf8_lossy(&resp.body).chars().take(300).collect::<String>()
        );
        match resp.status {
            429 | 500..=599 => Outcome::Retry { after: resp.retry_after(), reason },
            _ => Outcome::Failed(reason),
        }
    }
}

/// The text of a notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notification {
    /// Title: the sender (direct) or the group's name.
    pub title: String,
    /// Body: the preview (prefixed with the sender in groups) or a neutral
    /// line when previews are off.
    pub body: String,
}

impl Notification {
    /// The notification shown for a job.
    pub fn of(job: &PushJob) -> Notification {
        let preview = job.preview.clone().unwrap_or_else(|| "New message".to_string());
        match &job.group_name {
            Some(g) => Notification { title: g.clone(), body: format!("{}: {preview}", job.sender_name) },
            None => Notification { title: job.sender_name.clone(), body: preview },
        }
    }
}

/// `s` cut to at most `n` characters (never inside a character), with an
/// ellipsis when cut.
pub fn truncate_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        None => s.to_owned(),
        Some((at, _)) => format!("{}…", &s[..at]),
    }
}

/// Starts the planner and the sender; returns once both consumers exist
/// (so no inbox copy sequenced after this returns escapes the planner).
pub async fn start(
    client: async_nats::Client,
    storage: Storage,
    cfg: PushConfig,
    metrics: Arc<crate::metrics::Metrics>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, PushError> {
    let providers = Arc::new(sender::Providers::load(&cfg)?);
    let db = store::Store::connect(&cfg.database_url, cfg.db_pool_size)?;
    let cfg = Arc::new(cfg);
    let planner = planner::Planner::new(client.clone(), storage.clone(), db.clone(), cfg.clone()).await?;
    let sender = sender::Sender::new(client, storage, db, cfg, providers, metrics).await?;
    Ok(vec![tokio::spawn(planner.run()), tokio::spawn(sender.run())])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_is_char_safe() {
        assert_eq!(truncate_chars("héllo", 10), "héllo");
        assert_eq!(truncate_chars("héllo", 2), "hé…");
        assert_eq!(truncate_chars("😀😀😀", 1), "😀…");
        assert_eq!(truncate_chars("", 3), "");
    }

    #[test]
    fn group_notifications_name_the_sender() {
        let mut job = PushJob {
            user: 1,
            device: "d".into(),
            message_id: 5,
            conv: "g-1".into(),
            from: 2,
            sender_name: "bob".into(),
            group_name: Some("team".into()),
            preview: Some("hi".into()),
            ts: 0,
        };
        assert_eq!(Notification::of(&job), Notification { title: "team".into(), body: "bob: hi".into() });
        job.group_name = None;
        job.preview = None;
        assert_eq!(Notification::of(&job), Notification { title: "bob".into(), body: "New message".into() });
    }
}
