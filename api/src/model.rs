//! The records fluxplane keeps, as the store reads and writes them: clusters, configurations and their
//! operations and sealed secrets, cluster groups, policy assignments, and what the dashboards read. Plain data, with
//! the questions and answers of the store's calls; the rules that decide their fields live in `lifecycle` and the
//! services, the SQL in `store`.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fluxplane_agent_protocol::agent::{SealedSecrets, SecretsChange};
use fluxplane_agent_protocol::flux::{ComplianceState, FluxConfigurationSpec};

use crate::alerts::model::{Message, ReceiverSpec, RuleSpec};
use crate::arm::system_data::SystemData;
use crate::clusters::model::ClusterSpec;
use crate::error::ErrorDetail;
use crate::extensions::model::{ExtensionObserved, ExtensionSpec};
use crate::fleet::assignments::model::{AssignmentSpec, CompliantTemplate};
use crate::fleet::assignments::rollout::{RolloutPhase, RolloutState};
use crate::fleet::receivers::model::{GitReceiverSpec, LastPush, SourceRef};
use crate::fleet::selector::LabelSelector;
use crate::flux::model::Observed;
use crate::lifecycle::{DeliveryState, HistoryEvent, OperationState, ProvisioningState};

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
    /// When its source was last asked to be checked again at once (a Git push, a `reconcile` action): set by the
    /// store alone (`Store::request_reconcile`), never by a write, and no new generation.
    pub reconcile_requested_at: Option<DateTime<Utc>>,
}

/// What a configuration's write reads before it decides, in one statement and so on one snapshot
/// (`Store::configuration_for_write`): the configuration as stored, and what its cluster's Flux extension gates the
/// write on.
#[derive(Debug, Clone)]
pub struct ConfigurationForWrite {
    pub current: Option<ConfigurationRecord>,
    pub flux: FluxGate,
}

/// What a cluster's Flux extension gates a configuration's write on (`lifecycle::flux_extension_gate`).
#[derive(Debug, Clone)]
pub struct FluxGate {
    /// The cluster's Flux extension, by name and provisioning state; `None` when it has none.
    pub extension: Option<(String, ProvisioningState)>,
    /// Whether the cluster holds any configuration.
    pub has_configurations: bool,
}

/// A cluster extension (`Microsoft.KubernetesConfiguration/extensions`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExtensionRecord {
    pub id: i64,
    pub cluster_id: i64,
    pub name: String,
    /// Lower-cased: a cluster holds one extension of a type.
    pub extension_type: String,
    #[sqlx(json)]
    pub spec: ExtensionSpec,
    pub generation: i64,
    pub etag: String,
    #[sqlx(try_from = "String")]
    pub provisioning_state: ProvisioningState,
    #[sqlx(json)]
    pub observed: ExtensionObserved,
    #[sqlx(json)]
    pub system_data: SystemData,
    /// The generation `observed` describes; `None` until the agent reports.
    pub reported_generation: Option<i64>,
    /// The version of the protected settings the cluster should hold (the generation that last wrote them).
    pub secrets_version: Option<i64>,
    /// The protected settings awaiting the agent's acknowledgement, sealed to its key (at most one change: every
    /// write of them replaces the set).
    #[sqlx(json)]
    pub sealed: Vec<SealedSecrets>,
    /// When `sealed` must be gone (set while it holds any).
    pub secrets_expire_at: Option<DateTime<Utc>>,
    /// When the current generation fails unless the agent has picked it up.
    pub generation_expires_at: Option<DateTime<Utc>>,
    /// Why the control plane failed the extension (an expiry).
    pub failure: Option<String>,
}

/// What an agent's report does to an extension at the generation it names.
#[derive(Debug, Clone)]
pub enum ExtensionReportWrite {
    /// Installed, or not: the extension's state and its operation's end.
    Status {
        provisioning_state: ProvisioningState,
        observed: Box<ExtensionObserved>,
        operation_status: OperationState,
        operation_error: Option<ErrorDetail>,
    },
    /// Uninstalled after a delete.
    Removed,
}

/// The status of a long-running operation.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperationRecord {
    pub id: String,
    pub resource_key: String,
    pub resource_id: String,
    pub kind: String,
    pub generation: i64,
    #[sqlx(try_from = "String")]
    pub status: OperationState,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
    #[sqlx(json(nullable))]
    pub error: Option<ErrorDetail>,
    /// With `waitForReconciliation`: the operation succeeds only once the configuration is reported Compliant,
    /// and fails if it is not by then.
    pub reconcile_by: Option<DateTime<Utc>>,
}

/// What an agent's report does to a configuration at the generation it names.
#[derive(Debug, Clone)]
pub enum ReportWrite {
    /// The agent applied the generation, or failed to: the configuration's status and its operation's end.
    Status {
        provisioning_state: ProvisioningState,
        compliance_state: ComplianceState,
        observed: Box<Observed>,
        operation_status: OperationState,
        operation_error: Option<ErrorDetail>,
        /// What the agent restored in its cluster since its last report, each as the history's message.
        restored: Vec<String>,
    },
    /// The agent removed a configuration that is being deleted.
    Removed,
}

/// One configuration's report, as `Store::apply_reports` applies it.
#[derive(Debug, Clone)]
pub struct ConfigurationReportWrite {
    pub cluster_id: i64,
    pub name: String,
    pub generation: i64,
    /// What the configuration's operations are filed under.
    pub resource_key: String,
    pub write: ReportWrite,
    /// Acknowledges the sealed secrets up to this version, whatever the generation.
    pub secrets_version: Option<i64>,
}

/// An agent heard from, as a batch records it: what `Store::heartbeat` takes.
#[derive(Debug, Clone)]
pub struct HeartbeatWrite {
    pub cluster_id: i64,
    pub info: AgentInfo,
}

/// What a batch of reports came to: each report's outcome and each heartbeat's cluster revision (`None`: the
/// cluster is gone), in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub reports: Vec<ReportOutcome>,
    pub revisions: Vec<Option<i64>>,
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

/// A Git receiver: the repository whose pushes it hears of, from which host, at which webhook.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct GitReceiverRecord {
    pub id: i64,
    pub key: String,
    pub subscription_key: String,
    /// Empty for a receiver at subscription scope.
    pub resource_group_key: String,
    pub subscription: String,
    pub resource_group: Option<String>,
    pub name: String,
    #[sqlx(json)]
    pub spec: GitReceiverSpec,
    /// The random last segment of its webhook's URL; never changes.
    pub hook_id: String,
    /// Its secret, sealed by the vault for its key; never answered or logged.
    pub sealed_secret: String,
    pub etag: String,
    #[sqlx(json)]
    pub system_data: SystemData,
    #[sqlx(json(nullable))]
    pub last_push: Option<LastPush>,
}

/// A configuration's Git source, as a receiver looks configurations up by repository.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitSource {
    pub configuration_id: i64,
    pub url: String,
    pub reference: SourceRef,
}

/// Which configurations a request to re-check at once goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileTarget<'a> {
    /// These configurations (by id).
    Configurations(&'a [i64]),
    /// The configurations the policy assignment (its id) manages.
    ManagedBy(i64),
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
    /// What decides the generation (`Rendering::fingerprint`): the configuration each matching cluster gets, or,
    /// when the template reads the cluster, the template and its parameters.
    #[sqlx(json)]
    pub rendered: serde_json::Value,
    /// Bumped when `rendered` changes.
    pub generation: i64,
    pub etag: String,
    #[sqlx(json)]
    pub system_data: SystemData,
    /// Where the rollout of `generation` stands, if the assignment rolls out in batches.
    #[sqlx(json(nullable))]
    pub rollout_state: Option<RolloutState>,
    /// The last generation whose template was Compliant everywhere it was applied (`rollout::compliant_everywhere`).
    #[sqlx(json(nullable))]
    pub last_compliant: Option<CompliantTemplate>,
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

/// How the delete of something others may follow (a cluster group, an alert receiver) ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupDelete {
    Deleted,
    Missing,
    /// Others follow it: policy assignments or alert rules a group, alert rules a receiver.
    InUse,
}

/// A cluster's tags, for evaluating selectors.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClusterTags {
    pub id: i64,
    pub key: String,
    pub resource_group: String,
    pub name: String,
    pub location: String,
    #[sqlx(json)]
    pub tags: BTreeMap<String, String>,
    pub connectivity_status: String,
    pub last_connectivity_time: Option<DateTime<Utc>>,
}

impl ClusterTags {
    /// What an assignment's template may read of the cluster; `subscription` as the assignment spells it.
    pub fn facts<'a>(&'a self, subscription: &'a str) -> crate::fleet::template::ClusterFacts<'a> {
        crate::fleet::template::ClusterFacts {
            subscription,
            resource_group: &self.resource_group,
            name: &self.name,
            location: &self.location,
            tags: &self.tags,
        }
    }
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
    /// Split by the commit the agent last reported (`sourceSyncedCommitId`).
    pub by_commit: bool,
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
    /// The commit the agent last reported, when split by commit (`None` as well before a first sync).
    pub commit_id: Option<String>,
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
    #[sqlx(try_from = "String")]
    pub event: HistoryEvent,
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
    pub after_rollout: i64,
    pub limit: i64,
}

/// A page of history as the store reads it: at most `limit` of each kind, in id order.
#[derive(Debug, Default)]
pub struct HistoryRows {
    pub status: Vec<StatusRecord>,
    pub writes: Vec<WriteRecord>,
    /// An assignment's rollout transitions (other subjects have none).
    pub rollouts: Vec<RolloutRecord>,
}

/// One recorded transition of a policy assignment's rollout (`fleet::assignments::rollout::events`).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RolloutRecord {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// The assignment's ARM id.
    pub policy_assignment: String,
    pub event: String,
    pub generation: i64,
    pub batch: i64,
    pub batches: i64,
    pub message: String,
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
    /// The commit the agent last reported (`sourceSyncedCommitId`).
    pub commit_id: Option<String>,
}

/// What the fleet gauges show: instances by compliance and provisioning state, clusters by stored connectivity
/// status and whether their agent was heard since the offline cut-off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FleetGauges {
    pub instances: Vec<(String, String, i64)>,
    pub clusters: Vec<(String, bool, i64)>,
}

/// What the metrics of failing configurations are counted from (`fleet::failing`): per policy assignment (its ARM
/// id, '' for none) with configurations, how many fail, from the rollups; every cluster with failing
/// configurations, with how many; and every cluster group, to count those clusters into.
#[derive(Debug, Clone, Default)]
pub struct FailingGauges {
    pub by_assignment: Vec<(String, i64)>,
    pub clusters: Vec<FailingCluster>,
    pub groups: Vec<ClusterGroupRecord>,
}

/// A cluster with failing configurations: where it is, its tags, how many fail.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FailingCluster {
    pub subscription_key: String,
    pub resource_group_key: String,
    #[sqlx(json)]
    pub tags: BTreeMap<String, String>,
    pub failing: i64,
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
    /// The cluster's extensions, in name order.
    pub extensions: Vec<ExtensionRecord>,
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

impl PolicyAssignmentRecord {
    /// The assignment's ARM id, as configurations it manages name it.
    pub fn arm_id(&self) -> String {
        let scope = match &self.resource_group {
            None => format!("/subscriptions/{}", self.subscription),
            Some(group) => format!("/subscriptions/{}/resourceGroups/{group}", self.subscription),
        };
        format!(
            "{scope}/providers/{}/policyAssignments/{}",
            crate::arm::scope::PROVIDER,
            self.name
        )
    }

    /// The generation its clusters are meant to hold now: the assignment's own, or, once its rollout rolled back,
    /// the one it went back to.
    pub fn held_generation(&self) -> i64 {
        match &self.rollout_state {
            Some(s) if s.generation == self.generation && s.state == RolloutPhase::RolledBack => {
                s.rolled_back_to.unwrap_or(self.generation)
            }
            _ => self.generation,
        }
    }
}

/// An alert receiver (`Fluxplane.Fleet/alertReceivers`): where messages go. The URL and signing key are sealed with
/// the server's key (`vault`), in the places `sealed_url_place` and `sealed_signing_key_place` name.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertReceiverRecord {
    pub id: i64,
    pub key: String,
    pub subscription_key: String,
    /// Empty for a receiver at subscription scope.
    pub resource_group_key: String,
    pub subscription: String,
    pub resource_group: Option<String>,
    pub name: String,
    #[sqlx(json)]
    pub spec: ReceiverSpec,
    pub sealed_url: String,
    pub sealed_signing_key: Option<String>,
    pub etag: String,
    #[sqlx(json)]
    pub system_data: SystemData,
    /// The rate limit's token bucket: tokens left as of `tokens_at`.
    pub tokens: f64,
    pub tokens_at: DateTime<Utc>,
    /// Messages not queued because the receiver's backlog was full, and when the last was.
    pub dropped: i64,
    pub dropped_at: Option<DateTime<Utc>>,
}

impl AlertReceiverRecord {
    /// Where the URL is sealed: its place binds the sealed value to this receiver's row.
    pub fn url_place(key: &str) -> String {
        format!("alertReceivers/{key}#url")
    }

    pub fn signing_key_place(key: &str) -> String {
        format!("alertReceivers/{key}#signingKey")
    }

    /// The receiver's ARM id, as rules name it.
    pub fn arm_id(&self) -> String {
        fleet_id(
            &self.subscription,
            self.resource_group.as_deref(),
            "alertReceivers",
            &self.name,
        )
    }
}

/// An alert rule (`Fluxplane.Fleet/alertRules`), with the store ids of its receivers.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AlertRuleRecord {
    pub id: i64,
    pub key: String,
    pub subscription_key: String,
    pub resource_group_key: String,
    pub subscription: String,
    pub resource_group: Option<String>,
    pub name: String,
    #[sqlx(json)]
    pub spec: RuleSpec,
    /// The store id of the cluster group its `clusterGroupId` names.
    pub cluster_group_id: Option<i64>,
    pub etag: String,
    #[sqlx(json)]
    pub system_data: SystemData,
    /// Read from `alert_rule_receivers`, in id order.
    #[sqlx(skip)]
    pub receivers: Vec<i64>,
}

impl AlertRuleRecord {
    pub fn arm_id(&self) -> String {
        fleet_id(
            &self.subscription,
            self.resource_group.as_deref(),
            "alertRules",
            &self.name,
        )
    }
}

fn fleet_id(subscription: &str, resource_group: Option<&str>, type_: &str, name: &str) -> String {
    let scope = match resource_group {
        None => format!("/subscriptions/{subscription}"),
        Some(group) => format!("/subscriptions/{subscription}/resourceGroups/{group}"),
    };
    format!("{scope}/providers/{}/{type_}/{name}", crate::arm::scope::PROVIDER)
}

/// One message for one receiver: the outbox's row and the delivery log's.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryRecord {
    pub id: i64,
    pub delivery_id: String,
    pub receiver_id: i64,
    pub rule_id: Option<i64>,
    pub created_at: DateTime<Utc>,
    #[sqlx(try_from = "String")]
    pub state: DeliveryState,
    /// When it is next tried; while `Sending`, when its lease ends.
    pub due_at: DateTime<Utc>,
    pub attempts: i32,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub last_status_code: Option<i32>,
    /// What the last failed attempt met: the receiver's status or the connection's error, never its URL.
    pub last_error: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
    #[sqlx(json)]
    pub message: Message,
}

/// Where a delivery stands after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryOutcome {
    pub state: DeliveryState,
    /// The next attempt (Pending), or the attempt's time (Delivered, Failed).
    pub due_at: DateTime<Utc>,
    pub status_code: Option<i32>,
    pub error: Option<String>,
}

/// A leased delivery's end, to record: attempted at `attempted_at`, or released unattempted (`None`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedDelivery {
    pub id: i64,
    /// The attempts its lease counted: the lease still holds if they still are.
    pub attempts: i32,
    pub attempted_at: Option<DateTime<Utc>>,
    pub outcome: DeliveryOutcome,
}

/// A receiver's delivery state, as its reads and the web UI show it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceiverStatus {
    /// Messages waiting to be sent (or being sent).
    pub backlog: i64,
    pub last_delivered_at: Option<DateTime<Utc>>,
    /// The latest failed attempt: when, the receiver's status code if it answered, and the error.
    pub last_failure: Option<(DateTime<Utc>, Option<i32>, Option<String>)>,
    /// The earliest next attempt of the backlog.
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// The bounds the dispatcher keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DispatchLimits {
    /// Events (or held digests) taken per transaction.
    pub batch: i64,
    /// Messages a receiver may have waiting; what does not fit is dropped and counted on the receiver.
    pub backlog: i64,
}

/// What a dispatch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dispatched {
    /// Queued events (or held digests) taken.
    pub taken: usize,
    /// Messages queued for receivers.
    pub queued: usize,
    /// Alerts held back by a rule's minimum interval.
    pub held: usize,
    /// Messages dropped per receiver id (its backlog was full).
    pub dropped: Vec<(i64, u64)>,
}
