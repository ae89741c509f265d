-- Mentions (issue #16 point 4): one row per (mentioned user, group
-- message), written by the gateway before it acks the send (idempotent, so
-- a retried send writes it again), removed when the message is deleted.
-- `GET /v1/conversations` counts a user's rows above their read ordinal.
CREATE TABLE IF NOT EXISTS mentions (
    user_id BIGINT NOT NULL,
    conv    TEXT   NOT NULL,
    n       BIGINT NOT NULL,
    id      BIGINT NOT NULL,
    PRIMARY KEY (user_id, conv, n)
);
CREATE INDEX IF NOT EXISTS mentions_message ON mentions (conv, id);
