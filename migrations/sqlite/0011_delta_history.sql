-- The same as migrations/postgres/0012_delta_history.sql, in SQLite's types.
CREATE TABLE instance_delta_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    policy_assignment TEXT NOT NULL,
    compliance_state TEXT NOT NULL,
    provisioning_state TEXT NOT NULL,
    reported INTEGER NOT NULL,
    instances INTEGER NOT NULL
);
CREATE INDEX instance_delta_history_at ON instance_delta_history (at);

CREATE TABLE cluster_delta_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    dimension TEXT NOT NULL,
    value TEXT NOT NULL,
    clusters INTEGER NOT NULL
);
CREATE INDEX cluster_delta_history_at ON cluster_delta_history (at);

INSERT INTO instance_delta_history (at, subscription_key, resource_group_key, policy_assignment, compliance_state,
                                    provisioning_state, reported, instances)
SELECT at, subscription_key, resource_group_key, policy_assignment, compliance_state, provisioning_state, reported,
       instances
FROM instance_deltas WHERE compacted ORDER BY id;
DELETE FROM instance_deltas WHERE compacted;
DROP INDEX instance_deltas_pending;
DROP INDEX instance_deltas_at;
ALTER TABLE instance_deltas DROP COLUMN compacted;

INSERT INTO cluster_delta_history (at, subscription_key, resource_group_key, dimension, value, clusters)
SELECT at, subscription_key, resource_group_key, dimension, value, clusters FROM cluster_deltas WHERE compacted ORDER BY id;
DELETE FROM cluster_deltas WHERE compacted;
DROP INDEX cluster_deltas_pending;
DROP INDEX cluster_deltas_at;
ALTER TABLE cluster_deltas DROP COLUMN compacted;
