-- search_grams without its DISTINCT: the GIN index takes an array's
-- elements as a set (it sorts and de-duplicates the keys of each row
-- itself), and `@>`, the only use of the function (the index and the
-- recheck in store/search.rs), ignores duplicates and order. So the
-- array_agg's own sort was done twice for nothing: 0.19 → 0.12 ms per
-- 100-character body (psql, PostgreSQL 15, this machine). The index keys
-- are the same set as with 008's and 012's versions, so the index needs
-- no rebuild (tests: search::the_grams_are_the_same_as_the_first_version_s).
CREATE OR REPLACE FUNCTION search_grams(t TEXT) RETURNS TEXT[]
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(array_agg(g), '{}')
    FROM (SELECT c || lead(c) OVER w AS g2, c || lead(c) OVER w || lead(c, 2) OVER w AS g3
          FROM string_to_table(lower(t), NULL) WITH ORDINALITY AS x(c, i)
          WINDOW w AS (ORDER BY i)) grams,
         LATERAL (VALUES (g2), (g3)) v(g)
    WHERE g IS NOT NULL
$$;
