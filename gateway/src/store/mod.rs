//! PostgreSQL: the connection pool, migrations and account queries. All SQL
//! of the gateway lives in this module: [`groups`], [`friends`], [`push`]
//! and [`conversations`] (1:1) beside the accounts here; [`pool`] measures
//! the connection pool.

pub mod conversations;
pub mod friends;
pub mod groups;
pub mod pool;
pub mod push;

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
        Ok(Db { pool: pool::TimedPool::new(pool) })
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
