-- Bans (operator API, PUT /v1/admin/users/{id}/ban): a banned user cannot
-- log in until banned_until (NULL: until unbanned); banning also raises
-- every device's token generation, so existing tokens stop working.
ALTER TABLE users ADD COLUMN IF NOT EXISTS banned_at TIMESTAMPTZ;
ALTER TABLE users ADD COLUMN IF NOT EXISTS banned_until TIMESTAMPTZ;
ALTER TABLE users ADD COLUMN IF NOT EXISTS ban_reason TEXT;
