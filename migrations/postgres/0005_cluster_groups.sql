-- Fluxplane.Fleet/clusterGroups: named label selectors over cluster tags, at subscription or resource-group scope.
CREATE TABLE cluster_groups (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- lower-cased "subscription/name" or "subscription/resourceGroup/name"
    key TEXT NOT NULL UNIQUE,
    subscription_key TEXT NOT NULL,
    -- '' for a group at subscription scope
    resource_group_key TEXT NOT NULL,
    subscription TEXT NOT NULL,
    resource_group TEXT,
    name TEXT NOT NULL,
    selector JSONB NOT NULL,
    etag TEXT NOT NULL,
    system_data JSONB NOT NULL
);

CREATE INDEX cluster_groups_by_scope ON cluster_groups (subscription_key, resource_group_key, key);
