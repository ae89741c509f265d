//! The QUIC side of the client: connection set-up, certificate trust
//! (a pinned SHA-256 fingerprint for development certificates, or a CA
//! file), and length-prefixed frames on one bidirectional stream.
//!
//! [`connect`] gives each connection an endpoint (a UDP socket) of its own.
//! Many connections can instead share one: make it with [`endpoint`], a
//! configuration with [`client_config`], and connect with [`connect_via`]
//! (the benchmark holds thousands of connections on a few sockets).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use quinn::{Endpoint, RecvStream, SendStream, VarInt};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::{io, ClientError};

/// The QUIC implementation, re-exported for users of [`connect_via`] and
/// [`QuicConn::into_parts`].
pub use quinn;

/// How to trust the gateway's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Accept exactly the certificate with this SHA-256 fingerprint (hex,
    /// as the gateway prints it at start-up; colons are ignored).
    Fingerprint(String),
    /// Accept certificates issued by the CA certificates in this PEM file.
    CaFile(PathBuf),
}

/// An open QUIC session stream.
pub struct QuicConn {
    pub(crate) endpoint: Endpoint,
    /// Whether `endpoint` is this connection's own (made by [`connect`]),
    /// not one shared with others (given to [`connect_via`]).
    pub(crate) own_endpoint: bool,
    pub(crate) conn: quinn::Connection,
    pub(crate) send: SendStream,
    pub(crate) recv: RecvStream,
}

#[derive(Debug)]
struct Pinned {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: String = Sha256::digest(end_entity.as_ref()).iter().map(|b| format!("{b:02x}")).collect();
        if got == self.fingerprint {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!("certificate fingerprint {got} is not the pinned one")))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

fn tls_config(trust: &Trust) -> Result<rustls::ClientConfig, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(io)?;
    let mut cfg = match trust {
        Trust::Fingerprint(f) => {
            let fingerprint = f.replace(':', "").to_ascii_lowercase();
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Pinned { fingerprint, provider }))
                .with_no_client_auth()
        }
        Trust::CaFile(path) => {
            let pem = std::fs::read(path).map_err(io)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
                roots.add(cert.map_err(io)?).map_err(io)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    cfg.alpn_protocols = vec![b"chat/1".to_vec()];
    Ok(cfg)
}

/// Connects, opens the session stream and authenticates, on an endpoint
/// (UDP socket) of the connection's own.
pub async fn connect(addr: &str, server_name: &str, token: &str, trust: &Trust) -> Result<QuicConn, ClientError> {
    let remote = resolve(addr).await?;
    let local: std::net::SocketAddr = if remote.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().map_err(io)?;
    let ep = endpoint(local)?;
    let mut q = connect_via(&ep, &client_config(trust)?, addr, server_name, token).await?;
    q.own_endpoint = true;
    Ok(q)
}

/// The TLS server name for `addr` (`host:port`): the host when it is a DNS
/// name (a certificate from a real CA names it), else `localhost`, which
/// the gateway's generated development certificate carries.
pub fn server_name(addr: &str) -> String {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h).trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() || host.parse::<std::net::IpAddr>().is_ok() {
        "localhost".to_owned()
    } else {
        host.to_owned()
    }
}

async fn resolve(addr: &str) -> Result<std::net::SocketAddr, ClientError> {
    tokio::net::lookup_host(addr).await.map_err(io)?.next().ok_or_else(|| io("no address"))
}

/// A client endpoint on one UDP socket bound to `local` (e.g.
/// `0.0.0.0:0`), for any number of connections through [`connect_via`].
pub fn endpoint(local: std::net::SocketAddr) -> Result<Endpoint, ClientError> {
    Endpoint::client(local).map_err(io)
}

/// The client configuration for `trust`: ALPN `chat/1`, TLS 1.3 and a
/// QUIC keep-alive every 5 s. Build it once and reuse it.
pub fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, ClientError> {
    let crypto = QuicClientConfig::try_from(tls_config(trust)?).map_err(io)?;
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(5)));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Connects through `endpoint` (possibly shared with other connections),
/// opens the session stream and authenticates.
pub async fn connect_via(
    endpoint: &Endpoint,
    config: &quinn::ClientConfig,
    addr: &str,
    server_name: &str,
    token: &str,
) -> Result<QuicConn, ClientError> {
    let remote = resolve(addr).await?;
    let conn = endpoint.connect_with(config.clone(), remote, server_name).map_err(io)?.await.map_err(io)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(io)?;
    write_frame(&mut send, serde_json::json!({"type": "auth", "token": token}).to_string().as_bytes()).await?;
    match read_frame(&mut recv).await {
        Ok(bytes) if bytes == br#"{"type":"ready"}"# => {
            Ok(QuicConn { endpoint: endpoint.clone(), own_endpoint: false, conn, send, recv })
        }
        Ok(other) => match serde_json::from_slice::<serde_json::Value>(&other) {
            // A refused session (`at_capacity`, `draining`): as the HTTP 503.
            Ok(v) if v["type"] == "error" => Err(ClientError::Api {
                status: 503,
                code: v["code"].as_str().unwrap_or_default().into(),
                message: v["message"].as_str().unwrap_or_default().into(),
            }),
            _ => Err(io(format!("unexpected first frame {}", String::from_utf8_lossy(&other)))),
        },
        Err(ClientError::Closed { code: 4003, .. }) => {
            Err(ClientError::Api { status: 401, code: "unauthorized".into(), message: "auth refused".into() })
        }
        Err(e) => Err(e),
    }
}

/// Writes one length-prefixed frame.
pub async fn write_frame(send: &mut SendStream, body: &[u8]) -> Result<(), ClientError> {
    send.write_all(&(body.len() as u32).to_be_bytes()).await.map_err(write_closed)?;
    send.write_all(body).await.map_err(write_closed)
}

/// A write that failed because the server closed the connection reports
/// the server's close code (it may close while a large frame is still
/// being written, e.g. 1009 for an oversize frame).
fn write_closed(e: quinn::WriteError) -> ClientError {
    match e {
        quinn::WriteError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(c)) => ClientError::Closed {
            code: c.error_code.into_inner() as u16,
            reason: String::from_utf8_lossy(&c.reason).into(),
        },
        e => io(e),
    }
}

/// Reads one length-prefixed frame.
pub async fn read_frame(recv: &mut RecvStream) -> Result<Vec<u8>, ClientError> {
    let mut len = [0u8; 4];
    recv.read_exact(&mut len).await.map_err(closed)?;
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    recv.read_exact(&mut body).await.map_err(closed)?;
    Ok(body)
}

fn closed(e: quinn::ReadExactError) -> ClientError {
    match e {
        quinn::ReadExactError::ReadError(quinn::ReadError::ConnectionLost(
            quinn::ConnectionError::ApplicationClosed(c),
        )) => ClientError::Closed {
            code: c.error_code.into_inner() as u16,
            reason: String::from_utf8_lossy(&c.reason).into(),
        },
        quinn::ReadExactError::FinishedEarly(_) => ClientError::Closed { code: 1000, reason: "stream finished".into() },
        e => io(e),
    }
}

impl QuicConn {
    /// Moves the connection to a new local UDP socket (as when a phone
    /// switches networks); the session continues. On a shared endpoint
    /// this moves every connection of the endpoint.
    pub fn rebind(&self) -> Result<(), ClientError> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").map_err(io)?;
        self.endpoint.rebind(socket).map_err(io)
    }

    /// The local address in use.
    pub fn local_addr(&self) -> Result<std::net::SocketAddr, ClientError> {
        self.endpoint.local_addr().map_err(io)
    }

    /// The connection and its session stream's halves, for reading and
    /// writing from different tasks (with [`write_frame`] and
    /// [`read_frame`]). The connection lives while any of them does.
    pub fn into_parts(self) -> (quinn::Connection, SendStream, RecvStream) {
        (self.conn, self.send, self.recv)
    }

    /// Finishes the stream and closes the connection cleanly.
    pub async fn close(mut self) {
        let _ = self.send.finish();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.send.stopped()).await;
        self.conn.close(VarInt::from_u32(1000), b"bye");
        if self.own_endpoint {
            self.endpoint.wait_idle().await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_name_is_the_dns_host_or_localhost() {
        assert_eq!(super::server_name("chat.example.com:8443"), "chat.example.com");
        assert_eq!(super::server_name("127.0.0.1:8443"), "localhost");
        assert_eq!(super::server_name("[::1]:8443"), "localhost");
        assert_eq!(super::server_name("localhost:8443"), "localhost");
    }
}
