//! What push reads from PostgreSQL: registrations, mutes, names; and the
//! removal of tokens a provider reports invalid. The gateway owns the
//! schema (`gateway/migrations/004_push.sql`).

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::PushError;

/// A device's registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// Device id.
    pub device: String,
    /// `fcm`, `apns` or `webpush`.
    pub provider: String,
    /// The token, or the Web Push subscription as JSON.
    pub token: String,
}

/// The push queries.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

type Result<T> = std::result::Result<T, async_nats::Error>;

impl Store {
    /// A lazily connecting pool.
    pub fn connect(url: &str, size: usize) -> std::result::Result<Store, PushError> {
        let pg: tokio_postgres::Config =
            url.parse().map_err(|e: tokio_postgres::Error| PushError::Db(format!("invalid CHAT_DATABASE_URL: {e}")))?;
        let mgr = Manager::from_config(pg, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(mgr).max_size(size).build().map_err(|e| PushError::Db(e.to_string()))?;
        Ok(Store { pool })
    }

    /// Every registration of a user.
    pub async fn registrations(&self, user: i64) -> Result<Vec<Registration>> {
        let c = self.pool.get().await?;
        let rows =
            c.query("SELECT device_id, provider, token FROM push_registrations WHERE user_id = $1", &[&user]).await?;
        Ok(rows.iter().map(|r| Registration { device: r.get(0), provider: r.get(1), token: r.get(2) }).collect())
    }

    /// One device's registration.
    pub async fn registration(&self, user: i64, device: &str) -> Result<Option<Registration>> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT device_id, provider, token FROM push_registrations WHERE user_id = $1 AND device_id = $2",
                &[&user, &device],
            )
            .await?;
        Ok(row.map(|r| Registration { device: r.get(0), provider: r.get(1), token: r.get(2) }))
    }

    /// The conversations a user muted.
    pub async fn mutes(&self, user: i64) -> Result<Vec<String>> {
        let c = self.pool.get().await?;
        let rows = c.query("SELECT conv FROM conversation_mutes WHERE user_id = $1", &[&user]).await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// A user's username.
    pub async fn username(&self, user: i64) -> Result<Option<String>> {
        let c = self.pool.get().await?;
        Ok(c.query_opt("SELECT username FROM users WHERE id = $1", &[&user]).await?.map(|r| r.get(0)))
    }

    /// A group's name.
    pub async fn group_name(&self, group: i64) -> Result<Option<String>> {
        let c = self.pool.get().await?;
        Ok(c.query_opt("SELECT name FROM groups WHERE id = $1", &[&group]).await?.map(|r| r.get(0)))
    }

    /// Deletes a registration if it still holds `token` (a device that
    /// registered a new token meanwhile keeps it). True if deleted.
    pub async fn delete_token(&self, user: i64, device: &str, token: &str) -> Result<bool> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "DELETE FROM push_registrations WHERE user_id = $1 AND device_id = $2 AND token = $3",
                &[&user, &device, &token],
            )
            .await?;
        Ok(n > 0)
    }
}
