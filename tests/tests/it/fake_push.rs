//! Fake push providers for the push tests: real HTTP servers on 127.0.0.1
//! that record every request and answer from a script.
//!
//! - [`Fake::fcm`]: HTTP/1.1; `POST /token` plays Google's OAuth token
//!   endpoint, everything else the FCM v1 API.
//! - [`Fake::apns`]: HTTP/2 only, cleartext with prior knowledge (h2c).
//! - [`Fake::webpush`]: HTTP/1.1, a browser push service.
//!
//! Plus the verification helpers the tests need: JWT signature checks
//! (RS256, ES256) and RFC 8291 decryption.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use ring::agreement::{self, EphemeralPrivateKey, ECDH_P256};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::Value;

/// One request a fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request path.
    pub path: String,
    /// HTTP version.
    pub version: hyper::Version,
    /// Headers.
    pub headers: HeaderMap,
    /// Body.
    pub body: Bytes,
    /// Status answered.
    pub status: u16,
    /// When it arrived.
    pub at: Instant,
}

impl Recorded {
    /// A header as text.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// A scripted answer.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
    /// Body.
    pub body: String,
}

impl Reply {
    /// A status with a body.
    pub fn new(status: u16, body: &str) -> Reply {
        Reply { status, headers: vec![], body: body.into() }
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

#[derive(Debug, Default)]
struct State {
    log: Vec<Recorded>,
    tokens: Vec<Recorded>,
    script: VecDeque<Reply>,
    default: Option<Reply>,
    latency: Duration,
}

/// Which provider a fake plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fcm,
    Apns,
    WebPush,
}

/// A running fake provider.
#[derive(Clone)]
pub struct Fake {
    /// Where it listens.
    pub addr: SocketAddr,
    kind: Kind,
    state: Arc<Mutex<State>>,
    connections: Arc<AtomicUsize>,
}

impl Fake {
    /// A fake FCM (and OAuth token endpoint).
    pub async fn fcm() -> Result<Fake> {
        Fake::start(Kind::Fcm).await
    }

    /// A fake APNs (h2c).
    pub async fn apns() -> Result<Fake> {
        Fake::start(Kind::Apns).await
    }

    /// A fake Web Push service.
    pub async fn webpush() -> Result<Fake> {
        Fake::start(Kind::WebPush).await
    }

    async fn start(kind: Kind) -> Result<Fake> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let fake = Fake { addr: listener.local_addr()?, kind, state: Arc::default(), connections: Arc::default() };
        let f = fake.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                f.connections.fetch_add(1, Ordering::Relaxed);
                let f = f.clone();
                tokio::spawn(async move {
                    let apns = f.kind == Kind::Apns;
                    let svc = hyper::service::service_fn(move |req| {
                        let f = f.clone();
                        async move { Ok::<_, Infallible>(f.handle(req).await) }
                    });
                    let io = TokioIo::new(tcp);
                    let _ = if apns {
                        hyper::server::conn::http2::Builder::new(TokioExecutor::new()).serve_connection(io, svc).await
                    } else {
                        hyper::server::conn::http1::Builder::new().serve_connection(io, svc).await
                    };
                });
            }
        });
        Ok(fake)
    }

    /// `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues answers for the next requests (token requests excluded).
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.lock().unwrap().script.extend(replies);
    }

    /// The answer once the script is used up.
    pub fn default_reply(&self, reply: Reply) {
        self.state.lock().unwrap().default = Some(reply);
    }

    /// Delay before every answer (a slow provider).
    pub fn latency(&self, d: Duration) {
        self.state.lock().unwrap().latency = d;
    }

    /// Push requests so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().log.clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// OAuth token requests so far (FCM).
    pub fn token_requests(&self) -> Vec<Recorded> {
        self.state.lock().unwrap().tokens.clone()
    }

    async fn handle(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let at = Instant::now();
        let (parts, body) = req.into_parts();
        let body = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        let path = parts.uri.path().to_owned();
        let token_request = self.kind == Kind::Fcm && path == "/token";
        let (reply, latency) = {
            let mut st = self.state.lock().unwrap();
            let reply = if token_request {
                let n = st.tokens.len() + 1;
                Reply::new(200, &format!(r#"{{"access_token":"access-{n}","expires_in":3600,"token_type":"Bearer"}}"#))
            } else {
                let ok = Reply::new(if self.kind == Kind::WebPush { 201 } else { 200 }, "{}");
                st.script.pop_front().or_else(|| st.default.clone()).unwrap_or(ok)
            };
            (reply, st.latency)
        };
        if !latency.is_zero() && !token_request {
            tokio::time::sleep(latency).await;
        }
        let rec = Recorded { path, version: parts.version, headers: parts.headers, body, status: reply.status, at };
        {
            let mut st = self.state.lock().unwrap();
            if token_request {
                st.tokens.push(rec);
            } else {
                st.log.push(rec);
            }
        }
        let mut resp = Response::builder().status(reply.status).header("content-type", "application/json");
        for (k, v) in &reply.headers {
            resp = resp.header(*k, v);
        }
        resp.body(Full::new(Bytes::from(reply.body))).unwrap()
    }
}

/// A PEM `PRIVATE KEY` block of a DER key.
pub fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

/// The DER inside a PEM block.
pub fn pem_der(pem: &str) -> Result<Vec<u8>> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    Ok(STANDARD.decode(b64)?)
}

/// A fresh P-256 key: (PEM PKCS#8, uncompressed public key).
pub fn p256_key() -> (String, Vec<u8>) {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    (pem(pkcs8.as_ref()), key.public_key().as_ref().to_vec())
}

/// Verifies a JWT's signature; returns (header, claims).
pub fn verify_jwt(
    jwt: &str,
    alg: &'static dyn signature::VerificationAlgorithm,
    public: &[u8],
) -> Result<(Value, Value)> {
    let (input, sig) = jwt.rsplit_once('.').context("JWT without signature")?;
    let (header, claims) = input.split_once('.').context("JWT without claims")?;
    signature::UnparsedPublicKey::new(alg, public)
        .verify(input.as_bytes(), &URL_SAFE_NO_PAD.decode(sig)?)
        .map_err(|_| anyhow!("bad JWT signature"))?;
    let decode = |p: &str| -> Result<Value> { Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p)?)?) };
    Ok((decode(header)?, decode(claims)?))
}

/// A browser's side of a Web Push subscription. Its key can decrypt one
/// message (ring's ECDH keys are single-use).
pub struct Browser {
    key: Option<EphemeralPrivateKey>,
    /// Uncompressed public key.
    pub public: Vec<u8>,
    /// Authentication secret.
    pub auth: [u8; 16],
}

impl Browser {
    /// A new subscription key pair.
    pub fn new() -> Browser {
        let rng = SystemRandom::new();
        let key = EphemeralPrivateKey::generate(&ECDH_P256, &rng).unwrap();
        let public = key.compute_public_key().unwrap().as_ref().to_vec();
        let mut auth = [0u8; 16];
        ring::rand::SecureRandom::fill(&rng, &mut auth).unwrap();
        Browser { key: Some(key), public, auth }
    }

    /// The subscription JSON for `endpoint`.
    pub fn subscription(&self, endpoint: &str) -> Value {
        serde_json::json!({"endpoint": endpoint, "keys": {
            "p256dh": URL_SAFE_NO_PAD.encode(&self.public), "auth": URL_SAFE_NO_PAD.encode(self.auth)}})
    }

    /// Decrypts an `aes128gcm` body per RFC 8291 (once).
    pub fn decrypt(&mut self, body: &[u8]) -> Result<Vec<u8>> {
        if body.len() < 21 + 65 + 17 {
            bail!("body too short: {}", body.len());
        }
        let (salt, rs, idlen) = (&body[..16], u32::from_be_bytes(body[16..20].try_into()?), body[20] as usize);
        anyhow::ensure!(rs >= 18 && idlen == 65, "rs {rs} idlen {idlen}");
        let as_public = &body[21..21 + idlen];
        let ciphertext = &body[21 + idlen..];
        let key = self.key.take().context("this browser key was used already")?;
        let ecdh =
            agreement::agree_ephemeral(key, &agreement::UnparsedPublicKey::new(&ECDH_P256, as_public), |s| s.to_vec())
                .map_err(|_| anyhow!("ECDH failed"))?;
        let mut key_info = b"WebPush: info\0".to_vec();
        key_info.extend_from_slice(&self.public);
        key_info.extend_from_slice(as_public);
        let ikm = hkdf(&self.auth, &ecdh, &key_info, 32)?;
        let cek = hkdf(salt, &ikm, b"Content-Encoding: aes128gcm\0", 16)?;
        let nonce = hkdf(salt, &ikm, b"Content-Encoding: nonce\0", 12)?;
        let key = ring::aead::LessSafeKey::new(
            ring::aead::UnboundKey::new(&ring::aead::AES_128_GCM, &cek).map_err(|_| anyhow!("AES key"))?,
        );
        let mut buf = ciphertext.to_vec();
        let plain = key
            .open_in_place(
                ring::aead::Nonce::try_assume_unique_for_key(&nonce).map_err(|_| anyhow!("nonce"))?,
                ring::aead::Aad::empty(),
                &mut buf,
            )
            .map_err(|_| anyhow!("AES-GCM open failed: wrong keys or derivation"))?;
        // Strip padding: zeros after the 0x02 delimiter of the last record.
        let end = plain.iter().rposition(|&b| b != 0).context("no delimiter")?;
        anyhow::ensure!(plain[end] == 2, "last record delimiter is {:#x}", plain[end]);
        Ok(plain[..end].to_vec())
    }
}

struct Len(usize);

impl ring::hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Result<Vec<u8>> {
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk.expand(&info, Len(len)).map_err(|_| anyhow!("HKDF"))?;
    let mut out = vec![0; len];
    okm.fill(&mut out).map_err(|_| anyhow!("HKDF"))?;
    Ok(out)
}
