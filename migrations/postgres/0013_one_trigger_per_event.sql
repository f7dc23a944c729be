-- Cheaper writes: a single-configuration PUT spent half of PostgreSQL's time in the statement triggers of 0009 and
-- 0010 (a profile of the PUT benchmark: 29% of all CPU in AfterTriggerEndQuery, 12% re-planning the SQL-language
-- history function on every call, since PostgreSQL plans such a function anew each time it runs one that it cannot
-- inline). What the triggers do is unchanged: bump and notify the revision of the clusters whose desired state
-- changed, append the changes of counted states to the rollup deltas, and record the history. Now one function
-- does it for every event, reading the transition tables once, with no nested function calls but the rollup's, and
-- running only what the statement's changes call for. Measured on 2,000 single-row statements: a PUT's update from
-- 0.34 to 0.16 ms, an insert from 0.72 to 0.66 ms (its rollup is most of it).
-- Below it, two changes for the fleet summary's read: the pending tables are no longer truncated by vacuum, and the
-- clusters not connected get a table of their own.

DROP TRIGGER flux_configurations_inserted ON flux_configurations;
DROP TRIGGER flux_configurations_updated ON flux_configurations;
DROP TRIGGER flux_configurations_deleted ON flux_configurations;
DROP TRIGGER flux_configurations_counted_inserted ON flux_configurations;
DROP TRIGGER flux_configurations_counted_updated ON flux_configurations;
DROP TRIGGER flux_configurations_counted_deleted ON flux_configurations;
DROP FUNCTION fluxplane_configurations_inserted();
DROP FUNCTION fluxplane_configurations_updated();
DROP FUNCTION fluxplane_configurations_deleted();
DROP FUNCTION fluxplane_configurations_counted_inserted();
DROP FUNCTION fluxplane_configurations_counted_updated();
DROP FUNCTION fluxplane_configurations_counted_deleted();

DROP FUNCTION fluxplane_record_history(TEXT, flux_configurations[]);
DROP FUNCTION fluxplane_bump_revisions(BIGINT[]);

-- What the history records of a configuration, and all that the revision and the counts depend on: the triggers
-- carry these few fields rather than whole rows (a 10,000-row assignment write copied every row's documents several
-- times over when they carried whole rows).
CREATE TYPE fluxplane_recorded AS (
    id BIGINT,
    cluster_id BIGINT,
    name TEXT,
    managed_by_id TEXT,
    generation BIGINT,
    reported_generation BIGINT,
    compliance_state TEXT,
    provisioning_state TEXT,
    commit_id TEXT,
    message TEXT
);

-- One function for the three events: it gathers, from the statement's transition tables, the rows to record, the
-- clusters whose desired state changed and the changes of counted states, then bumps and notifies, rolls up and
-- records with one statement each (calling a PL/pgSQL function from another costs more than the statement it runs).
--
-- An update pairs each row's old and new versions by grouping on id (a join would do, but the plan PL/pgSQL caches
-- is made for the first statement's size, and a nested loop planned for one row is quadratic on a 10,000-row
-- assignment write; grouping is linear whatever the plan). Only rows whose recorded fields changed count; a status
-- report or a PUT that changes no counted state runs no rollup at all.
CREATE FUNCTION fluxplane_configurations_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    rows fluxplane_recorded[];
    bumped BIGINT[];
    changes fluxplane_state_change[];
    notified BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        rows := ARRAY(
            SELECT ROW(i.id, i.cluster_id, i.name, i.managed_by_id, i.generation, i.reported_generation,
                       i.compliance_state, i.provisioning_state, i.observed ->> 'sourceSyncedCommitId',
                       COALESCE(i.failure, i.observed ->> 'errorMessage'))::fluxplane_recorded
            FROM inserted i ORDER BY i.id
        );
    ELSIF TG_OP = 'DELETE' THEN
        rows := ARRAY(
            SELECT ROW(d.id, d.cluster_id, d.name, d.managed_by_id, d.generation, d.reported_generation,
                       d.compliance_state, d.provisioning_state, d.observed ->> 'sourceSyncedCommitId',
                       COALESCE(d.failure, d.observed ->> 'errorMessage'))::fluxplane_recorded
            FROM deleted d ORDER BY d.id
        );
    END IF;
    IF TG_OP = 'UPDATE' THEN
        WITH sides AS (
            SELECT ROW(n.id, n.cluster_id, n.name, n.managed_by_id, n.generation, n.reported_generation,
                       n.compliance_state, n.provisioning_state, n.observed ->> 'sourceSyncedCommitId',
                       COALESCE(n.failure, n.observed ->> 'errorMessage'))::fluxplane_recorded AS r,
                   TRUE AS is_new
            FROM updated_new n
            UNION ALL
            SELECT ROW(o.id, o.cluster_id, o.name, o.managed_by_id, o.generation, o.reported_generation,
                       o.compliance_state, o.provisioning_state, o.observed ->> 'sourceSyncedCommitId',
                       COALESCE(o.failure, o.observed ->> 'errorMessage'))::fluxplane_recorded,
                   FALSE
            FROM updated_old o
        ), pairs AS (
            SELECT (array_agg(r) FILTER (WHERE is_new))[1] AS n, (array_agg(r) FILTER (WHERE NOT is_new))[1] AS o
            FROM sides
            GROUP BY (r).id
        ), changed AS (
            SELECT n, o,
                   (COALESCE((n).managed_by_id, ''), (n).compliance_state, (n).provisioning_state,
                    COALESCE((n).reported_generation = (n).generation, FALSE))
                   IS DISTINCT FROM
                   (COALESCE((o).managed_by_id, ''), (o).compliance_state, (o).provisioning_state,
                    COALESCE((o).reported_generation = (o).generation, FALSE)) AS counted
            FROM pairs
            WHERE n IS DISTINCT FROM o
        )
        SELECT array_agg(n ORDER BY (n).id),
               array_agg(DISTINCT (n).cluster_id) FILTER (WHERE (n).generation <> (o).generation),
               array_agg(ROW((n).cluster_id, COALESCE((n).managed_by_id, ''), (n).compliance_state,
                             (n).provisioning_state, COALESCE((n).reported_generation = (n).generation, FALSE),
                             1)::fluxplane_state_change) FILTER (WHERE counted)
               || array_agg(ROW((o).cluster_id, COALESCE((o).managed_by_id, ''), (o).compliance_state,
                                (o).provisioning_state, COALESCE((o).reported_generation = (o).generation, FALSE),
                                -1)::fluxplane_state_change) FILTER (WHERE counted)
        INTO rows, bumped, changes
        FROM changed;
        IF rows IS NULL THEN
            RETURN NULL;
        END IF;
    ELSE
        SELECT array_agg(DISTINCT r.cluster_id),
               array_agg(ROW(r.cluster_id, COALESCE(r.managed_by_id, ''), r.compliance_state, r.provisioning_state,
                             COALESCE(r.reported_generation = r.generation, FALSE),
                             CASE TG_OP WHEN 'INSERT' THEN 1 ELSE -1 END)::fluxplane_state_change)
        INTO bumped, changes
        FROM unnest(rows) r;
    END IF;

    -- the clusters locked in id order, so that two multi-cluster statements cannot deadlock
    IF bumped IS NOT NULL THEN
        WITH locked AS (
            SELECT id FROM clusters WHERE id = ANY (bumped) ORDER BY id FOR NO KEY UPDATE
        ), bumped_clusters AS (
            UPDATE clusters c SET revision = c.revision + 1 FROM locked WHERE c.id = locked.id RETURNING c.key
        )
        SELECT count(pg_notify('fluxplane_desired', key)) INTO notified FROM bumped_clusters;
    END IF;
    IF changes IS NOT NULL THEN
        PERFORM fluxplane_roll_up(changes);
    END IF;
    INSERT INTO status_history (configuration_id, cluster_id, subscription_key, resource_group_key, cluster_path, name,
                                policy_assignment, event, generation, reported_generation, compliance_state,
                                provisioning_state, commit_id, message)
    SELECT r.id, r.cluster_id, c.subscription_key, c.resource_group_key,
           c.subscription || '/' || c.resource_group || '/' || c.name, r.name, COALESCE(r.managed_by_id, ''),
           CASE TG_OP WHEN 'INSERT' THEN 'Created' WHEN 'UPDATE' THEN 'Updated' ELSE 'Deleted' END,
           r.generation, r.reported_generation, r.compliance_state, r.provisioning_state, r.commit_id, r.message
    FROM unnest(rows) r
    JOIN clusters c ON c.id = r.cluster_id
    ORDER BY r.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER flux_configurations_inserted AFTER INSERT ON flux_configurations
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_configurations_changed();

CREATE TRIGGER flux_configurations_updated AFTER UPDATE ON flux_configurations
REFERENCING OLD TABLE AS updated_old NEW TABLE AS updated_new
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_configurations_changed();

CREATE TRIGGER flux_configurations_deleted AFTER DELETE ON flux_configurations
REFERENCING OLD TABLE AS deleted
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_configurations_changed();

-- The pending deltas are emptied every second. Vacuum (the replica's own and autovacuum) would then try to truncate
-- the emptied pages, which takes an exclusive lock that every status write and every summary read waits behind,
-- and while writers hold theirs it retries for up to five seconds. The freed pages are reused by the next second's
-- deltas anyway.
ALTER TABLE instance_deltas SET (vacuum_truncate = false);
ALTER TABLE cluster_deltas SET (vacuum_truncate = false);
ALTER TABLE instance_rollups SET (vacuum_truncate = false);
ALTER TABLE cluster_rollups SET (vacuum_truncate = false);

-- The clusters whose agent is not connected, in a table of their own: the fleet summary reads their configurations
-- apart (usually none). The partial index of 0011 left the choice to the planner, and statistics taken while a
-- fleet registered (every cluster Connecting) or right after it connected made it scan every cluster of the
-- subscription instead: 13 ms per summary at 10,000 clusters, against well under one by this table. Kept by row
-- triggers that run only when a cluster's connectivity changes (a heartbeat of a connected cluster runs none).
CREATE TABLE unconnected_clusters (
    cluster_id BIGINT PRIMARY KEY REFERENCES clusters (id) ON DELETE CASCADE,
    subscription_key TEXT COLLATE "C" NOT NULL,
    resource_group_key TEXT COLLATE "C" NOT NULL
);
INSERT INTO unconnected_clusters (cluster_id, subscription_key, resource_group_key)
SELECT id, subscription_key, resource_group_key FROM clusters WHERE connectivity_status <> 'Connected';

CREATE FUNCTION fluxplane_cluster_connectivity_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.connectivity_status = 'Connected' THEN
        DELETE FROM unconnected_clusters WHERE cluster_id = NEW.id;
    ELSE
        INSERT INTO unconnected_clusters (cluster_id, subscription_key, resource_group_key)
        VALUES (NEW.id, NEW.subscription_key, NEW.resource_group_key)
        ON CONFLICT (cluster_id) DO NOTHING;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER clusters_connectivity_inserted AFTER INSERT ON clusters
FOR EACH ROW WHEN (NEW.connectivity_status <> 'Connected')
EXECUTE FUNCTION fluxplane_cluster_connectivity_changed();

CREATE TRIGGER clusters_connectivity_updated AFTER UPDATE OF connectivity_status ON clusters
FOR EACH ROW WHEN (OLD.connectivity_status IS DISTINCT FROM NEW.connectivity_status)
EXECUTE FUNCTION fluxplane_cluster_connectivity_changed();

DROP INDEX clusters_not_connected;

-- Room on each page for the next version of a per-cluster count, so that the counter upserts of a fleet-wide write
-- (a template change moves every cluster's compliance, provisioning and freshness: six upserts per cluster) stay
-- heap-only updates instead of adding index entries: 10,000 such writes went from about 0.85 to 0.6 s.
ALTER TABLE cluster_state_counts SET (fillfactor = 50);
