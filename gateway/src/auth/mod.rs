//! Passwords (argon2id) and access tokens (HMAC-SHA256, bound to a device,
//! with an expiry).
//!
//! A token is `base64url(user.device.expiry_unix_secs.generation) "."
//! base64url(mac)`; the generation is the device's at login, and a logout
//! raises it (see `revoked`).

pub mod revoked;
pub mod secret;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Who a valid token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// User id.
    pub user: i64,
    /// Device id the token was issued to.
    pub device: String,
    /// Expiry, unix seconds.
    pub exp: u64,
    /// The device's token generation at login (see `revoked`).
    pub gen: u64,
}

/// Hashes a password with argon2id and a random salt (CPU-heavy: call from
/// a blocking thread).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>()).expect("16 bytes is a valid salt");
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// Checks a password against a stored hash (CPU-heavy).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).map(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok()).unwrap_or(false)
}

/// A fixed set of threads that run argon2id, so password work never runs
/// on the async runtime and its memory stays bounded: each hash takes
/// ~19 MiB, and the allocator keeps freed blocks per thread, so hashing on
/// a growing pool of blocking threads left hundreds of MiB resident after
/// a burst of signups. Jobs beyond the threads wait in a queue.
#[derive(Debug, Clone)]
pub struct Hasher {
    jobs: std::sync::mpsc::SyncSender<Box<dyn FnOnce() + Send>>,
}

impl Hasher {
    /// Starts `threads` hashing threads.
    pub fn start(threads: usize) -> Hasher {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Box<dyn FnOnce() + Send>>(1024);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                        Ok(job) => job,
                        Err(_) => return,
                    };
                    job();
                })
                .expect("spawn a hashing thread");
        }
        Hasher { jobs }
    }

    /// Runs `f` on a hashing thread; `None` if the pool is gone or full.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = tx.send(f());
        });
        self.jobs.try_send(job).ok()?;
        rx.await.ok()
    }
}

fn mac(secret: &[u8], payload: &[u8]) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(secret).expect("HMAC takes any key length");
    m.update(payload);
    m
}

/// Issues a token.
pub fn issue(secret: &[u8], claims: &Claims) -> String {
    let payload = format!("{}.{}.{}.{}", claims.user, claims.device, claims.exp, claims.gen);
    let sig = mac(secret, payload.as_bytes()).finalize().into_bytes();
    format!("{}.{}", B64.encode(payload), B64.encode(sig))
}

/// True for a device id a client may log in with: 1-64 characters of
/// `[A-Za-z0-9_-]`, not `sys` (system messages) and not starting with
/// `svc-` (internal services).
pub fn is_client_device(d: &str) -> bool {
    chat_nats::subjects::is_token(d) && d != "sys" && !d.starts_with("svc-")
}

/// Verifies a token's signature (against any of `secrets`) and expiry
/// against `now` (unix seconds), and checks its contents like any input:
/// a canonical user id, a client device id, canonical numbers.
pub fn verify(secrets: &[Vec<u8>], token: &str, now: u64) -> Option<Claims> {
    let (p, s) = token.split_once('.')?;
    let payload = B64.decode(p).ok()?;
    let sig = B64.decode(s).ok()?;
    secrets.iter().find(|k| mac(k, &payload).verify_slice(&sig).is_ok())?;
    let text = String::from_utf8(payload).ok()?;
    let mut parts = text.splitn(4, '.');
    let user = chat_nats::subjects::parse_id(parts.next()?)?;
    let device = parts.next()?.to_owned();
    let exp = chat_nats::subjects::parse_seq(parts.next()?)?;
    let gen = chat_nats::subjects::parse_seq(parts.next()?)?;
    (is_client_device(&device) && exp > now).then_some(Claims { user, device, exp, gen })
}

/// Current unix seconds.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// Compares two secrets without an early exit (their SHA-256 digests, so
/// neither the content nor the length leaks through timing).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use sha2::{Digest, Sha256};
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter().zip(y.iter()).fold(0u8, |acc, (p, q)| acc | (p ^ q)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_reject_tampering_and_expiry() {
        let k = [b"k".to_vec()];
        let c = Claims { user: 7, device: "phone".into(), exp: 1000, gen: 3 };
        let t = issue(b"k", &c);
        assert_eq!(verify(&k, &t, 999), Some(c.clone()));
        assert_eq!(verify(&k, &t, 1000), None, "expired");
        assert_eq!(verify(&[b"other".to_vec()], &t, 1), None, "wrong key");
        assert_eq!(verify(&[b"new".to_vec(), b"k".to_vec()], &t, 1), Some(c.clone()), "previous key");
        let forged = issue(b"k", &Claims { user: 8, ..c });
        let (_, sig) = t.split_once('.').unwrap();
        let (body, _) = forged.split_once('.').unwrap();
        assert_eq!(verify(&k, &format!("{body}.{sig}"), 1), None, "swapped payload");
        assert_eq!(verify(&k, "garbage", 1), None);
    }

    #[test]
    fn signed_tokens_with_bad_contents_are_refused() {
        let k = [b"k".to_vec()];
        let signed = |payload: &str| {
            let sig = mac(b"k", payload.as_bytes()).finalize().into_bytes();
            format!("{}.{}", B64.encode(payload), B64.encode(sig))
        };
        assert!(verify(&k, &signed("7.phone.1000.0"), 1).is_some(), "the shape itself is fine");
        for bad in [
            "-1.phone.1000.0",
            "0.phone.1000.0",
            "07.phone.1000.0",
            "+7.phone.1000.0",
            "7.sys.1000.0",
            "7.svc-x.1000.0",
            "7.c$1.1000.0",
            "7..1000.0",
            "7.phone.01000.0",
            "7.phone.1000.-1",
            "7.phone.1000",
        ] {
            assert_eq!(verify(&k, &signed(bad), 1), None, "{bad}");
        }
    }

    #[test]
    fn passwords_verify() {
        let h = hash_password("correct horse");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
    }
}
