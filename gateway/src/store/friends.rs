//! Friendships and friend requests.

use super::{Db, DbError};

/// What a friend request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A request is now pending.
    Requested,
    /// Both are friends (accepted, or already were).
    Friends,
}

impl Db {
    /// Sends a friend request, or accepts the other user's pending one.
    pub async fn befriend(&self, me: i64, other: i64) -> Result<Outcome, DbError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let already =
            tx.query_opt("SELECT 1 FROM friends WHERE user_id = $1 AND friend_id = $2", &[&me, &other]).await?;
        if already.is_some() {
            return Ok(Outcome::Friends);
        }
        let theirs =
            tx.execute("DELETE FROM friend_requests WHERE from_id = $1 AND to_id = $2", &[&other, &me]).await? > 0;
        let outcome = if theirs {
            tx.execute(
                "INSERT INTO friends (user_id, friend_id) VALUES ($1, $2), ($2, $1) ON CONFLICT DO NOTHING",
                &[&me, &other],
            )
            .await?;
            tx.execute("DELETE FROM friend_requests WHERE from_id = $1 AND to_id = $2", &[&me, &other]).await?;
            Outcome::Friends
        } else {
            tx.execute(
                "INSERT INTO friend_requests (from_id, to_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                &[&me, &other],
            )
            .await?;
            Outcome::Requested
        };
        tx.commit().await?;
        Ok(outcome)
    }

    /// Ends a friendship, or withdraws or declines a request. True if
    /// there was a friendship.
    pub async fn unfriend(&self, me: i64, other: i64) -> Result<bool, DbError> {
        let c = self.pool.get().await?;
        let n = c
            .execute(
                "DELETE FROM friends WHERE (user_id = $1 AND friend_id = $2) OR (user_id = $2 AND friend_id = $1)",
                &[&me, &other],
            )
            .await?;
        c.execute(
            "DELETE FROM friend_requests WHERE (from_id = $1 AND to_id = $2) OR (from_id = $2 AND to_id = $1)",
            &[&me, &other],
        )
        .await?;
        Ok(n > 0)
    }

    /// The user's friends' ids.
    pub async fn friend_ids(&self, me: i64) -> Result<Vec<i64>, DbError> {
        let c = self.pool.get().await?;
        Ok(c.query("SELECT friend_id FROM friends WHERE user_id = $1", &[&me])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    /// Friends, incoming and outgoing requests: (kind, user id, username).
    pub async fn friend_list(&self, me: i64) -> Result<Vec<(String, i64, String)>, DbError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT 'friend', u.id, u.username FROM friends f JOIN users u ON u.id = f.friend_id WHERE f.user_id = $1
                 UNION ALL SELECT 'incoming', u.id, u.username FROM friend_requests r JOIN users u ON u.id = r.from_id WHERE r.to_id = $1
                 UNION ALL SELECT 'outgoing', u.id, u.username FROM friend_requests r JOIN users u ON u.id = r.to_id WHERE r.from_id = $1
                 ORDER BY 2",
                &[&me],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
    }

    /// Of `users`, those the caller may follow: friends, or members of a
    /// group the caller is in.
    pub async fn visible(&self, me: i64, users: &[i64]) -> Result<Vec<i64>, DbError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT u FROM unnest($2::bigint[]) AS u WHERE u = $1
                   OR EXISTS (SELECT 1 FROM friends WHERE user_id = $1 AND friend_id = u)
                   OR EXISTS (SELECT 1 FROM group_members a JOIN group_members b ON a.group_id = b.group_id
                              WHERE a.user_id = $1 AND b.user_id = u)",
                &[&me, &users],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}
