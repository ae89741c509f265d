//! `chat`: a command-line client.
//!
//! ```text
//! chat signup <username> <password>
//! chat login <username> <password> [device]
//! chat send <user_id> <text...>
//! chat listen            (sync from the saved cursor, then print live)
//! chat history <user_id|conv> [before_id] [limit]
//! ```
//! Global options for `send` and `listen`: `--transport ws|quic` (default
//! `ws`); with QUIC, `--quic host:port` (default `127.0.0.1:8443`) and
//! `--fingerprint <sha256 hex>` (as the gateway prints it) or `--ca <pem>`.
//! The server is `CHAT_SERVER` (default `127.0.0.1:8080`; a comma-separated
//! list of gateways is asked for edges in turn); the login and the cursor
//! are kept in `CHAT_CLI_STATE` (default `~/.chat-cli.json`). `send` and
//! `listen` survive their gateway: they reconnect with backoff and jitter
//! to the next edge from discovery (`GET /v1/edges`), resume from the
//! cursor and send an unacked message again with its `cid`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use chat_client::quic::Trust;
use chat_client::{direct_conv, Event, Failover, FailoverConfig, Http, Transport};
use serde_json::{json, Value};

fn state_path() -> PathBuf {
    std::env::var_os("CHAT_CLI_STATE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
        PathBuf::from(home).join(".chat-cli.json")
    })
}

fn load() -> Result<Value> {
    let p = state_path();
    let text =
        std::fs::read_to_string(&p).with_context(|| format!("not logged in (no {}): run `chat login`", p.display()))?;
    Ok(serde_json::from_str(&text)?)
}

fn save(v: &Value) -> Result<()> {
    std::fs::write(state_path(), serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn print_msg(m: &Value) {
    println!(
        "[{}] {} {}: {}",
        m["conv"].as_str().unwrap_or(""),
        m["id"].as_str().unwrap_or(""),
        m["from"].as_str().unwrap_or(""),
        m["body"].as_str().unwrap_or("")
    );
}

/// Takes `--transport`, `--quic`, `--fingerprint` and `--ca` out of the
/// arguments.
fn parse_transport(args: Vec<String>) -> Result<(Vec<String>, Transport)> {
    let (mut rest, mut kind, mut quic, mut trust) = (Vec::new(), "ws".to_string(), "127.0.0.1:8443".to_string(), None);
    let mut it = args.into_iter();
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "--transport" => kind = value("--transport")?,
            "--quic" => quic = value("--quic")?,
            "--fingerprint" => trust = Some(Trust::Fingerprint(value("--fingerprint")?)),
            "--ca" => trust = Some(Trust::CaFile(value("--ca")?.into())),
            _ => rest.push(a),
        }
    }
    let transport = match kind.as_str() {
        "ws" => Transport::Ws,
        "quic" => Transport::Quic {
            addr: quic,
            trust: trust.context("--transport quic needs --fingerprint <sha256> or --ca <pem file>")?,
        },
        other => bail!("unknown transport {other:?}: use ws or quic"),
    };
    Ok((rest, transport))
}

/// A session that moves between gateways by itself: the seeds of
/// `CHAT_SERVER`, QUIC when asked for.
fn failover(seeds: &[String], transport: &Transport, st: &Value, cursor: Option<String>) -> Failover {
    let mut cfg = FailoverConfig::new(seeds.to_vec());
    if let Transport::Quic { trust, .. } = transport {
        cfg.quic = Some(trust.clone());
    }
    Failover::new(cfg, st["token"].as_str().unwrap_or_default(), cursor)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let (args, transport) = parse_transport(std::env::args().skip(1).collect())?;
    let server = std::env::var("CHAT_SERVER").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let seeds: Vec<String> = server.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
    let http = Http::new(seeds.first().map(String::as_str).unwrap_or("127.0.0.1:8080"));
    let arg = |i: usize, name: &str| args.get(i).cloned().with_context(|| format!("missing <{name}>"));
    match args.first().map(String::as_str) {
        Some("signup") => {
            let id = http.signup(&arg(1, "username")?, &arg(2, "password")?).await?;
            println!("user_id {id}");
        }
        Some("login") => {
            let device = args.get(3).cloned().unwrap_or_else(|| "cli".into());
            let l = http.login(&arg(1, "username")?, &arg(2, "password")?, &device).await?;
            save(
                &json!({"server": server, "token": l.token, "user_id": l.user_id, "device_id": l.device_id, "cursor": null}),
            )?;
            println!("logged in as user {} on device {}", l.user_id, l.device_id);
        }
        Some("send") => {
            let st = load()?;
            let to = arg(1, "user_id")?;
            let body = args[2..].join(" ");
            if body.is_empty() {
                bail!("missing <text>");
            }
            let mut session = failover(&seeds, &transport, &st, None);
            let cid = format!("cli-{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos());
            let frame = json!({"type": "send", "cid": cid, "to": {"user": to}, "body": body});
            session.send(&cid, frame).await?;
            // Until the ack, across reconnects (the same cid every time).
            let deadline = std::time::Duration::from_secs(60);
            let ack = tokio::time::timeout(deadline, async {
                loop {
                    match session.next().await? {
                        Event::Ack(a) => return Ok(a),
                        Event::Refused(e) => bail!("refused: {} {}", e["code"], e["message"]),
                        Event::Moved { from, to, code, .. } => eprintln!("-- moved from {from} to {to} (close {code})"),
                        _ => {}
                    }
                }
            })
            .await
            .context("no ack within 60 s")??;
            println!("sent {} in {}", ack["id"].as_str().unwrap_or(""), ack["conv"].as_str().unwrap_or(""));
            session.close().await;
        }
        Some("listen") => {
            let mut st = load()?;
            let cursor = st["cursor"].as_str().map(str::to_owned);
            let mut session = failover(&seeds, &transport, &st, cursor);
            // Reconnects by itself (backoff, next edge from discovery,
            // resume from the cursor); pings after 5 s of silence.
            loop {
                match session.next().await? {
                    Event::Msg(m) => {
                        print_msg(&m);
                        st["cursor"] = m["cursor"].clone();
                        save(&st)?;
                    }
                    Event::Other(v) if v["type"] == "synced" => {
                        st["cursor"] = v["cursor"].clone();
                        save(&st)?;
                        println!("-- synced; listening (Ctrl-C to stop)");
                    }
                    Event::Moved { from, to, code, took } => {
                        eprintln!("-- moved from {from} to {to} (close {code}) in {} ms", took.as_millis())
                    }
                    _ => {}
                }
            }
        }
        Some("history") => {
            let st = load()?;
            let target = arg(1, "user_id|conv")?;
            let conv = if target.parse::<i64>().is_ok() {
                direct_conv(st["user_id"].as_str().unwrap_or("0"), &target)
            } else {
                target
            };
            let mut q = format!("limit={}", args.get(3).map(String::as_str).unwrap_or("50"));
            if let Some(b) = args.get(2).filter(|b| b.as_str() != "-") {
                q.push_str(&format!("&before={b}"));
            }
            let page = http.history(st["token"].as_str().unwrap_or_default(), &conv, &q).await?;
            for m in page["messages"].as_array().into_iter().flatten() {
                print_msg(m);
            }
            if page["has_more"] == true {
                println!("-- more before {}", page["messages"][0]["id"].as_str().unwrap_or(""));
            }
        }
        _ => {
            eprintln!("usage: chat signup <username> <password> | login <username> <password> [device] | send <user_id> <text...> | listen | history <user_id|conv> [before_id|-] [limit]");
            std::process::exit(2);
        }
    }
    Ok(())
}
