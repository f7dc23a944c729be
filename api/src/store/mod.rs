//! Persistence: one `Store` interface with a PostgreSQL and a SQLite implementation.
//!
//! The store offers conditional primitives (insert-if-absent, update-if-etag-matches) rather than business
//! operations, so that the optimistic-concurrency loop and every rule live once, above it, for both backends.
//! Both implementations share their SQL (see `sql.rs`); each adds only what its engine needs to connect.

mod alerts;
mod batch;
mod dashboards;
mod fleet;
mod postgres;
mod receivers;
mod sql;
mod sqlite;
#[cfg(test)]
pub(crate) mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::arm::paging::PageRequest;
use crate::arm::scope::ClusterSet;
use crate::error::ApiError;
use crate::fleet::commits::Sighting;
use crate::fleet::receivers::model::LastPush;
use crate::lifecycle::{ExpiryMessages, ManagedWrite};
use crate::model::{
    AlertReceiverRecord, AlertRuleRecord, AssignmentWrite, BatchOutcome, ClusterGroupRecord, ClusterRecord,
    ClusterTags, ConfigurationForWrite, ConfigurationRecord, ConfigurationReportWrite, ConfigurationState,
    DeliveryRecord, DesiredRecords, DispatchLimits, Dispatched, Expired, ExtensionRecord, ExtensionReportWrite,
    FailingGauges, FinishedDelivery, FleetGauges, GitReceiverRecord, GitSource, GroupDelete, HeartbeatWrite,
    HistoryQuery, HistoryRows, OperationRecord, PolicyAssignmentRecord, ReceiverStatus, ReconcileTarget, ReportOutcome,
    Rollup, SecretsWrite, StateCount, StateCountQuery, StatusRecord, Write, WriteRecord,
};
use crate::notify::Notifier;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error")]
    Database(#[from] sqlx::Error),
    #[error("migrating the database failed")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database is not ready: {0}")]
    NotReady(String),
    #[error("unsupported database URL scheme '{0}': use postgres://... or sqlite://...")]
    UnsupportedUrl(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// What a request that found no pooled connection free in time is told (`StoreError::is_pool_timeout`).
pub const NO_CONNECTION: &str =
    "no database connection came free in time: the database is unreachable or this server is overloaded";

impl StoreError {
    /// Whether the error says the database cannot be reached (down, restarting, refusing connections, or no pooled
    /// connection within the pool's timeout), rather than that a statement failed.
    pub fn is_unavailable(&self) -> bool {
        let StoreError::Database(err) = self else {
            return false;
        };
        match err {
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // SQLSTATE class 08: connection exception; 57P01-57P03: shutting down, crashed, starting up; 53300:
                // too many connections
                code.starts_with("08") || matches!(code.as_ref(), "57P01" | "57P02" | "57P03" | "53300")
            }),
            _ => false,
        }
    }

    /// Whether no pooled connection came free within the pool's timeout ([`NO_CONNECTION`]). That alone does not say whether the
    /// database is down (sqlx keeps trying a refused connection until the timeout) or only every connection busy
    /// under load: the availability watcher tries a connection of its own to tell (`availability`).
    pub fn is_pool_timeout(&self) -> bool {
        matches!(self, StoreError::Database(sqlx::Error::PoolTimedOut))
    }

    /// Whether the database rolled the transaction back to let another go on (PostgreSQL breaking a deadlock, or
    /// a serialization failure): nothing of it was written, and the same transaction tried again normally
    /// succeeds. Fleet writes lock thousands of rows; an agent's batch of reports meeting one of them halfway is
    /// such a case, however carefully each orders its locks.
    pub fn is_transient(&self) -> bool {
        let StoreError::Database(sqlx::Error::Database(db)) = self else {
            return false;
        };
        // SQLSTATE 40P01: deadlock detected; 40001: serialization failure
        db.code().is_some_and(|code| matches!(code.as_ref(), "40P01" | "40001"))
    }
}

/// How a failed store call answers a request: an unreachable database is a 503 the client may retry; a write rolled
/// back for another transaction (tried again by the write loop first, `arm::write::retry`) a 503 `ServerBusy` to
/// retry at once; anything else an internal error.
impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match &err {
            _ if err.is_pool_timeout() => ApiError::NoConnection(format!("{NO_CONNECTION}; retry shortly")),
            StoreError::Database(cause) if err.is_unavailable() => {
                ApiError::DatabaseUnavailable(format!("the database is unreachable ({cause}); retry shortly"))
            }
            _ if err.is_transient() => ApiError::WriteCollided(
                "the write met another one on the same rows and the database rolled it back, writing nothing; retry"
                    .into(),
            ),
            _ => ApiError::Internal(err.into()),
        }
    }
}

/// Starts a transaction with `statement`, or the engine's plain `BEGIN`, on a task of its own.
///
/// sqlx 0.9 counts a PostgreSQL transaction only once `BEGIN` has been answered, and rolls back on drop only what
/// it counted: a request cancelled in between (a client hanging up, a held poll ended) hands its connection back
/// to the pool inside a transaction nobody will end, and every later borrower's statements run in it or fail
/// (transact-rs/sqlx#4393). On a task of its own the `BEGIN` is answered whatever becomes of the request, and a
/// transaction nobody takes is dropped, and so rolled back, there.
pub(crate) async fn begin<DB: sqlx::Database>(
    pool: &sqlx::Pool<DB>,
    statement: Option<&'static str>,
) -> Result<sqlx::Transaction<'static, DB>, sqlx::Error> {
    let pool = pool.clone();
    let begun = tokio::spawn(async move {
        match statement {
            Some(statement) => pool.begin_with(statement).await,
            None => pool.begin().await,
        }
    });
    match begun.await {
        Ok(transaction) => transaction,
        Err(failed) if failed.is_panic() => std::panic::resume_unwind(failed.into_panic()),
        // only a runtime shutting down cancels a task it runs
        Err(_) => Err(sqlx::Error::PoolClosed),
    }
}

/// The statements of the fleet summary's current read, for the scope `$1` (subscription key) and `$2` (resource
/// group key, or empty): instance counts, cluster counts, and the configurations of the clusters not connected.
/// Public so that the benchmark's database ceiling runs the very statements the server runs.
#[derive(Debug, Clone, Copy)]
pub struct SummaryStatements {
    pub instances: &'static str,
    pub clusters: &'static str,
    pub unheard: &'static str,
}

pub const POSTGRES_SUMMARY: SummaryStatements = SummaryStatements {
    instances: dashboards::INSTANCES_NOW,
    clusters: postgres::CLUSTERS_NOW,
    unheard: postgres::UNHEARD,
};

pub const SQLITE_SUMMARY: SummaryStatements = SummaryStatements {
    instances: dashboards::INSTANCES_NOW,
    clusters: sqlite::CLUSTERS_NOW,
    unheard: sqlite::UNHEARD,
};

/// What the dashboards read: the summary's rollups, the history and the fleet-wide gauges.
#[async_trait]
pub trait Dashboards: Send + Sync + 'static {
    /// The scope's counts from the rollups, current or as of a past time (history retention permitting), and with
    /// `with_unheard` the configurations, by cluster and states, of its clusters not in the Connected status; all
    /// from one snapshot, so that they add up.
    async fn rollup(&self, scope: &ClusterSet, as_of: Option<DateTime<Utc>>, with_unheard: bool)
    -> StoreResult<Rollup>;
    /// Marks the Connected clusters not heard from since `heard_before` Offline; answers how many.
    async fn mark_offline(&self, heard_before: DateTime<Utc>) -> StoreResult<u64>;
    /// Folds the deltas written since the last compaction into the rollups; answers how many it folded.
    async fn compact_rollups(&self) -> StoreResult<u64>;
    /// Drops the history (and the folded deltas) from before `before`; answers how many rows went. Each
    /// configuration name keeps its last status entry before `before` (the state it was in after it) unless that
    /// entry is its deletion. `since` is the `before` of the last prune that succeeded, whose entries need no second
    /// look (`None`: look at the whole history).
    async fn prune_history(&self, before: DateTime<Utc>, since: Option<DateTime<Utc>>) -> StoreResult<u64>;
    /// Appends accepted writes to the history, in one statement (their `id` and `at` are the store's).
    async fn record_writes(&self, writes: &[WriteRecord]) -> StoreResult<()>;
    /// A page of status transitions, writes and (of an assignment) rollout transitions: at most `limit` of each, in
    /// id order.
    async fn history(&self, query: &HistoryQuery) -> StoreResult<HistoryRows>;
    /// The states of the configurations of the scope's clusters whose keys are in `[first, last]`, in cluster key
    /// and name order.
    async fn configuration_states(
        &self,
        scope: &ClusterSet,
        first: &str,
        last: &str,
    ) -> StoreResult<Vec<ConfigurationState>>;
    /// The state of each configuration name of the cluster at `at`: its latest status entry at or before it (a
    /// `Restored` event is no state), for up to `limit` names after `after` in name order, or for the name `only`.
    /// Answers the names read (with or without an entry by then) and the entries; an entry `Deleted` says the name
    /// did not exist then.
    async fn states_as_of(
        &self,
        cluster_id: i64,
        at: DateTime<Utc>,
        only: Option<&str>,
        after: &str,
        limit: i64,
    ) -> StoreResult<(Vec<String>, Vec<StatusRecord>)>;
    /// Up to `limit` distinct commits that the configurations of the assignment (its ARM id) reported, in commit id
    /// order, each with the time of its first entry.
    async fn assignment_commits(&self, assignment: &str, limit: i64) -> StoreResult<Vec<(String, DateTime<Utc>)>>;
    /// What the history holds of the assignment's clusters at `commit`: per cluster and combination of states, the
    /// first time.
    async fn commit_sightings(&self, assignment: &str, commit: &str) -> StoreResult<Vec<Sighting>>;
    /// The id of the latest status transition (0 if none).
    async fn latest_status_event(&self) -> StoreResult<i64>;
    /// Status transitions after `after` in id order, of the scope or of every scope.
    async fn status_events(&self, scope: Option<&ClusterSet>, after: i64, limit: i64)
    -> StoreResult<Vec<StatusRecord>>;
    /// The fleet-wide counts the metrics export.
    async fn fleet_gauges(&self, heard_since: DateTime<Utc>) -> StoreResult<FleetGauges>;
    /// What the metrics of failing configurations by cluster group and policy assignment are counted from: reads
    /// the rollups, the failing configurations only (an index of their own) and the cluster groups.
    async fn failing_gauges(&self) -> StoreResult<FailingGauges>;
}

/// Git receivers, and requests to re-check sources at once (`receivers.rs`).
#[async_trait]
pub trait Receivers: Send + Sync + 'static {
    async fn get_git_receiver(&self, key: &str) -> StoreResult<Option<GitReceiverRecord>>;
    /// The receiver whose webhook path ends in `hook_id`.
    async fn git_receiver_by_hook(&self, hook_id: &str) -> StoreResult<Option<GitReceiverRecord>>;
    /// Up to `page.limit + 1` receivers in key order after `page.after`: at a subscription, its own and those of
    /// its resource groups.
    async fn list_git_receivers(&self, scope: &ClusterSet, page: &PageRequest) -> StoreResult<Vec<GitReceiverRecord>>;
    /// Inserts unless a receiver with the same key exists (`Conflict`).
    async fn insert_git_receiver(&self, receiver: &GitReceiverRecord) -> StoreResult<Write>;
    /// Replaces its spec, sealed secret, etag and system data if the stored etag is still `expected_etag`.
    async fn update_git_receiver(&self, receiver: &GitReceiverRecord, expected_etag: &str) -> StoreResult<Write>;
    async fn delete_git_receiver(&self, key: &str) -> StoreResult<bool>;
    /// The Git sources of the configurations (not being deleted) of the scope's clusters whose URL holds
    /// `repository_name` in any case: a superset of those reading the repository, which the caller compares in full.
    async fn git_sources(&self, scope: &ClusterSet, repository_name: &str) -> StoreResult<Vec<GitSource>>;
    /// Asks the target's configurations (not being deleted) to re-check their source at once: sets their
    /// `reconcile_requested_at` to `at` and bumps their clusters' revisions in one transaction, whose commit wakes
    /// the clusters' polls; with `push`, records it (with the count) as the receiver's (its id) last in the same
    /// transaction. Answers how many configurations were asked.
    async fn request_reconcile(
        &self,
        target: ReconcileTarget<'_>,
        at: DateTime<Utc>,
        push: Option<(i64, &LastPush)>,
    ) -> StoreResult<u64>;
}

/// What alerts need: receivers and rules as resources, and the outbox's steps (`store::alerts`).
#[async_trait]
pub trait Alerts: Send + Sync + 'static {
    async fn get_alert_receiver(&self, key: &str) -> StoreResult<Option<AlertReceiverRecord>>;
    /// Up to `page.limit + 1` receivers in key order after `page.after`: at a subscription, its own and those of
    /// its resource groups.
    async fn list_alert_receivers(
        &self,
        scope: &ClusterSet,
        page: &PageRequest,
    ) -> StoreResult<Vec<AlertReceiverRecord>>;
    /// Inserts unless a receiver with the key exists (`Conflict`).
    async fn insert_alert_receiver(&self, receiver: &AlertReceiverRecord) -> StoreResult<Write>;
    /// Replaces the settings and sealed credentials if the etag is still `expected_etag`; the token bucket keeps
    /// its tokens up to `receiver.tokens` (the new limit's capacity).
    async fn update_alert_receiver(&self, receiver: &AlertReceiverRecord, expected_etag: &str) -> StoreResult<Write>;
    /// Deletes the receiver and its deliveries; `InUse` while rules send to it.
    async fn delete_alert_receiver(&self, key: &str) -> StoreResult<GroupDelete>;
    async fn receiver_status(&self, receiver_id: i64) -> StoreResult<ReceiverStatus>;
    /// Up to `limit` of the receiver's deliveries, newest first, with ids below `before`.
    async fn list_deliveries(
        &self,
        receiver_id: i64,
        before: Option<i64>,
        limit: i64,
    ) -> StoreResult<Vec<DeliveryRecord>>;

    /// The rule with its receivers.
    async fn get_alert_rule(&self, key: &str) -> StoreResult<Option<AlertRuleRecord>>;
    /// Up to `page.limit + 1` rules in key order after `page.after` (their receivers not read).
    async fn list_alert_rules(&self, scope: &ClusterSet, page: &PageRequest) -> StoreResult<Vec<AlertRuleRecord>>;
    /// Inserts the rule and its receivers: `Conflict` when the key exists, `ParentMissing` when its group or a
    /// receiver is gone.
    async fn insert_alert_rule(&self, rule: &AlertRuleRecord) -> StoreResult<Write>;
    /// Replaces the rule and its receivers if the etag is still `expected_etag`.
    async fn update_alert_rule(&self, rule: &AlertRuleRecord, expected_etag: &str) -> StoreResult<Write>;
    async fn delete_alert_rule(&self, key: &str) -> StoreResult<bool>;

    /// Turns up to `limits.batch` queued events into messages for the receivers of the rules they match (held
    /// back by a rule's minimum interval, dropped past a receiver's backlog), and deletes them: one transaction.
    async fn dispatch_alerts(&self, now: DateTime<Utc>, limits: &DispatchLimits) -> StoreResult<Dispatched>;
    /// Sends what rules held back whose interval has passed, as one message per rule and subject.
    async fn flush_held_alerts(&self, now: DateTime<Utc>, limits: &DispatchLimits) -> StoreResult<Dispatched>;
    /// Receivers with deliveries due at `now` (or whose lease ended).
    async fn due_receivers(&self, now: DateTime<Utc>, limit: i64) -> StoreResult<Vec<i64>>;
    /// Leases up to `max` of the receiver's due deliveries until `lease_until`, as many as its rate limit allows
    /// now, counting an attempt on each. `None` when the receiver is gone or another replica is claiming for it;
    /// the flag says that the rate limit left due deliveries behind.
    async fn claim_deliveries(
        &self,
        receiver_id: i64,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        max: i64,
    ) -> StoreResult<Option<(AlertReceiverRecord, Vec<DeliveryRecord>, bool)>>;
    /// Records how leased deliveries ended, in one transaction: an attempted one's answer, or one released without
    /// an attempt (its lease's attempt given back). Answers, for each, whether its lease still held; one that was
    /// lost meanwhile (the delivery taken again) changes nothing.
    async fn finish_deliveries(&self, finished: &[FinishedDelivery]) -> StoreResult<Vec<bool>>;
    /// Takes a token of the receiver's rate limit and records a test message as being sent; `Err` with the wait
    /// until a token is back when there is none, `None` when the receiver is gone.
    async fn claim_test_delivery(
        &self,
        receiver_id: i64,
        message: &crate::alerts::model::Message,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> StoreResult<Option<Result<DeliveryRecord, std::time::Duration>>>;
    /// Drops finished deliveries from before `finished_before` and all but the last `keep_per_receiver` of each
    /// receiver, and the minimum-interval records of subjects quiet since `quiet_since`; answers how many rows.
    async fn prune_alerts(
        &self,
        finished_before: DateTime<Utc>,
        quiet_since: DateTime<Utc>,
        keep_per_receiver: i64,
    ) -> StoreResult<u64>;
    /// Events waiting for the dispatcher, and deliveries waiting to be sent.
    async fn alert_queues(&self) -> StoreResult<(i64, i64)>;
}

#[async_trait]
pub trait Store: Dashboards + Receivers + Alerts {
    /// Succeeds when the database answers and every migration this build knows is applied.
    async fn check_ready(&self) -> StoreResult<()>;

    /// Overwrites, where the engine can, what deleted rows leave behind in its files (SQLite: the write-ahead
    /// log's copies). PostgreSQL keeps dead rows until vacuum reuses their space; docs/SECURITY.md says what
    /// remains there and for how long.
    async fn scrub(&self) -> StoreResult<()>;

    /// Whether the database answers a new connection of its own, outside the pool: a pool that waits for a
    /// connection because every one is busy says nothing of whether the database is up.
    async fn reachable(&self) -> StoreResult<()>;

    /// Wakes this process's waiting polls for desired-state changes made by other processes sharing the
    /// database. Runs until dropped (returns at once where no other process can write).
    async fn follow_changes(&self, notifier: Arc<Notifier>) -> StoreResult<()>;

    /// Up to `page.limit + 1` subscriptions that hold a cluster, a cluster group or a policy assignment, in key
    /// order after `page.after`: each as (key, the spelling that sorts first among its resources).
    async fn subscriptions(&self, page: &PageRequest) -> StoreResult<Vec<(String, String)>>;

    async fn get_cluster(&self, key: &str) -> StoreResult<Option<ClusterRecord>>;

    /// The clusters registered under these keys, in no particular order (keys without one are left out).
    async fn clusters_by_key(&self, keys: &[String]) -> StoreResult<Vec<ClusterRecord>>;

    /// The revisions of these clusters, as (id, revision), in no particular order (ids without a cluster are left
    /// out).
    async fn revisions(&self, cluster_ids: &[i64]) -> StoreResult<Vec<(i64, i64)>>;
    /// Up to `page.limit + 1` clusters in key order after `page.after`.
    async fn list_clusters(&self, scope: &ClusterSet, page: &PageRequest) -> StoreResult<Vec<ClusterRecord>>;
    /// Inserts unless a cluster with the same key exists (`Conflict`), giving it the configurations of the policy
    /// assignments that match it, in the same transaction.
    async fn insert_cluster(&self, cluster: &ClusterRecord, managed: &ManagedWrite) -> StoreResult<Write>;
    /// Replaces the writable columns if the stored etag is still `expected_etag`. With `identity_changed` (the
    /// agent's key was replaced), the agent's encryption key is forgotten and every configuration with secrets
    /// sealed to it fails with that message, in the same transaction.
    /// Policy assignments follow the new tags in the same transaction.
    async fn update_cluster(
        &self,
        cluster: &ClusterRecord,
        expected_etag: &str,
        identity_changed: Option<&str>,
        managed: &ManagedWrite,
    ) -> StoreResult<Write>;
    /// Records the agent's encryption key; configurations with undelivered secrets sealed to another key fail
    /// with `message`. Answers those configurations.
    async fn set_agent_encryption_key(&self, cluster_id: i64, key: &str, message: &str) -> StoreResult<Vec<Expired>>;
    /// Deletes the cluster and its configurations; false if it did not exist.
    async fn delete_cluster(&self, key: &str) -> StoreResult<bool>;

    async fn get_configuration(&self, cluster_id: i64, name: &str) -> StoreResult<Option<ConfigurationRecord>>;
    /// The configuration `name` of the cluster with what its write is gated on, its cluster's extension of
    /// `flux_type` and whether the cluster holds any configuration, in one statement: a PUT's or PATCH's reads in one
    /// round trip instead of two or four, and on one snapshot.
    async fn configuration_for_write(
        &self,
        cluster_id: i64,
        name: &str,
        flux_type: &str,
    ) -> StoreResult<ConfigurationForWrite>;
    /// Up to `page.limit + 1` configurations in name order after `page.after`.
    async fn list_configurations(&self, cluster_id: i64, page: &PageRequest) -> StoreResult<Vec<ConfigurationRecord>>;
    /// Inserts the configuration with its sealed secrets and starts `operation`; a cluster without a Flux extension
    /// gets one (`flux`, Azure's defaults, the configuration's systemData) in the same transaction.
    async fn insert_configuration(
        &self,
        config: &ConfigurationRecord,
        secrets: &SecretsWrite,
        operation: &OperationRecord,
    ) -> StoreResult<Write>;
    /// Replaces the configuration if its etag is still `expected_etag`, writes its sealed secrets, and starts
    /// `operation`, superseding operations still running on it.
    async fn update_configuration(
        &self,
        config: &ConfigurationRecord,
        secrets: &SecretsWrite,
        expected_etag: &str,
        operation: &OperationRecord,
    ) -> StoreResult<Write>;
    /// Deletes the configuration at once, superseding its running operations; false if it did not exist.
    async fn delete_configuration(&self, cluster_id: i64, name: &str, resource_key: &str) -> StoreResult<bool>;

    async fn get_operation(&self, id: &str) -> StoreResult<Option<OperationRecord>>;

    async fn get_extension(&self, cluster_id: i64, name: &str) -> StoreResult<Option<ExtensionRecord>>;
    /// The cluster's extension of `extension_type` (lower-cased), whatever its name: a cluster holds one of a type.
    async fn extension_of_type(&self, cluster_id: i64, extension_type: &str) -> StoreResult<Option<ExtensionRecord>>;
    /// Up to `page.limit + 1` extensions in name order after `page.after`.
    async fn list_extensions(&self, cluster_id: i64, page: &PageRequest) -> StoreResult<Vec<ExtensionRecord>>;
    /// Inserts the extension and starts `operation`; `Conflict` when the cluster holds one of that name or type.
    async fn insert_extension(&self, extension: &ExtensionRecord, operation: &OperationRecord) -> StoreResult<Write>;
    /// Replaces the extension if its etag is still `expected_etag` and starts `operation`, superseding the
    /// operations still running on it.
    async fn update_extension(
        &self,
        extension: &ExtensionRecord,
        expected_etag: &str,
        operation: &OperationRecord,
    ) -> StoreResult<Write>;
    /// Deletes the extension at once, superseding its running operations; false if it did not exist.
    async fn delete_extension(&self, cluster_id: i64, name: &str, resource_key: &str) -> StoreResult<bool>;
    /// Applies a report about the extension `name` at `generation`, if that is still its generation, and ends the
    /// operation of that generation (filed under `resource_key`). Whatever the generation, `secrets_version`
    /// acknowledges the sealed protected settings up to it, which are deleted.
    #[allow(clippy::too_many_arguments)]
    async fn apply_extension_report(
        &self,
        cluster_id: i64,
        name: &str,
        generation: i64,
        resource_key: &str,
        write: &ExtensionReportWrite,
        secrets_version: Option<i64>,
        at: DateTime<Utc>,
    ) -> StoreResult<ReportOutcome>;

    async fn get_cluster_group(&self, key: &str) -> StoreResult<Option<ClusterGroupRecord>>;
    /// Up to `page.limit + 1` groups in key order after `page.after`: at a subscription, its own and those of its
    /// resource groups.
    async fn list_cluster_groups(&self, scope: &ClusterSet, page: &PageRequest)
    -> StoreResult<Vec<ClusterGroupRecord>>;
    /// Inserts unless a group with the same key exists (`Conflict`).
    async fn insert_cluster_group(&self, group: &ClusterGroupRecord) -> StoreResult<Write>;
    /// Replaces the selector if the stored etag is still `expected_etag`; the assignments that follow the group
    /// follow the new selector in the same transaction.
    async fn update_cluster_group(
        &self,
        group: &ClusterGroupRecord,
        expected_etag: &str,
        managed: &ManagedWrite,
    ) -> StoreResult<Write>;
    async fn delete_cluster_group(&self, key: &str) -> StoreResult<GroupDelete>;

    async fn get_policy_assignment(&self, key: &str) -> StoreResult<Option<PolicyAssignmentRecord>>;
    /// Up to `page.limit + 1` assignments in key order after `page.after`: at a subscription, its own and those of
    /// its resource groups.
    async fn list_policy_assignments(
        &self,
        scope: &ClusterSet,
        page: &PageRequest,
    ) -> StoreResult<Vec<PolicyAssignmentRecord>>;
    /// Inserts the assignment (`expected_etag` `None`) or replaces it, and brings every matching cluster's
    /// configuration in line with it, in one transaction.
    async fn write_policy_assignment(
        &self,
        assignment: &PolicyAssignmentRecord,
        expected_etag: Option<&str>,
        managed: &ManagedWrite,
    ) -> StoreResult<AssignmentWrite>;
    /// Deletes the assignment; its configurations are deleted or orphaned as its `onUnmatch` says. False if it did
    /// not exist.
    async fn delete_policy_assignment(&self, key: &str) -> StoreResult<bool>;
    /// Brings every assignment's configurations in line with it again, restoring those written by hand (drift)
    /// or deleted: what the sweeper runs on every replica. Answers how many assignments it went through.
    async fn reconcile_assignments(&self, managed: &ManagedWrite) -> StoreResult<usize>;
    /// Reconciles the assignments whose rollout is moving (a batch updating or soaking), so that a rollout moves on
    /// soon after its batch's reports, not at the next sweep. Answers how many there were.
    async fn advance_rollouts(&self, managed: &ManagedWrite) -> StoreResult<usize>;
    /// Pauses or resumes the rollout of the assignment `key`, as `by` asks (a resumed one moves on at once if its
    /// batch is done).
    /// `None`: no such assignment; `Err`: its rollout is in no state to be steered so. Answers the assignment as it
    /// stands after.
    async fn steer_rollout(
        &self,
        key: &str,
        steer: crate::fleet::assignments::rollout::Steer,
        by: &str,
        managed: &ManagedWrite,
    ) -> StoreResult<Option<Result<PolicyAssignmentRecord, crate::fleet::assignments::rollout::Refused>>>;
    /// The clusters the assignment (stored or proposed) matches now, in key order: the same rule its writes follow.
    async fn assignment_matches(&self, assignment: &PolicyAssignmentRecord) -> StoreResult<Vec<ClusterTags>>;
    /// The configurations named `name` on the clusters of the scope.
    async fn configurations_named(&self, scope: &ClusterSet, name: &str) -> StoreResult<Vec<ConfigurationRecord>>;
    /// The tags of every cluster in the scope, in key order.
    async fn cluster_tags(&self, scope: &ClusterSet) -> StoreResult<Vec<ClusterTags>>;
    /// How many configurations of each cluster in the scope are in each state (of those managed by the assignment
    /// `managed_by`, if given); split further by configuration name or managing assignment when asked.
    async fn state_counts(&self, scope: &ClusterSet, query: &StateCountQuery) -> StoreResult<Vec<StateCount>>;

    /// The cluster's revision (see `revisions`); `None` if the cluster is gone.
    async fn revision(&self, cluster_id: i64) -> StoreResult<Option<i64>> {
        Ok(self.revisions(&[cluster_id]).await?.pop().map(|(_, revision)| revision))
    }
    /// The desired states of these clusters, as (id, state), in no particular order (ids without a cluster are
    /// left out): each cluster's revision, every configuration and extension of it and their undelivered sealed
    /// secrets; the configurations are never older than the revision.
    async fn desired_states(&self, cluster_ids: &[i64]) -> StoreResult<Vec<(i64, DesiredRecords)>>;
    /// The cluster's desired state (see `desired_states`); revision 0 and nothing in it if the cluster is gone.
    async fn desired_state(&self, cluster_id: i64) -> StoreResult<DesiredRecords> {
        Ok(self
            .desired_states(&[cluster_id])
            .await?
            .pop()
            .map(|(_, state)| state)
            .unwrap_or_default())
    }
    /// Enforces the time limits as of `now`: deletes undelivered secrets past `secrets_expire_at` and fails
    /// generations past `generation_expires_at`, failing their configurations and operations. Safe to run on
    /// every replica at once: each row changes once.
    async fn expire(&self, now: DateTime<Utc>, messages: &ExpiryMessages) -> StoreResult<Vec<Expired>>;
    /// Fails the operations that wait for reconciliation (`waitForReconciliation`) past their time; answers how
    /// many.
    async fn time_out_reconciliations(&self, now: DateTime<Utc>) -> StoreResult<u64>;

    /// Applies the reports of many agents and records their heartbeats, in one transaction. Each report about the
    /// configuration `name` at `generation` applies if that is still its generation (else it is `Stale`, or
    /// `Unknown` without such a configuration) and ends the operation of that generation (filed under
    /// `resource_key`); whatever the generation, its `secrets_version` acknowledges the sealed secrets up to it,
    /// which are deleted. Each report's outcome is what it would be alone: they apply in the order given (a
    /// configuration reported twice is applied twice, the later last). Then each heartbeat records that its
    /// cluster's agent was heard from at `at`, with what it says of itself where it says it (a poll's says
    /// nothing), and answers the cluster's revision (`None`: the cluster is gone). All of it is committed, or none
    /// (an error).
    async fn apply_reports(
        &self,
        reports: &[ConfigurationReportWrite],
        heartbeats: &[HeartbeatWrite],
        at: DateTime<Utc>,
    ) -> StoreResult<BatchOutcome>;
}

/// Opens the store a database URL names and brings its schema up to date.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else {
        // only the scheme: the rest of a URL may hold a password
        let scheme = url.split(':').next().unwrap_or_default();
        Err(StoreError::UnsupportedUrl(scheme.to_owned()))
    }
}
