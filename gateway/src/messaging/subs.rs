//! Many core NATS subscriptions on one connection of the gateway's own,
//! with no channel or task per subscription.
//!
//! Each async-nats subscription allocates a channel whose first block holds
//! 32 messages (about 6 KB) for as long as it lives, and the hub holds one
//! per connected user and per followed presence subject: at 15,000 idle
//! connections that was a third of the gateway's memory. This connection
//! speaks the NATS client protocol itself (`CONNECT`, `SUB`, `UNSUB`,
//! `PING`/`PONG`, `MSG`/`HMSG`) and hands each message straight to its
//! subscription's handler, so a subscription costs a map entry.
//!
//! It only subscribes: nothing is published on it. It connects to the
//! servers of `CHAT_NATS_URL` in turn with the gateway's credentials,
//! re-subscribes everything after a reconnect and then calls the
//! reconnect hook (the hub wakes every receiver, since messages published
//! while it was away are lost, as with any core subscription). Plain TCP
//! only: with a `tls://` server the hub keeps async-nats subscriptions.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use chat_nats::provision::Credentials;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

/// What a subscription does with each message: its header block (`HMSG`,
/// empty for `MSG`) and payload (must not block).
pub type Handler = Box<dyn Fn(&[u8], Bytes) + Send + Sync>;

/// A control line longer than this closes the connection (the server's own
/// limit is 4 KiB).
const MAX_CONTROL_LINE: usize = 16 * 1024;
/// A message larger than this closes the connection (nats-server's
/// `max_payload` cannot be set above 64 MiB).
const MAX_PAYLOAD: usize = 64 << 20;
/// How long one connection attempt (TCP, `INFO`, `CONNECT`'s answer) may
/// take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff between connection attempts, doubling up to the maximum.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// A connection that has heard nothing for this long is pinged, and one
/// that then stays silent as long again is dropped.
const IDLE_PING: Duration = Duration::from_secs(20);

/// The subscribing connection. Cloning shares it.
#[derive(Clone)]
pub struct Subscriber {
    inner: Arc<Inner>,
}

struct Inner {
    cmds: mpsc::UnboundedSender<Cmd>,
    subs: Mutex<HashMap<u64, Sub>>,
    next_sid: AtomicU64,
    connected: AtomicBool,
    reconnects: AtomicU64,
}

struct Sub {
    subject: String,
    handler: Handler,
}

enum Cmd {
    Sub(u64),
    Unsub(u64),
    Flush(oneshot::Sender<()>),
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.inner.subs.lock().map(|s| s.len()).unwrap_or(0);
        write!(f, "Subscriber({n} subscriptions, connected: {})", self.connected())
    }
}

/// `host:port` of each plain `nats://` (or scheme-less) server in `urls`;
/// `None` if any is another scheme (TLS), which this connection does not
/// speak.
pub fn plain_servers(urls: &str) -> Option<Vec<String>> {
    let mut out = Vec::new();
    for u in urls.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let rest = match u.split_once("://") {
            Some(("nats", r)) => r,
            Some(_) => return None,
            None => u,
        };
        let host = rest.split(['/', '?']).next().unwrap_or("");
        if host.is_empty() {
            return None;
        }
        let has_port = if host.starts_with('[') { host.contains("]:") } else { host.contains(':') };
        out.push(if has_port { host.to_owned() } else { format!("{host}:4222") });
    }
    (!out.is_empty()).then_some(out)
}

impl Subscriber {
    /// Starts the connection to `servers` (tried in turn, forever);
    /// `on_reconnect` runs after every reconnect, once all subscriptions
    /// are back in place.
    pub fn start(
        servers: Vec<String>,
        name: String,
        credentials: Option<Credentials>,
        on_reconnect: Box<dyn Fn() + Send + Sync>,
    ) -> Subscriber {
        let (cmds, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            cmds,
            subs: Mutex::new(HashMap::new()),
            next_sid: AtomicU64::new(1),
            connected: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        });
        let conn = Conn { inner: Arc::downgrade(&inner), servers, name, credentials, on_reconnect };
        tokio::spawn(conn.run(rx));
        Subscriber { inner }
    }

    fn subs(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Sub>> {
        self.inner.subs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes `handler` to `subject` and returns its id. The server
    /// has it once a later [`Subscriber::flush`] has returned.
    pub fn subscribe(&self, subject: String, handler: Handler) -> u64 {
        let sid = self.inner.next_sid.fetch_add(1, Ordering::Relaxed);
        self.subs().insert(sid, Sub { subject, handler });
        let _ = self.inner.cmds.send(Cmd::Sub(sid));
        sid
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, sid: u64) {
        if self.subs().remove(&sid).is_some() {
            let _ = self.inner.cmds.send(Cmd::Unsub(sid));
        }
    }

    /// Returns once the server has answered a `PING` sent after everything
    /// asked of it so far (so every earlier subscription is in place),
    /// waiting through reconnects.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.inner.cmds.send(Cmd::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Whether the connection is up.
    pub fn connected(&self) -> bool {
        self.inner.connected.load(Ordering::Relaxed)
    }

    /// Connections made after the first.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }
}

/// The connection task's state.
struct Conn {
    inner: std::sync::Weak<Inner>,
    servers: Vec<String>,
    name: String,
    credentials: Option<Credentials>,
    on_reconnect: Box<dyn Fn() + Send + Sync>,
}

/// Why a connection ended.
enum End {
    /// Every [`Subscriber`] is gone.
    Dropped,
    /// The socket failed or the server misbehaved.
    Lost(String),
}

impl Conn {
    async fn run(self, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
        // Flushes waiting for the next PONG, oldest first; kept across
        // reconnects (a new PING is sent for them).
        let mut flushes: VecDeque<oneshot::Sender<()>> = VecDeque::new();
        let mut backoff = BACKOFF_MIN;
        let mut attempt = 0usize;
        let mut connected_before = false;
        loop {
            let server = &self.servers[attempt % self.servers.len()];
            attempt += 1;
            match Box::pin(self.handshake(server)).await {
                Ok(stream) => {
                    backoff = BACKOFF_MIN;
                    tracing::info!(server, "shared-subscription NATS connection up");
                    match Box::pin(self.serve(stream, &mut cmds, &mut flushes, connected_before)).await {
                        End::Dropped => return,
                        End::Lost(why) => {
                            tracing::warn!(server, why, "shared-subscription NATS connection lost; reconnecting")
                        }
                    }
                    connected_before = true;
                    if let Some(inner) = self.inner.upgrade() {
                        inner.connected.store(false, Ordering::Relaxed);
                    }
                }
                Err(e) => tracing::warn!(server, error = %e, "shared-subscription NATS connection failed"),
            }
            if self.inner.strong_count() == 0 {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    /// TCP, the server's `INFO`, `CONNECT`, and a `PING` answered (an
    /// authorization error arrives instead of that `PONG`).
    async fn handshake(&self, server: &str) -> Result<(TcpStream, BytesMut), String> {
        tokio::time::timeout(CONNECT_TIMEOUT, async {
            let mut stream = TcpStream::connect(server).await.map_err(|e| e.to_string())?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let mut buf = BytesMut::with_capacity(4096);
            let info = read_line(&mut stream, &mut buf).await?;
            let info = info.strip_prefix("INFO ").ok_or_else(|| format!("expected INFO, got {info:.80}"))?;
            let info: serde_json::Value = serde_json::from_str(info).map_err(|e| format!("bad INFO: {e}"))?;
            if info["tls_required"].as_bool() == Some(true) {
                return Err("the server requires TLS".into());
            }
            let mut connect = serde_json::json!({
                "verbose": false, "pedantic": false, "lang": "rust-chat-gateway", "version": env!("CARGO_PKG_VERSION"),
                "protocol": 1, "headers": true, "no_responders": false, "name": self.name,
            });
            if let Some(c) = &self.credentials {
                connect["user"] = c.user.clone().into();
                connect["pass"] = c.password.clone().into();
            }
            let hello = format!("CONNECT {connect}\r\nPING\r\n");
            stream.write_all(hello.as_bytes()).await.map_err(|e| e.to_string())?;
            loop {
                let line = read_line(&mut stream, &mut buf).await?;
                match line.as_str() {
                    "PONG" => return Ok((stream, buf)),
                    "PING" => stream.write_all(b"PONG\r\n").await.map_err(|e| e.to_string())?,
                    l if l.starts_with("-ERR") => return Err(format!("server refused: {l}")),
                    l if l.starts_with("INFO ") || l == "+OK" => {}
                    l => return Err(format!("unexpected {l:.80}")),
                }
            }
        })
        .await
        .map_err(|_| format!("no answer in {CONNECT_TIMEOUT:?}"))?
    }

    async fn serve(
        &self,
        (stream, mut buf): (TcpStream, BytesMut),
        cmds: &mut mpsc::UnboundedReceiver<Cmd>,
        flushes: &mut VecDeque<oneshot::Sender<()>>,
        reconnected: bool,
    ) -> End {
        let (mut rd, mut wr) = stream.into_split();
        // Everything subscribed so far, then a PING for the flushes that
        // were waiting when the last connection went.
        let mut out = Vec::new();
        {
            let Some(inner) = self.inner.upgrade() else { return End::Dropped };
            for (sid, s) in inner.subs.lock().unwrap_or_else(|p| p.into_inner()).iter() {
                out.extend_from_slice(format!("SUB {} {sid}\r\n", s.subject).as_bytes());
            }
        }
        // PONGs owed to the flushes, in order: each PING sent answers the
        // flushes queued before it.
        let mut pings: VecDeque<usize> = VecDeque::new();
        if !flushes.is_empty() {
            out.extend_from_slice(b"PING\r\n");
            pings.push_back(flushes.len());
        }
        if let Err(e) = wr.write_all(&out).await {
            return End::Lost(e.to_string());
        }
        if let Some(inner) = self.inner.upgrade() {
            inner.connected.store(true, Ordering::Relaxed);
        }
        if reconnected {
            if let Some(inner) = self.inner.upgrade() {
                inner.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            (self.on_reconnect)();
        }
        let mut heard = tokio::time::Instant::now();
        let mut pinged_idle = false;
        loop {
            // Whole messages already read are handled first.
            loop {
                match parse(&mut buf) {
                    Ok(None) => break,
                    Ok(Some(Frame::Msg { sid, headers, payload })) => {
                        let Some(inner) = self.inner.upgrade() else { return End::Dropped };
                        let subs = inner.subs.lock().unwrap_or_else(|p| p.into_inner());
                        if let Some(s) = subs.get(&sid) {
                            (s.handler)(&headers, payload);
                        }
                    }
                    Ok(Some(Frame::Ping)) => {
                        if let Err(e) = wr.write_all(b"PONG\r\n").await {
                            return End::Lost(e.to_string());
                        }
                    }
                    Ok(Some(Frame::Pong)) => match pings.pop_front() {
                        Some(n) => {
                            for tx in flushes.drain(..n.min(flushes.len())) {
                                let _ = tx.send(());
                            }
                        }
                        None => return End::Lost("a PONG for no PING".into()),
                    },
                    Ok(Some(Frame::Err(e))) => {
                        // Permission errors leave the connection open; the
                        // others close it.
                        tracing::warn!(error = e, "NATS error on the shared-subscription connection");
                    }
                    Ok(Some(Frame::Other)) => {}
                    Err(e) => return End::Lost(e),
                }
            }
            if buf.capacity() > 64 * 1024 && buf.is_empty() {
                buf = BytesMut::with_capacity(4096);
            }
            let idle_deadline = heard + IDLE_PING;
            tokio::select! {
                read = rd.read_buf(&mut buf) => match read {
                    Ok(0) => return End::Lost("the server closed the connection".into()),
                    Ok(_) => {
                        heard = tokio::time::Instant::now();
                        pinged_idle = false;
                        if buf.len() > MAX_CONTROL_LINE && !buf.contains(&b'\n') {
                            return End::Lost("control line too long".into());
                        }
                    }
                    Err(e) => return End::Lost(e.to_string()),
                },
                cmd = cmds.recv() => {
                    let Some(cmd) = cmd else { return End::Dropped };
                    out.clear();
                    let mut next = Some(cmd);
                    // Take whatever else is queued: one write for all of it.
                    while let Some(cmd) = next {
                        match cmd {
                            Cmd::Sub(sid) => {
                                let Some(inner) = self.inner.upgrade() else { return End::Dropped };
                                let subs = inner.subs.lock().unwrap_or_else(|p| p.into_inner());
                                if let Some(s) = subs.get(&sid) {
                                    out.extend_from_slice(format!("SUB {} {sid}\r\n", s.subject).as_bytes());
                                }
                            }
                            Cmd::Unsub(sid) => out.extend_from_slice(format!("UNSUB {sid}\r\n").as_bytes()),
                            Cmd::Flush(tx) => {
                                flushes.push_back(tx);
                                out.extend_from_slice(b"PING\r\n");
                                let owed: usize = pings.iter().sum();
                                pings.push_back(flushes.len() - owed);
                            }
                        }
                        next = cmds.try_recv().ok();
                    }
                    if let Err(e) = wr.write_all(&out).await {
                        return End::Lost(e.to_string());
                    }
                    if out.capacity() > 64 * 1024 {
                        out = Vec::new();
                    }
                }
                () = tokio::time::sleep_until(idle_deadline) => {
                    if pinged_idle {
                        return End::Lost(format!("no answer from the server in {:?}", IDLE_PING * 2));
                    }
                    pinged_idle = true;
                    heard = tokio::time::Instant::now();
                    // An idle PING owes no flush.
                    pings.push_back(0);
                    if let Err(e) = wr.write_all(b"PING\r\n").await {
                        return End::Lost(e.to_string());
                    }
                }
            }
        }
    }
}

/// Reads one `\r\n`-terminated line (without it) during the handshake.
async fn read_line(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<String, String> {
    loop {
        if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
            let line = buf.split_to(i + 2);
            return String::from_utf8(line[..i].to_vec()).map_err(|_| "a control line that is not UTF-8".into());
        }
        if buf.len() > MAX_CONTROL_LINE {
            return Err("control line too long".into());
        }
        if stream.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("the server closed the connection".into());
        }
    }
}

/// One thing the server sent.
#[derive(Debug, PartialEq)]
enum Frame {
    Msg {
        sid: u64,
        /// The header block of an `HMSG` (`NATS/1.0` line included), empty
        /// for a `MSG`.
        headers: Bytes,
        payload: Bytes,
    },
    Ping,
    Pong,
    Err(String),
    /// `+OK`, `INFO` (cluster changes; the configured servers are used).
    Other,
}

/// Takes one whole frame off the front of `buf`; `Ok(None)` if it is not
/// all there yet.
fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, String> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
    let line = std::str::from_utf8(&buf[..eol]).map_err(|_| "a control line that is not UTF-8".to_string())?;
    let mut words = line.split_ascii_whitespace();
    let op = words.next().unwrap_or("").to_ascii_uppercase();
    let frame = match op.as_str() {
        "MSG" | "HMSG" => {
            // MSG <subject> <sid> [reply] <bytes>
            // HMSG <subject> <sid> [reply] <header bytes> <total bytes>
            let args: Vec<&str> = words.collect();
            let n = if op == "MSG" { 3 } else { 4 };
            if args.len() != n && args.len() != n + 1 {
                return Err(format!("malformed {op}: {line:.120}"));
            }
            let sid: u64 = args[1].parse().map_err(|_| format!("bad sid in {line:.120}"))?;
            let num = |s: &str| s.parse::<usize>().map_err(|_| format!("bad size in {line:.120}"));
            let total = num(args[args.len() - 1])?;
            let headers = if op == "HMSG" { num(args[args.len() - 2])? } else { 0 };
            if headers > total || total > MAX_PAYLOAD {
                return Err(format!("sizes out of bounds in {line:.120}"));
            }
            let end = eol + 2 + total + 2;
            if buf.len() < end {
                buf.reserve(end - buf.len());
                return Ok(None);
            }
            if &buf[end - 2..end] != b"\r\n" {
                return Err(format!("{op} payload not followed by CRLF"));
            }
            // Copied out: a payload kept in a receiver's ring must not pin
            // the whole read buffer.
            let head = Bytes::copy_from_slice(&buf[eol + 2..eol + 2 + headers]);
            let payload = Bytes::copy_from_slice(&buf[eol + 2 + headers..end - 2]);
            buf.advance(end);
            return Ok(Some(Frame::Msg { sid, headers: head, payload }));
        }
        "PING" => Frame::Ping,
        "PONG" => Frame::Pong,
        "+OK" | "INFO" => Frame::Other,
        "-ERR" => Frame::Err(line[4..].trim().to_owned()),
        _ => return Err(format!("unknown operation {line:.120}")),
    };
    buf.advance(eol + 2);
    Ok(Some(frame))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_all(input: &[u8]) -> Result<Vec<Frame>, String> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = parse(&mut buf)? {
            out.push(f);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    #[test]
    fn frames_are_parsed_whole_headers_kept_apart_and_split_input_waits() {
        let got = parse_all(
            b"PING\r\nMSG a.b 7 5\r\nhello\r\nHMSG a.c 9 _INBOX.x 12 14\r\nNATS/1.0\r\n\r\nhi\r\n+OK\r\n-ERR 'Permissions Violation'\r\npong\r\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vec![
                Frame::Ping,
                Frame::Msg { sid: 7, headers: Bytes::new(), payload: Bytes::from_static(b"hello") },
                Frame::Msg {
                    sid: 9,
                    headers: Bytes::from_static(b"NATS/1.0\r\n\r\n"),
                    payload: Bytes::from_static(b"hi")
                },
                Frame::Other,
                Frame::Err("'Permissions Violation'".into()),
                Frame::Pong,
            ]
        );
        // A message whose payload has not all arrived is left in place.
        let mut buf = BytesMut::from(&b"MSG a 1 10\r\n01234"[..]);
        assert_eq!(parse(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"56789\r\n");
        let whole = Frame::Msg { sid: 1, headers: Bytes::new(), payload: Bytes::from_static(b"0123456789") };
        assert_eq!(parse(&mut buf).unwrap(), Some(whole));
        // An empty payload.
        let empty = Frame::Msg { sid: 2, headers: Bytes::new(), payload: Bytes::new() };
        assert_eq!(parse_all(b"MSG a 2 0\r\n\r\n").unwrap(), vec![empty]);
    }

    #[test]
    fn malformed_frames_are_errors_not_panics() {
        for bad in [
            &b"MSG a 1\r\n"[..],
            b"MSG a x 1\r\nz\r\n",
            b"MSG a 1 3\r\nabcd\r\n",
            b"HMSG a 1 9 3\r\nabc\r\n",
            b"MSG a 1 99999999999999999999999\r\n",
            b"MSG a 1 999999999999\r\n",
            b"WHAT\r\n",
            b"MSG \xff 1 1\r\na\r\n",
        ] {
            assert!(parse_all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn servers_are_plain_host_ports_and_tls_is_declined() {
        assert_eq!(
            plain_servers("nats://127.0.0.1:4222, localhost ,nats://[::1]:5000").unwrap(),
            vec!["127.0.0.1:4222", "localhost:4222", "[::1]:5000"]
        );
        assert_eq!(plain_servers("nats://10.0.0.1:1,tls://x:2"), None);
        assert_eq!(plain_servers(""), None);
    }
}
