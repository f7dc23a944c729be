-- The same as migrations/postgres/0004_sealed_secrets.sql, in SQLite's types.
-- Secrets sealed to the cluster's agent (HPKE to its X25519 key) replace secrets encrypted under a server key: the
-- control plane keeps only what it cannot open, and only until the agent acknowledges it.

-- The agent's encryption public key (base64), registered by the agent over its own API; cleared whenever the
-- cluster's agent identity (agentPublicKeyCertificate) changes.
ALTER TABLE clusters ADD COLUMN agent_encryption_key TEXT;

-- The version of the secret set the cluster should hold: the generation that last wrote secrets (NULL: none).
ALTER TABLE flux_configurations ADD COLUMN secrets_version INTEGER;

-- Sealed secret changes not yet acknowledged by the agent, applied in version order on top of the cluster's copy.
-- `secrets_expire_at` of the configuration is set while any exist: the expiry of the oldest.
CREATE TABLE sealed_secrets (
    configuration_id INTEGER NOT NULL REFERENCES flux_configurations (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    change TEXT NOT NULL,
    base_version INTEGER,
    recipient TEXT NOT NULL,
    encapsulated_key TEXT NOT NULL,
    ciphertext TEXT NOT NULL,
    PRIMARY KEY (configuration_id, version)
);

-- Secrets an earlier version encrypted under the server key were never delivered (agents could not receive them):
-- they are dropped, and their configurations fail with the message the sweeper would give.
UPDATE flux_configurations
SET provisioning_state = 'Failed', secrets_expire_at = NULL, generation_expires_at = NULL,
    failure = 'The protected settings were stored by an earlier version of fluxplane and were never delivered; '
        || 're-apply them (PUT the configuration with its configurationProtectedSettings and secret fields).'
WHERE secrets IS NOT NULL AND provisioning_state <> 'Deleting';

DROP INDEX flux_configurations_secrets_expiry;
ALTER TABLE flux_configurations DROP COLUMN secrets;
CREATE INDEX flux_configurations_secrets_expiry ON flux_configurations (secrets_expire_at)
    WHERE secrets_expire_at IS NOT NULL;
