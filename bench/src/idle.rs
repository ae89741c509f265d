//! `idle`: N authenticated, synced, idle WebSocket or QUIC connections.
//! Reports each gateway's RSS per connection and CPU while idle, the
//! kernel's TCP (WebSocket) or UDP (QUIC) socket memory separately, how
//! long each connection took to open during the ramp (TCP + WebSocket
//! upgrade, or the QUIC handshake and auth, retries included), and, as the
//! baseline, nats-server's RSS per idle core NATS client connection.
//! QUIC clients share a few client endpoints (UDP sockets) per process.
//!
//! A process may hold at most 20,000 open files here, so the clients run
//! in child processes (`chat-bench idle-client`, at most `per_process`
//! connections each) unless `exe` is `None` (in-process, for small runs).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinHandle;

use crate::client::{run_prefix, signup_users, token, Dialer, Transport};
use crate::procfs::{self, PAGE_BYTES};
use crate::report::{Lat, Report};
use crate::{QuicTarget, Target};

/// Parameters.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Connections, spread evenly over the target's gateways.
    pub conns: usize,
    /// Accounts the connections belong to (as devices).
    pub users: usize,
    /// Connections per client process.
    pub per_process: usize,
    /// Application `ping` interval per connection (the gateway closes a
    /// connection silent for 60 s).
    pub ping: Duration,
    /// Pause after the last connection is up, before measuring.
    pub settle: Duration,
    /// Window over which idle CPU is measured.
    pub cpu_window: Duration,
    /// Connections being set up at once, per process (`--concurrency`; as
    /// many as the connections opens the whole ramp at once, which is what
    /// overflows a short listen backlog).
    pub concurrency: usize,
    /// Also measure nats-server with as many raw NATS connections.
    pub baselines: bool,
    /// The `chat-bench` binary to run client processes with; `None` keeps
    /// every connection in this process.
    pub exe: Option<PathBuf>,
    /// The session transport.
    pub transport: Transport,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg {
            conns: 15_000,
            users: 100,
            per_process: 5_000,
            ping: Duration::from_secs(30),
            settle: Duration::from_secs(3),
            cpu_window: Duration::from_secs(10),
            concurrency: 64,
            baselines: true,
            exe: std::env::current_exe().ok(),
            transport: Transport::Ws,
        }
    }
}

/// Connections held open by this process.
pub struct Held {
    tasks: Vec<JoinHandle<()>>,
    /// Connections that synced.
    pub ok: usize,
    /// Connections that failed to connect or sync.
    pub failed: usize,
    /// The first failure.
    pub first_error: Option<String>,
    /// How long each successful connection took to open, in µs, from the
    /// first attempt to the handshake's end (retries included).
    pub connect_us: Vec<u64>,
    /// Attempts beyond the first, summed over the connections.
    pub retries: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// QUIC connections per shared client endpoint (UDP socket).
const CONNS_PER_ENDPOINT: usize = 1000;

/// Opens and syncs a connection per token to gateway `gw` of `dialer`,
/// then keeps them idle (a `ping` every `ping`); returns once every one is
/// up or has failed.
pub async fn hold(dialer: &Dialer, gw: usize, tokens: Vec<String>, ping: Duration, concurrency: usize) -> Held {
    let sem = std::sync::Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::with_capacity(tokens.len());
    let mut ready = Vec::with_capacity(tokens.len());
    for (i, tok) in tokens.into_iter().enumerate() {
        let (done, rx) = oneshot::channel::<Result<(u64, u32), String>>();
        ready.push(rx);
        let (dialer, sem) = (dialer.clone(), sem.clone());
        // Spread the pings over the interval.
        let offset = ping.mul_f64((i % 1000) as f64 / 1000.0);
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await;
            let up = async {
                let start = std::time::Instant::now();
                let (mut tx, mut rx, retries) = dialer.connect_retry(gw, &tok, 8).await?;
                let connect_us = start.elapsed().as_micros() as u64;
                tx.sync(None).await?;
                rx.until_synced(Duration::from_secs(120)).await?;
                Ok::<_, anyhow::Error>((tx, rx, connect_us, retries))
            }
            .await;
            drop(permit);
            let (mut tx, mut rx) = match up {
                Ok((tx, rx, us, retries)) => {
                    let _ = done.send(Ok((us, retries)));
                    (tx, rx)
                }
                Err(e) => {
                    let _ = done.send(Err(format!("{e:#}")));
                    return;
                }
            };
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + ping + offset, ping);
            loop {
                tokio::select! {
                    f = rx.next() => if !matches!(f, Ok(Some(_))) { break },
                    _ = tick.tick() => if tx.send(&json!({"type": "ping"})).await.is_err() { break },
                }
            }
        }));
    }
    let mut held = Held { tasks, ok: 0, failed: 0, first_error: None, connect_us: vec![], retries: 0 };
    for r in ready {
        match r.await {
            Ok(Ok((us, retries))) => {
                held.ok += 1;
                held.connect_us.push(us);
                held.retries += u64::from(retries);
            }
            Ok(Err(e)) => {
                held.failed += 1;
                held.first_error.get_or_insert(e);
            }
            Err(_) => held.failed += 1,
        }
    }
    held
}

/// Opens `n` raw NATS client connections to `url`.
pub async fn hold_nats(url: &str, n: usize) -> (Vec<async_nats::Client>, usize) {
    let mut clients = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        match chat_tests::nats_admin(url).await {
            Ok(c) => clients.push(c),
            Err(_) => failed += 1,
        }
    }
    (clients, failed)
}

/// What `chat-bench idle-client` is told to hold.
#[derive(Debug, Default)]
pub struct ChildArgs<'a> {
    /// WebSocket address of the gateway (`--addr`).
    pub addr: Option<&'a str>,
    /// Its QUIC address (`--quic`), to connect over QUIC instead.
    pub quic: Option<&'a str>,
    /// Its certificate fingerprint (`--fingerprint`).
    pub fingerprint: Option<&'a str>,
    /// A file of tokens, one per connection (`--tokens`).
    pub tokens_file: Option<&'a str>,
    /// A nats-server URL (`--nats`), to hold raw NATS connections instead.
    pub nats: Option<&'a str>,
    /// How many raw NATS connections (`--count`).
    pub count: usize,
    /// Application ping interval (`--ping-secs`).
    pub ping: Duration,
    /// Connections set up at once (`--concurrency`).
    pub concurrency: usize,
}

/// Entry of `chat-bench idle-client`: holds connections, prints
/// `ready <ok> <failed> <retries> <connect µs,...>` on stdout, and exits
/// when stdin closes.
/// `addr` (and `quic` + `fingerprint` for QUIC) + `tokens_file` hold
/// session connections; `nats` + `count` hold raw NATS connections instead.
pub async fn child_main(a: ChildArgs<'_>) -> Result<()> {
    let (_held, _clients, ok, failed, timing) = match (a.addr, a.tokens_file, a.nats) {
        (Some(addr), Some(file), _) => {
            let tokens: Vec<String> = std::fs::read_to_string(file)?.lines().map(str::to_owned).collect();
            let (transport, quic) = match (a.quic, a.fingerprint) {
                (Some(q), Some(f)) => {
                    (Transport::Quic, vec![QuicTarget { addr: q.to_owned(), fingerprint: f.to_owned() }])
                }
                _ => (Transport::Ws, vec![]),
            };
            let t = Target {
                gateways: vec![addr.to_owned()],
                quic,
                nats_url: String::new(),
                gateway_pids: vec![],
                nats_pid: None,
                token_secret: None,
                other_pids: vec![],
            };
            let dialer = Dialer::new(&t, transport, tokens.len().div_ceil(CONNS_PER_ENDPOINT))?;
            let held = hold(&dialer, 0, tokens, a.ping, a.concurrency).await;
            if let Some(e) = &held.first_error {
                eprintln!("idle-client: {} connections failed; first: {e}", held.failed);
            }
            let us: Vec<String> = held.connect_us.iter().map(u64::to_string).collect();
            let timing = format!(" {} {}", held.retries, us.join(","));
            let (ok, failed) = (held.ok, held.failed);
            (Some(held), vec![], ok, failed, timing)
        }
        (_, _, Some(url)) => {
            let (clients, failed) = hold_nats(url, a.count).await;
            let ok = clients.len();
            (None, clients, ok, failed, String::new())
        }
        _ => bail!("idle-client needs --addr and --tokens (and --quic, --fingerprint), or --nats and --count"),
    };
    println!("ready {ok} {failed}{timing}");
    // Hold until the parent closes our stdin (or dies).
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await?;
    Ok(())
}

/// Client processes started by [`spawn_clients`]; killed on drop.
struct Children(Vec<Child>);

/// What the client processes reported once ready.
#[derive(Default)]
struct Ready {
    ok: usize,
    failed: usize,
    retries: u64,
    connect: Lat,
}

/// Starts a child per chunk and waits until each reports `ready`.
async fn spawn_clients(exe: &Path, jobs: Vec<Vec<String>>) -> Result<(Children, Ready)> {
    let mut kids = Children(vec![]);
    let mut lines = vec![];
    for args in jobs {
        let mut child = Command::new(exe)
            .arg("idle-client")
            .args(&args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {} idle-client", exe.display()))?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        lines.push(BufReader::new(out).lines());
        kids.0.push(child);
    }
    let mut ready = Ready::default();
    for mut l in lines {
        let line = tokio::time::timeout(Duration::from_secs(900), l.next_line())
            .await
            .map_err(|_| anyhow!("an idle client did not get ready within 15 min"))??
            .ok_or_else(|| anyhow!("an idle client exited before it was ready"))?;
        let mut w = line.split_whitespace().skip(1);
        let mut num = || w.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ready.ok += num() as usize;
        ready.failed += num() as usize;
        ready.retries += num();
        for us in line.split_whitespace().nth(4).unwrap_or("").split(',').filter_map(|v| v.parse().ok()) {
            ready.connect.record_us(us);
        }
    }
    Ok((kids, ready))
}

/// Runs the scenario.
pub async fn run(t: &Target, cfg: &Cfg) -> Result<Report> {
    let g = t.gateways.len();
    let quic = cfg.transport == Transport::Quic;
    let mut r = Report::new(
        &cfg.transport.scenario("idle"),
        json!({"conns": cfg.conns, "gateways": g, "users": cfg.users, "per_process": cfg.per_process,
               "ping_s": cfg.ping.as_secs_f64(), "cpu_window_s": cfg.cpu_window.as_secs_f64(),
               "transport": cfg.transport.name()}),
    );
    // Checked before any account is made.
    let dialer = Dialer::new(t, cfg.transport, cfg.conns.div_ceil(g).div_ceil(CONNS_PER_ENDPOINT))?;
    let users = signup_users(t, &run_prefix("idle"), cfg.users.clamp(1, cfg.conns.max(1)), 4).await?;
    // tokens[gw] = the connections of gateway gw.
    let mut tokens: Vec<Vec<String>> = vec![vec![]; g];
    for i in 0..cfg.conns {
        tokens[i % g].push(token(t, &users[i % users.len()], &format!("i{i}")).await?);
    }
    let pids = &t.gateway_pids;
    let rss0: Vec<Option<u64>> = pids.iter().map(|p| procfs::rss_kib(*p)).collect();
    let sock0 = procfs::sockstat().unwrap_or_default();
    let udp0 = procfs::sockstat_udp().unwrap_or_default();
    let nats_rss0 = t.nats_pid.and_then(procfs::rss_kib);
    let t0 = std::time::Instant::now();
    let mut _held = vec![];
    let mut _kids = None;
    let mut connect = Lat::default();
    let mut retries = 0;
    let (ok, failed) = match &cfg.exe {
        None => {
            let (mut ok, mut failed) = (0, 0);
            for (gw, toks) in tokens.into_iter().enumerate() {
                let h = hold(&dialer, gw, toks, cfg.ping, cfg.concurrency).await;
                (ok, failed) = (ok + h.ok, failed + h.failed);
                h.connect_us.iter().for_each(|us| connect.record_us(*us));
                retries += h.retries;
                if let Some(e) = &h.first_error {
                    r.note(format!("first connection failure: {e}"));
                }
                _held.push(h);
            }
            (ok, failed)
        }
        Some(exe) => {
            let (mut jobs, mut files) = (vec![], vec![]);
            for (gw, toks) in tokens.iter().enumerate() {
                for (k, chunk) in toks.chunks(cfg.per_process.max(1)).enumerate() {
                    let file = std::env::temp_dir().join(format!("chat-bench-idle-{}-{gw}-{k}", std::process::id()));
                    std::fs::write(&file, chunk.join("\n"))?;
                    files.push(file.clone());
                    let mut job = vec![
                        "--addr".into(),
                        t.gateway(gw).to_owned(),
                        "--tokens".into(),
                        file.display().to_string(),
                        "--ping-secs".into(),
                        cfg.ping.as_secs_f64().to_string(),
                        "--concurrency".into(),
                        cfg.concurrency.to_string(),
                    ];
                    if quic {
                        let q = &t.quic[gw % t.quic.len()];
                        job.extend(["--quic".into(), q.addr.clone(), "--fingerprint".into(), q.fingerprint.clone()]);
                    }
                    jobs.push(job);
                }
            }
            r.metric("client_processes", jobs.len() as f64);
            let spawned = spawn_clients(exe, jobs).await;
            for f in files {
                let _ = std::fs::remove_file(f);
            }
            let (kids, ready) = spawned?;
            _kids = Some(kids);
            connect = ready.connect;
            retries += ready.retries;
            (ready.ok, ready.failed)
        }
    };
    r.metric("connect_s", t0.elapsed().as_secs_f64());
    r.metric("connect_retries", retries as f64);
    let what = if quic { "QUIC handshake + auth" } else { "TCP + WebSocket upgrade" };
    r.latencies.push(connect.row(&format!("connect ({what}, retries included)"), None));
    r.metric("connected", ok as f64);
    r.metric("failed", failed as f64);
    if let Some(h) = crate::client::consumer_limit_hint(failed, ok + failed) {
        r.note(h);
    }
    tokio::time::sleep(cfg.settle).await;
    let sock1 = procfs::sockstat().unwrap_or_default();
    let udp1 = procfs::sockstat_udp().unwrap_or_default();
    let mut watched: Vec<u32> = pids.clone();
    watched.extend(t.nats_pid);
    let cpu = procfs::cpu_over(&watched, cfg.cpu_window).await;
    let per_gw = ok as f64 / g as f64;
    let mut total_delta = 0.0;
    for (i, pid) in pids.iter().enumerate() {
        let (Some(before), Some(after)) = (rss0[i], procfs::rss_kib(*pid)) else { continue };
        let delta = after as f64 - before as f64;
        total_delta += delta;
        r.metric(&format!("gw{i}_rss_before_kib"), before as f64);
        r.metric(&format!("gw{i}_rss_after_kib"), after as f64);
        r.metric(&format!("gw{i}_rss_per_conn_kib"), delta / per_gw.max(1.0));
        r.metric(&format!("gw{i}_cpu_idle_pct"), cpu[i] * 100.0);
        if let Some(fds) = procfs::open_fds(*pid) {
            r.metric(&format!("gw{i}_open_fds"), fds as f64);
        }
    }
    let per_conn_kib = total_delta / (ok.max(1) as f64);
    if !pids.is_empty() {
        r.metric("rss_per_conn_kib", per_conn_kib);
        // Issue 14's targets: 10 KiB per WebSocket, 24 KiB per QUIC connection.
        let goal = if quic { 24.0 } else { 10.0 };
        let target = if per_conn_kib <= goal { "met" } else { "missed" };
        r.note(format!("target ≤ {goal} KiB gateway RSS per idle connection: {target} ({per_conn_kib:.2} KiB)"));
    }
    if let Some(c) = t.nats_pid.map(|_| cpu[cpu.len() - 1]) {
        r.metric("nats_cpu_idle_pct", c * 100.0);
    }
    if let (Some(before), Some(after)) = (nats_rss0, t.nats_pid.and_then(procfs::rss_kib)) {
        // Each synced device holds an ordered consumer on the inbox stream.
        r.metric("nats_rss_per_conn_kib", (after as f64 - before as f64) / ok.max(1) as f64);
    }
    let kmem = (sock1.mem_pages as f64 - sock0.mem_pages as f64) * PAGE_BYTES as f64;
    r.metric("kernel_tcp_mem_delta_kib", kmem / 1024.0);
    r.metric("kernel_tcp_mem_per_conn_bytes", kmem / ok.max(1) as f64);
    r.metric("kernel_tcp_inuse_delta", sock1.inuse as f64 - sock0.inuse as f64);
    if quic {
        let umem = (udp1.mem_pages as f64 - udp0.mem_pages as f64) * PAGE_BYTES as f64;
        r.metric("kernel_udp_mem_delta_kib", umem / 1024.0);
        r.metric("kernel_udp_inuse_delta", udp1.inuse as f64 - udp0.inuse as f64);
        r.note(format!(
            "QUIC: the gateway holds one UDP socket for all connections; the clients share {} endpoint(s) \
             (UDP sockets) per process; client and gateway send QUIC keep-alives (5 s / 10 s)",
            cfg.conns.div_ceil(g).min(cfg.per_process.max(1)).div_ceil(CONNS_PER_ENDPOINT)
        ));
    } else {
        r.note("kernel TCP memory counts both ends of each loopback connection (client and gateway)");
    }
    drop(_held);
    drop(_kids);

    if cfg.baselines {
        if let (Some(npid), Some(exe)) = (t.nats_pid, &cfg.exe) {
            tokio::time::sleep(Duration::from_secs(2)).await;
            let before = procfs::rss_kib(npid).unwrap_or(0);
            let mut jobs = vec![];
            let mut left = ok;
            while left > 0 {
                let n = left.min(cfg.per_process.max(1));
                left -= n;
                jobs.push(vec!["--nats".into(), t.nats_url.clone(), "--count".into(), n.to_string()]);
            }
            let (kids, nok) = match spawn_clients(exe, jobs).await {
                Ok((kids, ready)) => (kids, ready.ok),
                Err(e) => {
                    r.note(format!("baseline failed: {e:#}"));
                    return Ok(r);
                }
            };
            tokio::time::sleep(cfg.settle).await;
            let after = procfs::rss_kib(npid).unwrap_or(0);
            let per = (after as f64 - before as f64) / nok.max(1) as f64;
            r.metric("baseline_nats_conns", nok as f64);
            r.metric("baseline_nats_rss_per_conn_kib", per);
            drop(kids);
            if !pids.is_empty() {
                let what = if quic { "QUIC connection" } else { "WebSocket" };
                r.ratio(&format!("gateway KiB per {what} / nats-server KiB per NATS connection"), per_conn_kib, per);
            }
        } else {
            r.note("baseline skipped: needs the nats-server pid and client processes");
        }
    }
    Ok(r)
}
