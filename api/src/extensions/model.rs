//! The extension resource: what is stored of it, how a request becomes that (`normalize`, every rule of what an
//! extension may hold), and how the API answers it.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use fluxplane_agent_protocol::agent::ExtensionStatus;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::arm::ids::is_dns1123_label;
use crate::arm::system_data::SystemData;
use crate::error::{ApiError, ApiResult, ErrorDetail, Problems};
use crate::lifecycle::ProvisioningState;

/// The one extension type served, as Azure spells it (types compare case-insensitively).
pub const FLUX: &str = "microsoft.flux";
/// The name Azure's tools give the Flux extension they install, and fluxplane the one it creates.
pub const FLUX_NAME: &str = "flux";
/// Where the Flux extension installs unless told otherwise, as Azure's does.
pub const DEFAULT_RELEASE_NAMESPACE: &str = "flux-system";
/// Azure's default release train.
pub const DEFAULT_RELEASE_TRAIN: &str = "Stable";
/// Most settings (and, apart, protected settings) an extension holds.
pub const MAX_SETTINGS: usize = 100;
/// Longest value of one setting, in bytes.
pub const MAX_SETTING_VALUE: usize = 16 * 1024;
pub const TYPE: &str = "Microsoft.KubernetesConfiguration/extensions";

/// What an extension is set to, as stored: the writable properties with their defaults, without the protected
/// settings (sealed apart), and the identity asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionSpec {
    /// As the creating request spelled it.
    pub extension_type: String,
    pub auto_upgrade_minor_version: bool,
    pub release_train: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    pub release_namespace: String,
    #[serde(default)]
    pub configuration_settings: BTreeMap<String, String>,
    /// The identity type asked for (`SystemAssigned`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl ExtensionSpec {
    /// The Flux extension fluxplane creates with a cluster's first configuration: Azure's defaults.
    pub fn flux_default() -> Self {
        Self {
            extension_type: FLUX.to_owned(),
            auto_upgrade_minor_version: true,
            release_train: DEFAULT_RELEASE_TRAIN.to_owned(),
            version: None,
            release_namespace: DEFAULT_RELEASE_NAMESPACE.to_owned(),
            configuration_settings: BTreeMap::new(),
            identity: None,
        }
    }
}

/// What the agent last reported about an extension.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionObserved {
    pub current_version: Option<String>,
    pub error: Option<ErrorDetail>,
    pub status_updated_at: Option<DateTime<Utc>>,
    /// What the agent found of the extension in its cluster (rows written before agents reported it have none).
    #[serde(default)]
    pub statuses: Vec<ExtensionStatus>,
}

/// The writable properties of a PUT (and, merged over the stored ones, of a PATCH). Protected settings are split
/// off before this is read, so that no parse error can quote them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtensionPropertiesRequest {
    /// Only `microsoft.flux` (in any case) is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extension_type: Option<String>,
    /// Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_upgrade_minor_version: Option<bool>,
    /// Default `Stable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_train: Option<String>,
    /// A version to pin; only with `autoUpgradeMinorVersion` false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<ScopeRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_settings: Option<BTreeMap<String, String>>,
    /// Write-only: sealed to the cluster's agent, never answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<BTreeMap<String, String>>, write_only)]
    pub configuration_protected_settings: Option<serde_json::Value>,
}

/// Where an extension installs: at cluster scope only, for `microsoft.flux`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ScopeCluster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub namespace: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScopeCluster {
    /// Default `flux-system`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_namespace: Option<String>,
}

/// The identity of an extension, as requested.
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IdentityRequest {
    /// `SystemAssigned`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub type_: Option<String>,
}

/// The properties a PATCH may change (Azure's `patchExtension`).
pub const PATCHABLE: &[&str] = &[
    "autoUpgradeMinorVersion",
    "releaseTrain",
    "version",
    "configurationSettings",
    "configurationProtectedSettings",
];

/// Writable properties of Azure's specification this server does not serve, and why: refused by name rather than
/// as unknown.
pub const NOT_SERVED: &[(&str, &str)] = &[
    (
        "autoUpgradeMode",
        "upgrades follow autoUpgradeMinorVersion and releaseTrain here",
    ),
    ("aksAssignedIdentity", "this server assigns no identities in clusters"),
];

/// The read-only properties a client may send back with what it read: ignored.
pub const READ_ONLY_PROPERTIES: &[&str] = &[
    "provisioningState",
    "statuses",
    "errorInfo",
    "customLocationSettings",
    "packageUri",
    "installedVersion",
    "currentVersion",
    "isSystemExtension",
];

/// The stored spec `request` asks for, over `current` (`None`: the extension is being created); every rule of what
/// an extension may hold is here. `identity` is the request's (`None`: not given, which keeps the current one).
pub fn normalize(
    request: ExtensionPropertiesRequest,
    identity: Option<Option<IdentityRequest>>,
    current: Option<&ExtensionSpec>,
) -> ApiResult<ExtensionSpec> {
    let extension_type = match (&request.extension_type, current) {
        (None, None) => {
            return Err(ApiError::invalid(
                "properties.extensionType",
                "properties.extensionType is required: this server serves the microsoft.flux extension",
            ));
        }
        (None, Some(current)) => current.extension_type.clone(),
        (Some(given), _) => given.clone(),
    };
    if !extension_type.eq_ignore_ascii_case(FLUX) {
        return Err(ApiError::invalid(
            "properties.extensionType",
            format!(
                "The extension type '{}' is not served: this server installs only the microsoft.flux extension \
                 (GitOps with Flux).",
                truncated(&extension_type)
            ),
        ));
    }
    if let Some(current) = current
        && !current.extension_type.eq_ignore_ascii_case(&extension_type)
    {
        return Err(ApiError::invalid(
            "properties.extensionType",
            "The extension type of an extension cannot change; delete it and create another.",
        ));
    }
    let mut p = Problems::default();
    let auto_upgrade = request
        .auto_upgrade_minor_version
        .or(current.map(|c| c.auto_upgrade_minor_version))
        .unwrap_or(true);
    let version = request.version.or_else(|| current.and_then(|c| c.version.clone()));
    if let Some(version) = &version {
        if auto_upgrade {
            p.add(
                "properties.version",
                "a version is pinned only with autoUpgradeMinorVersion false: set it false, or leave version out",
            );
        }
        if !is_version(version) {
            p.add(
                "properties.version",
                "a version is 1-64 letters, digits, '.', '-' or '+' (e.g. 1.8.2)",
            );
        }
    }
    let release_train = request
        .release_train
        .or_else(|| current.map(|c| c.release_train.clone()))
        .unwrap_or_else(|| DEFAULT_RELEASE_TRAIN.to_owned());
    if release_train.is_empty() || release_train.len() > 63 || !release_train.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        p.add(
            "properties.releaseTrain",
            "a release train is 1-63 letters or digits (Stable, Preview)",
        );
    }
    let scope = request.scope.unwrap_or_default();
    if scope.namespace.is_some() {
        p.add(
            "properties.scope.namespace",
            "the microsoft.flux extension installs at cluster scope: use scope.cluster",
        );
    }
    let release_namespace = scope
        .cluster
        .and_then(|c| c.release_namespace)
        .or_else(|| current.map(|c| c.release_namespace.clone()))
        .unwrap_or_else(|| DEFAULT_RELEASE_NAMESPACE.to_owned());
    if !is_dns1123_label(&release_namespace) {
        p.add(
            "properties.scope.cluster.releaseNamespace",
            "a namespace is a DNS-1123 label: at most 63 lower-case letters, digits and '-'",
        );
    }
    if let Some(current) = current
        && current.release_namespace != release_namespace
    {
        p.add(
            "properties.scope.cluster.releaseNamespace",
            "the release namespace of an installed extension cannot change; delete it and create another",
        );
    }
    let configuration_settings = request
        .configuration_settings
        .or_else(|| current.map(|c| c.configuration_settings.clone()))
        .unwrap_or_default();
    settings_valid(&mut p, "configurationSettings", configuration_settings.iter());
    let identity = match identity {
        None => current.and_then(|c| c.identity.clone()),
        Some(None) | Some(Some(IdentityRequest { type_: None })) => None,
        Some(Some(IdentityRequest { type_: Some(kind) })) if kind.eq_ignore_ascii_case("SystemAssigned") => {
            Some("SystemAssigned".to_owned())
        }
        Some(Some(IdentityRequest { type_: Some(_) })) => {
            p.add(
                "identity.type",
                "only SystemAssigned is accepted: this server assigns no user identities",
            );
            None
        }
    };
    p.into_result("extension", None)?;
    Ok(ExtensionSpec {
        extension_type,
        auto_upgrade_minor_version: auto_upgrade,
        release_train,
        version,
        release_namespace,
        configuration_settings,
        identity,
    })
}

/// The protected settings of a request as name-value strings, checked as settings are. A value of another type is
/// refused naming its key only: the value is secret.
pub fn protected_settings(value: serde_json::Value) -> ApiResult<BTreeMap<String, String>> {
    let target = "properties.configurationProtectedSettings";
    let serde_json::Value::Object(map) = value else {
        return Err(ApiError::invalid(target, format!("{target} is an object of strings")));
    };
    let mut settings = BTreeMap::new();
    let mut p = Problems::default();
    for (key, value) in map {
        match value {
            serde_json::Value::String(text) => {
                settings.insert(key, text);
            }
            _ => p.add(format!("{target}.{}", truncated(&key)), "values are strings"),
        }
    }
    settings_valid(&mut p, "configurationProtectedSettings", settings.iter());
    p.into_result("extension", None)?;
    Ok(settings)
}

fn settings_valid<'a>(
    p: &mut Problems,
    field: &str,
    settings: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
) {
    if settings.len() > MAX_SETTINGS {
        p.add(
            format!("properties.{field}"),
            format!("holds {} settings; at most {MAX_SETTINGS} are allowed", settings.len()),
        );
        return;
    }
    for (key, value) in settings {
        let target = format!("properties.{field}.{}", truncated(key));
        let valid = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            p.add(&target, "names are 1-253 letters, digits, '-', '_' or '.'");
        }
        if value.len() > MAX_SETTING_VALUE {
            p.add(&target, format!("values are at most {MAX_SETTING_VALUE} bytes"));
        }
    }
}

fn is_version(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 64
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'+'))
}

/// At most 64 characters of what a client sent, for a message.
fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

/// An extension (`Microsoft.KubernetesConfiguration/extensions`).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Extension {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub system_data: SystemData,
    pub properties: ExtensionProperties,
    /// The identity asked for; this server assigns none, so it carries no principal.
    pub identity: Option<ExtensionIdentity>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExtensionIdentity {
    #[serde(rename = "type")]
    pub type_: String,
}

/// The properties of an extension: what it is set to (never the protected settings) and what its agent reported.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProperties {
    pub extension_type: String,
    pub auto_upgrade_minor_version: bool,
    pub release_train: String,
    pub version: Option<String>,
    pub scope: ExtensionScope,
    pub configuration_settings: BTreeMap<String, String>,
    #[schema(read_only)]
    pub provisioning_state: ProvisioningState,
    /// What the agent finds of the extension in its cluster: for `microsoft.flux`, the Flux version
    /// (`FluxVersion`), each controller (`FluxController`) and multi-tenancy (`MultiTenancy`), or why it cannot tell.
    #[schema(read_only)]
    pub statuses: Vec<ExtensionStatus>,
    /// The version the agent reports installed.
    #[schema(read_only)]
    pub current_version: Option<String>,
    /// Why the last write failed, as the agent (or the control plane, on expiry) said.
    #[schema(read_only)]
    pub error_info: Option<ErrorDetail>,
    /// Always false: no extension here is a system extension. Not answered at api-versions before it existed.
    #[schema(read_only, required = false)]
    pub is_system_extension: bool,
    /// Always null: there are no custom locations here.
    #[schema(read_only, value_type = Option<Object>)]
    pub custom_location_settings: Option<BTreeMap<String, String>>,
    /// Always null: the agent installs the extension, not a Helm package.
    #[schema(read_only)]
    pub package_uri: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionScope {
    pub cluster: ScopeCluster,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn request(value: serde_json::Value) -> ExtensionPropertiesRequest {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_flux_extension_gets_azures_defaults_in_any_case_of_its_type() {
        let spec = normalize(request(json!({"extensionType": "Microsoft.Flux"})), None, None).unwrap();
        assert_eq!(spec.extension_type, "Microsoft.Flux");
        assert!(spec.auto_upgrade_minor_version);
        assert_eq!(spec.release_train, "Stable");
        assert_eq!(spec.release_namespace, "flux-system");
        assert_eq!(spec.version, None);
        assert_eq!(spec.identity, None);
    }

    #[test]
    fn another_type_a_missing_type_or_a_changed_type_is_refused() {
        let other = normalize(
            request(json!({"extensionType": "microsoft.azuremonitor.containers"})),
            None,
            None,
        );
        let err = other.unwrap_err();
        assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
        assert!(err.to_string().contains("only the microsoft.flux extension"), "{err}");
        assert!(normalize(request(json!({})), None, None).is_err());
        let current = ExtensionSpec::flux_default();
        assert!(normalize(request(json!({"extensionType": "other"})), None, Some(&current)).is_err());
        let kept = normalize(request(json!({"releaseTrain": "Preview"})), None, Some(&current)).unwrap();
        assert_eq!(kept.extension_type, "microsoft.flux");
    }

    #[test]
    fn a_version_is_pinned_only_without_auto_upgrade() {
        let pinned = json!({"extensionType": "microsoft.flux", "version": "1.8.2"});
        assert!(normalize(request(pinned.clone()), None, None).is_err());
        let mut manual = pinned;
        manual["autoUpgradeMinorVersion"] = json!(false);
        assert_eq!(
            normalize(request(manual), None, None).unwrap().version.as_deref(),
            Some("1.8.2")
        );
    }

    #[test]
    fn namespace_scope_a_changed_namespace_and_bad_settings_are_refused() {
        let namespaced = json!({"extensionType": "microsoft.flux", "scope": {"namespace": {"targetNamespace": "x"}}});
        assert!(normalize(request(namespaced), None, None).is_err());
        let current = ExtensionSpec::flux_default();
        let moved = json!({"scope": {"cluster": {"releaseNamespace": "elsewhere"}}});
        assert!(normalize(request(moved), None, Some(&current)).is_err());
        let bad = json!({"extensionType": "microsoft.flux", "configurationSettings": {"a b": "x"}});
        assert!(normalize(request(bad), None, None).is_err());
        let many: serde_json::Map<String, serde_json::Value> =
            (0..=MAX_SETTINGS).map(|i| (format!("k{i}"), json!("v"))).collect();
        let too_many = json!({"extensionType": "microsoft.flux", "configurationSettings": many});
        assert!(normalize(request(too_many), None, None).is_err());
    }

    #[test]
    fn only_a_system_assigned_identity_is_accepted() {
        let flux = || request(json!({"extensionType": "microsoft.flux"}));
        let asked = Some(Some(IdentityRequest {
            type_: Some("systemassigned".into()),
        }));
        assert_eq!(
            normalize(flux(), asked, None).unwrap().identity.as_deref(),
            Some("SystemAssigned")
        );
        let user = Some(Some(IdentityRequest {
            type_: Some("UserAssigned".into()),
        }));
        assert!(normalize(flux(), user, None).is_err());
    }

    #[test]
    fn protected_settings_are_strings_and_a_refusal_never_quotes_a_value() {
        let settings = protected_settings(json!({"token": "s3cr3t"})).unwrap();
        assert_eq!(settings["token"], "s3cr3t");
        let err = protected_settings(json!({"token": 12345678})).unwrap_err();
        assert!(!format!("{err:?}").contains("12345678"), "{err:?}");
        assert!(protected_settings(json!("s3cr3t")).is_err());
    }
}
