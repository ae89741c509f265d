//! The QUIC transport (quinn): ALPN `chat/1`, TLS 1.3.
//!
//! A client opens one bidirectional stream for its session. Each frame, both
//! ways, is a 4-byte big-endian length followed by exactly the JSON object
//! a WebSocket text frame would carry. The first client frame must be
//! `{"type":"auth","token":...}`, answered by `{"type":"ready"}`; then the
//! session runs through the same [`transport::drive`] as WebSocket. Close
//! codes are QUIC application error codes with the WebSocket numbers.
//! Connection migration is on: a client whose address changes keeps its
//! session.

use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, RecvStream, SendStream, VarInt};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::net::UdpSocket;
use std::path::Path;
use std::sync::Arc;

use crate::conn::outbound::{CLOSE_BAD_UTF8, CLOSE_RECONNECT_ELSEWHERE, CLOSE_TOO_BIG, CLOSE_UNAUTHORIZED};
use crate::conn::transport::{self, Inbound, Sink, Source};
use crate::http::accounts::check_token;
use crate::AppState;

/// The ALPN protocol id.
pub const ALPN: &[u8] = b"chat/1";

/// TLS material problems.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The certificate or key is unusable.
    #[error("TLS: {0}")]
    Invalid(String),
}

/// The certificate and key: from `CHAT_TLS_CERT`/`CHAT_TLS_KEY`, else a
/// self-signed pair generated once under `<data dir>/tls/`. Returns them
/// with the certificate's SHA-256 fingerprint (hex).
pub fn load_or_generate(
    cert: Option<&Path>,
    key: Option<&Path>,
    data_dir: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>, String), TlsError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| TlsError::Io { path, source }
    };
    let (cert_path, key_path) = match (cert, key) {
        (Some(c), Some(k)) => (c.to_path_buf(), k.to_path_buf()),
        (None, None) => {
            let dir = data_dir.join("tls");
            let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
            if !c.exists() || !k.exists() {
                std::fs::create_dir_all(&dir).map_err(io(&dir))?;
                let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
                let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Invalid(e.to_string()))?;
                std::fs::write(&c, ck.cert.pem()).map_err(io(&c))?;
                write_private(&k, ck.key_pair.serialize_pem().as_bytes()).map_err(io(&k))?;
            }
            (c, k)
        }
        _ => return Err(TlsError::Invalid("set both CHAT_TLS_CERT and CHAT_TLS_KEY, or neither".into())),
    };
    let cert_pem = std::fs::read(&cert_path).map_err(io(&cert_path))?;
    let key_pem = std::fs::read(&key_path).map_err(io(&key_path))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", cert_path.display())))?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .ok_or_else(|| TlsError::Invalid(format!("no private key in {}", key_path.display())))?;
    let first = certs.first().ok_or_else(|| TlsError::Invalid(format!("no certificate in {}", cert_path.display())))?;
    let fingerprint = hex(&Sha256::digest(first.as_ref()));
    Ok((certs, key, fingerprint))
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Builds the endpoint on an already-bound UDP socket.
pub fn endpoint(state: &AppState, socket: UdpSocket) -> Result<(Endpoint, String), TlsError> {
    let cfg = &state.cfg;
    let (certs, key, fingerprint) = load_or_generate(cfg.tls_cert.as_deref(), cfg.tls_key.as_deref(), &cfg.data_dir)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Invalid(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Invalid(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let transport = Arc::get_mut(&mut server.transport).expect("fresh config");
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(cfg.quic_idle_timeout).map_err(|e| TlsError::Invalid(e.to_string()))?,
    ));
    transport.keep_alive_interval(Some(cfg.quic_keep_alive));
    // One bidirectional stream per session, no unidirectional streams, no
    // datagrams; flow-control windows bound what a client can make the
    // gateway buffer (frames larger than the window still pass, paced).
    transport.max_concurrent_bidi_streams(1u32.into());
    transport.max_concurrent_uni_streams(0u32.into());
    transport.datagram_receive_buffer_size(None);
    transport.stream_receive_window(cfg.quic_stream_window.into());
    transport.receive_window((2 * cfg.quic_stream_window).into());
    transport.send_window(4 * u64::from(cfg.quic_stream_window));
    // A burst of datagrams (heartbeats from thousands of clients) must not
    // overflow the kernel's default ~208 KiB socket buffer.
    let sock = socket2::SockRef::from(&socket);
    if let Err(e) =
        sock.set_recv_buffer_size(cfg.quic_socket_buffer).and(sock.set_send_buffer_size(cfg.quic_socket_buffer))
    {
        tracing::warn!(error = %e, "cannot size the QUIC socket buffers");
    }
    server.migration(true);
    let runtime = quinn::default_runtime().ok_or_else(|| TlsError::Invalid("no async runtime".into()))?;
    let endpoint = Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime)
        .map_err(|e| TlsError::Invalid(e.to_string()))?;
    Ok((endpoint, fingerprint))
}

/// Accepts connections until the endpoint closes.
pub async fn serve(state: Arc<AppState>, endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let state = state.clone();
        tokio::spawn(async move {
            match Box::pin(std::future::IntoFuture::into_future(incoming)).await {
                Ok(conn) => {
                    let span = tracing::info_span!("quic", remote = %conn.remote_address());
                    tracing::Instrument::instrument(connection(state, conn), span).await;
                }
                Err(e) => tracing::debug!(error = %e, "QUIC handshake failed"),
            }
        });
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum First {
    Auth { token: String },
}

async fn connection(state: Arc<AppState>, conn: quinn::Connection) {
    // The login deadline runs from the handshake: a client that never opens
    // a stream is closed like one that never authenticates (the server's
    // keep-alives would otherwise hold the connection up for ever).
    let deadline = tokio::time::Instant::now() + state.cfg.quic_auth_timeout;
    // The stream is kept until the connection is closed on a refusal:
    // dropping it first would finish it, and the client would read a clean
    // end of stream instead of the close code.
    let mut stream: Option<(QuicSource, QuicSink)> = None;
    let login = async {
        let (send, recv) = conn.accept_bi().await.ok()?;
        let (source, _) =
            stream.insert((QuicSource { recv, max: state.cfg.max_frame_bytes }, QuicSink { send, conn: conn.clone() }));
        let Inbound::Text(t) = source.recv().await else { return None };
        let First::Auth { token } = serde_json::from_str::<First>(&t).ok()?;
        check_token(&state, &token).await.ok()
    };
    // Boxed, like the refusal below: only `drive` stays resident.
    let claims = Box::pin(tokio::time::timeout_at(deadline, login)).await.ok().flatten();
    let Some(claims) = claims else {
        conn.close(VarInt::from_u32(CLOSE_UNAUTHORIZED.into()), b"unauthorized");
        drop(stream);
        return;
    };
    let Some((source, mut sink)) = stream.take() else { return };
    if let Err(e) = crate::edge::admit(&state) {
        // Refused: the reason as an error frame, then "reconnect elsewhere".
        let refuse = async {
            if sink.send(crate::error::frame(&e.into_frame(None))).await {
                let _ = sink.send.finish();
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), sink.send.stopped()).await;
            }
        };
        Box::pin(refuse).await;
        conn.close(VarInt::from_u32(CLOSE_RECONNECT_ELSEWHERE.into()), b"reconnect_elsewhere");
        drop(source);
        return;
    }
    if !Box::pin(sink.send(frame_ready())).await {
        return;
    }
    transport::drive(state, crate::metrics::Transport::Quic, claims, source, sink).await;
}

fn frame_ready() -> String {
    r#"{"type":"ready"}"#.to_string()
}

struct QuicSource {
    recv: RecvStream,
    max: usize,
}

impl Source for QuicSource {
    async fn recv(&mut self) -> Inbound {
        let mut len = [0u8; 4];
        match self.recv.read_exact(&mut len).await {
            Ok(()) => {}
            Err(quinn::ReadExactError::FinishedEarly(_)) => return Inbound::Closed { clean: true },
            Err(quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
                quinn::ConnectionError::ApplicationClosed(c),
            ))) if c.error_code == VarInt::from_u32(0) || c.error_code == VarInt::from_u32(1000) => {
                return Inbound::Closed { clean: true }
            }
            Err(_) => return Inbound::Closed { clean: false },
        }
        let len = match frame_len(len, self.max) {
            Ok(len) => len,
            Err(code) => return Inbound::Fatal(code),
        };
        let mut body = vec![0u8; len];
        if self.recv.read_exact(&mut body).await.is_err() {
            return Inbound::Closed { clean: false };
        }
        match frame_text(body) {
            Ok(t) => Inbound::Text(t),
            Err(code) => Inbound::Fatal(code),
        }
    }
}

/// The body length a QUIC frame header announces (4 bytes, big-endian), or
/// the close code when it is over `max`.
pub fn frame_len(header: [u8; 4], max: usize) -> Result<usize, u16> {
    let len = u32::from_be_bytes(header) as usize;
    if len > max {
        Err(CLOSE_TOO_BIG)
    } else {
        Ok(len)
    }
}

/// A frame body as text, or the close code when it is not UTF-8.
pub fn frame_text(body: Vec<u8>) -> Result<String, u16> {
    String::from_utf8(body).map_err(|_| CLOSE_BAD_UTF8)
}

/// What [`decode_frames`] found in a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Decoded {
    /// Whole frames, in order.
    pub frames: Vec<String>,
    /// The close code the stream ends with, if a frame was refused.
    pub fatal: Option<u16>,
    /// Bytes of an unfinished frame left at the end.
    pub pending: usize,
}

/// Decodes a byte stream exactly as a QUIC session reads it
/// ([`frame_len`], then [`frame_text`], frame after frame), stopping at the
/// first refused frame. For fuzzing (`chat-fuzz quic_framing`) and tests.
pub fn decode_frames(mut buf: &[u8], max: usize) -> Decoded {
    let mut out = Decoded { frames: Vec::new(), fatal: None, pending: 0 };
    while buf.len() >= 4 {
        let len = match frame_len([buf[0], buf[1], buf[2], buf[3]], max) {
            Ok(len) => len,
            Err(code) => {
                out.fatal = Some(code);
                return out;
            }
        };
        if buf.len() - 4 < len {
            break;
        }
        match frame_text(buf[4..4 + len].to_vec()) {
            Ok(t) => out.frames.push(t),
            Err(code) => {
                out.fatal = Some(code);
                return out;
            }
        }
        buf = &buf[4 + len..];
    }
    out.pending = buf.len();
    out
}

struct QuicSink {
    send: SendStream,
    conn: quinn::Connection,
}

impl Sink for QuicSink {
    async fn send(&mut self, text: String) -> bool {
        let len = (text.len() as u32).to_be_bytes();
        self.send.write_all(&len).await.is_ok() && self.send.write_all(text.as_bytes()).await.is_ok()
    }

    async fn close(self, code: u16, reason: &'static str) {
        self.conn.close(VarInt::from_u32(code.into()), reason.as_bytes());
    }
}

/// Writes a private key readable by its owner only (0600 on Unix).
fn write_private(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(data)
}
