//! `chat-bench <scenario> [options]`: runs a benchmark scenario (or `all`)
//! against a stack it starts itself (nats-server with `sync_interval:
//! always`, PostgreSQL, release gateway and worker processes), prints a
//! table and writes `<out>/<scenario>.json`. See `--help`.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use chat_bench::client::Transport;
use chat_bench::stack::{OwnStack, StackCfg};
use chat_bench::{
    catchup, fanout, fsync, heartbeat, history, idle, index, latency, room, storm, QuicTarget, Report, Target,
};

const HELP: &str = "\
chat-bench <scenario> [options]

scenarios: latency catchup history idle storm fanout heartbeat fsync room index all

stack (default: start nats-server, PostgreSQL and target/release binaries):
  --gateways N            gateway processes [1] (idle: 2 shows scaling)
  --workers N             worker processes [1]
  --cluster               a 3-node nats-server cluster (nats/conf/cluster/),
                          every stream and bucket R3; baselines use node 1
  --gateway-bin PATH      [target/release/chat-gateway]
  --worker-bin PATH       [target/release/chat-worker]
  --env K=V               extra CHAT_* setting for the processes (repeatable)
  --gateway ADDR          use running gateways instead (repeatable), with
  --nats URL              their nats-server, and optionally
  --token-secret S        their CHAT_TOKEN_SECRET (else one login per device)
  --gateway-pid PID       their pids, for RSS/CPU readings (repeatable)
  --quic ADDR             their QUIC addresses, same order (repeatable), with
  --quic-fingerprint HEX  their certificates' SHA-256 fingerprints (repeatable)
output:
  --out DIR               JSON reports [target/bench]
  --no-baselines          skip the raw-NATS baselines
  --tap                   latency, fanout: count the nats-server's messages per send or
                          delivery, by kind (one subscription to '>'; not for timings)
scenario options (with `all`, prefix one with the scenario, e.g. --history-messages):
  latency  --pairs 50 --rate 2000 --duration 10 --warmup 2 --size 100 --transport ws|quic
  catchup  --messages 10000 --senders 8 --repeats 3
  history  --messages 1000000 --queries 500 --limit 50
  idle     --conns 15000 --users 100 --per-process 5000 --ping 30 --cpu-window 10 --in-process
           --concurrency 64 (connections opened at once per client process) --transport ws|quic
  storm    --clients 1000 --devices-per-user 10 --missed 2
  fanout   --groups 2 --members 100 --devices 1 --senders 4 --rate 100 --duration 10
  room     --viewers 10000 --users 100 --rate 20 --duration 10 --warmup 2 --size 100 (one live room)
  heartbeat --conns 5000 --users 100 --interval 1 (per connection) or --rates 5000,10000,20000
           (total per second, stepped until saturated) --duration 10 --warmup 2 --transport ws|quic
  index    --messages 30000 --senders 200 --window 4 --drain 120 (1:1 sends as fast as acked, search
           indexer on: indexed/s, lag at the last ack, catch-up)
  fsync    --fsyncs 1000 --batch-sizes 1,20,100,500,999 --window 256 --duration 3 --size 200
           (starts only nats-server; with --nats URL uses that one, and --dir for the fsync file)
";

const SCENARIOS: [&str; 10] =
    ["latency", "catchup", "history", "idle", "storm", "fanout", "heartbeat", "fsync", "room", "index"];

/// Parsed `--key value` options (repeatable) and flags.
struct Opts {
    values: HashMap<String, Vec<String>>,
    flags: Vec<String>,
    scenario: String,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        const FLAGS: [&str; 5] = ["no-baselines", "in-process", "cluster", "help", "tap"];
        let mut o = Opts { values: HashMap::new(), flags: vec![], scenario: String::new() };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let Some(key) = a.strip_prefix("--") else { bail!("unexpected argument {a:?} (see --help)") };
            if FLAGS.contains(&key) {
                o.flags.push(key.to_owned());
            } else {
                let v = it.next().ok_or_else(|| anyhow!("--{key} needs a value"))?;
                o.values.entry(key.to_owned()).or_default().push(v.clone());
            }
        }
        Ok(o)
    }

    fn flag(&self, k: &str) -> bool {
        self.flags.iter().any(|f| f == k)
    }

    /// `--<scenario>-<k>`, else `--<k>`.
    fn raw(&self, k: &str) -> Option<&str> {
        let scoped = format!("{}-{k}", self.scenario);
        self.values.get(&scoped).or_else(|| self.values.get(k)).and_then(|v| v.last()).map(String::as_str)
    }

    fn all(&self, k: &str) -> Vec<String> {
        self.values.get(k).cloned().unwrap_or_default()
    }

    fn num<T: std::str::FromStr>(&self, k: &str, default: T) -> Result<T> {
        match self.raw(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| anyhow!("--{k}: not a number: {v:?}")),
        }
    }

    /// A comma-separated list of numbers, or `default` when not given.
    fn nums<T: std::str::FromStr>(&self, k: &str, default: Vec<T>) -> Result<Vec<T>> {
        match self.raw(k) {
            None => Ok(default),
            Some(v) => {
                v.split(',').map(|x| x.trim().parse().map_err(|_| anyhow!("--{k}: not a number: {x:?}"))).collect()
            }
        }
    }

    fn secs(&self, k: &str, default: Duration) -> Result<Duration> {
        Ok(Duration::from_secs_f64(self.num(k, default.as_secs_f64())?))
    }

    fn transport(&self) -> Result<Transport> {
        self.raw("transport").map(str::parse).transpose().map(Option::unwrap_or_default)
    }
}

async fn run_one(name: &str, o: &Opts, t: &Target) -> Result<Report> {
    let base = !o.flag("no-baselines");
    Ok(match name {
        "latency" => {
            let d = latency::Cfg::default();
            let cfg = latency::Cfg {
                pairs: o.num("pairs", d.pairs)?,
                rate: o.num("rate", d.rate)?,
                duration: o.secs("duration", d.duration)?,
                warmup: o.secs("warmup", d.warmup)?,
                size: o.num("size", d.size)?,
                drain: d.drain,
                tap: o.flag("tap"),
                baselines: base,
                transport: o.transport()?,
            };
            latency::run(t, &cfg).await?
        }
        "catchup" => {
            let d = catchup::Cfg::default();
            let cfg = catchup::Cfg {
                messages: o.num("messages", d.messages)?,
                senders: o.num("senders", d.senders)?,
                window: d.window,
                repeats: o.num("repeats", d.repeats)?,
                size: o.num("size", d.size)?,
                baselines: base,
            };
            catchup::run(t, &cfg).await?
        }
        "history" => {
            let d = history::Cfg::default();
            let cfg = history::Cfg {
                messages: o.num("messages", d.messages)?,
                queries: o.num("queries", d.queries)?,
                limit: o.num("limit", d.limit)?,
                size: o.num("size", d.size)?,
                window: d.window,
                baselines: base,
            };
            history::run(t, &cfg).await?
        }
        "idle" => {
            let d = idle::Cfg::default();
            let cfg = idle::Cfg {
                conns: o.num("conns", d.conns)?,
                users: o.num("users", d.users)?,
                per_process: o.num("per-process", d.per_process)?,
                ping: o.secs("ping", d.ping)?,
                settle: d.settle,
                cpu_window: o.secs("cpu-window", d.cpu_window)?,
                concurrency: o.num("concurrency", d.concurrency)?,
                baselines: base,
                exe: if o.flag("in-process") { None } else { d.exe },
                transport: o.transport()?,
            };
            idle::run(t, &cfg).await?
        }
        "storm" => {
            let d = storm::Cfg::default();
            let cfg = storm::Cfg {
                clients: o.num("clients", d.clients)?,
                devices_per_user: o.num("devices-per-user", d.devices_per_user)?,
                missed: o.num("missed", d.missed)?,
                concurrency: d.concurrency,
                baselines: base,
            };
            storm::run(t, &cfg).await?
        }
        "fanout" => {
            let d = fanout::Cfg::default();
            let cfg = fanout::Cfg {
                groups: o.num("groups", d.groups)?,
                members: o.num("members", d.members)?,
                devices: o.num("devices", d.devices)?,
                senders_per_group: o.num("senders", d.senders_per_group)?,
                rate: o.num("rate", d.rate)?,
                duration: o.secs("duration", d.duration)?,
                warmup: o.secs("warmup", d.warmup)?,
                size: o.num("size", d.size)?,
                drain: d.drain,
                ceiling_msgs: o.num("ceiling-msgs", d.ceiling_msgs)?,
                tap: o.flag("tap"),
                baselines: base,
            };
            fanout::run(t, &cfg).await?
        }
        "room" => {
            let d = room::Cfg::default();
            let cfg = room::Cfg {
                viewers: o.num("viewers", d.viewers)?,
                users: o.num("users", d.users)?,
                rate: o.num("rate", d.rate)?,
                duration: o.secs("duration", d.duration)?,
                warmup: o.secs("warmup", d.warmup)?,
                size: o.num("size", d.size)?,
                ceiling_msgs: o.num("ceiling-msgs", d.ceiling_msgs)?,
                baselines: base,
            };
            room::run(t, &cfg).await?
        }
        "heartbeat" => {
            let d = heartbeat::Cfg::default();
            let rates = o.nums("rates", vec![])?;
            let cfg = heartbeat::Cfg {
                conns: o.num("conns", d.conns)?,
                users: o.num("users", d.users)?,
                rates,
                interval: o.secs("interval", d.interval)?,
                duration: o.secs("duration", d.duration)?,
                warmup: o.secs("warmup", d.warmup)?,
                drain: d.drain,
                concurrency: d.concurrency,
                transport: o.transport()?,
                baselines: base,
            };
            heartbeat::run(t, &cfg).await?
        }
        "index" => {
            let d = index::Cfg::default();
            let cfg = index::Cfg {
                messages: o.num("messages", d.messages)?,
                senders: o.num("senders", d.senders)?,
                window: o.num("window", d.window)?,
                drain: o.secs("drain", d.drain)?,
            };
            index::run(t, &cfg).await?
        }
        "fsync" => {
            let d = fsync::Cfg::default();
            let batch_sizes = o.nums("batch-sizes", d.batch_sizes.clone())?;
            let cfg = fsync::Cfg {
                fsyncs: o.num("fsyncs", d.fsyncs)?,
                dir: o.raw("dir").map(PathBuf::from).unwrap_or(d.dir),
                batch_sizes,
                window: o.num("window", d.window)?,
                duration: o.secs("duration", d.duration)?,
                size: o.num("size", d.size)?,
            };
            fsync::run(t, &cfg).await?
        }
        other => bail!("unknown scenario {other:?} (see --help)"),
    })
}

/// Where the machine is, for the JSON.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo.lines().find_map(|l| l.strip_prefix("model name")?.split(':').nth(1)).unwrap_or("").trim();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    serde_json::json!({
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu_model": model,
        "kernel": kernel.trim(),
        "unix_time": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs(),
    })
}

async fn scenario(name: &str, o: &mut Opts, out: &Path) -> Result<Report> {
    o.scenario = name.to_owned();
    let external = o.all("gateway");
    let mut report = if name == "fsync" && o.raw("nats").is_none() {
        // Only nats-server matters here: no gateway, worker or database.
        eprintln!("chat-bench: fsync: starting nats-server");
        let nats = chat_tests::NatsServer::start()?;
        let t = Target::nats_only(nats.url.clone());
        run_one(name, o, &t).await?
    } else if name == "fsync" {
        let t = Target::nats_only(o.raw("nats").unwrap_or_default().to_owned());
        run_one(name, o, &t).await?
    } else if external.is_empty() {
        let d = StackCfg::default();
        let cfg = StackCfg {
            gateways: o.num("gateways", d.gateways)?,
            workers: o.num("workers", d.workers)?,
            cluster: o.flag("cluster"),
            gateway_bin: o.raw("gateway-bin").map(PathBuf::from).unwrap_or(d.gateway_bin),
            worker_bin: o.raw("worker-bin").map(PathBuf::from).unwrap_or(d.worker_bin),
            env: o
                .all("env")
                .iter()
                .map(|kv| kv.split_once('=').map(|(k, v)| (k.to_owned(), v.to_owned())).context("--env takes K=V"))
                .collect::<Result<_>>()?,
            log_dir: out.join("logs").join(name),
        };
        eprintln!(
            "chat-bench: {name}: starting {}, PostgreSQL, {} gateway(s), {} worker(s)",
            if cfg.cluster { "a 3-node nats-server cluster" } else { "nats-server" },
            cfg.gateways,
            cfg.workers
        );
        let mut stack = OwnStack::start(&cfg).await?;
        let r = run_one(name, o, &stack.target()).await;
        let alive = stack.check_alive();
        let r = r?;
        alive?;
        r
    } else {
        let quic: Vec<String> = o.all("quic");
        let prints: Vec<String> = o.all("quic-fingerprint");
        anyhow::ensure!(quic.len() == prints.len(), "give a --quic-fingerprint per --quic");
        let t = Target {
            quic: quic.into_iter().zip(prints).map(|(addr, fingerprint)| QuicTarget { addr, fingerprint }).collect(),
            gateways: external,
            nats_url: o.raw("nats").context("--gateway needs --nats URL")?.to_owned(),
            gateway_pids: o.all("gateway-pid").iter().map(|p| p.parse()).collect::<Result<_, _>>()?,
            nats_pid: None,
            token_secret: o.raw("token-secret").map(|s| s.as_bytes().to_vec()),
            other_pids: vec![],
        };
        run_one(name, o, &t).await?
    };
    if let serde_json::Value::Object(p) = &mut report.params {
        p.insert("machine".into(), machine());
        let conf = std::env::var("CHAT_NATS_TEST_CONF").unwrap_or_else(|_| "nats/conf/test.conf".into());
        p.insert("nats_conf".into(), conf.into());
    }
    println!("{}", report.table());
    report.write_json(out)?;
    Ok(report)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(name) = args.first().cloned() else {
        print!("{HELP}");
        return Ok(());
    };
    let mut o = Opts::parse(&args[1..])?;
    if o.flag("help") || name == "--help" || name == "-h" || name == "help" {
        print!("{HELP}");
        return Ok(());
    }
    if name == "idle-client" {
        let args = idle::ChildArgs {
            addr: o.raw("addr"),
            quic: o.raw("quic"),
            fingerprint: o.raw("fingerprint"),
            tokens_file: o.raw("tokens"),
            nats: o.raw("nats"),
            count: o.num("count", 0)?,
            ping: o.secs("ping-secs", Duration::from_secs(30))?,
            concurrency: o.num("concurrency", 64)?,
        };
        return idle::child_main(args).await;
    }
    let out = PathBuf::from(o.raw("out").unwrap_or("target/bench"));
    if name == "all" {
        let mut reports = vec![];
        let mut failed = vec![];
        for s in SCENARIOS {
            match scenario(s, &mut o, &out).await {
                Ok(r) => reports.push(r),
                Err(e) => {
                    eprintln!("chat-bench: {s} failed: {e:#}");
                    failed.push(s);
                }
            }
        }
        std::fs::write(out.join("all.json"), serde_json::to_vec_pretty(&reports)?)?;
        if !failed.is_empty() {
            bail!("scenarios failed: {}", failed.join(", "));
        }
        return Ok(());
    }
    scenario(&name, &mut o, &out).await.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option `--help` shows without a value is parsed as a flag (a
    /// flag read as `--key value` swallowed the next option or failed).
    #[test]
    fn every_documented_flag_takes_no_value() {
        let flags: Vec<&str> = HELP
            .lines()
            .filter_map(|l| l.trim_start().strip_prefix("--"))
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            // A value is shown as a placeholder (`N`, `PATH`, `K=V`) or a
            // default number; anything else after a flag is its description.
            .filter(|w| {
                w.len() == 1
                    || !(w[1].chars().all(|c| c.is_ascii_uppercase() || c == '=')
                        || w[1].chars().all(|c| c.is_ascii_digit()))
            })
            .map(|w| w[0])
            .collect();
        assert!(flags.contains(&"tap"), "{flags:?}");
        for f in &flags {
            let o = Opts::parse(&[format!("--{f}"), "--rate".into(), "7".into()]).unwrap();
            assert!(o.flag(f), "--{f} is not parsed as a flag");
            assert_eq!(o.raw("rate"), Some("7"), "--{f} swallowed the next option");
        }
    }
}
