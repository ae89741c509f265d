//! The push providers' HTTP client: hyper-util's pooled client over
//! hyper-rustls.
//!
//! - `https://`: TLS (rustls, the system's root certificates) with ALPN;
//!   `h2` when the server picks it, else HTTP/1.1. APNs requests insist on
//!   `h2`.
//! - `http://` (tests and local fakes): plain HTTP/1.1, or HTTP/2 with prior
//!   knowledge (h2c) for APNs, which speaks nothing but HTTP/2.
//!
//! Connections are pooled per origin: an HTTP/2 connection is shared by
//! concurrent requests, and an HTTP/1.1 connection goes back to the pool
//! after its response, so a provider speaking HTTP/1.1 is not a new TCP and
//! TLS handshake per notification. An idle connection is closed after
//! [`POOL_IDLE`]. Every request is bounded by `CHAT_PUSH_HTTP_TIMEOUT_MS`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::HeaderMap;
use hyper::{Request, Uri};
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Largest provider response body read.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// How long an unused pooled connection is kept open.
pub const POOL_IDLE: Duration = Duration::from_secs(90);

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

type Pool = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The client: one pool for [`Version::Any`], one for [`Version::H2`].
/// Cloning shares the pools.
#[derive(Clone)]
pub struct HttpClient {
    any: Pool,
    h2: Pool,
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
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("ring supports the default TLS versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = || {
            let mut c = HttpConnector::new();
            // The scheme is the TLS layer's business.
            c.enforce_http(false);
            c.set_nodelay(true);
            c.set_connect_timeout(Some(timeout));
            c
        };
        // ALPN offers h2 and http/1.1; a plain connection is HTTP/1.1.
        let any = HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(tcp());
        // ALPN offers h2 alone; a plain connection is h2c.
        let h2 = HttpsConnectorBuilder::new().with_tls_config(tls).https_or_http().enable_http2().wrap_connector(tcp());
        let pool = |http2_only: bool| {
            let mut b = Client::builder(TokioExecutor::new());
            b.pool_idle_timeout(POOL_IDLE).pool_timer(TokioTimer::new()).timer(TokioTimer::new());
            b.http2_only(http2_only);
            b
        };
        HttpClient { any: pool(false).build(any), h2: pool(true).build(h2), timeout }
    }

    /// Sends a request (absolute URI) and reads the response.
    pub async fn send(&self, req: Request<Full<Bytes>>, version: Version) -> Result<Response, String> {
        match tokio::time::timeout(self.timeout, self.send_inner(req, version)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no response within {:?}", self.timeout)),
        }
    }

    async fn send_inner(&self, req: Request<Full<Bytes>>, version: Version) -> Result<Response, String> {
        match req.uri().scheme_str() {
            Some("https" | "http") => {}
            _ => return Err(format!("unsupported URL scheme in {}", req.uri())),
        }
        let pool = match version {
            Version::Any => &self.any,
            Version::H2 => &self.h2,
        };
        let resp = pool.request(req).await.map_err(|e| chain(&e))?;
        let (parts, body) = resp.into_parts();
        let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Response { status: parts.status.as_u16(), headers: parts.headers, body })
    }
}

/// An error with its causes (the pool's own message alone says little:
/// "client error (Connect)").
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// `scheme://authority` of a URI.
pub fn origin(uri: &Uri) -> Result<String, String> {
    match (uri.scheme_str(), uri.authority()) {
        (Some(s), Some(a)) => Ok(format!("{s}://{a}")),
        _ => Err(format!("not an absolute URL: {uri}")),
    }
}
