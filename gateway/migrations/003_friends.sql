-- Friend requests and friendships (stored in both directions).
CREATE TABLE friend_requests (
    from_id    BIGINT NOT NULL REFERENCES users(id),
    to_id      BIGINT NOT NULL REFERENCES users(id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (from_id, to_id)
);
CREATE INDEX friend_requests_to ON friend_requests (to_id);

CREATE TABLE friends (
    user_id    BIGINT NOT NULL REFERENCES users(id),
    friend_id  BIGINT NOT NULL REFERENCES users(id),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, friend_id)
);
