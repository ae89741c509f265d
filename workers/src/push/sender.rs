//! The push sender: a durable pull consumer (`push-sender`) on `CHAT_PUSH`
//! shared by every worker, at most `CHAT_PUSH_CONCURRENCY` provider calls
//! in flight per worker.
//!
//! Per job: skip it if `chat_push_sent` has its id (sent before a crash or
//! a redelivery); read the device's registration (gone: nothing to do);
//! call the provider; then
//! - sent: record the id in `chat_push_sent`, ack;
//! - token invalid: delete the registration (if unchanged), ack;
//! - retryable (429, 5xx, network): nak with exponential backoff and
//!   jitter, at least the provider's `Retry-After`; after
//!   `CHAT_PUSH_MAX_ATTEMPTS` deliveries, dead-letter;
//! - failed for good (other 4xx, provider not configured): dead-letter.
//!
//! Dead letters go to `chat.push.dead.<user>` in `CHAT_PUSH_DEAD` as a
//! [`DeadPush`]. Every outcome is logged with `push_outcome`, `provider`,
//! `user_id`, `device`, `message_id` (see `docs/operations.md`).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::message::{AckKind, Message};
use chat_nats::envelope::{DeadPush, PushJob};
use chat_nats::provision::Storage;
use chat_nats::subjects;
use futures::StreamExt;
use tokio::sync::Semaphore;

use super::http::HttpClient;
use super::store::Store;
use crate::metrics::{Metrics, PushResult};

use super::{apns::Apns, fcm::Fcm, webpush::WebPush, Outcome, PushConfig, PushError};

/// The configured providers and their HTTP client.
#[derive(Debug)]
pub struct Providers {
    /// FCM, if configured.
    pub fcm: Option<Fcm>,
    /// APNs, if configured.
    pub apns: Option<Apns>,
    /// Web Push, if configured.
    pub webpush: Option<WebPush>,
    /// Shared client.
    pub http: HttpClient,
}

impl Providers {
    /// Loads every configured provider's keys.
    pub fn load(cfg: &PushConfig) -> Result<Providers, PushError> {
        Ok(Providers {
            fcm: cfg.fcm.as_ref().map(Fcm::load).transpose()?,
            apns: cfg.apns.as_ref().map(Apns::load).transpose()?,
            webpush: cfg.webpush.as_ref().map(WebPush::load).transpose()?,
            http: HttpClient::new(cfg.http_timeout),
        })
    }

    async fn send(&self, provider: &str, job: &PushJob, token: &str) -> Outcome {
        let off = || Outcome::Failed(format!("push provider {provider} is not configured on this worker"));
        match provider {
            "fcm" => match &self.fcm {
                Some(p) => p.send(&self.http, job, token).await,
                None => off(),
            },
            "apns" => match &self.apns {
                Some(p) => p.send(&self.http, job, token).await,
                None => off(),
            },
            "webpush" => match &self.webpush {
                Some(p) => p.send(&self.http, job, token).await,
                None => off(),
            },
            _ => off(),
        }
    }
}

/// The sender of one worker.
pub struct Sender {
    inner: Arc<Inner>,
    messages: pull::Stream,
}

struct Inner {
    client: async_nats::Client,
    storage: Storage,
    db: Store,
    cfg: Arc<PushConfig>,
    providers: Arc<Providers>,
    metrics: Arc<Metrics>,
}

impl Sender {
    /// Creates (or finds) the consumer.
    pub async fn new(
        client: async_nats::Client,
        storage: Storage,
        db: Store,
        cfg: Arc<PushConfig>,
        providers: Arc<Providers>,
        metrics: Arc<Metrics>,
    ) -> Result<Sender, PushError> {
        let messages = open(&storage, &cfg).await.map_err(PushError::Nats)?;
        Ok(Sender { inner: Arc::new(Inner { client, storage, db, cfg, providers, metrics }), messages })
    }

    /// Sends jobs until the process ends.
    pub async fn run(mut self) {
        let limit = Arc::new(Semaphore::new(self.inner.cfg.concurrency));
        loop {
            while let Some(m) = self.messages.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "push sender: consumer error");
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().acquire_owned().await else { return };
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = inner.handle(&m).await {
                        tracing::warn!(error = %e, subject = %m.subject, "push sender: job not handled; retried later");
                        let _ = m.ack_with(AckKind::Nak(Some(inner.cfg.retry_base))).await;
                    }
                    drop(permit);
                });
            }
            tracing::warn!("push sender: consumer ended; reopening");
            tokio::time::sleep(Duration::from_secs(1)).await;
            match open(&self.inner.storage, &self.inner.cfg).await {
                Ok(m) => self.messages = m,
                Err(e) => tracing::warn!(error = %e, "push sender: cannot reopen"),
            }
        }
    }
}

async fn open(storage: &Storage, cfg: &PushConfig) -> Result<pull::Stream, async_nats::Error> {
    let config = pull::Config {
        durable_name: Some(subjects::PUSH_SENDER.into()),
        description: Some("sends push notifications".into()),
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        // Attempts are counted by the sender, which dead-letters.
        max_deliver: -1,
        max_ack_pending: 10_000,
        ..Default::default()
    };
    let consumer = storage.push.get_or_create_consumer(subjects::PUSH_SENDER, config).await?;
    Ok(consumer.stream().max_messages_per_batch(cfg.concurrency).messages().await?)
}

impl Inner {
    async fn handle(&self, m: &Message) -> Result<(), async_nats::Error> {
        let attempts = m.info()?.delivered.max(1) as u64;
        let job: PushJob = match serde_json::from_slice(&m.payload) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(error = %e, subject = %m.subject, "push sender: undecodable job dropped");
                return m.ack_with(AckKind::Term).await;
            }
        };
        let id = subjects::push_job_id(job.message_id, job.user, &job.device);
        if self.storage.push_sent.get(&id).await?.is_some() {
            return m.ack().await;
        }
        let Some(reg) = self.db.registration(job.user, &job.device).await? else {
            tracing::debug!(user_id = job.user, device = %job.device, "push: no registration any more");
            return m.ack().await;
        };
        let outcome = self.providers.send(&reg.provider, &job, &reg.token).await;
        let (user, device, message_id, provider) =
            (job.user, job.device.as_str(), job.message_id, reg.provider.as_str());
        match outcome {
            Outcome::Sent => {
                self.metrics.push(provider, PushResult::Sent);
                self.storage.push_sent.put(&id, bytes::Bytes::from_static(b"1")).await?;
                tracing::info!(
                    push_outcome = "sent",
                    provider,
                    user_id = user,
                    device,
                    message_id,
                    attempts,
                    "push sent"
                );
                m.ack().await
            }
            Outcome::InvalidToken(reason) => {
                self.metrics.push(provider, PushResult::InvalidToken);
                let deleted = self.db.delete_token(user, device, &reg.token).await?;
                let _ = self.client.publish(subjects::PUSH_CHANGED, user.to_string().into()).await;
                tracing::warn!(push_outcome = "invalid_token", provider, user_id = user, device, message_id, deleted, reason = %reason, "push token invalid; registration removed");
                m.ack().await
            }
            Outcome::Retry { after, reason } if attempts < self.cfg.max_attempts => {
                self.metrics.push(provider, PushResult::Retry);
                let delay = backoff(&self.cfg, attempts, after);
                tracing::warn!(push_outcome = "retry", provider, user_id = user, device, message_id, attempts, delay_ms = delay.as_millis() as u64, reason = %reason, "push failed; will retry");
                m.ack_with(AckKind::Nak(Some(delay))).await
            }
            Outcome::Retry { reason, .. } | Outcome::Failed(reason) => {
                self.metrics.push(provider, PushResult::Dead);
                self.dead(m, job.clone(), provider, reason, attempts).await
            }
        }
    }

    async fn dead(
        &self,
        m: &Message,
        job: PushJob,
        provider: &str,
        error: String,
        attempts: u64,
    ) -> Result<(), async_nats::Error> {
        let (user, device, message_id) = (job.user, job.device.clone(), job.message_id);
        let id = subjects::push_job_id(message_id, user, &device);
        let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis();
        let dead = DeadPush { job, provider: provider.to_owned(), error: error.clone(), attempts, at: at as u64 };
        let payload = serde_json::to_vec(&dead)?.into();
        self.storage.js.publish_with_headers(subjects::push_dead(user), subjects::msg_id(&id), payload).await?.await?;
        tracing::error!(push_outcome = "dead", provider, user_id = user, device = %device, message_id, attempts, error = %error, "push dead-lettered to CHAT_PUSH_DEAD");
        m.ack().await
    }
}

/// The redelivery delay after `attempts` deliveries: `base * 2^(attempts-1)`
/// capped at `CHAT_PUSH_RETRY_MAX_MS`, times a random factor in [0.5, 1]
/// (jitter), and never less than the provider's `Retry-After` (itself
/// capped at an hour).
pub fn backoff(cfg: &PushConfig, attempts: u64, retry_after: Option<Duration>) -> Duration {
    let exp = cfg.retry_base.saturating_mul(1u32 << (attempts.saturating_sub(1)).min(20) as u32).min(cfg.retry_max);
    let mut b = [0u8; 2];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let jitter = 0.5 + f64::from(u16::from_le_bytes(b)) / f64::from(u16::MAX) / 2.0;
    let d = exp.mul_f64(jitter);
    match retry_after {
        Some(r) => d.max(r.min(Duration::from_secs(3600))),
        None => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_jittered_and_honours_retry_after() {
        let mut cfg = PushConfig::from_source(&std::collections::HashMap::new()).unwrap();
        cfg.retry_base = Duration::from_millis(100);
        cfg.retry_max = Duration::from_millis(1000);
        for _ in 0..50 {
            let d1 = backoff(&cfg, 1, None);
            assert!(d1 >= Duration::from_millis(50) && d1 <= Duration::from_millis(100), "{d1:?}");
            let d3 = backoff(&cfg, 3, None);
            assert!(d3 >= Duration::from_millis(200) && d3 <= Duration::from_millis(400), "{d3:?}");
            assert!(backoff(&cfg, 60, None) <= Duration::from_millis(1000));
            assert!(backoff(&cfg, 1, Some(Duration::from_secs(2))) >= Duration::from_secs(2));
        }
    }
}
