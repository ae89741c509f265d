//! Test harness for the chat backend's integration tests.
//!
//! Starts REAL servers, each on its own free port with its own temp data
//! directory, and cleans them up on `Drop`:
//!
//! * [`NatsServer`]: `nats-server` (>= 2.11, pinned 2.15.1) with JetStream,
//!   configured by `nats/conf/test.conf` (`sync_interval: always`,
//!   `max_payload: 2MB`), started with `-p -1` so the OS picks the port,
//!   which is read back from the server's log.
//! * [`Postgres`]: PostgreSQL 15 from a data directory copied from a
//!   template made once by `initdb` (cached across test processes).
//! * [`NatsCluster`]: three nodes from `nats/conf/cluster/` on free
//!   ports, each killable and restartable on its own store.
//! * [`wait_for`]: poll for an event instead of sleeping blindly.
//! * [`nats_auth`]: the NATS users of `nats/conf/auth.conf` with their
//!   test passwords (every server above gets them); [`nats_admin`]
//!   connects with every right, for a test's own inspections.
//!
//! Environment knobs:
//! * `NATS_SERVER_BIN`: the nats-server binary (else `nats-server` on
//!   `PATH`; `scripts/test` sets it to what `scripts/install-deps`
//!   found; a pyenv shim is resolved to the real binary to save ~170 ms
//!   per start).
//! * `CHAT_NATS_TEST_CONF`: the config file (else `nats/conf/test.conf`).
//! * `PG_BIN`: the directory holding `initdb`, `pg_ctl`, `pg_isready`
//!   (else `/usr/lib/postgresql/15/bin` if it exists, else `PATH`).
//! * `CHAT_TESTS_KEEP=1`: keep temp dirs (logs, stores) after `Drop`, for
//!   post-mortems; their paths are printed to stderr.
//! * `CHAT_TESTS_WORKER_LOG=<prefix>`: append each worker process's log to
//!   `<prefix>.w<n>` (else it is discarded).
//!
//! When running as root, PostgreSQL commands run as the `postgres` user
//! through `runuser` (initdb refuses root).//!
//! [`load`] runs senders over several gateways and verifies what they
//! sent. Modules, by what they start: `nats` ([`NatsServer`]), `postgres`
//! ([`Postgres`]), [`browser`] (a headless Chromium over the DevTools
//! protocol, for the web client), [`prom`] (scraping `/metrics` and a strict
//! parser of the Prometheus text format) and `support` (temp dirs, log tails, commands). The
//! whole stack (gateways, workers) is built by the suite itself, in
//! `tests/tests/it/stack.rs`, because it runs the suite's own binaries.

#![forbid(unsafe_code)]

pub mod browser;
pub mod cluster;
pub mod fuzz;
pub mod load;
mod nats;
pub mod nats_auth;
mod postgres;
pub mod prom;
mod support;

use std::future::Future;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use anyhow::{anyhow, Result};

pub use cluster::NatsCluster;
pub use nats::NatsServer;
pub use nats_auth::{nats_admin, NatsUser};
pub use postgres::Postgres;

/// How often [`wait_for`] polls.
const WAIT_FOR_POLL: Duration = Duration::from_millis(20);

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to port
/// 0, read the port, close). Another process may grab it before you bind it,
/// so callers that can should retry on "address in use";
/// [`Postgres::start`] does.
///
/// # Panics
/// If binding 127.0.0.1:0 fails (no loopback interface).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// Polls the async closure `f` every 20 ms until it returns `Some(value)`,
/// and returns that value; fails with an error naming `what` if `timeout`
/// passes first. A single call of `f` that hangs is also cut off at the
/// deadline.
///
/// Use this to wait for an event (a message delivered, a row written, a
/// port open), never a blind sleep.
///
/// ```no_run
/// # async fn demo() -> anyhow::Result<()> {
/// use std::time::Duration;
/// use std::sync::atomic::{AtomicU32, Ordering};
/// let counter = &AtomicU32::new(0);
/// let n = chat_tests::wait_for("the counter to reach 3", Duration::from_secs(5), || async move {
///     let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
///     (n >= 3).then_some(n)
/// })
/// .await?;
/// assert_eq!(n, 3);
/// # Ok(()) }
/// ```
pub async fn wait_for<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut attempts: u64 = 0;
    loop {
        attempts += 1;
        match tokio::time::timeout_at(deadline, f()).await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(_) => break, // the call itself ran past the deadline
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            break;
        }
        tokio::time::sleep_until((now + WAIT_FOR_POLL).min(deadline)).await;
    }
    Err(anyhow!("timed out after {:?} waiting for {what} ({attempts} attempts)", started.elapsed()))
}

/// Whether something accepts TCP connections on 127.0.0.1:`port` (a quick
/// liveness probe; not a protocol check).
pub fn port_is_open(port: u16) -> bool {
    TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500)).is_ok()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[tokio::test]
    async fn wait_for_polls_until_some_or_times_out() -> Result<()> {
        let mut calls = 0;
        let got = wait_for("third call", Duration::from_secs(5), || {
            calls += 1;
            let n = calls;
            async move { (n >= 3).then_some(n) }
        })
        .await?;
        assert_eq!(got, 3);

        let t = Instant::now();
        let err = wait_for("the impossible", Duration::from_millis(100), || async { None::<()> }).await.unwrap_err();
        assert!(err.to_string().contains("the impossible"), "{err}");
        assert!(t.elapsed() < Duration::from_secs(2));

        // A call that hangs is cut off at the deadline.
        let err = wait_for("a hung call", Duration::from_millis(100), || async {
            std::future::pending::<Option<()>>().await
        })
        .await
        .unwrap_err();
        assert!(err.to_string().contains("a hung call"), "{err}");
        Ok(())
    }
}
