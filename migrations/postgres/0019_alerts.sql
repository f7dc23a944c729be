-- Alerts out (issue 20, point 1): receivers (where messages go), rules (which events, narrowed how, how often), and
-- a durable outbox between the events and the receivers.
--
-- The outbox is written in the transaction that records the event, by the database where a trigger sees the event
-- and by the store where only the store knows it: a status transition (a trigger on `status_history`, which the
-- configurations' triggers fill), a cluster's connectivity turning (a trigger on `clusters`), a rollout's
-- transition (`record_rollout`, which writes `rollout_history`) and an expiry (`expire`). Each such event lands in
-- `alert_events` with the facts a message needs. The alternative, a cursor over the append-only history, was
-- rejected: identity values are taken at insert and become visible at commit, so a reader that moves a cursor past
-- id 101 can miss id 100 still committing, and the history holds neither the offline/back transitions nor the
-- expiries. A queue row is there or not, whatever the order of commits.
--
-- Rows are consumed, not scanned past: the dispatcher (each replica, `alerts::outbox`) takes a batch with `FOR UPDATE
-- SKIP LOCKED`, matches it against the rules in Rust (selectors, groups, throttling), inserts one
-- `alert_deliveries` row per receiver to send to and deletes the batch, in one transaction: every event becomes its
-- deliveries once, however many replicas run, and a crash before the commit leaves the batch for the next try. The
-- senders lease deliveries the same way (the lease is `due_at` pushed past the send's time limit, so a replica
-- killed while sending leaves the row to be sent again: at least once, each message carrying its delivery id).
--
-- The triggers add nothing to a write while the subscription has no alert rule (one probe of an index of a small
-- table). With rules, a status transition costs two probes of `status_history_by_configuration` (the previous
-- settled compliance state and the previous provisioning state), and only transitions that can alert are queued:
-- the settled compliance state (Compliant, Non-Compliant) changing, or provisioning turning Failed.
-- SQLite's 0017 is the same, with row triggers.

-- Where messages go. The URL and the signing key are the server's own credentials, sealed with `--secrets-key-file`
-- (`vault`), never answered: `spec` holds what may be read (the type, the URL's host, the rate limit).
CREATE TABLE alert_receivers (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- lower-cased "subscription/name" or "subscription/resourceGroup/name"
    key TEXT COLLATE "C" NOT NULL UNIQUE,
    subscription_key TEXT COLLATE "C" NOT NULL,
    -- '' for a receiver at subscription scope
    resource_group_key TEXT COLLATE "C" NOT NULL,
    subscription TEXT NOT NULL,
    resource_group TEXT,
    name TEXT NOT NULL,
    spec JSONB NOT NULL,
    sealed_url TEXT NOT NULL,
    sealed_signing_key TEXT,
    etag TEXT NOT NULL,
    system_data JSONB NOT NULL,
    -- the rate limit's token bucket, shared by every replica: tokens left as of `tokens_at`
    tokens DOUBLE PRECISION NOT NULL,
    tokens_at TIMESTAMPTZ NOT NULL,
    -- messages not queued because the receiver's backlog was full, and when the last was
    dropped BIGINT NOT NULL DEFAULT 0,
    dropped_at TIMESTAMPTZ
);
CREATE INDEX alert_receivers_by_scope ON alert_receivers (subscription_key, resource_group_key, key);

-- Which events go where. A rule's cluster group is a foreign key: a group that rules follow is not deleted (as
-- with policy assignments).
CREATE TABLE alert_rules (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key TEXT COLLATE "C" NOT NULL UNIQUE,
    subscription_key TEXT COLLATE "C" NOT NULL,
    resource_group_key TEXT COLLATE "C" NOT NULL,
    subscription TEXT NOT NULL,
    resource_group TEXT,
    name TEXT NOT NULL,
    spec JSONB NOT NULL,
    cluster_group_id BIGINT REFERENCES cluster_groups (id),
    etag TEXT NOT NULL,
    system_data JSONB NOT NULL
);
CREATE INDEX alert_rules_by_scope ON alert_rules (subscription_key, resource_group_key, key);
CREATE INDEX alert_rules_by_group ON alert_rules (cluster_group_id) WHERE cluster_group_id IS NOT NULL;

-- A receiver that rules send to is not deleted (the foreign key refuses); a rule's go with it.
CREATE TABLE alert_rule_receivers (
    rule_id BIGINT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    receiver_id BIGINT NOT NULL REFERENCES alert_receivers (id),
    PRIMARY KEY (rule_id, receiver_id)
);
CREATE INDEX alert_rule_receivers_by_receiver ON alert_rule_receivers (receiver_id);

-- Events waiting for the dispatcher: `kind` is status, connectivity, rollout or expiry; `facts` what it needs of
-- each (states before and after, messages, generations).
CREATE TABLE alert_events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at TIMESTAMPTZ NOT NULL DEFAULT now(),
    kind TEXT NOT NULL,
    subscription_key TEXT COLLATE "C" NOT NULL,
    resource_group_key TEXT COLLATE "C" NOT NULL,
    cluster_id BIGINT,
    -- "subscription/resourceGroup/name" as spelled
    cluster_path TEXT,
    -- the configuration's name, or "extensions/{name}" for an extension's expiry
    name TEXT,
    -- the ARM id of the policy assignment concerned, '' if none
    policy_assignment TEXT NOT NULL DEFAULT '',
    facts JSONB NOT NULL
);

-- The minimum interval of a rule per subject: when the last message went, and what was held back since (a count
-- per event type and the latest event), sent as one message at `flush_at`.
CREATE TABLE alert_throttle (
    rule_id BIGINT NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    subject TEXT COLLATE "C" NOT NULL,
    last_sent_at TIMESTAMPTZ,
    held JSONB,
    flush_at TIMESTAMPTZ,
    PRIMARY KEY (rule_id, subject)
);
CREATE INDEX alert_throttle_due ON alert_throttle (flush_at) WHERE flush_at IS NOT NULL;

-- The outbox proper and the delivery log: one message for one receiver, Pending until sent, Sending while a replica
-- holds its lease (`due_at` is then the lease's end), Delivered or Failed at the end. Bounded: a receiver's backlog
-- is capped (what does not fit is counted in `alert_receivers.dropped`), retries stop after a day, and finished
-- rows are pruned (a week, the last thousand per receiver).
CREATE TABLE alert_deliveries (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- what receivers see (`X-Fluxplane-Delivery`), the same for every attempt
    delivery_id TEXT NOT NULL UNIQUE,
    receiver_id BIGINT NOT NULL REFERENCES alert_receivers (id) ON DELETE CASCADE,
    rule_id BIGINT REFERENCES alert_rules (id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL,
    state TEXT NOT NULL,
    due_at TIMESTAMPTZ NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt_at TIMESTAMPTZ,
    last_status_code INTEGER,
    last_error TEXT,
    finished_at TIMESTAMPTZ,
    message JSONB NOT NULL
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (due_at) WHERE state IN ('Pending', 'Sending');
CREATE INDEX alert_deliveries_backlog ON alert_deliveries (receiver_id, due_at) WHERE state IN ('Pending', 'Sending');
CREATE INDEX alert_deliveries_by_receiver ON alert_deliveries (receiver_id, id);
CREATE INDEX alert_deliveries_finished ON alert_deliveries (finished_at) WHERE finished_at IS NOT NULL;

-- A status transition that can alert: the settled compliance state changed (the latest Compliant or Non-Compliant
-- entry before, skipping Pending and the like, so that a fix applied through a new generation still reads as back
-- to Compliant), or provisioning turned Failed.
CREATE FUNCTION fluxplane_status_alerted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM alert_rules) THEN
        RETURN NULL;
    END IF;
    INSERT INTO alert_events (kind, subscription_key, resource_group_key, cluster_id, cluster_path, name,
                              policy_assignment, facts)
    SELECT 'status', n.subscription_key, n.resource_group_key, n.cluster_id, n.cluster_path, n.name,
           n.policy_assignment,
           jsonb_build_object('complianceState', n.compliance_state, 'provisioningState', n.provisioning_state,
                              'settledBefore', settled.compliance_state, 'provisioningBefore', before.provisioning_state,
                              'generation', n.generation, 'commitId', n.commit_id, 'message', n.message)
    FROM recorded n
    LEFT JOIN LATERAL (
        SELECT h.compliance_state FROM status_history h
        WHERE h.configuration_id = n.configuration_id AND h.id < n.id AND h.event <> 'Restored'
          AND h.compliance_state IN ('Compliant', 'Non-Compliant')
        ORDER BY h.id DESC LIMIT 1
    ) settled ON TRUE
    LEFT JOIN LATERAL (
        SELECT h.provisioning_state FROM status_history h
        WHERE h.configuration_id = n.configuration_id AND h.id < n.id AND h.event <> 'Restored'
        ORDER BY h.id DESC LIMIT 1
    ) before ON TRUE
    WHERE n.event IN ('Created', 'Updated')
      AND (n.compliance_state IN ('Compliant', 'Non-Compliant') OR n.provisioning_state = 'Failed')
      AND EXISTS (SELECT 1 FROM alert_rules r WHERE r.subscription_key = n.subscription_key)
      AND ((n.compliance_state IN ('Compliant', 'Non-Compliant')
            AND n.compliance_state IS DISTINCT FROM settled.compliance_state)
           OR (n.provisioning_state = 'Failed' AND before.provisioning_state IS DISTINCT FROM 'Failed'))
    ORDER BY n.id;
    RETURN NULL;
END
$$;

CREATE TRIGGER status_history_alerted AFTER INSERT ON status_history
REFERENCING NEW TABLE AS recorded
FOR EACH STATEMENT EXECUTE FUNCTION fluxplane_status_alerted();

-- A cluster going Offline (the maintainer marks it) or coming back (its agent's heartbeat): the row trigger runs
-- only when the status changes, so a heartbeat of a connected cluster runs none.
CREATE FUNCTION fluxplane_connectivity_alerted() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO alert_events (kind, subscription_key, resource_group_key, cluster_id, cluster_path, facts)
    SELECT 'connectivity', NEW.subscription_key, NEW.resource_group_key, NEW.id,
           NEW.subscription || '/' || NEW.resource_group || '/' || NEW.name,
           jsonb_build_object('status', NEW.connectivity_status, 'before', OLD.connectivity_status,
                              'lastConnectivityTime', NEW.last_connectivity_time)
    WHERE EXISTS (SELECT 1 FROM alert_rules r WHERE r.subscription_key = NEW.subscription_key);
    RETURN NULL;
END
$$;

CREATE TRIGGER clusters_connectivity_alerted AFTER UPDATE OF connectivity_status ON clusters
FOR EACH ROW WHEN (OLD.connectivity_status IS DISTINCT FROM NEW.connectivity_status)
EXECUTE FUNCTION fluxplane_connectivity_alerted();
