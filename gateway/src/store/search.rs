//! Message search: the query over `search_messages` (migration
//! `008_search.sql`), filled by the worker's search indexer. The SQL is
//! also in `scripts/bench-search` (keep the two equal).

use super::{Db, DbError};

/// One search hit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Message id.
    pub id: i64,
    /// Conversation id.
    pub conv: String,
    /// Sender user id.
    pub from: i64,
    /// Unix ms the message was sequenced at.
    pub ts: i64,
    /// The current body (after edits).
    pub body: String,
    /// Unix ms of the last edit, if edited.
    pub edited_at: Option<i64>,
}

/// A search request, validated by the handler.
#[derive(Debug, Clone)]
pub struct Query<'a> {
    /// The searching user: only conversations they may read now are searched.
    pub user: i64,
    /// The text to find (a substring, case-insensitive for ASCII).
    pub q: &'a str,
    /// Only this conversation (already checked to be readable).
    pub conv: Option<&'a str>,
    /// Only messages with a smaller id (paging).
    pub before: Option<i64>,
    /// At most this many hits.
    pub limit: i64,
}

/// `q` as an ILIKE pattern matching it anywhere (`\` escapes).
pub fn like_pattern(q: &str) -> String {
    let mut p = String::with_capacity(q.len() + 2);
    p.push('%');
    for c in q.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

impl Db {
    /// The newest hits of `q.q` the user may read, newest first: 1:1
    /// conversations they are one of the two users of, groups they are a
    /// member of now.
    pub async fn search(&self, q: &Query<'_>) -> Result<Vec<Hit>, DbError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT id, conv, sender, ts, body, edited_at FROM search_messages
                 WHERE search_grams(body) @> search_query_grams($2) AND body ILIKE $3 ESCAPE '\\'
                   AND (grp = ANY(ARRAY(SELECT group_id FROM group_members WHERE user_id = $1)) OR dm_a = $1 OR dm_b = $1)
                   AND ($4::text IS NULL OR conv = $4::text) AND ($5::bigint IS NULL OR id < $5::bigint)
                 ORDER BY id DESC LIMIT $6",
                &[&q.user, &q.q, &like_pattern(q.q), &q.conv, &q.before, &q.limit],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Hit {
                id: r.get(0),
                conv: r.get(1),
                from: r.get(2),
                ts: r.get(3),
                body: r.get(4),
                edited_at: r.get(5),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("회의"), "%회의%");
        assert_eq!(like_pattern(r"50%_a\b"), r"%50\%\_a\\b%");
    }
}
