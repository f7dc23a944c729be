-- Cluster extensions: the same as migrations/postgres/0016_extensions.sql (which says why), in SQLite's types.
-- The revision's trigger of 0012 leaves the cluster's key in desired_changes, so a bump here wakes the polls.

CREATE TABLE extensions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id INTEGER NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    extension_type TEXT NOT NULL,
    spec TEXT NOT NULL,
    generation INTEGER NOT NULL,
    etag TEXT NOT NULL,
    provisioning_state TEXT NOT NULL,
    observed TEXT NOT NULL,
    system_data TEXT NOT NULL,
    reported_generation INTEGER,
    secrets_version INTEGER,
    sealed TEXT NOT NULL DEFAULT '[]',
    secrets_expire_at TEXT,
    generation_expires_at TEXT,
    failure TEXT,
    UNIQUE (cluster_id, name),
    UNIQUE (cluster_id, extension_type)
);

CREATE INDEX extensions_secrets_expiry ON extensions (secrets_expire_at) WHERE secrets_expire_at IS NOT NULL;
CREATE INDEX extensions_generation_expiry ON extensions (generation_expires_at)
    WHERE generation_expires_at IS NOT NULL;

CREATE TRIGGER extensions_inserted AFTER INSERT ON extensions
BEGIN
    UPDATE clusters SET revision = revision + 1 WHERE id = NEW.cluster_id;
END;

CREATE TRIGGER extensions_regenerated AFTER UPDATE OF generation ON extensions
WHEN OLD.generation IS NOT NEW.generation
BEGIN
    UPDATE clusters SET revision = revision + 1 WHERE id = NEW.cluster_id;
END;

CREATE TRIGGER extensions_deleted AFTER DELETE ON extensions
BEGIN
    UPDATE clusters SET revision = revision + 1 WHERE id = OLD.cluster_id;
END;

INSERT INTO extensions (cluster_id, name, extension_type, spec, generation, etag, provisioning_state, observed,
                        system_data)
SELECT f.cluster_id, 'flux', 'microsoft.flux',
       '{"extensionType": "microsoft.flux", "autoUpgradeMinorVersion": true, "releaseTrain": "Stable", "releaseNamespace": "flux-system", "configurationSettings": {}}',
       1, lower(hex(randomblob(16))), 'Creating', '{}', f.system_data
FROM flux_configurations f
WHERE f.id = (SELECT MIN(id) FROM flux_configurations g WHERE g.cluster_id = f.cluster_id);
