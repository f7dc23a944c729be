-- PostgreSQL's 0023 and 0024 for SQLite (issue 21): the per-cluster counts folded after the write instead of in it.
-- 0009's row triggers kept `cluster_state_counts` and `cluster_deltas` in every written row: five upserted counts
-- and two probes of them per change, two thirds of what SQLite's engine spent on a batch of reports (1,000 reports
-- in 55 to 60 ms, 17 to 20 without that trigger) and the larger part of an assignment's 10,000 rows. Those counts
-- exist for one figure only, how many clusters have a configuration in each state, and nothing on the write path
-- reads them. So the triggers now append each row's change of counted states, with its scope, to
-- `pending_cluster_changes`, and the rollup compaction folds them into the counts and the cluster deltas every
-- second (`compact_rollups` in api/src/store/sqlite.rs), with the same rule as PostgreSQL's fold: a cluster enters
-- a value when its count there leaves zero, and leaves it when the count comes back to zero.
--
-- The summary stays exact in between: its cluster counts add what the pending changes move, derived when read from
-- the same counts (`sqlite::CLUSTERS_NOW`), in the read's one snapshot. The instance deltas and the status history
-- are still written by the triggers, as before.

-- One row's change of a cluster's counted states: +1 for its new combination, -1 for the old. `at` is the writing
-- statement's time (SQLite's 'now' is one value within a statement), which the cluster deltas folded from it keep,
-- so that the summary as of a past time stays exact.
CREATE TABLE pending_cluster_changes (
    id INTEGER PRIMARY KEY,
    at TEXT NOT NULL,
    cluster_id INTEGER NOT NULL,
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    policy_assignment TEXT NOT NULL,
    compliance_state TEXT NOT NULL,
    provisioning_state TEXT NOT NULL,
    reported INTEGER NOT NULL,
    d INTEGER NOT NULL
);

-- The pending changes as changes of the counted dimensions, one row per dimension: what both the fold and the
-- summary's read add to a cluster's count. The dimensions and values are 0009's.
CREATE VIEW pending_cluster_counts AS
SELECT p.id, p.at, p.cluster_id, p.subscription_key, p.resource_group_key, v.dimension,
       CASE v.dimension
           WHEN 'all' THEN ''
           WHEN 'complianceState' THEN p.compliance_state
           WHEN 'provisioningState' THEN p.provisioning_state
           WHEN 'policyAssignment' THEN p.policy_assignment
           ELSE CASE WHEN p.reported THEN 'fresh' ELSE 'stale' END
       END AS value,
       p.d
FROM pending_cluster_changes p
CROSS JOIN (SELECT 'all' AS dimension UNION ALL SELECT 'complianceState' UNION ALL SELECT 'provisioningState'
            UNION ALL SELECT 'policyAssignment' UNION ALL SELECT 'freshness') v;

DROP TRIGGER flux_configurations_counted_inserted;
DROP TRIGGER flux_configurations_counted_updated;
DROP TRIGGER flux_configurations_counted_deleted;

-- The counts without 0009's foreign key: a deleted cluster's configurations are deleted first (`delete_cluster`),
-- and their changes, still pending when the cluster goes, must find its counts to bring them to zero; the fold
-- drops a deleted cluster's zero counts itself (as PostgreSQL's has since 0023).
CREATE TABLE cluster_state_counts_folded (
    cluster_id INTEGER NOT NULL,
    dimension TEXT NOT NULL,
    value TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (cluster_id, dimension, value)
);
INSERT INTO cluster_state_counts_folded SELECT cluster_id, dimension, value, n FROM cluster_state_counts;
DROP TABLE cluster_state_counts;
ALTER TABLE cluster_state_counts_folded RENAME TO cluster_state_counts;

CREATE TRIGGER flux_configurations_counted_inserted AFTER INSERT ON flux_configurations
BEGIN
    INSERT INTO instance_deltas (at, subscription_key, resource_group_key, policy_assignment, compliance_state,
                                 provisioning_state, reported, instances)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, COALESCE(NEW.managed_by_id, ''),
           NEW.compliance_state, NEW.provisioning_state, COALESCE(NEW.reported_generation = NEW.generation, 0), 1
    FROM clusters c WHERE c.id = NEW.cluster_id;
    INSERT INTO pending_cluster_changes (at, cluster_id, subscription_key, resource_group_key, policy_assignment,
                                         compliance_state, provisioning_state, reported, d)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), NEW.cluster_id, c.subscription_key, c.resource_group_key,
           COALESCE(NEW.managed_by_id, ''), NEW.compliance_state, NEW.provisioning_state,
           COALESCE(NEW.reported_generation = NEW.generation, 0), 1
    FROM clusters c WHERE c.id = NEW.cluster_id;
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
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, x.policy_assignment,
           x.compliance_state, x.provisioning_state, x.reported, x.d
    FROM clusters c
    CROSS JOIN (SELECT COALESCE(NEW.managed_by_id, '') AS policy_assignment, NEW.compliance_state AS compliance_state,
                       NEW.provisioning_state AS provisioning_state,
                       COALESCE(NEW.reported_generation = NEW.generation, 0) AS reported, 1 AS d
                UNION ALL
                SELECT COALESCE(OLD.managed_by_id, ''), OLD.compliance_state, OLD.provisioning_state,
                       COALESCE(OLD.reported_generation = OLD.generation, 0), -1) x
    WHERE c.id = NEW.cluster_id;
    INSERT INTO pending_cluster_changes (at, cluster_id, subscription_key, resource_group_key, policy_assignment,
                                         compliance_state, provisioning_state, reported, d)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), NEW.cluster_id, c.subscription_key, c.resource_group_key,
           x.policy_assignment, x.compliance_state, x.provisioning_state, x.reported, x.d
    FROM clusters c
    CROSS JOIN (SELECT COALESCE(NEW.managed_by_id, '') AS policy_assignment, NEW.compliance_state AS compliance_state,
                       NEW.provisioning_state AS provisioning_state,
                       COALESCE(NEW.reported_generation = NEW.generation, 0) AS reported, 1 AS d
                UNION ALL
                SELECT COALESCE(OLD.managed_by_id, ''), OLD.compliance_state, OLD.provisioning_state,
                       COALESCE(OLD.reported_generation = OLD.generation, 0), -1) x
    WHERE c.id = NEW.cluster_id;
END;

CREATE TRIGGER flux_configurations_counted_deleted AFTER DELETE ON flux_configurations
BEGIN
    INSERT INTO instance_deltas (at, subscription_key, resource_group_key, policy_assignment, compliance_state,
                                 provisioning_state, reported, instances)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), c.subscription_key, c.resource_group_key, COALESCE(OLD.managed_by_id, ''),
           OLD.compliance_state, OLD.provisioning_state, COALESCE(OLD.reported_generation = OLD.generation, 0), -1
    FROM clusters c WHERE c.id = OLD.cluster_id;
    INSERT INTO pending_cluster_changes (at, cluster_id, subscription_key, resource_group_key, policy_assignment,
                                         compliance_state, provisioning_state, reported, d)
    SELECT strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'), OLD.cluster_id, c.subscription_key, c.resource_group_key,
           COALESCE(OLD.managed_by_id, ''), OLD.compliance_state, OLD.provisioning_state,
           COALESCE(OLD.reported_generation = OLD.generation, 0), -1
    FROM clusters c WHERE c.id = OLD.cluster_id;
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
