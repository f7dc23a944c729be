-- The same as migrations/postgres/0007_drift.sql, in SQLite's types.
ALTER TABLE flux_configurations ADD COLUMN drifted_at TEXT;
