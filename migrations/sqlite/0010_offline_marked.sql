-- The same as migrations/postgres/0011_offline_marked.sql.
CREATE INDEX clusters_not_connected ON clusters (subscription_key, resource_group_key)
WHERE connectivity_status <> 'Connected';
