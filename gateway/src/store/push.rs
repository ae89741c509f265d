//! Devices' push registrations and muted conversations.

use super::{Db, DbError};

impl Db {
    /// True when the user has logged in from this device.
    pub async fn has_device(&self, user: i64, device: &str) -> Result<bool, DbError> {
        let c = self.pool.get().await?;
        let row = c.query_opt("SELECT 1 FROM devices WHERE user_id = $1 AND device_id = $2", &[&user, &device]).await?;
        Ok(row.is_some())
    }

    /// Creates or replaces a device's registration.
    pub async fn put_registration(&self, user: i64, device: &str, provider: &str, token: &str) -> Result<(), DbError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO push_registrations (user_id, device_id, provider, token) VALUES ($1, $2, $3, $4)
             ON CONFLICT (user_id, device_id)
             DO UPDATE SET provider = EXCLUDED.provider, token = EXCLUDED.token, updated_at = now()",
            &[&user, &device, &provider, &token],
        )
        .await?;
        Ok(())
    }

    /// A device's provider and token.
    pub async fn registration(&self, user: i64, device: &str) -> Result<Option<(String, String)>, DbError> {
        let c = self.pool.get().await?;
        let row = c
            .query_opt(
                "SELECT provider, token FROM push_registrations WHERE user_id = $1 AND device_id = $2",
                &[&user, &device],
            )
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Removes a device's registration; true if there was one.
    pub async fn delete_registration(&self, user: i64, device: &str) -> Result<bool, DbError> {
        let c = self.pool.get().await?;
        let n = c
            .execute("DELETE FROM push_registrations WHERE user_id = $1 AND device_id = $2", &[&user, &device])
            .await?;
        Ok(n > 0)
    }

    /// Mutes or unmutes a conversation for a user.
    pub async fn set_mute(&self, user: i64, conv: &str, on: bool) -> Result<(), DbError> {
        let c = self.pool.get().await?;
        if on {
            c.execute(
                "INSERT INTO conversation_mutes (user_id, conv) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&user, &conv],
            )
            .await?;
        } else {
            c.execute("DELETE FROM conversation_mutes WHERE user_id = $1 AND conv = $2", &[&user, &conv]).await?;
        }
        Ok(())
    }
}
