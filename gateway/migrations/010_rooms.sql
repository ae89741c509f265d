-- Live rooms (read fan-out: history only, no inbox copies). `post`: who
-- may post (everyone who may join, or the listed posters); `join_policy`:
-- who may join (anyone logged in, or the invited). meta_version numbers
-- title/topic changes (each announced as a system message with the cid
-- r<id>m<meta_version>).
CREATE TABLE IF NOT EXISTS rooms (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title        TEXT NOT NULL,
    topic        TEXT NOT NULL DEFAULT '',
    owner        BIGINT NOT NULL REFERENCES users(id),
    post         TEXT NOT NULL CHECK (post IN ('everyone', 'listed')),
    join_policy  TEXT NOT NULL CHECK (join_policy IN ('anyone', 'invited')),
    meta_version BIGINT NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- A user's standing in a room: moderator, listed poster, invited, and a
-- ban or mute until a time (NULL: none; 'infinity': for good).
CREATE TABLE IF NOT EXISTS room_users (
    room_id      BIGINT NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id      BIGINT NOT NULL REFERENCES users(id),
    moderator    BOOLEAN NOT NULL DEFAULT false,
    poster       BOOLEAN NOT NULL DEFAULT false,
    invited      BOOLEAN NOT NULL DEFAULT false,
    banned_until TIMESTAMPTZ,
    muted_until  TIMESTAMPTZ,
    PRIMARY KEY (room_id, user_id)
);
