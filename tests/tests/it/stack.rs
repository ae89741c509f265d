//! Builders for a whole stack on real servers: nats-server, PostgreSQL,
//! gateways (in-process, or as processes to SIGKILL) and worker processes.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result};
use chat_client::{Conn, Http, Login};
use chat_gateway::GatewayConfig;
use chat_tests::{free_port, wait_for, NatsCluster, NatsServer, Postgres};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running stack.
pub struct Stack {
    pub nats: Nats,
    pub pg: Postgres,
    pub gateways: Vec<Gateway>,
    pub workers: Vec<Worker>,
    pub env: HashMap<String, String>,
    /// Workers serve `GET /metrics` (see [`StackBuilder::worker_metrics`]).
    worker_metrics: bool,
}

/// The stack's NATS: one server, or a 3-node cluster with every stream
/// and bucket at R3.
pub struct Nats {
    /// What `CHAT_NATS_URL` is set to (all nodes of a cluster).
    pub url: String,
    server: Option<NatsServer>,
    pub cluster: Option<NatsCluster>,
}

impl Nats {
    /// SIGKILLs the server (every node of a cluster).
    pub fn kill(&mut self) {
        if let Some(n) = &mut self.server {
            n.kill();
        }
        if let Some(c) = &mut self.cluster {
            (0..chat_tests::cluster::NODES).for_each(|i| c.kill(i));
        }
    }

    /// SIGKILLs and restarts on the same store(s); updates [`Nats::url`].
    pub fn restart(&mut self) -> Result<()> {
        if let Some(n) = &mut self.server {
            n.restart()?;
            self.url = n.url.clone();
        }
        if let Some(c) = &mut self.cluster {
            c.restart_all()?;
        }
        Ok(())
    }

    /// SIGKILLs the single server and restarts it on its store and port,
    /// under the running gateways and workers.
    pub fn restart_same_port(&mut self) -> Result<()> {
        self.server.as_mut().context("a single server, not a cluster")?.restart_same_port()
    }

    /// The store dir (node 1's in a cluster).
    pub fn store_dir(&self) -> &std::path::Path {
        match (&self.server, &self.cluster) {
            (Some(n), _) => n.store_dir(),
            (None, Some(c)) => c.store_dir(0),
            (None, None) => unreachable!("a stack has a server or a cluster"),
        }
    }

    /// The cluster, if the stack runs on one.
    pub fn cluster(&mut self) -> Option<&mut NatsCluster> {
        self.cluster.as_mut()
    }
}

/// A gateway, in-process or a child process.
pub enum Gateway {
    InProcess {
        addr: String,
        quic: String,
        fingerprint: String,
        stop: Option<oneshot::Sender<()>>,
        task: JoinHandle<()>,
    },
    Process {
        addr: String,
        child: Child,
    },
}

/// A client transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// WebSocket.
    Ws,
    /// QUIC.
    Quic,
}

/// A worker process.
pub struct Worker {
    pub child: Child,
    /// Where it serves `GET /metrics` (`CHAT_METRICS_ADDR`), if it does.
    pub metrics_addr: Option<String>,
}

/// How to build a stack.
pub struct StackBuilder {
    gateways: usize,
    cluster: bool,
    workers: Vec<i64>,
    env: HashMap<String, String>,
    worker_metrics: bool,
}

/// A stack with one gateway and one worker, fast leases and few partitions.
pub fn stack() -> StackBuilder {
    StackBuilder { gateways: 1, cluster: false, workers: vec![0], env: HashMap::new(), worker_metrics: false }
}

impl StackBuilder {
    /// Worker processes, one per clock offset (ms).
    pub fn workers_with_clock_offsets(mut self, offsets: &[i64]) -> Self {
        self.workers = offsets.to_vec();
        self
    }

    /// `n` in-process gateways.
    pub fn gateways(mut self, n: usize) -> Self {
        self.gateways = n;
        self
    }

    /// `n` worker processes with true clocks.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = vec![0; n];
        self
    }

    /// A 3-node NATS cluster (`nats/conf/cluster/`) instead of one server,
    /// with every stream and bucket at R3 (`CHAT_REPLICAS=3`).
    pub fn cluster(mut self) -> Self {
        self.cluster = true;
        self.env.insert("CHAT_REPLICAS".into(), "3".into());
        self
    }

    /// Every worker serves `GET /metrics` on a free port of its own
    /// ([`Stack::worker_metrics`]). Off unless asked for: a port found free
    /// may be taken before the worker binds it, and the worker then stops.
    pub fn worker_metrics(mut self) -> Self {
        self.worker_metrics = true;
        self
    }

    /// Sets a `CHAT_*` variable for every process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.insert(k.into(), v.into());
        self
    }

    /// Starts everything and waits until a gateway answers.
    pub async fn start(self) -> Result<Stack> {
        let nats = if self.cluster {
            let c = NatsCluster::start()?;
            Nats { url: c.url.clone(), server: None, cluster: Some(c) }
        } else {
            let n = NatsServer::start()?;
            Nats { url: n.url.clone(), server: Some(n), cluster: None }
        };
        let pg = Postgres::start()?;
        let mut env: HashMap<String, String> = [
            ("CHAT_LEASE_TTL_MS", "1500"),
            ("CHAT_PARTITIONS", "4"),
            ("CHAT_LOG", "warn"),
            ("CHAT_DRAIN_SECS", "1"),
            ("CHAT_SEND_TIMEOUT_MS", "10000"),
            ("CHAT_TOKEN_SECRET", "test-secret-0123456789abcdef0123456789"),
            // Every test signs up and logs in from 127.0.0.1: the brute-force
            // limits stay out of the way unless a test sets them
            // (`limits_auth`).
            ("CHAT_LOGIN_PER_ADDR_PER_MIN", "1000000"),
            ("CHAT_LOGIN_PER_ADDR_BURST", "1000000"),
            ("CHAT_LOGIN_FAILURES_PER_MIN", "1000000"),
            ("CHAT_LOGIN_FAILURES_BURST", "1000000"),
            ("CHAT_SIGNUP_PER_ADDR_PER_MIN", "1000000"),
            ("CHAT_SIGNUP_PER_ADDR_BURST", "1000000"),
            // Tests send hundreds of messages a second from one account:
            // flood detection stays off unless a test sets it (`moderation`).
            ("CHAT_FLOOD_MAX_MESSAGES", "0"),
            // The search indexer (a PostgreSQL write per message) runs only
            // where a test searches (`search`, `changes`, `cli`): on this
            // 2-core machine it would slow every load test.
            ("CHAT_SEARCH_INDEXER", "false"),
            // And 1:1 delivery receipts (a receipt per delivered burst): on
            // where a test counts them (`receipts`).
            ("CHAT_DELIVERY_RECEIPTS", "false"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        env.extend(self.env);
        env.insert("CHAT_NATS_URL".into(), nats.url.clone());
        env.insert("CHAT_DATABASE_URL".into(), pg.url.clone());
        // Gateways connect as the gateway user; add_worker switches to the
        // worker's (nats/conf/auth.conf).
        for (k, v) in chat_tests::nats_auth::GATEWAY.env() {
            env.entry(k.into()).or_insert_with(|| v.into());
        }
        let mut s = Stack { nats, pg, gateways: vec![], workers: vec![], env, worker_metrics: self.worker_metrics };
        for _ in 0..self.gateways {
            s.add_gateway().await?;
        }
        for off in self.workers {
            s.add_worker(off)?;
        }
        Ok(s)
    }
}

impl Stack {
    /// Address of gateway `i`.
    pub fn addr(&self, i: usize) -> String {
        match &self.gateways[i] {
            Gateway::InProcess { addr, .. } | Gateway::Process { addr, .. } => addr.clone(),
        }
    }

    /// How to reach gateway `i` over `kind`.
    pub fn transport(&self, i: usize, kind: Kind) -> chat_client::Transport {
        match (&self.gateways[i], kind) {
            (Gateway::InProcess { quic, fingerprint, .. }, Kind::Quic) => chat_client::Transport::Quic {
                addr: quic.clone(),
                trust: chat_client::quic::Trust::Fingerprint(fingerprint.clone()),
            },
            _ => chat_client::Transport::Ws,
        }
    }

    /// A connection to gateway `i` over `kind`.
    pub async fn connect_over(&self, kind: Kind, i: usize, login: &Login) -> Result<Conn> {
        Ok(Conn::connect_with(&self.transport(i, kind), &self.addr(i), &login.token).await?)
    }

    /// HTTP client for gateway `i`.
    pub fn http(&self, i: usize) -> Http {
        Http::new(&self.addr(i))
    }

    /// Starts another in-process gateway (HTTP, WebSocket and QUIC).
    pub async fn add_gateway(&mut self) -> Result<usize> {
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let g = self.spawn_gateway(self.gateways.len(), http).await?;
        self.gateways.push(g);
        Ok(self.gateways.len() - 1)
    }

    /// Stops in-process gateway `i` (unless [`Stack::stop_gateway`] did)
    /// and starts it again on the same HTTP address (a browser reconnects
    /// to the same origin).
    pub async fn restart_gateway(&mut self, i: usize) -> Result<()> {
        let addr = self.addr(i);
        if matches!(&self.gateways[i], Gateway::InProcess { stop: Some(_), .. }) {
            self.stop_gateway(i).await;
        }
        let http = wait_for(&format!("{addr} to be free again"), Duration::from_secs(10), || {
            let addr = addr.clone();
            async move { tokio::net::TcpListener::bind(&addr).await.ok() }
        })
        .await?;
        self.gateways[i] = self.spawn_gateway(i, http).await?;
        Ok(())
    }

    async fn spawn_gateway(&self, n: usize, http: tokio::net::TcpListener) -> Result<Gateway> {
        let mut env = self.env.clone();
        env.insert("CHAT_HTTP_ADDR".into(), "127.0.0.1:0".into());
        env.insert("CHAT_GATEWAY_ID".into(), format!("gw{n}"));
        let data_dir = self.gateway_data_dir(n);
        env.insert("CHAT_DATA_DIR".into(), data_dir.display().to_string());
        let cfg = GatewayConfig::from_source(&env)?;
        // Generates the development certificate the gateway will load.
        let (_, _, fingerprint) = chat_gateway::conn::quic::load_or_generate(None, None, &data_dir)?;
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let (addr, quic) = (http.local_addr()?.to_string(), udp.local_addr()?.to_string());
        let listeners = chat_gateway::Listeners { http, quic: Some(udp) };
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            if let Err(e) = chat_gateway::run(cfg, listeners, async {
                let _ = rx.await;
            })
            .await
            {
                eprintln!("gateway failed: {e}");
            }
        });
        wait_ready(&addr).await?;
        Ok(Gateway::InProcess { addr, quic, fingerprint, stop: Some(tx), task })
    }

    /// Starts a gateway as a child process (to SIGKILL it).
    pub async fn add_gateway_process(&mut self) -> Result<usize> {
        self.spawn_gateway_process(&[("CHAT_QUIC_ADDR", "off".into())]).await
    }

    /// Starts a gateway child process that also serves QUIC, on a free UDP
    /// port, with gateway 0's certificate: the fingerprint of
    /// [`Stack::quic_fingerprint`] then trusts every gateway of the stack.
    pub async fn add_gateway_process_quic(&mut self) -> Result<usize> {
        let tls = self.gateway_data_dir(0).join("tls");
        let port = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
        self.spawn_gateway_process(&[
            ("CHAT_QUIC_ADDR", format!("127.0.0.1:{port}")),
            ("CHAT_TLS_CERT", tls.join("cert.pem").display().to_string()),
            ("CHAT_TLS_KEY", tls.join("key.pem").display().to_string()),
        ])
        .await
    }

    /// The certificate fingerprint of in-process gateway `i`'s QUIC endpoint.
    pub fn quic_fingerprint(&self, i: usize) -> Option<String> {
        match &self.gateways[i] {
            Gateway::InProcess { fingerprint, .. } => Some(fingerprint.clone()),
            Gateway::Process { .. } => None,
        }
    }

    fn gateway_data_dir(&self, n: usize) -> std::path::PathBuf {
        self.pg.data_dir().parent().unwrap_or(self.pg.data_dir()).join(format!("gw{n}"))
    }

    async fn spawn_gateway_process(&mut self, extra: &[(&str, String)]) -> Result<usize> {
        let addr = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_it-gateway"))
            .envs(&self.env)
            .env("CHAT_HTTP_ADDR", &addr)
            .envs(extra.iter().map(|(k, v)| (k, v)))
            .env("CHAT_GATEWAY_ID", format!("gwp{}", self.gateways.len()))
            .stdout(Stdio::null())
            .spawn()
            .context("spawn it-gateway")?;
        self.gateways.push(Gateway::Process { addr: addr.clone(), child });
        wait_ready(&addr).await?;
        Ok(self.gateways.len() - 1)
    }

    /// Starts a worker process with a clock offset (serving its metrics on a
    /// free port with [`StackBuilder::worker_metrics`]).
    pub fn add_worker(&mut self, clock_offset_ms: i64) -> Result<usize> {
        let metrics_addr = self.worker_metrics.then(|| format!("127.0.0.1:{}", free_port()));
        let child = Command::new(env!("CARGO_BIN_EXE_it-worker"))
            .envs(&self.env)
            .envs(metrics_addr.iter().map(|a| ("CHAT_METRICS_ADDR", a)))
            .envs(chat_tests::nats_auth::WORKER.env())
            .env("CHAT_WORKER_CLOCK_OFFSET_MS", clock_offset_ms.to_string())
            .env("CHAT_WORKER_NAME", format!("w{}", self.workers.len()))
            .stdout(match std::env::var("CHAT_TESTS_WORKER_LOG") {
                Ok(p) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(format!("{p}.w{}", self.workers.len()))?,
                ),
                Err(_) => Stdio::null(),
            })
            .spawn()
            .context("spawn it-worker")?;
        self.workers.push(Worker { child, metrics_addr });
        Ok(self.workers.len() - 1)
    }

    /// Where worker `i` serves `GET /metrics`.
    pub fn worker_metrics(&self, i: usize) -> Result<String> {
        self.workers[i].metrics_addr.clone().context("worker metrics are off: build the stack with worker_metrics()")
    }

    /// SIGKILLs worker `i`.
    pub fn kill_worker(&mut self, i: usize) {
        let _ = self.workers[i].child.kill();
        let _ = self.workers[i].child.wait();
    }

    /// SIGTERMs worker `i` (a clean stop) and waits until it has exited.
    pub async fn term_worker(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        let pid = self.workers[i].child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().context("run kill")?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        let child = &mut self.workers[i].child;
        wait_for(&format!("worker {i} (pid {pid}) to exit after SIGTERM"), Duration::from_secs(15), || {
            let exited = child.try_wait().ok().flatten();
            async move { exited }
        })
        .await
    }

    /// Stops gateway `i` (gracefully if in-process, SIGKILL if a process).
    pub async fn stop_gateway(&mut self, i: usize) {
        match &mut self.gateways[i] {
            Gateway::InProcess { stop, task, .. } => {
                if let Some(tx) = stop.take() {
                    let _ = tx.send(());
                }
                let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
            }
            Gateway::Process { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    /// Stops every gateway and worker, restarts NATS and PostgreSQL on their
    /// data, and starts one gateway and the same number of workers again.
    pub async fn restart_all(&mut self) -> Result<()> {
        for i in 0..self.gateways.len() {
            self.stop_gateway(i).await;
        }
        for i in 0..self.workers.len() {
            self.kill_worker(i);
        }
        let n_workers = self.workers.len();
        self.gateways.clear();
        self.workers.clear();
        self.nats.restart()?;
        self.pg.restart()?;
        self.env.insert("CHAT_NATS_URL".into(), self.nats.url.clone());
        self.env.insert("CHAT_DATABASE_URL".into(), self.pg.url.clone());
        self.add_gateway().await?;
        for _ in 0..n_workers {
            self.add_worker(0)?;
        }
        Ok(())
    }

    /// Waits until the history stream holds at least `n` messages.
    pub async fn wait_stored(&self, n: u64) -> Result<()> {
        let js = async_nats::jetstream::new(chat_tests::nats_admin(&self.nats.url).await?);
        wait_for(&format!("{n} messages stored"), Duration::from_secs(60), || {
            let js = js.clone();
            async move {
                let mut st = js.get_stream(chat_nats::subjects::HISTORY_STREAM).await.ok()?;
                (st.info().await.ok()?.state.messages >= n).then_some(())
            }
        })
        .await
    }

    /// Signs a user up and logs a device in.
    pub async fn user(&self, name: &str, device: &str) -> Result<Login> {
        let http = self.http(0);
        match http.signup(name, "password123").await {
            Ok(_) => {}
            Err(chat_client::ClientError::Api { status: 409, .. }) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(http.login(name, "password123", device).await?)
    }

    /// Creates a group owned by `owner`; returns the response body.
    pub async fn create_group(&self, owner: &Login, name: &str, members: &[&str]) -> Result<serde_json::Value> {
        let body = serde_json::json!({"name": name, "members": members});
        let (status, v) =
            self.http(0).request(chat_client::Method::POST, "/v1/groups", Some(&owner.token), Some(body)).await?;
        anyhow::ensure!(status == 201, "create group: {status} {v}");
        Ok(v)
    }

    /// Logs another device of an existing user in.
    pub async fn device(&self, name: &str, device: &str) -> Result<Login> {
        Ok(self.http(0).login(name, "password123", device).await?)
    }

    /// Connects `login`'s device to gateway `i`, syncs it once and
    /// disconnects: its cursor, for a later catch-up of everything since.
    pub async fn sync_once(&self, i: usize, login: &Login) -> Result<String> {
        let mut c = self.connect(i, login).await?;
        let (_, cursor) = c.sync(None).await?;
        c.close().await;
        Ok(cursor)
    }

    /// A WebSocket connection to gateway `i`, synced from `cursor`.
    pub async fn connect(&self, i: usize, login: &Login) -> Result<Conn> {
        Ok(Conn::connect(&self.addr(i), &login.token).await?)
    }

    /// A connection that has synced (from the beginning) and is live.
    pub async fn live(&self, i: usize, login: &Login) -> Result<(Conn, String)> {
        let mut c = self.connect(i, login).await?;
        let (_, cursor) = c.sync(None).await?;
        Ok((c, cursor))
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        for g in &mut self.gateways {
            match g {
                Gateway::InProcess { task, .. } => task.abort(),
                Gateway::Process { child, .. } => {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
        for w in &mut self.workers {
            let _ = w.child.kill();
            let _ = w.child.wait();
        }
    }
}

async fn wait_ready(addr: &str) -> Result<()> {
    let http = Http::new(addr);
    wait_for(&format!("gateway {addr} ready"), Duration::from_secs(60), || {
        let http = http.clone();
        async move {
            match http.request(hyper_method_get(), "/readyz", None, None).await {
                Ok((200, _)) => Some(()),
                _ => None,
            }
        }
    })
    .await
}

fn hyper_method_get() -> chat_client::Method {
    chat_client::Method::GET
}
