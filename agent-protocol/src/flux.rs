//! The Flux configuration model, as api-version 2025-04-01 of `Microsoft.KubernetesConfiguration/fluxConfigurations`
//! defines it: what users write through the ARM API and what agents receive as desired state.
//!
//! Every field is optional on the wire because Azure's SDKs send only what the caller set; the control plane
//! applies defaults and validation before anything is stored. Secret fields are write-only: they deserialise from
//! requests but are never serialised, so no response and no stored document can carry them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

/// A write-only secret value. Its `Debug` output is redacted so that it cannot reach a log line by accident.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(ToSchema), schema(value_type = String, format = Password))]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; callers must keep it out of responses and logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

/// Serialising a secret is always an error: secrets are write-only, and the fields holding them are skipped
/// (`write_only`), so this only fires if a new path tries to send one out.
impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, _serializer: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("secrets are write-only and never serialised"))
    }
}

/// `skip_serializing_if` predicate of every secret field: always skip. (A plain `skip_serializing` would also drop
/// the field from the OpenAPI schema, where it must appear as `writeOnly`.)
fn write_only<T>(_: &T) -> bool {
    true
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_never_serialised() {
        let spec: FluxConfigurationSpec = serde_json::from_value(serde_json::json!({
            "configurationProtectedSettings": {"sshPrivateKey": "hunter2"},
            "ociRepository": {"tlsConfig": {"privateKey": "hunter3"}}
        }))
        .unwrap();
        let text = serde_json::to_string(&spec).unwrap();
        assert!(!text.contains("hunter"), "{text}");
        assert!(serde_json::to_string(&Secret::new("hunter4")).is_err());
        assert!(!format!("{spec:?}").contains("hunter"));
    }
}

/// Whether the configuration's objects are cluster-wide or confined to its namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum ScopeType {
    Cluster,
    Namespace,
}

/// Which source block of the configuration is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum SourceKind {
    GitRepository,
    Bucket,
    AzureBlob,
    #[serde(rename = "OCIRepository")]
    OciRepository,
}

impl SourceKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::GitRepository => "GitRepository",
            SourceKind::Bucket => "Bucket",
            SourceKind::AzureBlob => "AzureBlob",
            SourceKind::OciRepository => "OCIRepository",
        }
    }
}

/// The git provider Flux authenticates against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum ProviderType {
    Azure,
    GitHub,
    Generic,
}

/// What Flux does with the selected OCI layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum OperationType {
    Extract,
    Copy,
}

/// Compliance of a configuration or of one of its objects, as Flux's Ready conditions report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum ComplianceState {
    Compliant,
    #[serde(rename = "Non-Compliant")]
    NonCompliant,
    Pending,
    Suspended,
    Unknown,
}

impl ComplianceState {
    pub const ALL: [ComplianceState; 5] = [
        ComplianceState::Compliant,
        ComplianceState::NonCompliant,
        ComplianceState::Pending,
        ComplianceState::Suspended,
        ComplianceState::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ComplianceState::Compliant => "Compliant",
            ComplianceState::NonCompliant => "Non-Compliant",
            ComplianceState::Pending => "Pending",
            ComplianceState::Suspended => "Suspended",
            ComplianceState::Unknown => "Unknown",
        }
    }
}

impl std::str::FromStr for ComplianceState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == s)
            .ok_or_else(|| format!("unknown compliance state '{s}'"))
    }
}

impl TryFrom<String> for ComplianceState {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

/// The desired state of a Flux configuration: the `properties` a user writes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct FluxConfigurationSpec {
    /// `cluster` (default) or `namespace`. Cannot change after creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeType>,
    /// Namespace the configuration is installed in (default `default`). Cannot change after creation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Source kind (default `GitRepository`); exactly the matching source block must be present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_kind: Option<SourceKind>,
    /// Whether reconciliation is suspended (default false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suspend: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub git_repository: Option<GitRepository>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<Bucket>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub azure_blob: Option<AzureBlob>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oci_repository: Option<OciRepository>,
    /// Kustomizations keyed by name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kustomizations: Option<BTreeMap<String, Kustomization>>,
    /// Write-only settings such as `sshPrivateKey`, `httpsKey` and `bucketSecretKey` (base64).
    #[serde(skip_serializing_if = "write_only")]
    #[cfg_attr(feature = "openapi", schema(schema_with = protected_settings_schema))]
    pub configuration_protected_settings: Option<BTreeMap<String, Secret>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_for_reconciliation: Option<bool>,
    /// ISO 8601 duration to wait for reconciliation, e.g. `PT30M`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconciliation_wait_duration: Option<String>,
}

/// `configurationProtectedSettings` in the OpenAPI document: a write-only map of strings. (utoipa's own
/// `write_only` is dropped on map fields.)
#[cfg(feature = "openapi")]
fn protected_settings_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .additional_properties(Some(ObjectBuilder::new().schema_type(Type::String)))
        .write_only(true)
        .description(Some(
            "Write-only settings such as `sshPrivateKey`, `httpsKey` and `bucketSecretKey` (base64).",
        ))
        .build()
}

/// A Flux `GitRepository` source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct GitRepository {
    /// `http://`, `https://` or `ssh://` URL of the repository.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_interval_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository_ref: Option<RepositoryRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_known_hosts: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub https_user: Option<String>,
    #[serde(rename = "httpsCACert", skip_serializing_if = "Option::is_none")]
    pub https_ca_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_auth_ref: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<ProviderType>,
}

/// Which revision of a git repository to follow; at least one field is required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct RepositoryRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub branch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

/// A Flux `Bucket` source (S3-compatible).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Bucket {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_interval_in_seconds: Option<i64>,
    /// The access key id; not secret (its secret half is `bucketSecretKey` in the protected settings).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_auth_ref: Option<String>,
}

/// A Flux `Bucket` source backed by an Azure Blob container.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AzureBlob {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_interval_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_principal: Option<ServicePrincipal>,
    #[serde(skip_serializing_if = "write_only")]
    #[cfg_attr(feature = "openapi", schema(write_only, value_type = Option<String>, format = Password))]
    pub account_key: Option<Secret>,
    #[serde(skip_serializing_if = "write_only")]
    #[cfg_attr(feature = "openapi", schema(write_only, value_type = Option<String>, format = Password))]
    pub sas_token: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_identity: Option<ManagedIdentity>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_auth_ref: Option<String>,
}

/// Service principal credentials for Azure Blob.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ServicePrincipal {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    #[serde(skip_serializing_if = "write_only")]
    #[cfg_attr(feature = "openapi", schema(write_only, value_type = Option<String>, format = Password))]
    pub client_secret: Option<Secret>,
    #[serde(skip_serializing_if = "write_only")]
    #[cfg_attr(feature = "openapi", schema(write_only, value_type = Option<String>, format = Password))]
    pub client_certificate: Option<Secret>,
    #[serde(skip_serializing_if = "write_only")]
    #[cfg_attr(feature = "openapi", schema(write_only, value_type = Option<String>, format = Password))]
    pub client_certificate_password: Option<Secret>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_certificate_send_chain: Option<bool>,
}

/// A managed identity for Azure Blob.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ManagedIdentity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
}

/// A Flux `OCIRepository` source.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OciRepository {
    /// `oci://` URL of the artifact.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_interval_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository_ref: Option<OciRepositoryRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_selector: Option<LayerSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verify: Option<Verify>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub insecure: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_workload_identity: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local_auth_ref: Option<String>,
}

/// Which artifact revision of an OCI repository to follow.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct OciRepositoryRef {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semver: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Which layer of an OCI artifact Flux uses, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct LayerSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<OperationType>,
}

/// Signature verification of OCI artifacts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Verify {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verification_config: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub match_oidc_identity: Option<Vec<MatchOidcIdentity>>,
}

/// A keyless-signing identity an OCI artifact's signature must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct MatchOidcIdentity {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// TLS client material for an OCI registry; every field is secret.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct TlsConfig {
    #[serde(skip_serializing_if = "write_only")]
    #[cfg_attr(feature = "openapi", schema(write_only, value_type = Option<String>, format = Password))]
    pub client_certificate: Option<Secret>,
    #[serde(skip_serializing_if = "write_only")]
    #[cfg_attr(feature = "openapi", schema(write_only, value_type = Option<String>, format = Password))]
    pub private_key: Option<Secret>,
    #[serde(skip_serializing_if = "write_only")]
    #[cfg_attr(feature = "openapi", schema(write_only, value_type = Option<String>, format = Password))]
    pub ca_certificate: Option<Secret>,
}

/// One Flux `Kustomization` of a configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Kustomization {
    /// Read-only: the key of this kustomization in the map.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(read_only))]
    pub name: Option<String>,
    /// Path in the source to reconcile (default: the root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Names of kustomizations of this configuration that must be ready first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub depends_on: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sync_interval_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_interval_in_seconds: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub post_build: Option<PostBuild>,
}

/// Variable substitution applied after `kustomize build`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct PostBuild {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substitute: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub substitute_from: Option<Vec<SubstituteFrom>>,
}

/// A ConfigMap or Secret whose data feeds post-build substitution.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SubstituteFrom {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub optional: Option<bool>,
}

/// The observed state of one Flux object in the cluster.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ObjectStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compliance_state: Option<ComplianceState>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_by: Option<ObjectReference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_conditions: Option<Vec<ObjectStatusCondition>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helm_release_properties: Option<HelmReleaseProperties>,
}

/// A reference to a Kubernetes object by name and namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ObjectReference {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// A Kubernetes status condition of a Flux object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ObjectStatusCondition {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// Helm release details of a `HelmRelease` object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct HelmReleaseProperties {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_revision_applied: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helm_chart_ref: Option<ObjectReference>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub install_failure_count: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub upgrade_failure_count: Option<i64>,
}
