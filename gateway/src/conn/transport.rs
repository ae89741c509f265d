//! The transport-agnostic connection driver. A transport (WebSocket,
//! QUIC) supplies a [`Source`] of client frames and a [`Sink`] for server
//! frames; [`drive`] runs the [`Session`] between them: idle timeout,
//! shutdown, the bounded outbound queue and close codes are all here, once.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Claims;
use crate::conn::outbound::{self, CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_RECONNECT_ELSEWHERE};
use crate::conn::session::Session;
use crate::metrics::Transport;
use crate::AppState;

/// What a transport read.
#[derive(Debug)]
pub enum Inbound {
    /// A text frame (one JSON object).
    Text(String),
    /// A binary frame (not part of the protocol).
    Binary,
    /// Nothing for the session (a transport-level ping, say).
    Skip,
    /// The client went away; `clean` when it closed properly.
    Closed {
        /// A proper close (WebSocket close frame, QUIC stream finished).
        clean: bool,
    },
    /// The client broke the transport's rules: close with this code.
    Fatal(u16),
}

/// Reads client frames.
pub trait Source: Send {
    /// The next frame.
    fn recv(&mut self) -> impl Future<Output = Inbound> + Send;
}

/// Writes server frames.
pub trait Sink: Send + 'static {
    /// Writes one frame; false once the connection is gone.
    fn send(&mut self, text: String) -> impl Future<Output = bool> + Send;
    /// Closes the connection with a code and reason.
    fn close(self, code: u16, reason: &'static str) -> impl Future<Output = ()> + Send;
}

/// How long a client that stopped reading gets to take the close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(10);

/// Runs one authenticated connection over `transport` to its end.
pub async fn drive(
    state: Arc<AppState>,
    transport: Transport,
    claims: Claims,
    mut source: impl Source,
    mut sink: impl Sink,
) {
    let conn = state.connections.enter();
    let _counted = state.metrics.session(transport);
    let (out, mut out_rx) = outbound::channel(state.cfg.outbound_frames, state.cfg.outbound_bytes);
    // Transient awaits are boxed: the task stays resident for the whole
    // connection, and an unboxed await would keep the largest future it
    // ever awaits in the task's allocation (see docs/benchmarks.md, idle).
    let mut session = Box::pin(Session::start(state.clone(), claims, out.clone())).await;
    let st = state.clone();
    let writer = tokio::spawn(async move {
        loop {
            match out_rx.next_frame().await {
                Ok(f) => {
                    let kind = crate::metrics::FrameOut::of(&f.text);
                    if !sink.send(f.text).await {
                        return;
                    }
                    st.metrics.frame_out(kind);
                    if let Some((ts, phase)) = f.stored {
                        st.metrics.delivered(ts, phase);
                    }
                }
                Err(code) => {
                    st.metrics.closed(code);
                    let _ = Box::pin(tokio::time::timeout(CLOSE_GRACE, sink.close(code, close_reason(code)))).await;
                    return;
                }
            }
        }
    });
    let mut shutdown = state.shutdown.subscribe();
    let idle = state.cfg.idle_timeout;
    let mut drained = false;
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout(idle, source.recv()) => n,
            _ = shutdown.recv() => { out.close(CLOSE_GOING_AWAY); break; }
            _ = conn.drain.notified() => { drained = true; break; }
            _ = out.closed() => break,
        };
        match next {
            Err(_) => {
                out.close(CLOSE_IDLE);
                break;
            }
            Ok(Inbound::Text(t)) => session.on_text(&t),
            Ok(Inbound::Binary) => session.on_binary(),
            Ok(Inbound::Skip) => {}
            Ok(Inbound::Closed { clean }) => {
                if clean {
                    session.closed_cleanly();
                    out.close(outbound::CLOSE_NORMAL);
                }
                break;
            }
            Ok(Inbound::Fatal(code)) => {
                out.close(code);
                break;
            }
        }
    }
    if drained {
        // Reconnect elsewhere: frames not yet read stay unread (the client
        // sends them again on its next gateway); every send already taken
        // gets its ack or error, and every queued frame goes out first.
        let deadline = tokio::time::Instant::now() + state.cfg.send_timeout + Duration::from_secs(2);
        Box::pin(session.finish_sends(deadline)).await;
        Box::pin(out.flushed(deadline)).await;
        out.close(CLOSE_RECONNECT_ELSEWHERE);
    }
    out.close(CLOSE_GOING_AWAY);
    drop(session);
    let _ = writer.await;
}

pub use crate::error::close_reason;
