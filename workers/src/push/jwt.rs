//! Compact JWS (JWT) signing with ring: RS256 for the FCM service-account
//! assertion, ES256 for APNs provider tokens and VAPID.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, RsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_SHA256};
use serde_json::Value;

use super::PushError;

/// Base64url without padding.
pub fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn signing_input(header: &Value, claims: &Value) -> String {
    format!("{}.{}", b64(header.to_string().as_bytes()), b64(claims.to_string().as_bytes()))
}

/// An RS256 JWT.
pub fn rs256(key: &RsaKeyPair, header: &Value, claims: &Value) -> Result<String, PushError> {
    let input = signing_input(header, claims);
    let mut sig = vec![0; key.public().modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig)
        .map_err(|_| PushError::Crypto("RSA signing failed".into()))?;
    Ok(format!("{input}.{}", b64(&sig)))
}

/// An ES256 JWT (signature in the fixed 64-byte `r||s` form JWS requires).
pub fn es256(key: &EcdsaKeyPair, header: &Value, claims: &Value) -> Result<String, PushError> {
    let input = signing_input(header, claims);
    let sig = key
        .sign(&SystemRandom::new(), input.as_bytes())
        .map_err(|_| PushError::Crypto("ECDSA signing failed".into()))?;
    Ok(format!("{input}.{}", b64(sig.as_ref())))
}

/// Reads the first private key of a PEM text as DER (PKCS#8, or PKCS#1
/// for RSA; SEC1 EC keys are refused with the conversion command).
fn pem_key(pem: &str, what: &str) -> Result<rustls::pki_types::PrivateKeyDer<'static>, PushError> {
    rustls_pemfile::private_key(&mut pem.as_bytes())
        .map_err(|e| PushError::Key(format!("{what}: {e}")))?
        .ok_or_else(|| PushError::Key(format!("{what}: no PEM private key found")))
}

/// An RSA key from PEM (PKCS#8 `PRIVATE KEY` or PKCS#1 `RSA PRIVATE KEY`).
pub fn rsa_from_pem(pem: &str, what: &str) -> Result<RsaKeyPair, PushError> {
    use rustls::pki_types::PrivateKeyDer;
    let bad = |e: ring::error::KeyRejected| PushError::Key(format!("{what}: {e}"));
    match pem_key(pem, what)? {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()).map_err(bad),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()).map_err(bad),
        _ => Err(PushError::Key(format!("{what}: not an RSA key"))),
    }
}

/// A P-256 key from PEM PKCS#8 (`-----BEGIN PRIVATE KEY-----`, as Apple's
/// `.p8` files are).
pub fn p256_from_pem(pem: &str, what: &str) -> Result<EcdsaKeyPair, PushError> {
    use rustls::pki_types::PrivateKeyDer;
    match pem_key(pem, what)? {
        PrivateKeyDer::Pkcs8(k) => {
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_pkcs8_der(), &SystemRandom::new())
                .map_err(|e| PushError::Key(format!("{what}: not a P-256 PKCS#8 key: {e}")))
        }
        PrivateKeyDer::Sec1(_) => Err(PushError::Key(format!(
            "{what}: SEC1 \"EC PRIVATE KEY\" found; convert it with `openssl pkcs8 -topk8 -nocrypt -in key.pem`"
        ))),
        _ => Err(PushError::Key(format!("{what}: not a P-256 PKCS#8 key"))),
    }
}

/// Unix seconds now.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};

    #[test]
    fn es256_tokens_verify() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
        let jwt = es256(&key, &serde_json::json!({"alg": "ES256"}), &serde_json::json!({"iss": "t"})).unwrap();
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, key.public_key().as_ref())
            .verify(input.as_bytes(), &sig)
            .unwrap();
    }
}
