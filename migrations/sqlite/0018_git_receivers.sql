-- The same as migrations/postgres/0020_git_receivers.sql, in SQLite's types: a configuration's request to re-check
-- its source at once, the Git receivers, and the index of failing configurations. The store bumps the revisions of
-- the clusters whose configurations are asked to re-check; the trigger of 0012 leaves their keys for the commit to
-- wake, as for every revision.
ALTER TABLE flux_configurations ADD COLUMN reconcile_requested_at TEXT;

CREATE TABLE git_receivers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- lower-cased "subscription/name" or "subscription/resourceGroup/name"
    key TEXT NOT NULL UNIQUE,
    subscription_key TEXT NOT NULL,
    -- '' for a receiver at subscription scope
    resource_group_key TEXT NOT NULL,
    subscription TEXT NOT NULL,
    resource_group TEXT,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    hook_id TEXT NOT NULL UNIQUE,
    sealed_secret TEXT NOT NULL,
    etag TEXT NOT NULL,
    system_data TEXT NOT NULL,
    last_push TEXT
);

CREATE INDEX git_receivers_by_scope ON git_receivers (subscription_key, resource_group_key, key);

CREATE INDEX flux_configurations_failing ON flux_configurations (cluster_id)
    WHERE compliance_state = 'Non-Compliant' OR provisioning_state = 'Failed';
