//! A real 3-node nats-server JetStream cluster on loopback, started from
//! the shipped `nats/conf/cluster/nN.conf` with free ports and temp stores.
//!
//! Each node keeps its client, route and monitoring ports and its store for
//! its whole life, so a node SIGKILLed with [`NatsCluster::kill`] comes back
//! with [`NatsCluster::restart`] as the same cluster member, on the same
//! data, at the same address the clients already know.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;

use crate::free_port;
use crate::nats::nats_server_bin;
use crate::support::{file_tail, log_section, TempDir, LOG_TAIL_LINES, START_POLL};

/// Nodes in the cluster (the shipped configs are for three).
pub const NODES: usize = 3;
/// How long the cluster may take to start and elect a meta leader.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// One node: its ports, store and process.
#[derive(Debug)]
struct Node {
    /// `n1`, `n2`, `n3` (the `server_name` of its config).
    name: String,
    client: u16,
    cluster: u16,
    monitor: u16,
    store: PathBuf,
    log: PathBuf,
    generation: u32,
    child: Option<Child>,
}

/// A 3-node JetStream cluster named `chat`. Every node is killed and the
/// temp dir removed on `Drop`.
#[derive(Debug)]
pub struct NatsCluster {
    /// Client URLs of all nodes, comma-separated (what `CHAT_NATS_URL`
    /// takes); fixed for the cluster's life.
    pub url: String,
    nodes: Vec<Node>,
    dir: TempDir,
}

impl NatsCluster {
    /// Starts the three nodes and waits (at most 30 s) until every one is
    /// ready and knows the meta leader.
    pub fn start() -> Result<NatsCluster> {
        let dir = TempDir::new_in(&std::env::temp_dir(), "chat-nats-cluster")?;
        let mut nodes = Vec::new();
        for i in 1..=NODES {
            let store = dir.path().join(format!("n{i}"));
            fs::create_dir(&store).with_context(|| format!("create {}", store.display()))?;
            nodes.push(Node {
                name: format!("n{i}"),
                client: free_port(),
                cluster: free_port(),
                monitor: free_port(),
                log: PathBuf::new(),
                store,
                generation: 0,
                child: None,
            });
        }
        let url = nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client)).collect::<Vec<_>>().join(",");
        let mut c = NatsCluster { url, nodes, dir };
        for i in 0..NODES {
            c.spawn(i)?;
        }
        for i in 0..NODES {
            c.wait_joined(i)?;
        }
        Ok(c)
    }

    /// Client URL of node `i` alone.
    pub fn node_url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].client)
    }

    /// The node index of a server name (`n2` → 1).
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == server_name)
    }

    /// Whether node `i` is running.
    pub fn is_up(&self, i: usize) -> bool {
        self.nodes[i].child.is_some()
    }

    /// SIGKILLs node `i` (no clean shutdown, like a crash) and reaps it; its
    /// store is kept. Does nothing if it is down.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.nodes[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts node `i` again (after [`NatsCluster::kill`], or kills it
    /// first) on its store and ports, and waits until it is back in the
    /// cluster and knows the meta leader.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.kill(i);
        self.spawn(i)?;
        self.wait_joined(i)
    }

    /// Kills every node, then starts them all again on their stores.
    pub fn restart_all(&mut self) -> Result<()> {
        for i in 0..NODES {
            self.kill(i);
        }
        for i in 0..NODES {
            self.spawn(i)?;
        }
        for i in 0..NODES {
            self.wait_joined(i)?;
        }
        Ok(())
    }

    /// The index of the JetStream meta leader, as the first live node that
    /// knows one reports it (`/jsz`).
    pub fn meta_leader(&self) -> Option<usize> {
        (0..NODES).filter(|&i| self.is_up(i)).find_map(|i| {
            let jsz = self.jsz(i).ok()?;
            self.index_of(jsz["meta_cluster"]["leader"].as_str()?)
        })
    }

    /// Node `i`'s `/jsz` monitoring document.
    pub fn jsz(&self, i: usize) -> Result<Value> {
        http_get_json(self.nodes[i].monitor, "/jsz")
    }

    /// The JetStream store dir of node 0 (for tools that look a server up
    /// by it).
    pub fn store_dir(&self, i: usize) -> &Path {
        &self.nodes[i].store
    }

    /// The last lines of every node's current log, for assertion messages.
    pub fn log_tails(&self) -> String {
        self.nodes.iter().map(|n| format!("--- {} ---\n{}\n", n.name, file_tail(&n.log, LOG_TAIL_LINES))).collect()
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let routes = self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.cluster)).collect::<Vec<_>>().join(",");
        let conf = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../nats/conf/cluster/n{}.conf", i + 1));
        if !conf.is_file() {
            bail!("cluster config {} not found", conf.display());
        }
        let dir = self.dir.path().to_owned();
        let node = &mut self.nodes[i];
        node.generation += 1;
        node.log = dir.join(format!("{}-{}.log", node.name, node.generation));
        let stderr_path = dir.join(format!("{}-{}.stderr", node.name, node.generation));
        let stderr = fs::File::create(&stderr_path).with_context(|| format!("create {}", stderr_path.display()))?;
        let bin = nats_server_bin();
        // Flags override the file: the shipped config with this test's ports.
        let child = Command::new(&bin)
            .arg("-c")
            .arg(&conf)
            .args(["-p", &node.client.to_string(), "-m", &node.monitor.to_string()])
            .args(["--cluster", &format!("nats://127.0.0.1:{}", node.cluster), "--routes", &routes])
            .arg("-sd")
            .arg(&node.store)
            .arg("-l")
            .arg(&node.log)
            .envs(crate::nats_auth::server_env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {} (set NATS_SERVER_BIN)", bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    /// Waits until node `i` logged "Server is ready" and reports a meta
    /// leader.
    fn wait_joined(&mut self, i: usize) -> Result<()> {
        let started = Instant::now();
        loop {
            let node = &mut self.nodes[i];
            let child = node.child.as_mut().ok_or_else(|| anyhow!("node {} is not running", node.name))?;
            if let Ok(Some(status)) = child.try_wait() {
                node.child = None;
                bail!("nats-server {} exited during startup with {status}{}", node.name, log_section("log", &node.log));
            }
            let ready = fs::read_to_string(&node.log).map(|t| t.contains("Server is ready")).unwrap_or(false);
            if ready {
                if let Ok(jsz) = http_get_json(node.monitor, "/jsz") {
                    if jsz["meta_cluster"]["leader"].as_str().is_some_and(|l| !l.is_empty()) {
                        return Ok(());
                    }
                }
            }
            if started.elapsed() > START_DEADLINE {
                let name = node.name.clone();
                self.kill(i);
                bail!("nats-server {name} did not join the cluster within {START_DEADLINE:?}\n{}", self.log_tails());
            }
            std::thread::sleep(START_POLL.max(Duration::from_millis(20)));
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..NODES {
            self.kill(i);
        }
    }
}

/// `GET http://127.0.0.1:<port><path>` as JSON (HTTP/1.0, so the server
/// sends the whole body and closes).
fn http_get_json(port: u16, path: &str) -> Result<Value> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).ok_or_else(|| anyhow!("no HTTP body from :{port}"))?;
    Ok(serde_json::from_str(body)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_r3_stream_survives_its_leader_being_killed_and_restarted() -> Result<()> {
        let mut c = NatsCluster::start()?;
        assert!(c.meta_leader().is_some());
        let js = async_nats::jetstream::new(crate::nats_admin(&c.url).await?);
        // A cluster busy electing or placing can time a request out: each
        // step is retried until its deadline (creation and the message-id
        // publish are idempotent).
        let stream = crate::wait_for("the R3 stream created", Duration::from_secs(30), || {
            let js = js.clone();
            async move {
                js.get_or_create_stream(async_nats::jetstream::stream::Config {
                    name: "R3".into(),
                    subjects: vec!["r3.>".into()],
                    num_replicas: 3,
                    ..Default::default()
                })
                .await
                .ok()
            }
        })
        .await?;
        crate::wait_for("the first write", Duration::from_secs(20), || {
            let js = js.clone();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", "one");
            async move { js.publish_with_headers("r3.a", headers, "one".into()).await.ok()?.await.ok() }
        })
        .await?;
        let info = crate::wait_for("the stream's info", Duration::from_secs(20), || {
            let mut stream = stream.clone();
            async move { stream.info().await.ok().cloned() }
        })
        .await?;
        let leader = info.cluster.as_ref().and_then(|cl| cl.leader.clone()).context("R3 stream has a leader")?;
        assert_eq!(info.cluster.as_ref().map(|cl| cl.replicas.len()), Some(2), "a leader and two replicas");
        let leader = c.index_of(&leader).context("leader is a node")?;
        c.kill(leader);
        // The two survivors elect a new leader and keep taking writes.
        crate::wait_for("a write accepted without the old leader", Duration::from_secs(20), || {
            let js = js.clone();
            // With a message id: a publish whose ack was lost in the
            // election and is sent again is stored once.
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("Nats-Msg-Id", "two");
            async move { js.publish_with_headers("r3.a", headers, "two".into()).await.ok()?.await.ok() }
        })
        .await?;
        c.restart(leader)?;
        let messages = crate::wait_for("the stream's info after the restart", Duration::from_secs(20), || {
            let mut stream = stream.clone();
            async move { stream.info().await.ok().map(|i| i.state.messages) }
        })
        .await?;
        assert_eq!(messages, 2);
        Ok(())
    }
}
