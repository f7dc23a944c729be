-- The 48-hour rules: stored secrets and unpicked-up changes do not outlive their time to live.

-- When the configuration's stored secrets must be gone (NULL: it holds none).
ALTER TABLE flux_configurations ADD COLUMN secrets_expire_at TIMESTAMPTZ;
-- When the current generation fails if its agent has not picked it up by then (NULL: picked up, or deleting).
ALTER TABLE flux_configurations ADD COLUMN generation_expires_at TIMESTAMPTZ;
-- Why the control plane itself failed the configuration (an expiry); agents' messages stay in `observed`.
ALTER TABLE flux_configurations ADD COLUMN failure TEXT;

-- the sweeper looks only at rows with something to expire
CREATE INDEX flux_configurations_secrets_expiry ON flux_configurations (secrets_expire_at) WHERE secrets IS NOT NULL;
CREATE INDEX flux_configurations_generation_expiry ON flux_configurations (generation_expires_at)
    WHERE generation_expires_at IS NOT NULL;
