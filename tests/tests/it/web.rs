//! The web client (`web/`, served by the gateway at `/`) in a real headless
//! Chromium, driven over the DevTools protocol (`chat_tests::browser`).
//! Each browser context is a person, each tab a device. Waits are on DOM
//! conditions with deadlines; a failing test leaves screenshots and console
//! logs in the browser's temp dir (named in the error).
//!
//! `CHAT_WEB_SCREENSHOT=<path.png>` makes
//! `edits_deletes_reactions_replies_and_mentions_show_live_and_after_reload`
//! write the README's screenshot of the client there.

use anyhow::{ensure, Result};
use chat_client::Method;
use chat_tests::browser::{Browser, Context, Page};
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

/// Alice and Bob, each in a browser context of their own (separate
/// storage, so separate devices), signed up (`signup`) or logged in: the
/// contexts (for more tabs) and their tabs.
async fn alice_and_bob<'b>(
    browser: &'b Browser,
    s: &Stack,
    signup: bool,
) -> Result<(Context<'b>, Context<'b>, Page, Page)> {
    let (ca, cb) = (browser.context().await?, browser.context().await?);
    let alice = ca.tab("alice", &url(s)).await?;
    let bob = cb.tab("bob", &url(s)).await?;
    enter(&alice, "alice", signup).await?;
    enter(&bob, "bob", signup).await?;
    Ok((ca, cb, alice, bob))
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
    // Every module is served, and none builds markup from strings.
    for path in [
        "/app.js",
        "/api.js",
        "/session.js",
        "/view.js",
        "/unread.js",
        "/messages.js",
        "/search.js",
        "/state.js",
        "/conversations.js",
        "/reads.js",
        "/rooms.js",
    ] {
        let raw = raw_get(&s.addr(0), path).await?;
        ensure!(
            raw.starts_with("HTTP/1.1 200") && raw.to_ascii_lowercase().contains("content-type: text/javascript"),
            "{path}: {raw:.200}"
        );
        for bad in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("] {
            ensure!(!raw.contains(bad), "{path} uses {bad}");
        }
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
        let (ca, _, alice, bob) = alice_and_bob(&browser, &s, true).await?;
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
        let (_, _, alice, bob) = alice_and_bob(&browser, &s, true).await?;
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
        let (_, _, alice, bob) = alice_and_bob(&browser, &s, true).await?;
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

const EVIL: &str = "<img src=x onerror=alert(1)>";

/// A JavaScript expression: the message shown with this body text.
fn msg_js(text: &str) -> String {
    format!(
        "[...document.querySelectorAll('#message-list .msg')].find(m => m.querySelector('.body')?.textContent === {})",
        js(text)
    )
}

/// Clicks the action `act` (reply, react, edit, delete, seen) of the
/// message with this body text.
async fn act(page: &Page, text: &str, act: &str) -> Result<()> {
    page.wait(
        &format!("the {act} button of {text:?}"),
        &format!("{}?.querySelector('[data-act=\"{act}\"]')", msg_js(text)),
    )
    .await?;
    page.eval(&format!("{}.querySelector('[data-act=\"{act}\"]').click(), true", msg_js(text))).await?;
    Ok(())
}

/// Opens the conversation titled `title` from the list.
async fn open_listed(page: &Page, title: &str) -> Result<()> {
    let find = format!(
        "[...document.querySelectorAll('#conv-list .conv')].find(c => c.querySelector('.title').textContent === {})",
        js(title)
    );
    page.wait(&format!("{title} in the list"), &find).await?;
    page.eval(&format!("{find}.click(), true")).await?;
    page.wait(
        &format!("{title} open"),
        &format!("document.getElementById('conv-title').textContent === {}", js(title)),
    )
    .await?;
    Ok(())
}

/// No `<img>` element and no dialog on any of these pages.
async fn no_markup(pages: &[(&Page, &str)]) -> Result<()> {
    for (p, who) in pages {
        let imgs = p.eval("document.querySelectorAll('img').length").await?;
        ensure!(imgs == json!(0), "{who}'s page has {imgs} <img> elements");
        ensure!(p.dialogs().is_empty(), "{who} saw dialogs: {:?}", p.dialogs());
        let errors: Vec<String> = p.console().into_iter().filter(|l| l.contains("exception")).collect();
        ensure!(errors.is_empty(), "{who}: uncaught exceptions: {errors:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reading_shows_read_to_the_sender_and_clears_the_badge_on_every_tab_of_the_reader() -> Result<()> {
    let s = stack().env("CHAT_DELIVERY_RECEIPTS", "true").start().await?;
    let mut browser = Browser::launch().await?;
    let result = async {
        let (_, cb, alice, bob) = alice_and_bob(&browser, &s, true).await?;
        let bob2 = cb.tab("bob-tab2", &url(&s)).await?;
        enter(&bob2, "bob", false).await?;
        chat_with(&alice, "bob").await?;
        say(&alice, "are you there?").await?;
        wait_shown(&alice, "alice", "are you there?").await?;
        // Bob's devices are connected: the message is delivered, not read.
        alice
            .wait(
                "alice's message delivered",
                &format!("{}?.dataset.receipt === 'delivered'", msg_js("are you there?")),
            )
            .await?;
        for (p, who) in [(&bob, "bob"), (&bob2, "bob's 2nd tab")] {
            p.wait(
                &format!("{who}: 1 unread from alice"),
                "document.querySelector('#conv-list .conv .badge')?.textContent === '1'",
            )
            .await?;
        }
        // A reload keeps the server's count (nothing is counted client-side).
        bob2.goto(&url(&s)).await?;
        bob2.wait(
            "bob's 2nd tab back, 1 unread",
            "document.querySelector('#conv-list .conv .badge')?.textContent === '1'",
        )
        .await?;
        bob.front().await?;
        open_listed(&bob, "alice").await?;
        alice
            .wait("alice's message read", &format!("{}?.dataset.receipt === 'read'", msg_js("are you there?")))
            .await?;
        ensure!(
            alice
                .eval(&format!("{}.querySelector('.meta').textContent.endsWith('read')", msg_js("are you there?")))
                .await?
                == true,
            "the read state is not shown as text"
        );
        bob2.wait(
            "the other tab's badge cleared",
            "document.querySelector('#conv-list .conv') && !document.querySelector('#conv-list .conv .badge')",
        )
        .await?;
        // The server agrees: nothing unread for bob.
        let token = s.http(0).login("bob", "password123", "check").await?.token;
        let v = s.http(0).request(Method::GET, "/v1/conversations", Some(&token), None).await?.1;
        ensure!(v["conversations"][0]["unread"] == 0, "{v}");
        // In a group: "read by N" on one's own messages, and who read them.
        alice.click("#show-new-group").await?;
        alice.fill("#group-name", "readers").await?;
        alice.fill("#group-members", "bob").await?;
        alice.eval("document.getElementById('new-group').requestSubmit(), true").await?;
        alice.wait("the group open", "document.getElementById('conv-title').textContent === 'readers'").await?;
        say(&alice, "did everyone see this?").await?;
        wait_shown(&alice, "alice", "did everyone see this?").await?;
        open_listed(&bob, "readers").await?;
        wait_shown(&bob, "bob", "did everyone see this?").await?;
        // Bob answers: his send moves his read position past alice's message.
        say(&bob, "seen").await?;
        wait_shown(&alice, "alice", "seen").await?;
        // Her list of readers is refreshed when a member's message arrives.
        alice
            .wait(
                "read by 1",
                &format!(
                    "{}?.querySelector('.meta').textContent.includes('read by 1')",
                    msg_js("did everyone see this?")
                ),
            )
            .await?;
        act(&alice, "did everyone see this?", "seen").await?;
        alice
            .wait(
                "read by bob",
                &format!(
                    "{}?.querySelector('.seen-list')?.textContent === 'read by bob'",
                    msg_js("did everyone see this?")
                ),
            )
            .await?;
        ensure!(
            alice
                .eval(&format!(
                    "{}.querySelector('.meta').textContent.includes('read by 1')",
                    msg_js("did everyone see this?")
                ))
                .await?
                == true
        );
        no_markup(&[(&alice, "alice"), (&bob, "bob"), (&bob2, "bob2")]).await
    }
    .await;
    browser.guard(result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_deletes_reactions_replies_and_mentions_show_live_and_after_reload() -> Result<()> {
    let s = stack().start().await?;
    let mut browser = Browser::launch().await?;
    let result = async {
        let (_, _, alice, bob) = alice_and_bob(&browser, &s, true).await?;
        chat_with(&alice, "bob").await?;
        say(&alice, "helo bob").await?;
        say(&alice, "regret this").await?;
        wait_shown(&alice, "alice", "regret this").await?;
        open_listed(&bob, "alice").await?;
        wait_shown(&bob, "bob", "regret this").await?;
        // Bob replies to the second one (quoted), reacts to the first.
        act(&bob, "regret this", "reply").await?;
        bob.wait("the reply bar", "!document.getElementById('compose-context').hidden").await?;
        say(&bob, "why?").await?;
        act(&bob, "helo bob", "react").await?;
        bob.click(&format!("{} .pick[data-emoji=\"👍\"]", "#message-list .msg[data-id]:not(.mine)")).await?;
        let quote = |text: &str| format!("{}?.querySelector('.quote .quote-text')?.textContent === {}", msg_js("why?"), js(text));
        alice.wait("the reply quoted on alice's side", &quote("regret this")).await?;
        let reacted = format!("{}?.querySelector('.reaction[data-emoji=\"👍\"]')?.dataset.count === '1'", msg_js("helo bob"));
        alice.wait("bob's reaction, live", &reacted).await?;
        // Alice reacts too: the count is 2, and hers is pressed.
        alice.eval(&format!("{}.querySelector('.reaction[data-emoji=\"👍\"]').click(), true", msg_js("helo bob"))).await?;
        let two = format!("{}?.querySelector('.reaction[data-emoji=\"👍\"]')?.dataset.count === '2'", msg_js("helo bob"));
        bob.wait("two reactions on bob's side", &two).await?;
        // Alice edits the first (with markup in it) and deletes the second.
        let edited = format!("hello bob {EVIL}");
        act(&alice, "helo bob", "edit").await?;
        alice.wait("the edit bar", "document.getElementById('composer-input').value === 'helo bob'").await?;
        alice.fill("#composer-input", &edited).await?;
        alice.press_enter().await?;
        act(&alice, "regret this", "delete").await?;
        act(&alice, "regret this", "delete").await?; // "Really delete?"
        let edited_shown = format!("{}?.dataset.edited === '1'", msg_js(&edited));
        let tombstone = "document.querySelectorAll('#message-list .msg[data-deleted] .body').length === 1 \
             && [...document.querySelectorAll('.msg .body')].every(b => b.textContent !== 'regret this')";
        let orphan = quote("original deleted");
        for (p, who) in [(&bob, "bob"), (&alice, "alice")] {
            p.wait(&format!("{who}: the edit"), &edited_shown).await?;
            p.wait(&format!("{who}: the tombstone"), tombstone).await?;
            p.wait(&format!("{who}: the quote of the deleted message"), &orphan).await?;
            p.wait(&format!("{who}: the reactions kept"), &format!("{}?.querySelector('.reaction')?.dataset.count === '2'", msg_js(&edited))).await?;
        }
        // After a reload, from history pages: the same current state.
        bob.goto(&url(&s)).await?;
        bob.wait("bob back online", "document.getElementById('conn').dataset.state === 'online'").await?;
        open_listed(&bob, "alice").await?;
        bob.wait("the edit after reload", &edited_shown).await?;
        bob.wait("the tombstone after reload", tombstone).await?;
        bob.wait("the deleted quote after reload", &orphan).await?;
        bob.wait("the reactions after reload", &format!("{}?.querySelector('.reaction[data-emoji=\"👍\"]')?.dataset.count === '2'", msg_js(&edited))).await?;
        ensure!(bob.eval(&format!("{}.querySelector('.meta').textContent.includes('edited')", msg_js(&edited))).await? == true);
        // A reply to the edited message quotes the markup as text.
        act(&bob, &edited, "reply").await?;
        say(&bob, "better").await?;
        alice
            .wait(
                "the quote of the edit",
                &format!("{}?.querySelector('.quote-text')?.textContent === {}", msg_js("better"), js(&edited)),
            )
            .await?;
        // Mentions in a group: highlighted, and counted for bob until read.
        alice.click("#show-new-group").await?;
        alice.fill("#group-name", "menu").await?;
        alice.fill("#group-members", "bob").await?;
        alice.eval("document.getElementById('new-group').requestSubmit(), true").await?;
        alice.wait("the group open", "document.getElementById('conv-title').textContent === 'menu'").await?;
        say(&alice, "@bob can you check the menu?").await?;
        bob.wait(
            "a mention badge",
            "[...document.querySelectorAll('#conv-list .conv')].some(c => c.querySelector('.title').textContent === 'menu' && c.querySelector('.badge.mention')?.textContent === '@1')",
        )
        .await?;
        open_listed(&bob, "menu").await?;
        bob.wait(
            "the mention highlighted",
            &format!("{}?.querySelector('.mention.me')?.textContent === '@bob'", msg_js("@bob can you check the menu?")),
        )
        .await?;
        bob.wait("the mention badge cleared on reading", "!document.querySelector('#conv-list .badge.mention')").await?;
        say(&bob, "on it").await?;
        // The owner may delete any message of the group; a member only their own.
        ensure!(
            bob.eval(&format!("!{}.querySelector('[data-act=\"delete\"]')", msg_js("@bob can you check the menu?"))).await? == true,
            "bob may delete alice's message"
        );
        wait_shown(&alice, "alice", "on it").await?;
        if let Some(path) = std::env::var_os("CHAT_WEB_SCREENSHOT") {
            act(&bob, "@bob can you check the menu?", "reply").await?;
            say(&bob, "the soup looks good").await?;
            act(&bob, "@bob can you check the menu?", "react").await?;
            bob.click("#message-list .msg:not(.mine) .pick[data-emoji=\"🎉\"]").await?;
            wait_shown(&alice, "alice", "the soup looks good").await?;
            alice.wait("the reaction", "document.querySelector('.reaction[data-emoji=\"🎉\"]')").await?;
            alice
                .wait(
                    "read by 1",
                    &format!("{}?.querySelector('.meta').textContent.includes('read by 1')", msg_js("@bob can you check the menu?")),
                )
                .await?;
            alice.front().await?;
            alice.viewport(1000, 640).await?;
            act(&alice, "the soup looks good", "react").await?;
            alice.screenshot(std::path::Path::new(&path)).await?;
        }
        act(&alice, "on it", "delete").await?;
        act(&alice, "on it", "delete").await?;
        bob.wait("the owner's delete", "document.querySelectorAll('#message-list .msg[data-deleted]').length === 1").await?;
        no_markup(&[(&alice, "alice"), (&bob, "bob")]).await
    }
    .await;
    browser.guard(result).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_jumps_to_a_message_and_a_live_room_shows_its_backlog_then_live_posts() -> Result<()> {
    let mut s = stack().env("CHAT_SEARCH_INDEXER", "true").start().await?;
    let (a, b) = (s.user("alice", "phone").await?, s.user("bob", "phone").await?);
    let (mut conn, _) = s.live(0, &a).await?;
    let needle = format!("a needle {EVIL} in the hay");
    for i in 0..70 {
        let body = if i == 10 { needle.clone() } else { format!("message {i}") };
        conn.send_to_user(&format!("h{i}"), &b.user_id, &body).await?;
    }
    conn.close().await;
    // 50 groups after it: the 1:1 conversation is on the list's second page.
    for i in 0..50 {
        let body = json!({"name": format!("group {i}"), "members": [b.user_id]});
        let (status, v) = s.http(0).request(Method::POST, "/v1/groups", Some(&a.token), Some(body)).await?;
        ensure!(status == 201, "create group: {status} {v}");
    }
    let mut browser = Browser::launch().await?;
    let result = async {
        let (_, _, alice, bob) = alice_and_bob(&browser, &s, false).await?;
        // (Its messages reach bob's tab anyway, through the inbox catch-up
        // of a first login; the list's second page gives what the inbox
        // does not: its title and counts.)
        let listed = "document.querySelectorAll('#conv-list .conv').length";
        bob.wait("a next page of conversations", "!document.getElementById('more-convs').hidden").await?;
        bob.click("#more-convs").await?;
        bob.wait("the second page", &format!("{listed} === 51 && document.getElementById('more-convs').hidden")).await?;
        bob.wait("the 1:1 conversation listed", "document.querySelector('#conv-list .conv[data-conv^=\"dm-\"] .title')?.textContent === 'alice'").await?;
        // Search (the index fills shortly after the messages are stored:
        // search again until it has them).
        bob.fill("#search-input", "NEEDLE").await?;
        bob.wait(
            "a search result",
            "document.querySelector('#search-results .result') || (document.getElementById('search-form').requestSubmit(), false)",
        )
        .await?;
        let hit = bob.eval("document.querySelector('#search-results .result .hit').textContent").await?;
        ensure!(hit == json!(needle), "hit: {hit}");
        let marks = bob.eval("[...document.querySelectorAll('#search-results .result mark')].map(m => m.textContent)").await?;
        ensure!(marks == json!(["needle"]), "highlights: {marks}");
        let height = bob.eval("document.querySelector('#search-results .result').getBoundingClientRect().height").await?;
        ensure!(height.as_f64().is_some_and(|h| h > 20.0), "the result is not visible: height {height}");
        let id = bob.eval("document.querySelector('#search-results .result').dataset.id").await?;
        bob.click("#search-results .result").await?;
        let jumped = format!("document.querySelector('#message-list .msg.jumped')?.dataset.id === {id}");
        bob.wait("the found message shown", &jumped).await?;
        ensure!(wait_shown(&bob, "bob", &needle).await? == false);
        // The page around it: not the newest, which is a click away.
        ensure!(shown(&bob, "message 69").await?.is_empty(), "the newest page is shown, not the one around the hit");
        bob.click("#to-newest").await?;
        wait_shown(&bob, "bob", "message 69").await?;
        // Only the open conversation: nothing of it in another.
        bob.eval("document.getElementById('search-here').checked = true").await?;
        bob.eval("document.getElementById('search-form').requestSubmit(), true").await?;
        bob.wait("the scoped search", "document.querySelectorAll('#search-results .result').length === 1").await?;

        // A live room: alice creates it and posts; bob joins by id.
        alice.click("#show-rooms").await?;
        alice.fill("#room-title", "match day").await?;
        alice.eval("document.getElementById('new-room').requestSubmit(), true").await?;
        alice.wait("the room open", "document.getElementById('conv-title').textContent === 'match day'").await?;
        let room_msg = format!("kick-off {EVIL}");
        say(&alice, &room_msg).await?;
        say(&alice, "first half").await?;
        wait_shown(&alice, "alice", "first half").await?;
        let sub = alice.eval("document.getElementById('conv-sub').textContent").await?;
        let room = sub.as_str().and_then(|t| t.strip_prefix("room ")).map(|t| t.split(' ').next().unwrap_or("").to_owned());
        let room = room.filter(|r| !r.is_empty()).ok_or_else(|| anyhow::anyhow!("no room id shown: {sub}"))?;
        bob.click("#show-rooms").await?;
        bob.fill("#room-id", &room).await?;
        bob.eval("document.getElementById('join-room').requestSubmit(), true").await?;
        bob.wait("the room open for bob", "document.getElementById('conv-title').textContent === 'match day'").await?;
        ensure!(!wait_shown(&bob, "bob", &room_msg).await?);
        ensure!(!wait_shown(&bob, "bob", "first half").await?);
        say(&bob, "what a goal").await?;
        ensure!(!wait_shown(&alice, "alice", "what a goal").await?);
        ensure!(wait_shown(&bob, "bob", "what a goal").await?);
        // Reactions and deletes work in rooms too, live.
        act(&alice, "what a goal", "react").await?;
        alice.click("#message-list .msg:not(.mine) .pick[data-emoji=\"🎉\"]").await?;
        bob.wait("the reaction in the room", &format!("{}?.querySelector('.reaction')?.dataset.count === '1'", msg_js("what a goal"))).await?;
        act(&alice, "first half", "delete").await?;
        act(&alice, "first half", "delete").await?;
        bob.wait("the delete in the room", "document.querySelectorAll('#message-list .msg[data-deleted]').length === 1").await?;
        // After the gateway restarts, both join again by themselves.
        s.stop_gateway(0).await;
        s.restart_gateway(0).await?;
        for p in [&alice, &bob] {
            p.wait("the session back online", "document.getElementById('conn').dataset.state === 'online'").await?;
        }
        say(&alice, "second half").await?;
        ensure!(!wait_shown(&bob, "bob", "second half").await?);
        ensure!(wait_shown(&bob, "bob", "what a goal").await?, "the backlog again made a duplicate");
        // Leaving: bob no longer gets the room's posts.
        bob.click("#leave-room").await?;
        bob.wait("the room gone from bob's list", "![...document.querySelectorAll('#conv-list .conv')].some(c => c.dataset.conv.startsWith('r-'))").await?;
        no_markup(&[(&alice, "alice"), (&bob, "bob")]).await
    }
    .await;
    browser.guard(result).await
}
