-- waitForReconciliation: an operation whose configuration asks to wait ends only once the agent reports it
-- Compliant, or fails at reconcile_by (NULL: the operation ends with the agent's first report).
ALTER TABLE operations ADD COLUMN reconcile_by TEXT;

-- the sweeper's timeout reads only the few operations still waiting
CREATE INDEX operations_waiting ON operations (reconcile_by) WHERE status = 'InProgress' AND reconcile_by IS NOT NULL;
