//! The web client (`web/`, served by the gateway at `/`) in a real headless
//! Chromium, driven over the DevTools protocol (`chat_tests::browser`).
//! Each browser context is a person, each tab a device. Waits are on DOM
//! conditions with deadlines; a failing test leaves screenshots and console
//! logs in the browser's temp dir (named in the error).
//!
//! `CHAT_WEB_SCREENSHOT=<path.png>` makes the first test write the
//! README's screenshot of the client there.

use anyhow::{ensure, Result};
use chat_client::Method;
use chat_tests::browser::{Browser, Page};
use serde_json::{json, Value};

use crate::stack::{stack, Stack};

fn url(s: &Stack) -> String {
    format!("http://{}/", s.addr(0))
}

fn js(s: &str) -> String {
    json!(s).to_string()
}

/// Signs up (or logs in, if `signup` is false) through the login form and
/// waits until the session is online.
async fn enter(page: &Page, name: &str, signup: bool) -> Result<()> {
    page.wait("the login form", "!!document.getElementById('login-user')").await?;
    page.fill("#login-user", name).await?;
    page.fill("#login-pass", "password123").await?;
    if signup {
        page.click("#signup-btn").await?;
    } else {
        page.eval("document.getElementById('login-form').requestSubmit(), true").await?;
    }
    page.wait(&format!("{name} to be online"), "document.getElementById('conn').dataset.state === 'online'").await?;
    Ok(())
}

/// Opens the 1:1 conversation with `name` through the "Chat" form.
async fn chat_with(page: &Page, name: &str) -> Result<()> {
    page.fill("#new-chat-name", name).await?;
    page.eval("document.getElementById('new-chat').requestSubmit(), true").await?;
    page.wait(
        &format!("the conversation with {name}"),
        &format!("document.getElementById('conv-title').textContent === {}", js(name)),
    )
    .await?;
    Ok(())
}

/// Types a message into the composer and presses Enter.
async fn say(page: &Page, text: &str) -> Result<()> {
    page.eval("document.getElementById('composer-input').focus(), true").await?;
    page.type_text(text).await?;
    page.press_enter().await
}

/// The messages on screen with this text: `[(state, mine)]`.
async fn shown(page: &Page, text: &str) -> Result<Vec<Value>> {
    let v = page
        .eval(&format!(
            "[...document.querySelectorAll('#message-list .msg')].filter(m => m.querySelector('.body').textContent === {})
              .map(m => [m.dataset.state, m.classList.contains('mine')])",
            js(text)
        ))
        .await?;
    Ok(v.as_array().cloned().unwrap_or_default())
}

/// Waits until `text` is shown exactly once, sent; returns whether it is
/// shown as this user's own.
async fn wait_shown(page: &Page, who: &str, text: &str) -> Result<bool> {
    page.wait(
        &format!("{who} to show {text:?} as sent"),
        &format!(
            "[...document.querySelectorAll('#message-list .msg')].some(m => m.querySelector('.body').textContent === {} && m.dataset.state === 'sent')",
            js(text)
        ),
    )
    .await?;
    let found = shown(page, text).await?;
    ensure!(found.len() == 1, "{who} shows {text:?} {} times: {found:?}", found.len());
    Ok(found[0][1] == true)
}

async fn unread_badge(page: &Page, conv_title: &str) -> Result<Value> {
    page.eval(&format!(
        "(() => {{ const b = [...document.querySelectorAll('#conv-list .conv')].find(c => c.querySelector('.title').textContent === {});
           const n = b && b.querySelector('.badge'); return n ? Number(n.textContent) : 0; }})()",
        js(conv_title)
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_serves_the_client_with_a_strict_content_security_policy() -> Result<()> {
    let s = stack().start().await?;
    let http = s.http(0);
    for (path, ty) in [("/", "text/html"), ("/app.js", "text/javascript"), ("/style.css", "text/css")] {
        let raw = raw_get(&s.addr(0), path).await?;
        ensure!(raw.starts_with("HTTP/1.1 200"), "{path}: {raw:.200}");
        let lower = raw.to_ascii_lowercase();
        ensure!(lower.contains(&format!("content-type: {ty}")), "{path}: no {ty}: {raw:.400}");
        ensure!(lower.contains("content-security-policy: default-src 'none'; script-src 'self'"), "{path}: {raw:.600}");
        ensure!(lower.contains("x-content-type-options: nosniff"), "{path}");
    }
    // Only the client's own files; the API's 404 and 405 are unchanged.
    assert_eq!(http.request(Method::GET, "/nope.js", None, None).await?.0, 404);
    assert_eq!(http.request(Method::POST, "/app.js", None, None).await?.0, 405);
    assert_eq!(http.request(Method::POST, "/", None, None).await?.0, 405);
    Ok(())
}

/// A raw HTTP/1.1 GET, returning the head and body as text.
async fn raw_get(addr: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.write_all(format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n").as_bytes()).await?;
    let mut out = Vec::new();
    tcp.read_to_end(&mut out).await?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_both_ways_and_a_second_tab_sees_both_sides() -> Result<()> {
    let s = stack().start().await?;
    let mut browser = Browser::launch().await?;
    let result = async {
        let (ca, cb) = (browser.context().await?, browser.context().await?);
        let alice = ca.tab("alice", &url(&s)).await?;
        let bob = cb.tab("bob", &url(&s)).await?;
        enter(&alice, "alice", true).await?;
        enter(&bob, "bob", true).await?;
        chat_with(&alice, "bob").await?;
        say(&alice, "hi bob, it's alice").await?;
        ensure!(wait_shown(&alice, "alice", "hi bob, it's alice").await?, "alice's own message is not hers");
        // Bob has not opened the conversation: it is listed, unread.
        bob.wait(
            "alice's conversation in bob's list, 1 unread",
            "[...document.querySelectorAll('#conv-list .conv')].some(c => c.querySelector('.title').textContent === 'alice' \
               && c.querySelector('.badge')?.textContent === '1' && c.querySelector('.preview').textContent === \"alice: hi bob, it's alice\")",
        )
        .await?;
        bob.click("#conv-list .conv").await?;
        ensure!(!wait_shown(&bob, "bob", "hi bob, it's alice").await?, "bob sees alice's message as his");
        ensure!(unread_badge(&bob, "alice").await? == json!(0), "opening did not clear the badge");
        // Typing shows on the other side.
        bob.fill("#composer-input", "hel").await?;
        alice.wait("bob typing", "document.getElementById('typing').textContent === 'bob is typing…'").await?;
        bob.fill("#composer-input", "").await?;
        say(&bob, "hello alice").await?;
        ensure!(!wait_shown(&alice, "alice", "hello alice").await?);
        // Alice's second tab is another device: it logs in and catches up
        // on both sides, then receives both sides live.
        let alice2 = ca.tab("alice-tab2", &url(&s)).await?;
        enter(&alice2, "alice", false).await?;
        let ids = alice2.eval("document.getElementById('me').textContent").await?;
        let first = alice.eval("document.getElementById('me').textContent").await?;
        ensure!(ids != first, "two tabs share a device: {ids} / {first}");
        chat_with(&alice2, "bob").await?;
        ensure!(wait_shown(&alice2, "alice's 2nd tab", "hi bob, it's alice").await?);
        ensure!(!wait_shown(&alice2, "alice's 2nd tab", "hello alice").await?);
        say(&alice, "from tab one").await?;
        say(&bob, "from bob, live").await?;
        ensure!(wait_shown(&alice2, "alice's 2nd tab", "from tab one").await?);
        ensure!(!wait_shown(&alice2, "alice's 2nd tab", "from bob, live").await?);
        ensure!(wait_shown(&bob, "bob", "from tab one").await? == false);
        // Groups: alice creates one with bob by name; bob sees it and replies.
        alice.click("#show-new-group").await?;
        alice.fill("#group-name", "lunch crew").await?;
        alice.fill("#group-members", "bob").await?;
        alice.eval("document.getElementById('new-group').requestSubmit(), true").await?;
        alice.wait("the group to open", "document.getElementById('conv-title').textContent === 'lunch crew'").await?;
        say(&alice, "pizza at noon?").await?;
        ensure!(wait_shown(&alice, "alice", "pizza at noon?").await?);
        bob.wait(
            "the group in bob's list",
            "[...document.querySelectorAll('#conv-list .conv .title')].some(t => t.textContent === 'lunch crew')",
        )
        .await?;
        bob.eval(
            "[...document.querySelectorAll('#conv-list .conv')].find(c => c.querySelector('.title').textContent === 'lunch crew').click(), true",
        )
        .await?;
        ensure!(!wait_shown(&bob, "bob", "pizza at noon?").await?);
        bob.wait("the creation shown with names", "[...document.querySelectorAll('.msg.system .body')].some(b => b.textContent === 'alice created the group')").await?;
        alice.click("#members-btn").await?;
        alice.wait("both members listed", "document.querySelectorAll('#member-list li').length === 2").await?;
        // Member management: the owner adds carol by name, then removes her.
        s.user("carol", "phone").await?;
        alice.fill("#member-name", "carol").await?;
        alice.eval("document.getElementById('add-member').requestSubmit(), true").await?;
        alice.wait("carol listed", "document.querySelectorAll('#member-list li').length === 3").await?;
        bob.wait("bob told of carol", "[...document.querySelectorAll('.msg.system .body')].some(b => b.textContent === 'alice added carol')").await?;
        alice.click("#member-list li:last-child button").await?;
        alice.wait("carol removed", "document.querySelectorAll('#member-list li').length === 2").await?;
        bob.wait("bob told carol left", "[...document.querySelectorAll('.msg.system .body')].some(b => b.textContent === 'alice removed carol')").await?;
        if let Some(path) = std::env::var_os("CHAT_WEB_SCREENSHOT") {
            say(&bob, "yes, see you there").await?;
            wait_shown(&alice, "alice", "yes, see you there").await?;
            alice.click("#members-btn").await?;
            alice.front().await?;
            alice.viewport(1000, 620).await?;
            alice.wait("the open conversation read", "!document.querySelector('#conv-list .conv[aria-current=\"true\"] .badge')").await?;
            alice.screenshot(std::path::Path::new(&path)).await?;
        }
        let errors: Vec<String> =
            [&alice, &bob, &alice2].iter().flat_map(|p| p.console()).filter(|l| l.contains("exception")).collect();
        ensure!(errors.is_empty(), "uncaught exceptions: {errors:?}");
        Ok(())
    }
    .await;
    browser.guard(result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_loads_older_pages_on_scroll() -> Result<()> {
    let s = stack().start().await?;
    let (a, b) = (s.user("alice", "phone").await?, s.user("bob", "phone").await?);
    let (mut conn, _) = s.live(0, &a).await?;
    for i in 0..70 {
        conn.send_to_user(&format!("h{i}"), &b.user_id, &format!("message {i}")).await?;
    }
    let mut browser = Browser::launch().await?;
    let result = async {
        let bob = browser.context().await?.tab("bob", &url(&s)).await?;
        // A phone-sized screen: the list, then the conversation, in turn.
        bob.viewport(390, 800).await?;
        enter(&bob, "bob", false).await?;
        let shown = |id: &str| format!("getComputedStyle(document.getElementById('{id}')).display !== 'none'");
        ensure!(bob.eval(&shown("sidebar")).await? == true && bob.eval(&shown("conv-view")).await? == false);
        chat_with(&bob, "alice").await?;
        ensure!(bob.eval(&shown("sidebar")).await? == false && bob.eval(&shown("conv-view")).await? == true);
        let count = "document.querySelectorAll('#message-list .msg').length";
        bob.wait("the newest page", &format!("{count} === 30")).await?;
        ensure!(wait_shown(&bob, "bob", "message 69").await? == false);
        for want in [60, 70] {
            bob.eval("(() => { const m = document.getElementById('messages'); m.scrollTop = 0; m.dispatchEvent(new Event('scroll')); return true; })()").await?;
            bob.wait(&format!("{want} messages after scrolling up"), &format!("{count} === {want}")).await?;
        }
        bob.wait("the start of the conversation", "!!document.querySelector('[data-start]')").await?;
        // Oldest first, each once.
        let bodies = bob.eval("[...document.querySelectorAll('#message-list .msg .body')].map(b => b.textContent)").await?;
        let want: Vec<String> = (0..70).map(|i| format!("message {i}")).collect();
        ensure!(bodies == json!(want), "{bodies}");
        Ok(())
    }
    .await;
    browser.guard(result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_sent_while_the_gateway_restarts_is_delivered_once_after_reconnect() -> Result<()> {
    let mut s = stack().start().await?;
    let mut browser = Browser::launch().await?;
    let (ca, cb) = (browser.context().await?, browser.context().await?);
    let result = async {
        let alice = ca.tab("alice", &url(&s)).await?;
        let bob = cb.tab("bob", &url(&s)).await?;
        enter(&alice, "alice", true).await?;
        enter(&bob, "bob", true).await?;
        chat_with(&alice, "bob").await?;
        chat_with(&bob, "alice").await?;
        say(&alice, "before the restart").await?;
        wait_shown(&bob, "bob", "before the restart").await?;
        s.stop_gateway(0).await;
        alice
            .wait("alice to see the connection drop", "document.getElementById('conn').dataset.state !== 'online'")
            .await?;
        say(&alice, "sent while down").await?;
        alice
            .wait(
                "the message pending",
                "[...document.querySelectorAll('.msg')].some(m => m.dataset.state === 'pending')",
            )
            .await?;
        let addr = s.addr(0);
        s.restart_gateway(0).await?;
        ensure!(s.addr(0) == addr);
        for p in [&alice, &bob] {
            p.wait("the session back online", "document.getElementById('conn').dataset.state === 'online'").await?;
        }
        ensure!(wait_shown(&alice, "alice", "sent while down").await?);
        ensure!(!wait_shown(&bob, "bob", "sent while down").await?);
        // A later message arrives after it, and it is still there once.
        say(&bob, "got it").await?;
        wait_shown(&alice, "alice", "got it").await?;
        for (p, who) in [(&alice, "alice"), (&bob, "bob")] {
            let n = shown(p, "sent while down").await?.len();
            ensure!(n == 1, "{who} shows the message {n} times");
        }
        // The server stored it once, too.
        let token = s.http(0).login("bob", "password123", "check").await?.token;
        let v = s.http(0).request(Method::GET, "/v1/conversations", Some(&token), None).await?.1;
        let conv = v["conversations"][0]["conv"].as_str().unwrap_or_default().to_owned();
        let page = s.http(0).history(&token, &conv, "limit=10").await?;
        let n = page["messages"].as_array().into_iter().flatten().filter(|m| m["body"] == "sent while down").count();
        ensure!(n == 1, "stored {n} times: {page}");
        Ok(())
    }
    .await;
    browser.guard(result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn markup_in_a_message_is_shown_as_text() -> Result<()> {
    let s = stack().start().await?;
    let mut browser = Browser::launch().await?;
    let result = async {
        let (ca, cb) = (browser.context().await?, browser.context().await?);
        let alice = ca.tab("alice", &url(&s)).await?;
        let bob = cb.tab("bob", &url(&s)).await?;
        enter(&alice, "alice", true).await?;
        enter(&bob, "bob", true).await?;
        chat_with(&alice, "bob").await?;
        let evil = "<img src=x onerror=alert(1)>";
        say(&alice, evil).await?;
        wait_shown(&alice, "alice", evil).await?;
        bob.wait("the conversation in bob's list", "document.querySelector('#conv-list .conv')").await?;
        let preview = bob.eval("document.querySelector('#conv-list .conv .preview').textContent").await?;
        ensure!(preview.as_str().is_some_and(|p| p.ends_with(evil)), "preview: {preview}");
        bob.click("#conv-list .conv").await?;
        wait_shown(&bob, "bob", evil).await?;
        for (p, who) in [(&alice, "alice"), (&bob, "bob")] {
            let imgs = p.eval("document.querySelectorAll('img').length").await?;
            ensure!(imgs == json!(0), "{who}'s page has {imgs} <img> elements");
            ensure!(p.dialogs().is_empty(), "{who} saw dialogs: {:?}", p.dialogs());
        }
        Ok(())
    }
    .await;
    browser.guard(result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_send_is_retried_with_its_cid_and_stored_once() -> Result<()> {
    let mut s = stack().env("CHAT_SEND_TIMEOUT_MS", "1000").start().await?;
    let mut browser = Browser::launch().await?;
    let (ca, cb) = (browser.context().await?, browser.context().await?);
    let result = async {
        let alice = ca.tab("alice", &url(&s)).await?;
        let bob = cb.tab("bob", &url(&s)).await?;
        enter(&alice, "alice", true).await?;
        enter(&bob, "bob", true).await?;
        chat_with(&alice, "bob").await?;
        // No worker: the send is stored in ingress but not sequenced in
        // time, so the gateway answers `timeout` and the message fails.
        s.term_worker(0).await?;
        say(&alice, "try again").await?;
        alice.wait("the message failed", "document.querySelector('.msg[data-state=\"failed\"] .retry')").await?;
        let cid = alice.eval("document.querySelector('.msg[data-state=\"failed\"]').dataset.cid").await?;
        s.add_worker(0)?;
        alice.click(".msg[data-state=\"failed\"] .retry").await?;
        ensure!(wait_shown(&alice, "alice", "try again").await?);
        let after = alice.eval("document.querySelector('.msg[data-state=\"sent\"]').dataset.cid").await?;
        ensure!(after == cid, "the retry used another cid: {cid} then {after}");
        bob.wait("the conversation in bob's list", "document.querySelector('#conv-list .conv')").await?;
        bob.click("#conv-list .conv").await?;
        ensure!(!wait_shown(&bob, "bob", "try again").await?);
        s.wait_stored(1).await?;
        let token = s.http(0).login("bob", "password123", "check").await?.token;
        let v = s.http(0).request(Method::GET, "/v1/conversations", Some(&token), None).await?.1;
        let conv = v["conversations"][0]["conv"].as_str().unwrap_or_default().to_owned();
        let page = s.http(0).history(&token, &conv, "limit=10").await?;
        let n = page["messages"].as_array().into_iter().flatten().filter(|m| m["body"] == "try again").count();
        ensure!(n == 1, "stored {n} times: {page}");
        Ok(())
    }
    .await;
    browser.guard(result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn friends_are_requested_by_name_accepted_and_shown_online() -> Result<()> {
    let s = stack().start().await?;
    let mut browser = Browser::launch().await?;
    let result = async {
        let (ca, cb) = (browser.context().await?, browser.context().await?);
        let alice = ca.tab("alice", &url(&s)).await?;
        let bob = cb.tab("bob", &url(&s)).await?;
        enter(&alice, "alice", true).await?;
        enter(&bob, "bob", true).await?;
        bob.click("#show-friends").await?;
        bob.fill("#friend-name", "nobody").await?;
        bob.eval("document.getElementById('add-friend').requestSubmit(), true").await?;
        bob.wait("an unknown name refused", "document.getElementById('sidebar-error').textContent === 'no such user'").await?;
        bob.fill("#friend-name", "alice").await?;
        bob.eval("document.getElementById('add-friend').requestSubmit(), true").await?;
        bob.wait("the request listed", "document.getElementById('friend-list').textContent.includes('alice (request sent)')").await?;
        alice.click("#show-friends").await?;
        alice.wait("bob's request", "document.getElementById('friend-list').textContent.includes('bob wants to be friends')").await?;
        alice
            .eval("[...document.querySelectorAll('#friend-list button')].find(b => b.textContent === 'Accept').click(), true")
            .await?;
        // Friends see each other's presence: bob's dot turns green for alice.
        alice
            .wait("bob online among alice's friends", "document.querySelector('#friend-list li .dot[data-status=\"online\"]')")
            .await?;
        alice.eval("[...document.querySelectorAll('#friend-list button')].find(b => b.textContent === 'Chat').click(), true").await?;
        alice.wait("the chat with bob", "document.getElementById('conv-title').textContent === 'bob'").await?;
        Ok(())
    }
    .await;
    browser.guard(result).await
}
