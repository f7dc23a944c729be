-- A cluster whose agent falls silent past --offline-after is now marked Offline in the row (by every replica, each
-- second) rather than only computed when read, so that the fleet summary finds the clusters not connected through
-- this small index instead of scanning every cluster. Heartbeats leave `connectivity_status` alone while a cluster
-- stays Connected, so they stay heap-only updates; only a transition touches the index.
CREATE INDEX clusters_not_connected ON clusters (subscription_key, resource_group_key)
WHERE connectivity_status <> 'Connected';
