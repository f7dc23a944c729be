-- The rule by which a cluster enters or leaves a counted value, held once (after 0023, which wrote it twice: in the
-- fold, on running sums, and in the summary's read of the changes not folded yet, `pending_clusters!` in
-- api/src/store/postgres.rs). A cluster enters a value when its count of configurations there leaves zero, and
-- leaves it when the count comes back to zero. The fold's body is 0023's with the rule called instead of spelled.

-- 1: the cluster entered the value as its count moved from `before` to `after`; -1: it left it; 0: neither. A plain
-- SQL expression, which PostgreSQL inlines into the statements calling it. NUMERIC: the callers' counts are sums.
CREATE FUNCTION fluxplane_clusters_moved(before NUMERIC, after NUMERIC) RETURNS INT
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE WHEN before = 0 AND after > 0 THEN 1 WHEN before > 0 AND after = 0 THEN -1 ELSE 0 END
$$;

CREATE OR REPLACE FUNCTION fluxplane_fold_cluster_changes() RETURNS BIGINT
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
        SELECT at, subscription_key, resource_group_key, dimension, value,
               fluxplane_clusters_moved(after - d, after) AS clusters
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
