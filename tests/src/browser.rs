//! A headless Chromium driven over the Chrome DevTools Protocol (CDP), for
//! the web client's tests: no WebDriver, no extra crate, just the CDP's
//! JSON messages over a WebSocket (tokio-tungstenite).
//!
//! [`Browser::launch`] starts `chromium --headless=new
//! --remote-debugging-port=0` on a temp profile and reads the port from the
//! profile's `DevToolsActivePort` file. [`Browser::context`] is an isolated
//! browser context (its own cookies and storage: another person);
//! [`Context::tab`] a tab in it ([`Page`]). A page evaluates JavaScript,
//! waits for DOM conditions with a deadline, types, presses keys and takes
//! screenshots, and records its console messages, uncaught exceptions and
//! JavaScript dialogs. [`Browser::evidence`] saves a screenshot and the
//! console log of every page (kept under the browser's temp dir) when a
//! test fails.
//!
//! The binary is `CHAT_CHROMIUM`, else the first of `chromium`,
//! `chromium-browser`, `google-chrome` on `PATH` (`scripts/install-deps`
//! installs Debian's `chromium`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{is_root, TempDir};

/// How long one CDP command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// What a page has said: console lines, exceptions, dialogs.
#[derive(Debug, Default)]
struct PageLog {
    console: Vec<String>,
    dialogs: Vec<String>,
}

/// The CDP connection to the browser, shared by its pages.
#[derive(Debug)]
struct Cdp {
    out: mpsc::UnboundedSender<String>,
    pending: Pending,
    next: AtomicU64,
    logs: Arc<Mutex<HashMap<String, PageLog>>>,
}

impl Cdp {
    async fn call(&self, session: Option<&str>, method: &str, params: Value) -> Result<Value> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = session {
            msg["sessionId"] = json!(s);
        }
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        self.out.send(msg.to_string()).map_err(|_| anyhow!("the browser connection is closed"))?;
        let reply = tokio::time::timeout(COMMAND_TIMEOUT, rx)
            .await
            .map_err(|_| anyhow!("CDP {method}: no answer in {COMMAND_TIMEOUT:?}"))?
            .map_err(|_| anyhow!("CDP {method}: the browser connection closed"))?;
        if let Some(e) = reply.get("error") {
            bail!("CDP {method}: {e}");
        }
        Ok(reply["result"].clone())
    }
}

/// A running headless Chromium; stopped (SIGTERM) on drop.
pub struct Browser {
    child: Child,
    dir: Option<TempDir>,
    cdp: Arc<Cdp>,
    pages: Mutex<Vec<(String, Page)>>,
}

/// The Chromium binary to run.
pub fn chromium_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("CHAT_CHROMIUM") {
        return Ok(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    bail!("no Chromium found (set CHAT_CHROMIUM, or run scripts/install-deps, which installs Debian's chromium)")
}

/// How many times [`Browser::launch`] starts Chromium before giving up.
const LAUNCH_ATTEMPTS: usize = 3;
/// How long one start may take to write its `DevToolsActivePort`.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Starts one Chromium on a fresh profile and returns it with its CDP URL;
/// a start that fails is stopped before the error is returned.
async fn start() -> Result<(Child, TempDir, String)> {
    let dir = TempDir::new_in(&std::env::temp_dir(), "chat-browser")?;
    let profile = dir.path().join("profile");
    std::fs::create_dir(&profile)?;
    let mut cmd = Command::new(chromium_bin()?);
    cmd.args([
        "--headless=new",
        "--remote-debugging-port=0",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-gpu",
        // No GPU process to fork: one fewer process, and the fork that failed.
        "--in-process-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-extensions",
        "--disable-sync",
        "--mute-audio",
        "--hide-scrollbars",
        "--window-size=1100,720",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    if is_root() {
        cmd.arg("--no-sandbox");
    }
    let log = std::fs::File::create(dir.path().join("chromium.log"))?;
    let mut child = cmd
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("start chromium")?;
    let port_file = profile.join("DevToolsActivePort");
    let found = crate::wait_for("Chromium's DevToolsActivePort", START_TIMEOUT, || {
        let text = std::fs::read_to_string(&port_file).ok();
        async move {
            let text = text?;
            let mut lines = text.lines();
            let (port, path) = (lines.next()?.trim(), lines.next()?.trim());
            Some(format!("ws://127.0.0.1:{port}{path}"))
        }
    })
    .await;
    match found {
        Ok(url) => Ok((child, dir, url)),
        Err(e) => {
            stop(&mut child);
            Err(anyhow!("{e}{}", crate::support::log_section("chromium", &dir.path().join("chromium.log"))))
        }
    }
}

/// Stops Chromium: SIGTERM, then SIGKILL after 5 s.
fn stop(child: &mut Child) {
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-TERM", &pid]).status();
    for _ in 0..250 {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Browser {
    /// Starts Chromium on a fresh profile and connects to it. A start that
    /// writes no `DevToolsActivePort` in time (seen under load: the zygote
    /// failed to fork the GPU process and the browser hung) is stopped and
    /// tried again on a new profile, up to [`LAUNCH_ATTEMPTS`] times.
    pub async fn launch() -> Result<Browser> {
        let mut failures = Vec::new();
        let (child, dir, url) = loop {
            match start().await {
                Ok(started) => break started,
                Err(e) if failures.len() + 1 < LAUNCH_ATTEMPTS => failures.push(format!("{e:#}")),
                Err(e) => {
                    let earlier = failures.iter().enumerate().map(|(i, f)| format!("\n--- attempt {} ---\n{f}", i + 1));
                    return Err(e.context(format!(
                        "Chromium did not start in {LAUNCH_ATTEMPTS} attempts{}",
                        earlier.collect::<String>()
                    )));
                }
            }
        };
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.context("connect to Chromium's CDP")?;
        let (mut sink, mut stream) = ws.split();
        let (out, mut out_rx) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let pending: Pending = Arc::default();
        let logs: Arc<Mutex<HashMap<String, PageLog>>> = Arc::default();
        let cdp = Arc::new(Cdp { out, pending: pending.clone(), next: AtomicU64::new(1), logs: logs.clone() });
        let events = cdp.out.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else { continue };
                let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else { continue };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id) {
                        let _ = tx.send(v);
                    }
                    continue;
                }
                let session = v["sessionId"].as_str().unwrap_or_default().to_owned();
                let mut logs = logs.lock().unwrap_or_else(|p| p.into_inner());
                let log = logs.entry(session.clone()).or_default();
                match v["method"].as_str().unwrap_or_default() {
                    "Runtime.consoleAPICalled" => {
                        let args: Vec<String> = v["params"]["args"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .map(|a| a["value"].as_str().map(str::to_owned).unwrap_or_else(|| a.to_string()))
                            .collect();
                        log.console.push(format!(
                            "[{}] {}",
                            v["params"]["type"].as_str().unwrap_or(""),
                            args.join(" ")
                        ));
                    }
                    "Runtime.exceptionThrown" => {
                        let d = &v["params"]["exceptionDetails"];
                        log.console.push(format!("[exception] {} {}", d["text"], d["exception"]["description"]));
                    }
                    "Log.entryAdded" => {
                        let e = &v["params"]["entry"];
                        log.console.push(format!("[{}] {} {}", e["level"], e["text"], e["url"]));
                    }
                    "Page.javascriptDialogOpening" => {
                        log.dialogs.push(format!("{} {}", v["params"]["type"], v["params"]["message"]));
                        // Dismiss it, so the page does not hang.
                        let id = u64::MAX - log.dialogs.len() as u64;
                        let m = json!({"id": id, "sessionId": session, "method": "Page.handleJavaScriptDialog", "params": {"accept": false}});
                        let _ = events.send(m.to_string());
                    }
                    _ => {}
                }
            }
        });
        Ok(Browser { child, dir: Some(dir), cdp, pages: Mutex::default() })
    }

    /// A new isolated browser context (its own storage and cookies).
    pub async fn context(&self) -> Result<Context<'_>> {
        let r = self.cdp.call(None, "Target.createBrowserContext", json!({"disposeOnDetach": true})).await?;
        let id = r["browserContextId"].as_str().context("no browserContextId")?.to_owned();
        Ok(Context { browser: self, id })
    }

    /// The browser's temp dir (profile, log, evidence).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().map(|d| d.path()).unwrap_or(Path::new("."))
    }

    /// Saves a screenshot and the console log of every page under the
    /// browser's temp dir, keeps that dir, and returns its path.
    pub async fn evidence(&mut self) -> PathBuf {
        let pages: Vec<(String, Page)> = self.pages.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for (name, page) in &pages {
            let _ = page.screenshot(&self.dir().join(format!("{name}.png"))).await;
            let _ = std::fs::write(self.dir().join(format!("{name}.console.log")), page.console().join("\n"));
        }
        match self.dir.take() {
            Some(d) => d.keep(),
            None => PathBuf::from("."),
        }
    }

    /// Runs `test`; on failure saves [`Browser::evidence`] and names the
    /// directory in the error.
    pub async fn guard<T>(&mut self, result: Result<T>) -> Result<T> {
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                let dir = self.evidence().await;
                Err(e.context(format!("screenshots and console logs in {}", dir.display())))
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// A browser context: one person's storage.
pub struct Context<'b> {
    browser: &'b Browser,
    id: String,
}

impl Context<'_> {
    /// Opens a tab at `url` and waits for it to load; `name` names its
    /// evidence files.
    pub async fn tab(&self, name: &str, url: &str) -> Result<Page> {
        let cdp = &self.browser.cdp;
        let r =
            cdp.call(None, "Target.createTarget", json!({"url": "about:blank", "browserContextId": self.id})).await?;
        let target = r["targetId"].as_str().context("no targetId")?.to_owned();
        let r = cdp.call(None, "Target.attachToTarget", json!({"targetId": target, "flatten": true})).await?;
        let session = r["sessionId"].as_str().context("no sessionId")?.to_owned();
        let page = Page { cdp: cdp.clone(), session };
        for m in ["Page.enable", "Runtime.enable", "Log.enable"] {
            page.call(m, json!({})).await?;
        }
        page.goto(url).await?;
        self.browser.pages.lock().unwrap_or_else(|p| p.into_inner()).push((name.to_owned(), page.clone()));
        Ok(page)
    }
}

/// One tab.
#[derive(Clone)]
pub struct Page {
    cdp: Arc<Cdp>,
    session: String,
}

impl Page {
    async fn call(&self, method: &str, params: Value) -> Result<Value> {
        self.cdp.call(Some(&self.session), method, params).await
    }

    /// Navigates and waits until the document has loaded.
    pub async fn goto(&self, url: &str) -> Result<()> {
        self.call("Page.navigate", json!({"url": url})).await?;
        self.wait(&format!("{url} to load"), "document.readyState === 'complete' && location.href !== 'about:blank'")
            .await?;
        Ok(())
    }

    /// Evaluates a JavaScript expression (promises awaited) and returns its
    /// value as JSON.
    pub async fn eval(&self, expr: &str) -> Result<Value> {
        let r = self
            .call("Runtime.evaluate", json!({"expression": expr, "returnByValue": true, "awaitPromise": true}))
            .await?;
        if let Some(d) = r.get("exceptionDetails") {
            bail!("{expr}: {} {}", d["text"], d["exception"]["description"]);
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits (up to 30 s) until `expr` is truthy; returns its value.
    pub async fn wait(&self, what: &str, expr: &str) -> Result<Value> {
        self.wait_for(what, expr, Duration::from_secs(30)).await
    }

    /// Waits until `expr` is truthy, up to `timeout`.
    pub async fn wait_for(&self, what: &str, expr: &str, timeout: Duration) -> Result<Value> {
        let last = Mutex::new(String::new());
        let got = crate::wait_for(what, timeout, || async {
            match self.eval(expr).await {
                Ok(v) if !matches!(v, Value::Null | Value::Bool(false)) && v != json!(0) && v != json!("") => Some(v),
                Ok(_) => None,
                Err(e) => {
                    *last.lock().unwrap_or_else(|p| p.into_inner()) = e.to_string();
                    None
                }
            }
        })
        .await;
        got.map_err(|e| {
            let last = last.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if last.is_empty() {
                e
            } else {
                e.context(format!("last evaluation error: {last}"))
            }
        })
    }

    /// Sets an input's value as typing would (an `input` event follows).
    pub async fn fill(&self, selector: &str, text: &str) -> Result<()> {
        let js = format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) throw new Error('no ' + {s}); e.focus(); \
             e.value = {t}; e.dispatchEvent(new Event('input', {{bubbles: true}})); return true; }})()",
            s = json!(selector),
            t = json!(text)
        );
        self.eval(&js).await.map(|_| ())
    }

    /// Clicks an element.
    pub async fn click(&self, selector: &str) -> Result<()> {
        let js = format!(
            "(() => {{ const e = document.querySelector({s}); if (!e) throw new Error('no ' + {s}); e.click(); return true; }})()",
            s = json!(selector)
        );
        self.eval(&js).await.map(|_| ())
    }

    /// Types `text` into the focused element through the browser's input
    /// pipeline, as a keyboard would.
    pub async fn type_text(&self, text: &str) -> Result<()> {
        self.call("Input.insertText", json!({"text": text})).await.map(|_| ())
    }

    /// Presses Enter on the focused element.
    pub async fn press_enter(&self) -> Result<()> {
        for kind in ["keyDown", "keyUp"] {
            let mut p = json!({"type": kind, "key": "Enter", "code": "Enter", "windowsVirtualKeyCode": 13});
            if kind == "keyDown" {
                p["text"] = json!("\r");
            }
            self.call("Input.dispatchKeyEvent", p).await?;
        }
        Ok(())
    }

    /// Brings the tab to the front (it becomes the visible one).
    pub async fn front(&self) -> Result<()> {
        self.call("Page.bringToFront", json!({})).await.map(|_| ())
    }

    /// Sets the viewport (CSS pixels).
    pub async fn viewport(&self, width: u32, height: u32) -> Result<()> {
        let p = json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 700});
        self.call("Emulation.setDeviceMetricsOverride", p).await.map(|_| ())
    }

    /// Saves a PNG screenshot of the viewport.
    pub async fn screenshot(&self, path: &Path) -> Result<()> {
        let r = self.call("Page.captureScreenshot", json!({"format": "png"})).await?;
        let png =
            base64::engine::general_purpose::STANDARD.decode(r["data"].as_str().context("no screenshot data")?)?;
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))
    }

    /// Console messages and uncaught exceptions so far.
    pub fn console(&self) -> Vec<String> {
        self.cdp
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.session)
            .map(|l| l.console.clone())
            .unwrap_or_default()
    }

    /// JavaScript dialogs (`alert`, `confirm`, `prompt`) the page opened.
    pub fn dialogs(&self) -> Vec<String> {
        self.cdp
            .logs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&self.session)
            .map(|l| l.dialogs.clone())
            .unwrap_or_default()
    }
}
