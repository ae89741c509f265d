//! The search indexer: keeps PostgreSQL's `search_messages` table (gateway
//! migration `008_search.sql`, read by `GET /v1/search`) equal to the text
//! messages that exist in history.
//!
//! It reads the history stream (`chat.hist.>`) with the durable pull
//! consumer [`CONSUMER`] from its first message, so a new or rebuilt index
//! (consumer deleted, table truncated: see `docs/operations.md`) is filled
//! from history. Each fetched batch is applied in one transaction, then
//! acknowledged with one ack (`AckPolicy::All`): a crash between the two
//! replays the batch, and every statement is idempotent.
//!
//! - `kind: "text"`: inserted (`ON CONFLICT DO NOTHING`; not if the id was
//!   deleted meanwhile, see `search_deleted`).
//! - `kind: "edit"` (subject `chat.hist.<conv>.e.<block>.<target>`):
//!   `body` replaces the target's body in the same conversation.
//! - `kind: "delete"`: the target's row is removed and its id remembered.
//! - anything else (system messages, kinds added later): skipped.
//!
//! One worker at a time is active (lease [`LEASE`]), like presence, so
//! events are applied in history order.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
use chat_nats::config::{self, ConfigError, Source};
use chat_nats::subjects::{self, ConvId, ConvKind};
use futures::StreamExt;
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::lease::Lease;
use crate::Shared;

/// Durable consumer of the indexer on `CHAT_HISTORY`.
pub const CONSUMER: &str = "search-indexer";
/// Lease key of the active indexer.
pub const LEASE: &str = "search";
/// Default of `CHAT_SEARCH_BATCH`.
pub const DEFAULT_BATCH: usize = 500;
/// Default of `CHAT_SEARCH_LINGER_MS`.
pub const DEFAULT_LINGER_MS: u64 = 200;

/// Indexer settings.
#[derive(Debug, Clone)]
pub struct SearchConfig {
    /// `CHAT_SEARCH_INDEXER`: run the indexer (default true).
    pub enabled: bool,
    /// `CHAT_DATABASE_URL`.
    pub database_url: String,
    /// `CHAT_SEARCH_BATCH`: history messages fetched and applied in one
    /// transaction (1-10000, default 500).
    pub batch: usize,
    /// `CHAT_SEARCH_LINGER_MS`: how long a fetch waits for a batch's worth
    /// of history messages before it applies what it has (0-10000, default
    /// 200; 0: whatever is waiting, at once). A message is searchable at
    /// most this long after it is stored (plus the transaction); at light
    /// load this makes one transaction, one ack and one fsync of
    /// PostgreSQL's for many messages instead of one per message.
    pub linger: Duration,
}

impl SearchConfig {
    /// Reads the settings.
    pub fn from_source(src: &dyn Source) -> Result<SearchConfig, ConfigError> {
        Ok(SearchConfig {
            enabled: config::var(src, "CHAT_SEARCH_INDEXER", true)?,
            database_url: config::shared::database_url(src)?,
            batch: config::bounded(src, "CHAT_SEARCH_BATCH", DEFAULT_BATCH as u64, 1, 10_000)? as usize,
            linger: Duration::from_millis(config::bounded(src, "CHAT_SEARCH_LINGER_MS", DEFAULT_LINGER_MS, 0, 10_000)?),
        })
    }
}

/// What the indexer reads of a history message: the fields of
/// `StoredMessage` plus `target` of edit and delete events. Unknown
/// fields and kinds are ignored.
#[derive(Debug, Deserialize)]
struct Event {
    #[serde(default)]
    id: String,
    conv: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    kind: String,
    #[serde(default)]
    body: String,
    #[serde(default)]
    ts: i64,
    #[serde(default)]
    target: Option<String>,
}

/// What one history message does to the index.
#[derive(Debug, PartialEq)]
enum Op {
    Insert { id: i64, conv: String, grp: Option<i64>, dm: Option<(i64, i64)>, from: i64, ts: i64, body: String },
    Edit { target: i64, conv: String, body: String, ts: i64 },
    Delete { target: i64, conv: String },
    Skip,
}

fn parse(payload: &[u8]) -> Op {
    let Ok(e) = serde_json::from_slice::<Event>(payload) else { return Op::Skip };
    let Some(conv_id) = ConvId::parse(&e.conv) else { return Op::Skip };
    let target = || e.target.as_deref().and_then(|t| t.parse::<i64>().ok());
    match e.kind.as_str() {
        "text" => {
            let (Ok(id), Ok(from)) = (e.id.parse::<i64>(), e.from.parse::<i64>()) else { return Op::Skip };
            let (grp, dm) = match conv_id.kind() {
                ConvKind::Group(g) => (Some(g), None),
                ConvKind::Direct(a, b) => (None, Some((a, b))),
                // Rooms are not searched (see docs/architecture.md, Rooms).
                ConvKind::Room(_) => return Op::Skip,
            };
            Op::Insert { id, conv: e.conv, grp, dm, from, ts: e.ts, body: e.body }
        }
        "edit" => match target() {
            Some(target) => Op::Edit { target, conv: e.conv, body: e.body, ts: e.ts },
            None => Op::Skip,
        },
        "delete" => match target() {
            Some(target) => Op::Delete { target, conv: e.conv },
            None => Op::Skip,
        },
        _ => Op::Skip,
    }
}

/// Runs the indexer: stand by until the lease is free, then index until
/// the lease is lost or `stop` fires (the lease is then released).
pub async fn run(sh: Arc<Shared>, cfg: SearchConfig, name: String, ttl: Duration, mut stop: oneshot::Receiver<()>) {
    loop {
        let acquired = Lease::acquire(&sh.storage.leases, LEASE.into(), &name, ttl).await.unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot ask for the search lease");
            None
        });
        let Some(mut lease) = acquired else {
            tokio::select! {
                _ = tokio::time::sleep(ttl / 4) => continue,
                _ = &mut stop => return,
            }
        };
        tracing::info!("search indexer active");
        let renew = async {
            loop {
                tokio::time::sleep(ttl / 4).await;
                if let Err(e) = lease.renew(&name).await {
                    tracing::warn!(error = %e, "search lease lost");
                    return;
                }
            }
        };
        let (stopping, failed) = tokio::select! {
            r = index(&sh, &cfg) => {
                if let Err(e) = &r { tracing::warn!(error = %e, "search indexer failed; restarting") }
                (false, true)
            }
            _ = renew => (false, false),
            _ = &mut stop => (true, false),
        };
        lease.release().await;
        if stopping {
            return;
        }
        if failed {
            tokio::select! {
                _ = tokio::time::sleep(ttl / 4) => {}
                _ = &mut stop => return,
            }
        }
    }
}

/// Text messages waiting to be inserted, as columns.
#[derive(Default)]
struct Texts {
    id: Vec<i64>,
    conv: Vec<String>,
    grp: Vec<Option<i64>>,
    dm_a: Vec<Option<i64>>,
    dm_b: Vec<Option<i64>>,
    from: Vec<i64>,
    ts: Vec<i64>,
    body: Vec<String>,
}

impl Texts {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        id: i64,
        conv: String,
        grp: Option<i64>,
        dm: Option<(i64, i64)>,
        from: i64,
        ts: i64,
        body: String,
    ) {
        self.id.push(id);
        self.conv.push(conv);
        self.grp.push(grp);
        self.dm_a.push(dm.map(|d| d.0));
        self.dm_b.push(dm.map(|d| d.1));
        self.from.push(from);
        self.ts.push(ts);
        self.body.push(body);
    }

    async fn flush(
        &mut self,
        tx: &tokio_postgres::Transaction<'_>,
        insert: &tokio_postgres::Statement,
    ) -> Result<(), tokio_postgres::Error> {
        if self.id.is_empty() {
            return Ok(());
        }
        let t = std::mem::take(self);
        tx.execute(insert, &[&t.id, &t.conv, &t.grp, &t.dm_a, &t.dm_b, &t.from, &t.ts, &t.body]).await?;
        Ok(())
    }
}

async fn consumer(sh: &Shared) -> Result<async_nats::jetstream::consumer::Consumer<pull::Config>, async_nats::Error> {
    let config = pull::Config {
        durable_name: Some(CONSUMER.into()),
        description: Some("search indexer (PostgreSQL search_messages)".into()),
        filter_subject: subjects::HISTORY_ALL.into(),
        deliver_policy: DeliverPolicy::All,
        ack_policy: AckPolicy::All,
        ack_wait: Duration::from_secs(30),
        max_deliver: -1,
        ..Default::default()
    };
    Ok(sh.storage.history.get_or_create_consumer(CONSUMER, config).await?)
}

async fn index(sh: &Shared, cfg: &SearchConfig) -> Result<(), async_nats::Error> {
    let (mut db, conn) = tokio_postgres::connect(&cfg.database_url, tokio_postgres::NoTls).await?;
    let _conn = crate::AbortOnDrop(tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "search indexer: database connection ended");
        }
    }));
    // The gateways apply the migrations; wait for the table.
    loop {
        let found = db.query_opt("SELECT to_regclass('search_messages')::text", &[]).await?;
        if found.and_then(|r| r.get::<_, Option<String>>(0)).is_some() {
            break;
        }
        tracing::info!("search indexer: waiting for the search_messages table (gateway migrations)");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // A run of texts is one statement (one round trip), flushed before an
    // edit or delete so that events apply in history order.
    let insert = db
        .prepare(
            "INSERT INTO search_messages (id, conv, grp, dm_a, dm_b, sender, ts, body)
             SELECT u.* FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::bigint[], $5::bigint[],
                                    $6::bigint[], $7::bigint[], $8::text[]) AS u(id, conv, grp, dm_a, dm_b, sender, ts, body)
             WHERE NOT EXISTS (SELECT 1 FROM search_deleted d WHERE d.id = u.id)
             ON CONFLICT (id) DO NOTHING",
        )
        .await?;
    let edit = db.prepare("UPDATE search_messages SET body = $3, edited_at = $4 WHERE id = $1 AND conv = $2").await?;
    let delete = db.prepare("DELETE FROM search_messages WHERE id = $1 AND conv = $2").await?;
    let tombstone = db.prepare("INSERT INTO search_deleted (id) VALUES ($1) ON CONFLICT DO NOTHING").await?;
    let consumer = consumer(sh).await?;
    loop {
        // With a linger: up to a batch, arriving within it (a pull that
        // ends when full or when the linger is over); without: what is
        // waiting (waiting up to 1 s for a first message).
        let mut batch = if cfg.linger.is_zero() {
            consumer.fetch().max_messages(cfg.batch).expires(Duration::from_secs(1)).messages().await?
        } else {
            consumer.batch().max_messages(cfg.batch).expires(cfg.linger).messages().await?
        };
        // The transaction begins with the first message: an idle linger
        // costs PostgreSQL nothing.
        let Some(first) = batch.next().await else {
            // Nothing arrived: nothing was pending either.
            sh.metrics.search_lag(0);
            continue;
        };
        let mut m = first?;
        let tx = db.transaction().await?;
        let mut applied = [0u64; 3];
        let mut texts = Texts::default();
        loop {
            match parse(&m.payload) {
                Op::Insert { id, conv, grp, dm, from, ts, body } => {
                    texts.push(id, conv, grp, dm, from, ts, body);
                    applied[0] += 1;
                }
                Op::Edit { target, conv, body, ts } => {
                    texts.flush(&tx, &insert).await?;
                    tx.execute(&edit, &[&target, &conv, &body, &ts]).await?;
                    applied[1] += 1;
                }
                Op::Delete { target, conv } => {
                    texts.flush(&tx, &insert).await?;
                    tx.execute(&delete, &[&target, &conv]).await?;
                    tx.execute(&tombstone, &[&target]).await?;
                    applied[2] += 1;
                }
                Op::Skip => {}
            }
            match batch.next().await {
                Some(next) => m = next?,
                None => break,
            }
        }
        let last = m;
        texts.flush(&tx, &insert).await?;
        tx.commit().await?;
        sh.metrics.search_applied(applied);
        sh.metrics.search_transaction();
        // AckPolicy::All: acknowledges the whole batch.
        last.double_ack().await?;
        // The lag: what the consumer held after the batch's last message
        // (its metadata, so no request of its own).
        sh.metrics.search_lag(last.info().map(|i| i.pending).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_edits_and_deletes_are_read_and_other_kinds_skipped() {
        let text =
            br#"{"id":"77","conv":"g-5","from":"3","device":"d","cid":"c","kind":"text","body":"hi","ts":9,"n":1}"#;
        assert_eq!(
            parse(text),
            Op::Insert { id: 77, conv: "g-5".into(), grp: Some(5), dm: None, from: 3, ts: 9, body: "hi".into() }
        );
        let dm = br#"{"id":"1","conv":"dm-2-4","from":"2","kind":"text","body":"x","ts":1}"#;
        assert!(matches!(parse(dm), Op::Insert { dm: Some((2, 4)), grp: None, .. }));
        let edit = br#"{"id":"80","conv":"g-5","from":"3","kind":"edit","target":"77","body":"new","ts":10}"#;
        assert_eq!(parse(edit), Op::Edit { target: 77, conv: "g-5".into(), body: "new".into(), ts: 10 });
        let delete = br#"{"id":"81","conv":"g-5","from":"3","kind":"delete","target":"77","body":"","ts":11}"#;
        assert_eq!(parse(delete), Op::Delete { target: 77, conv: "g-5".into() });
        for skip in [
            &br#"{"id":"82","conv":"g-5","from":"0","kind":"system","body":"joined","ts":1}"#[..],
            br#"{"id":"83","conv":"g-5","from":"3","kind":"reaction","target":"77","body":"+1","ts":1}"#,
            br#"{"id":"84","conv":"g-5","kind":"edit","body":"no target"}"#,
            br#"{"id":"85","conv":"nope","from":"3","kind":"text","body":"x"}"#,
            b"not json",
        ] {
            assert_eq!(parse(skip), Op::Skip, "{}", String::from_utf8_lossy(skip));
        }
    }
}
