//! Stream and KV bucket definitions, their idempotent provisioning, and the
//! start-up check of the nats-server.
//!
//! Every process calls [`check_server`] then [`provision`] at start-up; a
//! process that commits atomic batches ([`crate::batch`]) also calls
//! [`check_batch_server`]. All are safe to run from many processes at once: creating a stream with the
//! same configuration is a no-op on the server, and a changed configuration
//! (a new retention setting, say) is applied as an update.

use std::time::Duration;

use async_nats::jetstream::{self, kv, stream};
use thiserror::Error;

use crate::subjects;

/// Oldest nats-server accepted: older ones silently ignore consumer options
/// this system relies on (such as multiple filter subjects).
pub const MIN_SERVER_VERSION: (u32, u32) = (2, 11);

/// Oldest nats-server whose atomic batch commit fsyncs the whole batch once
/// (PR #8539, "coalesce atomic batch syncs"). 2.12-2.14 accept atomic
/// batches but fsync every message in them, so a batched write path would
/// be no faster than plain publishes there.
pub const MIN_BATCH_SERVER_VERSION: (u32, u32, u32) = (2, 15, 1);

/// A push job not sent within this time is dropped by the stream (a
/// notification a day late is worse than none).
pub const PUSH_JOB_MAX_AGE: Duration = Duration::from_secs(24 * 3600);
/// How long dead push jobs are kept for inspection.
pub const PUSH_DEAD_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// How long moderation events (flood mutes) are kept.
pub const MOD_EVENTS_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most moderation events kept (the oldest go first).
pub const MOD_EVENTS_MAX_MSGS: i64 = 1_000_000;
/// A flood window not written for this long is dropped (longer than the
/// longest window plus the longest mute a gateway accepts).
pub const FLOOD_MAX_AGE: Duration = Duration::from_secs(25 * 3600);

/// Start-up and provisioning failures.
#[derive(Debug, Error)]
pub enum ProvisionError {
    /// The server's version is older than [`MIN_SERVER_VERSION`] or unreadable.
    #[error("nats-server {found} is too old: version 2.11 or newer is required (older servers silently ignore consumer options); install nats-server 2.15.1")]
    ServerTooOld {
        /// The version the server reported.
        found: String,
    },
    /// The server is older than [`MIN_BATCH_SERVER_VERSION`] (or its version
    /// is unreadable) and a process relies on one fsync per atomic batch.
    #[error("nats-server {found} is too old for batched writes: version 2.15.1 or newer is required, because older servers fsync every message of an atomic batch separately (2.15.1 commits a batch with one fsync, nats-server PR #8539); install nats-server 2.15.1")]
    NoCoalescedBatchCommit {
        /// The version the server reported.
        found: String,
    },
    /// The server runs without JetStream.
    #[error("nats-server {version} runs without JetStream: start it with -js or a jetstream {{}} block")]
    NoJetStream {
        /// The version the server reported.
        version: String,
    },
    /// A stream could not be created or updated.
    #[error("cannot provision stream {name}: {source}")]
    Stream {
        /// Stream name.
        name: String,
        /// What the server said.
        source: async_nats::Error,
    },
    /// This process's `CHAT_PARTITIONS` differs from the deployment's.
    #[error(
        "CHAT_PARTITIONS={ours} but this deployment uses {theirs}: every gateway and worker must use the same value"
    )]
    PartitionMismatch {
        /// Ours.
        ours: u32,
        /// Recorded by the first process.
        theirs: u32,
    },
    /// A KV bucket could not be created or updated.
    #[error("cannot provision KV bucket {name}: {source}")]
    Bucket {
        /// Bucket name.
        name: String,
        /// What the server said.
        source: async_nats::Error,
    },
}

/// Storage settings shared by every process (see `docs/operations.md`).
#[derive(Debug, Clone)]
pub struct StorageSettings {
    /// Number of ingress partitions (sequencer units of ownership).
    pub partitions: u32,
    /// Replicas of every stream and bucket (1 single node, 3 in a cluster).
    pub replicas: usize,
    /// How long inbox copies are kept for catch-up.
    pub inbox_retention: Duration,
    /// How long a `cid` is remembered for dedupe of retried sends.
    pub dedupe_window: Duration,
    /// Time-to-live of a lease that is not renewed.
    pub lease_ttl: Duration,
    /// A connection without a heartbeat for this long is gone (presence).
    pub presence_timeout: Duration,
    /// A gateway's registry entry (KV `chat_gateways`) vanishes this long
    /// after its last refresh; gateways refresh it every third of it.
    pub registry_ttl: Duration,
    /// Largest message payload in bytes (a 100,000-character body in UTF-8
    /// plus its envelope).
    pub max_msg_bytes: i32,
    /// Most bytes of push plans held in memory (`CHAT_PUSH_PLAN_MAX_MB`)
    /// before the oldest are dropped, for planners that are down or far
    /// behind. Plans live in memory because a push is not part of what an
    /// ack promises: one fsync per plan cost more than the pushes saved at
    /// light load, and a nats-server restart that loses the plans not yet
    /// planned loses those pushes, not messages. Reserved against the
    /// server's `max_memory_store` (256 MB in `nats/conf/*.conf`).
    pub push_plan_max_bytes: i64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            partitions: 16,
            replicas: 1,
            inbox_retention: Duration::from_secs(30 * 24 * 3600),
            dedupe_window: Duration::from_secs(24 * 3600),
            lease_ttl: Duration::from_secs(10),
            presence_timeout: Duration::from_secs(30),
            registry_ttl: Duration::from_secs(6),
            max_msg_bytes: 1024 * 1024,
            push_plan_max_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Handles on everything [`provision`] made.
#[derive(Debug, Clone)]
pub struct Storage {
    /// JetStream context.
    pub js: jetstream::Context,
    /// Ingress stream.
    pub ingress: stream::Stream,
    /// History stream.
    pub history: stream::Stream,
    /// Inbox stream.
    pub inbox: stream::Stream,
    /// Leases bucket.
    pub leases: kv::Store,
    /// Acks bucket.
    pub acks: kv::Store,
    /// History index bucket.
    pub hindex: kv::Store,
    /// ID high-water mark bucket.
    pub idhw: kv::Store,
    /// Group member lists bucket.
    pub groups: kv::Store,
    /// Live connections (presence heartbeats).
    pub presence: kv::Store,
    /// Published presence statuses.
    pub status: kv::Store,
    /// Push jobs (work queue).
    pub push: stream::Stream,
    /// Push plans (memory, work queue).
    pub push_plans: stream::Stream,
    /// Dead push jobs.
    pub push_dead: stream::Stream,
    /// Users' delivered marks.
    pub delivered: kv::Store,
    /// Pushes already sent.
    pub push_sent: kv::Store,
    /// Read positions per (user, conversation).
    pub reads: kv::Store,
    /// Live gateways (service discovery).
    pub gateways: kv::Store,
    /// The banned-word list.
    pub banned_words: kv::Store,
    /// Per-user flood windows (memory storage).
    pub flood: kv::Store,
    /// Moderation events (flood mutes).
    pub mod_events: stream::Stream,
    /// The settings used.
    pub settings: StorageSettings,
}

/// A NATS user and password (`CHAT_NATS_USER`, `CHAT_NATS_PASSWORD`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name, as in the server's `authorization { users }`.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, password hidden)", self.user)
    }
}

/// Who connects: which credentials, and the prefix of the reply subjects
/// (inboxes) it subscribes to. Each role has its own prefix
/// ([`subjects::GATEWAY_INBOX_PREFIX`], [`subjects::WORKER_INBOX_PREFIX`]),
/// so the server can let it read its own replies and nobody else's.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Credentials, if the server asks for them.
    pub credentials: Option<Credentials>,
    /// Reply subject prefix (`_INBOX` is the client library's default).
    pub inbox_prefix: &'static str,
}

/// Connects to NATS. `urls` may list several servers separated by commas
/// (any one is enough: the client learns the cluster from the server).
/// Waits up to 30 s for a server that is not up yet; refused credentials
/// fail at once.
pub async fn connect(
    urls: &str,
    name: &str,
    subscription_capacity: usize,
    identity: &Identity,
) -> Result<async_nats::Client, async_nats::Error> {
    let servers: Vec<&str> = urls.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .subscription_capacity(subscription_capacity)
        .custom_inbox_prefix(identity.inbox_prefix);
    if let Some(c) = &identity.credentials {
        options = options.user_and_password(c.user.clone(), c.password.clone());
    }
    let (auth_tx, mut auth_rx) = tokio::sync::watch::channel(None::<String>);
    options = options.event_callback(move |event| {
        let auth_tx = auth_tx.clone();
        async move {
            let refused = match &event {
                async_nats::Event::ServerError(async_nats::ServerError::AuthorizationViolation) => true,
                async_nats::Event::ClientError(async_nats::ClientError::Other(e)) => e.contains("authorization"),
                _ => false,
            };
            if refused {
                let _ = auth_tx.send(Some("authorization violation".into()));
            }
        }
    });
    let client = options.connect(servers).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while client.connection_state() != async_nats::connection::State::Connected
        || client.server_info().version.is_empty()
    {
        if let Some(e) = auth_rx.borrow_and_update().clone() {
            let user = identity.credentials.as_ref().map_or("(none)", |c| c.user.as_str());
            return Err(format!(
                "NATS at {urls} refused user {user}: {e} (check CHAT_NATS_USER and CHAT_NATS_PASSWORD)"
            )
            .into());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("no NATS server reachable at {urls} within 30 s").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(client)
}

/// Parses `major.minor` out of a server version string such as `2.15.1`.
pub fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.trim_start_matches('v').split(['.', '-']);
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Parses `major.minor.patch` out of a server version string, and whether
/// it is a pre-release (`2.15.1-beta.2`, which precedes `2.15.1`).
pub fn parse_release(v: &str) -> Option<((u32, u32, u32), bool)> {
    let v = v.trim_start_matches('v');
    let (core, pre) = match v.split_once('-') {
        Some((core, _)) => (core, true),
        None => (v, false),
    };
    let mut it = core.split('.').map(|n| n.parse().ok());
    let version = (it.next()??, it.next()??, it.next()??);
    it.next().is_none().then_some((version, pre))
}

/// Refuses a server version older than [`MIN_BATCH_SERVER_VERSION`] (a
/// pre-release of 2.15.1 counts as older).
pub fn check_batch_version(version: &str) -> Result<(), ProvisionError> {
    match parse_release(version) {
        Some((v, pre)) if v > MIN_BATCH_SERVER_VERSION || (v == MIN_BATCH_SERVER_VERSION && !pre) => Ok(()),
        _ => Err(ProvisionError::NoCoalescedBatchCommit { found: version.into() }),
    }
}

/// Refuses a server that cannot commit an atomic batch with one fsync (see
/// [`MIN_BATCH_SERVER_VERSION`]); for processes that write through
/// [`crate::batch`], in addition to [`check_server`].
pub fn check_batch_server(client: &async_nats::Client) -> Result<(), ProvisionError> {
    check_batch_version(&client.server_info().version)
}

/// Refuses a server that is too old or has no JetStream.
pub fn check_server(client: &async_nats::Client) -> Result<(), ProvisionError> {
    let info = client.server_info();
    match parse_version(&info.version) {
        Some(v) if v >= MIN_SERVER_VERSION => {}
        _ => return Err(ProvisionError::ServerTooOld { found: info.version }),
    }
    if !info.jetstream {
        return Err(ProvisionError::NoJetStream { version: info.version });
    }
    Ok(())
}

/// Attempts [`provision`] makes before giving up on a stream or bucket the
/// server did not answer for: a cluster that is electing leaders, or busy
/// creating the R3 assets of several processes starting at once, answers
/// some requests after the client's timeout.
const PROVISION_ATTEMPTS: u32 = 5;

/// What [`provision_as`] does with a stream or bucket that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bring it to this process's configuration (workers: their NATS user
    /// may update the streams).
    Update,
    /// Use it as it is (gateways: their NATS user may create a missing
    /// stream but not change one, so a gateway cannot, say, widen the
    /// history stream's subjects to ones it may publish on).
    CreateOnly,
}

/// Creates (or updates) every stream and bucket; idempotent. A stream or
/// bucket request that fails is retried (up to [`PROVISION_ATTEMPTS`]
/// times, 1 s, 2 s, ... apart); a server too old or a partition mismatch
/// fails at once.
pub async fn provision(client: &async_nats::Client, settings: &StorageSettings) -> Result<Storage, ProvisionError> {
    provision_as(client, settings, Mode::Update).await
}

/// The inbox stream's `republish`: each copy stored on `chat.inbox.<user>`
/// goes out on `chat.live.<user>` with its payload.
pub fn inbox_republish() -> stream::Republish {
    stream::Republish {
        source: format!("{}.inbox.*", subjects::PREFIX),
        destination: format!("{}{{{{wildcard(1)}}}}", subjects::live_prefix()),
        headers_only: false,
    }
}

/// [`provision`], with existing streams and buckets treated as `mode` says.
pub async fn provision_as(
    client: &async_nats::Client,
    settings: &StorageSettings,
    mode: Mode,
) -> Result<Storage, ProvisionError> {
    let mut attempt = 1;
    loop {
        match provision_once(client, settings, mode).await {
            Err(e @ (ProvisionError::Stream { .. } | ProvisionError::Bucket { .. }))
                if attempt < PROVISION_ATTEMPTS =>
            {
                tracing::warn!(error = %e, attempt, "provisioning failed; retrying");
                tokio::time::sleep(Duration::from_secs(attempt.into())).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

async fn provision_once(
    client: &async_nats::Client,
    settings: &StorageSettings,
    mode: Mode,
) -> Result<Storage, ProvisionError> {
    check_server(client)?;
    let js = jetstream::new(client.clone());
    let s = settings;
    let base = stream::Config {
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        max_message_size: s.max_msg_bytes,
        allow_direct: true,
        ..Default::default()
    };
    let ingress = ensure_stream(
        &js,
        mode,
        stream::Config {
            name: subjects::INGRESS_STREAM.into(),
            description: Some("accepted sends awaiting sequencing".into()),
            subjects: vec![subjects::INGRESS_ALL.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            duplicate_window: Duration::from_secs(120),
            // Gateways store concurrent sends as one atomic batch.
            allow_atomic_publish: true,
            ..base.clone()
        },
    )
    .await?;
    let history = ensure_stream(
        &js,
        mode,
        stream::Config {
            name: subjects::HISTORY_STREAM.into(),
            description: Some("permanent conversation history".into()),
            subjects: vec![subjects::HISTORY_ALL.into()],
            duplicate_window: Duration::from_secs(600),
            // Written by atomic batches (crate::batch); plain publishes are
            // unaffected by the flag.
            allow_atomic_publish: true,
            ..base.clone()
        },
    )
    .await?;
    let inbox = ensure_stream(
        &js,
        mode,
        stream::Config {
            name: subjects::INBOX_STREAM.into(),
            description: Some("per-user sync queues".into()),
            subjects: vec![subjects::INBOX_ALL.into()],
            max_age: s.inbox_retention,
            duplicate_window: Duration::from_secs(600),
            allow_atomic_publish: true,
            // Every stored copy, as stored, on its user's wake-up subject,
            // with the sequence of the user's copy before it (see
            // `subjects::live`): gateways deliver it without a read.
            republish: Some(inbox_republish()),
            ..base.clone()
        },
    )
    .await?;
    let push = ensure_stream(
        &js,
        mode,
        stream::Config {
            name: subjects::PUSH_STREAM.into(),
            description: Some("push jobs, one per message and device".into()),
            subjects: vec![subjects::PUSH_ALL.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            max_age: PUSH_JOB_MAX_AGE,
            duplicate_window: Duration::from_secs(600),
            ..base.clone()
        },
    )
    .await?;
    let push_plans = ensure_stream(
        &js,
        mode,
        stream::Config {
            name: subjects::PUSH_PLAN_STREAM.into(),
            description: Some("push plans from the sequencers, one per round of stored messages".into()),
            subjects: vec![subjects::PUSH_PLAN_ALL.into()],
            retention: stream::RetentionPolicy::WorkQueue,
            storage: stream::StorageType::Memory,
            max_age: PUSH_JOB_MAX_AGE,
            max_bytes: s.push_plan_max_bytes,
            discard: stream::DiscardPolicy::Old,
            duplicate_window: Duration::from_secs(120),
            ..base.clone()
        },
    )
    .await?;
    let push_dead = ensure_stream(
        &js,
        mode,
        stream::Config {
            name: subjects::PUSH_DEAD_STREAM.into(),
            description: Some("push jobs that failed for good".into()),
            subjects: vec![subjects::PUSH_DEAD_ALL.into()],
            max_age: PUSH_DEAD_MAX_AGE,
            duplicate_window: Duration::from_secs(600),
            ..base.clone()
        },
    )
    .await?;
    let mod_events = ensure_stream(
        &js,
        mode,
        stream::Config {
            name: subjects::MOD_EVENTS_STREAM.into(),
            description: Some("moderation events for operators (flood mutes)".into()),
            subjects: vec![subjects::MOD_EVENTS_ALL.into()],
            max_age: MOD_EVENTS_MAX_AGE,
            max_messages: MOD_EVENTS_MAX_MSGS,
            duplicate_window: Duration::from_secs(600),
            ..base
        },
    )
    .await?;
    let bucket = |name: &str, max_age: Duration| kv::Config {
        bucket: name.into(),
        history: 1,
        max_age,
        storage: stream::StorageType::File,
        num_replicas: s.replicas,
        ..Default::default()
    };
    let leases = ensure_bucket_as(&js, mode, bucket(subjects::LEASES_BUCKET, s.lease_ttl)).await?;
    let acks = ensure_bucket_as(&js, mode, bucket(subjects::ACKS_BUCKET, s.dedupe_window)).await?;
    // The sequencer writes a round's outcome records as one atomic batch.
    if mode == Mode::Update {
        allow_atomic(&js, &format!("KV_{}", subjects::ACKS_BUCKET)).await?;
    }
    let hindex = ensure_bucket_as(&js, mode, bucket(subjects::HINDEX_BUCKET, Duration::ZERO)).await?;
    let idhw = ensure_bucket_as(&js, mode, bucket(subjects::IDHW_BUCKET, Duration::ZERO)).await?;
    let groups = ensure_bucket_as(&js, mode, bucket(subjects::GROUPS_BUCKET, Duration::ZERO)).await?;
    check_partitions(&idhw, s.partitions).await?;
    // Expiry leaves a marker in the bucket, so watchers see a connection go.
    let presence = ensure_bucket_as(
        &js,
        mode,
        kv::Config {
            limit_markers: Some(Duration::from_secs(60)),
            ..bucket(subjects::PRESENCE_BUCKET, s.presence_timeout)
        },
    )
    .await?;
    let status = ensure_bucket_as(&js, mode, bucket(subjects::STATUS_BUCKET, Duration::ZERO)).await?;
    let delivered = ensure_bucket_as(&js, mode, bucket(subjects::DELIVERED_BUCKET, s.inbox_retention)).await?;
    let push_sent = ensure_bucket_as(&js, mode, bucket(subjects::PUSH_SENT_BUCKET, PUSH_JOB_MAX_AGE * 2)).await?;
    let reads = ensure_bucket_as(&js, mode, bucket(subjects::READ_BUCKET, Duration::ZERO)).await?;
    // Gateways write a round of delivered marks or read positions as one
    // atomic batch (`gateway/src/messaging/marks.rs`).
    if mode == Mode::Update {
        allow_atomic(&js, &format!("KV_{}", subjects::DELIVERED_BUCKET)).await?;
        allow_atomic(&js, &format!("KV_{}", subjects::READ_BUCKET)).await?;
    }
    // A SIGKILLed gateway's entry expires by itself; the marker tells
    // watchers at once.
    let gateways = ensure_bucket_as(
        &js,
        mode,
        kv::Config {
            limit_markers: Some(Duration::from_secs(60)),
            ..bucket(subjects::GATEWAYS_BUCKET, s.registry_ttl)
        },
    )
    .await?;
    let banned_words = ensure_bucket_as(&js, mode, bucket(subjects::BANNED_WORDS_BUCKET, Duration::ZERO)).await?;
    // Counters, rewritten on every send: no fsync, and losing them with the
    // server only forgives a flood in progress.
    let flood = ensure_bucket_as(
        &js,
        mode,
        kv::Config { storage: stream::StorageType::Memory, ..bucket(subjects::FLOOD_BUCKET, FLOOD_MAX_AGE) },
    )
    .await?;
    Ok(Storage {
        js,
        ingress,
        history,
        inbox,
        leases,
        acks,
        hindex,
        idhw,
        groups,
        presence,
        status,
        push,
        push_plans,
        push_dead,
        delivered,
        push_sent,
        reads,
        gateways,
        banned_words,
        flood,
        mod_events,
        settings: s.clone(),
    })
}

/// The first process records the partition count; later ones must match
/// it (a mismatch would route sends to partitions nobody reads).
async fn check_partitions(idhw: &kv::Store, ours: u32) -> Result<(), ProvisionError> {
    let key = "config.partitions";
    let err = |e: async_nats::Error| ProvisionError::Bucket { name: subjects::IDHW_BUCKET.into(), source: e };
    if idhw.create(key, ours.to_string().into()).await.is_ok() {
        return Ok(());
    }
    let theirs =
        idhw.get(key).await.map_err(|e| err(e.into()))?.ok_or_else(|| err("partition count vanished".into()))?;
    let theirs: u32 = std::str::from_utf8(&theirs)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| err("bad partition count".into()))?;
    if theirs == ours {
        Ok(())
    } else {
        Err(ProvisionError::PartitionMismatch { ours, theirs })
    }
}

async fn ensure_stream(
    js: &jetstream::Context,
    mode: Mode,
    config: stream::Config,
) -> Result<stream::Stream, ProvisionError> {
    let name = config.name.clone();
    let err = |e: async_nats::Error| ProvisionError::Stream { name: name.clone(), source: e };
    match js.create_stream(config.clone()).await {
        Ok(s) => Ok(s),
        Err(_) if mode == Mode::CreateOnly => js.get_stream(&name).await.map_err(|e| err(e.into())),
        Err(_) => {
            // Exists with another configuration (or lost a creation race):
            // bring it to ours.
            js.update_stream(config).await.map_err(|e| err(e.into()))?;
            js.get_stream(&name).await.map_err(|e| err(e.into()))
        }
    }
}

/// Lets a stream take atomic batches (a KV bucket's stream, whose
/// configuration the KV API does not expose).
pub async fn allow_atomic(js: &jetstream::Context, stream_name: &str) -> Result<(), ProvisionError> {
    let err = |e: async_nats::Error| ProvisionError::Bucket { name: stream_name.to_owned(), source: e };
    let mut s = js.get_stream(stream_name).await.map_err(|e| err(e.into()))?;
    let mut config = s.info().await.map_err(|e| err(e.into()))?.config.clone();
    if !config.allow_atomic_publish {
        config.allow_atomic_publish = true;
        js.update_stream(config).await.map_err(|e| err(e.into()))?;
    }
    Ok(())
}

/// Creates a KV bucket, or brings an existing one to `config`.
pub async fn ensure_bucket(js: &jetstream::Context, config: kv::Config) -> Result<kv::Store, ProvisionError> {
    ensure_bucket_as(js, Mode::Update, config).await
}

async fn ensure_bucket_as(
    js: &jetstream::Context,
    mode: Mode,
    config: kv::Config,
) -> Result<kv::Store, ProvisionError> {
    let name = config.bucket.clone();
    let err = |e: async_nats::Error| ProvisionError::Bucket { name: name.clone(), source: e };
    match js.create_key_value(config.clone()).await {
        Ok(s) => Ok(s),
        Err(_) if mode == Mode::CreateOnly => js.get_key_value(&name).await.map_err(|e| err(e.into())),
        Err(_) => js.update_key_value(config).await.map_err(|e| err(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15)));
        assert_eq!(parse_version("v2.9.10"), Some((2, 9)));
        assert_eq!(parse_version("2.11.0-beta.1"), Some((2, 11)));
        assert_eq!(parse_version("garbage"), None);
        assert!(parse_version("2.9.10").unwrap() < MIN_SERVER_VERSION);
        assert!(parse_version("2.15.1").unwrap() >= MIN_SERVER_VERSION);
    }

    #[test]
    fn batched_writes_need_2_15_1() {
        assert_eq!(parse_release("v2.15.1"), Some(((2, 15, 1), false)));
        assert_eq!(parse_release("2.15.1-beta.2"), Some(((2, 15, 1), true)));
        assert_eq!(parse_release("2.15"), None);
        assert_eq!(parse_release("2.15.1.4"), None);
        for ok in ["2.15.1", "2.15.2", "2.16.0-dev", "3.0.0"] {
            assert!(check_batch_version(ok).is_ok(), "{ok}");
        }
        for old in ["2.15.0", "2.15.1-RC.1", "2.14.9", "2.12.0", "garbage", ""] {
            let e = check_batch_version(old).unwrap_err();
            assert!(matches!(&e, ProvisionError::NoCoalescedBatchCommit { found } if found == old), "{old}");
            assert!(e.to_string().contains("fsync"), "{e}");
        }
    }
}
