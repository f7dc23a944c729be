//! The agent API, version 1: `/agent/v1/...`.
//!
//! - `GET /agent/v1/desired-state?after={revision}&wait={seconds}` answers the full desired state of the calling
//!   agent's cluster once its revision is past `after`, or when `wait` runs out (then with the same revision). The
//!   answer's `ETag` is its revision, quoted. An agent that holds the desired state of a revision names it in
//!   `If-None-Match` (`"{revision}"`): while the revision is still that one, the answer is `304 Not Modified`
//!   without a body, and the agent keeps what it holds. Agents that do not send it get the full answer every time.
//! - `POST /agent/v1/status` takes a batch of per-configuration reports; each is keyed by configuration name and
//!   the generation it describes, so replaying a report changes nothing and an older one never overwrites a newer.
//!
//! Every request carries `Authorization: Bearer <token>`, a JWT the agent signs with its own private key (EdDSA),
//! with the cluster's ARM id as `sub`, `aud` = [`AGENT_AUDIENCE`] and a lifetime of at most
//! [`MAX_TOKEN_LIFETIME_SECONDS`]. Every request is also a heartbeat.

use serde::{Deserialize, Serialize};

#[cfg(feature = "openapi")]
use utoipa::ToSchema;

use crate::flux::{ComplianceState, FluxConfigurationSpec, ObjectStatus};

/// Path prefix of this version of the agent API.
pub const PREFIX: &str = "/agent/v1";
/// Where agents long-poll their desired state: the one request that lasts as long as the agent asks to wait.
pub const DESIRED_STATE_PATH: &str = "/agent/v1/desired-state";
/// The `aud` claim of agent tokens; user tokens never carry it.
pub const AGENT_AUDIENCE: &str = "fluxplane-agent";
/// Longest lifetime (`exp - iat`) the control plane accepts for an agent token.
pub const MAX_TOKEN_LIFETIME_SECONDS: i64 = 300;
/// Longest long-poll wait the control plane grants.
pub const MAX_WAIT_SECONDS: u64 = 60;

/// The claims of an agent token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentClaims {
    /// The cluster's ARM id (`/subscriptions/.../connectedClusters/{name}`).
    pub sub: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// Facts about the agent and its cluster, sent with every status report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct AgentInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_node_count: Option<i64>,
}

/// Everything the cluster should hold: the answer to a desired-state poll.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DesiredState {
    /// The cluster's ARM id.
    pub cluster_id: String,
    /// Grows with every change to the cluster's configurations; poll with `after` set to it.
    pub revision: i64,
    /// Every configuration of the cluster, those being deleted included, in name order.
    pub configurations: Vec<DesiredConfiguration>,
    /// The cluster's extensions (`Microsoft.KubernetesConfiguration/extensions`; only `microsoft.flux` is served),
    /// those being deleted included, in name order. Absent from answers of servers that predate them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<DesiredExtension>,
}

/// One cluster extension as the cluster should hold it. The agent reports on each generation
/// ([`ExtensionReport`]): its first report on a generation ends the write's operation.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DesiredExtension {
    pub name: String,
    /// Bumped by every write; reports name the generation they describe.
    pub generation: i64,
    /// The extension is being deleted: uninstall it, then report `Removed`.
    #[serde(default)]
    pub deleting: bool,
    /// Lower-cased, e.g. `microsoft.flux`.
    pub extension_type: String,
    pub auto_upgrade_minor_version: bool,
    pub release_train: String,
    /// The version pinned, if any (only with `autoUpgradeMinorVersion` false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The namespace the extension is installed in (cluster scope).
    pub release_namespace: String,
    #[serde(default)]
    pub configuration_settings: std::collections::BTreeMap<String, String>,
    /// The version of the protected settings the cluster should hold (the generation that last wrote them); absent
    /// when the extension has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_version: Option<i64>,
    /// The protected settings not acknowledged yet, sealed as a configuration's are (each a `Replace` of the whole
    /// set, `{"configurationProtectedSettings": {...}}`), with `extensions/{name}` in place of the configuration's
    /// name in the associated data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed_secrets: Vec<SealedSecrets>,
}

/// What the associated data of an extension's sealed settings names in place of a configuration: configuration
/// names cannot hold `/`, so the two never collide.
pub fn extension_sealing_name(extension: &str) -> String {
    format!("extensions/{extension}")
}

/// One configuration as the cluster should hold it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct DesiredConfiguration {
    pub name: String,
    /// Bumped by every write; reports name the generation they describe.
    pub generation: i64,
    /// The configuration is being deleted: remove its objects, then report `removed`.
    #[serde(default)]
    pub deleting: bool,
    /// The desired state with every default filled in (secret fields are never part of it: see `sealedSecrets`).
    pub spec: FluxConfigurationSpec,
    /// The version of the secret set the cluster should hold (the generation that last wrote secrets); absent when
    /// the configuration has none, and then the cluster's copy is removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_version: Option<i64>,
    /// Secret changes the cluster has not acknowledged yet, oldest first, each sealed to the agent's encryption
    /// key. Applied in order on top of the cluster's copy, they bring it to `secretsVersion`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sealed_secrets: Vec<SealedSecrets>,
    /// When someone last asked for the configuration's source to be checked again at once (RFC 3339): a Git push
    /// the control plane heard of, or a `reconcile` action. It moves without a new generation; an agent that sees
    /// a value it has not acted on fetches the source now (the `kube` target sets Flux's
    /// `reconcile.fluxcd.io/requestedAt` to it) instead of waiting for the sync interval. Absent until first asked,
    /// and from servers that predate it; older agents ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile_requested_at: Option<String>,
}

/// One change to a configuration's secrets, sealed so that only the agent holding the private half of
/// `recipient` can open it (HPKE, RFC 9180: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, ChaCha20-Poly1305).
///
/// The plaintext is JSON shaped like a configuration's `properties` holding secret fields only: the whole set for
/// `Replace`, a JSON merge patch (RFC 7396, `null` removes) for `Merge`. The associated data is
/// [`sealed_secrets_aad`], so a payload moved to another cluster, configuration or version does not open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct SealedSecrets {
    /// The secret set's version after this change.
    pub version: i64,
    pub change: SecretsChange,
    /// For `Merge`: the version the patch applies to (absent: to no secrets at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<i64>,
    /// The X25519 public key (base64) it is sealed to.
    pub recipient: String,
    /// The HPKE encapsulated key (base64).
    pub encapsulated_key: String,
    /// The sealed JSON (base64).
    pub ciphertext: String,
}

/// Whether a sealed change replaces the secret set or patches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum SecretsChange {
    Replace,
    Merge,
}

impl SecretsChange {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replace => "Replace",
            Self::Merge => "Merge",
        }
    }
}

/// The associated data a sealed change is bound to: the cluster (its ARM id, case-insensitively), the
/// configuration, the version, the kind of change and the version it applies to.
pub fn sealed_secrets_aad(
    cluster_id: &str,
    configuration: &str,
    version: i64,
    change: SecretsChange,
    base_version: Option<i64>,
) -> Vec<u8> {
    let base = base_version.map_or_else(|| "none".to_owned(), |v| v.to_string());
    format!(
        "fluxplane-secrets:{}:{configuration}:{version}:{}:{base}",
        cluster_id.to_ascii_lowercase(),
        change.as_str()
    )
    .into_bytes()
}

/// The body of `PUT /agent/v1/encryption-key`: the agent's X25519 public key, which secrets are sealed to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct EncryptionKeyRegistration {
    /// 32 bytes in base64.
    pub public_key: String,
}

/// A batch of reports: the body of `POST /agent/v1/status`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct StatusReport {
    #[serde(default)]
    pub agent: AgentInfo,
    #[serde(default)]
    pub configurations: Vec<ConfigurationReport>,
    /// Reports on the cluster's extensions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<ExtensionReport>,
}

/// What the agent did with one extension at one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ExtensionReport {
    pub name: String,
    pub generation: i64,
    /// `Applied`: installed with this generation's settings; `Failed`: not (see `message`); `Removed`: uninstalled
    /// after a delete.
    pub outcome: ApplyOutcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The version of the extension now installed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_version: Option<String>,
    /// The version of the protected settings the cluster now holds: acknowledges every sealed change up to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_version: Option<i64>,
    /// What the agent finds of the extension in its cluster (for `microsoft.flux`: the Flux version, its
    /// controllers, whether multi-tenancy is enforced), in Azure's shape of an extension's `statuses`. A report
    /// may repeat a generation to bring new statuses; older agents leave the field out.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub statuses: Vec<ExtensionStatus>,
}

/// One status of an extension, as Azure's `Microsoft.KubernetesConfiguration/extensions` answers it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ExtensionStatus {
    /// What the status is about, e.g. `FluxVersion`, `FluxController`, `MultiTenancy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// A short value, e.g. `v2.7.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<StatusLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the agent observed it (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
}

/// How much an extension status matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum StatusLevel {
    Error,
    Warning,
    Information,
}

/// What the agent observed of one configuration at one generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ConfigurationReport {
    pub name: String,
    pub generation: i64,
    /// Whether the objects of this generation are in the cluster (`Applied`), could not be written (`Failed`), or
    /// were removed after a delete (`Removed`).
    pub outcome: ApplyOutcome,
    pub compliance_state: ComplianceState,
    /// Why the configuration failed or is not compliant; empty when all is well.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default)]
    pub statuses: Vec<ObjectStatus>,
    /// The source revision the objects reflect, e.g. `main@sha1:0ba6f0d3...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_synced_commit_id: Option<String>,
    /// When that source revision was produced (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_updated_at: Option<String>,
    /// The version of the secret set the cluster now holds: acknowledges every sealed change up to it, which the
    /// control plane then deletes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_version: Option<i64>,
    /// The public key the source authenticates with, as one OpenSSH line (`ssh-ed25519 AAAA... comment`): the deploy
    /// key the agent made for an SSH source without a key of the user's, or the public half of the user's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_public_key: Option<String>,
    /// Objects of the configuration the agent found deleted or changed in its cluster since its last report, and
    /// wrote back as desired: each becomes an event of the configuration's history.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restored: Vec<Restoration>,
}

/// An object of a configuration that was deleted or changed in the cluster, and that the agent wrote back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct Restoration {
    /// The object's kind, e.g. `Kustomization`; for the `dir` target, the kind of the object its file holds.
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub drift: Drift,
    /// When the agent noticed (RFC 3339).
    pub noticed_at: String,
}

/// How an object had drifted from what the agent wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum Drift {
    /// It was gone.
    Deleted,
    /// Fields the agent writes held other values.
    Changed,
}

impl Drift {
    pub fn as_str(self) -> &'static str {
        match self {
            Drift::Deleted => "deleted",
            Drift::Changed => "changed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum ApplyOutcome {
    Applied,
    Failed,
    Removed,
}

/// The answer to a status report: what became of each entry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct StatusAccepted {
    pub results: Vec<ReportResult>,
    /// What became of each extension report.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extensions: Vec<ReportResult>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub struct ReportResult {
    pub name: String,
    pub generation: i64,
    pub result: ReportDisposition,
}

/// `Recorded`: the report is now the configuration's status. `Stale`: a newer generation exists; nothing changed.
/// `Unknown`: no such configuration (already deleted); nothing changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(ToSchema))]
pub enum ReportDisposition {
    Recorded,
    Stale,
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON blocks of README.md, in order.
    fn readme_examples() -> Vec<serde_json::Value> {
        let readme = include_str!("../README.md");
        readme
            .split("```json")
            .skip(1)
            .map(|block| {
                let json = block.split("```").next().expect("a closed block");
                serde_json::from_str(json).unwrap_or_else(|err| panic!("README example is not JSON: {err}\n{json}"))
            })
            .collect()
    }

    #[test]
    fn the_documented_examples_are_what_the_types_read() {
        let examples = readme_examples();
        assert_eq!(
            examples.len(),
            9,
            "claims, desired state, report, answer, encryption key, sealed secrets, acknowledgement, extension, \
             extension report"
        );
        let claims: AgentClaims = serde_json::from_value(examples[0].clone()).unwrap();
        assert_eq!(claims.aud, AGENT_AUDIENCE);
        assert!(claims.exp - claims.iat <= MAX_TOKEN_LIFETIME_SECONDS);
        let desired: DesiredState = serde_json::from_value(examples[1].clone()).unwrap();
        assert_eq!(desired.configurations[0].generation, 3);
        assert_eq!(
            desired.configurations[0].reconcile_requested_at.as_deref(),
            Some("2026-11-21T18:20:05.123Z")
        );
        let report: StatusReport = serde_json::from_value(examples[2].clone()).unwrap();
        assert_eq!(report.configurations[0].outcome, ApplyOutcome::Applied);
        assert_eq!(report.agent.total_node_count, Some(3));
        let accepted: StatusAccepted = serde_json::from_value(examples[3].clone()).unwrap();
        assert_eq!(accepted.results[0].result, ReportDisposition::Recorded);
        let key: EncryptionKeyRegistration = serde_json::from_value(examples[4].clone()).unwrap();
        let sealed: DesiredConfiguration = serde_json::from_value(examples[5].clone()).unwrap();
        assert_eq!(sealed.secrets_version, Some(4));
        assert_eq!(sealed.sealed_secrets[1].change, SecretsChange::Merge);
        assert_eq!(sealed.sealed_secrets[1].base_version, Some(3));
        assert!(sealed.sealed_secrets.iter().all(|s| s.recipient == key.public_key));
        let acknowledgement: StatusReport = serde_json::from_value(examples[6].clone()).unwrap();
        assert_eq!(acknowledgement.configurations[0].secrets_version, Some(4));
        let extension: DesiredExtension = serde_json::from_value(examples[7].clone()).unwrap();
        assert_eq!(extension.secrets_version, Some(2));
        assert_eq!(extension.sealed_secrets[0].change, SecretsChange::Replace);
        let installed: StatusReport = serde_json::from_value(examples[8].clone()).unwrap();
        assert!(installed.configurations.is_empty());
        assert_eq!(installed.extensions[0].outcome, ApplyOutcome::Applied);
        assert_eq!(installed.extensions[0].secrets_version, Some(2));
        assert_eq!(
            installed.extensions[0].statuses[0].level,
            Some(StatusLevel::Information)
        );
    }

    #[test]
    fn older_peers_without_new_fields_still_parse() {
        // additive evolution: a report with only the fields of the first version is accepted
        let minimal = serde_json::json!({"configurations": [{"name": "c", "generation": 1, "outcome": "Removed",
                                                             "complianceState": "Unknown"}]});
        let report: StatusReport = serde_json::from_value(minimal).unwrap();
        assert_eq!(report.agent, AgentInfo::default());
        assert!(report.configurations[0].statuses.is_empty());
        assert!(report.extensions.is_empty());
        let desired: DesiredState = serde_json::from_value(serde_json::json!({"clusterId": "c", "revision": 1,
            "configurations": [{"name": "c", "generation": 1, "spec": {}}]}))
        .unwrap();
        assert_eq!(
            desired.configurations[0].reconcile_requested_at, None,
            "a server that predates reconcile requests leaves them out"
        );
        assert!(
            desired.extensions.is_empty(),
            "a server without extensions leaves them out"
        );
        let accepted: StatusAccepted = serde_json::from_value(serde_json::json!({"results": []})).unwrap();
        assert!(accepted.extensions.is_empty());
    }
}
