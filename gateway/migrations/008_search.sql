-- Message search (GET /v1/search), filled by the worker's search indexer
-- from the history stream (workers/src/search.rs).
--
-- The index is an n-gram GIN index of our own: every distinct 2- and
-- 3-character substring of the lower-cased body. pg_trgm is not used for
-- the grams because it only indexes "alphanumeric" characters, and under
-- the C locale (the tests' initdb, and a common server default) Hangul is
-- not alphanumeric: show_trgm('오늘회의') is empty. It also cannot index
-- a 2-character LIKE pattern (no trigram in it), and Korean queries of
-- two syllables are the common case. A query is looked up by grams it
-- contains (below), then checked exactly with ILIKE.

CREATE FUNCTION search_grams(t TEXT) RETURNS TEXT[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(DISTINCT g), '{}')
    FROM (SELECT lower(t) AS l) s,
         LATERAL (SELECT substr(s.l, i, 2) AS g FROM generate_series(1, char_length(s.l) - 1) i
                  UNION ALL
                  SELECT substr(s.l, i, 3) FROM generate_series(1, char_length(s.l) - 2) i) grams
$$;

-- The grams a query is looked up by: its bigram (2 characters), or its
-- first and last trigrams (3 or more). Not every trigram: the planner
-- multiplies the frequencies of the elements of an array containment as if
-- independent, so with five common trigrams ("meeting") it expects one row
-- and rechecks every candidate instead of intersecting them with the
-- caller's conversations first (scripts/bench-search, 1,000,000 rows:
-- "meeting" p50 240 ms with all five trigrams, 33 ms with two). ILIKE
-- rechecks the whole query anyway.
CREATE FUNCTION search_query_grams(q TEXT) RETURNS TEXT[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT CASE WHEN char_length(l) < 3 THEN ARRAY[l]
                ELSE array(SELECT DISTINCT unnest(ARRAY[left(l, 3), right(l, 3)])) END
    FROM (SELECT lower(q) AS l) s
$$;

-- One row per text message that exists now: an edit rewrites the body, a
-- delete removes the row. grp is the group of a g-<id> conversation; dm_a
-- and dm_b are the two users of a dm-<a>-<b> one (who may read it).
CREATE TABLE search_messages (
    id        BIGINT PRIMARY KEY,
    conv      TEXT NOT NULL,
    grp       BIGINT,
    dm_a      BIGINT,
    dm_b      BIGINT,
    sender    BIGINT NOT NULL,
    ts        BIGINT NOT NULL,
    body      TEXT NOT NULL,
    edited_at BIGINT
);
-- An expression index (the grams are not stored in the row: measured
-- faster at 100,000 rows, the rows stay small and fewer heap pages are read).
CREATE INDEX search_messages_grams ON search_messages USING gin (search_grams(body));
CREATE INDEX search_messages_conv ON search_messages (conv, id);
-- Who may read a row: combined with the gram index (a BitmapAnd), only
-- the caller's matching rows are read from the heap.
CREATE INDEX search_messages_grp ON search_messages (grp) WHERE grp IS NOT NULL;
CREATE INDEX search_messages_dm_a ON search_messages (dm_a) WHERE dm_a IS NOT NULL;
CREATE INDEX search_messages_dm_b ON search_messages (dm_b) WHERE dm_b IS NOT NULL;

-- Ids of deleted messages, so that a redelivered original (or a replay
-- that sees it again) is not indexed again.
CREATE TABLE search_deleted (
    id BIGINT PRIMARY KEY
);
