//! Scale-out: the gateway registry and discovery, capacity, and clients
//! that move when a gateway dies (SIGKILL) or drains, under load from 50
//! senders over 3 gateways, with every acked message checked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use chat_client::{ClientError, Event, Failover, FailoverConfig, Login, Method};
use chat_tests::load::{self, LoadReport, LoadSpec, SenderSpec};
use chat_tests::wait_for;
use serde_json::{json, Value};

use crate::stack::{stack, Kind, Stack};

const SECRET: &str = "test-secret-0123456789abcdef0123456789";
const OPERATOR: &str = "operator-credential-0123456789abcdef";
const SENDERS: usize = 50;
const RATE: f64 = 300.0;

/// `n` users straight into PostgreSQL (one argon2 hash for all), each with
/// the given devices logged in (tokens issued as a login would).
async fn users(s: &Stack, prefix: &str, n: usize, devices: &[&str]) -> Result<Vec<Vec<Login>>> {
    let db = chat_gateway::store::Db::connect(&s.pg.url, 4)?;
    let hash = chat_gateway::auth::hash_password("password123");
    let mut out = Vec::new();
    for i in 0..n {
        let id = db.create_user(&format!("{prefix}{i:04}"), &hash).await?.expect("a new user");
        let mut logins = Vec::new();
        for d in devices {
            let gen = db.touch_device(id, d).await?;
            let claims = chat_gateway::auth::Claims { user: id, device: d.to_string(), exp: u64::MAX / 2, gen };
            let token = chat_gateway::auth::issue(SECRET.as_bytes(), &claims);
            logins.push(Login { token, user_id: id.to_string(), device_id: d.to_string(), edges: vec![] });
        }
        out.push(logins);
    }
    Ok(out)
}

/// The ids of the gateways `GET /v1/edges` on `addr` lists, in order.
async fn edge_ids(s: &Stack, i: usize, query: &str) -> Result<Vec<String>> {
    let (status, v) = s.http(i).request(Method::GET, &format!("/v1/edges{query}"), None, None).await?;
    ensure!(status == 200, "edges: {status} {v}");
    Ok(v["edges"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect())
}

/// Senders `0..SENDERS`, each sending 1:1 to the next one (a ring).
fn ring(senders: &[Login]) -> Vec<SenderSpec> {
    (0..senders.len())
        .map(|i| SenderSpec {
            login: senders[i].clone(),
            targets: vec![json!({"user": senders[(i + 1) % senders.len()].user_id})],
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

fn figures(what: &str, r: &LoadReport) {
    let max = r.moves.iter().max().copied().unwrap_or_default();
    eprintln!(
        "scaleout {what}: {} acked at {:.0} msgs/s over {:.1} s; {} sender moves (median {:?}, max {:?}); longest ack gap {:?}",
        r.acks.len(),
        r.rate(),
        r.sending.as_secs_f64(),
        r.moves.len(),
        median(r.moves.clone()),
        max,
        r.max_ack_gap
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_lists_live_gateways_best_first_and_a_full_gateway_refuses_sessions() -> Result<()> {
    let mut s = stack().env("CHAT_REGISTRY_TTL_MS", "2000").env("CHAT_REGION", "eu").start().await?;
    s.env.insert("CHAT_REGION".into(), "us".into());
    s.env.insert("CHAT_MAX_CONNECTIONS".into(), "1".into());
    s.add_gateway().await?; // gw1: us, one session at most
    s.env.insert("CHAT_REGION".into(), "eu".into());
    s.env.insert("CHAT_MAX_CONNECTIONS".into(), "1000".into());
    s.add_gateway().await?; // gw2: eu
    let a = &users(&s, "disc", 1, &["d1", "d2"]).await?[0];
    // gw0 has a session, gw2 none: gw2 is less loaded; both before the us one.
    let (_c0, _) = s.live(0, &a[0]).await?;
    let order = wait_for("three edges", Duration::from_secs(10), || async {
        edge_ids(&s, 0, "").await.ok().filter(|ids| ids.len() == 3 && ids[0] == "gw2")
    })
    .await?;
    assert_eq!(order, ["gw2", "gw0", "gw1"], "own region first, then by load");
    // The asked region first, from any gateway.
    wait_for("gw2 to list gw1 first for region us", Duration::from_secs(10), || async {
        edge_ids(&s, 2, "?region=us").await.ok().filter(|ids| ids.first().map(String::as_str) == Some("gw1"))
    })
    .await?;
    let (status, v) = s.http(0).request(Method::GET, "/v1/edges?region=u.s", None, None).await?;
    assert_eq!((status, v["error"]["code"].as_str()), (400, Some("bad_request")));
    // The login response carries the same list.
    let body = json!({"username": "disc0000", "password": "password123", "device_id": "d3", "region": "us"});
    let (status, v) = s.http(0).request(Method::POST, "/v1/login", None, Some(body)).await?;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["edges"][0]["id"], "gw1");
    assert!(v["edges"][0]["ws_url"].as_str().unwrap().ends_with("/v1/ws"));

    // gw1 is full after one session: 503 at_capacity with Retry-After, and
    // discovery stops listing it.
    let (_c1, _) = s.live(1, &a[0]).await?;
    match s.connect(1, &a[1]).await {
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Api { status: 503, code, .. }) => assert_eq!(code, "at_capacity"),
            other => panic!("expected 503 at_capacity, got {other:?}"),
        },
        Ok(_) => panic!("a full gateway accepted a session"),
    }
    let (status, _) = s.http(1).request(Method::GET, "/v1/ws", Some(&a[1].token), None).await?;
    assert_eq!(status, 503);
    // QUIC too: an error frame instead of `ready`, then close 4010.
    match s.connect_over(Kind::Quic, 1, &a[1]).await {
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Api { status: 503, code, .. }) => assert_eq!(code, "at_capacity"),
            other => panic!("expected a QUIC at_capacity refusal, got {other:?}"),
        },
        Ok(_) => panic!("a full gateway accepted a QUIC session"),
    }
    wait_for("gw1 out of discovery", Duration::from_secs(10), || async {
        edge_ids(&s, 0, "?region=us").await.ok().filter(|ids| !ids.contains(&"gw1".to_string()))
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_gateways_clients_move_through_discovery_and_lose_nothing() -> Result<()> {
    let mut s = stack().env("CHAT_REGISTRY_TTL_MS", "2000").env("CHAT_SEND_TIMEOUT_MS", "5000").start().await?;
    s.add_gateway_process().await?;
    s.add_gateway_process().await?;
    let senders: Vec<Login> = users(&s, "kill", SENDERS, &["s"]).await?.into_iter().map(|mut d| d.remove(0)).collect();
    let seeds: Vec<String> = (0..3).map(|i| s.addr(i)).collect();
    wait_for("three gateways registered", Duration::from_secs(10), || async {
        edge_ids(&s, 0, "").await.ok().filter(|ids| ids.len() == 3)
    })
    .await?;
    let run = load::start(LoadSpec::new(seeds.clone(), ring(&senders), RATE));
    run.wait_acked(600, Duration::from_secs(60)).await?;
    // How many senders the gateway about to die holds (each picked a random
    // one of the best edges), as its registry entry says once refreshed
    // after the load started.
    let on_killed = wait_for("the doomed gateway's sessions in the registry", Duration::from_secs(10), || async {
        let (_, v) = s.http(0).request(Method::GET, "/v1/edges", None, None).await.ok()?;
        let entry = v["edges"].as_array()?.iter().find(|e| e["id"] == "gwp1")?.clone();
        let total: u64 = v["edges"].as_array()?.iter().filter_map(|e| e["connections"].as_u64()).sum();
        (total >= SENDERS as u64).then(|| entry["connections"].as_u64()).flatten()
    })
    .await?;
    assert!(on_killed > 0, "no sender on the gateway to be killed: the test proves nothing");
    let killed_at = Instant::now();
    s.stop_gateway(1).await; // SIGKILL
    let gone = wait_for("the killed gateway out of the registry", Duration::from_secs(15), || async {
        edge_ids(&s, 0, "").await.ok().filter(|ids| !ids.contains(&"gwp1".to_string()))
    });
    gone.await?;
    let vanished = killed_at.elapsed();
    let after = run.acked();
    run.wait_acked(after + 900, Duration::from_secs(60)).await?;
    let report = run.finish(Duration::from_secs(120)).await?;
    figures("SIGKILL", &report);
    eprintln!("scaleout SIGKILL: the registry entry vanished {vanished:?} after the kill");
    assert!(report.rate() >= RATE * 0.8, "load too slow to prove anything: {:.0} msgs/s", report.rate());
    assert!(
        report.moves.len() as u64 >= on_killed,
        "only {} senders moved of the {on_killed} on the killed gateway",
        report.moves.len()
    );
    let history = load::verify(&s.http(0), &senders, &report).await?;
    for u in &senders {
        let user = u.user_id.clone();
        load::verify_catch_up(&seeds[0], u, None, &history, &report, |c| load::in_direct(c, &user)).await?;
    }
    Ok(())
}

/// A device's session: every `msg` recorded by conversation, every move,
/// and each gateway it used (its id, and whether the connection was QUIC).
struct Listener {
    received: Arc<Mutex<HashMap<String, Vec<u64>>>>,
    moves: Arc<Mutex<Vec<Duration>>>,
    edges: Arc<Mutex<Vec<(String, bool)>>>,
}

fn listen(seeds: Vec<String>, login: &Login, synced: Arc<AtomicUsize>, stop: Arc<AtomicBool>) -> Listener {
    listen_with(FailoverConfig::new(seeds), login, synced, stop)
}

fn listen_with(cfg: FailoverConfig, login: &Login, synced: Arc<AtomicUsize>, stop: Arc<AtomicBool>) -> Listener {
    let l = Listener { received: Arc::default(), moves: Arc::default(), edges: Arc::default() };
    let (received, moves, edges) = (l.received.clone(), l.moves.clone(), l.edges.clone());
    let mut session = Failover::new(cfg, &login.token, None);
    tokio::spawn(async move {
        let mut first = true;
        while !stop.load(Ordering::Acquire) {
            if let Some(e) = session.edge() {
                let mut used = edges.lock().unwrap();
                if used.last().map(|(id, _)| id) != Some(&e.id) {
                    used.push((e.id.clone(), session.over_quic()));
                }
            }
            // Reads are cut short to look at `stop`; reconnects are not.
            let e = if session.edge().is_none() {
                match session.connect().await {
                    Ok(Some(moved)) => moved,
                    _ => continue,
                }
            } else {
                let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(500), session.next()).await else {
                    continue;
                };
                e
            };
            match e {
                Event::Msg(m) => {
                    let id: u64 = m["id"].as_str().unwrap().parse().unwrap();
                    received.lock().unwrap().entry(m["conv"].as_str().unwrap().to_owned()).or_default().push(id);
                }
                Event::Other(v) if v["type"] == "synced" && first => {
                    first = false;
                    synced.fetch_add(1, Ordering::AcqRel);
                }
                Event::Moved { took, .. } => moves.lock().unwrap().push(took),
                _ => {}
            }
        }
        session.close().await;
    });
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_gateways_500_devices_all_move_and_none_loses_or_duplicates_a_message() -> Result<()> {
    const RECEIVERS: usize = 100;
    const DEVICES: [&str; 5] = ["p1", "p2", "p3", "p4", "p5"];
    let mut s = stack()
        .env("CHAT_REGISTRY_TTL_MS", "2000")
        .env("CHAT_DRAIN_SECS", "3")
        .env("CHAT_OPERATOR_TOKEN", OPERATOR)
        .start()
        .await?;
    s.add_gateway().await?;
    s.add_gateway().await?;
    let seeds: Vec<String> = (0..3).map(|i| s.addr(i)).collect();
    let senders: Vec<Login> = users(&s, "snd", SENDERS, &["s"]).await?.into_iter().map(|mut d| d.remove(0)).collect();
    let receivers = users(&s, "rcv", RECEIVERS, &DEVICES).await?;
    // 500 devices on gw0 (their first seed), live before the load starts.
    let (synced, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let mut listeners = Vec::new();
    // Ten at a time (a burst of 500 handshakes on 2 cores would time some
    // out, and those would go to another gateway).
    for devices in receivers.chunks(10) {
        for d in devices.iter().flatten() {
            listeners.push((d.clone(), listen(seeds.clone(), d, synced.clone(), stop.clone())));
        }
        let n = listeners.len();
        wait_for(&format!("{n} devices synced"), Duration::from_secs(60), || async {
            (synced.load(Ordering::Acquire) == n).then_some(())
        })
        .await?;
    }
    let moved_early = listeners.iter().filter(|(_, l)| !l.moves.lock().unwrap().is_empty()).count();
    assert_eq!(moved_early, 0, "devices moved before the drain");
    let n = listeners.len();
    // gw0 holds them, as the registry says (refreshed every TTL/3).
    let http1 = s.http(1);
    wait_for("gw0 registered with 500 sessions", Duration::from_secs(10), || async {
        let (_, v) = http1.request(Method::GET, "/v1/edges", None, None).await.ok()?;
        let gw0 = v["edges"].as_array()?.iter().find(|e| e["id"] == "gw0").cloned().unwrap_or(Value::Null);
        (gw0["connections"].as_u64()? >= 500).then_some(())
    })
    .await?;
    // Sender i sends to receivers 2i and 2i+1 in turn.
    let specs: Vec<SenderSpec> = (0..SENDERS)
        .map(|i| SenderSpec {
            login: senders[i].clone(),
            targets: (0..2).map(|k| json!({"user": receivers[2 * i + k][0].user_id})).collect(),
        })
        .collect();
    let run = load::start(LoadSpec::new(seeds.clone(), specs, RATE));
    run.wait_acked(600, Duration::from_secs(60)).await?;

    // A wrong credential is refused; the operator's starts the drain.
    let http0 = s.http(0);
    let drain = |t: String| {
        let http0 = http0.clone();
        async move { http0.request(Method::POST, "/v1/admin/drain", Some(&t), None).await }
    };
    assert_eq!(drain(senders[0].token.clone()).await?.0, 401, "a user token is not the operator's");
    let drain_at = Instant::now();
    let (status, v) = drain(OPERATOR.into()).await?;
    assert_eq!(status, 202, "{v}");
    let (status, v) = s.http(0).request(Method::GET, "/readyz", None, None).await?;
    assert_eq!((status, v["draining"].as_bool()), (503, Some(true)));
    wait_for("every device moved", Duration::from_secs(60), || async {
        listeners.iter().all(|(_, l)| !l.moves.lock().unwrap().is_empty()).then_some(())
    })
    .await?;
    let all_moved = drain_at.elapsed();
    assert!(!edge_ids(&s, 1, "").await?.contains(&"gw0".to_string()), "a draining gateway is not offered");
    let after = run.acked();
    run.wait_acked(after + 600, Duration::from_secs(60)).await?;
    let report = run.finish(Duration::from_secs(120)).await?;
    figures("drain", &report);
    let took: Vec<Duration> = listeners.iter().flat_map(|(_, l)| l.moves.lock().unwrap().clone()).collect();
    eprintln!(
        "scaleout drain: {n} devices moved within {all_moved:?} of the drain (CHAT_DRAIN_SECS=3); reconnect median {:?}, max {:?}",
        median(took.clone()),
        took.iter().max().copied().unwrap_or_default()
    );
    assert!(report.rate() >= RATE * 0.8, "load too slow to prove anything: {:.0} msgs/s", report.rate());
    let history = load::verify(&s.http(1), &senders, &report).await?;
    // Every device ends with each of its conversations exactly as history.
    for (login, l) in &listeners {
        let user = login.user_id.clone();
        let convs: Vec<(&String, usize)> =
            history.iter().filter(|(c, _)| load::in_direct(c, &user)).map(|(c, h)| (c, h.len())).collect();
        wait_for(&format!("device {} {} caught up", user, login.device_id), Duration::from_secs(60), || async {
            let got = l.received.lock().unwrap();
            convs.iter().all(|(c, len)| got.get(*c).map_or(0, Vec::len) >= *len).then_some(())
        })
        .await?;
        let who = format!("user {user} device {}", login.device_id);
        load::verify_received(&who, &l.received.lock().unwrap(), &history, &report, |c| load::in_direct(c, &user))?;
    }
    stop.store(true, Ordering::Release);
    for u in &senders {
        let user = u.user_id.clone();
        load::verify_catch_up(&seeds[1], u, None, &history, &report, |c| load::in_direct(c, &user)).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_with_4010_keeps_every_send_once_and_leaves_the_registry_at_once() -> Result<()> {
    // A long TTL: the entry must go because the gateway deletes it.
    let mut s = stack().env("CHAT_REGISTRY_TTL_MS", "60000").env("CHAT_DRAIN_SECS", "1").start().await?;
    let g = s.add_gateway_process().await?;
    let a = &users(&s, "term", 2, &["d1"]).await?;
    let (mut c, _) = s.live(g, &a[0][0]).await?;
    wait_for("gwp1 registered", Duration::from_secs(10), || async {
        edge_ids(&s, 0, "").await.ok().filter(|ids| ids.contains(&"gwp1".to_string()))
    })
    .await?;
    // Sends in flight when the drain starts are answered before the close.
    for i in 0..5 {
        let frame = json!({"type": "send", "cid": format!("t{i}"), "to": {"user": a[1][0].user_id}, "body": "x"});
        c.send_json(&frame).await?;
    }
    let crate::stack::Gateway::Process { child, .. } = &mut s.gateways[g] else { unreachable!() };
    let pid = child.id().to_string();
    ensure!(std::process::Command::new("kill").args(["-TERM", &pid]).status()?.success());
    let mut first: HashMap<String, String> = HashMap::new();
    let code = loop {
        match c.next().await {
            Ok(v) if v["type"] == "ack" => {
                first.insert(v["cid"].as_str().unwrap().into(), v["id"].as_str().unwrap().into());
            }
            Ok(v) if v["type"] == "error" => panic!("a send refused by the drain: {v}"),
            Ok(_) => {}
            Err(ClientError::Closed { code, .. }) => break code,
            Err(e) => return Err(e.into()),
        }
    };
    assert_eq!(code, 4010, "closed with reconnect_elsewhere");
    let status = wait_for("the gateway to exit", Duration::from_secs(30), || {
        let exited = child.try_wait().ok().flatten();
        async move { exited }
    })
    .await?;
    assert!(status.success(), "a drained gateway exits cleanly: {status}");
    // Elsewhere, every send again with its cid: the acked ones keep their
    // id, the others (not read before the drain) are stored once.
    let mut c = s.connect(0, &a[0][0]).await?;
    let mut ids = std::collections::HashSet::new();
    for i in 0..5 {
        let cid = format!("t{i}");
        let ack = c.send_to_user(&cid, &a[1][0].user_id, "x").await?;
        let id = ack["id"].as_str().unwrap().to_owned();
        if let Some(before) = first.get(&cid) {
            assert_eq!(before, &id, "{cid}: a retry keeps its first id");
        }
        ids.insert(id);
    }
    assert_eq!(ids.len(), 5);
    let conv = chat_client::direct_conv(&a[0][0].user_id, &a[1][0].user_id);
    assert_eq!(load::history(&s.http(0), &a[0][0], &conv).await?.len(), 5, "each send stored once");
    assert!(!edge_ids(&s, 0, "").await?.contains(&"gwp1".to_string()), "deleted, not left to expire");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_undoes_a_drain_and_the_sessions_left_stay() -> Result<()> {
    // A slow drain of 4 sessions: one is told at once, the next after 2.5 s.
    let s = stack().env("CHAT_DRAIN_SECS", "10").env("CHAT_OPERATOR_TOKEN", OPERATOR).start().await?;
    let logins: Vec<Login> = users(&s, "undo", 4, &["d"]).await?.into_iter().map(|mut d| d.remove(0)).collect();
    let mut conns = Vec::new();
    for l in &logins {
        conns.push(s.live(0, l).await?.0);
    }
    let req = |m: Method, t: &'static str| {
        let http = s.http(0);
        async move { http.request(m, "/v1/admin/drain", Some(t), None).await }
    };
    assert_eq!(req(Method::DELETE, "not-the-operator").await?.0, 401);
    let (status, v) = req(Method::DELETE, OPERATOR).await?;
    assert_eq!((status, v["was_draining"].as_bool()), (200, Some(false)), "{v}");
    assert_eq!(req(Method::POST, OPERATOR).await?.0, 202);
    let (status, v) = req(Method::DELETE, OPERATOR).await?;
    assert_eq!((status, v["was_draining"].as_bool(), v["draining"].as_bool()), (200, Some(true), Some(false)), "{v}");
    let (status, v) = s.http(0).request(Method::GET, "/readyz", None, None).await?;
    assert_eq!((status, v["draining"].as_bool()), (200, Some(false)), "{v}");
    // New sessions are taken again and discovery offers the gateway.
    let mut fresh = s.live(0, &logins[0]).await?.0;
    wait_for("gw0 offered again", Duration::from_secs(10), || async {
        let (_, v) = s.http(0).request(Method::GET, "/v1/edges", None, None).await.ok()?;
        v["edges"].as_array()?.iter().any(|e| e["id"] == "gw0").then_some(())
    })
    .await?;
    // Past the whole drain window, at most the one session told at once
    // was closed; the others still answer.
    // A probe every 500 ms over the window (an observation, not a wait).
    let until = Instant::now() + Duration::from_secs(11);
    let mut open = vec![true; conns.len()];
    let mut probe = tokio::time::interval(Duration::from_millis(500));
    while Instant::now() < until {
        probe.tick().await;
        for (c, open) in conns.iter_mut().zip(open.iter_mut()).filter(|(_, o)| **o) {
            let answered = async {
                c.send_json(&json!({"type": "ping"})).await?;
                c.wait_for("pong", |v| v["type"] == "pong").await
            };
            *open = answered.await.is_ok();
        }
        fresh.send_json(&json!({"type": "ping"})).await?;
        fresh.wait_for("pong", |v| v["type"] == "pong").await?;
    }
    let closed = open.iter().filter(|o| !**o).count();
    assert!(closed <= 1, "{closed} of {} sessions closed after the undo", open.len());
    Ok(())
}

/// QUIC failover: devices whose sessions run over QUIC (discovery's
/// `quic_addr`, one certificate for every gateway) lose their gateway to a
/// SIGKILL under load from 50 senders; each moves through discovery to
/// another gateway, again over QUIC, resumes from its cursor, and ends with
/// every message of its conversations exactly once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkilled_gateways_quic_devices_move_over_quic_and_get_every_message_once() -> Result<()> {
    const RECEIVERS: usize = 30;
    let mut s = stack().env("CHAT_REGISTRY_TTL_MS", "2000").env("CHAT_SEND_TIMEOUT_MS", "5000").start().await?;
    s.add_gateway_process_quic().await?;
    s.add_gateway_process_quic().await?;
    let fingerprint = s.quic_fingerprint(0).expect("gateway 0 runs in-process");
    let seeds: Vec<String> = (0..3).map(|i| s.addr(i)).collect();
    wait_for("three QUIC gateways registered", Duration::from_secs(10), || async {
        let (_, v) = s.http(0).request(Method::GET, "/v1/edges", None, None).await.ok()?;
        let edges = v["edges"].as_array()?;
        (edges.len() == 3 && edges.iter().all(|e| e["quic_addr"].is_string())).then_some(())
    })
    .await?;
    let senders: Vec<Login> = users(&s, "qs", SENDERS, &["s"]).await?.into_iter().map(|mut d| d.remove(0)).collect();
    let receivers: Vec<Login> =
        users(&s, "qr", RECEIVERS, &["q"]).await?.into_iter().map(|mut d| d.remove(0)).collect();
    let (synced, stop) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicBool::new(false)));
    let mut cfg = FailoverConfig::new(seeds.clone());
    cfg.quic = Some(chat_client::quic::Trust::Fingerprint(fingerprint));
    let listeners: Vec<(Login, Listener)> =
        receivers.iter().map(|d| (d.clone(), listen_with(cfg.clone(), d, synced.clone(), stop.clone()))).collect();
    wait_for("every QUIC device synced", Duration::from_secs(60), || async {
        (synced.load(Ordering::Acquire) == RECEIVERS).then_some(())
    })
    .await?;
    // Discovery spread them over the three gateways (a random one of the
    // best each): those on gwp1 are the ones that must move.
    let on = |id: &str| -> Vec<usize> {
        let on_it = |l: &Listener| l.edges.lock().unwrap().last().is_some_and(|(e, _)| e == id);
        (0..RECEIVERS).filter(|i| on_it(&listeners[*i].1)).collect()
    };
    let doomed = on("gwp1");
    assert!(!doomed.is_empty(), "no QUIC device on the gateway to be killed: the test proves nothing");
    // Sender i sends to receivers i and i + 1 (mod RECEIVERS) in turn.
    let specs: Vec<SenderSpec> = (0..SENDERS)
        .map(|i| SenderSpec {
            login: senders[i].clone(),
            targets: (0..2).map(|k| json!({"user": receivers[(i + k) % RECEIVERS].user_id})).collect(),
        })
        .collect();
    let run = load::start(LoadSpec::new(seeds.clone(), specs, RATE));
    run.wait_acked(600, Duration::from_secs(60)).await?;
    s.stop_gateway(1).await; // SIGKILL
    wait_for("every QUIC device of the killed gateway moved", Duration::from_secs(60), || async {
        doomed.iter().all(|i| !listeners[*i].1.moves.lock().unwrap().is_empty()).then_some(())
    })
    .await?;
    let after = run.acked();
    run.wait_acked(after + 600, Duration::from_secs(60)).await?;
    let report = run.finish(Duration::from_secs(120)).await?;
    figures("QUIC SIGKILL", &report);
    assert!(report.rate() >= RATE * 0.8, "load too slow to prove anything: {:.0} msgs/s", report.rate());
    let history = load::verify(&s.http(0), &senders, &report).await?;
    for (login, l) in &listeners {
        let user = login.user_id.clone();
        let convs: Vec<(&String, usize)> =
            history.iter().filter(|(c, _)| load::in_direct(c, &user)).map(|(c, h)| (c, h.len())).collect();
        wait_for(&format!("QUIC device of {user} caught up"), Duration::from_secs(60), || async {
            let got = l.received.lock().unwrap();
            convs.iter().all(|(c, len)| got.get(*c).map_or(0, Vec::len) >= *len).then_some(())
        })
        .await?;
        load::verify_received(&format!("QUIC user {user}"), &l.received.lock().unwrap(), &history, &report, |c| {
            load::in_direct(c, &user)
        })?;
    }
    stop.store(true, Ordering::Release);
    let took: Vec<Duration> = doomed.iter().flat_map(|i| listeners[*i].1.moves.lock().unwrap().clone()).collect();
    eprintln!(
        "scaleout QUIC SIGKILL: {} of {RECEIVERS} QUIC devices moved; reconnect median {:?}, max {:?}",
        doomed.len(),
        median(took.clone()),
        took.iter().max().copied().unwrap_or_default()
    );
    for i in &doomed {
        let used = listeners[*i].1.edges.lock().unwrap().clone();
        assert!(used.len() >= 2, "device {i} on gwp1 did not land elsewhere: {used:?}");
        assert!(used.last().is_some_and(|(id, _)| id != "gwp1"), "device {i} ended on the killed gateway: {used:?}");
    }
    for (login, l) in &listeners {
        let used = l.edges.lock().unwrap().clone();
        assert!(used.iter().all(|(_, quic)| *quic), "{} fell back to WebSocket: {used:?}", login.user_id);
    }
    Ok(())
}
