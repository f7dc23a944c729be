-- Fleet-sized writes: a policy assignment writes thousands of configurations in a handful of statements, and the
-- per-row trigger of 0002 turned each of them back into one `UPDATE clusters` and one `NOTIFY` per row (three
-- quarters of the time of a 10,000-row insert). The same rule, bump the revision of every cluster whose desired
-- state changed and notify its key inside the writing transaction, is now applied once per statement over its
-- transition tables. PostgreSQL allows transition tables on single-event triggers only, hence three triggers.

DROP TRIGGER flux_configurations_desired_state ON flux_configurations;
DROP FUNCTION fluxplane_desired_state_changed();

-- Bumps the clusters in `changed`, locking them in id order so that two multi-cluster statements cannot deadlock.
CREATE FUNCTION fluxplane_bump_revisions(changed BIGINT[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    cluster_key TEXT;
BEGIN
    IF cardinality(changed) = 0 THEN
        RETURN;
    END IF;
    FOR cluster_key IN
        WITH locked AS (
            SELECT id FROM clusters WHERE id = ANY (changed) ORDER BY id FOR NO KEY UPDATE
        )
        UPDATE clusters c SET revision = c.revision + 1 FROM locked WHERE c.id = locked.id RETURNING c.key
    LOOP
        PERFORM pg_notify('fluxplane_desired', cluster_key);
    END LOOP;
END
$$;

CREATE FUNCTION fluxplane_configurations_inserted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fluxplane_bump_revisions(ARRAY(SELECT DISTINCT cluster_id FROM inserted));
    RETURN NULL;
END
$$;

-- Status reports update rows too, without touching `generation`: those change no desired state. A set difference
-- rather than a join on id: the planner knows nothing of a transition table's size and would nest the loops.
CREATE FUNCTION fluxplane_configurations_updated() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fluxplane_bump_revisions(ARRAY(
        SELECT DISTINCT cluster_id FROM (
            SELECT id, cluster_id, generation FROM updated_new
            EXCEPT
            SELECT id, cluster_id, generation FROM updated_old
        ) changed
    ));
    RETURN NULL;
END
$$;

CREATE FUNCTION fluxplane_configurations_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM fluxplane_bump_revisions(ARRAY(SELECT DISTINCT cluster_id FROM deleted));
    RETURN NULL;
END
$$;

CREATE TRIGGER flux_configurations_inserted AFTER INSERT ON flux_configurations
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_configurations_inserted();

CREATE TRIGGER flux_configurations_updated AFTER UPDATE ON flux_configurations
REFERENCING OLD TABLE AS updated_old NEW TABLE AS updated_new
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_configurations_updated();

CREATE TRIGGER flux_configurations_deleted AFTER DELETE ON flux_configurations
REFERENCING OLD TABLE AS deleted
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_configurations_deleted();

-- Room on each page for the next version of a row, so that the frequent updates that change no indexed column
-- (heartbeats and revisions on clusters, status reports on configurations) stay heap-only: no new index entries,
-- no page splits. Applies to pages written from now on.
ALTER TABLE clusters SET (fillfactor = 50);
ALTER TABLE flux_configurations SET (fillfactor = 70);
