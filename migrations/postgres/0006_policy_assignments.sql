-- Fluxplane.Fleet/policyAssignments: a Flux configuration template that every cluster its selector matches gets,
-- kept in step in the same transaction as each change to the assignment, its group or a cluster.
CREATE TABLE policy_assignments (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- lower-cased "subscription/name" or "subscription/resourceGroup/name"
    key TEXT NOT NULL UNIQUE,
    subscription_key TEXT NOT NULL,
    -- '' for an assignment at subscription scope
    resource_group_key TEXT NOT NULL,
    subscription TEXT NOT NULL,
    resource_group TEXT,
    name TEXT NOT NULL,
    -- the group whose selector it follows; a group cannot be deleted while assignments follow it
    cluster_group_id BIGINT REFERENCES cluster_groups (id),
    configuration_name TEXT NOT NULL,
    -- the properties as written: selector or clusterGroupId, template, parameters, modes
    spec JSONB NOT NULL,
    -- the template with its parameters substituted and every default filled in: what each cluster gets
    rendered JSONB NOT NULL,
    -- bumped when `rendered` changes; managed configurations record the one they were written from
    generation BIGINT NOT NULL,
    etag TEXT NOT NULL,
    system_data JSONB NOT NULL
);

CREATE INDEX policy_assignments_by_scope ON policy_assignments (subscription_key, resource_group_key, key);
CREATE INDEX policy_assignments_by_configuration ON policy_assignments (subscription_key, configuration_name);

-- Which assignment manages a configuration (NULL: written by hand), its ARM id for display, and the assignment
-- generation it was written from.
ALTER TABLE flux_configurations ADD COLUMN managed_by BIGINT REFERENCES policy_assignments (id) ON DELETE SET NULL;
ALTER TABLE flux_configurations ADD COLUMN managed_by_id TEXT;
ALTER TABLE flux_configurations ADD COLUMN managed_generation BIGINT;
CREATE INDEX flux_configurations_managed ON flux_configurations (managed_by, cluster_id) WHERE managed_by IS NOT NULL;
