//! Logged-out tokens. Tokens are stateless (HMAC), so a logout cannot
//! delete one; instead each device has a token generation in PostgreSQL,
//! carried in its tokens. `POST /v1/logout` raises it and writes the new
//! value to KV `chat_revoked` (key `<user>.<device>`); every gateway
//! watches that bucket into memory and refuses tokens of an older
//! generation, so checking a token stays a local lookup. An entry is kept
//! as long as a token can live (`CHAT_TOKEN_TTL_SECS`): by the time it
//! expires every token it refuses has expired too.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::StreamExt;

use crate::auth::Claims;

/// The bucket of revocations.
pub use chat_nats::subjects::REVOKED_BUCKET as BUCKET;

/// The lowest token generation still valid, per device with a logout.
#[derive(Debug, Default)]
pub struct Revoked {
    /// user → device → lowest valid generation.
    min_gen: RwLock<HashMap<i64, HashMap<String, u64>>>,
}

impl Revoked {
    /// True unless the device logged out after this token was issued.
    pub fn allows(&self, c: &Claims) -> bool {
        let map = self.min_gen.read().unwrap_or_else(|p| p.into_inner());
        map.get(&c.user).and_then(|devices| devices.get(&c.device)).is_none_or(|&min| c.gen >= min)
    }

    /// Records a generation (or, with `None`, forgets the device's entry).
    pub fn apply(&self, key: &str, value: Option<&[u8]>) {
        let Some((user, device)) = chat_nats::subjects::parse_revoked_key(key) else { return };
        let mut map = self.min_gen.write().unwrap_or_else(|p| p.into_inner());
        match value.and_then(|v| std::str::from_utf8(v).ok()).and_then(|v| v.parse::<u64>().ok()) {
            Some(gen) => {
                let e = map.entry(user).or_default().entry(device.to_owned()).or_insert(0);
                *e = (*e).max(gen);
            }
            None => {
                if let Some(devices) = map.get_mut(&user) {
                    devices.remove(device);
                    if devices.is_empty() {
                        map.remove(&user);
                    }
                }
            }
        }
    }
}

/// The bucket's configuration: an entry lives as long as a token can.
pub fn bucket_config(ttl: Duration, replicas: usize) -> kv::Config {
    kv::Config {
        bucket: BUCKET.into(),
        description: "device token generations raised by logout".into(),
        history: 1,
        max_age: ttl,
        num_replicas: replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    }
}

/// Loads every current entry, then follows changes in the background.
/// Returns once the current entries are in memory, so no token a logout
/// already refused is accepted after start-up.
pub async fn start(store: kv::Store) -> Result<Arc<Revoked>, async_nats::Error> {
    let revoked = Arc::new(Revoked::default());
    let mut watch = store.watch_all().await?;
    for key in store.keys().await?.collect::<Vec<_>>().await {
        let key = key?;
        let value = store.get(&key).await?;
        revoked.apply(&key, value.as_deref());
    }
    let r = revoked.clone();
    tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            match entry {
                Ok(e) => {
                    let value = (e.operation == kv::Operation::Put).then_some(&e.value[..]);
                    r.apply(&e.key, value);
                }
                Err(e) => tracing::warn!(error = %e, "revocation watch error"),
            }
        }
        tracing::error!("revocation watch ended; logouts from now on are not seen by this gateway");
    });
    Ok(revoked)
}
