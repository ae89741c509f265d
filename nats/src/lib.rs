//! The gateway–worker contract, with no sockets of its own.
//!
//! Everything the gateway and the workers must agree on lives here:
//!
//! - [`subjects`]: every NATS subject and KV key, built by typed functions;
//!   conversation ids and ingress partitioning.
//! - [`provision`]: stream and KV bucket definitions, idempotent creation and
//!   the start-up check of the nats-server version and JetStream.
//! - [`batch`]: atomic batch publishing (one stream, all or nothing, one
//!   fsync per batch on nats-server 2.15.1).
//! - [`config`]: typed `CHAT_*` settings read once at start-up.
//! - [`envelope`]: what travels between processes (ingress sends, stored
//!   messages, ack records).
//! - [`history`]: the history index block, last-message lookup and the
//!   direct-get protocol, shared by the sequencer and the readers.
//! - [`metrics`]: the Prometheus text encoding every `/metrics` answers
//!   with, and the NATS connection's own counters.
//! - [`process`]: tracing set-up and the shutdown signal every binary
//!   shares.
//! - [`wire`]: the client-facing WebSocket frames and error codes.
//! - [`snowflake`]: the 64-bit message id generator (pure, clock injected).
#![forbid(unsafe_code)]

pub mod batch;
pub mod config;
pub mod envelope;
pub mod history;
pub mod metrics;
pub mod process;
pub mod provision;
pub mod snowflake;
pub mod subjects;
pub mod wire;
