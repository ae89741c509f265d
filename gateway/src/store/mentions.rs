//! Mentions: resolving `@username`s to current members, and the rows the
//! conversation list counts (migration `011_mentions.sql`).

use std::collections::HashMap;

use super::{Db, DbError};

impl Db {
    /// The ids of those `names` (lower-case) who are current members of the
    /// group, leaving out `except` (the sender), in the order of `names`.
    pub async fn members_named(&self, group: i64, names: &[String], except: i64) -> Result<Vec<i64>, DbError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT u.id FROM unnest($2::text[]) WITH ORDINALITY AS q(name, i)
                 JOIN users u ON u.username = q.name
                 JOIN group_members m ON m.user_id = u.id AND m.group_id = $1
                 WHERE u.id <> $3 ORDER BY q.i",
                &[&group, &names, &except],
            )
            .await?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }

    /// Records that message `id` (ordinal `n`) of `conv` mentions `users`;
    /// writing it again changes nothing.
    pub async fn record_mentions(&self, conv: &str, id: u64, n: u64, users: &[i64]) -> Result<(), DbError> {
        let c = self.pool.get().await?;
        c.execute(
            "INSERT INTO mentions (user_id, conv, n, id) SELECT u, $2, $3, $4 FROM unnest($1::bigint[]) AS u
             ON CONFLICT DO NOTHING",
            &[&users, &conv, &(n as i64), &(id as i64)],
        )
        .await?;
        Ok(())
    }

    /// Forgets the mentions of a deleted message.
    pub async fn delete_mentions(&self, conv: &str, id: u64) -> Result<(), DbError> {
        let c = self.pool.get().await?;
        c.execute("DELETE FROM mentions WHERE conv = $1 AND id = $2", &[&conv, &(id as i64)]).await?;
        Ok(())
    }

    /// Per conversation `(conv, read, head)`, how many messages mention
    /// `user` above the read ordinal and at or below the head ordinal the
    /// caller read (a mention stored since is not counted: the count
    /// agrees with the `last_n` it is listed with; conversations without
    /// any are absent).
    pub async fn mention_counts(
        &self,
        user: i64,
        reads: &[(String, u64, u64)],
    ) -> Result<HashMap<String, u64>, DbError> {
        if reads.is_empty() {
            return Ok(HashMap::new());
        }
        let convs: Vec<&str> = reads.iter().map(|(c, _, _)| c.as_str()).collect();
        let ns: Vec<i64> = reads.iter().map(|(_, n, _)| *n as i64).collect();
        let heads: Vec<i64> = reads.iter().map(|(_, _, h)| *h as i64).collect();
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT m.conv, count(*) FROM unnest($2::text[], $3::bigint[], $4::bigint[]) AS r(conv, n, head)
                 JOIN mentions m ON m.user_id = $1 AND m.conv = r.conv AND m.n > r.n AND m.n <= r.head
                 GROUP BY m.conv",
                &[&user, &convs, &ns, &heads],
            )
            .await?;
        Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect())
    }
}
