-- Rollouts that a release manager trusts (issue 19, point 2). An automatic rollback needs the last template that
-- was Compliant on every cluster it was applied to, after the assignment's own spec has moved on: it is kept with
-- the assignment (`last_compliant`: its generation, spec and when). Each rollout transition (started, a batch
-- started, soaking, paused, resumed, halted, rolled back, completed) is kept in `rollout_history`, read with the
-- assignment's history and pruned with it; its rows are written by the store in the transaction that moves the
-- rollout, not by a trigger, since only the store knows the transition. SQLite's 0016 is the same.
ALTER TABLE policy_assignments ADD COLUMN last_compliant JSONB;

CREATE TABLE rollout_history (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL,
    -- the assignment's ARM id, as `status_history.policy_assignment` names it
    policy_assignment TEXT COLLATE "C" NOT NULL,
    event TEXT NOT NULL,
    generation BIGINT NOT NULL,
    batch BIGINT NOT NULL,
    batches BIGINT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX rollout_history_by_assignment ON rollout_history (policy_assignment, id);
CREATE INDEX rollout_history_at ON rollout_history USING brin (at);
