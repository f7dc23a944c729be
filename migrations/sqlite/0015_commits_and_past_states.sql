-- Where each commit is, and what a cluster ran at a past time (issue 19, points 3 and 4), read from the status
-- history the triggers already write: nothing is added to the path of a report but these two index entries. The
-- same indexes and table as PostgreSQL's 0017, which says why each is there.
CREATE INDEX status_history_by_cluster_name ON status_history (cluster_id, name, at);

CREATE INDEX status_history_by_commit ON status_history (policy_assignment, commit_id, at)
    WHERE policy_assignment <> '' AND commit_id IS NOT NULL;

CREATE TABLE circuit_breaker_trips (
    subscription_key TEXT NOT NULL,
    repository TEXT NOT NULL,
    commit_id TEXT NOT NULL,
    at TEXT NOT NULL,
    applied INTEGER NOT NULL,
    failed INTEGER NOT NULL,
    PRIMARY KEY (subscription_key, repository, commit_id)
);
