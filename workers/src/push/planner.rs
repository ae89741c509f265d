//! The push planner: decides, per recipient of a stored text message,
//! which devices get a push.
//!
//! Sequencers publish a [`PushPlan`] per round (the text messages stored
//! and the inbox copy each recipient got) on `chat.push.plan.*`; a durable
//! pull consumer (`push-planner`) on the plan stream (`CHAT_PUSH_PLANS`, in
//! memory), shared by every worker, reads them. One plan stands for every copy of its messages:
//! before, the planner read every inbox copy (a 100-member group message
//! was 100 deliveries and 100 acks, and marks' and reactions' copies were
//! read only to be skipped). For a plan:
//!
//! 1. a plan younger than `CHAT_PUSH_DELAY_MS` waits out the time left,
//!    held unacked in the worker (when that ends within half of
//!    `CHAT_PUSH_ACK_WAIT_MS`; a longer delay is nak'ed with the time left
//!    and JetStream redelivers it then: a nak is three NATS messages more,
//!    the nak, its advisory and the redelivery); one older than
//!    `CHAT_PUSH_MAX_AGE_SECS` is dropped;
//!
//! then for each recipient of each message, concurrently:
//!
//! 2. the sender's own copies are never pushed (system messages, marks,
//!    reactions, edits and deletes have no plan);
//! 3. a user with no registration, or who muted the conversation (unless
//!    the message mentions them), is done;
//! 4. if the user's delivered mark (KV `chat_delivered`) has reached the
//!    copy's inbox sequence, a device got it: nothing is pushed;
//! 5. devices with a live connection (KV `chat_presence`) are skipped;
//! 6. one job per remaining device goes to `CHAT_PUSH` (deduplicated by
//!    `Nats-Msg-Id`),
//!
//! and the plan is acked. A worker killed midway, or a recipient that
//! failed, leaves the plan to be planned again (after
//! `CHAT_PUSH_ACK_WAIT_MS`, or 1 s): the job ids deduplicate.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::consumer::{pull, AckPolicy};
use async_nats::jetstream::kv::Operation;
use async_nats::jetstream::message::{AckKind, Message};
use async_nats::jetstream::{stream, Context};
use chat_nats::envelope::{PushJob, PushPlan, StoredMessage};
use chat_nats::provision::Storage;
use chat_nats::subjects::{self, ConvId, ConvKind};
use futures::{StreamExt, TryStreamExt};
use tokio::sync::Semaphore;

use super::store::{Registration, Store};
use super::{truncate_chars, PushConfig, PushError};

/// How long a user's registrations and mutes are cached (changes announced
/// on `chat.push.changed` evict them at once).
const CACHE_TTL: Duration = Duration::from_secs(30);
/// Cached users before the cache is cleared.
const CACHE_MAX: usize = 100_000;
/// Plans planned at once per worker.
const PLAN_CONCURRENCY: usize = 64;
/// Recipients of one plan looked at at once.
const RECIPIENT_CONCURRENCY: usize = 32;

#[derive(Debug)]
struct UserPush {
    regs: Vec<Registration>,
    mutes: HashSet<String>,
    at: Instant,
}

/// The planner of one worker.
pub struct Planner {
    inner: Arc<Inner>,
    messages: pull::Stream,
}

impl Planner {
    /// Creates (or finds) the consumer and subscribes to changes.
    pub async fn new(
        client: async_nats::Client,
        storage: Storage,
        db: Store,
        cfg: Arc<PushConfig>,
    ) -> Result<Planner, PushError> {
        let consumer = planner_consumer(&storage, &cfg).await.map_err(PushError::Nats)?;
        let presence = presence_stream(&storage.js, &storage.presence.stream_name).await.map_err(PushError::Nats)?;
        let cache: Arc<Mutex<HashMap<i64, Arc<UserPush>>>> = Arc::default();
        let mut changes = client.subscribe(subjects::PUSH_CHANGED).await.map_err(|e| PushError::Nats(e.into()))?;
        let evict = cache.clone();
        tokio::spawn(async move {
            while let Some(m) = changes.next().await {
                if let Some(user) = std::str::from_utf8(&m.payload).ok().and_then(|u| u.parse::<i64>().ok()) {
                    evict.lock().unwrap_or_else(|e| e.into_inner()).remove(&user);
                }
            }
        });
        let messages = consumer.messages().await.map_err(|e| PushError::Nats(e.into()))?;
        let inner = Arc::new(Inner { storage, db, cfg, presence, cache, names: Mutex::default() });
        Ok(Planner { inner, messages })
    }

    /// Plans copies until the process ends, reopening the consumer after
    /// errors.
    pub async fn run(mut self) {
        let limit = Arc::new(Semaphore::new(PLAN_CONCURRENCY));
        loop {
            while let Some(m) = self.messages.next().await {
                let m = match m {
                    Ok(m) => m,
                    Err(e) => {
                        tracing::warn!(error = %e, "push planner: consumer error");
                        continue;
                    }
                };
                let inner = self.inner.clone();
                let limit = limit.clone();
                tokio::spawn(async move {
                    // The grace delay waited out here, unacked (at most
                    // CHAT_PUSH_PLANNER_MAX_PENDING plans at once), when it
                    // ends well within the ack wait; a longer one is nak'ed.
                    if let Some(left) = inner.delay_left(&m).filter(|l| *l <= inner.cfg.ack_wait / 2) {
                        tokio::time::sleep(left).await;
                    }
                    let Ok(permit) = limit.acquire_owned().await else { return };
                    if let Err(e) = inner.plan(&m).await {
                        tracing::warn!(error = %e, subject = %m.subject, "push planner: plan not finished; retried later");
                        let _ = m.ack_with(AckKind::Nak(Some(Duration::from_secs(1)))).await;
                    }
                    drop(permit);
                });
            }
            tracing::warn!("push planner: consumer ended; reopening");
            tokio::time::sleep(Duration::from_secs(1)).await;
            match planner_consumer(&self.inner.storage, &self.inner.cfg).await {
                Ok(c) => match c.messages().await {
                    Ok(m) => self.messages = m,
                    Err(e) => tracing::warn!(error = %e, "push planner: cannot reopen"),
                },
                Err(e) => tracing::warn!(error = %e, "push planner: cannot reopen"),
            }
        }
    }
}

async fn planner_consumer(
    storage: &Storage,
    cfg: &PushConfig,
) -> Result<async_nats::jetstream::consumer::Consumer<pull::Config>, async_nats::Error> {
    // The consumer that read every inbox copy, before plans: gone, or its
    // copies would be planned a second time (and kept for ever).
    match storage.inbox.delete_consumer(subjects::PUSH_PLANNER).await {
        Ok(_) => tracing::info!("push planner: the old consumer of inbox copies is deleted; plans replace it"),
        Err(e) if e.to_string().contains("not found") => {}
        Err(e) => tracing::warn!(error = %e, "push planner: cannot delete the old consumer of inbox copies"),
    }
    let config = pull::Config {
        durable_name: Some(subjects::PUSH_PLANNER.into()),
        description: Some("plans push notifications from the sequencers' plans".into()),
        filter_subject: subjects::PUSH_PLAN_ALL.into(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: cfg.ack_wait,
        max_deliver: -1,
        max_ack_pending: cfg.planner_max_pending,
        ..Default::default()
    };
    Ok(storage.push_plans.get_or_create_consumer(subjects::PUSH_PLANNER, config).await?)
}

async fn presence_stream(js: &Context, name: &str) -> Result<stream::Stream, async_nats::Error> {
    Ok(js.get_stream(name).await?)
}

struct Inner {
    storage: Storage,
    db: Store,
    cfg: Arc<PushConfig>,
    presence: stream::Stream,
    cache: Arc<Mutex<HashMap<i64, Arc<UserPush>>>>,
    names: Mutex<HashMap<i64, String>>,
}

fn now_ms() -> i128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i128
}

/// How long ago the plan `m` was stored.
fn age(m: &Message) -> Result<Duration, async_nats::Error> {
    let published_ms = m.info()?.published.unix_timestamp_nanos() / 1_000_000;
    Ok(Duration::from_millis((now_ms() - published_ms).max(0) as u64))
}

impl Inner {
    /// How much of the grace delay the plan `m` has still to wait, if any.
    fn delay_left(&self, m: &Message) -> Option<Duration> {
        self.cfg.delay.checked_sub(age(m).ok()?).filter(|l| !l.is_zero())
    }

    async fn plan(&self, m: &Message) -> Result<(), async_nats::Error> {
        let age = age(m)?;
        let Ok(plan) = serde_json::from_slice::<PushPlan>(&m.payload) else {
            tracing::warn!(subject = %m.subject, "push planner: a plan that does not parse; dropped");
            return m.ack().await;
        };
        if age > self.cfg.max_age {
            tracing::debug!(messages = plan.messages.len(), "push: plan too old; not pushed");
            return m.ack().await;
        }
        if age < self.cfg.delay {
            return m.ack_with(AckKind::Nak(Some(self.cfg.delay - age))).await;
        }
        let mut recipients = Vec::new();
        for p in &plan.messages {
            for &(user, seq) in &p.copies {
                recipients.push(self.plan_copy(&p.msg, user, seq));
            }
        }
        let results: Vec<Result<(), async_nats::Error>> =
            futures::stream::iter(recipients).buffer_unordered(RECIPIENT_CONCURRENCY).collect().await;
        // Any failure: the whole plan again (the jobs already queued dedupe).
        results.into_iter().collect::<Result<(), _>>()?;
        m.ack().await
    }

    /// Steps 2-6 for one recipient's copy (at inbox sequence `seq`).
    async fn plan_copy(&self, stored: &StoredMessage, user: i64, seq: u64) -> Result<(), async_nats::Error> {
        if stored.from == user {
            return Ok(());
        }
        let up = self.user_push(user).await?;
        // A mention of the user pushes even in a muted conversation.
        let mentioned = stored.mentions.iter().any(|u| u.parse() == Ok(user));
        if up.regs.is_empty() || (up.mutes.contains(&stored.conv) && !mentioned) {
            return Ok(());
        }
        if self.delivered_mark(user).await? >= seq {
            tracing::debug!(user_id = user, message_id = stored.id, push_outcome = "seen", "push: already delivered");
            return Ok(());
        }
        let online = self.connected_devices(user).await?;
        let targets: Vec<&Registration> = up.regs.iter().filter(|r| !online.contains(&r.device)).collect();
        if targets.is_empty() {
            return Ok(());
        }
        let job = self.job(user, stored).await?;
        let mut acks = Vec::with_capacity(targets.len());
        for r in targets {
            let job = PushJob { device: r.device.clone(), ..job.clone() };
            let id = subjects::push_job_id(stored.id, user, &r.device);
            let payload = serde_json::to_vec(&job)?.into();
            acks.push(
                self.storage.js.publish_with_headers(subjects::push_job(user), subjects::msg_id(&id), payload).await?,
            );
        }
        for a in acks {
            a.await?;
        }
        tracing::debug!(user_id = user, message_id = stored.id, "push: jobs queued");
        Ok(())
    }

    async fn user_push(&self, user: i64) -> Result<Arc<UserPush>, async_nats::Error> {
        if let Some(u) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&user) {
            if u.at.elapsed() < CACHE_TTL {
                return Ok(u.clone());
            }
        }
        let at = Instant::now();
        let regs = self.db.registrations(user).await?;
        let mutes = if regs.is_empty() { HashSet::new() } else { self.db.mutes(user).await?.into_iter().collect() };
        let up = Arc::new(UserPush { regs, mutes, at });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(user, up.clone());
        Ok(up)
    }

    async fn delivered_mark(&self, user: i64) -> Result<u64, async_nats::Error> {
        Ok(match self.storage.delivered.get(subjects::delivered_key(user)).await? {
            Some(v) => std::str::from_utf8(&v).ok().and_then(|v| v.parse().ok()).unwrap_or(0),
            None => 0,
        })
    }

    /// Devices with a live connection: presence keys `<user>.<device>.<conn>`.
    async fn connected_devices(&self, user: i64) -> Result<HashSet<String>, async_nats::Error> {
        let prefix = format!("$KV.{}.", subjects::PRESENCE_BUCKET);
        let filter = format!("{prefix}{user}.>");
        let keys: Vec<(String, usize)> = self.presence.clone().info_with_subjects(&filter).await?.try_collect().await?;
        let mut online = HashSet::new();
        for (subject, _) in keys {
            let key = &subject[prefix.len()..];
            if let Some(e) = self.storage.presence.entry(key).await? {
                if e.operation == Operation::Put {
                    if let Some(device) = key.split('.').nth(1) {
                        online.insert(device.to_owned());
                    }
                }
            }
        }
        Ok(online)
    }

    async fn job(&self, user: i64, m: &StoredMessage) -> Result<PushJob, async_nats::Error> {
        let sender_name = self.username(m.from).await?;
        let group_name = match ConvId::parse(&m.conv).map(|c| c.kind()) {
            Some(ConvKind::Group(g)) => Some(self.db.group_name(g).await?.unwrap_or_else(|| m.conv.clone())),
            _ => None,
        };
        Ok(PushJob {
            user,
            device: String::new(),
            message_id: m.id,
            conv: m.conv.clone(),
            from: m.from,
            sender_name,
            group_name,
            preview: self.cfg.preview.then(|| truncate_chars(&m.body, self.cfg.preview_chars)),
            ts: m.ts,
        })
    }

    async fn username(&self, id: i64) -> Result<String, async_nats::Error> {
        if let Some(n) = self.names.lock().unwrap_or_else(|e| e.into_inner()).get(&id) {
            return Ok(n.clone());
        }
        let name = self.db.username(id).await?.unwrap_or_else(|| id.to_string());
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if names.len() >= CACHE_MAX {
            names.clear();
        }
        names.insert(id, name.clone());
        Ok(name)
    }
}
