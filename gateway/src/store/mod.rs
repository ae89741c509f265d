//! PostgreSQL: the connection pool, migrations and account queries. All SQL
//! of the gateway lives in this module: [`groups`], [`friends`], [`push`],
//! [`conversations`] (1:1), [`rooms`], [`search`] and [`mentions`] beside the accounts here; [`pool`] measures
//! the connection pool.

pub mod conversations;
pub mod friends;
pub mod groups;
pub mod mentions;
pub mod pool;
pub mod push;
pub mod rooms;
pub mod search;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use thiserror::Error;
use tokio_postgres::NoTls;

/// Schema migrations, applied in order, each once.
const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../migrations/001_users.sql")),
    (2, include_str!("../../migrations/002_groups.sql")),
    (3, include_str!("../../migrations/003_friends.sql")),
    (4, include_str!("../../migrations/004_push.sql")),
    (5, include_str!("../../migrations/005_token_gen.sql")),
    (6, include_str!("../../migrations/006_bans.sql")),
    (7, include_str!("../../migrations/007_group_meta.sql")),
    (8, include_str!("../../migrations/008_search.sql")),
    (9, include_str!("../../migrations/009_read_receipts.sql")),
    (10, include_str!("../../migrations/010_rooms.sql")),
    (11, include_str!("../../migrations/011_mentions.sql")),
    (12, include_str!("../../migrations/012_search_grams_linear.sql")),
];

/// Database failures.
#[derive(Debug, Error)]
pub enum DbError {
    /// No connection could be had from the pool.
    #[error("database unavailable: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database error: {0}")]
    Query(#[from] tokio_postgres::Error),
    /// The connection string is invalid.
    #[error("invalid CHAT_DATABASE_URL: {0}")]
    Config(String),
}

/// A ban in force.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ban {
    /// When it was imposed, unix ms.
    pub since_ms: i64,
    /// When it ends, unix ms (`None`: when lifted).
    pub until_ms: Option<i64>,
    /// The operator's reason (may be empty).
    pub reason: String,
}

/// A user row, without the password hash.
#[derive(Debug, Clone)]
pub struct User {
    /// User id.
    pub id: i64,
    /// Username (lower case).
    pub username: String,
    /// Creation time, unix ms.
    pub created_ms: i64,
}

/// The database handle.
#[derive(Clone)]
pub struct Db {
    pub(crate) pool: pool::TimedPool,
    /// The search gram index's statistics, cached (`search.rs`).
    pub(crate) gram_stats: std::sync::Arc<search::GramStats>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

impl Db {
    /// Builds a pool (connections are opened lazily).
    pub fn connect(url: &str, size: usize) -> Result<Db, DbError> {
        let pg: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| DbError::Config(e.to_string()))?;
        let mgr = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(mgr).max_size(size).build().map_err(|e| DbError::Config(e.to_string()))?;
        Ok(Db { pool: pool::TimedPool::new(pool), gram_stats: Default::default() })
    }

    /// Applies pending migrations under an advisory lock, so gateways
    /// starting together apply each migration once.
    pub async fn migrate(&self) -> Result<(), DbError> {
        let mut c = self.pool.get().await?;
        c.batch_execute(
            "SELECT pg_advisory_lock(4242);
             CREATE TABLE IF NOT EXISTS schema_migrations (
                 version INT PRIMARY KEY, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        .await?;
        let result = async {
            for (version, sql) in MIGRATIONS {
                let tx = c.transaction().await?;
                let done = tx.query_opt("SELECT 1 FROM schema_migrations WHERE version = $1", &[version]).await?;
                if done.is_none() {
                    tx.batch_execute(sql).await?;
                    tx.execute("INSERT INTO schema_migrations (version) VALUES ($1)", &[version]).await?;
                    tracing::info!(version, "migration applied");
                }
                tx.commit().await?;
            }
            Ok::<_, DbError>(())
        }
        .await;
        c.batch_execute("SELECT pg_advisory_unlock(4242)").await?;
        result
    }

    /// Checks the database answers.
    pub async fn ping(&self) -> Result<(), DbError> {
        self.pool.get().await?.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Creates a user; `None` if the username is taken.
    pub async fn create_user(&self, username: &str, password_hash: &str) -> Result<Option<i64>, DbError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "INSERT INTO users (username, password_hash) VALUES ($1, $2)
                 ON CONFLICT (username) DO NOTHING RETURNING id",
                &[&username, &password_hash],
            )
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    /// The id and password hash of a username.
    pub async fn credentials(&self, username: &str) -> Result<Option<(i64, String)>, DbError> {
        let c = self.pool.get().await?;
        let row = c.query_opt("SELECT id, password_hash FROM users WHERE username = $1", &[&username]).await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Records a login from a device.
    pub async fn touch_device(&self, user: i64, device: &str) -> Result<u64, DbError> {
        let c = self.pool.get().await?;
        let row = c
            .query_one(
                "INSERT INTO devices (user_id, device_id) VALUES ($1, $2)
                 ON CONFLICT (user_id, device_id) DO UPDATE SET last_login_at = now()
                 RETURNING token_gen",
                &[&user, &device],
            )
            .await?;
        Ok(row.get::<_, i64>(0) as u64)
    }

    /// Ends every token issued to the device so far: bumps its token
    /// generation and returns the new one (`None`: no such device).
    pub async fn bump_token_gen(&self, user: i64, device: &str) -> Result<Option<u64>, DbError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "UPDATE devices SET token_gen = token_gen + 1 WHERE user_id = $1 AND device_id = $2
                 RETURNING token_gen",
                &[&user, &device],
            )
            .await?;
        Ok(row.map(|r| r.get::<_, i64>(0) as u64))
    }

    /// Bans a user (until `until_ms`, unix ms; `None`: until unbanned) and
    /// ends every token of theirs: returns each device with its new token
    /// generation, or `None` if there is no such user.
    pub async fn ban(
        &self,
        user: i64,
        until_ms: Option<i64>,
        reason: &str,
    ) -> Result<Option<Vec<(String, u64)>>, DbError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let found = tx
            .query_opt(
                "UPDATE users SET banned_at = now(), ban_reason = $3,
                   banned_until = CASE WHEN $2::bigint IS NULL THEN NULL ELSE to_timestamp($2::bigint / 1000.0) END
                 WHERE id = $1 RETURNING id",
                &[&user, &until_ms, &reason],
            )
            .await?;
        if found.is_none() {
            return Ok(None);
        }
        let rows = tx
            .query(
                "UPDATE devices SET token_gen = token_gen + 1 WHERE user_id = $1 RETURNING device_id, token_gen",
                &[&user],
            )
            .await?;
        tx.commit().await?;
        Ok(Some(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect()))
    }

    /// Lifts a user's ban; `false` if there is no such user.
    pub async fn unban(&self, user: i64) -> Result<bool, DbError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "UPDATE users SET banned_at = NULL, banned_until = NULL, ban_reason = NULL WHERE id = $1",
                &[&user],
            )
            .await?;
        Ok(n == 1)
    }

    /// The user's ban in force now, if any.
    pub async fn ban_of(&self, user: i64) -> Result<Option<Ban>, DbError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT (extract(epoch from banned_at) * 1000)::bigint,
                        (extract(epoch from banned_until) * 1000)::bigint, coalesce(ban_reason, '')
                 FROM users WHERE id = $1 AND banned_at IS NOT NULL
                   AND (banned_until IS NULL OR banned_until > now())",
                &[&user],
            )
            .await?;
        Ok(row.map(|r| Ban { since_ms: r.get(0), until_ms: r.get(1), reason: r.get(2) }))
    }

    /// A user's devices: (device, first login ms, last login ms, token
    /// generation), oldest first.
    pub async fn devices(&self, user: i64) -> Result<Vec<(String, i64, i64, u64)>, DbError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT device_id, (extract(epoch from created_at) * 1000)::bigint,
                        (extract(epoch from last_login_at) * 1000)::bigint, token_gen
                 FROM devices WHERE user_id = $1 ORDER BY created_at, device_id",
                &[&user],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get::<_, i64>(3) as u64)).collect())
    }

    /// A user by id.
    pub async fn user(&self, id: i64) -> Result<Option<User>, DbError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT id, username, (extract(epoch from created_at) * 1000)::bigint FROM users WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(row.map(|r| User { id: r.get(0), username: r.get(1), created_ms: r.get(2) }))
    }

    /// Whether the user sends read receipts (true for an unknown user).
    pub async fn read_receipts(&self, id: i64) -> Result<bool, DbError> {
        let c = self.pool.get().await?;
        let row = c.query_opt("SELECT read_receipts FROM users WHERE id = $1", &[&id]).await?;
        Ok(row.map(|r| r.get(0)).unwrap_or(true))
    }

    /// Those of `ids` who turned read receipts off.
    pub async fn receipts_off(&self, ids: &[i64]) -> Result<std::collections::HashSet<i64>, DbError> {
        let c = self.pool.get().await?;
        let rows = c.query("SELECT id FROM users WHERE id = ANY($1) AND NOT read_receipts", &[&ids]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Turns the user's read receipts on or off.
    pub async fn set_read_receipts(&self, id: i64, on: bool) -> Result<(), DbError> {
        let c = self.pool.get().await?;
        c.execute("UPDATE users SET read_receipts = $2 WHERE id = $1", &[&id, &on]).await?;
        Ok(())
    }

    /// A user by exact (lower-case) username.
    pub async fn user_by_name(&self, username: &str) -> Result<Option<User>, DbError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT id, username, (extract(epoch from created_at) * 1000)::bigint FROM users WHERE username = $1",
                &[&username],
            )
            .await?;
        Ok(row.map(|r| User { id: r.get(0), username: r.get(1), created_ms: r.get(2) }))
    }
}
