-- The agent protocol: a per-cluster revision that long-polls wait on, and which generation agents last reported.
-- The same as migrations/postgres/0002_agents.sql, less the notification (the embedded store has one process,
-- which wakes its long-polls itself).

ALTER TABLE clusters ADD COLUMN revision INTEGER NOT NULL DEFAULT 0;

ALTER TABLE flux_configurations ADD COLUMN reported_generation INTEGER;

-- created, deleted, or written with a new generation: the cluster's desired state changed
CREATE TRIGGER flux_configurations_inserted AFTER INSERT ON flux_configurations
BEGIN
    UPDATE clusters SET revision = revision + 1 WHERE id = NEW.cluster_id;
END;

CREATE TRIGGER flux_configurations_regenerated AFTER UPDATE OF generation ON flux_configurations
BEGIN
    UPDATE clusters SET revision = revision + 1 WHERE id = NEW.cluster_id;
END;

CREATE TRIGGER flux_configurations_deleted AFTER DELETE ON flux_configurations
BEGIN
    UPDATE clusters SET revision = revision + 1 WHERE id = OLD.cluster_id;
END;
