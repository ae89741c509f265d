//! A real nats-server on a random port with its store in a temp dir.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::support::{file_tail, log_section, TempDir, LOG_TAIL_LINES, START_POLL};

/// How long nats-server may take to come up before `start` gives up.
const START_DEADLINE: Duration = Duration::from_secs(10);

/// The nats-server binary: `NATS_SERVER_BIN`, else `nats-server` on `PATH`
/// (a pyenv shim is resolved with `pyenv which`). `scripts/test` sets
/// `NATS_SERVER_BIN` to what `scripts/install-deps` found; no machine path
/// is built in.
pub(crate) fn nats_server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("NATS_SERVER_BIN").filter(|b| !b.is_empty()) {
            return PathBuf::from(bin);
        }
        let on_path = std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join("nats-server")).find(|p| p.is_file()));
        // Not found: spawning "nats-server" fails with a message that says
        // how to install it or point NATS_SERVER_BIN at it.
        let Some(candidate) = on_path else { return PathBuf::from("nats-server") };
        // A pyenv shim is a bash script that re-execs through `pyenv exec`
        // (same pid, so kill still works) but costs ~170 ms per start.
        if candidate.components().any(|c| c.as_os_str() == "shims") {
            let pyenv = candidate
                .parent()
                .and_then(Path::parent)
                .map(|root| root.join("bin/pyenv"))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| PathBuf::from("pyenv"));
            if let Ok(out) =
                Command::new(pyenv).args(["which", "nats-server"]).stdin(Stdio::null()).stderr(Stdio::null()).output()
            {
                let real = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if out.status.success() && real.is_file() {
                    return real;
                }
            }
        }
        candidate
    })
    .clone()
}

/// The nats-server config used for tests: `CHAT_NATS_TEST_CONF`, else
/// `nats/conf/test.conf` in this repository.
fn nats_test_conf() -> PathBuf {
    match std::env::var_os("CHAT_NATS_TEST_CONF").filter(|c| !c.is_empty()) {
        Some(conf) => PathBuf::from(conf),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../nats/conf/test.conf"),
    }
}

/// A real `nats-server` with JetStream, on a random port, with its store in
/// a temp dir. Killed and its temp dir removed on `Drop`.
///
/// Each (re)start writes a new log file `nats-<n>.log` in the temp dir, so
/// a restart's port is never confused with the previous run's.
#[derive(Debug)]
pub struct NatsServer {
    /// Client URL of the running server, `nats://127.0.0.1:PORT`. Updated by
    /// [`NatsServer::restart`] (the port usually changes).
    pub url: String,
    child: Option<Child>,
    dir: TempDir,
    store: PathBuf,
    generation: u32,
    log: PathBuf,
}

impl NatsServer {
    /// Starts `nats-server -c nats/conf/test.conf -js -p -1 -a 127.0.0.1
    /// -sd <tmp>/store -l <tmp>/nats-1.log` and waits (at most 10 s) until
    /// its log reports the client port and "Server is ready".
    pub fn start() -> Result<NatsServer> {
        let dir = TempDir::new_in(&std::env::temp_dir(), "chat-nats")?;
        let store = dir.path().join("store");
        fs::create_dir(&store).with_context(|| format!("create {}", store.display()))?;
        let mut server = NatsServer {
            url: String::new(),
            child: None,
            log: dir.path().join("nats-0.log"),
            dir,
            store,
            generation: 0,
        };
        server.spawn(None)?;
        Ok(server)
    }

    /// Kills the server with SIGKILL (no clean shutdown, like a crash) and
    /// starts a new one on the SAME store dir, waiting until it is ready
    /// (JetStream has recovered its streams before the server reports
    /// ready). The port usually changes: [`NatsServer::url`] is updated, so
    /// reconnect with the new URL. Also works after [`NatsServer::kill`].
    pub fn restart(&mut self) -> Result<()> {
        self.kill();
        self.spawn(None)
    }

    /// Like [`NatsServer::restart`], but on the same port, so clients that
    /// stay up (a running gateway) reconnect to it.
    pub fn restart_same_port(&mut self) -> Result<()> {
        let port = self.url.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()).context("no port in the URL")?;
        self.kill();
        self.spawn(Some(port))
    }

    /// Kills the server with SIGKILL and reaps it. The store dir is kept (see
    /// [`NatsServer::restart`]). Does nothing if it is not running.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The JetStream store dir (passed as `-sd`); streams live under
    /// `<store_dir>/jetstream`.
    pub fn store_dir(&self) -> &Path {
        &self.store
    }

    /// The last lines of the current run's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        file_tail(&self.log, LOG_TAIL_LINES)
    }

    fn spawn(&mut self, port: Option<u16>) -> Result<()> {
        self.generation += 1;
        self.log = self.dir.path().join(format!("nats-{}.log", self.generation));
        let stderr_path = self.dir.path().join(format!("nats-{}.stderr", self.generation));
        let bin = nats_server_bin();
        let conf = nats_test_conf();
        if !conf.is_file() {
            bail!("nats-server test config {} not found (set CHAT_NATS_TEST_CONF)", conf.display());
        }
        let stderr = fs::File::create(&stderr_path).with_context(|| format!("create {}", stderr_path.display()))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("-c")
            .arg(&conf)
            .args(["-js", "-p", &port.map_or("-1".to_owned(), |p| p.to_string()), "-a", "127.0.0.1", "-sd"])
            .arg(&self.store)
            .arg("-l")
            .arg(&self.log)
            .envs(crate::nats_auth::server_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        let mut child = cmd.spawn().with_context(|| {
            format!("cannot start {} (install it with scripts/install-deps or set NATS_SERVER_BIN)", bin.display())
        })?;

        let started = Instant::now();
        let failure = |why: String| {
            anyhow!(
                "nats-server {why} (binary {}, config {}){}{}",
                bin.display(),
                conf.display(),
                log_section("nats-server log", &self.log),
                log_section("nats-server stderr", &stderr_path)
            )
        };
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    return Err(failure(format!("exited during startup with {status}")));
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(failure(format!("could not be polled: {e}")));
                }
            }
            if let Some(port) = nats_ready_port(&self.log) {
                self.url = format!("nats://127.0.0.1:{port}");
                self.child = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_DEADLINE {
                let _ = child.kill();
                let _ = child.wait();
                return Err(failure(format!("was not ready within {START_DEADLINE:?}")));
            }
            std::thread::sleep(START_POLL);
        }
    }
}

/// The client port from a nats-server log, once the log also says "Server
/// is ready" (JetStream is enabled and recovered before that line).
fn nats_ready_port(log: &Path) -> Option<u16> {
    const LISTENING: &str = "Listening for client connections on ";
    let text = fs::read_to_string(log).ok()?;
    if !text.contains("Server is ready") {
        return None;
    }
    text.lines().find_map(|line| {
        let addr = &line[line.find(LISTENING)? + LISTENING.len()..];
        addr.trim().rsplit(':').next()?.parse().ok()
    })
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        // `dir` (store and logs) is removed when it drops.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nats_has_jetstream_and_survives_sigkill_restart() -> Result<()> {
        let t = Instant::now();
        let mut nats = NatsServer::start()?;
        eprintln!("nats start: {:?}", t.elapsed());
        assert!(nats.url.starts_with("nats://127.0.0.1:"), "{}", nats.url);
        assert!(nats.store_dir().join("jetstream").is_dir(), "{}", nats.log_tail());

        let client = crate::nats_admin(&nats.url).await?;
        assert_eq!(client.server_info().max_payload, 2 * 1024 * 1024, "test.conf max_payload");
        let js = async_nats::jetstream::new(client);
        let account = js.query_account().await.context("JetStream account info")?;
        assert_eq!(account.streams, 0);

        js.create_stream(async_nats::jetstream::stream::Config {
            name: "HARNESS".into(),
            subjects: vec!["harness.>".into()],
            ..Default::default()
        })
        .await?;
        js.publish("harness.one", "kept".into()).await?.await?;

        let old_url = nats.url.clone();
        let t = Instant::now();
        nats.restart()?;
        eprintln!("nats SIGKILL + restart: {:?} ({old_url} -> {})", t.elapsed(), nats.url);

        let js = async_nats::jetstream::new(crate::nats_admin(&nats.url).await?);
        let mut stream = js.get_stream("HARNESS").await?;
        assert_eq!(stream.info().await?.state.messages, 1, "acked message lost on SIGKILL");

        nats.kill();
        nats.kill(); // idempotent
        nats.restart()?; // works after kill too
        let js = async_nats::jetstream::new(crate::nats_admin(&nats.url).await?);
        assert_eq!(js.query_account().await?.streams, 1);
        Ok(())
    }

    #[test]
    fn nats_log_parsing() -> Result<()> {
        let dir = TempDir::new_in(&std::env::temp_dir(), "chat-tests-unit")?;
        let log = dir.path().join("log");
        fs::write(&log, "[1] x [INF] Listening for client connections on 127.0.0.1:41241\n")?;
        assert_eq!(nats_ready_port(&log), None, "must wait for 'Server is ready'");
        fs::write(
            &log,
            "[1] x [INF] Listening for client connections on 127.0.0.1:41241\n[1] x [INF] Server is ready\n",
        )?;
        assert_eq!(nats_ready_port(&log), Some(41241));
        Ok(())
    }
}
