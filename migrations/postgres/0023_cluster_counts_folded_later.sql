-- The per-cluster counts folded after the write instead of in it (issue 21). After 0022, the upsert of
-- `cluster_state_counts` (five rows per changed cluster: 50,000 for an assignment over 10,000 clusters) was still the
-- largest part of a fleet write's transaction, and a statement of its own in every single configuration's write.
-- Those counts exist for one figure only, how many clusters have a configuration in each state, and nothing on the
-- write path reads them. So the configurations' trigger now appends each cluster's change of counted states, with
-- its scope, to `pending_cluster_changes` (a plain heap insert, no index), and the rollup compaction folds them into
-- the counts and the cluster deltas every second (`fluxplane_fold_cluster_changes`, called by `compact_rollups` in
-- api/src/store/postgres.rs).
--
-- The summary stays exact in between: its cluster counts add, to the rollups and deltas, what the pending changes
-- move, derived when read from the same counts (`postgres::CLUSTERS_NOW`): a cluster enters a value when its
-- folded count is zero and the pending ones raise it, and leaves it when they bring it to zero. The instance counts
-- need no such care and are still appended by the write itself (a few rows per statement, one per scope and state).
--
-- SQLite keeps its bookkeeping in its row triggers (0009): it writes one transaction at a time and has no
-- statement triggers to gather a fleet write's changes with.

-- One configuration-level change of a cluster's counted states: +1 for a new combination, -1 for the old, netted
-- per statement. `at` is the writing transaction's time, which the cluster deltas folded from it keep, so that the
-- summary as of a past time stays exact.
CREATE TABLE pending_cluster_changes (
    id BIGINT GENERATED ALWAYS AS IDENTITY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    cluster_id BIGINT NOT NULL,
    subscription_key TEXT COLLATE "C" NOT NULL,
    resource_group_key TEXT COLLATE "C" NOT NULL,
    policy_assignment TEXT COLLATE "C" NOT NULL,
    compliance_state TEXT COLLATE "C" NOT NULL,
    provisioning_state TEXT COLLATE "C" NOT NULL,
    reported BOOLEAN NOT NULL,
    d BIGINT NOT NULL
);

-- The pending changes as changes of the counted dimensions, one row per dimension: what both the fold and the
-- summary's read add to a cluster's count. The dimensions and values are 0010's.
CREATE VIEW pending_cluster_counts AS
SELECT p.id, p.at, p.cluster_id, p.subscription_key, p.resource_group_key,
       v.dimension COLLATE "C" AS dimension, v.value COLLATE "C" AS value, p.d
FROM pending_cluster_changes p
CROSS JOIN LATERAL (VALUES
    ('all', ''),
    ('complianceState', p.compliance_state),
    ('provisioningState', p.provisioning_state),
    ('policyAssignment', p.policy_assignment),
    ('freshness', CASE WHEN p.reported THEN 'fresh' ELSE 'stale' END)
) AS v (dimension, value);

-- The rollup of a statement's changes: the instance deltas as before, the clusters' changes left pending. One
-- statement, so that the clusters' scopes are read once.
CREATE OR REPLACE FUNCTION fluxplane_roll_up(changes fluxplane_state_change[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(changes) = 0 THEN
        RETURN;
    END IF;
    WITH scoped AS MATERIALIZED (
        SELECT x.cluster_id, c.subscription_key, c.resource_group_key, x.policy_assignment, x.compliance_state,
               x.provisioning_state, x.reported, SUM(x.d)::BIGINT AS d
        FROM unnest(changes) x JOIN clusters c ON c.id = x.cluster_id
        GROUP BY 1, 2, 3, 4, 5, 6, 7
        HAVING SUM(x.d) <> 0
    ), instances AS (
        INSERT INTO instance_deltas (subscription_key, resource_group_key, policy_assignment, compliance_state,
                                     provisioning_state, reported, instances)
        SELECT subscription_key, resource_group_key, policy_assignment, compliance_state, provisioning_state, reported,
               SUM(d)
        FROM scoped
        GROUP BY 1, 2, 3, 4, 5, 6
        HAVING SUM(d) <> 0
    )
    INSERT INTO pending_cluster_changes (cluster_id, subscription_key, resource_group_key, policy_assignment,
                                         compliance_state, provisioning_state, reported, d)
    SELECT * FROM scoped;
END
$$;

-- Folds the committed pending changes into the per-cluster counts and the cluster deltas; answers how many it
-- folded. One folder at a time (an advisory lock for the transaction): each fold reads the counts as the one before
-- it left them. Within a fold, a cluster's changes apply in the order they were appended (a running sum per count),
-- so each entry into or exit from a value is a delta at its own write's time; the counts are only ever written here.
-- A deleted cluster's configurations were deleted first (`delete_cluster`), so its counts reach zero here, and its
-- zero counts are dropped with it (0022 dropped them in a trigger on `clusters`, before they could be folded).
CREATE FUNCTION fluxplane_fold_cluster_changes() RETURNS BIGINT
LANGUAGE plpgsql AS $$
DECLARE
    folded BIGINT;
    touched BIGINT[];
BEGIN
    IF NOT EXISTS (SELECT FROM pending_cluster_changes) THEN
        RETURN 0;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fluxplane-fold-cluster-changes'));
    -- Every part of the statement reads one snapshot, taken after the lock: the view reads exactly the rows the
    -- DELETE takes (writers only ever insert pending rows; only a folder deletes them).
    WITH taken AS (
        DELETE FROM pending_cluster_changes RETURNING cluster_id
    ), steps AS (
        -- a statement's changes of one count, netted (an update out of and back into a value is no change)
        SELECT MIN(id) AS first, at, cluster_id, subscription_key, resource_group_key, dimension, value,
               SUM(d)::BIGINT AS d
        FROM pending_cluster_counts
        GROUP BY at, cluster_id, subscription_key, resource_group_key, dimension, value
        HAVING SUM(d) <> 0
    ), running AS (
        SELECT s.at, s.subscription_key, s.resource_group_key, s.dimension, s.value, s.d,
               COALESCE(k.n, 0) + SUM(s.d) OVER (PARTITION BY s.cluster_id, s.dimension, s.value ORDER BY s.first)
                   AS after
        FROM steps s
        LEFT JOIN cluster_state_counts k
            ON k.cluster_id = s.cluster_id AND k.dimension = s.dimension AND k.value = s.value
    ), counted AS (
        INSERT INTO cluster_state_counts AS k (cluster_id, dimension, value, n)
        SELECT cluster_id, dimension, value, SUM(d) FROM steps
        GROUP BY 1, 2, 3
        ORDER BY 1, 2, 3
        ON CONFLICT (cluster_id, dimension, value) DO UPDATE SET n = k.n + excluded.n
    ), moved AS (
        -- from zero the cluster entered the value, to zero it left it
        SELECT at, subscription_key, resource_group_key, dimension, value,
               CASE WHEN after = d AND after > 0 THEN 1 WHEN after = 0 THEN -1 ELSE 0 END AS clusters
        FROM running
    ), deltas AS (
        INSERT INTO cluster_deltas (at, subscription_key, resource_group_key, dimension, value, clusters)
        SELECT at, subscription_key, resource_group_key, dimension, value, SUM(clusters)
        FROM moved
        GROUP BY 1, 2, 3, 4, 5
        HAVING SUM(clusters) <> 0
        ORDER BY 1
    )
    SELECT count(*), array_agg(DISTINCT cluster_id) INTO folded, touched FROM taken;
    DELETE FROM cluster_state_counts k
    WHERE k.cluster_id = ANY (touched) AND k.n = 0 AND NOT EXISTS (SELECT FROM clusters c WHERE c.id = k.cluster_id);
    RETURN folded;
END
$$;

DROP TRIGGER clusters_counts_dropped ON clusters;
DROP FUNCTION fluxplane_cluster_counts_dropped();
