-- Group meta information beside the name (PATCH /v1/groups/{id}): a topic
-- and an avatar URL; meta_version numbers the changes (each announced as a
-- system message with the cid g<id>m<meta_version>).
ALTER TABLE groups ADD COLUMN IF NOT EXISTS topic TEXT NOT NULL DEFAULT '';
ALTER TABLE groups ADD COLUMN IF NOT EXISTS avatar_url TEXT NOT NULL DEFAULT '';
ALTER TABLE groups ADD COLUMN IF NOT EXISTS meta_version BIGINT NOT NULL DEFAULT 0;
