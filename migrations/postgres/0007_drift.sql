-- When a configuration a policy assignment manages was last written by hand (drift). Such a write also clears
-- its managed_generation, so the next reconciliation restores it from the assignment.
ALTER TABLE flux_configurations ADD COLUMN drifted_at TIMESTAMPTZ;
