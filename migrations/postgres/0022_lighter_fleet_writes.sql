-- Lighter bookkeeping for writes of many configurations (issue 21). A policy assignment's creation over 10,000
-- clusters spent most of its transaction in work the configurations themselves did not need, measured with
-- EXPLAIN ANALYZE and auto_explain on this project's 2-core machine (10,000 clusters, one configuration each):
--
-- * the per-cluster counts of 0010: 50,000 rows (five dimensions per cluster) upserted by the configurations'
--   statement trigger took 850 ms of its 1,360. Most of it was the foreign key to `clusters`: a plain insert of
--   the same 50,000 rows took 570 ms with it and 166 ms without, the trigger's upsert 1,040 ms and 440 ms. The
--   key only ever served to delete a cluster's counts with the cluster; a statement trigger on `clusters` does that
--   now, once per deleting statement (the counts of a deleted cluster's configurations reach zero anyway, when
--   their cascaded deletion rolls them up). The rollup also reads a cluster's scope only for the counts that entered
--   or left a value. A single configuration's write gains too: five foreign-key checks fewer per created
--   configuration (a single-row insert's median went from 3.3 to 1.9 ms, commit included).
-- * the extensions' row triggers of 0016: each created, regenerated or deleted extension bumped its cluster's
--   revision and notified in a statement of its own, 10,000 times for an assignment's first deployment (286 ms).
--   One statement trigger per event now bumps them all, in id order as the configurations' trigger does, so that
--   the two cannot deadlock, and notifies each cluster once. A cluster the same transaction has already written
--   is not bumped again: an assignment's first deployment bumped each cluster twice, once for its configuration and
--   once for its extension (another 10,000 row versions of `clusters`).
--
-- SQLite has no counterpart: its foreign keys are an index probe, not a trigger, and it has no statement triggers;
-- its bookkeeping stays as it is.

ALTER TABLE cluster_state_counts DROP CONSTRAINT cluster_state_counts_cluster_id_fkey;

-- 0010's rollup, but the clusters' scopes are read only for the counts that entered or left a value, and its sums
-- are BIGINT, not NUMERIC. (Its sorts of 50,000 counts spill to disk at the default `work_mem` of 4 MB: the fleet's
-- transactions raise it for themselves, `fleet_lock` in api/src/store/postgres.rs. A `SET` clause on the function
-- would cost every single-configuration write 0.3 ms.)
CREATE OR REPLACE FUNCTION fluxplane_roll_up(changes fluxplane_state_change[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF cardinality(changes) = 0 THEN
        RETURN;
    END IF;
    INSERT INTO instance_deltas (subscription_key, resource_group_key, policy_assignment, compliance_state,
                                 provisioning_state, reported, instances)
    SELECT c.subscription_key, c.resource_group_key, x.policy_assignment, x.compliance_state, x.provisioning_state,
           x.reported, SUM(x.d)
    FROM unnest(changes) x JOIN clusters c ON c.id = x.cluster_id
    GROUP BY 1, 2, 3, 4, 5, 6
    HAVING SUM(x.d) <> 0;

    WITH per_cluster AS (
        SELECT x.cluster_id, v.dimension COLLATE "C" AS dimension, v.value COLLATE "C" AS value, SUM(x.d)::BIGINT AS d
        FROM unnest(changes) x
        CROSS JOIN LATERAL (VALUES
            ('all', ''),
            ('complianceState', x.compliance_state),
            ('provisioningState', x.provisioning_state),
            ('policyAssignment', x.policy_assignment),
            ('freshness', CASE WHEN x.reported THEN 'fresh' ELSE 'stale' END)
        ) AS v (dimension, value)
        GROUP BY 1, 2, 3
        HAVING SUM(x.d) <> 0
    ), counted AS (
        INSERT INTO cluster_state_counts AS s (cluster_id, dimension, value, n)
        SELECT cluster_id, dimension, value, d FROM per_cluster ORDER BY cluster_id, dimension, value
        ON CONFLICT (cluster_id, dimension, value) DO UPDATE SET n = s.n + excluded.n
        RETURNING s.cluster_id, s.dimension, s.value, s.n
    ), moved AS (
        -- a count equal to the change came from zero (the cluster entered the value), a zero count left it
        SELECT k.cluster_id, k.dimension, k.value, CASE WHEN k.n = 0 THEN -1 ELSE 1 END AS clusters
        FROM counted k
        JOIN per_cluster p USING (cluster_id, dimension, value)
        WHERE k.n = 0 OR k.n = p.d
    )
    INSERT INTO cluster_deltas (subscription_key, resource_group_key, dimension, value, clusters)
    SELECT c.subscription_key, c.resource_group_key, m.dimension, m.value, SUM(m.clusters)
    FROM moved m
    JOIN clusters c ON c.id = m.cluster_id
    GROUP BY 1, 2, 3, 4
    HAVING SUM(m.clusters) <> 0;
END
$$;

CREATE FUNCTION fluxplane_cluster_counts_dropped() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM cluster_state_counts WHERE cluster_id IN (SELECT id FROM deleted);
    RETURN NULL;
END
$$;

CREATE TRIGGER clusters_counts_dropped AFTER DELETE ON clusters
REFERENCING OLD TABLE AS deleted
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_cluster_counts_dropped();

-- Counts of clusters deleted before this migration were deleted with them by the foreign key: nothing to clear.

DROP TRIGGER extensions_inserted ON extensions;
DROP TRIGGER extensions_regenerated ON extensions;
DROP TRIGGER extensions_deleted ON extensions;
DROP FUNCTION fluxplane_extensions_changed();

-- Created, deleted, or written with a new generation: the clusters' desired states changed.
CREATE FUNCTION fluxplane_extensions_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    bumped BIGINT[];
    notified BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        bumped := ARRAY(SELECT DISTINCT cluster_id FROM inserted);
    ELSIF TG_OP = 'DELETE' THEN
        bumped := ARRAY(SELECT DISTINCT cluster_id FROM deleted);
    ELSE
        bumped := ARRAY(
            SELECT DISTINCT n.cluster_id
            FROM updated_new n JOIN updated_old o ON o.id = n.id
            WHERE n.generation IS DISTINCT FROM o.generation
        );
    END IF;
    IF cardinality(bumped) = 0 THEN
        RETURN NULL;
    END IF;
    WITH locked AS (
        SELECT id FROM clusters WHERE id = ANY (bumped) ORDER BY id FOR NO KEY UPDATE
    ), bumped_clusters AS (
        -- a cluster this transaction already wrote (its configurations' trigger bumped it, say) needs no second
        -- bump: no agent can have read the revision in between, and its wake-up is already on its way
        UPDATE clusters c SET revision = c.revision + 1 FROM locked
        WHERE c.id = locked.id AND c.xmin <> pg_current_xact_id()::xid
        RETURNING c.key
    )
    SELECT count(pg_notify('fluxplane_desired', key)) INTO notified FROM bumped_clusters;
    RETURN NULL;
END
$$;

CREATE TRIGGER extensions_inserted AFTER INSERT ON extensions
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_extensions_changed();

CREATE TRIGGER extensions_updated AFTER UPDATE ON extensions
REFERENCING OLD TABLE AS updated_old NEW TABLE AS updated_new
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_extensions_changed();

CREATE TRIGGER extensions_deleted AFTER DELETE ON extensions
REFERENCING OLD TABLE AS deleted
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_extensions_changed();
