//! Web Push: RFC 8030 delivery, RFC 8291 message encryption (`aes128gcm`,
//! RFC 8188), RFC 8292 VAPID.
//!
//! The payload is encrypted for the subscription's P-256 key with a fresh
//! ephemeral key per message and sent as one record. The request carries
//! `TTL`, `Urgency: high`, `Topic` (so a newer notification of the same
//! conversation replaces an undelivered older one: 32 base64url characters
//! of the conversation id's SHA-256) and `Authorization: vapid t=<JWT>,
//! k=<public key>`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Uri};
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey, ECDH_P256};
use ring::hkdf::{KeyType, Salt, HKDF_SHA256};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, KeyPair};
use serde::Deserialize;
use serde_json::json;

use super::config::WebPushConfig;
use super::http::{origin, HttpClient, Version};
use super::{jwt, Notification, Outcome, PushError};
use chat_nats::envelope::PushJob;

/// Record size announced in the header (one record carries the payload).
pub const RECORD_SIZE: u32 = 4096;
/// A stored subscription's user agent key, auth secret and endpoint; the
/// error says what is unreadable (fuzzed by `chat-fuzz push_subscription`).
pub fn parse_subscription(subscription: &str) -> Result<(Vec<u8>, Vec<u8>, Uri), String> {
    let sub: Subscription =
        serde_json::from_str(subscription).map_err(|e| format!("stored subscription unreadable: {e}"))?;
    let (Some(ua_public), Some(auth)) = (decode(&sub.keys.p256dh), decode(&sub.keys.auth)) else {
        return Err("subscription keys are not base64url".into());
    };
    let uri: Uri = sub.endpoint.parse().map_err(|_| "subscription endpoint is not a URL".to_string())?;
    Ok((ua_public, auth, uri))
}

/// VAPID JWTs are valid this long (RFC 8292 allows at most 24 h).
const VAPID_TTL_SECS: u64 = 12 * 3600;

#[derive(Deserialize)]
struct Subscription {
    endpoint: String,
    keys: Keys,
}

#[derive(Deserialize)]
struct Keys {
    p256dh: String,
    auth: String,
}

/// The Web Push provider.
pub struct WebPush {
    key: EcdsaKeyPair,
    public: String,
    subject: String,
    ttl: u64,
    allow_http: bool,
}

impl std::fmt::Debug for WebPush {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPush").field("public", &self.public).finish_non_exhaustive()
    }
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf(salt: &[u8], ikm: &[u8], info: &[u8], len: usize) -> Result<Vec<u8>, PushError> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk.expand(&info, Len(len)).map_err(|_| PushError::Crypto("HKDF expand".into()))?;
    let mut out = vec![0; len];
    okm.fill(&mut out).map_err(|_| PushError::Crypto("HKDF fill".into()))?;
    Ok(out)
}

/// Encrypts `plaintext` for a subscription (RFC 8291) with the ephemeral
/// key `as_key` and `salt`; returns the `aes128gcm` body
/// (`salt(16) || rs(4) || idlen(1) || keyid(65) || ciphertext`).
pub fn encrypt(
    ua_public: &[u8],
    auth_secret: &[u8],
    as_key: EphemeralPrivateKey,
    salt: [u8; 16],
    plaintext: &[u8],
) -> Result<Vec<u8>, PushError> {
    if plaintext.len() + 17 > RECORD_SIZE as usize {
        return Err(PushError::Crypto(format!("payload of {} bytes does not fit one record", plaintext.len())));
    }
    let as_public = as_key.compute_public_key().map_err(|_| PushError::Crypto("ECDH public key".into()))?;
    let as_public = as_public.as_ref().to_vec();
    let ecdh = agreement::agree_ephemeral(as_key, &UnparsedPublicKey::new(&ECDH_P256, ua_public), |s| s.to_vec())
        .map_err(|_| PushError::Crypto("ECDH with the subscription key failed".into()))?;
    let mut key_info = b"WebPush: info\0".to_vec();
    key_info.extend_from_slice(ua_public);
    key_info.extend_from_slice(&as_public);
    let ikm = hkdf(auth_secret, &ecdh, &key_info, 32)?;
    let cek = hkdf(&salt, &ikm, b"Content-Encoding: aes128gcm\0", 16)?;
    let nonce = hkdf(&salt, &ikm, b"Content-Encoding: nonce\0", 12)?;
    let key =
        LessSafeKey::new(UnboundKey::new(&aead::AES_128_GCM, &cek).map_err(|_| PushError::Crypto("AES key".into()))?);
    let mut record = plaintext.to_vec();
    record.push(2); // last record, no padding
    let nonce = Nonce::try_assume_unique_for_key(&nonce).map_err(|_| PushError::Crypto("nonce".into()))?;
    key.seal_in_place_append_tag(nonce, Aad::empty(), &mut record)
        .map_err(|_| PushError::Crypto("AES-GCM seal".into()))?;
    let mut out = Vec::with_capacity(86 + record.len());
    out.extend_from_slice(&salt);
    out.extend_from_slice(&RECORD_SIZE.to_be_bytes());
    out.push(as_public.len() as u8);
    out.extend_from_slice(&as_public);
    out.extend_from_slice(&record);
    Ok(out)
}

/// The `Topic` header of a conversation: 32 URL-safe base64 characters.
pub fn topic(conv: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, conv.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest.as_ref()[..24])
}

fn decode(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).ok()
}

impl WebPush {
    /// Reads the VAPID key.
    pub fn load(cfg: &WebPushConfig) -> Result<WebPush, PushError> {
        let pem =
            std::fs::read_to_string(&cfg.key).map_err(|e| PushError::Read { path: cfg.key.clone(), source: e })?;
        let key = jwt::p256_from_pem(&pem, "CHAT_VAPID_PRIVATE_KEY")?;
        let public = URL_SAFE_NO_PAD.encode(key.public_key().as_ref());
        tracing::info!(vapid_public_key = %public, "Web Push enabled (give this key to browsers as applicationServerKey)");
        Ok(WebPush { key, public, subject: cfg.subject.clone(), ttl: cfg.ttl.as_secs(), allow_http: cfg.allow_http })
    }

    /// Sends one notification to a subscription (stored as JSON).
    pub async fn send(&self, http: &HttpClient, job: &PushJob, subscription: &str) -> Outcome {
        let (ua_public, auth, uri) = match parse_subscription(subscription) {
            Ok(parsed) => parsed,
            Err(e) => return Outcome::InvalidToken(e),
        };
        if uri.scheme_str() != Some("https") && !(self.allow_http && uri.scheme_str() == Some("http")) {
            return Outcome::Failed("subscription endpoint is not https:// (CHAT_WEBPUSH_ALLOW_HTTP is off)".into());
        }
        let aud = match origin(&uri) {
            Ok(o) => o,
            Err(e) => return Outcome::InvalidToken(e),
        };
        let n = Notification::of(job);
        let payload = json!({"title": n.title, "body": n.body, "conv": job.conv,
                             "message_id": job.message_id.to_string(), "from": job.from.to_string()});
        let body = match self.encrypt(&ua_public, &auth, payload.to_string().as_bytes()) {
            Ok(b) => b,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let vapid = jwt::es256(
            &self.key,
            &json!({"typ": "JWT", "alg": "ES256"}),
            &json!({"aud": aud, "exp": jwt::now_secs() + VAPID_TTL_SECS, "sub": self.subject}),
        );
        let vapid = match vapid {
            Ok(v) => v,
            Err(e) => return Outcome::Failed(e.to_string()),
        };
        let req = match Request::post(uri)
            .header("authorization", format!("vapid t={vapid}, k={}", self.public))
            .header("ttl", self.ttl.to_string())
            .header("urgency", "high")
            .header("topic", topic(&job.conv))
            .header("content-encoding", "aes128gcm")
            .header("content-type", "application/octet-stream")
            .body(Full::new(Bytes::from(body)))
        {
            Ok(r) => r,
            Err(e) => return Outcome::Failed(format!("Web Push request: {e}")),
        };
        match http.send(req, Version::Any).await {
            Ok(r) if (200..300).contains(&r.status) => Outcome::Sent,
            Ok(r) if r.status == 404 || r.status == 410 => Outcome::InvalidToken(format!("HTTP {}", r.status)),
            Ok(r) => Outcome::from_status(&r),
            Err(e) => Outcome::Retry { after: None, reason: e },
        }
    }

    fn encrypt(&self, ua_public: &[u8], auth: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, PushError> {
        let rng = SystemRandom::new();
        let mut salt = [0u8; 16];
        rng.fill(&mut salt).map_err(|_| PushError::Crypto("random salt".into()))?;
        let as_key =
            EphemeralPrivateKey::generate(&ECDH_P256, &rng).map_err(|_| PushError::Crypto("ECDH key".into()))?;
        encrypt(ua_public, auth, as_key, salt, plaintext)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_32_url_safe_characters() {
        let t = topic("dm-1-2");
        assert_eq!(t.len(), 32);
        assert!(t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'));
        assert_ne!(t, topic("dm-1-3"));
    }

    #[test]
    fn records_have_the_rfc8188_header() {
        let rng = SystemRandom::new();
        let ua = EphemeralPrivateKey::generate(&ECDH_P256, &rng).unwrap();
        let ua_public = ua.compute_public_key().unwrap();
        let as_key = EphemeralPrivateKey::generate(&ECDH_P256, &rng).unwrap();
        let body = encrypt(ua_public.as_ref(), &[9u8; 16], as_key, [1u8; 16], b"hello").unwrap();
        assert_eq!(&body[..16], &[1u8; 16]);
        assert_eq!(u32::from_be_bytes(body[16..20].try_into().unwrap()), RECORD_SIZE);
        assert_eq!(body[20], 65);
        assert_eq!(body[21], 4, "uncompressed point");
        assert_eq!(body.len(), 86 + 5 + 1 + 16);
    }
}
