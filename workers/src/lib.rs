//! Worker processes: ID generation, sequencing and fan-out.
//!
//! - [`lease`]: leases in the KV leases bucket (machine ids, partitions).
//! - [`bucket`]: reading a KV bucket in bounded batches.
//! - [`idgen`]: the leased machine id and the snowflake generator.
//! - [`sequencer`]: per-partition ordering, history, inbox copies, acks.
//! - [`presence`]: online/offline transitions derived from heartbeats.
//! - [`search`]: the search indexer (history → PostgreSQL).
//! - [`push`]: push notifications (planner, sender, FCM, APNs, Web Push).
//! - [`metrics`]: Prometheus metrics and their listener (`CHAT_METRICS_ADDR`).
//!
//! [`run`] connects, provisions streams and buckets, leases a machine id and
//! then owns a fair share of the ingress partitions, rebalancing as workers
//! come and go. Any number of workers may run; each partition has one
//! active owner at a time.
#![forbid(unsafe_code)]

pub mod bucket;
pub mod commit;
pub mod fast;
pub mod idgen;
pub mod lane;
pub mod lease;
pub mod metrics;
pub mod presence;
pub mod push;
pub mod reactions;
pub mod reads;
pub mod round;
pub mod search;
pub mod sequencer;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chat_nats::config::{self, ConfigError, Source};
use chat_nats::provision::{self, Storage, StorageSettings};
use chat_nats::subjects;
use futures::StreamExt;
use tokio::task::JoinHandle;

use idgen::{Clock, IdWorker};
use lease::Lease;

/// Default of `CHAT_WORKER_SUBSCRIPTION_CAPACITY`.
pub const DEFAULT_SUBSCRIPTION_CAPACITY: usize = 4096;

/// Worker settings, read from `CHAT_*` variables.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `CHAT_NATS_URL`.
    pub nats_url: String,
    /// `CHAT_NATS_USER` and `CHAT_NATS_PASSWORD` (or `_FILE`): the
    /// workers' NATS user (`nats/conf/auth.conf`).
    pub nats_credentials: Option<chat_nats::provision::Credentials>,
    /// Stream and bucket settings shared with the gateways.
    pub storage: StorageSettings,
    /// `CHAT_WORKER_CLOCK_OFFSET_MS`: added to the system clock (tests use
    /// it to run workers with skewed clocks). Default 0.
    pub clock_offset_ms: i64,
    /// `CHAT_WORKER_NAME`: how this worker names itself in leases and logs.
    pub name: String,
    /// `CHAT_WORKER_SUBSCRIPTION_CAPACITY`: messages the NATS client buffers
    /// per subscription before it drops them (a slow consumer).
    pub subscription_capacity: usize,
    /// `CHAT_COMMITS_IN_FLIGHT`: commits each of the worker's stream
    /// committers (`commit`) has in flight at once (1-64, default 2).
    pub commits_in_flight: usize,
    /// `CHAT_RECORD_LINGER_MS`: how long the outcome records' committer
    /// waits for `commit::LINGER_ENTRIES` records (0-10000, default 100).
    pub record_linger: std::time::Duration,
    /// Push notification settings.
    pub push: push::PushConfig,
    /// Search indexer settings.
    pub search: search::SearchConfig,
    /// `CHAT_METRICS_ADDR`: where `GET /metrics` is served; unset or `off`
    /// (the default): not served.
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl WorkerConfig {
    /// Reads the configuration.
    pub fn from_source(src: &dyn Source) -> Result<WorkerConfig, ConfigError> {
        Ok(WorkerConfig {
            nats_url: config::shared::nats_url(src)?,
            nats_credentials: config::shared::nats_credentials(src)?,
            storage: StorageSettings::from_source(src)?,
            clock_offset_ms: config::var(src, "CHAT_WORKER_CLOCK_OFFSET_MS", 0)?,
            name: config::var(src, "CHAT_WORKER_NAME", format!("worker-{}", std::process::id()))?,
            subscription_capacity: config::bounded(
                src,
                "CHAT_WORKER_SUBSCRIPTION_CAPACITY",
                DEFAULT_SUBSCRIPTION_CAPACITY as u64,
                1,
                1 << 20,
            )? as usize,
            commits_in_flight: config::bounded(src, "CHAT_COMMITS_IN_FLIGHT", commit::DEFAULT_IN_FLIGHT as u64, 1, 64)?
                as usize,
            record_linger: std::time::Duration::from_millis(config::bounded(
                src,
                "CHAT_RECORD_LINGER_MS",
                commit::DEFAULT_RECORD_LINGER_MS,
                0,
                10_000,
            )?),
            push: push::PushConfig::from_source(src)?,
            search: search::SearchConfig::from_source(src)?,
            metrics_addr: match src.get("CHAT_METRICS_ADDR").as_deref() {
                None | Some("") | Some("off") => None,
                Some(_) => {
                    Some(config::var(src, "CHAT_METRICS_ADDR", std::net::SocketAddr::from(([127, 0, 0, 1], 0)))?)
                }
            },
        })
    }
}

/// What the partition tasks share.
#[derive(Debug)]
pub struct Shared {
    /// NATS connection.
    pub client: async_nats::Client,
    /// Streams and buckets.
    pub storage: Storage,
    /// The leased id generator.
    pub ids: IdWorker,
    /// The worker's clock.
    pub clock: Clock,
    /// Messages the NATS client buffers per subscription
    /// (`CHAT_WORKER_SUBSCRIPTION_CAPACITY`): consumers ask for less.
    pub subscription_capacity: usize,
    /// The committers of the streams rounds write (`commit`).
    pub commits: commit::Committers,
    /// What `GET /metrics` reports.
    pub metrics: Arc<metrics::Metrics>,
    /// Where sequencers hand their push plans (`push::plans`); `None`
    /// without `CHAT_PUSH_ENABLED` (a plan nobody plans would wait in the
    /// work queue for a day).
    pub push_plans: Option<push::plans::Plans>,
}

/// Until when a partition task may act on its lease.
#[derive(Debug)]
pub struct Validity(Mutex<Instant>);

impl Validity {
    /// True while the lease is held.
    pub fn holds(&self) -> bool {
        Instant::now() < *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set(&self, until: Instant) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }
}

struct Owned {
    lease: Lease,
    valid: Arc<Validity>,
    task: JoinHandle<Result<(), async_nats::Error>>,
}

/// How long a stopping worker may spend releasing its leases. With NATS
/// unreachable the releases cannot finish: the worker exits anyway and its
/// leases expire after `CHAT_LEASE_TTL_MS`.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs a worker until `shutdown` resolves; then releases its leases so
/// other workers take over at once, for at most [`SHUTDOWN_GRACE`].
pub async fn run(cfg: WorkerConfig, shutdown: impl Future<Output = ()>) -> Result<(), async_nats::Error> {
    let (fired, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = fired.send(());
    };
    let grace = async move {
        match fired_rx.await {
            Ok(()) => tokio::time::sleep(SHUTDOWN_GRACE).await,
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        r = serve(cfg, shutdown) => r,
        _ = grace => {
            tracing::warn!("leases not released within the shutdown grace (NATS unreachable?); exiting, they expire on their own");
            Ok(())
        }
    }
}

/// Wake-ups are core NATS: those published just before this worker's
/// connection dropped may be lost with it (with a cluster node's death, say).
/// After every reconnect the worker asks every gateway to re-read its users'
/// inboxes (`subjects::wake_all`), so a copy whose wake-up was lost is not
/// left waiting for the next one or for `CHAT_LIVE_POLL_SECS`.
async fn wake_all_on_reconnect(client: async_nats::Client) {
    let stats = client.statistics();
    let mut connects = stats.connects.load(std::sync::atomic::Ordering::Relaxed);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let mut due: Vec<tokio::time::Instant> = Vec::new();
    loop {
        tick.tick().await;
        let now = stats.connects.load(std::sync::atomic::Ordering::Relaxed);
        if now != connects {
            connects = now;
            // Now, and again while the cluster settles: a node that just
            // restarted may not have its routes to the gateways' servers
            // yet, and what this worker publishes there reaches nobody.
            let at = tokio::time::Instant::now();
            due = subjects::REWAKE_AFTER.iter().map(|d| at + *d).collect();
        }
        let before = due.len();
        due.retain(|t| *t > tokio::time::Instant::now());
        if due.len() < before {
            if let Err(e) = client.publish(subjects::wake_all(), bytes::Bytes::new()).await {
                tracing::warn!(error = %e, "cannot ask the gateways to re-read after a reconnect");
            }
        }
    }
}

async fn serve(cfg: WorkerConfig, shutdown: impl Future<Output = ()>) -> Result<(), async_nats::Error> {
    // Bound first: a taken address is a start-up error, not a silent gap.
    let metrics_listener = match cfg.metrics_addr {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| format!("cannot bind CHAT_METRICS_ADDR {addr}: {e}"))?,
        ),
        None => None,
    };
    let identity =
        provision::Identity { credentials: cfg.nats_credentials.clone(), inbox_prefix: subjects::WORKER_INBOX_PREFIX };
    let client = provision::connect(&cfg.nats_url, &cfg.name, cfg.subscription_capacity, &identity).await?;
    let metrics = metrics::Metrics::new(&client);
    let _metrics_task = metrics_listener.map(|l| {
        tracing::info!(addr = %l.local_addr().map(|a| a.to_string()).unwrap_or_default(), "metrics listening");
        AbortOnDrop(tokio::spawn(metrics::serve(l, metrics.clone())))
    });
    client.flush().await?;
    let storage = provision::provision(&client, &cfg.storage).await?;
    // Group commit relies on 2.15.1's one-fsync atomic batch commit.
    provision::check_batch_server(&client)?;
    tokio::spawn(wake_all_on_reconnect(client.clone()));
    let clock = Clock { offset_ms: cfg.clock_offset_ms };
    // Before any partition is sequenced, so the planner sees every copy.
    let _push = if cfg.push.enabled { start_push(&client, &storage, &cfg, &metrics).await? } else { Vec::new() };
    tokio::pin!(shutdown);
    loop {
        let start = (std::process::id() % u32::from(chat_nats::snowflake::MACHINES)) as u16;
        let ttl = cfg.storage.lease_ttl;
        let acquired = IdWorker::acquire(&storage.leases, &storage.idhw, &cfg.name, ttl, clock, start).await;
        let (ids, machine) = match acquired {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "cannot lease a machine id; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(ttl) => continue,
                    _ = &mut shutdown => return Ok(()),
                }
            }
        };
        tracing::info!(machine = ids.machine(), worker = %cfg.name, "machine id leased");
        let shared = Arc::new(Shared {
            client: client.clone(),
            storage: storage.clone(),
            ids,
            clock,
            subscription_capacity: cfg.subscription_capacity,
            commits: commit::Committers::start(
                &client,
                &storage.js,
                cfg.commits_in_flight,
                cfg.record_linger,
                &metrics,
            ),
            metrics: metrics.clone(),
            push_plans: cfg.push.enabled.then(|| push::plans::Plans::start(storage.js.clone(), cfg.push.plan_linger)),
        });
        let (stop_presence, stop) = tokio::sync::oneshot::channel();
        let presence = tokio::spawn(presence::run(shared.clone(), cfg.name.clone(), ttl, stop));
        let (stop_search, stop) = tokio::sync::oneshot::channel();
        let search = cfg
            .search
            .enabled
            .then(|| tokio::spawn(search::run(shared.clone(), cfg.search.clone(), cfg.name.clone(), ttl, stop)));
        let stopped = manage(&cfg, shared, machine, &mut shutdown).await;
        // Not aborted: they release their leases on their way out.
        let _ = stop_presence.send(());
        let _ = stop_search.send(());
        let _ = presence.await;
        if let Some(search) = search {
            let _ = search.await;
        }
        if stopped {
            return Ok(());
        }
        tracing::warn!("machine id lease lost; stopping partitions and leasing again");
    }
}

/// Starts push, retrying a consumer creation that timed out (an R3 stream
/// busy or electing a leader answers late) up to 5 times; a configuration
/// error stops at once.
async fn start_push(
    client: &async_nats::Client,
    storage: &provision::Storage,
    cfg: &WorkerConfig,
    metrics: &Arc<metrics::Metrics>,
) -> Result<Vec<tokio::task::JoinHandle<()>>, push::PushError> {
    let mut attempt = 1;
    loop {
        match push::start(client.clone(), storage.clone(), cfg.push.clone(), metrics.clone()).await {
            Err(push::PushError::Nats(e)) if attempt < 5 => {
                tracing::warn!(error = %e, attempt, "cannot create the push consumers yet; retrying");
                tokio::time::sleep(Duration::from_secs(attempt)).await;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// Holds the machine lease and a fair share of partitions. Returns true on
/// shutdown, false when the machine lease was lost.
async fn manage(
    cfg: &WorkerConfig,
    sh: Arc<Shared>,
    mut machine: Lease,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> bool {
    let ttl = cfg.storage.lease_ttl;
    let parts = cfg.storage.partitions;
    let mut owned: HashMap<u32, Owned> = HashMap::new();
    let mut tick = tokio::time::interval(ttl / 4);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stop_all = |owned: &mut HashMap<u32, Owned>| {
        let all: Vec<Owned> = owned.drain().map(|(_, o)| o).collect();
        async move {
            for o in all {
                o.task.abort();
                let _ = o.task.await;
                o.lease.release().await;
            }
        }
    };
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut *shutdown => {
                stop_all(&mut owned).await;
                sh.metrics.partitions(0);
                machine.release().await;
                return true;
            }
        }
        if let Err(e) = machine.renew(&cfg.name).await {
            tracing::warn!(error = %e, "machine lease renewal failed");
            stop_all(&mut owned).await;
            sh.metrics.partitions(0);
            return false;
        }
        if let Err(e) = sh.ids.reserve(sh.clock.now_ms()).await {
            tracing::warn!(error = %e, "cannot extend the id reservation");
        }
        renew_partitions(cfg, &mut owned).await;
        sh.metrics.partitions(owned.len());
        let workers = live_workers(&sh).await.max(1);
        let target = parts.div_ceil(workers) as usize;
        if owned.len() < target {
            let first = u32::from(sh.ids.machine()) % parts;
            for i in 0..parts {
                if owned.len() >= target {
                    break;
                }
                let p = (first + i) % parts;
                if owned.contains_key(&p) {
                    continue;
                }
                let acquired = Lease::acquire(&sh.storage.leases, subjects::partition_lease(p), &cfg.name, ttl).await;
                let acquired = acquired.unwrap_or_else(|e| {
                    tracing::warn!(partition = p, error = %e, "cannot ask for a partition lease");
                    None
                });
                if let Some(lease) = acquired {
                    let valid = Arc::new(Validity(Mutex::new(lease.valid_until())));
                    let task = tokio::spawn(sequencer::run_partition(sh.clone(), p, valid.clone()));
                    owned.insert(p, Owned { lease, valid, task });
                }
            }
        } else if owned.len() > target {
            let extra: Vec<u32> = owned.keys().copied().take(owned.len() - target).collect();
            for p in extra {
                if let Some(o) = owned.remove(&p) {
                    o.task.abort();
                    let _ = o.task.await;
                    o.lease.release().await;
                    tracing::info!(partition = p, "partition released for rebalancing");
                }
            }
        }
        sh.metrics.partitions(owned.len());
    }
}

/// Aborts its task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn renew_partitions(cfg: &WorkerConfig, owned: &mut HashMap<u32, Owned>) {
    let mut lost = Vec::new();
    for (p, o) in owned.iter_mut() {
        if o.task.is_finished() {
            lost.push(*p);
            continue;
        }
        match o.lease.renew(&cfg.name).await {
            Ok(()) => o.valid.set(o.lease.valid_until()),
            Err(e) => {
                tracing::warn!(partition = *p, error = %e, "partition lease lost");
                lost.push(*p);
            }
        }
    }
    for p in lost {
        if let Some(o) = owned.remove(&p) {
            o.task.abort();
            match o.task.await {
                Ok(Err(e)) => tracing::warn!(partition = p, error = %e, "partition task failed"),
                _ => tracing::info!(partition = p, "partition task stopped"),
            }
            o.lease.release().await;
        }
    }
}

async fn live_workers(sh: &Shared) -> u32 {
    let Ok(keys) = sh.storage.leases.keys().await else { return 1 };
    keys.filter(|k| futures::future::ready(matches!(k, Ok(k) if k.starts_with("machine.")))).count().await as u32
}

pub use chat_nats::process::{init_tracing, shutdown_signal};

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[test]
    fn the_metrics_listener_is_off_unless_an_address_is_given() {
        let cfg = |v: Option<&str>| {
            let src: HashMap<String, String> =
                v.map(|v| ("CHAT_METRICS_ADDR".to_string(), v.to_string())).into_iter().collect();
            WorkerConfig::from_source(&src).map(|c| c.metrics_addr)
        };
        assert_eq!(cfg(None).unwrap(), None);
        assert_eq!(cfg(Some("off")).unwrap(), None);
        assert_eq!(cfg(Some("127.0.0.1:9464")).unwrap(), Some(([127, 0, 0, 1], 9464).into()));
        let e = cfg(Some("port 9464")).unwrap_err().to_string();
        assert!(e.contains("CHAT_METRICS_ADDR"), "{e}");
    }
}
