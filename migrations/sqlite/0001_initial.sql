-- The foundation schema for the embedded store; the same tables as migrations/postgres/0001_initial.sql, in
-- SQLite's types (JSON and timestamps as TEXT, bytes as BLOB).

-- Clusters registered as Microsoft.Kubernetes/connectedClusters.
CREATE TABLE clusters (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    -- lower-cased "subscription/resourceGroup/name": ARM names are case-insensitive
    key TEXT NOT NULL UNIQUE,
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    subscription TEXT NOT NULL,
    resource_group TEXT NOT NULL,
    name TEXT NOT NULL,
    location TEXT NOT NULL,
    tags TEXT NOT NULL,
    spec TEXT NOT NULL,
    connectivity_status TEXT NOT NULL,
    last_connectivity_time TEXT,
    agent_version TEXT,
    kubernetes_version TEXT,
    total_node_count INTEGER,
    etag TEXT NOT NULL,
    system_data TEXT NOT NULL
);

CREATE INDEX clusters_by_subscription ON clusters (subscription_key, key);
CREATE INDEX clusters_by_resource_group ON clusters (subscription_key, resource_group_key, key);

-- Flux configurations; removed with their cluster.
CREATE TABLE flux_configurations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id INTEGER NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    -- the secret fields, encrypted (never plaintext)
    secrets BLOB,
    generation INTEGER NOT NULL,
    etag TEXT NOT NULL,
    provisioning_state TEXT NOT NULL,
    compliance_state TEXT NOT NULL,
    observed TEXT NOT NULL,
    system_data TEXT NOT NULL,
    UNIQUE (cluster_id, name)
);

-- Status of long-running operations, kept apart so that a finished delete can still be polled.
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    resource_key TEXT NOT NULL,
    resource_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    generation INTEGER NOT NULL,
    status TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT,
    error TEXT
);

CREATE INDEX operations_in_progress ON operations (resource_key) WHERE status = 'InProgress';
