-- Whether a user sends read receipts to the other participant of their
-- 1:1 conversations (PATCH /v1/users/{id} {"read_receipts": false}). Off:
-- peers get no receipts; the user's own devices still sync read state.
ALTER TABLE users ADD COLUMN IF NOT EXISTS read_receipts BOOLEAN NOT NULL DEFAULT TRUE;
