-- The same as migrations/postgres/0005_cluster_groups.sql, in SQLite's types.
CREATE TABLE cluster_groups (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- lower-cased "subscription/name" or "subscription/resourceGroup/name"
    key TEXT NOT NULL UNIQUE,
    subscription_key TEXT NOT NULL,
    -- '' for a group at subscription scope
    resource_group_key TEXT NOT NULL,
    subscription TEXT NOT NULL,
    resource_group TEXT,
    name TEXT NOT NULL,
    selector TEXT NOT NULL,
    etag TEXT NOT NULL,
    system_data TEXT NOT NULL
);

CREATE INDEX cluster_groups_by_scope ON cluster_groups (subscription_key, resource_group_key, key);
