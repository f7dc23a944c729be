-- Folded deltas move to tables of their own. Kept beside the pending ones (marked folded), they made the summary's
-- read of what is pending depend on the planner knowing that almost every row was folded: statistics taken during a
-- burst of status reports said the opposite, and each summary scanned the month of history. Now the pending tables
-- hold only the last second's deltas, whatever the plan; the history tables serve `asOf` and the retention.
CREATE TABLE instance_delta_history (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    subscription_key TEXT COLLATE "C" NOT NULL,
    resource_group_key TEXT COLLATE "C" NOT NULL,
    policy_assignment TEXT COLLATE "C" NOT NULL,
    compliance_state TEXT COLLATE "C" NOT NULL,
    provisioning_state TEXT COLLATE "C" NOT NULL,
    reported BOOLEAN NOT NULL,
    instances BIGINT NOT NULL
);
CREATE INDEX instance_delta_history_at ON instance_delta_history USING brin (at);

CREATE TABLE cluster_delta_history (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    subscription_key TEXT COLLATE "C" NOT NULL,
    resource_group_key TEXT COLLATE "C" NOT NULL,
    dimension TEXT COLLATE "C" NOT NULL,
    value TEXT COLLATE "C" NOT NULL,
    clusters BIGINT NOT NULL
);
CREATE INDEX cluster_delta_history_at ON cluster_delta_history USING brin (at);

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
