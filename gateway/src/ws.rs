//! The WebSocket transport: upgrade at `GET /v1/ws`, then a reader feeding
//! the [`Session`] and a writer draining its outbound queue.

use std::sync::Arc;

use bytes::Bytes;
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
use crate::http::{ApiError, Resp};
use crate::outbound::{self, CLOSE_BAD_UTF8, CLOSE_GOING_AWAY, CLOSE_IDLE, CLOSE_TOO_BIG};
use crate::session::Session;
use crate::AppState;

/// Answers the upgrade request and spawns the connection.
pub fn upgrade(state: Arc<AppState>, claims: Claims, mut req: Request<Incoming>) -> Resp {
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = req.headers().get(header::SEC_WEBSOCKET_KEY).cloned();
    let (true, Some(key)) = (is_ws, key) else {
        return ApiError::bad_request("expected a WebSocket upgrade request").into_response();
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let cfg = WebSocketConfig::default()
                    .max_message_size(Some(state.cfg.max_frame_bytes))
                    .max_frame_size(Some(state.cfg.max_frame_bytes));
                let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(cfg)).await;
                let span = tracing::info_span!("ws", user_id = claims.user, device = %claims.device);
                tracing::Instrument::instrument(serve(state, claims, ws), span).await;
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
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
    let _conn = state.connections.enter();
    let (mut sink, mut stream) = ws.split();
    let (out, mut out_rx) = outbound::channel(state.cfg.outbound_frames, state.cfg.outbound_bytes);
    let mut session = Session::start(state.clone(), claims, out.clone()).await;
    let writer = tokio::spawn(async move {
        loop {
            match out_rx.next().await {
                Ok(text) => {
                    if sink.send(Message::text(text)).await.is_err() {
                        return;
                    }
                }
                Err(code) => {
                    let frame = CloseFrame { code: CloseCode::from(code), reason: close_reason(code).into() };
                    let close = sink.send(Message::Close(Some(frame)));
                    // A reader that stopped reading gets this long to take
                    // the close frame before the socket is dropped.
                    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), close).await;
                    return;
                }
            }
        }
    });
    let mut shutdown = state.shutdown.subscribe();
    let idle = state.cfg.idle_timeout;
    loop {
        let next = tokio::select! {
            n = tokio::time::timeout(idle, stream.next()) => n,
            _ = shutdown.recv() => { out.close(CLOSE_GOING_AWAY); break; }
            _ = out.closed() => break,
        };
        match next {
            Err(_) => {
                out.close(CLOSE_IDLE);
                break;
            }
            Ok(None) => break,
            Ok(Some(Ok(Message::Text(t)))) => session.on_text(t.as_str()),
            Ok(Some(Ok(Message::Binary(_)))) => session.on_binary(),
            Ok(Some(Ok(Message::Close(_)))) => {
                session.closed_cleanly();
                break;
            }
            Ok(Some(Ok(_))) => {} // ping/pong frames are answered by tungstenite
            Ok(Some(Err(WsError::Capacity(_)))) => {
                out.close(CLOSE_TOO_BIG);
                break;
            }
            Ok(Some(Err(WsError::Utf8(_)))) => {
                out.close(CLOSE_BAD_UTF8);
                break;
            }
            Ok(Some(Err(e))) => {
                tracing::debug!(error = %e, "connection error");
                break;
            }
        }
    }
    out.close(CLOSE_GOING_AWAY);
    drop(session);
    let _ = writer.await;
}

fn close_reason(code: u16) -> &'static str {
    match code {
        outbound::CLOSE_SLOW_CONSUMER => "slow_consumer",
        outbound::CLOSE_INTERNAL => "internal",
        CLOSE_IDLE => "idle",
        outbound::CLOSE_LOGGED_OUT => "logged_out",
        CLOSE_TOO_BIG => "too_large",
        CLOSE_BAD_UTF8 => "bad_utf8",
        _ => "going_away",
    }
}
