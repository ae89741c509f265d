-- search_grams in linear time. The first version (008_search.sql) took
-- every gram with substr(l, i, n), and substr on a UTF-8 string walks to
-- character i: quadratic in the body's length. Measured on PostgreSQL 15
-- here: 0.27 ms for a 100-character body, 3.4 s for 10,500 characters,
-- 15.8 s for 22,500, so a body at the 100,000-character limit held the
-- search indexer (and its transaction) for minutes; at 1:1 saturation the
-- function was 76 % of PostgreSQL's CPU. This one splits the body into
-- characters once and pairs each with the next one or two: 0.13 ms,
-- 15 ms, 45 ms and 167 ms (100,000 characters).
--
-- Same grams for every body (the same lower(), the same 2- and
-- 3-character substrings, distinct and sorted), so the index built with
-- the old function stays valid and needs no rebuild
-- (tests: search::the_grams_are_the_same_as_the_first_version_s).
CREATE OR REPLACE FUNCTION search_grams(t TEXT) RETURNS TEXT[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(DISTINCT g), '{}')
    FROM (SELECT c || lead(c) OVER w AS g2, c || lead(c) OVER w || lead(c, 2) OVER w AS g3
          FROM string_to_table(lower(t), NULL) WITH ORDINALITY AS x(c, i)
          WINDOW w AS (ORDER BY i)) grams,
         LATERAL (VALUES (g2), (g3)) v(g)
    WHERE g IS NOT NULL
$$;
