//! The fluxConfigurations resource as the API answers it: the stored desired state plus the state agents report.

use chrono::{DateTime, Utc};
use fluxplane_agent_protocol::flux::{ComplianceState, FluxConfigurationSpec, ObjectStatus};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::arm::system_data::SystemData;
use crate::lifecycle::ProvisioningState;

/// How current a configuration's reported status is, kept apart from what the status says: an offline cluster's
/// configuration may have last reported `Compliant`, which is then no longer news.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum StatusFreshness {
    /// The agent is connected and has reported on the current generation.
    Fresh,
    /// The agent is connected but has not yet reported on the current generation.
    Stale,
    /// The cluster's agent has not been heard from within the server's `--offline-after`, or never.
    Offline,
}

/// What agents last reported about a configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Observed {
    #[serde(default)]
    pub statuses: Vec<ObjectStatus>,
    pub source_synced_commit_id: Option<String>,
    pub source_updated_at: Option<DateTime<Utc>>,
    pub status_updated_at: Option<DateTime<Utc>>,
    pub repository_public_key: Option<String>,
    pub error_message: Option<String>,
}

/// A Flux configuration (`Microsoft.KubernetesConfiguration/fluxConfigurations`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FluxConfiguration {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub system_data: SystemData,
    pub properties: FluxConfigurationProperties,
}

/// The properties of a Flux configuration: the desired state with defaults applied, and the observed state.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct FluxConfigurationProperties {
    #[serde(flatten)]
    #[schema(schema_with = crate::arm::schema::open_schema::<FluxConfigurationSpec>)]
    pub spec: FluxConfigurationSpec,
    /// Status of each Flux object the configuration created in the cluster.
    #[schema(read_only)]
    pub statuses: Vec<ObjectStatus>,
    #[schema(read_only)]
    pub repository_public_key: Option<String>,
    /// Branch and commit last synced from the source, e.g. `main@sha1:...`.
    #[schema(read_only)]
    pub source_synced_commit_id: Option<String>,
    #[schema(read_only)]
    pub source_updated_at: Option<DateTime<Utc>>,
    #[schema(read_only)]
    pub status_updated_at: Option<DateTime<Utc>>,
    #[schema(read_only)]
    pub compliance_state: ComplianceState,
    #[schema(read_only)]
    pub provisioning_state: ProvisioningState,
    #[schema(read_only)]
    pub error_message: Option<String>,
    /// fluxplane's addition: how current the status above is (see `statusUpdatedAt` for when it was reported).
    #[schema(read_only)]
    pub status_freshness: StatusFreshness,
    /// fluxplane's addition: the policy assignment (ARM id) that manages this configuration, if one does.
    #[schema(read_only)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<String>,
}

/// Read-only properties a client may send back from a GET; they are ignored on writes, as ARM does.
pub const READ_ONLY_PROPERTIES: &[&str] = &[
    "statuses",
    "repositoryPublicKey",
    "sourceSyncedCommitId",
    "sourceUpdatedAt",
    "statusUpdatedAt",
    "complianceState",
    "provisioningState",
    "errorMessage",
    "statusFreshness",
    "managedBy",
];

/// The status of a long-running operation, named by the `Azure-AsyncOperation` header.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationStatus {
    pub id: String,
    pub name: String,
    /// `InProgress`, `Succeeded`, `Failed` or `Canceled`.
    pub status: String,
    pub start_time: DateTime<Utc>,
    pub end_time: Option<DateTime<Utc>>,
    pub error: Option<crate::error::ErrorDetail>,
}
