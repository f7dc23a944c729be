//! The connectedClusters resource (`Microsoft.Kubernetes/connectedClusters`): what users write, what is stored
//! and what the API answers.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::arm::system_data::SystemData;
use crate::error::{ApiError, Problems};
use crate::lifecycle::ConnectivityStatus;

/// ARM's limits on tags.
pub const MAX_TAGS: usize = 50;
const MAX_TAG_NAME: usize = 512;
const MAX_TAG_VALUE: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum IdentityType {
    None,
    SystemAssigned,
}

/// The cluster's managed identity as Azure models it; fluxplane keeps the type for compatibility.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterIdentity {
    #[serde(rename = "type")]
    pub type_: IdentityType,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ClusterKind {
    ProvisionedCluster,
    #[serde(rename = "AWS")]
    Aws,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum PrivateLinkState {
    Enabled,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum AzureHybridBenefit {
    True,
    False,
    NotApplicable,
}

/// The properties of a connected cluster that users write.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterProperties {
    /// The agent's public key, base64-encoded; agents authenticate with the matching private key.
    pub agent_public_key_certificate: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distribution_version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub infrastructure: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_link_state: Option<PrivateLinkState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_link_scope_resource_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_hybrid_benefit: Option<AzureHybridBenefit>,
    /// Azure profiles kept verbatim so that Azure's SDKs round-trip them; fluxplane does not act on them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub aad_profile: Option<serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub arc_agent_profile: Option<serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub security_profile: Option<serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub oidc_issuer_profile: Option<serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub gateway: Option<serde_json::Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub arc_agentry_configurations: Option<Vec<Value>>,
}

/// What is stored of a cluster besides its location and tags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterSpec {
    pub identity: Option<ClusterIdentity>,
    pub kind: Option<ClusterKind>,
    pub properties: ClusterProperties,
}

/// The body of a cluster PUT.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterRequest {
    pub location: String,
    #[serde(default)]
    pub tags: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub identity: Option<ClusterIdentity>,
    #[serde(default)]
    pub kind: Option<ClusterKind>,
    pub properties: ClusterProperties,
}

/// The properties a cluster PATCH may change.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterPatchProperties {
    pub distribution: Option<String>,
    pub distribution_version: Option<String>,
    pub azure_hybrid_benefit: Option<AzureHybridBenefit>,
    #[schema(value_type = Option<Object>)]
    pub gateway: Option<serde_json::Map<String, Value>>,
}

/// The body of a cluster PATCH: `tags` replace the cluster's tags as a whole; `properties` merge.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterPatch {
    pub tags: Option<BTreeMap<String, String>>,
    pub properties: Option<ClusterPatchProperties>,
}

/// Read-only top-level fields a client may echo back from a GET.
pub const READ_ONLY_FIELDS: &[&str] = &["id", "name", "type", "systemData"];
/// Read-only properties a client may echo back from a GET.
pub const READ_ONLY_PROPERTIES: &[&str] = &[
    "kubernetesVersion",
    "totalNodeCount",
    "totalCoreCount",
    "agentVersion",
    "provisioningState",
    "offering",
    "managedIdentityCertificateExpirationTime",
    "lastConnectivityTime",
    "connectivityStatus",
    "miscellaneousProperties",
];
/// Read-only fields of the identity.
pub const READ_ONLY_IDENTITY: &[&str] = &["principalId", "tenantId"];

/// A connected cluster as the API answers it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectedCluster {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub location: String,
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub identity: Option<ClusterIdentity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<ClusterKind>,
    pub system_data: SystemData,
    pub properties: ConnectedClusterProperties,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectedClusterProperties {
    #[serde(flatten)]
    #[schema(schema_with = crate::arm::schema::open_schema::<ClusterProperties>)]
    pub spec: ClusterProperties,
    #[schema(read_only)]
    pub provisioning_state: String,
    #[schema(read_only, value_type = ConnectivityStatus)]
    pub connectivity_status: String,
    #[schema(read_only)]
    pub last_connectivity_time: Option<DateTime<Utc>>,
    #[schema(read_only)]
    pub agent_version: Option<String>,
    #[schema(read_only)]
    pub kubernetes_version: Option<String>,
    #[schema(read_only)]
    pub total_node_count: Option<i64>,
}

/// Checks a location, the tags and the properties of a cluster, reporting every problem.
pub fn validate(
    location: &str,
    tags: &BTreeMap<String, String>,
    properties: &ClusterProperties,
) -> Result<(), ApiError> {
    let mut p = Problems::default();
    if location.trim().is_empty() || location.len() > 100 {
        p.add("location", "must be 1-100 characters");
    }
    if tags.len() > MAX_TAGS {
        p.add("tags", format!("at most {MAX_TAGS} tags are allowed"));
    }
    for (name, value) in tags {
        if name.is_empty() || name.len() > MAX_TAG_NAME || name.chars().any(|c| "<>%&\\?/".contains(c)) {
            p.add(
                format!("tags.{name}"),
                format!("tag names must be 1-{MAX_TAG_NAME} characters without < > % & \\ ? /"),
            );
        }
        if value.len() > MAX_TAG_VALUE {
            p.add(
                format!("tags.{name}"),
                format!("tag values must be at most {MAX_TAG_VALUE} characters"),
            );
        }
    }
    let key = properties.agent_public_key_certificate.trim();
    if key.is_empty() || STANDARD.decode(key).is_err() {
        p.add(
            "properties.agentPublicKeyCertificate",
            "must be the agent's public key, base64-encoded",
        );
    }
    p.into_result("cluster", None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn properties(key: &str) -> ClusterProperties {
        serde_json::from_value(serde_json::json!({ "agentPublicKeyCertificate": key })).unwrap()
    }

    #[test]
    fn tags_follow_arm_limits() {
        let mut tags = BTreeMap::new();
        tags.insert("env/bad".to_owned(), "x".to_owned());
        tags.insert("ok".to_owned(), "v".repeat(257));
        let err = validate("westeurope", &tags, &properties("a2V5")).unwrap_err();
        assert_eq!(err.detail().details.len(), 2);
    }

    #[test]
    fn the_agent_key_must_be_base64() {
        assert!(validate("westeurope", &BTreeMap::new(), &properties("a2V5")).is_ok());
        let err = validate("westeurope", &BTreeMap::new(), &properties("not base64!")).unwrap_err();
        assert_eq!(
            err.detail().target.as_deref(),
            Some("properties.agentPublicKeyCertificate")
        );
        assert!(validate(" ", &BTreeMap::new(), &properties("a2V5")).is_err());
    }
}
