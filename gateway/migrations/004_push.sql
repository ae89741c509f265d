-- Push registrations (one per device) and muted conversations.
CREATE TABLE push_registrations (
    user_id    BIGINT NOT NULL,
    device_id  TEXT NOT NULL,
    provider   TEXT NOT NULL CHECK (provider IN ('fcm', 'apns', 'webpush')),
    -- The FCM or APNs token, or the Web Push subscription as JSON.
    token      TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, device_id),
    FOREIGN KEY (user_id, device_id) REFERENCES devices (user_id, device_id) ON DELETE CASCADE
);

CREATE TABLE conversation_mutes (
    user_id    BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    conv       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, conv)
);
