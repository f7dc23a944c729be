-- The same as migrations/postgres/0008_rollout.sql, in SQLite's types.
ALTER TABLE policy_assignments ADD COLUMN rollout_state TEXT;
