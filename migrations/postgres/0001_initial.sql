-- The foundation schema: registered clusters, their Flux configurations and the status of long-running operations.
-- Keys are compared byte-wise (COLLATE "C") so that keyset paging and its index agree on one order.

-- Clusters registered as Microsoft.Kubernetes/connectedClusters.
CREATE TABLE clusters (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- lower-cased "subscription/resourceGroup/name": ARM names are case-insensitive
    key TEXT COLLATE "C" NOT NULL UNIQUE,
    subscription_key TEXT COLLATE "C" NOT NULL,
    resource_group_key TEXT COLLATE "C" NOT NULL,
    -- the names as the user spelled them, for ids in answers
    subscription TEXT NOT NULL,
    resource_group TEXT NOT NULL,
    name TEXT NOT NULL,
    location TEXT NOT NULL,
    tags JSONB NOT NULL,
    -- user-writable properties, identity and kind
    spec JSONB NOT NULL,
    -- read-only state the agent reports
    connectivity_status TEXT NOT NULL,
    last_connectivity_time TIMESTAMPTZ,
    agent_version TEXT,
    kubernetes_version TEXT,
    total_node_count BIGINT,
    etag TEXT NOT NULL,
    system_data JSONB NOT NULL
);

-- list by subscription and by resource group, in key order
CREATE INDEX clusters_by_subscription ON clusters (subscription_key, key);
CREATE INDEX clusters_by_resource_group ON clusters (subscription_key, resource_group_key, key);

-- Flux configurations; removed with their cluster.
CREATE TABLE flux_configurations (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cluster_id BIGINT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    name TEXT COLLATE "C" NOT NULL,
    -- desired state without any secret field
    spec JSONB NOT NULL,
    -- the secret fields, encrypted (never plaintext)
    secrets BYTEA,
    -- bumped by every write; agents report against it
    generation BIGINT NOT NULL,
    etag TEXT NOT NULL,
    provisioning_state TEXT NOT NULL,
    compliance_state TEXT NOT NULL,
    -- statuses[], commit, timestamps and error message as last reported
    observed JSONB NOT NULL,
    system_data JSONB NOT NULL,
    UNIQUE (cluster_id, name)
);

-- Status of long-running PUT/PATCH/DELETE calls, named by Azure-AsyncOperation. Kept apart from the
-- configuration so that a finished delete can still be polled.
CREATE TABLE operations (
    id TEXT PRIMARY KEY,
    -- cluster key + "/" + configuration name
    resource_key TEXT COLLATE "C" NOT NULL,
    resource_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    generation BIGINT NOT NULL,
    status TEXT NOT NULL,
    start_time TIMESTAMPTZ NOT NULL,
    end_time TIMESTAMPTZ,
    error JSONB
);

-- a new write supersedes the operations still running on the same resource
CREATE INDEX operations_in_progress ON operations (resource_key) WHERE status = 'InProgress';
