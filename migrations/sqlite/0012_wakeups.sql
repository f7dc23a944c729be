-- Wake-ups on the embedded store. On PostgreSQL a changed desired state reaches every replica's waiting polls
-- through NOTIFY (migrations 0002, 0013, 0014). SQLite has no such channel: a write left its wake-ups to the
-- handler that made it, and writes without a handler (the sweeper restoring drifted configurations) woke nobody,
-- so their agents saw them only when their poll timed out.
--
-- Now every change of a cluster's revision, and every deleted cluster, leaves the cluster's key here, inside the
-- writing transaction. The store takes the keys out just before it commits and wakes those clusters' polls once
-- committed (`SqliteStore::commit`, api/src/store/sqlite.rs); a transaction that rolls back leaves nothing.
-- SQLite only: the schema parity test lists it as such.

CREATE TABLE desired_changes (
    cluster_key TEXT NOT NULL
);

CREATE TRIGGER clusters_revised AFTER UPDATE OF revision ON clusters
BEGIN
    INSERT INTO desired_changes (cluster_key) VALUES (NEW.key);
END;

CREATE TRIGGER clusters_deleted_wake AFTER DELETE ON clusters
BEGIN
    INSERT INTO desired_changes (cluster_key) VALUES (OLD.key);
END;
