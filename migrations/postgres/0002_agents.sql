-- The agent protocol: a per-cluster revision that long-polls wait on, and which generation agents last reported.

-- Grows with every change to a cluster's desired state; agents poll for "after revision N".
ALTER TABLE clusters ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;

-- The generation the last agent report described (NULL: never reported).
ALTER TABLE flux_configurations ADD COLUMN reported_generation BIGINT;

-- A configuration's desired state changes when it is created, deleted, or written with a new generation (status
-- reports do not touch `generation`). Each such change bumps its cluster's revision and, for long-polls waiting on
-- other replicas, notifies the channel `fluxplane_desired` with the cluster's key, all inside the writing
-- transaction, so no write can be seen without its wake-up.
CREATE FUNCTION fluxplane_desired_state_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed_cluster BIGINT := CASE WHEN TG_OP = 'DELETE' THEN OLD.cluster_id ELSE NEW.cluster_id END;
    cluster_key TEXT;
BEGIN
    UPDATE clusters SET revision = revision + 1 WHERE id = changed_cluster RETURNING key INTO cluster_key;
    IF cluster_key IS NOT NULL THEN
        PERFORM pg_notify('fluxplane_desired', cluster_key);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER flux_configurations_desired_state
AFTER INSERT OR DELETE OR UPDATE OF generation ON flux_configurations
FOR EACH ROW EXECUTE FUNCTION fluxplane_desired_state_changed();
