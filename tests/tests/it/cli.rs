//! The `chat` CLI as a process (`it-chat`, the same code as `chat`)
//! against a real stack: people and groups by name, unread counts, JSON
//! output, and clear errors with exit codes.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::stack::{stack, Stack};

/// A temp dir for state files, removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Result<Dir> {
        let d =
            std::env::temp_dir().join(format!("chat-cli-{name}-{}-{}", std::process::id(), chat_tests::free_port()));
        std::fs::create_dir_all(&d)?;
        Ok(Dir(d))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn command(server: &str, state: &Path, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_it-chat"));
    c.args(args).env("CHAT_SERVER", server).env("CHAT_CLI_STATE", state).stdin(Stdio::null()).kill_on_drop(true);
    c
}

async fn chat_at(server: &str, state: &Path, args: &[&str]) -> Result<Out> {
    let o = tokio::time::timeout(Duration::from_secs(30), command(server, state, args).output())
        .await
        .with_context(|| format!("chat {args:?} did not finish"))??;
    let out = Out {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    ensure!(!out.stderr.contains("panicked") && !out.stderr.contains("backtrace"), "chat {args:?}: {}", out.stderr);
    Ok(out)
}

/// Runs `chat` as the user whose state is `who` in `dir`; fails unless it
/// exits 0.
async fn chat(s: &Stack, dir: &Dir, who: &str, args: &[&str]) -> Result<String> {
    let o = chat_at(&s.addr(0), &dir.0.join(format!("{who}.json")), args).await?;
    ensure!(o.code == 0, "chat {args:?} as {who}: exit {}\n{}{}", o.code, o.stdout, o.stderr);
    Ok(o.stdout)
}

/// Stops a `chat listen` with SIGTERM and waits for it.
async fn term(child: &mut tokio::process::Child) -> Result<()> {
    let pid = child.id().context("already exited")?.to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status()?;
    tokio::time::timeout(Duration::from_secs(10), child.wait()).await.context("listen did not stop")??;
    Ok(())
}

fn json_line(out: &str) -> Result<Value> {
    serde_json::from_str(out.trim()).with_context(|| format!("not one JSON value: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_names_people_groups_and_conversations() -> Result<()> {
    let s = stack().start().await?;
    let dir = Dir::new("names")?;
    for who in ["alice", "bob", "carol"] {
        chat(&s, &dir, who, &["signup", who, "password123"]).await?;
        let out = chat(&s, &dir, who, &["login", who, "password123"]).await?;
        ensure!(out.starts_with(&format!("logged in as {who} (user ")), "{out}");
    }
    // bob listens in the background: catch-up, then live lines with names.
    let mut listen = command(&s.addr(0), &dir.0.join("bob.json"), &["listen"]).stdout(Stdio::piped()).spawn()?;
    let mut lines = BufReader::new(listen.stdout.take().context("stdout")?).lines();
    let mut next_line = async || -> Result<String> {
        let l =
            tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.context("no line from listen")??;
        l.context("listen ended")
    };
    ensure!(next_line().await? == "-- synced; listening (Ctrl-C to stop)");

    let out = chat(&s, &dir, "alice", &["send", "bob", "hello", "bob"]).await?;
    ensure!(out.starts_with("sent ") && out.contains(" to bob (dm-"), "{out}");
    ensure!(next_line().await? == "[alice] alice: hello bob");
    // Numeric ids still work.
    let alice_id = json_line(&chat(&s, &dir, "bob", &["--json", "conversations"]).await?)?["conversations"][0]["conv"]
        .as_str()
        .and_then(|c| c.strip_prefix("dm-"))
        .and_then(|c| c.split('-').next())
        .context("alice's id")?
        .to_owned();
    chat(&s, &dir, "alice", &["send", "bob", "second"]).await?;
    ensure!(next_line().await? == "[alice] alice: second");

    // carol's view: unread counts until history is read.
    chat(&s, &dir, "bob", &["send", "carol", "hi carol"]).await?;
    chat(&s, &dir, "bob", &["send", "carol", "are you there?"]).await?;
    let _ = next_line().await?;
    let _ = next_line().await?;
    let out = chat(&s, &dir, "carol", &["conversations"]).await?;
    ensure!(out.contains("bob (2 unread)  bob: are you there?"), "{out}");
    let out = chat(&s, &dir, "carol", &["history", "bob"]).await?;
    ensure!(out == "[bob] bob: hi carol\n[bob] bob: are you there?\n", "{out}");
    let v = json_line(&chat(&s, &dir, "carol", &["--json", "conversations"]).await?)?;
    ensure!(v["conversations"][0]["unread"] == 0 && v["conversations"][0]["title"] == "bob", "{v}");
    chat(&s, &dir, "carol", &["send", &alice_id, "hi alice, by id"]).await?;
    let out = chat(&s, &dir, "alice", &["history", "carol"]).await?;
    ensure!(out == "[carol] carol: hi alice, by id\n", "{out}");

    // Groups by name.
    let out = chat(&s, &dir, "alice", &["group", "create", "team", "bob"]).await?;
    ensure!(out.starts_with("created group team (g-") && out.contains("with 2 members"), "{out}");
    ensure!(next_line().await? == "[team] * alice created the group");
    chat(&s, &dir, "alice", &["group", "add", "#team", "carol"]).await?;
    ensure!(next_line().await? == "[team] * alice added carol");
    let out = chat(&s, &dir, "bob", &["group", "show", "team"]).await?;
    ensure!(out.contains("alice (owner)") && out.contains("bob (member)") && out.contains("carol (member)"), "{out}");
    chat(&s, &dir, "carol", &["send", "#team", "hi team"]).await?;
    ensure!(next_line().await? == "[team] carol: hi team");
    chat(&s, &dir, "carol", &["send", "#team", "@alice look"]).await?;
    ensure!(next_line().await? == "[team] carol: @alice look");
    let out = chat(&s, &dir, "alice", &["conversations"]).await?;
    ensure!(out.lines().any(|l| l.contains(" team (") && l.ends_with(" unread) (@1)  carol: @alice look")), "{out}");
    chat(&s, &dir, "alice", &["group", "remove", "team", "carol"]).await?;
    ensure!(next_line().await? == "[team] * alice removed carol");
    let out = chat(&s, &dir, "bob", &["conversations"]).await?;
    ensure!(out.contains(" team  * alice removed carol"), "{out}");
    let out = chat(&s, &dir, "bob", &["group", "list"]).await?;
    ensure!(out.contains("team (2 members, you are member)"), "{out}");
    chat(&s, &dir, "bob", &["group", "leave", "team"]).await?;
    let v = json_line(&chat(&s, &dir, "bob", &["--json", "group", "list"]).await?)?;
    ensure!(v["groups"].as_array().is_some_and(Vec::is_empty), "{v}");

    // Friends by name.
    ensure!(chat(&s, &dir, "alice", &["friends", "add", "bob"]).await? == "friend request sent to bob\n");
    ensure!(chat(&s, &dir, "bob", &["friends", "list"]).await?.contains("alice wants to be friends"));
    ensure!(chat(&s, &dir, "bob", &["friends", "add", "alice"]).await? == "you and alice are friends\n");
    let v = json_line(&chat(&s, &dir, "alice", &["--json", "friends", "list"]).await?)?;
    ensure!(v["friends"][0]["username"] == "bob", "{v}");

    // --json on listen: one JSON message per line with names.
    chat(&s, &dir, "alice", &["send", "bob", "json please"]).await?;
    let _ = next_line().await?;
    term(&mut listen).await?;
    let mut json_listen =
        command(&s.addr(0), &dir.0.join("bob.json"), &["--json", "listen"]).stdout(Stdio::piped()).spawn()?;
    let mut jl = BufReader::new(json_listen.stdout.take().context("stdout")?).lines();
    // It catches up from the cursor the first listen saved (which may be
    // before "json please": that one was stopped right after printing it).
    loop {
        let line = tokio::time::timeout(Duration::from_secs(20), jl.next_line()).await??.context("no line")?;
        let v = json_line(&line)?;
        if v["synced"].is_string() {
            break;
        }
        ensure!(v["body"] == "json please" && v["from_name"] == "alice", "{v}");
    }
    chat(&s, &dir, "alice", &["send", "bob", "as json"]).await?;
    let line = tokio::time::timeout(Duration::from_secs(20), jl.next_line()).await??.context("no line")?;
    let v = json_line(&line)?;
    ensure!(
        v["body"] == "as json" && v["from_name"] == "alice" && v["title"] == "alice" && v["cursor"].is_string(),
        "{v}"
    );
    term(&mut json_listen).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_errors_are_one_clear_line_with_an_exit_code() -> Result<()> {
    let s = stack().start().await?;
    let dir = Dir::new("errors")?;
    let (server, state) = (s.addr(0), dir.0.join("alice.json"));
    let o = chat_at(&server, &state, &["send", "bob", "hi"]).await?;
    ensure!(o.code == 3 && o.stderr.starts_with("chat: error: not logged in"), "{}: {}", o.code, o.stderr);
    chat(&s, &dir, "alice", &["signup", "alice", "password123"]).await?;
    let o = chat_at(&server, &state, &["login", "alice", "wrong-password"]).await?;
    ensure!(o.code == 1 && o.stderr.contains("wrong username or password"), "{}: {}", o.code, o.stderr);
    chat(&s, &dir, "alice", &["login", "alice", "password123"]).await?;
    for (args, want) in [
        (&["send", "nobody", "hi"][..], "no user named \"nobody\""),
        (&["send", "999999", "hi"], "no user with id 999999"),
        (&["group", "add", "#nope", "alice"], "you are in no group named \"nope\""),
        (&["friends", "add", "zed"], "no user named \"zed\""),
    ] {
        let o = chat_at(&server, &state, args).await?;
        ensure!(o.code == 4 && o.stderr.contains(want), "{args:?}: {} {}", o.code, o.stderr);
    }
    for args in [&["send", "alice"][..], &["frobnicate"], &["group", "dance"], &["--nope", "listen"], &[]] {
        let o = chat_at(&server, &state, args).await?;
        ensure!(o.code == 2 && o.stderr.starts_with("chat: error: "), "{args:?}: {} {}", o.code, o.stderr);
    }
    let down = format!("127.0.0.1:{}", chat_tests::free_port());
    let o = chat_at(&down, &state, &["conversations"]).await?;
    ensure!(o.code == 5 && o.stderr.contains(&format!("cannot reach the server at {down}")), "{} {}", o.code, o.stderr);
    let o = chat_at(&down, &state, &["send", "alice", "hi"]).await?;
    ensure!(o.code == 5, "{} {}", o.code, o.stderr);
    // Help, for all and per command.
    let o = chat_at(&server, &state, &["--help"]).await?;
    ensure!(o.code == 0 && o.stdout.contains("Commands:") && o.stdout.contains("conversations"), "{}", o.stdout);
    for cmd in ["send", "group", "friends", "history"] {
        let o = chat_at(&server, &state, &[cmd, "--help"]).await?;
        ensure!(o.code == 0 && o.stdout.starts_with(&format!("Usage: chat [options] {cmd}")), "{cmd}: {}", o.stdout);
        let o = chat_at(&server, &state, &["help", cmd]).await?;
        ensure!(o.code == 0 && o.stdout.starts_with(&format!("Usage: chat [options] {cmd}")), "{cmd}: {}", o.stdout);
    }
    // A logged-out device is told to log in again.
    chat(&s, &dir, "alice", &["logout"]).await?;
    let o = chat_at(&server, &state, &["conversations"]).await?;
    ensure!(o.code == 3, "{} {}", o.code, o.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_search_finds_korean_substrings_and_marks_them() -> Result<()> {
    let s = stack().env("CHAT_SEARCH_INDEXER", "true").start().await?;
    let dir = Dir::new("search")?;
    for who in ["alice", "bob"] {
        chat(&s, &dir, who, &["signup", who, "password123"]).await?;
        chat(&s, &dir, who, &["login", who, "password123"]).await?;
    }
    chat(&s, &dir, "alice", &["send", "bob", "오늘회의는취소되었습니다"]).await?;
    let out = chat_tests::wait_for("bob's search to find alice's message", Duration::from_secs(20), || async {
        let out = chat(&s, &dir, "bob", &["search", "회의"]).await.ok()?;
        (out != "no messages found\n").then_some(out)
    })
    .await?;
    ensure!(out == "[alice] alice: 오늘[회의]는취소되었습니다\n", "{out}");
    let v = json_line(&chat(&s, &dir, "alice", &["--json", "search", "취소"]).await?)?;
    ensure!(v["from_name"] == "alice" && v["highlights"] == serde_json::json!([[5, 7]]), "{v}");
    let o = chat_at(&s.addr(0), &dir.0.join("bob.json"), &["search", "x"]).await?;
    ensure!(o.code == 2, "a 1-character search is a usage error: exit {}, {}", o.code, o.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_edit_and_delete_change_a_message_in_history() -> Result<()> {
    let s = stack().start().await?;
    let dir = Dir::new("changes")?;
    for who in ["alice", "bob"] {
        chat(&s, &dir, who, &["signup", who, "password123"]).await?;
        chat(&s, &dir, who, &["login", who, "password123"]).await?;
    }
    let first = json_line(&chat(&s, &dir, "alice", &["--json", "send", "bob", "helo"]).await?)?;
    let second = json_line(&chat(&s, &dir, "alice", &["--json", "send", "bob", "oops"]).await?)?;
    let (id1, id2) = (first["id"].as_str().unwrap_or_default(), second["id"].as_str().unwrap_or_default());
    let out = chat(&s, &dir, "alice", &["edit", "bob", id1, "hello", "there"]).await?;
    ensure!(out.starts_with(&format!("edited {id1} in bob")), "{out}");
    let v = json_line(&chat(&s, &dir, "alice", &["--json", "delete", "bob", id2]).await?)?;
    ensure!(v["deleted"] == id2, "{v}");
    // Bob may not edit alice's message: a refusal, exit 1.
    let o = chat_at(&s.addr(0), &dir.0.join("bob.json"), &["edit", "alice", id1, "mine now"]).await?;
    ensure!(o.code == 1 && o.stderr.contains("forbidden"), "exit {}, {}", o.code, o.stderr);
    let conv = first["conv"].as_str().unwrap_or_default();
    let bob = json_line(&chat(&s, &dir, "bob", &["--json", "login", "bob", "password123"]).await?)?;
    let token = std::fs::read_to_string(dir.0.join("bob.json"))?;
    let token: serde_json::Value = serde_json::from_str(&token)?;
    let page = s.http(0).history(token["token"].as_str().unwrap_or_default(), conv, "").await?;
    let msgs = page["messages"].as_array().cloned().unwrap_or_default();
    ensure!(msgs.len() == 2 && msgs[0]["body"] == "hello there" && msgs[1]["deleted"] == true, "{page} {bob}");
    // Reactions: bob adds two and removes one.
    let out = chat(&s, &dir, "bob", &["react", "alice", id1, "👍"]).await?;
    ensure!(out.starts_with(&format!("reacted 👍 on {id1} in alice")), "{out}");
    chat(&s, &dir, "bob", &["react", "alice", id1, "🎉"]).await?;
    let v = json_line(&chat(&s, &dir, "bob", &["--json", "react", "alice", id1, "🎉", "--remove"]).await?)?;
    ensure!(v["removed"] == "🎉", "{v}");
    let o = chat_at(&s.addr(0), &dir.0.join("bob.json"), &["react", "alice", id2, "👍"]).await?;
    ensure!(o.code == 1 && o.stderr.contains("not_found"), "exit {}, {}", o.code, o.stderr);
    let page = s.http(0).history(token["token"].as_str().unwrap_or_default(), conv, "").await?;
    let want = serde_json::json!([{"emoji": "👍", "count": 1, "users": [bob["user_id"]]}]);
    ensure!(page["messages"][0]["reactions"] == want, "{page}");
    // A reply: bob answers the edited message; a deleted one cannot be.
    let r = json_line(&chat(&s, &dir, "bob", &["--json", "send", "alice", "agreed", "--reply-to", id1]).await?)?;
    let page = s.http(0).history(token["token"].as_str().unwrap_or_default(), conv, "").await?;
    let last = page["messages"].as_array().and_then(|m| m.last()).cloned().unwrap_or_default();
    ensure!(
        last["id"] == r["id"] && last["reply_to"]["preview"] == "hello there" && last["body"] == "agreed",
        "{page}"
    );
    let o = chat_at(&s.addr(0), &dir.0.join("bob.json"), &["send", "alice", "late", "--reply-to", id2]).await?;
    ensure!(o.code == 1 && o.stderr.contains("not_found"), "exit {}, {}", o.code, o.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_read_clears_the_unread_count_on_every_device() -> Result<()> {
    let s = stack().start().await?;
    let dir = Dir::new("read")?;
    for who in ["alice", "bob"] {
        chat(&s, &dir, who, &["signup", who, "password123"]).await?;
        chat(&s, &dir, who, &["login", who, "password123"]).await?;
    }
    // A second device of bob's with its own state file.
    chat(&s, &dir, "bob2", &["login", "bob", "password123", "cli2"]).await?;
    let first = json_line(&chat(&s, &dir, "alice", &["--json", "send", "bob", "one"]).await?)?;
    chat(&s, &dir, "alice", &["send", "bob", "two"]).await?;
    let out = chat(&s, &dir, "bob2", &["conversations"]).await?;
    ensure!(out.contains("alice (2 unread)"), "{out}");
    let id = first["id"].as_str().context("id")?;
    let out = chat(&s, &dir, "bob", &["read", "alice", id]).await?;
    ensure!(out.contains("(1 unread)"), "{out}");
    let v = json_line(&chat(&s, &dir, "bob2", &["--json", "conversations"]).await?)?;
    ensure!(v["conversations"][0]["unread"] == 1, "{v}");
    let o = chat_at(&s.addr(0), &dir.0.join("bob.json"), &["read", "alice", "12345"]).await?;
    ensure!(o.code == 1 && o.stderr.contains("not_found"), "exit {}: {}", o.code, o.stderr);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_room_create_join_and_send() -> Result<()> {
    let s = stack().start().await?;
    let dir = Dir::new("rooms")?;
    for who in ["alice", "bob"] {
        chat(&s, &dir, who, &["signup", who, "password123"]).await?;
        chat(&s, &dir, who, &["login", who, "password123"]).await?;
    }
    let room = json_line(&chat(&s, &dir, "alice", &["--json", "room", "create", "the", "final"]).await?)?;
    let id = room["room"].as_str().unwrap_or_default().to_owned();
    ensure!(room["title"] == "the final", "{room}");
    chat(&s, &dir, "alice", &["room", "send", &id, "before", "kick-off"]).await?;
    let mut join = command(&s.addr(0), &dir.0.join("bob.json"), &["--json", "room", "join", &id])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(join.stdout.take().context("stdout")?).lines();
    async fn next(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Result<Value> {
        let l = tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await.context("no line")??;
        json_line(&l.context("eof")?)
    }
    ensure!(next(&mut lines).await?["body"] == "before kick-off", "the backlog first");
    ensure!(next(&mut lines).await?["backlog"] == 1, "then joined");
    chat(&s, &dir, "alice", &["room", "send", &id, "goal"]).await?;
    let live = next(&mut lines).await?;
    ensure!(live["body"] == "goal" && live["room"] == id.as_str(), "{live}");
    let shown = json_line(&chat(&s, &dir, "alice", &["--json", "room", "show", &id]).await?)?;
    ensure!(shown["viewers"] == 1, "{shown}");
    term(&mut join).await?;
    Ok(())
}
