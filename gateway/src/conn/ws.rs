//! The WebSocket transport: upgrade at `GET /v1/ws`, then a reader feeding
//! the [`Session`] and a writer draining its outbound queue.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{header, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;

use crate::auth::Claims;
use crate::conn::outbound::{CLOSE_BAD_UTF8, CLOSE_PROTOCOL, CLOSE_TOO_BIG};
use crate::conn::transport::{self, Inbound, Sink, Source};
use crate::error::ClientError;
use crate::http::Resp;
use crate::AppState;

/// The WebSocket read buffer, resident for the connection's life.
const READ_BUFFER: usize = 1024;

/// Answers the upgrade request and spawns the connection.
pub fn upgrade(state: Arc<AppState>, claims: Claims, mut req: Request<Incoming>) -> Resp {
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_ws, key) else {
        return ClientError::bad_request("expected a WebSocket upgrade request").into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    let fut = async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                // tungstenite's defaults (128 KiB read buffer allocated up
                // front, 128 KiB write batching) cost ~125 KiB per idle
                // connection. The read buffer (1 KiB: client frames are
                // small; a large one is reserved whole and read 1 KiB per
                // syscall) stays resident; small write batches still
                // coalesce a burst of deliveries into few syscalls (see
                // docs/benchmarks.md, idle).
                let cfg = WebSocketConfig::default()
                    .read_buffer_size(READ_BUFFER)
                    .write_buffer_size(8 * 1024)
                    .max_message_size(Some(state.cfg.max_frame_bytes))
                    .max_frame_size(Some(state.cfg.max_frame_bytes));
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
                let span = tracing::info_span!("ws", user_id = claims.user, device = %claims.device);
                tracing::Instrument::instrument(serve(state, claims, ws), span).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    };
    tokio::spawn(fut);
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::UPGRADE, "websocket")
        .header(header::CONNECTION, "Upgrade")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Full::new(Bytes::new()))
        .expect("static response parts are valid")
}

async fn serve<S>(state: Arc<AppState>, claims: Claims, ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sink, stream) = ws.split();
    transport::drive(state, crate::metrics::Transport::Ws, claims, WsSource(stream), WsSink(sink)).await;
}

struct WsSource<S>(SplitStream<WebSocketStream<S>>);

impl<S> Source for WsSource<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async fn recv(&mut self) -> Inbound {
        match self.0.next().await {
            None => Inbound::Closed { clean: false },
            Some(Ok(Message::Text(t))) => Inbound::Text(t.as_str().to_owned()),
            Some(Ok(Message::Binary(_))) => Inbound::Binary,
            Some(Ok(Message::Close(_))) => Inbound::Closed { clean: true },
            Some(Ok(_)) => Inbound::Skip, // ping/pong frames are answered by tungstenite
            Some(Err(WsError::Capacity(_))) => Inbound::Fatal(CLOSE_TOO_BIG),
            Some(Err(WsError::Utf8(_))) => Inbound::Fatal(CLOSE_BAD_UTF8),
            Some(Err(WsError::Protocol(e))) => {
                tracing::debug!(error = %e, "WebSocket protocol violation");
                Inbound::Fatal(CLOSE_PROTOCOL)
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "connection error");
                Inbound::Closed { clean: false }
            }
        }
    }
}

struct WsSink<S>(SplitSink<WebSocketStream<S>, Message>);

impl<S> Sink for WsSink<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    async fn send(&mut self, text: String) -> bool {
        self.0.send(Message::text(text)).await.is_ok()
    }

    async fn close(mut self, code: u16, reason: &'static str) {
        // After the client's close frame tungstenite has queued the answer
        // (echoing the client's code) and refuses a close of ours; closing
        // the sink flushes that answer. Otherwise our frame goes out first.
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        let _ = self.0.send(Message::Close(Some(frame))).await;
        let _ = self.0.close().await;
    }
}
