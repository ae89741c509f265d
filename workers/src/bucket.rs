//! Reading a KV bucket without ever overrunning the NATS client.
//!
//! A KV watch is a push consumer: the server sends entries as fast as it
//! can, and what the client's per-subscription buffer cannot hold it drops
//! (a "slow consumer"); the watch then recreates its consumer after the
//! last entry it delivered, one buffer's worth of progress per recreation.
//! During a connection ramp the presence watch fell behind like that. An
//! ordered pull consumer asks for a bounded batch at a time instead, so the
//! client never holds more than it asked for, however slowly the entries
//! are applied; it is recreated by the client after a gap or a reconnection,
//! like a watch.

use async_nats::jetstream::consumer::{pull, DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::kv::{self, Entry, Operation};
use futures::{Stream, StreamExt};

/// Every key's latest entry (`delta` counts the entries after it, 0 for
/// the newest), then every change, in order. `batch` is the most entries
/// asked for at once: keep it well under the client's subscription
/// capacity (the client asks for the next batch before one is consumed).
pub async fn entries(
    kv: &kv::Store,
    batch: usize,
) -> Result<impl Stream<Item = Result<Entry, async_nats::Error>>, async_nats::Error> {
    let consumer = kv
        .stream
        .create_consumer(pull::OrderedConfig {
            description: Some(format!("read {}", kv.name)),
            filter_subject: format!("{}>", kv.prefix),
            deliver_policy: DeliverPolicy::LastPerSubject,
            replay_policy: ReplayPolicy::Instant,
            max_batch: batch.max(1) as i64,
            ..Default::default()
        })
        .await?;
    let (bucket, prefix) = (kv.name.clone(), kv.prefix.clone());
    Ok(consumer.messages().await?.map(move |m| entry(&bucket, &prefix, &m?)))
}

/// A stream message as a KV entry (what a KV watch yields).
fn entry(bucket: &str, prefix: &str, m: &async_nats::jetstream::Message) -> Result<Entry, async_nats::Error> {
    let info = m.info()?;
    let header = |name: &str| m.headers.as_ref().and_then(|h| h.get(name)).map(|v| v.as_str().to_owned());
    // As async-nats reads KV operations, expiry markers included.
    let operation = match (header("KV-Operation").as_deref(), header("Nats-Marker-Reason").as_deref()) {
        (Some("DEL"), _) | (None, Some("Remove")) => Operation::Delete,
        (Some("PURGE"), _) | (None, Some(_)) => Operation::Purge,
        _ => Operation::Put,
    };
    Ok(Entry {
        bucket: bucket.to_owned(),
        key: m.subject.strip_prefix(prefix).unwrap_or(&m.subject).to_owned(),
        value: m.payload.clone(),
        revision: info.stream_sequence,
        delta: info.pending,
        created: info.published,
        operation,
        seen_current: info.pending == 0,
    })
}
