//! `storm`: N synced clients drop at once, miss a few messages, then all
//! reconnect at once and `sync` from their cursors. Reports the time until
//! every client is `synced` (and each client's reconnect→synced time).
//! Baseline: N ordered JetStream consumers created at once over one NATS
//! connection, each reading the same missed messages from the same
//! cursor (the server-side work of a sync, without WebSocket and gateway).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::json;
use tokio::sync::{watch, Semaphore};

use crate::baseline;
use crate::catchup::pipeline;
use crate::client::{connect_retry, live, run_prefix, signup_users, token};
use crate::report::{Lat, Report};
use crate::Target;

/// Parameters.
#[derive(Debug, Clone)]
pub struct Cfg {
    /// Clients (devices).
    pub clients: usize,
    /// Devices per account.
    pub devices_per_user: usize,
    /// Messages each account receives while its devices are offline.
    pub missed: usize,
    /// Connections set up at once before the storm (the storm itself is
    /// unthrottled).
    pub concurrency: usize,
    /// Run the raw-NATS baseline.
    pub baselines: bool,
}

impl Default for Cfg {
    fn default() -> Self {
        Cfg { clients: 1000, devices_per_user: 10, missed: 2, concurrency: 64, baselines: true }
    }
}

struct Client {
    addr: String,
    token: String,
    user: usize,
    cursor: String,
}

/// Runs the scenario.
pub async fn run(t: &Target, cfg: &Cfg) -> Result<Report> {
    let mut r = Report::new(
        "storm",
        json!({"clients": cfg.clients, "devices_per_user": cfg.devices_per_user, "missed": cfg.missed,
               "gateways": t.gateways.len()}),
    );
    let n_users = cfg.clients.div_ceil(cfg.devices_per_user.max(1)).max(1);
    let users = signup_users(t, &run_prefix("storm"), n_users + 1, 4).await?;
    let (sender, users) = users.split_last().context("no users")?;

    // Connect and sync everyone, keeping the connections open.
    let sem = Arc::new(Semaphore::new(cfg.concurrency.max(1)));
    let mut setup = Vec::with_capacity(cfg.clients);
    for i in 0..cfg.clients {
        let user = i % n_users;
        let (addr, tok, sem) = (t.gateway(i).to_owned(), token(t, &users[user], &format!("s{i}")).await?, sem.clone());
        setup.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            let (tx, rx, cursor) = live(&addr, &tok, None).await?;
            Ok::<_, anyhow::Error>((Client { addr, token: tok, user, cursor }, tx, rx))
        }));
    }
    let mut clients = Vec::with_capacity(cfg.clients);
    let mut conns = Vec::with_capacity(cfg.clients);
    for s in setup {
        let (c, tx, rx) = s.await??;
        clients.push(c);
        conns.push((tx, rx));
    }
    // Everyone drops at once (no close handshake, like a network cut).
    drop(conns);

    // Messages arrive while they are away.
    let stok = token(t, sender, "d0").await?;
    let mut sends = Vec::new();
    let sem = Arc::new(Semaphore::new(8));
    for (i, u) in users.iter().enumerate() {
        let (addr, stok, to, sem, missed) =
            (t.gateway(i).to_owned(), stok.clone(), u.id.clone(), sem.clone(), cfg.missed);
        sends.push(tokio::spawn(async move {
            let _permit = sem.acquire_owned().await;
            pipeline(&addr, &stok, &to, &format!("u{i}-"), missed, 16, |_| "m".repeat(100)).await
        }));
    }
    for s in sends {
        let (_, errors) = s.await??;
        anyhow::ensure!(errors == 0, "{errors} sends failed while the clients were away");
    }

    // The storm.
    let (go, wait) = watch::channel(false);
    let lat = Arc::new(Lat::default());
    let mut tasks = Vec::with_capacity(clients.len());
    for c in &clients {
        let (addr, tok, cursor, mut wait, lat) =
            (c.addr.clone(), c.token.clone(), c.cursor.clone(), wait.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let _ = wait.wait_for(|v| *v).await;
            let start = Instant::now();
            let (mut tx, mut rx, retries) = connect_retry(&addr, &tok, 30).await?;
            tx.sync(Some(&cursor)).await?;
            let (n, _, _) = rx.until_synced(Duration::from_secs(120)).await?;
            lat.record(start.elapsed());
            Ok::<_, anyhow::Error>((n, retries, tx, rx))
        }));
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let t0 = Instant::now();
    let _ = go.send(true);
    let (mut ok, mut failed, mut msgs, mut retries) = (0usize, 0usize, 0usize, 0u32);
    let mut first_error = None;
    let mut keep = Vec::with_capacity(tasks.len());
    for task in tasks {
        match task.await? {
            Ok((n, rt, tx, rx)) => {
                ok += 1;
                msgs += n;
                retries += rt;
                keep.push((tx, rx));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(format!("{e:#}"));
            }
        }
    }
    let total = t0.elapsed();
    drop(keep);
    r.metric("synced", ok as f64);
    r.metric("failed", failed as f64);
    if let Some(h) = crate::client::consumer_limit_hint(failed, 2 * cfg.clients) {
        r.note(h);
    }
    r.metric("connect_retries", f64::from(retries));
    r.metric("messages_caught_up", msgs as f64);
    r.metric("messages_expected", (cfg.clients * cfg.missed) as f64);
    r.metric("all_synced_s", total.as_secs_f64());
    if let Some(e) = first_error {
        r.note(format!("first failure: {e}"));
    }
    let ours = lat.row("ours reconnect→synced (per client)", None);
    r.latencies.push(ours);

    if cfg.baselines {
        let res: Result<()> = async {
            let inbox = crate::baseline::inbox_stream(&t.nats_url).await?;
            let blat = Arc::new(Lat::default());
            let t0 = Instant::now();
            let mut reads = Vec::with_capacity(clients.len());
            for c in &clients {
                let (inbox, blat, missed) = (inbox.clone(), blat.clone(), cfg.missed);
                let subject = chat_nats::subjects::inbox(users[c.user].id.parse()?);
                let start = c.cursor.parse::<u64>().unwrap_or(0) + 1;
                reads.push(tokio::spawn(async move {
                    let (took, got) = baseline::ordered_read(&inbox, &subject, start, missed).await?;
                    blat.record(took);
                    Ok::<_, anyhow::Error>(got)
                }));
            }
            let mut got = 0;
            for rd in reads {
                got += rd.await??;
            }
            let base = t0.elapsed();
            r.metric("baseline_all_read_s", base.as_secs_f64());
            r.metric("baseline_messages_read", got as f64);
            r.latencies.push(blat.row("N ordered consumers at once (per consumer)", None));
            r.ratio(
                "all synced / all ordered consumers read",
                total.as_secs_f64() * 1000.0,
                base.as_secs_f64() * 1000.0,
            );
            Ok(())
        }
        .await;
        if let Err(e) = res {
            r.note(format!("baselines failed: {e:#}"));
        }
    }
    Ok(r)
}
