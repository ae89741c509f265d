//! The stack on a 3-node NATS cluster with every stream and bucket at R3,
//! under load from 50 senders over 3 gateways at ~350 msgs/s with every ack
//! recorded, through the SIGKILL of the JetStream meta leader, of the inbox
//! stream's leader, and of a worker. Afterwards every acked message is on
//! every device exactly once, in conversation order, and catch-up from the
//! cursor each device held at the kill is gap-free.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use chat_client::{ClientError, Conn, Login};
use chat_tests::wait_for;
use serde_json::json;
use tokio::task::JoinHandle;

use crate::stack::{stack, Stack};

/// Senders, each also a recipient (user i sends to user i+1).
const USERS: usize = 50;
/// Gateways the users are spread over.
const GATEWAYS: usize = 3;
/// Each sender's rate: 50 × 7 = 350 msgs/s offered.
const SEND_EVERY: Duration = Duration::from_micros(142_857);
/// Acks between the phases of a test (start, after the kill, after the
/// restart): about 2 s of load each.
const PHASE_ACKS: usize = 600;
/// Error codes a client answers by sending again with the same cid.
const RETRYABLE: [&str; 3] = ["timeout", "unavailable", "rate_limited"];

/// One acked send.
struct Acked {
    id: u64,
    cid: String,
    at: Instant,
}

/// A user: a sending device and a watching (synced, live) device.
struct User {
    login_send: Login,
    login_check: Login,
    sender: JoinHandle<Result<Vec<Acked>>>,
    /// Messages the watching device received live: (id, conv, cursor).
    seen: Arc<Mutex<Vec<(u64, String, String)>>>,
    watcher: JoinHandle<Result<()>>,
}

/// The running load.
struct Load {
    users: Vec<User>,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
    reconnects: Arc<AtomicUsize>,
    started: Instant,
}

/// Users made straight in PostgreSQL (one password hash for all) with
/// tokens signed by the stack's secret: three devices each.
async fn users(s: &Stack) -> Result<Vec<[Login; 3]>> {
    let db = chat_gateway::store::Db::connect(&s.pg.url, 4)?;
    let hash = chat_gateway::auth::hash_password("password123");
    let secret = s.env["CHAT_TOKEN_SECRET"].as_bytes();
    let exp = chat_gateway::auth::now_secs() + 3600;
    let mut out = Vec::new();
    for i in 0..USERS {
        let user = db.create_user(&format!("cl{i:02}"), &hash).await?.context("new user")?;
        let login = |device: &str, gen: u64| Login {
            token: chat_gateway::auth::issue(
                secret,
                &chat_gateway::auth::Claims { user, device: device.into(), exp, gen },
            ),
            user_id: user.to_string(),
            device_id: device.into(),
            edges: vec![],
        };
        let mut devices = Vec::new();
        for d in ["send", "watch", "check"] {
            let gen = db.touch_device(user, d).await?;
            devices.push(login(d, gen));
        }
        out.push(devices.try_into().expect("three devices"));
    }
    Ok(out)
}

/// Starts a watching device and a paced sender for every user.
async fn start_load(s: &Stack) -> Result<Load> {
    let (stop, acks, sent) = (Arc::new(AtomicBool::new(false)), Arc::new(AtomicUsize::new(0)), Arc::default());
    let reconnects: Arc<AtomicUsize> = Arc::default();
    let logins = users(s).await?;
    let mut users = Vec::new();
    for (i, [send, watch, check]) in logins.iter().cloned().enumerate() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut w = s.connect((i + 1) % GATEWAYS, &watch).await?;
        // The previous user's sender is already running: what it stored for
        // this user before this sync comes in the sync itself.
        let (synced, _) = w.sync(None).await?;
        for m in &synced {
            seen.lock().unwrap().push((
                m["id"].as_str().context("id")?.parse()?,
                m["conv"].as_str().context("conv")?.to_owned(),
                m["cursor"].as_str().context("cursor")?.to_owned(),
            ));
        }
        let gw = (s.addr((i + 1) % GATEWAYS), watch.token.clone());
        let watcher = tokio::spawn(watch_device(w, gw, seen.clone(), reconnects.clone()));
        let c = s.connect(i % GATEWAYS, &send).await?;
        let to = logins[(i + 1) % USERS][0].user_id.clone();
        let sender = tokio::spawn(send_paced(c, i, to, stop.clone(), acks.clone(), Arc::clone(&sent)));
        users.push(User { login_send: send, login_check: check, sender, seen, watcher });
    }
    Ok(Load { users, stop, acks, sent, reconnects, started: Instant::now() })
}

/// Records every `msg` the device receives (until aborted). A closed
/// connection (a gateway closes a session whose inbox read failed, 1011)
/// is what a client answers by reconnecting and syncing from its cursor:
/// so does this device, counting it in `reconnects`.
async fn watch_device(
    mut c: Conn,
    (s_addr, token): (String, String),
    seen: Arc<Mutex<Vec<(u64, String, String)>>>,
    reconnects: Arc<AtomicUsize>,
) -> Result<()> {
    let record = |m: &serde_json::Value| -> Result<()> {
        seen.lock().unwrap().push((
            m["id"].as_str().context("id")?.parse()?,
            m["conv"].as_str().context("conv")?.to_owned(),
            m["cursor"].as_str().context("cursor")?.to_owned(),
        ));
        Ok(())
    };
    c.timeout = Duration::from_millis(500);
    loop {
        match c.next_msg().await {
            Ok(m) => record(&m)?,
            Err(ClientError::Timeout(_)) => {}
            Err(ClientError::Closed { code, reason }) => {
                reconnects.fetch_add(1, Ordering::Relaxed);
                eprintln!("a watching device was closed ({code} {reason}); resyncing from its cursor");
                let cursor = seen.lock().unwrap().last().map(|m| m.2.clone());
                let (conn, msgs) = wait_for("the watching device to resync", Duration::from_secs(60), || {
                    let (addr, token, cursor) = (s_addr.clone(), token.clone(), cursor.clone());
                    async move {
                        let mut c = Conn::connect(&addr, &token).await.ok()?;
                        c.timeout = Duration::from_secs(10);
                        let (msgs, _) = c.sync(cursor.as_deref()).await.ok()?;
                        Some((c, msgs))
                    }
                })
                .await?;
                c = conn;
                for m in &msgs {
                    record(m)?;
                }
                c.timeout = Duration::from_millis(500);
            }
            Err(e) => bail!("watching device failed: {e}"),
        }
    }
}

/// Sends one message every [`SEND_EVERY`] to `to` until told to stop, then
/// waits for every outstanding ack; a retryable refusal is sent again with
/// the same cid at the next tick (what a client does).
async fn send_paced(
    mut c: Conn,
    me: usize,
    to: String,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicUsize>,
    sent: Arc<AtomicUsize>,
) -> Result<Vec<Acked>> {
    c.timeout = Duration::from_millis(500);
    let frame = |cid: &str| json!({"type": "send", "cid": cid, "to": {"user": to}, "body": format!("body {cid}")});
    let mut tick = tokio::time::interval(SEND_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let (mut next, mut pending, mut retry) = (0usize, HashSet::new(), Vec::new());
    let mut acked = Vec::new();
    let mut last_progress = Instant::now();
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        // A refused send waiting for its retry is not done: it may have been
        // stored (a timeout's outcome is unknown), and only its retry's ack
        // says with which id.
        if stopping && pending.is_empty() && retry.is_empty() {
            return Ok(acked);
        }
        // Refusals keep coming while nothing is stored: a cluster that never
        // recovers fails the test instead of holding it forever.
        if last_progress.elapsed() > Duration::from_secs(90) {
            bail!("sender {me}: no ack for 90 s ({} pending, {} to retry)", pending.len(), retry.len());
        }
        tokio::select! {
            _ = tick.tick() => {
                let mut due: Vec<String> = std::mem::take(&mut retry);
                if !stopping {
                    due.push(format!("u{me}-{next}"));
                    next += 1;
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                for cid in due {
                    c.send_json(&frame(&cid)).await?;
                    pending.insert(cid);
                }
            }
            v = c.next() => match v {
                Ok(v) if v["type"] == "ack" => {
                    let cid = v["cid"].as_str().unwrap_or_default();
                    if pending.remove(cid) {
                        acks.fetch_add(1, Ordering::Relaxed);
                        let id = v["id"].as_str().context("id")?.parse()?;
                        acked.push(Acked { id, cid: cid.to_owned(), at: Instant::now() });
                        last_progress = Instant::now();
                    }
                }
                Ok(v) if v["type"] == "error" && RETRYABLE.contains(&v["code"].as_str().unwrap_or_default()) => {
                    let cid = v["cid"].as_str().context("error without cid")?.to_owned();
                    pending.remove(&cid);
                    retry.push(cid);
                }
                Ok(v) if v["type"] == "error" => bail!("sender {me}: send refused: {v}"),
                Ok(_) => {}
                Err(ClientError::Timeout(_)) => {}
                Err(e) => bail!("sender {me}: connection lost: {e}"),
            }
        }
    }
}

impl Load {
    /// Waits until `n` sends in all have been acked.
    async fn wait_acks(&self, n: usize, what: &str) -> Result<()> {
        let acks = self.acks.clone();
        wait_for(&format!("{n} acks ({what})"), Duration::from_secs(90), || {
            let acks = acks.clone();
            async move { (acks.load(Ordering::Relaxed) >= n).then_some(()) }
        })
        .await
    }

    fn acked(&self) -> usize {
        self.acks.load(Ordering::Relaxed)
    }

    /// The cursor each watching device held last (its newest message).
    fn cursors(&self) -> Vec<Option<String>> {
        self.users.iter().map(|u| u.seen.lock().unwrap().last().map(|(_, _, c)| c.clone())).collect()
    }

    /// Stops sending, collects every ack, and checks every device.
    async fn finish(mut self, s: &Stack, cursors: Vec<Option<String>>, kill: Instant) -> Result<Duration> {
        let offered = self.sent.load(Ordering::Relaxed) as f64 / self.started.elapsed().as_secs_f64();
        self.stop.store(true, Ordering::Relaxed);
        let mut acked: Vec<Vec<Acked>> = Vec::new();
        for u in self.users.iter_mut() {
            acked.push((&mut u.sender).await??);
        }
        let total: usize = acked.iter().map(Vec::len).sum();
        let reconnects = self.reconnects.load(Ordering::Relaxed);
        eprintln!("{total} sends acked, offered {offered:.0} msgs/s; {reconnects} watching devices resynced");
        assert!(offered >= 300.0, "the load offered only {offered:.0} msgs/s");
        let stall = longest_ack_gap(&acked, kill);

        // Per user: the ids of every message sent to it or by it.
        let mut expected: Vec<HashSet<u64>> = vec![HashSet::new(); USERS];
        for (i, sent) in acked.iter().enumerate() {
            for a in sent {
                expected[i].insert(a.id);
                expected[(i + 1) % USERS].insert(a.id);
            }
        }
        let mut orders: HashMap<String, Vec<u64>> = HashMap::new();
        for (i, u) in self.users.into_iter().enumerate() {
            let seen = u.seen.clone();
            let want = expected[i].len();
            let waited = wait_for(
                &format!("user {i}'s watching device to receive {want} messages"),
                Duration::from_secs(60),
                || {
                    let n = seen.lock().unwrap().len();
                    async move { (n >= want).then_some(()) }
                },
            )
            .await;
            if let Err(e) = waited {
                let got: HashSet<u64> = seen.lock().unwrap().iter().map(|m| m.0).collect();
                let missing: HashSet<u64> = expected[i].difference(&got).copied().collect();
                let mut c = s.connect(i % GATEWAYS, &u.login_check).await?;
                let (all, _) = c.sync(None).await?;
                let stored: Vec<u64> = all.iter().map(|m| m["id"].as_str().unwrap().parse().unwrap()).collect();
                let in_inbox = stored.iter().filter(|id| missing.contains(id)).count();
                // Where the missing copies sit in the inbox: after the last
                // one seen (a stall) or between seen ones (a skip).
                let missing_cursors: Vec<&str> = all
                    .iter()
                    .filter(|m| missing.contains(&m["id"].as_str().unwrap().parse().unwrap()))
                    .map(|m| m["cursor"].as_str().unwrap_or_default())
                    .collect();
                let seen_order: Vec<u64> = seen.lock().unwrap().iter().map(|m| m.2.parse().unwrap()).collect();
                let sorted = seen_order.windows(2).all(|w| w[0] < w[1]);
                let watcher = match u.watcher.is_finished() {
                    true => format!("{:?}", u.watcher.await?),
                    false => "running".to_owned(),
                };
                bail!(
                    "{e}: user {i} (id {}, watching on gateway {}): {} of {want} seen, {} missing of which {in_inbox} in the inbox ({} messages there); seen cursors increasing: {sorted}; last seen cursor {:?}; missing at cursors {missing_cursors:?}; watcher {watcher}\n{}",
                    u.login_check.user_id,
                    (i + 1) % GATEWAYS,
                    got.len(),
                    missing.len(),
                    stored.len(),
                    seen_order.last(),
                    s.nats.cluster.as_ref().map(|c| c.log_tails()).unwrap_or_default()
                );
            }
            // Stopped once it has everything; an error it ended with fails.
            if u.watcher.is_finished() {
                u.watcher.await??;
            } else {
                u.watcher.abort();
            }
            let live: Vec<(u64, String, String)> = seen.lock().unwrap().clone();
            let ids: Vec<u64> = live.iter().map(|m| m.0).collect();
            assert_eq!(ids.iter().copied().collect::<HashSet<_>>().len(), ids.len(), "user {i}: a message twice live");
            let live_ids: HashSet<u64> = ids.iter().copied().collect();
            if live_ids != expected[i] {
                // Which sends the unexpected copies belong to (their bodies
                // name the cid) and what those sends were acked with.
                let mut c = s.connect(i % GATEWAYS, &u.login_check).await?;
                let (all, _) = c.sync(None).await?;
                let extra: Vec<String> = all
                    .iter()
                    .filter(|m| !expected[i].contains(&m["id"].as_str().unwrap_or_default().parse().unwrap_or(0)))
                    .map(|m| {
                        let cid = m["body"].as_str().unwrap_or_default().trim_start_matches("body ");
                        let acked: Vec<u64> = acked.iter().flatten().filter(|a| a.cid == cid).map(|a| a.id).collect();
                        format!("{} (cursor {}, cid {cid}, acked as {acked:?})", m["id"], m["cursor"])
                    })
                    .collect();
                let unseen: Vec<&u64> = expected[i].difference(&live_ids).collect();
                bail!(
                    "user {i}: live messages != acked: not acked but stored: {extra:?}; acked but not live: {unseen:?}"
                );
            }
            // A device reading the whole inbox sees the same, in the same order.
            let mut c = s.connect(i % GATEWAYS, &u.login_check).await?;
            c.timeout = Duration::from_secs(30);
            let all: Vec<u64> = read_from(&mut c, None, ids.len()).await?.into_iter().map(|m| m.0).collect();
            assert_eq!(all, ids, "user {i}: catch-up from the start differs from live delivery");
            // Catch-up from the cursor held at the kill: exactly what came after.
            let from = match &cursors[i] {
                Some(cur) => live.iter().position(|m| &m.2 == cur).context("cursor among seen")? + 1,
                None => 0,
            };
            let mut c = s.connect((i + 2) % GATEWAYS, &u.login_check).await?;
            c.timeout = Duration::from_secs(30);
            let rest = read_from(&mut c, cursors[i].as_deref(), ids.len() - from).await?;
            let want: Vec<(u64, String)> = live[from..].iter().map(|m| (m.0, m.2.clone())).collect();
            if rest != want {
                let first = rest.iter().zip(&want).position(|(a, b)| a != b);
                bail!(
                    "user {i}: catch-up from the kill-time cursor {:?} has a gap or a duplicate: {} messages, expected {} (first difference at {first:?}); got {:?}, expected {:?}",
                    cursors[i],
                    rest.len(),
                    want.len(),
                    &rest[..rest.len().min(20)],
                    &want[..want.len().min(20)],
                );
            }
            // Conversation order: ids increase, and both members see one order.
            let mut per_conv: HashMap<&str, Vec<u64>> = HashMap::new();
            for (id, conv, _) in &live {
                per_conv.entry(conv).or_default().push(*id);
            }
            for (conv, ids) in per_conv {
                assert!(ids.windows(2).all(|w| w[0] < w[1]), "user {i}: {conv} out of order");
                match orders.get(conv) {
                    Some(other) => assert_eq!(other, &ids, "the two members of {conv} see different orders"),
                    None => {
                        orders.insert(conv.to_owned(), ids);
                    }
                }
            }
            let _ = u.login_send;
        }
        assert_eq!(orders.len(), USERS, "one conversation per sender");
        Ok(stall)
    }
}

/// Syncs from `cursor` and reads on until `n` messages came (or 2 s pass
/// without one): their ids. Catch-up ends at the newest copy the replica
/// that answered knew of, which on R3 may be a follower a little behind;
/// the rest follows live, so a device's view is catch-up plus live.
async fn read_from(c: &mut Conn, cursor: Option<&str>, n: usize) -> Result<Vec<(u64, String)>> {
    let id = |m: &serde_json::Value| -> Result<(u64, String)> {
        Ok((m["id"].as_str().context("id")?.parse()?, m["cursor"].as_str().context("cursor")?.to_owned()))
    };
    let (msgs, _) = c.sync(cursor).await?;
    let mut ids = msgs.iter().map(id).collect::<Result<Vec<_>>>()?;
    c.timeout = Duration::from_secs(2);
    while ids.len() < n {
        match c.next_msg().await {
            Ok(m) => ids.push(id(&m)?),
            Err(ClientError::Timeout(_)) => break,
            Err(e) => return Err(e.into()),
        }
    }
    Ok(ids)
}

/// The longest time without any ack, from the kill on.
fn longest_ack_gap(acked: &[Vec<Acked>], kill: Instant) -> Duration {
    let mut times: Vec<Instant> = acked.iter().flatten().map(|a| a.at).filter(|t| *t >= kill).collect();
    times.sort();
    times.insert(0, kill);
    times.windows(2).map(|w| w[1] - w[0]).max().unwrap_or_default()
}

/// The cluster stack: 3 gateways, 2 workers, R3.
async fn cluster_stack() -> Result<Stack> {
    stack().cluster().gateways(GATEWAYS).workers(2).env("CHAT_SEND_TIMEOUT_MS", "3000").start().await
}

/// Every gateway answers `GET /readyz` with 200 (within `timeout`).
async fn all_ready(s: &Stack, timeout: Duration) -> Result<()> {
    for i in 0..GATEWAYS {
        let http = s.http(i);
        wait_for(&format!("gateway {i} /readyz true"), timeout, || {
            let http = http.clone();
            async move {
                let (status, body) = http.request(chat_client::Method::GET, "/readyz", None, None).await.ok()?;
                (status == 200 && body["ready"] == true).then_some(())
            }
        })
        .await?;
    }
    Ok(())
}

/// The node that leads `stream`.
async fn stream_leader(s: &mut Stack, stream: &str) -> Result<usize> {
    let urls: Vec<String> = s.nats.url.split(',').map(str::to_owned).collect();
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&urls.join(",")).await?);
    let info = js.get_stream(stream).await?.info().await?.clone();
    let leader = info.cluster.and_then(|c| c.leader).context("stream has no leader")?;
    let cluster = s.nats.cluster().context("a cluster stack")?;
    cluster.index_of(&leader).context("leader is a node")
}

/// Kills node `victim` under load, checks the gateways stay ready on the
/// quorum, restarts it, and checks everything.
async fn kill_and_restart_a_node(mut s: Stack, pick: impl FnOnce(&mut Stack) -> Result<usize>) -> Result<Duration> {
    let load = start_load(&s).await?;
    load.wait_acks(PHASE_ACKS, "before the kill").await?;
    let victim = pick(&mut s)?;
    let cursors = load.cursors();
    let kill = Instant::now();
    s.nats.cluster().context("cluster")?.kill(victim);
    let at_kill = load.acked();
    load.wait_acks(at_kill + PHASE_ACKS, "with a node down").await?;
    all_ready(&s, Duration::from_secs(10)).await?;
    s.nats.cluster().context("cluster")?.restart(victim)?;
    load.wait_acks(load.acked() + PHASE_ACKS, "after the restart").await?;
    let stall = load.finish(&s, cursors, kill).await?;
    all_ready(&s, Duration::from_secs(10)).await?;
    Ok(stall)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_meta_leader_killed_under_load_loses_and_duplicates_nothing() -> Result<()> {
    let s = cluster_stack().await?;
    all_ready(&s, Duration::from_secs(10)).await?;
    let stall =
        kill_and_restart_a_node(s, |s| s.nats.cluster().context("cluster")?.meta_leader().context("meta leader"))
            .await?;
    eprintln!("meta leader SIGKILL: acks stalled at most {stall:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_inbox_stream_leader_killed_under_load_loses_and_duplicates_nothing() -> Result<()> {
    let mut s = cluster_stack().await?;
    let leader = stream_leader(&mut s, chat_nats::subjects::INBOX_STREAM).await?;
    let stall = kill_and_restart_a_node(s, move |_| Ok(leader)).await?;
    eprintln!("inbox stream leader SIGKILL: acks stalled at most {stall:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_on_the_cluster_moves_its_partitions_and_loses_nothing() -> Result<()> {
    let mut s = cluster_stack().await?;
    let load = start_load(&s).await?;
    load.wait_acks(PHASE_ACKS, "before the kill").await?;
    let cursors = load.cursors();
    let kill = Instant::now();
    s.kill_worker(0);
    // Every partition ends up leased by the surviving worker.
    let urls: Vec<String> = s.nats.url.split(',').map(str::to_owned).collect();
    let js = async_nats::jetstream::new(chat_tests::nats_admin(&urls.join(",")).await?);
    let leases = js.get_key_value(chat_nats::subjects::LEASES_BUCKET).await?;
    wait_for("every partition leased by w1", Duration::from_secs(30), || {
        let leases = leases.clone();
        async move {
            for p in 0..4 {
                let holder = leases.get(chat_nats::subjects::partition_lease(p)).await.ok()??;
                if &holder[..] != b"w1" {
                    return None;
                }
            }
            Some(())
        }
    })
    .await?;
    load.wait_acks(load.acked() + PHASE_ACKS, "after the partitions moved").await?;
    let stall = load.finish(&s, cursors, kill).await?;
    eprintln!("worker SIGKILL on the cluster: acks stalled at most {stall:?}");
    Ok(())
}
