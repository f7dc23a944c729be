-- Rollouts that a release manager trusts (issue 19, point 2): the last template Compliant everywhere, which an
-- automatic rollback goes back to, and each rollout transition for the assignment's history. PostgreSQL's 0018
-- says why each is there.
ALTER TABLE policy_assignments ADD COLUMN last_compliant TEXT;

CREATE TABLE rollout_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    policy_assignment TEXT NOT NULL,
    event TEXT NOT NULL,
    generation INTEGER NOT NULL,
    batch INTEGER NOT NULL,
    batches INTEGER NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX rollout_history_by_assignment ON rollout_history (policy_assignment, id);
CREATE INDEX rollout_history_at ON rollout_history (at);
