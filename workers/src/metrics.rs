//! The worker's Prometheus metrics and the listener that serves them
//! (`CHAT_METRICS_ADDR`, `GET /metrics`).
//!
//! Label sets come from fixed enums: modes, providers and results are
//! `&'static str`, resolved once where the set is fixed. The NATS
//! connection's counters are read at scrape time.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use chat_nats::metrics::{count_histogram, secs, Seconds};

/// How the sequencer stored messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A round stored through the stream committers (`round`, `commit`):
    /// atomic batches when its parts, alone or with other rounds', hold
    /// enough entries, else plain publishes.
    Batch = 0,
    /// One message at a time (`sequencer::process`).
    Single = 1,
    /// A round of hand-offs (`fast`), stored like `Batch`.
    Fast = 2,
}

const MODES: [&str; 3] = ["batch", "single", "fast"];

/// Operations of the search indexer, in the order of [`Metrics::search_applied`].
const SEARCH_OPS: [&str; 3] = ["insert", "edit", "delete"];

/// What happened to one push attempt (the order of `PUSH_RESULTS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushResult {
    /// Accepted by the provider.
    Sent = 0,
    /// The provider said the token is gone; the registration was removed.
    InvalidToken = 1,
    /// Failed for now; retried later.
    Retry = 2,
    /// Failed for good or out of attempts; dead-lettered.
    Dead = 3,
}

const PUSH_RESULTS: [&str; 4] = ["sent", "invalid_token", "retry", "dead"];
const PROVIDERS: [&str; 4] = ["fcm", "apns", "webpush", "other"];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PushLabels {
    provider: &'static str,
    result: &'static str,
}

type Label = [(&'static str, &'static str); 1];

/// Every worker metric.
pub struct Metrics {
    registry: Registry,
    round_messages: Histogram,
    commit_seconds: [Histogram; 3],
    sequenced: [Counter; 3],
    partitions: Gauge,
    push: [[Counter; 4]; 4],
    presence: [Counter; 2],
    search_lag: Gauge,
    search_transactions: Counter,
    search_events: [Counter; 3],
    commits: [Counter; 3],
    commit_parts: [Counter; 3],
}

/// The streams with a committer (`commit::Committers`).
const COMMIT_STREAMS: [&str; 3] = ["history", "inbox", "acks"];

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    /// Registers every metric; `client`'s counters are read at scrape time.
    pub fn new(client: &async_nats::Client) -> Arc<Metrics> {
        let mut r = Registry::default();
        let commit = Family::<Label, Histogram, Seconds>::new_with_constructor(Seconds);
        let sequenced = Family::<Label, Counter>::default();
        let presence = Family::<Label, Counter>::default();
        let search_events = Family::<Label, Counter>::default();
        let commits = Family::<Label, Counter>::default();
        let commit_parts = Family::<Label, Counter>::default();
        // Every provider × result from the start, so a rule on `dead`
        // sees 0 before the first one.
        let push = Family::<PushLabels, Counter>::default();
        let m = Metrics {
            registry: Registry::default(),
            round_messages: count_histogram(),
            commit_seconds: MODES.map(|v| commit.get_or_create(&[("mode", v)]).clone()),
            sequenced: MODES.map(|v| sequenced.get_or_create(&[("mode", v)]).clone()),
            partitions: Gauge::default(),
            push: PROVIDERS.map(|provider| {
                PUSH_RESULTS.map(|result| push.get_or_create(&PushLabels { provider, result }).clone())
            }),
            presence: ["online", "offline"].map(|v| presence.get_or_create(&[("to", v)]).clone()),
            search_lag: Gauge::default(),
            search_transactions: Counter::default(),
            search_events: SEARCH_OPS.map(|v| search_events.get_or_create(&[("op", v)]).clone()),
            commits: COMMIT_STREAMS.map(|v| commits.get_or_create(&[("stream", v)]).clone()),
            commit_parts: COMMIT_STREAMS.map(|v| commit_parts.get_or_create(&[("stream", v)]).clone()),
        };
        r.register(
            "chat_commits",
            "Commits of the worker's stream committers (a merged batch, or a lone part), by stream",
            commits,
        );
        r.register(
            "chat_commit_parts",
            "Rounds' parts the stream committers stored, by stream (parts per commit: how much rounds share)",
            commit_parts,
        );
        r.register(
            "chat_sequencer_round_messages",
            "Ingress messages a partition owner took as one round",
            m.round_messages.clone(),
        );
        r.register(
            "chat_sequencer_commit_seconds",
            "Time to store and answer a batched round (mode=batch) or one message (mode=single)",
            commit,
        );
        r.register("chat_sequencer_messages", "Ingress messages sequenced, by how they were stored", sequenced);
        r.register("chat_partitions_owned", "Ingress partitions this worker owns", m.partitions.clone());
        r.register("chat_push_outcomes", "Push attempts by provider and result", push);
        r.register("chat_presence_transitions", "Presence transitions published, by new state", presence);
        r.register(
            "chat_search_index_lag_messages",
            "History messages not yet applied to the search index (pending + unacknowledged of its consumer)",
            m.search_lag.clone(),
        );
        r.register(
            "chat_search_index_transactions",
            "PostgreSQL transactions the search indexer committed (one per batch applied)",
            m.search_transactions.clone(),
        );
        r.register(
            "chat_search_index_events",
            "History events applied to the search index, by operation",
            search_events,
        );
        r.register_collector(Box::new(chat_nats::metrics::NatsCollector(client.clone())));
        Arc::new(Metrics { registry: r, ..m })
    }

    /// The registry as Prometheus text.
    pub fn encode(&self) -> String {
        chat_nats::metrics::encode(&self.registry)
    }

    /// Records a round taken from ingress.
    pub fn round(&self, messages: usize) {
        self.round_messages.observe(messages as f64);
    }

    /// Records `messages` stored in `mode`, started at `started`.
    /// The counters of the committer of `stream` (`history`, `inbox` or
    /// `acks`): its commits and the parts they stored.
    pub fn commit_counters(&self, stream: &str) -> crate::commit::Counters {
        let i = COMMIT_STREAMS.iter().position(|s| *s == stream).unwrap_or(0);
        crate::commit::Counters { commits: self.commits[i].clone(), parts: self.commit_parts[i].clone() }
    }

    pub fn committed(&self, mode: Mode, messages: usize, started: Instant) {
        self.commit_seconds[mode as usize].observe(secs(started));
        self.sequenced[mode as usize].inc_by(messages as u64);
    }

    /// Sets the partitions owned.
    pub fn partitions(&self, n: usize) {
        self.partitions.set(n as i64);
    }

    /// Records a push attempt's outcome.
    pub fn push(&self, provider: &str, result: PushResult) {
        let p = PROVIDERS.iter().position(|p| *p == provider).unwrap_or(PROVIDERS.len() - 1);
        self.push[p][result as usize].inc();
    }

    /// Records the search indexer's applied inserts, edits and deletes.
    pub fn search_applied(&self, counts: [u64; 3]) {
        for (c, n) in self.search_events.iter().zip(counts) {
            c.inc_by(n);
        }
    }

    /// Counts one committed transaction of the search indexer.
    pub fn search_transaction(&self) {
        self.search_transactions.inc();
    }

    /// Sets the search indexer's lag, in history messages.
    pub fn search_lag(&self, messages: u64) {
        self.search_lag.set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    /// Records a published presence transition.
    pub fn presence(&self, online: bool) {
        self.presence[usize::from(!online)].inc();
    }
}

/// Serves `GET /metrics` on `listener` until the task is dropped (no
/// credential: bind it to an address only Prometheus reaches).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: not a reason to spin.
                tracing::warn!(error = %e, "metrics listener: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move { Ok::<_, Infallible>(answer(&metrics, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc);
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "metrics connection ended with an error");
            }
        });
    }
}

fn answer<B>(metrics: &Metrics, req: &Request<B>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&hyper::Method::GET, "/metrics") => (StatusCode::OK, chat_nats::metrics::CONTENT_TYPE, metrics.encode()),
        (_, "/metrics") => (StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n".to_owned()),
        _ => (StatusCode::NOT_FOUND, "text/plain", "only /metrics is served here\n".to_owned()),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
    resp
}
