-- Where each commit is, and what a cluster ran at a past time (issue 19, points 3 and 4), read from the status
-- history the triggers already write: nothing is added to the path of a report but these two index entries.
--
-- A configuration's state at a time is the latest history entry of its name on its cluster at or before that time.
-- (cluster_id, name, at) answers that in one index probe per name, and walks a cluster's names one seek at a time
-- (the by-cluster index would read every entry of the retention, a month of reports). Pruning keeps each name's
-- last entry before the retention's cut-off, the state it was still in, and finds what a newer entry supersedes
-- through the same index.
CREATE INDEX status_history_by_cluster_name ON status_history (cluster_id, name, at);

-- A policy assignment's commits and their spread: its distinct commits, each one's first sighting and its
-- clusters' entries, without reading the assignment's entries of other commits. Partial, as the assignment index
-- is: configurations written by hand and entries before a first sync are not a commit of any assignment.
CREATE INDEX status_history_by_commit ON status_history (policy_assignment, commit_id, at)
    WHERE policy_assignment <> '' AND commit_id IS NOT NULL;

-- The fleet's circuit breaker: the commits of a repository (its URL normalised) that halted every policy
-- assignment of the subscription reading it. One row per commit, so that a commit halts them once: a corrected
-- template applied afterwards is not halted again by the failures still reported for it. Written by the sweeper's
-- reconciliation only, under the subscription's fleet lock; kept as long as the history.
CREATE TABLE circuit_breaker_trips (
    subscription_key TEXT COLLATE "C" NOT NULL,
    repository TEXT COLLATE "C" NOT NULL,
    commit_id TEXT COLLATE "C" NOT NULL,
    at TIMESTAMPTZ NOT NULL,
    -- clusters that had applied the commit, and of them those it failed on, when it tripped
    applied BIGINT NOT NULL,
    failed BIGINT NOT NULL,
    PRIMARY KEY (subscription_key, repository, commit_id)
);
