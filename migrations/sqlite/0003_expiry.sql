-- The 48-hour rules: stored secrets and unpicked-up changes do not outlive their time to live.
-- The same as migrations/postgres/0003_expiry.sql.

ALTER TABLE flux_configurations ADD COLUMN secrets_expire_at TEXT;
ALTER TABLE flux_configurations ADD COLUMN generation_expires_at TEXT;
ALTER TABLE flux_configurations ADD COLUMN failure TEXT;

CREATE INDEX flux_configurations_secrets_expiry ON flux_configurations (secrets_expire_at) WHERE secrets IS NOT NULL;
CREATE INDEX flux_configurations_generation_expiry ON flux_configurations (generation_expires_at)
    WHERE generation_expires_at IS NOT NULL;
