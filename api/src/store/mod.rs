//! Persistence: one `Store` interface with a PostgreSQL and a SQLite implementation.
//!
//! The store offers conditional primitives (insert-if-absent, update-if-etag-matches) rather than business
//! operations, so that the optimistic-concurrency loop and every rule live once, above it, for both backends.
//! Both implementations share their SQL (see `sql.rs`); each adds only what its engine needs to connect.

mod dashboards;
mod fleet;
mod postgres;
mod sql;
mod sqlite;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use fluxplane_agent_protocol::agent::{SealedSecrets, SecretsChange};
use fluxplane_agent_protocol::flux::{ComplianceState, FluxConfigurationSpec};

use crate::arm::paging::PageRequest;
use crate::arm::system_data::SystemData;
use crate::clusters::model::ClusterSpec;
use crate::error::ErrorDetail;
use crate::fleet::assignments::model::{AssignmentSpec, RolloutState};
use crate::fleet::selector::LabelSelector;
use crate::flux::model::{Observed, ProvisioningState};
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
    clusters: dashboards::CLUSTERS_NOW,
    unheard: postgres::UNHEARD,
};

pub const SQLITE_SUMMARY: SummaryStatements = SummaryStatements {
    instances: dashboards::INSTANCES_NOW,
    clusters: dashboards::CLUSTERS_NOW,
    unheard: sqlite::UNHEARD,
};

/// How a conditional write ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Written,
    /// Another writer got there first: the row exists (insert) or its etag moved on (update).
    Conflict,
    /// The parent the row hangs under is gone.
    ParentMissing,
}

/// A registered cluster.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClusterRecord {
    pub id: i64,
    pub key: String,
    pub subscription_key: String,
    pub resource_group_key: String,
    pub subscription: String,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    #[sqlx(json)]
    pub tags: BTreeMap<String, String>,
    #[sqlx(json)]
    pub spec: ClusterSpec,
    pub connectivity_status: String,
    pub last_connectivity_time: Option<DateTime<Utc>>,
    pub agent_version: Option<String>,
    pub kubernetes_version: Option<String>,
    pub total_node_count: Option<i64>,
    pub etag: String,
    #[sqlx(json)]
    pub system_data: SystemData,
    /// Grows with every change to the cluster's desired state (kept by the database, see migration 0002).
    pub revision: i64,
    /// The X25519 public key (base64) the agent registered for sealing secrets to it.
    pub agent_encryption_key: Option<String>,
}

/// A Flux configuration of a cluster.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ConfigurationRecord {
    pub id: i64,
    pub cluster_id: i64,
    pub name: String,
    #[sqlx(json)]
    pub spec: FluxConfigurationSpec,
    /// The version of the secret set the cluster should hold (the generation that last wrote secrets).
    pub secrets_version: Option<i64>,
    pub generation: i64,
    pub etag: String,
    #[sqlx(try_from = "String")]
    pub provisioning_state: ProvisioningState,
    #[sqlx(try_from = "String")]
    pub compliance_state: ComplianceState,
    #[sqlx(json)]
    pub observed: Observed,
    #[sqlx(json)]
    pub system_data: SystemData,
    /// The generation `observed` describes; `None` until an agent reports.
    pub reported_generation: Option<i64>,
    /// When the stored sealed secrets must be gone (set while any await acknowledgement).
    pub secrets_expire_at: Option<DateTime<Utc>>,
    /// When the current generation fails unless its agent has picked it up.
    pub generation_expires_at: Option<DateTime<Utc>>,
    /// Why the control plane failed the configuration (an expiry), shown as its error message.
    pub failure: Option<String>,
    /// The ARM id of the policy assignment that manages it (written by the store only).
    pub managed_by_id: Option<String>,
    /// When it was last written by hand while an assignment managed it.
    pub drifted_at: Option<DateTime<Utc>>,
    /// The policy assignment that manages it, and the assignment generation it was written from (`None` after a
    /// write by hand: the assignment restores it).
    pub managed_by: Option<i64>,
    pub managed_generation: Option<i64>,
}

/// The status of a long-running operation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperationRecord {
    pub id: String,
    pub resource_key: String,
    pub resource_id: String,
    pub kind: String,
    pub generation: i64,
    pub status: String,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
    #[sqlx(json(nullable))]
    pub error: Option<ErrorDetail>,
}

/// What an agent's report does to a configuration at the generation it names.
#[derive(Debug, Clone)]
pub enum ReportWrite {
    /// The agent applied the generation, or failed to: the configuration's status and its operation's end.
    Status {
        provisioning_state: ProvisioningState,
        compliance_state: ComplianceState,
        observed: Box<Observed>,
        operation_status: &'static str,
        operation_error: Option<ErrorDetail>,
    },
    /// The agent removed a configuration that is being deleted.
    Removed,
}

/// How an agent's report was taken.
pub use fluxplane_agent_protocol::agent::ReportDisposition;

/// Facts an agent reports about itself and its cluster.
pub use fluxplane_agent_protocol::agent::AgentInfo;

/// A cluster group: a label selector over the tags of the clusters in its scope.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClusterGroupRecord {
    pub id: i64,
    pub key: String,
    pub subscription_key: String,
    /// Empty for a group at subscription scope.
    pub resource_group_key: String,
    pub subscription: String,
    pub resource_group: Option<String>,
    pub name: String,
    #[sqlx(json)]
    pub selector: LabelSelector,
    pub etag: String,
    #[sqlx(json)]
    pub system_data: SystemData,
}

/// A policy assignment: a configuration template for every cluster its selector (or group) matches.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PolicyAssignmentRecord {
    pub id: i64,
    pub key: String,
    pub subscription_key: String,
    /// Empty for an assignment at subscription scope.
    pub resource_group_key: String,
    pub subscription: String,
    pub resource_group: Option<String>,
    pub name: String,
    pub cluster_group_id: Option<i64>,
    pub configuration_name: String,
    #[sqlx(json)]
    pub spec: AssignmentSpec,
    /// The configuration each matching cluster gets.
    #[sqlx(json)]
    pub rendered: FluxConfigurationSpec,
    /// Bumped when `rendered` changes.
    pub generation: i64,
    pub etag: String,
    #[sqlx(json)]
    pub system_data: SystemData,
    /// Where the rollout of `generation` stands, if the assignment rolls out in batches.
    #[sqlx(json(nullable))]
    pub rollout_state: Option<RolloutState>,
}

/// How an assignment write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AssignmentWrite {
    Written,
    /// Another writer got there first (insert: the name exists; update: the etag moved on).
    Conflict,
    /// These other assignments would write the same configuration on some of the same clusters.
    Overlap(Vec<String>),
}

/// How a cluster group delete ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupDelete {
    Deleted,
    Missing,
    /// Policy assignments follow the group.
    InUse,
}

/// What writes made for policy assignments need to know beside the assignment.
#[derive(Debug, Clone, Default)]
pub struct ManagedWrite {
    /// When a generation written for an assignment fails unless its agent has picked it up.
    pub generation_expires_at: Option<DateTime<Utc>>,
}

/// A cluster's tags, for evaluating selectors.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClusterTags {
    pub id: i64,
    pub key: String,
    pub resource_group: String,
    pub name: String,
    #[sqlx(json)]
    pub tags: BTreeMap<String, String>,
    pub connectivity_status: String,
    pub last_connectivity_time: Option<DateTime<Utc>>,
}

/// A sealed secret change awaiting its agent's acknowledgement.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SealedSecretsRecord {
    pub configuration_id: i64,
    pub version: i64,
    pub change: String,
    pub base_version: Option<i64>,
    pub recipient: String,
    pub encapsulated_key: String,
    pub ciphertext: String,
}

impl SealedSecretsRecord {
    pub fn new(configuration_id: i64, sealed: &SealedSecrets) -> Self {
        Self {
            configuration_id,
            version: sealed.version,
            change: sealed.change.as_str().to_owned(),
            base_version: sealed.base_version,
            recipient: sealed.recipient.clone(),
            encapsulated_key: sealed.encapsulated_key.clone(),
            ciphertext: sealed.ciphertext.clone(),
        }
    }

    pub fn into_wire(self) -> SealedSecrets {
        SealedSecrets {
            version: self.version,
            change: if self.change == SecretsChange::Merge.as_str() {
                SecretsChange::Merge
            } else {
                SecretsChange::Replace
            },
            base_version: self.base_version,
            recipient: self.recipient,
            encapsulated_key: self.encapsulated_key,
            ciphertext: self.ciphertext,
        }
    }
}

/// What a configuration write does to its sealed secrets.
#[derive(Debug, Clone)]
pub enum SecretsWrite {
    /// Leaves them as they are (a PATCH that does not touch secrets).
    Keep,
    /// Removes every undelivered change (a PUT without secrets).
    Clear,
    /// Replaces every undelivered change with this one (a PUT with secrets).
    Replace(SealedSecrets),
    /// Adds this change after the undelivered ones (a PATCH of secrets).
    Merge(SealedSecrets),
}

/// What `state_counts` splits and narrows by.
#[derive(Debug, Clone, Default)]
pub struct StateCountQuery {
    pub managed_by: Option<i64>,
    pub by_name: bool,
    pub by_assignment: bool,
}

/// The number of a cluster's configurations in one combination of states.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StateCount {
    pub cluster_id: i64,
    /// The configuration name, or '' when not split by name.
    pub name: String,
    /// The managing assignment's ARM id, or '' when not split by assignment or unmanaged.
    pub managed_by_id: String,
    pub compliance_state: String,
    pub provisioning_state: String,
    /// Whether the agent has reported on the current generation.
    pub reported: bool,
    pub count: i64,
}

/// Configuration instances of a scope in one combination of states, as the rollups count them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct InstanceCount {
    /// The managing assignment's ARM id, '' for configurations written by hand.
    pub policy_assignment: String,
    pub compliance_state: String,
    pub provisioning_state: String,
    /// Whether the agent has reported on the current generation.
    pub reported: bool,
    pub instances: i64,
}

/// Clusters of a scope with at least one configuration whose `dimension` (`all`, `complianceState`,
/// `provisioningState`, `policyAssignment`, `freshness`) is `value`, as the rollups count them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ClusterCount {
    pub dimension: String,
    pub value: String,
    pub clusters: i64,
}

/// A scope's counts from the rollups, and the configurations of its clusters whose agent is not connected, read
/// from one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rollup {
    pub instances: Vec<InstanceCount>,
    pub clusters: Vec<ClusterCount>,
    pub unheard: Vec<UnheardCount>,
}

/// The configurations of one cluster not in the Connected status, in one combination of states.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct UnheardCount {
    pub cluster_id: i64,
    pub connectivity_status: String,
    pub last_connectivity_time: Option<DateTime<Utc>>,
    pub policy_assignment: String,
    pub compliance_state: String,
    pub provisioning_state: String,
    pub reported: bool,
    pub count: i64,
}

/// One recorded status transition of a configuration.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct StatusRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// "subscription/resourceGroup/cluster" as spelled.
    pub cluster_path: String,
    pub subscription_key: String,
    pub resource_group_key: String,
    pub name: String,
    /// The managing assignment's ARM id, or ''.
    pub policy_assignment: String,
    /// Created, Updated or Deleted.
    pub event: String,
    pub generation: i64,
    pub reported_generation: Option<i64>,
    pub compliance_state: String,
    pub provisioning_state: String,
    pub commit_id: Option<String>,
    pub message: Option<String>,
}

/// One accepted write through the ARM API.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct WriteRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    pub subscription_key: String,
    /// The lower-cased resource id.
    pub resource_key: String,
    pub resource_id: String,
    /// The caller's subject.
    pub actor: String,
    /// The HTTP method.
    pub action: String,
    pub status_code: i32,
    pub request_id: Option<String>,
}

/// Whose history to read.
#[derive(Debug, Clone)]
pub enum HistorySubject {
    /// A configuration of a cluster (in all its lives: deleted and created again).
    Configuration { cluster_id: i64, name: String },
    /// Every configuration of a cluster.
    Cluster { cluster_id: i64 },
    /// Every configuration an assignment manages, by the assignment's ARM id.
    Assignment { id: String },
}

/// A page of history: transitions of `subject` and writes to `resource_key` (and below it, if `below`), in
/// `[from, to)`, after the given ids.
#[derive(Debug, Clone)]
pub struct HistoryQuery {
    pub subject: HistorySubject,
    pub resource_key: String,
    pub below: bool,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub after_status: i64,
    pub after_write: i64,
    pub limit: i64,
}

/// A configuration's states, as the fleet's grid shows them.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ConfigurationState {
    pub cluster_id: i64,
    pub name: String,
    pub compliance_state: String,
    pub provisioning_state: String,
    pub reported: bool,
    /// The managing assignment's ARM id, or ''.
    pub policy_assignment: String,
}

/// What the fleet gauges show: instances by compliance and provisioning state, clusters by stored connectivity
/// status and whether their agent was heard since the offline cut-off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetGauges {
    pub instances: Vec<(String, String, i64)>,
    pub clusters: Vec<(String, bool, i64)>,
}

/// What became of a status report, and when the write it reports on was accepted if this is the first report on
/// it (the write's operation ends with it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReportOutcome {
    pub disposition: ReportDisposition,
    pub written_at: Option<DateTime<Utc>>,
}

/// The desired state of one cluster as stored.
#[derive(Debug, Clone, Default)]
pub struct DesiredRecords {
    pub revision: i64,
    /// In name order.
    pub configurations: Vec<ConfigurationRecord>,
    /// The undelivered secret changes of those configurations, in version order.
    pub sealed: Vec<SealedSecretsRecord>,
}

/// A configuration the control plane failed itself, with the operation it ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expired {
    pub cluster_id: i64,
    pub name: String,
    pub generation: i64,
    /// True when its undelivered secrets were removed; false when its generation was not picked up in time.
    pub secrets: bool,
}

/// The messages a configuration the control plane failed shows.
#[derive(Debug, Clone)]
pub struct ExpiryMessages {
    /// Undelivered secrets reached their time to live.
    pub secrets: String,
    /// The agent did not pick the generation up in time.
    pub pending: String,
    /// The agent's keys changed while secrets sealed to the old ones were undelivered.
    pub rotated: String,
}

/// Which clusters a list covers.
#[derive(Debug, Clone)]
pub enum ClusterScope {
    Subscription {
        subscription_key: String,
    },
    ResourceGroup {
        subscription_key: String,
        resource_group_key: String,
    },
}

impl ClusterScope {
    /// The subscription key and the resource group key, empty at subscription scope.
    pub fn keys(&self) -> (&str, &str) {
        match self {
            Self::Subscription { subscription_key } => (subscription_key, ""),
            Self::ResourceGroup {
                subscription_key,
                resource_group_key,
            } => (subscription_key, resource_group_key),
        }
    }
}

/// What the dashboards read: the summary's rollups, the history and the fleet-wide gauges.
#[async_trait]
pub trait Dashboards: Send + Sync + 'static {
    /// The scope's counts from the rollups, current or as of a past time (history retention permitting), and with
    /// `with_unheard` the configurations, by cluster and states, of its clusters not in the Connected status; all
    /// from one snapshot, so that they add up.
    async fn rollup(
        &self,
        scope: &ClusterScope,
        as_of: Option<DateTime<Utc>>,
        with_unheard: bool,
    ) -> StoreResult<Rollup>;
    /// Marks the Connected clusters not heard from since `heard_before` Offline; answers how many.
    async fn mark_offline(&self, heard_before: DateTime<Utc>) -> StoreResult<u64>;
    /// Folds the deltas written since the last compaction into the rollups; answers how many it folded.
    async fn compact_rollups(&self) -> StoreResult<u64>;
    /// Drops the history (and the folded deltas) from before `before`; answers how many rows went.
    async fn prune_history(&self, before: DateTime<Utc>) -> StoreResult<u64>;
    /// Appends accepted writes to the history, in one statement (their `id` and `at` are the store's).
    async fn record_writes(&self, writes: &[WriteRecord]) -> StoreResult<()>;
    /// A page of status transitions and writes: at most `limit` of each, in id order.
    async fn history(&self, query: &HistoryQuery) -> StoreResult<(Vec<StatusRecord>, Vec<WriteRecord>)>;
    /// The states of the configurations of the scope's clusters whose keys are in `[first, last]`, in cluster key
    /// and name order.
    async fn configuration_states(
        &self,
        scope: &ClusterScope,
        first: &str,
        last: &str,
    ) -> StoreResult<Vec<ConfigurationState>>;
    /// The id of the latest status transition (0 if none).
    async fn latest_status_event(&self) -> StoreResult<i64>;
    /// Status transitions after `after` in id order, of the scope or of every scope.
    async fn status_events(
        &self,
        scope: Option<&ClusterScope>,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<StatusRecord>>;
    /// The fleet-wide counts the metrics export.
    async fn fleet_gauges(&self, heard_since: DateTime<Utc>) -> StoreResult<FleetGauges>;
}

#[async_trait]
pub trait Store: Dashboards {
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

    async fn get_cluster(&self, key: &str) -> StoreResult<Option<ClusterRecord>>;
    /// Up to `page.limit + 1` clusters in key order after `page.after`.
    async fn list_clusters(&self, scope: &ClusterScope, page: &PageRequest) -> StoreResult<Vec<ClusterRecord>>;
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
    /// Up to `page.limit + 1` configurations in name order after `page.after`.
    async fn list_configurations(&self, cluster_id: i64, page: &PageRequest) -> StoreResult<Vec<ConfigurationRecord>>;
    /// Inserts the configuration with its sealed secrets and starts `operation`.
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

    async fn get_cluster_group(&self, key: &str) -> StoreResult<Option<ClusterGroupRecord>>;
    /// Up to `page.limit + 1` groups in key order after `page.after`: at a subscription, its own and those of its
    /// resource groups.
    async fn list_cluster_groups(
        &self,
        scope: &ClusterScope,
        page: &PageRequest,
    ) -> StoreResult<Vec<ClusterGroupRecord>>;
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
        scope: &ClusterScope,
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
    /// The clusters the assignment (stored or proposed) matches now, in key order: the same rule its writes follow.
    async fn assignment_matches(&self, assignment: &PolicyAssignmentRecord) -> StoreResult<Vec<ClusterTags>>;
    /// The configurations named `name` on the clusters of the scope.
    async fn configurations_named(&self, scope: &ClusterScope, name: &str) -> StoreResult<Vec<ConfigurationRecord>>;
    /// The tags of every cluster in the scope, in key order.
    async fn cluster_tags(&self, scope: &ClusterScope) -> StoreResult<Vec<ClusterTags>>;
    /// How many configurations of each cluster in the scope are in each state (of those managed by the assignment
    /// `managed_by`, if given); split further by configuration name or managing assignment when asked.
    async fn state_counts(&self, scope: &ClusterScope, query: &StateCountQuery) -> StoreResult<Vec<StateCount>>;

    /// Records that the cluster's agent was heard from at `at` (with what it says of itself, if anything) and
    /// answers the cluster's revision; `None` if the cluster is gone.
    async fn heartbeat(&self, cluster_id: i64, at: DateTime<Utc>, info: Option<&AgentInfo>)
    -> StoreResult<Option<i64>>;
    /// The cluster's revision; `None` if the cluster is gone.
    async fn revision(&self, cluster_id: i64) -> StoreResult<Option<i64>>;
    /// The cluster's revision, every configuration of it and their undelivered sealed secrets; the
    /// configurations are never older than the revision.
    async fn desired_state(&self, cluster_id: i64) -> StoreResult<DesiredRecords>;
    /// Enforces the time limits as of `now`: deletes undelivered secrets past `secrets_expire_at` and fails
    /// generations past `generation_expires_at`, failing their configurations and operations. Safe to run on
    /// every replica at once: each row changes once.
    async fn expire(&self, now: DateTime<Utc>, messages: &ExpiryMessages) -> StoreResult<Vec<Expired>>;

    /// Applies a report about the configuration `name` at `generation`, if that is still its generation, and ends
    /// the operation of that generation. `resource_key` names the configuration's operations. Whatever the
    /// generation, `secrets_version` acknowledges the sealed secrets up to it, which are deleted.
    #[allow(clippy::too_many_arguments)]
    async fn apply_report(
        &self,
        cluster_id: i64,
        name: &str,
        generation: i64,
        resource_key: &str,
        write: &ReportWrite,
        secrets_version: Option<i64>,
        at: DateTime<Utc>,
    ) -> StoreResult<ReportOutcome>;
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
