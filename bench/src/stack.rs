//! The bench's own stack: nats-server and PostgreSQL from the test harness
//! (`chat_tests`: `nats/conf/test.conf`, i.e. `sync_interval: always`,
//! every JetStream write fsynced before its ack) and the release gateway
//! and worker binaries as child processes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use chat_client::Http;
use chat_tests::{free_port, wait_for, NatsCluster, NatsServer, Postgres};

use crate::{procfs, Target};

/// How to start the stack.
#[derive(Debug, Clone)]
pub struct StackCfg {
    /// Gateway processes.
    pub gateways: usize,
    /// Worker processes.
    pub workers: usize,
    /// A 3-node cluster with every stream and bucket R3 instead of one
    /// nats-server.
    pub cluster: bool,
    /// The `chat-gateway` binary.
    pub gateway_bin: PathBuf,
    /// The `chat-worker` binary.
    pub worker_bin: PathBuf,
    /// Extra `CHAT_*` settings for every process (override the defaults).
    pub env: Vec<(String, String)>,
    /// Where the processes' stderr goes.
    pub log_dir: PathBuf,
}

impl Default for StackCfg {
    fn default() -> Self {
        StackCfg {
            gateways: 1,
            workers: 1,
            cluster: false,
            gateway_bin: PathBuf::from("target/release/chat-gateway"),
            worker_bin: PathBuf::from("target/release/chat-worker"),
            env: vec![],
            log_dir: PathBuf::from("target/bench/logs"),
        }
    }
}

/// A running stack; everything is stopped on drop.
pub struct OwnStack {
    /// nats-server, unless the stack runs on a cluster.
    pub nats: Option<NatsServer>,
    /// The 3-node cluster, if asked for.
    pub cluster: Option<NatsCluster>,
    /// What the processes get as `CHAT_NATS_URL` (every node of a cluster).
    nats_url: String,
    /// PostgreSQL.
    pub pg: Postgres,
    gateways: Vec<(String, Child)>,
    quic: Vec<crate::QuicTarget>,
    workers: Vec<Child>,
    secret: String,
}

impl OwnStack {
    /// Starts nats-server, PostgreSQL, the gateways (waiting until each
    /// answers `/readyz`) and the workers.
    pub async fn start(cfg: &StackCfg) -> Result<OwnStack> {
        for bin in [&cfg.gateway_bin, &cfg.worker_bin] {
            anyhow::ensure!(bin.is_file(), "{} not found: run `cargo build --release --bins` first", bin.display());
        }
        std::fs::create_dir_all(&cfg.log_dir).with_context(|| format!("create {}", cfg.log_dir.display()))?;
        let (nats, cluster) = if cfg.cluster {
            (None, Some(tokio::task::spawn_blocking(NatsCluster::start).await??))
        } else {
            (Some(tokio::task::spawn_blocking(NatsServer::start).await??), None)
        };
        let nats_url = match (&nats, &cluster) {
            (Some(n), _) => n.url.clone(),
            (None, c) => c.as_ref().map(|c| c.url.clone()).unwrap_or_default(),
        };
        let pg = tokio::task::spawn_blocking(Postgres::start).await??;
        let secret = format!(
            "bench-secret-{:020}-{:020}",
            crate::pace::Rng::from_clock().next_u64(),
            crate::pace::Rng::from_clock().next_u64()
        );
        let mut s = OwnStack { nats, cluster, nats_url, pg, gateways: vec![], quic: vec![], workers: vec![], secret };
        for i in 0..cfg.gateways.max(1) {
            let addr = format!("127.0.0.1:{}", free_port());
            let mut cmd = s.command(&cfg.gateway_bin, cfg, &format!("gateway-{i}"))?;
            let quic = cfg.env.iter().find(|(k, _)| k == "CHAT_QUIC_ADDR").map(|(_, v)| v.clone());
            let quic = match quic {
                Some(q) => q,
                None => {
                    let q = format!("127.0.0.1:{}", free_udp_port()?);
                    cmd.env("CHAT_QUIC_ADDR", &q);
                    q
                }
            };
            // A data directory per gateway, its self-signed QUIC certificate
            // generated here first so the bench knows its fingerprint.
            if !cfg.env.iter().any(|(k, _)| k == "CHAT_DATA_DIR" || k == "CHAT_TLS_CERT") && quic != "off" {
                let dir = s.pg.data_dir().parent().unwrap_or(s.pg.data_dir()).join(format!("bench-gw{i}"));
                let (_, _, fingerprint) = chat_gateway::conn::quic::load_or_generate(None, None, &dir)
                    .map_err(|e| anyhow::anyhow!("gateway {i} certificate: {e}"))?;
                cmd.env("CHAT_DATA_DIR", &dir);
                s.quic.push(crate::QuicTarget { addr: quic, fingerprint });
            }
            let child = cmd
                .env("CHAT_HTTP_ADDR", &addr)
                .env("CHAT_GATEWAY_ID", format!("bench-gw{i}"))
                .spawn()
                .with_context(|| format!("spawn {}", cfg.gateway_bin.display()))?;
            s.gateways.push((addr.clone(), child));
            if let Err(e) = wait_ready(&addr).await {
                let log = std::fs::read_to_string(cfg.log_dir.join(format!("gateway-{i}.log"))).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                anyhow::bail!("{e:#}; gateway log ends:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
            }
        }
        for i in 0..cfg.workers.max(1) {
            let child = s
                .command(&cfg.worker_bin, cfg, &format!("worker-{i}"))?
                .envs(chat_tests::nats_auth::WORKER.env())
                .env("CHAT_WORKER_NAME", format!("bench-w{i}"))
                .spawn()
                .with_context(|| format!("spawn {}", cfg.worker_bin.display()))?;
            s.workers.push(child);
        }
        Ok(s)
    }

    fn command(&self, bin: &Path, cfg: &StackCfg, name: &str) -> Result<Command> {
        let log = cfg.log_dir.join(format!("{name}.log"));
        let stderr = std::fs::File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = Command::new(bin);
        if self.cluster.is_some() {
            cmd.env("CHAT_REPLICAS", "3");
        }
        cmd.env("CHAT_NATS_URL", &self.nats_url)
            // Gateways' credentials; workers get theirs in `start`.
            .envs(chat_tests::nats_auth::GATEWAY.env())
            .env("CHAT_DATABASE_URL", &self.pg.url)
            .env("CHAT_LOG", "warn")
            .env("CHAT_TOKEN_SECRET", &self.secret)
            .env("CHAT_WS_RATE_PER_SEC", "1000000")
            .env("CHAT_WS_RATE_BURST", "1000000")
            // Scenarios sign up and log in thousands of users from one
            // address: the brute-force limits would refuse them.
            .env("CHAT_LOGIN_PER_ADDR_PER_MIN", "1000000")
            .env("CHAT_LOGIN_PER_ADDR_BURST", "1000000")
            .env("CHAT_SIGNUP_PER_ADDR_PER_MIN", "1000000")
            .env("CHAT_SIGNUP_PER_ADDR_BURST", "1000000")
            // Scenarios send far faster per account than a person: flood
            // detection would refuse them (its cost is measured apart, see
            // docs/benchmarks.md, Moderation).
            .env("CHAT_FLOOD_MAX_MESSAGES", "0")
            // The idle scenario holds more sessions per gateway than the
            // production default of CHAT_MAX_CONNECTIONS.
            .env("CHAT_MAX_CONNECTIONS", "1000000")
            .envs(cfg.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        Ok(cmd)
    }

    /// What the scenarios drive.
    pub fn target(&self) -> Target {
        Target {
            gateways: self.gateways.iter().map(|(a, _)| a.clone()).collect(),
            quic: if self.quic.len() == self.gateways.len() { self.quic.clone() } else { vec![] },
            // Baselines run on one node (node 1 of a cluster).
            nats_url: match (&self.nats, &self.cluster) {
                (_, Some(c)) => c.node_url(0),
                _ => self.nats_url.clone(),
            },
            gateway_pids: self.gateways.iter().map(|(_, c)| c.id()).collect(),
            nats_pid: match (&self.nats, &self.cluster) {
                (Some(n), _) => n.store_dir().to_str().and_then(procfs::find_pid),
                (None, Some(c)) => c.store_dir(0).to_str().and_then(procfs::find_pid),
                (None, None) => None,
            },
            token_secret: Some(self.secret.clone().into_bytes()),
            other_pids: self
                .workers
                .iter()
                .map(|c| ("worker".to_owned(), c.id()))
                .chain(self.pg.data_dir().to_str().and_then(procfs::find_pid).map(|p| ("postgres".to_owned(), p)))
                .collect(),
        }
    }

    /// Fails if a gateway or worker has exited (crashed under load).
    pub fn check_alive(&mut self) -> Result<()> {
        for (addr, c) in &mut self.gateways {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!("gateway {addr} exited with {status} (see its log)");
            }
        }
        for c in &mut self.workers {
            if let Some(status) = c.try_wait()? {
                anyhow::bail!("worker {} exited with {status} (see its log)", c.id());
            }
        }
        Ok(())
    }
}

impl Drop for OwnStack {
    fn drop(&mut self) {
        for c in self.gateways.iter_mut().map(|(_, c)| c).chain(self.workers.iter_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A UDP port on 127.0.0.1 that was free a moment ago (for a gateway's
/// QUIC endpoint, so several gateways can run side by side).
fn free_udp_port() -> Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits until the gateway at `addr` answers `GET /readyz` with 200.
pub async fn wait_ready(addr: &str) -> Result<()> {
    let http = Http::new(addr);
    wait_for(&format!("gateway {addr} ready"), Duration::from_secs(30), || {
        let http = http.clone();
        async move {
            matches!(http.request(chat_client::Method::GET, "/readyz", None, None).await, Ok((200, _))).then_some(())
        }
    })
    .await
}
