-- Alerts out (issue 20, point 1): receivers, rules, and the durable outbox between events and receivers, written in
-- the transaction that records each event. PostgreSQL's 0019 says why a queue written by triggers and the store,
-- rather than a cursor over the history. The tables are the same; the triggers are row triggers, and SQLite's
-- single writer stands in for PostgreSQL's row locks (`BEGIN IMMEDIATE` in the dispatcher and the senders).

CREATE TABLE alert_receivers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    subscription TEXT NOT NULL,
    resource_group TEXT,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    sealed_url TEXT NOT NULL,
    sealed_signing_key TEXT,
    etag TEXT NOT NULL,
    system_data TEXT NOT NULL,
    tokens REAL NOT NULL,
    tokens_at TEXT NOT NULL,
    dropped INTEGER NOT NULL DEFAULT 0,
    dropped_at TEXT
);
CREATE INDEX alert_receivers_by_scope ON alert_receivers (subscription_key, resource_group_key, key);

CREATE TABLE alert_rules (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    subscription TEXT NOT NULL,
    resource_group TEXT,
    name TEXT NOT NULL,
    spec TEXT NOT NULL,
    cluster_group_id INTEGER REFERENCES cluster_groups (id),
    etag TEXT NOT NULL,
    system_data TEXT NOT NULL
);
CREATE INDEX alert_rules_by_scope ON alert_rules (subscription_key, resource_group_key, key);
CREATE INDEX alert_rules_by_group ON alert_rules (cluster_group_id) WHERE cluster_group_id IS NOT NULL;

CREATE TABLE alert_rule_receivers (
    rule_id INTEGER NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    receiver_id INTEGER NOT NULL REFERENCES alert_receivers (id),
    PRIMARY KEY (rule_id, receiver_id)
);
CREATE INDEX alert_rule_receivers_by_receiver ON alert_rule_receivers (receiver_id);

CREATE TABLE alert_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    kind TEXT NOT NULL,
    subscription_key TEXT NOT NULL,
    resource_group_key TEXT NOT NULL,
    cluster_id INTEGER,
    cluster_path TEXT,
    name TEXT,
    policy_assignment TEXT NOT NULL DEFAULT '',
    facts TEXT NOT NULL
);

CREATE TABLE alert_throttle (
    rule_id INTEGER NOT NULL REFERENCES alert_rules (id) ON DELETE CASCADE,
    subject TEXT NOT NULL,
    last_sent_at TEXT,
    held TEXT,
    flush_at TEXT,
    PRIMARY KEY (rule_id, subject)
);
CREATE INDEX alert_throttle_due ON alert_throttle (flush_at) WHERE flush_at IS NOT NULL;

CREATE TABLE alert_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id TEXT NOT NULL UNIQUE,
    receiver_id INTEGER NOT NULL REFERENCES alert_receivers (id) ON DELETE CASCADE,
    rule_id INTEGER REFERENCES alert_rules (id) ON DELETE SET NULL,
    created_at TEXT NOT NULL,
    state TEXT NOT NULL,
    due_at TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt_at TEXT,
    last_status_code INTEGER,
    last_error TEXT,
    finished_at TEXT,
    message TEXT NOT NULL
);
CREATE INDEX alert_deliveries_due ON alert_deliveries (due_at) WHERE state IN ('Pending', 'Sending');
CREATE INDEX alert_deliveries_backlog ON alert_deliveries (receiver_id, due_at) WHERE state IN ('Pending', 'Sending');
CREATE INDEX alert_deliveries_by_receiver ON alert_deliveries (receiver_id, id);
CREATE INDEX alert_deliveries_finished ON alert_deliveries (finished_at) WHERE finished_at IS NOT NULL;

-- What PostgreSQL's statement trigger does, a row at a time: the previous settled compliance state and the previous
-- provisioning state of the configuration, and a queued event when either turn as an alert would say.
CREATE TRIGGER status_history_alerted AFTER INSERT ON status_history
WHEN NEW.event IN ('Created', 'Updated')
    AND (NEW.compliance_state IN ('Compliant', 'Non-Compliant') OR NEW.provisioning_state = 'Failed')
    AND EXISTS (SELECT 1 FROM alert_rules r WHERE r.subscription_key = NEW.subscription_key)
BEGIN
    INSERT INTO alert_events (kind, subscription_key, resource_group_key, cluster_id, cluster_path, name,
                              policy_assignment, facts)
    SELECT 'status', NEW.subscription_key, NEW.resource_group_key, NEW.cluster_id, NEW.cluster_path, NEW.name,
           NEW.policy_assignment,
           json_object('complianceState', NEW.compliance_state, 'provisioningState', NEW.provisioning_state,
                       'settledBefore', p.settled, 'provisioningBefore', p.provisioning,
                       'generation', NEW.generation, 'commitId', NEW.commit_id, 'message', NEW.message)
    FROM (
        SELECT
            (SELECT h.compliance_state FROM status_history h
             WHERE h.configuration_id = NEW.configuration_id AND h.id < NEW.id AND h.event <> 'Restored'
               AND h.compliance_state IN ('Compliant', 'Non-Compliant')
             ORDER BY h.id DESC LIMIT 1) AS settled,
            (SELECT h.provisioning_state FROM status_history h
             WHERE h.configuration_id = NEW.configuration_id AND h.id < NEW.id AND h.event <> 'Restored'
             ORDER BY h.id DESC LIMIT 1) AS provisioning
    ) p
    WHERE (NEW.compliance_state IN ('Compliant', 'Non-Compliant') AND NEW.compliance_state IS NOT p.settled)
       OR (NEW.provisioning_state = 'Failed' AND p.provisioning IS NOT 'Failed');
END;

CREATE TRIGGER clusters_connectivity_alerted AFTER UPDATE OF connectivity_status ON clusters
WHEN OLD.connectivity_status IS NOT NEW.connectivity_status
    AND EXISTS (SELECT 1 FROM alert_rules r WHERE r.subscription_key = NEW.subscription_key)
BEGIN
    INSERT INTO alert_events (kind, subscription_key, resource_group_key, cluster_id, cluster_path, facts)
    VALUES ('connectivity', NEW.subscription_key, NEW.resource_group_key, NEW.id,
            NEW.subscription || '/' || NEW.resource_group || '/' || NEW.name,
            json_object('status', NEW.connectivity_status, 'before', OLD.connectivity_status,
                        'lastConnectivityTime', NEW.last_connectivity_time));
END;
