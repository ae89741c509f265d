//! A small HTTP client for the push providers (hyper 1 connections).
//!
//! - `https://`: TLS (rustls, the system's root certificates) with ALPN;
//!   `h2` when the server picks it, else HTTP/1.1. APNs requests insist on
//!   `h2`.
//! - `http://` (tests and local fakes): plain HTTP/1.1, or HTTP/2 with prior
//!   knowledge (h2c) for APNs, which speaks nothing but HTTP/2.
//!
//! HTTP/2 connections are kept per origin and shared by concurrent
//! requests; an HTTP/1.1 request uses a connection of its own. Every
//! request is bounded by `CHAT_PUSH_HTTP_TIMEOUT_MS`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper::header::HeaderMap;
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Largest provider response body read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A provider's answer.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body (at most 64 KiB).
    pub body: Bytes,
}

impl Response {
    /// `Retry-After` in seconds, if given as such.
    pub fn retry_after(&self) -> Option<Duration> {
        let v = self.headers.get("retry-after")?.to_str().ok()?;
        v.trim().parse::<u64>().ok().map(Duration::from_secs)
    }
}

/// Which HTTP versions a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// HTTP/2 when TLS ALPN picks it, else HTTP/1.1 (plain: HTTP/1.1).
    Any,
    /// HTTP/2 only (plain: h2c with prior knowledge).
    H2,
}

/// The client.
#[derive(Clone)]
pub struct HttpClient {
    tls_any: TlsConnector,
    tls_h2: TlsConnector,
    h2: Arc<Mutex<HashMap<String, http2::SendRequest<Full<Bytes>>>>>,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

impl HttpClient {
    /// A client trusting the system's root certificates.
    pub fn new(timeout: Duration) -> HttpClient {
        let mut roots = rustls::RootCertStore::empty();
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "cannot load a system root certificate");
        }
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!("no system root certificates: https push endpoints will fail");
        }
        let config = |alpn: &[&[u8]]| {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let mut c = rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .expect("ring supports the default TLS versions")
                .with_root_certificates(roots.clone())
                .with_no_client_auth();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            TlsConnector::from(Arc::new(c))
        };
        HttpClient { tls_any: config(&[b"h2", b"http/1.1"]), tls_h2: config(&[b"h2"]), h2: Arc::default(), timeout }
    }

    /// Sends a request (absolute URI) and reads the response.
    pub async fn send(&self, req: Request<Full<Bytes>>, version: Version) -> Result<Response, String> {
        match tokio::time::timeout(self.timeout, self.send_inner(req, version)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no response within {:?}", self.timeout)),
        }
    }

    async fn send_inner(&self, mut req: Request<Full<Bytes>>, version: Version) -> Result<Response, String> {
        let uri = req.uri().clone();
        let origin = origin(&uri)?;
        let cached = self.h2.lock().unwrap_or_else(|e| e.into_inner()).get(&origin).cloned();
        let resp = match cached.filter(|s| !s.is_closed()) {
            Some(mut s) => {
                s.ready().await.map_err(|e| e.to_string())?;
                s.send_request(req).await
            }
            None => match self.connect(&uri, version).await? {
                Conn::H2(mut s) => {
                    self.h2.lock().unwrap_or_else(|e| e.into_inner()).insert(origin.clone(), s.clone());
                    s.ready().await.map_err(|e| e.to_string())?;
                    s.send_request(req).await
                }
                Conn::H1(mut s) => {
                    // HTTP/1.1 wants an origin-form target and a Host header.
                    let host = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_default();
                    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
                    *req.uri_mut() = path.parse().map_err(|e: hyper::http::uri::InvalidUri| e.to_string())?;
                    req.headers_mut().insert(hyper::header::HOST, host.parse().map_err(|_| "bad host")?);
                    s.send_request(req).await
                }
            },
        };
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                self.h2.lock().unwrap_or_else(|e| e.into_inner()).remove(&origin);
                return Err(e.to_string());
            }
        };
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body })
    }

    async fn connect(&self, uri: &Uri, version: Version) -> Result<Conn, String> {
        let host = uri.host().ok_or("URL without host")?.trim_start_matches('[').trim_end_matches(']').to_owned();
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(format!("unsupported URL scheme in {uri}")),
        };
        let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
        let tcp = TcpStream::connect((host.as_str(), port)).await.map_err(|e| format!("connect {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        if !tls {
            return match version {
                Version::H2 => h2(TokioIo::new(tcp)).await,
                Version::Any => h1(TokioIo::new(tcp)).await,
            };
        }
        let name = ServerName::try_from(host.clone()).map_err(|e| format!("bad server name {host}: {e}"))?;
        let connector = if version == Version::H2 { &self.tls_h2 } else { &self.tls_any };
        let stream = connector.connect(name, tcp).await.map_err(|e| format!("TLS with {host}: {e}"))?;
        let alpn_h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        match (alpn_h2, version) {
            (true, _) => h2(TokioIo::new(stream)).await,
            (false, Version::Any) => h1(TokioIo::new(stream)).await,
            (false, Version::H2) => Err(format!("{host} did not negotiate HTTP/2")),
        }
    }
}

enum Conn {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

async fn h1<T>(io: TokioIo<T>) -> Result<Conn, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = http1::handshake(io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn::H1(send))
}

async fn h2<T>(io: TokioIo<T>) -> Result<Conn, String>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = http2::handshake(TokioExecutor::new(), io).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn::H2(send))
}

/// `scheme://authority` of a URI.
pub fn origin(uri: &Uri) -> Result<String, String> {
    match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => Ok(format!("{s}://{a}")),
        _ => Err(format!("not an absolute URL: {uri}")),
    }
}
