-- The same as migrations/postgres/0010_rollups_and_history.sql, in SQLite's types and with row triggers (SQLite
-- has no statement triggers). Its one writer at a time means no contention to avoid, but the same tables keep the
-- store's queries the same. Times are written in the RFC 3339 form the store binds, so that they compare as text.

CREATE TABLE cluster_state_counts (
    cluster_id INTEGER NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    dimension TEXT NOT NULL,
    value TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (cluster_id, dimension, value)
);

CREATE TABLE instance_rollups (
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    policy_assignment TEXT NOT NULL,
    compliance_state TEXT NOT NULL,
    provisioning_state TEXT NOT NULL,
    reported INTEGER NOT NULL,
    instances INTEGER NOT NULL,
    PRIMARY KEY (subscription_key, resource_group_key, policy_assignment, compliance_state, provisioning_state, reported)
);

CREATE TABLE instance_deltas (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    compacted INTEGER NOT NULL DEFAULT 0,
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    policy_assignment TEXT NOT NULL,
    compliance_state TEXT NOT NULL,
    provisioning_state TEXT NOT NULL,
    reported INTEGER NOT NULL,
    instances INTEGER NOT NULL
);
CREATE INDEX instance_deltas_pending ON instance_deltas (subscription_key) WHERE compacted = 0;
CREATE INDEX instance_deltas_at ON instance_deltas (at);

CREATE TABLE cluster_rollups (
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    dimension TEXT NOT NULL,
    value TEXT NOT NULL,
    clusters INTEGER NOT NULL,
    PRIMARY KEY (subscription_key, resource_group_key, dimension, value)
);

CREATE TABLE cluster_deltas (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    compacted INTEGER NOT NULL DEFAULT 0,
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    dimension TEXT NOT NULL,
    value TEXT NOT NULL,
    clusters INTEGER NOT NULL
);
CREATE INDEX cluster_deltas_pending ON cluster_deltas (subscription_key) WHERE compacted = 0;
CREATE INDEX cluster_deltas_at ON cluster_deltas (at);

CREATE TABLE status_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    configuration_id INTEGER NOT NULL,
    cluster_id INTEGER NOT NULL,
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    cluster_path TEXT NOT NULL,
    name TEXT NOT NULL,
    policy_assignment TEXT NOT NULL,
    event TEXT NOT NULL,
    generation INTEGER NOT NULL,
    reported_generation INTEGER,
    compliance_state TEXT NOT NULL,
    provisioning_state TEXT NOT NULL,
    commit_id TEXT,
    message TEXT
);
CREATE INDEX status_history_by_configuration ON status_history (configuration_id, id);
CREATE INDEX status_history_by_cluster ON status_history (cluster_id, id);
CREATE INDEX status_history_by_assignment ON status_history (policy_assignment, id) WHERE policy_assignment <> '';
CREATE INDEX status_history_by_scope ON status_history (subscription_key, id);
CREATE INDEX status_history_at ON status_history (at);

CREATE TABLE write_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    subscription_key TEXT NOT NULL,
    resource_key TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    status_code INTEGER NOT NULL,
    request_id TEXT
);
CREATE INDEX write_history_by_resource ON write_history (resource_key, id);
CREATE INDEX write_history_at ON write_history (at);

-- A cluster enters a value when its count reaches 1 on an increment, and leaves it when its count reaches 0 on a
-- decrement. Increments come first on update, so a value the old and new rows share never touches zero.
CREATE TRIGGER flux_configurations_counted_inserted AFTER INSERT ON flux_configurations
BEGIN
    INSERT INTO instance_deltas (at, subscription_key, resource_group_key, policy_assignment, compliance_state,
                                 provisioning_state, reported, instances)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, COALESCE(NEW.managed_by_id, ''),
           NEW.compliance_state, NEW.provisioning_state, COALESCE(NEW.reported_generation = NEW.generation, 0), 1
    FROM clusters c WHERE c.id = NEW.cluster_id;
    INSERT INTO cluster_state_counts (cluster_id, dimension, value, n)
    SELECT NEW.cluster_id, column1, column2, 1 FROM (VALUES ('all', ''), ('complianceState', NEW.compliance_state),
                ('provisioningState', NEW.provisioning_state), ('policyAssignment', COALESCE(NEW.managed_by_id, '')),
                ('freshness', CASE WHEN COALESCE(NEW.reported_generation = NEW.generation, 0) THEN 'fresh' ELSE 'stale' END)) WHERE TRUE
    ON CONFLICT (cluster_id, dimension, value) DO UPDATE SET n = n + 1;
    INSERT INTO cluster_deltas (at, subscription_key, resource_group_key, dimension, value, clusters)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, s.dimension, s.value, 1
    FROM cluster_state_counts s JOIN clusters c ON c.id = s.cluster_id
    WHERE s.cluster_id = NEW.cluster_id AND s.n = 1 AND (s.dimension, s.value) IN (VALUES ('all', ''), ('complianceState', NEW.compliance_state),
                ('provisioningState', NEW.provisioning_state), ('policyAssignment', COALESCE(NEW.managed_by_id, '')),
                ('freshness', CASE WHEN COALESCE(NEW.reported_generation = NEW.generation, 0) THEN 'fresh' ELSE 'stale' END));
    INSERT INTO status_history (at, configuration_id, cluster_id, subscription_key, resource_group_key, cluster_path,
                                name, policy_assignment, event, generation, reported_generation, compliance_state,
                                provisioning_state, commit_id, message)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), NEW.id, NEW.cluster_id, c.subscription_key, c.resource_group_key,
           c.subscription || '/' || c.resource_group || '/' || c.name, NEW.name, COALESCE(NEW.managed_by_id, ''),
           'Created', NEW.generation, NEW.reported_generation, NEW.compliance_state, NEW.provisioning_state,
           json_extract(NEW.observed, '$.sourceSyncedCommitId'),
           COALESCE(NEW.failure, json_extract(NEW.observed, '$.errorMessage'))
    FROM clusters c WHERE c.id = NEW.cluster_id;
END;

CREATE TRIGGER flux_configurations_counted_updated AFTER UPDATE ON flux_configurations
WHEN (NEW.managed_by_id IS NOT OLD.managed_by_id OR NEW.compliance_state IS NOT OLD.compliance_state
      OR NEW.provisioning_state IS NOT OLD.provisioning_state
      OR COALESCE(NEW.reported_generation = NEW.generation, 0) IS NOT COALESCE(OLD.reported_generation = OLD.generation, 0))
BEGIN
    INSERT INTO instance_deltas (at, subscription_key, resource_group_key, policy_assignment, compliance_state,
                                 provisioning_state, reported, instances)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, COALESCE(NEW.managed_by_id, ''),
           NEW.compliance_state, NEW.provisioning_state, COALESCE(NEW.reported_generation = NEW.generation, 0), 1
    FROM clusters c WHERE c.id = NEW.cluster_id;
    INSERT INTO instance_deltas (at, subscription_key, resource_group_key, policy_assignment, compliance_state,
                                 provisioning_state, reported, instances)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, COALESCE(OLD.managed_by_id, ''),
           OLD.compliance_state, OLD.provisioning_state, COALESCE(OLD.reported_generation = OLD.generation, 0), -1
    FROM clusters c WHERE c.id = OLD.cluster_id;
    INSERT INTO cluster_state_counts (cluster_id, dimension, value, n)
    SELECT NEW.cluster_id, column1, column2, 1 FROM (VALUES ('all', ''), ('complianceState', NEW.compliance_state),
                ('provisioningState', NEW.provisioning_state), ('policyAssignment', COALESCE(NEW.managed_by_id, '')),
                ('freshness', CASE WHEN COALESCE(NEW.reported_generation = NEW.generation, 0) THEN 'fresh' ELSE 'stale' END)) WHERE TRUE
    ON CONFLICT (cluster_id, dimension, value) DO UPDATE SET n = n + 1;
    INSERT INTO cluster_deltas (at, subscription_key, resource_group_key, dimension, value, clusters)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, s.dimension, s.value, 1
    FROM cluster_state_counts s JOIN clusters c ON c.id = s.cluster_id
    WHERE s.cluster_id = NEW.cluster_id AND s.n = 1 AND (s.dimension, s.value) IN (VALUES ('all', ''), ('complianceState', NEW.compliance_state),
                ('provisioningState', NEW.provisioning_state), ('policyAssignment', COALESCE(NEW.managed_by_id, '')),
                ('freshness', CASE WHEN COALESCE(NEW.reported_generation = NEW.generation, 0) THEN 'fresh' ELSE 'stale' END));
    UPDATE cluster_state_counts SET n = n - 1
    WHERE cluster_id = OLD.cluster_id AND (dimension, value) IN (VALUES ('all', ''), ('complianceState', OLD.compliance_state),
                ('provisioningState', OLD.provisioning_state), ('policyAssignment', COALESCE(OLD.managed_by_id, '')),
                ('freshness', CASE WHEN COALESCE(OLD.reported_generation = OLD.generation, 0) THEN 'fresh' ELSE 'stale' END));
    INSERT INTO cluster_deltas (at, subscription_key, resource_group_key, dimension, value, clusters)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, s.dimension, s.value, -1
    FROM cluster_state_counts s JOIN clusters c ON c.id = s.cluster_id
    WHERE s.cluster_id = OLD.cluster_id AND s.n = 0 AND (s.dimension, s.value) IN (VALUES ('all', ''), ('complianceState', OLD.compliance_state),
                ('provisioningState', OLD.provisioning_state), ('policyAssignment', COALESCE(OLD.managed_by_id, '')),
                ('freshness', CASE WHEN COALESCE(OLD.reported_generation = OLD.generation, 0) THEN 'fresh' ELSE 'stale' END));
END;

CREATE TRIGGER flux_configurations_recorded_updated AFTER UPDATE ON flux_configurations
WHEN (NEW.generation IS NOT OLD.generation OR NEW.reported_generation IS NOT OLD.reported_generation
      OR NEW.compliance_state IS NOT OLD.compliance_state OR NEW.provisioning_state IS NOT OLD.provisioning_state
      OR NEW.managed_by_id IS NOT OLD.managed_by_id OR NEW.failure IS NOT OLD.failure
      OR json_extract(NEW.observed, '$.sourceSyncedCommitId') IS NOT json_extract(OLD.observed, '$.sourceSyncedCommitId')
      OR json_extract(NEW.observed, '$.errorMessage') IS NOT json_extract(OLD.observed, '$.errorMessage'))
BEGIN
    INSERT INTO status_history (at, configuration_id, cluster_id, subscription_key, resource_group_key, cluster_path,
                                name, policy_assignment, event, generation, reported_generation, compliance_state,
                                provisioning_state, commit_id, message)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), NEW.id, NEW.cluster_id, c.subscription_key, c.resource_group_key,
           c.subscription || '/' || c.resource_group || '/' || c.name, NEW.name, COALESCE(NEW.managed_by_id, ''),
           'Updated', NEW.generation, NEW.reported_generation, NEW.compliance_state, NEW.provisioning_state,
           json_extract(NEW.observed, '$.sourceSyncedCommitId'),
           COALESCE(NEW.failure, json_extract(NEW.observed, '$.errorMessage'))
    FROM clusters c WHERE c.id = NEW.cluster_id;
END;

CREATE TRIGGER flux_configurations_counted_deleted AFTER DELETE ON flux_configurations
BEGIN
    INSERT INTO instance_deltas (at, subscription_key, resource_group_key, policy_assignment, compliance_state,
                                 provisioning_state, reported, instances)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, COALESCE(OLD.managed_by_id, ''),
           OLD.compliance_state, OLD.provisioning_state, COALESCE(OLD.reported_generation = OLD.generation, 0), -1
    FROM clusters c WHERE c.id = OLD.cluster_id;
    UPDATE cluster_state_counts SET n = n - 1
    WHERE cluster_id = OLD.cluster_id AND (dimension, value) IN (VALUES ('all', ''), ('complianceState', OLD.compliance_state),
                ('provisioningState', OLD.provisioning_state), ('policyAssignment', COALESCE(OLD.managed_by_id, '')),
                ('freshness', CASE WHEN COALESCE(OLD.reported_generation = OLD.generation, 0) THEN 'fresh' ELSE 'stale' END));
    INSERT INTO cluster_deltas (at, subscription_key, resource_group_key, dimension, value, clusters)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, s.dimension, s.value, -1
    FROM cluster_state_counts s JOIN clusters c ON c.id = s.cluster_id
    WHERE s.cluster_id = OLD.cluster_id AND s.n = 0 AND (s.dimension, s.value) IN (VALUES ('all', ''), ('complianceState', OLD.compliance_state),
                ('provisioningState', OLD.provisioning_state), ('policyAssignment', COALESCE(OLD.managed_by_id, '')),
                ('freshness', CASE WHEN COALESCE(OLD.reported_generation = OLD.generation, 0) THEN 'fresh' ELSE 'stale' END));
    INSERT INTO status_history (at, configuration_id, cluster_id, subscription_key, resource_group_key, cluster_path,
                                name, policy_assignment, event, generation, reported_generation, compliance_state,
                                provisioning_state, commit_id, message)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), OLD.id, OLD.cluster_id, c.subscription_key, c.resource_group_key,
           c.subscription || '/' || c.resource_group || '/' || c.name, OLD.name, COALESCE(OLD.managed_by_id, ''),
           'Deleted', OLD.generation, OLD.reported_generation, OLD.compliance_state, OLD.provisioning_state,
           json_extract(OLD.observed, '$.sourceSyncedCommitId'),
           COALESCE(OLD.failure, json_extract(OLD.observed, '$.errorMessage'))
    FROM clusters c WHERE c.id = OLD.cluster_id;
END;

-- What exists now, counted once.
INSERT INTO cluster_state_counts (cluster_id, dimension, value, n)
SELECT cluster_id, dimension, value, COUNT(*) FROM (
    SELECT cluster_id, 'all' AS dimension, '' AS value FROM flux_configurations
    UNION ALL SELECT cluster_id, 'complianceState', compliance_state FROM flux_configurations
    UNION ALL SELECT cluster_id, 'provisioningState', provisioning_state FROM flux_configurations
    UNION ALL SELECT cluster_id, 'policyAssignment', COALESCE(managed_by_id, '') FROM flux_configurations
    UNION ALL SELECT cluster_id, 'freshness',
              CASE WHEN COALESCE(reported_generation = generation, 0) THEN 'fresh' ELSE 'stale' END
              FROM flux_configurations
)
GROUP BY 1, 2, 3;
INSERT INTO instance_rollups
SELECT c.subscription_key, c.resource_group_key, COALESCE(f.managed_by_id, ''), f.compliance_state,
       f.provisioning_state, COALESCE(f.reported_generation = f.generation, 0), COUNT(*)
FROM flux_configurations f JOIN clusters c ON c.id = f.cluster_id
GROUP BY 1, 2, 3, 4, 5, 6;
INSERT INTO cluster_rollups
SELECT c.subscription_key, c.resource_group_key, s.dimension, s.value, COUNT(*)
FROM cluster_state_counts s JOIN clusters c ON c.id = s.cluster_id
GROUP BY 1, 2, 3, 4;
