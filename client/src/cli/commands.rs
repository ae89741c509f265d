//! One function per command. Human output by default, one JSON value per
//! line with `--json`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::{Conn, Event, Failover, FailoverConfig, Http, Method};

use super::args::{arg, Opts};
use super::names::Names;
use super::{state, CliError};

/// Runs `cmd` (its name first).
pub async fn run(o: &Opts, cmd: Vec<String>) -> Result<(), CliError> {
    let (name, args) = (cmd[0].as_str(), &cmd[1..]);
    match name {
        "signup" => signup(o, args).await,
        "login" => login(o, args).await,
        "logout" => logout(o).await,
        "send" => send(o, args).await,
        "edit" => change(o, args, true).await,
        "delete" => change(o, args, false).await,
        "react" => react(o, args).await,
        "listen" => listen(o).await,
        "history" => history(o, args).await,
        "conversations" => conversations(o).await,
        "search" => search(o, args).await,
        "read" => read(o, args).await,
        "group" => group(o, args).await,
        "friends" => friends(o, args).await,
        "room" => room(o, args).await,
        other => Err(CliError::Usage(format!("unknown command {other:?}"))),
    }
}

fn out(o: &Opts, v: &Value, human: impl FnOnce() -> String) {
    if o.json {
        println!("{v}");
    } else {
        println!("{}", human());
    }
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// The saved login and a resolver for it.
fn session(o: &Opts) -> Result<(Value, Names), CliError> {
    let st = state::load()?;
    let names = Names::new(&o.server, s(&st["token"]), s(&st["user_id"]), st["username"].as_str());
    Ok((st, names))
}

async fn signup(o: &Opts, a: &[String]) -> Result<(), CliError> {
    let (user, pass) = (arg(a, 0, "username")?, arg(a, 1, "password")?);
    let id = Http::new(&o.server).signup(&user, &pass).await.map_err(|e| CliError::from_client(e, &o.server))?;
    out(o, &json!({"user_id": id, "username": user.to_lowercase()}), || {
        format!("signed up {} as user {id}", user.to_lowercase())
    });
    Ok(())
}

async fn login(o: &Opts, a: &[String]) -> Result<(), CliError> {
    let (user, pass) = (arg(a, 0, "username")?, arg(a, 1, "password")?);
    let device = a.get(2).cloned().unwrap_or_else(|| "cli".into());
    let l = Http::new(&o.server).login(&user, &pass, &device).await.map_err(|e| match e {
        crate::ClientError::Api { status: 401, .. } => CliError::Refused("wrong username or password".into()),
        e => CliError::from_client(e, &o.server),
    })?;
    let username = user.to_lowercase();
    state::save(&json!({"server": o.server, "token": l.token, "user_id": l.user_id, "username": username,
        "device_id": l.device_id, "cursor": null, "read": {}}))?;
    out(o, &json!({"user_id": l.user_id, "username": username, "device_id": l.device_id}), || {
        format!("logged in as {username} (user {}) on device {}", l.user_id, l.device_id)
    });
    Ok(())
}

async fn logout(o: &Opts) -> Result<(), CliError> {
    let (_, names) = session(o)?;
    let v = names.call(Method::POST, "/v1/logout", None).await?;
    state::clear()?;
    out(o, &v, || format!("logged out device {}", s(&v["logged_out"])));
    Ok(())
}

async fn connect(o: &Opts, names: &Names, token: &str) -> Result<Conn, CliError> {
    Conn::connect_with(&o.transport, &o.server, token).await.map_err(|e| names.err(e))
}

/// A session that survives its gateway (`crate::failover`): reconnects with
/// backoff and jitter to the next edge from discovery, resumes from the
/// cursor and resends an unacked send with its `cid`. The first connection
/// is checked here, so a wrong token or a server that is down is a clear
/// error at once rather than endless retries.
async fn session_for(o: &Opts, names: &Names, token: &str, cursor: Option<String>) -> Result<Failover, CliError> {
    connect(o, names, token).await?.close().await;
    let mut cfg = FailoverConfig::new(o.seeds.clone());
    if let crate::Transport::Quic { trust, .. } = &o.transport {
        cfg.quic = Some(trust.clone());
    }
    Ok(Failover::new(cfg, token, cursor))
}

async fn send(o: &Opts, a: &[String]) -> Result<(), CliError> {
    let mut a = a.to_vec();
    let reply_to = a.iter().position(|x| x == "--reply-to").map(|i| a.drain(i..i + 2).nth(1).unwrap_or_default());
    let to = arg(&a, 0, "to")?;
    let body = a[1..].join(" ");
    if body.trim().is_empty() {
        return Err(CliError::Usage("missing <text>".into()));
    }
    let (st, mut names) = session(o)?;
    let target = names.target(&to).await?;
    let cid = new_cid();
    let mut frame = json!({"type": "send", "cid": cid, "to": target.to, "body": body});
    if let Some(id) = reply_to {
        frame["reply_to"] = json!(id);
    }
    let ack = until_ack(o, &names, s(&st["token"]), &cid, frame).await?;
    let v = json!({"id": ack["id"], "conv": ack["conv"], "title": target.title, "ts": ack["ts"]});
    out(o, &v, || format!("sent {} to {} ({})", s(&ack["id"]), target.title, s(&ack["conv"])));
    Ok(())
}

fn new_cid() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("cli-{nanos}")
}

/// Sends `frame` (a send, edit or delete with `cid`) and waits for its
/// ack, across moves between gateways (the same cid each time).
async fn until_ack(o: &Opts, names: &Names, token: &str, cid: &str, frame: Value) -> Result<Value, CliError> {
    let mut session = session_for(o, names, token, None).await?;
    session.send(cid, frame).await.map_err(|e| names.err(e))?;
    let wait = async {
        loop {
            match session.next().await.map_err(|e| names.err(e))? {
                Event::Ack(a) if a["cid"] == cid => return Ok(a),
                Event::Refused(e) => {
                    return Err(CliError::Refused(format!("{}: {}", s(&e["code"]), s(&e["message"]))));
                }
                Event::Moved { from, to, code, .. } => eprintln!("-- moved from {from} to {to} (close {code})"),
                _ => {}
            }
        }
    };
    let ack = tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .map_err(|_| CliError::Refused("no ack within 60 s; run the same command again later".into()))??;
    session.close().await;
    Ok(ack)
}

/// `edit <conversation> <id> <text...>` and `delete <conversation> <id>`.
async fn change(o: &Opts, a: &[String], edit: bool) -> Result<(), CliError> {
    let (to, id) = (arg(a, 0, "conversation")?, arg(a, 1, "id")?);
    let body = a.get(2..).map(|b| b.join(" ")).unwrap_or_default();
    if edit && body.trim().is_empty() {
        return Err(CliError::Usage("missing <text>".into()));
    }
    let (st, mut names) = session(o)?;
    let target = names.target(&to).await?;
    let cid = new_cid();
    let frame = if edit {
        json!({"type": "edit", "cid": cid, "conv": target.conv, "id": id, "body": body})
    } else {
        json!({"type": "delete", "cid": cid, "conv": target.conv, "id": id})
    };
    let ack = until_ack(o, &names, s(&st["token"]), &cid, frame).await?;
    let what = if edit { "edited" } else { "deleted" };
    let v = json!({what: id, "conv": target.conv, "event": ack["id"], "ts": ack["ts"]});
    out(o, &v, || format!("{what} {id} in {} ({})", target.title, target.conv));
    Ok(())
}

/// `react <conversation> <id> <emoji> [--remove]`.
async fn react(o: &Opts, a: &[String]) -> Result<(), CliError> {
    let remove = a.iter().any(|x| x == "--remove");
    let a: Vec<String> = a.iter().filter(|x| *x != "--remove").cloned().collect();
    let (to, id, emoji) = (arg(&a, 0, "conversation")?, arg(&a, 1, "id")?, arg(&a, 2, "emoji")?);
    let (st, mut names) = session(o)?;
    let target = names.target(&to).await?;
    let cid = new_cid();
    let op = if remove { "remove" } else { "add" };
    let frame = json!({"type": "react", "cid": cid, "conv": target.conv, "id": id, "emoji": emoji, "op": op});
    let ack = until_ack(o, &names, s(&st["token"]), &cid, frame).await?;
    let what = if remove { "removed" } else { "reacted" };
    let v = json!({what: emoji, "id": id, "conv": target.conv, "event": ack["id"], "ts": ack["ts"]});
    out(o, &v, || format!("{what} {emoji} on {id} in {} ({})", target.title, target.conv));
    Ok(())
}

/// A system message told with names ("alice added carol").
async fn system_text(names: &mut Names, m: &Value) -> String {
    let event = &m["event"];
    if !event.is_object() {
        return s(&m["body"]).to_owned();
    }
    let actor = names.name_of(s(&event["actor"])).await;
    let user = match event["user"].as_str() {
        Some(u) => names.name_of(u).await,
        None => String::new(),
    };
    match s(&event["op"]) {
        "created" => format!("{actor} created the group"),
        "added" => format!("{actor} added {user}"),
        "removed" => format!("{actor} removed {user}"),
        "left" => format!("{user} left"),
        "role" => format!("{actor} changed the role of {user}"),
        _ => s(&m["body"]).to_owned(),
    }
}

/// A message as printed: `[title] name: body`.
async fn print_msg(o: &Opts, names: &mut Names, m: &Value) {
    let conv = s(&m["conv"]).to_owned();
    let title = names.title_of(&conv).await;
    let from = names.name_of(s(&m["from"])).await;
    let mut v = m.clone();
    v["title"] = json!(title);
    v["from_name"] = json!(from);
    if let Some(o) = v.as_object_mut() {
        o.remove("type");
    }
    let system = if m["kind"] == "system" { system_text(names, m).await } else { String::new() };
    out(o, &v, || {
        if m["kind"] == "system" {
            format!("[{title}] * {system}")
        } else {
            format!("[{title}] {from}: {}", s(&m["body"]))
        }
    });
}

async fn listen(o: &Opts) -> Result<(), CliError> {
    let (st, mut names) = session(o)?;
    let cursor = st["cursor"].as_str().map(str::to_owned);
    // Syncs from the saved cursor, then live; moves to another gateway on
    // its own (backoff, next edge from discovery, resume from the cursor)
    // and pings after 5 s of silence.
    let mut session = session_for(o, &names, s(&st["token"]), cursor).await?;
    loop {
        match session.next().await.map_err(|e| names.err(e))? {
            Event::Msg(m) => {
                // Saved before it is shown: whoever sees the line (a
                // script, the next command) finds it read and the cursor
                // past it.
                state::update(|st| {
                    state::mark_read(st, s(&m["conv"]), s(&m["id"]));
                    st["cursor"] = m["cursor"].clone();
                })?;
                print_msg(o, &mut names, &m).await;
            }
            Event::Other(v) if v["type"] == "synced" => {
                state::update(|st| st["cursor"] = v["cursor"].clone())?;
                if o.json {
                    println!("{}", json!({"synced": v["cursor"]}));
                } else {
                    println!("-- synced; listening (Ctrl-C to stop)");
                }
            }
            Event::Moved { from, to, code, took } => {
                eprintln!("-- moved from {from} to {to} (close {code}) in {} ms", took.as_millis())
            }
            _ => {}
        }
    }
}

async fn history(o: &Opts, a: &[String]) -> Result<(), CliError> {
    let to = arg(a, 0, "to")?;
    let (_, mut names) = session(o)?;
    let conv = names.target(&to).await?.conv;
    let limit = a.get(2).map(String::as_str).unwrap_or("50");
    let mut path = format!("/v1/conversations/{conv}/messages?limit={limit}");
    if let Some(b) = a.get(1).filter(|b| b.as_str() != "-") {
        path.push_str(&format!("&before={b}"));
    }
    let page = names.call(Method::GET, &path, None).await?;
    let msgs = page["messages"].as_array().cloned().unwrap_or_default();
    for m in &msgs {
        print_msg(o, &mut names, m).await;
    }
    state::update(|st| {
        for m in &msgs {
            state::mark_read(st, &conv, s(&m["id"]));
        }
    })?;
    if page["has_more"] == true {
        let first = s(&msgs[0]["id"]);
        if o.json {
            println!("{}", json!({"has_more": true, "before": first}));
        } else {
            println!("-- more before {first}: chat history {to} {first}");
        }
    }
    Ok(())
}

/// `search <text...>`: the newest 20 hits, matches marked with `[` `]`.
async fn search(o: &Opts, a: &[String]) -> Result<(), CliError> {
    let q = a.join(" ");
    if q.chars().count() < 2 {
        return Err(CliError::Usage("search needs at least 2 characters".into()));
    }
    let (_, mut names) = session(o)?;
    let page = names.call(Method::GET, &format!("/v1/search?q={}", crate::encode_query(&q)), None).await?;
    let hits = page["results"].as_array().cloned().unwrap_or_default();
    if hits.is_empty() && !o.json {
        println!("no messages found");
    }
    for h in &hits {
        let title = names.title_of(s(&h["conv"])).await;
        let from = names.name_of(s(&h["from"])).await;
        let mut v = h.clone();
        v["title"] = json!(title);
        v["from_name"] = json!(from);
        out(o, &v, || format!("[{title}] {from}: {}", marked(s(&h["body"]), &h["highlights"])));
    }
    Ok(())
}

/// `body` with every highlighted `[start, end)` character range in brackets.
fn marked(body: &str, highlights: &Value) -> String {
    let ranges: Vec<(u64, u64)> = highlights
        .as_array()
        .map(|a| a.iter().filter_map(|r| Some((r[0].as_u64()?, r[1].as_u64()?))).collect())
        .unwrap_or_default();
    let mut out = String::new();
    for (i, c) in body.chars().enumerate() {
        let i = i as u64;
        if ranges.iter().any(|r| r.0 == i) {
            out.push('[');
        }
        out.push(c);
        if ranges.iter().any(|r| r.1 == i + 1) {
            out.push(']');
        }
    }
    out
}

/// `read <to> <message id>`: marks the conversation read up to the
/// message on the server (every device of the user follows).
async fn read(o: &Opts, a: &[String]) -> Result<(), CliError> {
    let to = arg(a, 0, "to")?;
    let id = arg(a, 1, "message id")?;
    let (mut st, mut names) = session(o)?;
    let target = names.target(&to).await?;
    let mut conn = connect(o, &names, s(&st["token"])).await?;
    let answer = conn.read_up_to(&target.conv, &id).await.map_err(|e| names.err(e))?;
    conn.close().await;
    state::mark_read(&mut st, &target.conv, s(&answer["up_to"]));
    state::save(&st)?;
    let v = json!({"conv": target.conv, "up_to": answer["up_to"], "unread": answer["unread"]});
    out(o, &v, || {
        format!(
            "read {} up to {} ({} unread)",
            target.title,
            s(&answer["up_to"]),
            answer["unread"].as_u64().unwrap_or(0)
        )
    });
    Ok(())
}

/// Unread messages: the server's exact count (`unread` in the list), else
/// those from others after the local read position, up to 100 ("100+").
async fn unread(names: &Names, st: &Value, c: &Value) -> Result<(u64, bool), CliError> {
    let conv = s(&c["conv"]);
    let read = state::read_pos(st, conv);
    let last = c["last_message"]["id"].as_str().and_then(|i| i.parse::<u64>().ok()).unwrap_or(0);
    if last <= read.parse::<u64>().unwrap_or(0) {
        return Ok((0, false)); // shown here by `history`
    }
    if let Some(n) = c["unread"].as_u64() {
        return Ok((n, false));
    }
    let mut path = format!("/v1/conversations/{conv}/messages?limit=100");
    if read != "0" {
        path.push_str(&format!("&after={read}"));
    }
    let page = names.call(Method::GET, &path, None).await?;
    let n = page["messages"].as_array().into_iter().flatten().filter(|m| m["from"] != names.me.as_str()).count();
    Ok((n as u64, page["has_more"] == true || n == 100))
}

async fn conversations(o: &Opts) -> Result<(), CliError> {
    let (st, mut names) = session(o)?;
    let list = names.conversations().await?;
    let mut rows = Vec::new();
    for c in &list {
        let (n, more) = unread(&names, &st, c).await?;
        let last = &c["last_message"];
        let from = if last.is_null() { String::new() } else { names.name_of(s(&last["from"])).await };
        let body =
            if last["kind"] == "system" { system_text(&mut names, last).await } else { s(&last["body"]).to_owned() };
        rows.push(json!({"conv": c["conv"], "type": c["type"], "title": c["title"], "unread": n, "unread_more": more,
            // Mentions among the unread (none once read here, as unread).
            "mentions": if n == 0 { 0 } else { c["mentions"].as_u64().unwrap_or(0) },
            "last_message": if last.is_null() { Value::Null } else { json!({"id": last["id"], "from": last["from"], "from_name": from, "kind": last["kind"], "body": body, "ts": last["ts"]}) }}));
    }
    if o.json {
        println!("{}", json!({"conversations": rows}));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no conversations yet: chat send <user> <text>");
    }
    for r in &rows {
        let badge = match (r["unread"].as_u64().unwrap_or(0), r["unread_more"] == true) {
            (0, _) => String::new(),
            (n, true) => format!(" ({n}+ unread)"),
            (n, false) => format!(" ({n} unread)"),
        };
        let badge = match r["mentions"].as_u64().unwrap_or(0) {
            0 => badge,
            m => format!("{badge} (@{m})"),
        };
        let l = &r["last_message"];
        let last = match (l.is_null(), l["kind"] == "system") {
            (true, _) => "no messages".to_owned(),
            (false, true) => format!("* {}", s(&l["body"])),
            (false, false) => format!("{}: {}", s(&l["from_name"]), s(&l["body"])),
        };
        println!("{:<10} {}{badge}  {last}", s(&r["conv"]), s(&r["title"]));
    }
    Ok(())
}

async fn group(o: &Opts, a: &[String]) -> Result<(), CliError> {
    let (_, mut names) = session(o)?;
    let sub = arg(a, 0, "create|add|remove|leave|list|show")?;
    match sub.as_str() {
        "create" => {
            let name = arg(a, 1, "name")?;
            let mut ids = Vec::new();
            for who in &a[2..] {
                ids.push(names.user(who).await?.0);
            }
            let v = names.call(Method::POST, "/v1/groups", Some(json!({"name": name, "members": ids}))).await?;
            out(o, &v, || {
                format!(
                    "created group {} ({}) with {} members",
                    s(&v["name"]),
                    s(&v["conv"]),
                    v["members"].as_array().map_or(0, Vec::len)
                )
            });
        }
        "add" => {
            let (gid, gname) = names.group(&arg(a, 1, "group")?).await?;
            if a.len() < 3 {
                return Err(CliError::Usage("missing <user>".into()));
            }
            for who in &a[2..] {
                let (uid, uname) = names.user(who).await?;
                let v = names
                    .call(Method::POST, &format!("/v1/groups/{gid}/members"), Some(json!({"user_id": uid})))
                    .await?;
                out(o, &v, || format!("added {uname} to {gname}"));
            }
        }
        "remove" | "leave" => {
            let (gid, gname) = names.group(&arg(a, 1, "group")?).await?;
            let (uid, uname) = if sub == "leave" {
                (names.me.clone(), "you".to_owned())
            } else {
                names.user(&arg(a, 2, "user")?).await?
            };
            let v = names.call(Method::DELETE, &format!("/v1/groups/{gid}/members/{uid}"), None).await?;
            out(
                o,
                &v,
                || if sub == "leave" { format!("left {gname}") } else { format!("removed {uname} from {gname}") },
            );
        }
        "list" => {
            let v = names.call(Method::GET, "/v1/groups", None).await?;
            out(o, &v, || {
                let rows: Vec<String> = v["groups"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|g| {
                        format!(
                            "{:<8} {} ({} members, you are {})",
                            s(&g["conv"]),
                            s(&g["name"]),
                            g["members_count"],
                            s(&g["role"])
                        )
                    })
                    .collect();
                if rows.is_empty() {
                    "no groups: chat group create <name> [user...]".into()
                } else {
                    rows.join("\n")
                }
            });
        }
        "show" => {
            let (gid, _) = names.group(&arg(a, 1, "group")?).await?;
            let v = names.call(Method::GET, &format!("/v1/groups/{gid}"), None).await?;
            out(o, &v, || {
                let mut lines = vec![format!("{} ({})", s(&v["name"]), s(&v["conv"]))];
                for m in v["members"].as_array().into_iter().flatten() {
                    lines.push(format!("  {} ({})", s(&m["username"]), s(&m["role"])));
                }
                lines.join("\n")
            });
        }
        other => {
            return Err(CliError::Usage(format!(
                "unknown group command {other:?}: create, add, remove, leave, list or show"
            )))
        }
    }
    Ok(())
}

async fn friends(o: &Opts, a: &[String]) -> Result<(), CliError> {
    let (_, mut names) = session(o)?;
    let sub = arg(a, 0, "add|remove|list")?;
    match sub.as_str() {
        "add" | "remove" => {
            let (uid, uname) = names.user(&arg(a, 1, "user")?).await?;
            let method = if sub == "add" { Method::PUT } else { Method::DELETE };
            let v = names.call(method, &format!("/v1/friends/{uid}"), None).await?;
            out(o, &v, || match s(&v["status"]) {
                "friends" => format!("you and {uname} are friends"),
                "requested" => format!("friend request sent to {uname}"),
                _ => format!("{uname} is not your friend"),
            });
        }
        "list" => {
            let v = names.call(Method::GET, "/v1/friends", None).await?;
            out(o, &v, || {
                let mut lines = Vec::new();
                for f in v["friends"].as_array().into_iter().flatten() {
                    lines.push(format!("{} ({})", s(&f["username"]), s(&f["status"])));
                }
                for f in v["incoming"].as_array().into_iter().flatten() {
                    lines.push(format!(
                        "{} wants to be friends: chat friends add {}",
                        s(&f["username"]),
                        s(&f["username"])
                    ));
                }
                for f in v["outgoing"].as_array().into_iter().flatten() {
                    lines.push(format!("{} (request sent)", s(&f["username"])));
                }
                if lines.is_empty() {
                    "no friends yet: chat friends add <user>".into()
                } else {
                    lines.join("\n")
                }
            });
        }
        other => return Err(CliError::Usage(format!("unknown friends command {other:?}: add, remove or list"))),
    }
    Ok(())
}

/// `room create <title...> | show <room> | join <room> | send <room> <text...>`.
async fn room(o: &Opts, a: &[String]) -> Result<(), CliError> {
    let (st, mut names) = session(o)?;
    let sub = arg(a, 0, "create|show|join|send")?;
    let room_arg = |i: usize| -> Result<String, CliError> {
        let r = arg(a, i, "room")?;
        Ok(r.strip_prefix("r-").unwrap_or(&r).to_owned())
    };
    match sub.as_str() {
        "create" => {
            let title = a[1..].join(" ");
            if title.trim().is_empty() {
                return Err(CliError::Usage("missing <title>".into()));
            }
            let v = names.call(Method::POST, "/v1/rooms", Some(json!({"title": title}))).await?;
            out(o, &v, || format!("created room {} ({}) \"{}\"", s(&v["room"]), s(&v["conv"]), s(&v["title"])));
        }
        "show" => {
            let v = names.call(Method::GET, &format!("/v1/rooms/{}", room_arg(1)?), None).await?;
            out(o, &v, || {
                format!(
                    "room {} \"{}\": {} viewers, post {}, join {}",
                    s(&v["room"]),
                    s(&v["title"]),
                    v["viewers"],
                    s(&v["post"]),
                    s(&v["join"])
                )
            });
        }
        "send" => {
            let room = room_arg(1)?;
            let body = a[2..].join(" ");
            if body.trim().is_empty() {
                return Err(CliError::Usage("missing <text>".into()));
            }
            let cid = new_cid();
            let frame = json!({"type": "send", "cid": cid, "to": {"room": room}, "body": body});
            let ack = until_ack(o, &names, s(&st["token"]), &cid, frame).await?;
            let v = json!({"id": ack["id"], "conv": ack["conv"], "ts": ack["ts"]});
            out(o, &v, || format!("sent {} to room {room}", s(&ack["id"])));
        }
        "join" => {
            let room = room_arg(1)?;
            let mut c = connect(o, &names, s(&st["token"])).await?;
            // A room is live: no timeout between its messages.
            c.timeout = Duration::from_secs(365 * 24 * 3600);
            let (backlog, joined) = c.join_room(&room).await.map_err(|e| names.err(e))?;
            for m in &backlog {
                print_msg(o, &mut names, m).await;
            }
            out(o, &joined, || format!("-- joined room {room} ({} viewers); live (Ctrl-C to stop)", joined["viewers"]));
            loop {
                let v = c.next().await.map_err(|e| names.err(e))?;
                match v["type"].as_str() {
                    Some("msg") if v["room"] == room.as_str() => print_msg(o, &mut names, &v).await,
                    Some("gap") => out(o, &v, || format!("-- skipped {} messages (reading too slowly)", v["missed"])),
                    Some("left") => {
                        out(o, &v, || format!("-- left room {room} ({})", s(&v["reason"])));
                        return Ok(());
                    }
                    _ => {}
                }
            }
        }
        other => return Err(CliError::Usage(format!("unknown room command {other:?}"))),
    }
    Ok(())
}
