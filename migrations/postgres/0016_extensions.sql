-- Cluster extensions (Microsoft.KubernetesConfiguration/extensions). Azure's tools look for the microsoft.flux
-- extension before they write a Flux configuration (`az k8s-configuration flux create` installs it when missing), so
-- a cluster holds it as a resource of its own: its settings reach the agent in the desired state, and its
-- operations end when the agent reports it installed. One extension of a type per cluster, as Azure allows.
--
-- The protected settings are sealed to the agent's key as a configuration's secrets are, but an extension holds at
-- most one undelivered change (every write of them replaces the whole set), so they live in a column (`sealed`, a
-- JSON array of the wire's SealedSecrets) rather than a table of their own; acknowledged or expired, the column is
-- emptied.
--
-- Extension writes are rare (one per cluster, seldom changed): their trigger bumps the cluster's revision and
-- notifies the replicas inside the transaction, which 0014 avoided for the far more frequent configuration writes.

CREATE TABLE extensions (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    cluster_id BIGINT NOT NULL REFERENCES clusters (id) ON DELETE CASCADE,
    name TEXT COLLATE "C" NOT NULL,
    -- lower-cased: at most one extension of a type per cluster
    extension_type TEXT NOT NULL,
    -- the writable properties and the identity, without the protected settings
    spec JSONB NOT NULL,
    generation BIGINT NOT NULL,
    etag TEXT NOT NULL,
    provisioning_state TEXT NOT NULL,
    -- what the agent last reported: current version, error
    observed JSONB NOT NULL,
    system_data JSONB NOT NULL,
    reported_generation BIGINT,
    secrets_version BIGINT,
    sealed JSONB NOT NULL DEFAULT '[]',
    secrets_expire_at TIMESTAMPTZ,
    generation_expires_at TIMESTAMPTZ,
    failure TEXT,
    UNIQUE (cluster_id, name),
    UNIQUE (cluster_id, extension_type)
);

CREATE INDEX extensions_secrets_expiry ON extensions (secrets_expire_at) WHERE secrets_expire_at IS NOT NULL;
CREATE INDEX extensions_generation_expiry ON extensions (generation_expires_at)
    WHERE generation_expires_at IS NOT NULL;

-- created, deleted, or written with a new generation: the cluster's desired state changed
CREATE FUNCTION fluxplane_extensions_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed BIGINT := CASE TG_OP WHEN 'DELETE' THEN OLD.cluster_id ELSE NEW.cluster_id END;
    cluster_key TEXT;
BEGIN
    UPDATE clusters SET revision = revision + 1 WHERE id = changed RETURNING key INTO cluster_key;
    IF cluster_key IS NOT NULL THEN
        PERFORM pg_notify('fluxplane_desired', cluster_key);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER extensions_inserted AFTER INSERT ON extensions
    FOR EACH ROW EXECUTE FUNCTION fluxplane_extensions_changed();
CREATE TRIGGER extensions_regenerated AFTER UPDATE OF generation ON extensions
    FOR EACH ROW WHEN (OLD.generation IS DISTINCT FROM NEW.generation) EXECUTE FUNCTION fluxplane_extensions_changed();
CREATE TRIGGER extensions_deleted AFTER DELETE ON extensions
    FOR EACH ROW EXECUTE FUNCTION fluxplane_extensions_changed();

-- Clusters that already hold configurations got the extension with their first one, as Azure's tools install it:
-- it is recorded now, created with that configuration's systemData, and installed once the agent reports.
INSERT INTO extensions (cluster_id, name, extension_type, spec, generation, etag, provisioning_state, observed,
                        system_data)
SELECT DISTINCT ON (cluster_id) cluster_id, 'flux', 'microsoft.flux',
       '{"extensionType": "microsoft.flux", "autoUpgradeMinorVersion": true, "releaseTrain": "Stable", "releaseNamespace": "flux-system", "configurationSettings": {}}',
       1, gen_random_uuid()::TEXT, 'Creating', '{}', system_data
FROM flux_configurations
ORDER BY cluster_id, id;
