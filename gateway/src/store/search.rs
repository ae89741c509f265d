//! Message search: the query over `search_messages` (migration
//! `008_search.sql`), filled by the worker's search indexer. The SQL is
//! also in `scripts/bench-search` (keep the two equal).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

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

/// PostgreSQL's statistics of the gram index (`ANALYZE`): the rows, the
/// most common grams and their frequencies (the array's last three are the
/// least and greatest frequency and the null share). No row without
/// statistics.
const STATS: &str = "SELECT (SELECT reltuples FROM pg_class WHERE oid = 'search_messages'::regclass)::float8,
          most_common_elems::text::text[], most_common_elem_freqs
   FROM pg_stats WHERE tablename = 'search_messages_grams' AND attname = 'search_grams' LIMIT 1";

/// How long [`STATS`] is reused (it costs ~2 ms to plan and read).
pub const STATS_TTL: Duration = Duration::from_secs(60);

/// The cached statistics of the gram index (one per [`Db`]).
#[derive(Default)]
pub struct GramStats(Mutex<Option<Stats>>);

struct Stats {
    read: Instant,
    rows: f64,
    freq: HashMap<String, f64>,
    /// Frequency of the least common gram in `freq`: any other is rarer.
    floor: f64,
}

impl Stats {
    /// Rows of the table that contain every gram `q` is looked up by, at
    /// most: the rarest gram's frequency times the rows.
    fn estimate(&self, q: &str) -> f64 {
        let min = query_grams(q).iter().map(|g| self.freq.get(g).copied().unwrap_or(self.floor)).fold(1.0, f64::min);
        self.rows.max(0.0) * min
    }
}

/// What `search_query_grams` (migration 008) looks `q` up by: its bigram,
/// or its first and last trigrams.
pub fn query_grams(q: &str) -> Vec<String> {
    let l: Vec<char> = q.to_lowercase().chars().collect();
    if l.len() < 3 {
        return vec![l.into_iter().collect()];
    }
    let (first, last): (String, String) = (l[..3].iter().collect(), l[l.len() - 3..].iter().collect());
    if first == last {
        vec![first]
    } else {
        vec![first, last]
    }
}

/// At most this many rows with the query's grams in the whole table (by
/// the statistics): the gram plan is cheap whoever asks, no walk first.
pub const GRAMS_CHEAP_ROWS: f64 = 5_000.0;

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
        let walk = if self.grams_in_table(q.q).await? <= GRAMS_CHEAP_ROWS { 0 } else { WALK_ROWS };
        Ok(self.search_with(q, walk).await?.0)
    }

    /// Rows of the table with every gram of `q`, at most, by the cached
    /// statistics (read again after [`STATS_TTL`]); 0 without statistics.
    pub async fn grams_in_table(&self, q: &str) -> Result<f64, DbError> {
        {
            let cached = self.gram_stats.0.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(s) = cached.as_ref().filter(|s| s.read.elapsed() < STATS_TTL) {
                return Ok(s.estimate(q));
            }
        }
        let row = self.pool.get().await?.query_opt(STATS, &[]).await?;
        let stats = match row {
            None => Stats { read: Instant::now(), rows: 0.0, freq: HashMap::new(), floor: 0.0 },
            Some(r) => {
                let elems: Vec<String> = r.get::<_, Option<Vec<String>>>(1).unwrap_or_default();
                let freqs: Vec<f32> = r.get::<_, Option<Vec<f32>>>(2).unwrap_or_default();
                let floor = freqs.len().checked_sub(3).and_then(|i| freqs.get(i)).copied().unwrap_or(0.0);
                Stats {
                    read: Instant::now(),
                    rows: r.get::<_, Option<f64>>(0).unwrap_or(0.0),
                    freq: elems.into_iter().zip(freqs.iter().map(|&f| f64::from(f))).collect(),
                    floor: f64::from(floor),
                }
            }
        };
        let est = stats.estimate(q);
        *self.gram_stats.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats);
        Ok(est)
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
    /// did not find a page of them. `walk_rows` 0 skips the walk:
    /// [`Db::search`] skips it for a word whose grams are rare in the whole
    /// table (statistics: at most [`GRAMS_CHEAP_ROWS`] rows), and for
    /// every word before the table has statistics.
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
    fn query_grams_are_the_bigram_or_the_first_and_last_trigrams() {
        assert_eq!(query_grams("Ll"), ["ll"]);
        assert_eq!(query_grams("MEETING"), ["mee", "ing"]);
        assert_eq!(query_grams("오늘회의"), ["오늘회", "늘회의"]);
        assert_eq!(query_grams("abc"), ["abc"]);
        let s = Stats {
            read: Instant::now(),
            rows: 1000.0,
            freq: [("mee".into(), 0.1), ("ing".into(), 0.2)].into(),
            floor: 0.01,
        };
        assert!((s.estimate("meeting") - 100.0).abs() < 1e-9);
        assert!((s.estimate("meetxyz") - 10.0).abs() < 1e-9, "an untracked gram is rarer than the floor");
    }

    #[test]
    fn like_patterns_escape_wildcards() {
        assert_eq!(like_pattern("회의"), "%회의%");
        assert_eq!(like_pattern(r"50%_a\b"), r"%50\%\_a\\b%");
    }
}
