-- Where a policy assignment's progressive rollout stands (NULL: none in progress or ever started).
ALTER TABLE policy_assignments ADD COLUMN rollout_state JSONB;
