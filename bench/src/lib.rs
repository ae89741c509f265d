//! `chat-bench`: a load generator for the chat stack, with the nearest
//! raw-NATS equivalent of every scenario run next to it on the same server
//! so results can be read as ours/baseline ratios (absolute times drift on
//! shared machines; ratios drift less).
//!
//! Scenarios (each a module with a `Cfg` and an `async fn run(&Target,
//! &Cfg) -> Result<Report>`, so the smoke tests can run them with tiny
//! sizes against a stack they started themselves):
//!
//! - [`latency`]: 1:1 pairs at a fixed total rate; send→ack and
//!   send→delivery, coordinated-omission safe.
//! - [`catchup`]: one device offline while N messages arrive; sync→synced.
//! - [`history`]: a conversation with M stored messages; paging 50 older
//!   messages from random points.
//! - [`idle`]: N idle authenticated connections; gateway RSS and CPU per
//!   connection, kernel socket memory.
//! - [`storm`]: N clients drop and reconnect at once and sync.
//! - [`fanout`]: groups of 100 members, senders at a fixed rate;
//!   deliveries per second and delivery latency.
//! - [`heartbeat`]: N connections sending `ping` heartbeats at a rising
//!   total rate; pongs per second and their latency, presence KV writes
//!   per second, gateway CPU, against raw KV puts at the same rate.
//! - [`index`]: N 1:1 sends as fast as they are acknowledged while the
//!   search indexer applies them; indexed/s against acked sends/s, lag.
//! - [`fsync`]: this disk's raw fsync rate and latency, and stored
//!   messages per second with atomic batches of 1 to 999 entries against
//!   plain publishes (nats-server only, no stack).
//!
//! `latency`, `idle` and `heartbeat` run over WebSocket or QUIC
//! ([`client::Transport`]).
//!
//! The binary (`src/main.rs`) starts its own stack ([`stack`]) unless told
//! to use running gateways.
#![forbid(unsafe_code)]

pub mod baseline;
pub mod catchup;
pub mod client;
pub mod fanout;
pub mod fsync;
pub mod heartbeat;
pub mod history;
pub mod idle;
pub mod index;
pub mod latency;
pub mod pace;
pub mod procfs;
pub mod report;
pub mod room;
pub mod stack;
pub mod storm;
pub mod tap;
pub mod traffic;

pub use report::Report;

/// The system under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// Gateway addresses (`host:port`); connections are spread over them.
    pub gateways: Vec<String>,
    /// The gateways' QUIC endpoints, in the same order (empty: unknown,
    /// QUIC runs are refused).
    pub quic: Vec<QuicTarget>,
    /// The nats-server the gateways use (baselines run on it too).
    pub nats_url: String,
    /// Gateway process ids, for RSS and CPU readings (an in-process
    /// gateway's is the test process's own pid; empty: not measured).
    pub gateway_pids: Vec<u32>,
    /// The nats-server's pid, if known (for its CPU and RSS readings).
    pub nats_pid: Option<u32>,
    /// The gateways' `CHAT_TOKEN_SECRET`, if known: the bench then mints
    /// device tokens itself instead of one argon2 login per device.
    pub token_secret: Option<Vec<u8>>,
    /// The stack's other processes by role (workers, PostgreSQL's
    /// postmaster, whose backends are counted with it), for CPU readings.
    pub other_pids: Vec<(String, u32)>,
}

impl Target {
    /// Only a nats-server (for scenarios that measure NATS alone).
    pub fn nats_only(nats_url: String) -> Target {
        Target {
            gateways: vec![],
            quic: vec![],
            nats_url,
            gateway_pids: vec![],
            nats_pid: None,
            token_secret: None,
            other_pids: vec![],
        }
    }
}

/// A gateway's QUIC endpoint.
#[derive(Debug, Clone)]
pub struct QuicTarget {
    /// UDP `host:port` (the gateway's `CHAT_QUIC_ADDR`).
    pub addr: String,
    /// SHA-256 fingerprint (hex) of its certificate, trusted by pinning.
    pub fingerprint: String,
}

impl Target {
    /// Gateway `i`, round-robin.
    pub fn gateway(&self, i: usize) -> &str {
        &self.gateways[i % self.gateways.len()]
    }
}
