-- Git in (issue 20, point 2): a configuration learnt of a new commit only when its agent's sync interval came round
-- (600 s by default). Now a Git host's push webhook (`Fluxplane.Fleet/gitReceivers`), or a `reconcile` action, asks
-- the agents of the configurations it concerns to check their source at once, through the desired-state poll they
-- already make: `reconcile_requested_at` is what the agent receives as `reconcileRequestedAt`. Setting it is no new
-- generation (nothing about the configuration changed), so no trigger bumps the revision for it: the store bumps
-- the revisions of the configurations' clusters itself, in the same transaction, and announces them after the
-- commit as a configuration write does (0014). SQLite's 0018 is the same.
ALTER TABLE flux_configurations ADD COLUMN reconcile_requested_at TIMESTAMPTZ;

-- A receiver: the repository it hears about, its host, the random segment of its webhook's URL, its secret sealed
-- by the server's vault (`api/src/vault.rs`, bound to the receiver's key), and what its last verified push did.
CREATE TABLE git_receivers (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- lower-cased "subscription/name" or "subscription/resourceGroup/name"
    key TEXT NOT NULL UNIQUE,
    subscription_key TEXT NOT NULL,
    -- '' for a receiver at subscription scope
    resource_group_key TEXT NOT NULL,
    subscription TEXT NOT NULL,
    resource_group TEXT,
    name TEXT NOT NULL,
    spec JSONB NOT NULL,
    hook_id TEXT NOT NULL UNIQUE,
    sealed_secret TEXT NOT NULL,
    etag TEXT NOT NULL,
    system_data JSONB NOT NULL,
    last_push JSONB
);

CREATE INDEX git_receivers_by_scope ON git_receivers (subscription_key, resource_group_key, key);

-- The metrics of failing configurations by cluster group read the failing configurations per cluster at each
-- scrape (`Dashboards::failing`): this index holds those rows only, so the read costs what fails, not the fleet.
CREATE INDEX flux_configurations_failing ON flux_configurations (cluster_id)
    WHERE compliance_state = 'Non-Compliant' OR provisioning_state = 'Failed';
