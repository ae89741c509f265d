//! 1:1 conversations, recorded for the conversation list.

use super::{Db, DbError};

impl Db {
    /// Remembers that a 1:1 conversation exists (for the conversation list).
    pub async fn record_direct(&self, a: i64, b: i64) -> Result<(), DbError> {
        let c = self.pool.get().await?;
        let (lo, hi) = (a.min(b), a.max(b));
        c.execute("INSERT INTO direct_conversations VALUES ($1, $2) ON CONFLICT DO NOTHING", &[&lo, &hi]).await?;
        Ok(())
    }

    /// The other participants of the caller's 1:1 conversations, with
    /// their usernames.
    pub async fn direct_peers(&self, user: i64) -> Result<Vec<(i64, String)>, DbError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT p.peer, u.username FROM (
                   SELECT user_b AS peer FROM direct_conversations WHERE user_a = $1
                   UNION SELECT user_a FROM direct_conversations WHERE user_b = $1) p
                 JOIN users u ON u.id = p.peer",
                &[&user],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }
}
