-- Token generations: a device's tokens carry the generation current at
-- login; POST /v1/logout bumps it, and gateways refuse older tokens.
ALTER TABLE devices ADD COLUMN IF NOT EXISTS token_gen BIGINT NOT NULL DEFAULT 0;
