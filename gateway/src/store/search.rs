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

/// Rows the newest-first walk reads before it gives up on filling a page
/// (see [`Db::search`]): at most ~6 ms of the walk on the bench machine.
pub const WALK_ROWS: i64 = 30_000;

/// The walk: the newest [`WALK_ROWS`] rows (of the conversation, older
/// than `before`), the caller's among them, then the text; the fences
/// (`ORDER BY … OFFSET 0`) keep that order of the filters (the cheap
/// readable check first, `ILIKE` only on the caller's rows) and let the
/// outer `LIMIT` stop the walk as soon as the page is full.
const WALK: &str = "SELECT id, conv, sender, ts, body, edited_at FROM (
     SELECT * FROM (
       SELECT id, conv, grp, dm_a, dm_b, sender, ts, body, edited_at FROM search_messages
       WHERE ($3::text IS NULL OR conv = $3::text) AND ($4::bigint IS NULL OR id < $4::bigint)
       ORDER BY id DESC LIMIT $6) w
     WHERE grp IN (SELECT group_id FROM group_members WHERE user_id = $1) OR dm_a = $1 OR dm_b = $1
     ORDER BY id DESC OFFSET 0) r
   WHERE body ILIKE $2 ESCAPE '\\'
   ORDER BY id DESC LIMIT $5";

/// The gram-index plan: every row with the query's grams that the caller
/// may read (a `BitmapAnd` of the two), rechecked, sorted.
const GRAMS: &str = "SELECT id, conv, sender, ts, body, edited_at FROM search_messages
   WHERE search_grams(body) @> search_query_grams($2) AND body ILIKE $3 ESCAPE '\\'
     AND (grp = ANY(ARRAY(SELECT group_id FROM group_members WHERE user_id = $1)) OR dm_a = $1 OR dm_b = $1)
     AND ($4::text IS NULL OR conv = $4::text) AND ($5::bigint IS NULL OR id < $5::bigint)
   ORDER BY id DESC LIMIT $6";

fn hit(r: &tokio_postgres::Row) -> Hit {
    Hit { id: r.get(0), conv: r.get(1), from: r.get(2), ts: r.get(3), body: r.get(4), edited_at: r.get(5) }
}

/// Which plan answered a search (for the tests and the bench).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Plan {
    /// The walk filled the page.
    Walk,
    /// The gram index answered (the walk did not fill the page).
    Grams,
}

impl Db {
    /// The newest hits of `q.q` the user may read, newest first: 1:1
    /// conversations they are one of the two users of, groups they are a
    /// member of now.
    pub async fn search(&self, q: &Query<'_>) -> Result<Vec<Hit>, DbError> {
        Ok(self.search_with(q, WALK_ROWS).await?.0)
    }

    /// [`Db::search`] in two phases. First the walk: the newest
    /// `walk_rows` rows (of the conversation, older than `before`)
    /// newest first, the caller's among them checked with `ILIKE`, until
    /// `limit` hits. If it fills the page, those are the answer: every row
    /// newer than its last hit was in the walk. A common word fills it
    /// after a few thousand rows without touching the gram index. If not
    /// (a rare word, or a caller with few of the newest rows), the gram
    /// index answers the whole query, as if there had been no walk; its
    /// cost grows with the caller's hits, which are few when the walk
    /// did not find a page of them. `walk_rows` 0 skips the walk.
    pub async fn search_with(&self, q: &Query<'_>, walk_rows: i64) -> Result<(Vec<Hit>, Plan), DbError> {
        let c = self.pool.get().await?;
        let pattern = like_pattern(q.q);
        if walk_rows > 0 {
            let rows = c.query(WALK, &[&q.user, &pattern, &q.conv, &q.before, &q.limit, &walk_rows]).await?;
            if rows.len() as i64 >= q.limit {
                return Ok((rows.iter().map(hit).collect(), Plan::Walk));
            }
        }
        let rows = c.query(GRAMS, &[&q.user, &q.q, &pattern, &q.conv, &q.before, &q.limit]).await?;
        Ok((rows.iter().map(hit).collect(), Plan::Grams))
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
