//! Seconds-long smoke runs of every `chat-bench` scenario, with tiny sizes,
//! against a stack of the suite's own (in-process gateway, worker process),
//! so the benchmark harness keeps working. They check that the scenarios
//! measure something sane (counts match, percentiles are positive), never
//! how fast anything is: benchmarks do not gate CI.

use std::time::Duration;

use anyhow::Result;
use chat_bench::client::Transport;
use chat_bench::{
    catchup, fanout, heartbeat, history, idle, index, latency, procfs, room, storm, QuicTarget, Report, Target,
};

use crate::stack::{stack, Kind, Stack};

/// A stack whose gateway does not rate-limit the bench's connections.
async fn bench_stack() -> Result<Stack> {
    stack().env("CHAT_WS_RATE_PER_SEC", "100000").env("CHAT_WS_RATE_BURST", "100000").start().await
}

/// The bench's view of a stack: the gateway runs in this process, so its
/// RSS and CPU are this process's.
fn target(s: &Stack) -> Target {
    let quic = match s.transport(0, Kind::Quic) {
        chat_client::Transport::Quic { addr, trust: chat_client::quic::Trust::Fingerprint(fingerprint) } => {
            vec![QuicTarget { addr, fingerprint }]
        }
        _ => vec![],
    };
    Target {
        gateways: vec![s.addr(0)],
        quic,
        nats_url: s.nats.url.clone(),
        gateway_pids: vec![std::process::id()],
        nats_pid: s.nats.store_dir().to_str().and_then(procfs::find_pid),
        token_secret: Some(s.env["CHAT_TOKEN_SECRET"].clone().into_bytes()),
        other_pids: vec![],
    }
}

fn lat_positive(r: &Report, name: &str, count: u64) {
    let row = r.lat(name).unwrap_or_else(|| panic!("no latency row {name:?} in\n{}", r.table()));
    assert_eq!(row.count, count, "{name}: samples\n{}", r.table());
    assert!(row.p50_ms > 0.0 && row.p99_ms >= row.p50_ms && row.max_ms >= row.p99_ms, "{name}\n{}", r.table());
}

async fn latency_over(transport: Transport) -> Result<()> {
    let s = bench_stack().await?;
    let cfg = latency::Cfg {
        pairs: 2,
        rate: 200.0,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(500),
        size: 64,
        drain: Duration::from_secs(15),
        baselines: true,
        transport,
        tap: transport == Transport::Ws,
    };
    let r = latency::run(&target(&s), &cfg).await?;
    assert_eq!(r.scenario, transport.scenario("latency"));
    assert_eq!(r.get("scheduled"), 200.0, "{}", r.table());
    assert_eq!(r.get("acked"), 200.0, "{}", r.table());
    assert_eq!(r.get("delivered"), 200.0, "{}", r.table());
    assert_eq!(r.get("errors"), 0.0, "{}", r.table());
    lat_positive(&r, "ours send→ack", 200);
    lat_positive(&r, "ours send→delivery", 200);
    lat_positive(&r, "core NATS pub→sub", 200);
    lat_positive(&r, "JetStream pub→sub", 200);
    assert_eq!(r.ratios.len(), 6, "{}", r.table());
    if cfg.tap {
        // Every send is at least its ingress entry, history entry, two inbox
        // copies and the reply: the tap saw the server's traffic.
        assert!(r.get("nats_msgs_per_send") >= 5.0, "{}", r.table());
        assert!(r.get("nats_msgs_per_send chat.hist") >= 0.9, "{}", r.table());
    }
    assert!(r.get("cpu_us_per_send_gateway") > 0.0, "{}", r.table());
    assert!(r.ratios.iter().all(|x| x.ratio > 0.0), "{}", r.table());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_smoke() -> Result<()> {
    latency_over(Transport::Ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_quic_smoke() -> Result<()> {
    latency_over(Transport::Quic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catchup_smoke() -> Result<()> {
    let s = bench_stack().await?;
    let cfg = catchup::Cfg { messages: 200, senders: 2, window: 8, repeats: 2, size: 32, baselines: true };
    let r = catchup::run(&target(&s), &cfg).await?;
    assert_eq!(r.get("fill_acked"), 200.0, "{}", r.table());
    assert_eq!(r.get("received"), 200.0, "{}", r.table());
    assert_eq!(r.get("in_order"), 1.0, "{}", r.table());
    lat_positive(&r, "ours sync→synced", 2);
    lat_positive(&r, "JetStream ordered consumer", 2);
    assert!(r.ratios[0].ratio > 0.0, "{}", r.table());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_smoke() -> Result<()> {
    let s = stack()
        .env("CHAT_WS_RATE_PER_SEC", "100000")
        .env("CHAT_WS_RATE_BURST", "100000")
        .env("CHAT_SEARCH_INDEXER", "true")
        .start()
        .await?;
    let cfg = index::Cfg { messages: 300, senders: 3, window: 4, drain: Duration::from_secs(30) };
    let r = index::run(&target(&s), &cfg).await?;
    assert_eq!(r.get("acked_sends"), 300.0, "{}", r.table());
    assert!(r.get("acked_sends_per_s") > 0.0 && r.get("indexed_per_s_overall") > 0.0, "{}", r.table());
    assert!(r.get("lag_max") >= r.get("lag_at_last_ack"), "{}", r.table());
    assert!(r.get("catch_up_s") >= 0.0, "every send was indexed\n{}", r.table());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_smoke() -> Result<()> {
    let s = bench_stack().await?;
    let cfg = history::Cfg { messages: 500, queries: 20, limit: 50, size: 32, window: 64, baselines: true };
    let r = history::run(&target(&s), &cfg).await?;
    assert_eq!(r.get("pages_ok"), 20.0, "{}", r.table());
    assert_eq!(r.get("pages_wrong"), 0.0, "{}", r.table());
    lat_positive(&r, "ours page before=<random>", 20);
    lat_positive(&r, "JetStream ordered consumer, 50 from random seq", 20);
    Ok(())
}

async fn idle_over(transport: Transport) -> Result<()> {
    let s = bench_stack().await?;
    let cfg = idle::Cfg {
        conns: 50,
        users: 5,
        per_process: 50,
        ping: Duration::from_secs(20),
        settle: Duration::from_millis(300),
        cpu_window: Duration::from_secs(1),
        concurrency: 16,
        baselines: false,
        exe: None, // the test binary is not chat-bench: keep clients in-process
        transport,
    };
    let r = idle::run(&target(&s), &cfg).await?;
    assert_eq!(r.scenario, transport.scenario("idle"));
    assert_eq!(r.get("connected"), 50.0, "{}", r.table());
    assert_eq!(r.get("failed"), 0.0, "{}", r.table());
    assert!(r.get("rss_per_conn_kib").is_finite(), "{}", r.table());
    assert!(r.get("gw0_rss_after_kib") > 0.0, "{}", r.table());
    assert!(r.get("gw0_cpu_idle_pct") >= 0.0, "{}", r.table());
    assert!(r.get("kernel_tcp_mem_per_conn_bytes").is_finite(), "{}", r.table());
    let handshake = if transport == Transport::Quic { "QUIC handshake + auth" } else { "TCP + WebSocket upgrade" };
    lat_positive(&r, &format!("connect ({handshake}, retries included)"), 50);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_smoke() -> Result<()> {
    idle_over(Transport::Ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_quic_smoke() -> Result<()> {
    idle_over(Transport::Quic).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_smoke() -> Result<()> {
    let s = bench_stack().await?;
    let cfg = storm::Cfg { clients: 20, devices_per_user: 5, missed: 2, concurrency: 8, baselines: true };
    let r = storm::run(&target(&s), &cfg).await?;
    assert_eq!(r.get("synced"), 20.0, "{}", r.table());
    assert_eq!(r.get("failed"), 0.0, "{}", r.table());
    assert_eq!(r.get("messages_caught_up"), 40.0, "{}", r.table());
    assert_eq!(r.get("baseline_messages_read"), 40.0, "{}", r.table());
    assert!(r.get("all_synced_s") > 0.0, "{}", r.table());
    lat_positive(&r, "ours reconnect→synced (per client)", 20);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_smoke() -> Result<()> {
    let s = bench_stack().await?;
    let cfg = room::Cfg {
        viewers: 20,
        users: 4,
        rate: 20.0,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(500),
        size: 32,
        ceiling_msgs: 200,
        baselines: true,
    };
    let r = room::run(&target(&s), &cfg).await?;
    assert_eq!(r.get("viewers_joined"), 20.0, "{}", r.table());
    assert_eq!(r.get("acked"), 20.0, "{}", r.table());
    assert_eq!(r.get("delivered"), 400.0, "every viewer, every message\n{}", r.table());
    assert_eq!(r.get("errors"), 0.0, "{}", r.table());
    lat_positive(&r, "ours room post→delivery", 400);
    assert!(r.get("baseline_core_fanout_max_deliveries_per_s") > 0.0, "{}", r.table());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_smoke() -> Result<()> {
    let s = bench_stack().await?;
    let cfg = fanout::Cfg {
        groups: 1,
        members: 5,
        devices: 1,
        senders_per_group: 2,
        rate: 20.0,
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(500),
        size: 32,
        drain: Duration::from_secs(15),
        ceiling_msgs: 200,
        baselines: true,
        tap: false,
    };
    let r = fanout::run(&target(&s), &cfg).await?;
    assert_eq!(r.get("available"), 1.0, "groups API missing?\n{}", r.table());
    assert_eq!(r.get("acked"), 20.0, "{}", r.table());
    assert_eq!(r.get("delivered"), 80.0, "4 other members each\n{}", r.table());
    assert_eq!(r.get("errors"), 0.0, "{}", r.table());
    lat_positive(&r, "ours group send→delivery", 80);
    lat_positive(&r, "core NATS pub→M subs", 100);
    assert!(r.get("baseline_core_fanout_max_deliveries_per_s") > 0.0, "{}", r.table());
    assert!(r.get("baseline_jetstream_copies_max_per_s") > 0.0, "{}", r.table());
    Ok(())
}

async fn heartbeat_over(transport: Transport) -> Result<()> {
    let s = bench_stack().await?;
    let cfg = heartbeat::Cfg {
        conns: 20,
        users: 4,
        rates: vec![40.0, 80.0],
        interval: Duration::from_secs(1),
        duration: Duration::from_secs(1),
        warmup: Duration::from_millis(300),
        drain: Duration::from_secs(15),
        concurrency: 8,
        transport,
        baselines: true,
    };
    let r = heartbeat::run(&target(&s), &cfg).await?;
    assert_eq!(r.scenario, transport.scenario("heartbeat"));
    assert_eq!(r.get("connected"), 20.0, "{}", r.table());
    assert_eq!(r.get("errors"), 0.0, "{}", r.table());
    assert_eq!(r.get("closed"), 0.0, "{}", r.table());
    for (step, rate, n) in [(1, 40, 40), (2, 80, 80)] {
        assert_eq!(r.get(&format!("step{step}_scheduled")), n as f64, "{}", r.table());
        assert_eq!(r.get(&format!("step{step}_pongs")), n as f64, "{}", r.table());
        assert_eq!(r.get(&format!("step{step}_baseline_kv_acked")), n as f64, "{}", r.table());
        lat_positive(&r, &format!("ours ping→pong @ {rate}/s"), n);
        lat_positive(&r, &format!("raw KV put→ack @ {rate}/s"), n);
    }
    // Every connection wrote its presence key at least once in the run.
    assert!(r.get("kv_puts_total") >= 20.0, "{}", r.table());
    assert!(r.get("baseline_kv_put_max_per_s") > 0.0, "{}", r.table());
    assert_eq!(r.ratios.len(), 8, "{}", r.table());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_smoke() -> Result<()> {
    heartbeat_over(Transport::Ws).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_quic_smoke() -> Result<()> {
    heartbeat_over(Transport::Quic).await
}
