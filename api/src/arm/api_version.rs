//! The `api-version` query parameter: required on every ARM call and checked against the versions each resource
//! type serves, and what each version defines of its resource.
//!
//! Each resource type has one table, [`Versioned::ADDED`]: the properties (and enum values) that not every served
//! version defines, with the first GA version that does; everything else exists in every served version. The
//! table is checked against Azure's published specifications (`tests/fixtures/azure-specs`) by this module's
//! tests, and it is the only place the rule is written: [`ApiVersion`] applies it to requests (a property the
//! version does not define is refused), to responses (it is left out) and to replacements (it is kept).

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Serialize;
use serde_json::Value;

use crate::error::ApiError;

/// A property, or one value of an enum property (`path=value`), that the versions older than `since` lack. Paths
/// are dotted from the root of the resource's body; `*` stands for any key of a map (a kustomization's name).
#[derive(Debug, Clone, Copy)]
pub struct Added {
    pub path: &'static str,
    pub since: &'static str,
}

const fn added(path: &'static str, since: &'static str) -> Added {
    Added { path, since }
}

/// A resource type and the api-versions it serves.
pub trait Versioned {
    /// The versions served, oldest first; all GA (`YYYY-MM-DD`), so that they order as strings.
    const SUPPORTED: &'static [&'static str];
    /// What some served versions lack (see the module's documentation).
    const ADDED: &'static [Added] = &[];
}

/// `Microsoft.Kubernetes/connectedClusters`: every stable version in Azure's specification
/// (`specification/hybridkubernetes/resource-manager/Microsoft.Kubernetes/HybridKubernetes/stable`).
pub struct Clusters;
impl Versioned for Clusters {
    const SUPPORTED: &'static [&'static str] = &["2021-03-01", "2021-10-01", "2024-01-01", "2026-05-01"];
    const ADDED: &'static [Added] = &[
        added("kind", "2024-01-01"),
        added("properties.distributionVersion", "2024-01-01"),
        added("properties.privateLinkState", "2024-01-01"),
        added("properties.privateLinkScopeResourceId", "2024-01-01"),
        added("properties.azureHybridBenefit", "2024-01-01"),
        added("properties.aadProfile", "2024-01-01"),
        added("properties.arcAgentProfile", "2024-01-01"),
        added("properties.miscellaneousProperties", "2024-01-01"),
        added("properties.arcAgentProfile.systemComponents", "2026-05-01"),
        added("properties.arcAgentProfile.agentErrors", "2026-05-01"),
        added("properties.arcAgentProfile.agentState", "2026-05-01"),
        added("properties.securityProfile", "2026-05-01"),
        added("properties.oidcIssuerProfile", "2026-05-01"),
        added("properties.gateway", "2026-05-01"),
        added("properties.arcAgentryConfigurations", "2026-05-01"),
    ];
}

/// `Microsoft.KubernetesConfiguration/fluxConfigurations` and its operation statuses: every stable version in
/// Azure's specification (`specification/kubernetesconfiguration/resource-manager/Microsoft.KubernetesConfiguration/
/// fluxConfigurations/stable`).
pub struct FluxConfigurations;
impl Versioned for FluxConfigurations {
    const SUPPORTED: &'static [&'static str] = &[
        "2022-03-01",
        "2022-07-01",
        "2022-11-01",
        "2023-05-01",
        "2024-11-01",
        "2025-04-01",
    ];
    const ADDED: &'static [Added] = &[
        added("properties.azureBlob", "2022-07-01"),
        added("properties.sourceKind=AzureBlob", "2022-07-01"),
        added("properties.kustomizations.*.wait", "2023-05-01"),
        added("properties.kustomizations.*.postBuild", "2023-05-01"),
        added("properties.waitForReconciliation", "2023-05-01"),
        added("properties.reconciliationWaitDuration", "2023-05-01"),
        added("properties.ociRepository", "2024-11-01"),
        added("properties.sourceKind=OCIRepository", "2024-11-01"),
        added("properties.gitRepository.provider", "2024-11-01"),
        added("properties.gitRepository.provider=GitHub", "2025-04-01"),
    ];
}

/// `Microsoft.KubernetesConfiguration/extensions` and its operation statuses: every stable version in Azure's
/// specification (`specification/kubernetesconfiguration/resource-manager/Microsoft.KubernetesConfiguration/
/// extensions/stable`). The table was read from those specifications (2021-09-01 and 2022-03-01 at commit
/// `9bf444bb`, 2022-11-01 at `70a09e82`, 2024-11-01 at `303dc64f`, 2025-03-01 at `fbc9b4ed`); no extracts of them
/// are vendored yet, because two properties were later removed (`installedVersion` after 2022-07-01, the identity's
/// `principalId` and `tenantId` in 2025-03-01), which a table of additions cannot state. Those are not answered.
pub struct Extensions;
impl Versioned for Extensions {
    const SUPPORTED: &'static [&'static str] = &[
        "2021-09-01",
        "2022-03-01",
        "2022-07-01",
        "2022-11-01",
        "2023-05-01",
        "2024-11-01",
        "2025-03-01",
    ];
    const ADDED: &'static [Added] = &[
        added("properties.aksAssignedIdentity.type=UserAssigned", "2022-03-01"),
        added("properties.currentVersion", "2022-11-01"),
        added("properties.isSystemExtension", "2022-11-01"),
        added("plan", "2022-11-01"),
        added("properties.autoUpgradeMode", "2025-03-01"),
        added("properties.managementDetails", "2025-03-01"),
        added("properties.additionalDetails", "2025-03-01"),
        added("properties.aksAssignedIdentity.type=Workload", "2025-03-01"),
        added("managedBy", "2025-03-01"),
        added("identity.userAssignedIdentities", "2025-03-01"),
        added("identity.type=UserAssigned", "2025-03-01"),
    ];
}

/// `Microsoft.KubernetesConfiguration/sourceControlConfigurations`, Flux v1's configurations, which Azure retired:
/// its GA versions are served so that tools which look for old configurations find none.
pub struct SourceControlConfigurations;
impl Versioned for SourceControlConfigurations {
    const SUPPORTED: &'static [&'static str] = &["2021-03-01", "2022-03-01", "2022-07-01", "2022-11-01", "2023-05-01"];
}

/// The `Fluxplane.Fleet` resource types: cluster groups and policy assignments.
pub struct Fleet;
impl Versioned for Fleet {
    const SUPPORTED: &'static [&'static str] = &["2026-01-01"];
}

/// The validated `api-version` of a request for resource type `R`.
#[derive(Debug)]
pub struct ApiVersion<R> {
    pub version: &'static str,
    resource: PhantomData<R>,
}

// by hand: a derive would require `R: Copy`, and the resource types are markers
impl<R> Clone for ApiVersion<R> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<R> Copy for ApiVersion<R> {}

impl<R: Versioned> ApiVersion<R> {
    /// `version`, which must be one `R` serves.
    pub fn of(version: &str) -> Option<Self> {
        R::SUPPORTED.iter().find(|v| **v == version).map(|version| Self {
            version,
            resource: PhantomData,
        })
    }

    /// The newest version `R` serves: the one that defines every property.
    pub fn newest() -> Self {
        Self {
            version: R::SUPPORTED[R::SUPPORTED.len() - 1],
            resource: PhantomData,
        }
    }

    pub fn is_newest(&self) -> bool {
        R::SUPPORTED.last() == Some(&self.version)
    }

    /// Refuses a request `body` that holds a property, or an enum value, this version does not define.
    ///
    /// Azure's REST API guidelines have a service fail a request with 400 "if any JSON field name or value is not
    /// fully understood by the specific version of the service" (`rest-fail-for-unknown-fields`): ignoring it
    /// would let a client believe it set something that was dropped.
    pub fn check_defined(&self, body: &Value) -> Result<(), ApiError> {
        if self.is_newest() {
            return Ok(());
        }
        match first_undefined(body, &mut Vec::new(), R::ADDED, self.version) {
            None => Ok(()),
            Some((path, value, since)) => {
                let what = match value {
                    Some(value) => format!("{path}: the value '{value}' is"),
                    None => format!("{path} is"),
                };
                Err(ApiError::invalid(
                    path,
                    format!(
                        "{what} not defined at api-version {}; use api-version {since} or later",
                        self.version
                    ),
                ))
            }
        }
    }

    /// `value` as this version answers it: without the properties it does not define. (Enum values it does not
    /// define stay: Azure's enums are extensible, and the guidelines let a service return such a value.)
    pub fn render<T: Serialize>(&self, value: T) -> Rendered<T> {
        Rendered {
            value,
            version: self.version,
            added: if self.is_newest() { &[] } else { R::ADDED },
        }
    }

    /// Copies into `replacement` (a PUT's body) what `current` holds that this version cannot express, so that a
    /// client of an older version replaces what it sees and no more: its GET showed it none of those properties
    /// (see [`ApiVersion::render`]), and a PUT of what it read must not wipe them. A property is kept where the
    /// replacement still has the object holding it (a kustomization it removed goes, with what it held).
    pub fn keep_newer(&self, replacement: &mut Value, current: &Value) {
        if !self.is_newest() {
            keep(replacement, current, &mut Vec::new(), R::ADDED, self.version);
        }
    }
}

/// A response body as one api-version answers it (see [`ApiVersion::render`]).
#[derive(Debug)]
pub struct Rendered<T> {
    value: T,
    version: &'static str,
    added: &'static [Added],
}

impl<T: Serialize> Serialize for Rendered<T> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.added.is_empty() {
            return self.value.serialize(serializer);
        }
        let mut value = serde_json::to_value(&self.value).map_err(serde::ser::Error::custom)?;
        strip(&mut value, &mut Vec::new(), self.added, self.version);
        value.serialize(serializer)
    }
}

/// The first version that defines the property at `path` (or its `value`), if some served version lacks it: the
/// newest of the entries that match the path or one of its ancestors.
fn since(added: &[Added], path: &[&str], value: Option<&str>) -> Option<&'static str> {
    added
        .iter()
        .filter(|entry| {
            let (entry_path, entry_value) = match entry.path.split_once('=') {
                Some((p, v)) => (p, Some(v)),
                None => (entry.path, None),
            };
            let segments: Vec<&str> = entry_path.split('.').collect();
            let prefix = segments.len() <= path.len() && segments.iter().zip(path).all(|(s, p)| *s == "*" || s == p);
            match entry_value {
                None => prefix,
                Some(v) => prefix && segments.len() == path.len() && value == Some(v),
            }
        })
        .map(|entry| entry.since)
        .max()
}

/// The first property (path, enum value if that is what is newer, first version) of `value` that `version` lacks.
fn first_undefined<'a>(
    value: &'a Value,
    path: &mut Vec<&'a str>,
    added: &[Added],
    version: &str,
) -> Option<(String, Option<&'a str>, &'static str)> {
    let Value::Object(map) = value else {
        return None;
    };
    for (key, item) in map {
        path.push(key);
        if let Some(since) = since(added, path, None).filter(|since| *since > version) {
            return Some((path.join("."), None, since));
        }
        if let Value::String(text) = item
            && let Some(since) = since(added, path, Some(text)).filter(|since| *since > version)
        {
            return Some((path.join("."), Some(text), since));
        }
        if let Some(found) = first_undefined(item, path, added, version) {
            return Some(found);
        }
        path.pop();
    }
    None
}

/// Removes from `value` the properties `version` lacks.
fn strip(value: &mut Value, path: &mut Vec<String>, added: &[Added], version: &str) {
    let Value::Object(map) = value else {
        return;
    };
    map.retain(|key, _| {
        let mut at: Vec<&str> = path.iter().map(String::as_str).collect();
        at.push(key);
        since(added, &at, None).is_none_or(|since| since <= version)
    });
    for (key, item) in map.iter_mut() {
        path.push(key.clone());
        strip(item, path, added, version);
        path.pop();
    }
}

/// Copies into `replacement` the properties of `current` that `version` lacks (see [`ApiVersion::keep_newer`]).
fn keep(replacement: &mut Value, current: &Value, path: &mut Vec<String>, added: &[Added], version: &str) {
    let (Value::Object(target), Value::Object(held)) = (replacement, current) else {
        return;
    };
    for (key, item) in held {
        path.push(key.clone());
        let at: Vec<&str> = path.iter().map(String::as_str).collect();
        let newer = since(added, &at, None).is_some_and(|since| since > version);
        match target.get_mut(key) {
            None | Some(Value::Null) if newer => {
                target.insert(key.clone(), item.clone());
            }
            Some(inner) if !newer => keep(inner, item, path, added, version),
            _ => {}
        }
        path.pop();
    }
}

/// Finds `api-version` in a raw query string (ARM matches parameter names case-insensitively).
pub fn find_api_version(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(name, _)| name.eq_ignore_ascii_case("api-version"))
        .map(|(_, value)| value.into_owned())
}

pub fn check<R: Versioned>(query: Option<&str>) -> Result<&'static str, ApiError> {
    let given = find_api_version(query).ok_or(ApiError::MissingApiVersion)?;
    R::SUPPORTED
        .iter()
        .find(|v| **v == given)
        .copied()
        .ok_or_else(|| ApiError::InvalidApiVersion {
            given,
            supported: R::SUPPORTED.join(", "),
        })
}

/// The `api-version` of a call to Resource Manager's own endpoints (subscriptions, providers, cloud metadata):
/// required, and any date-shaped version (`2022-12-01`, `2021-04-01-preview`) is served, since every Azure client
/// pins its own and their answers have kept one shape.
#[derive(Debug)]
pub struct AnyApiVersion(pub String);

/// `YYYY-MM-DD` with an optional `-suffix` of letters (`-preview`, `-beta`).
fn is_date_version(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() < 10 {
        return false;
    }
    let (date, suffix) = bytes.split_at(10);
    date.iter().enumerate().all(|(i, b)| {
        if i == 4 || i == 7 {
            *b == b'-'
        } else {
            b.is_ascii_digit()
        }
    }) && match suffix {
        [] => true,
        [b'-', word @ ..] => !word.is_empty() && word.len() <= 20 && word.iter().all(u8::is_ascii_alphabetic),
        _ => false,
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AnyApiVersion {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let given = find_api_version(parts.uri.query()).ok_or(ApiError::MissingApiVersion)?;
        if is_date_version(&given) {
            Ok(Self(given))
        } else {
            Err(ApiError::InvalidApiVersion {
                given,
                supported: "any version of the form YYYY-MM-DD or YYYY-MM-DD-preview".into(),
            })
        }
    }
}

impl<S: Send + Sync, R: Versioned> FromRequestParts<S> for ApiVersion<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            version: check::<R>(parts.uri.query())?,
            resource: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::collections::BTreeSet;

    /// Extracts of Azure's specifications, one per resource and version (their README says how they were made).
    const SPECS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/azure-specs");

    fn extract(resource: &str, version: &str) -> Value {
        let path = format!("{SPECS}/{resource}/{version}.json");
        let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{path}: {err}"));
        let extract: Value = serde_json::from_str(&text).unwrap_or_else(|err| panic!("{path}: {err}"));
        assert_eq!(extract["version"], version, "{path} is the extract of another version");
        extract
    }

    /// Every property path of the resource `root` in one specification, and every value of its writable enums
    /// (`path=value`). `systemData` is ARM's envelope, not the resource's: left out.
    fn specified(extract: &Value, root: &str) -> BTreeSet<String> {
        let mut paths = BTreeSet::new();
        let definitions = &extract["definitions"];
        walk(
            definitions,
            &definitions[root],
            "",
            false,
            &mut vec![root.to_owned()],
            &mut paths,
        );
        paths
    }

    fn walk(
        definitions: &Value,
        schema: &Value,
        path: &str,
        read_only: bool,
        seen: &mut Vec<String>,
        paths: &mut BTreeSet<String>,
    ) {
        let read_only = read_only || schema["readOnly"] == true;
        let at = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        let local = |reference: &Value, seen: &mut Vec<String>, paths: &mut BTreeSet<String>| {
            // references to Azure's common types (ProxyResource, systemData) are ARM's envelope
            if let Some(name) = reference.as_str().and_then(|r| r.strip_prefix("#/definitions/"))
                && !seen.iter().any(|s| s == name)
            {
                seen.push(name.to_owned());
                walk(definitions, &definitions[name], path, read_only, seen, paths);
                seen.pop();
            }
        };
        local(&schema["$ref"], seen, paths);
        for part in schema["allOf"].as_array().into_iter().flatten() {
            local(&part["$ref"], seen, paths);
        }
        if !read_only && !path.is_empty() {
            for value in schema["enum"].as_array().into_iter().flatten() {
                paths.insert(format!("{path}={}", value.as_str().expect("string enums")));
            }
        }
        for (key, property) in schema["properties"].as_object().into_iter().flatten() {
            if path.is_empty() && key == "systemData" {
                continue;
            }
            paths.insert(at(key));
            walk(definitions, property, &at(key), read_only, seen, paths);
        }
        if schema["additionalProperties"].is_object() {
            paths.insert(at("*"));
            walk(
                definitions,
                &schema["additionalProperties"],
                &at("*"),
                read_only,
                seen,
                paths,
            );
        }
        if schema["items"].is_object() {
            paths.insert(at("[]"));
            walk(definitions, &schema["items"], &at("[]"), read_only, seen, paths);
        }
    }

    /// Whether the table of `R` says `version` defines `path` (`path=value` for an enum value).
    fn defined<R: Versioned>(path: &str, version: &str) -> bool {
        let (path, value) = match path.split_once('=') {
            Some((path, value)) => (path, Some(value)),
            None => (path, None),
        };
        let segments: Vec<&str> = path.split('.').collect();
        since(R::ADDED, &segments, value).is_none_or(|since| since <= version)
    }

    /// For every version `R` serves, the properties its table defines are exactly those of Azure's specification
    /// of that version: a property Azure adds that the table misses, or a wrong first version, fails here.
    fn table_matches_specifications<R: Versioned>(resource: &str, root: &str) {
        let by_version: Vec<(&str, BTreeSet<String>)> = R::SUPPORTED
            .iter()
            .map(|version| (*version, specified(&extract(resource, version), root)))
            .collect();
        let every: BTreeSet<&String> = by_version.iter().flat_map(|(_, paths)| paths).collect();
        let mut wrong = Vec::new();
        for (version, paths) in &by_version {
            for path in &every {
                let (in_spec, in_table) = (paths.contains(*path), defined::<R>(path, version));
                if in_spec != in_table {
                    wrong.push(format!(
                        "{resource} {version} {path}: specification {in_spec}, table {in_table}"
                    ));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "the table disagrees with the specifications:\n{}",
            wrong.join("\n")
        );
        for entry in R::ADDED {
            assert!(
                every.iter().any(|path| *path == entry.path),
                "{} is in no specification of {resource}",
                entry.path
            );
            assert!(
                R::SUPPORTED[1..].contains(&entry.since),
                "{} names {}, which is not a served version newer than the oldest",
                entry.path,
                entry.since
            );
        }
    }

    #[test]
    fn the_connected_cluster_table_matches_azures_specifications() {
        table_matches_specifications::<Clusters>("connectedClusters", "ConnectedCluster");
    }

    #[test]
    fn the_flux_configuration_table_matches_azures_specifications() {
        table_matches_specifications::<FluxConfigurations>("fluxConfigurations", "FluxConfiguration");
    }

    #[test]
    fn the_walk_of_a_specification_finds_nested_map_and_enum_paths() {
        let paths = specified(&extract("fluxConfigurations", "2025-04-01"), "FluxConfiguration");
        for path in [
            "properties.kustomizations.*.postBuild.substituteFrom.[].name",
            "properties.sourceKind=OCIRepository",
            "properties.ociRepository.verify.matchOidcIdentity.[].issuer",
        ] {
            assert!(paths.contains(path), "{path}");
        }
        assert!(
            !paths.contains("properties.complianceState=Compliant"),
            "read-only enums are answers only"
        );
    }

    fn flux(version: &str) -> ApiVersion<FluxConfigurations> {
        ApiVersion::of(version).expect("a served version")
    }

    #[test]
    fn an_older_version_refuses_a_property_it_does_not_define_and_names_it() {
        let body = json!({"properties": {"gitRepository": {"url": "https://x"}, "ociRepository": {"url": "oci://x"}}});
        let err = flux("2022-03-01").check_defined(&body).unwrap_err();
        assert_eq!(err.code(), "InvalidParameter");
        assert_eq!(err.detail().target.as_deref(), Some("properties.ociRepository"));
        assert!(err.to_string().contains("2024-11-01"), "{err}");
        assert!(flux("2024-11-01").check_defined(&body).is_ok());
        let nested = json!({"properties": {"kustomizations": {"apps": {"path": "./apps", "wait": true}}}});
        let err = flux("2022-11-01").check_defined(&nested).unwrap_err();
        assert_eq!(
            err.detail().target.as_deref(),
            Some("properties.kustomizations.apps.wait")
        );
        assert!(flux("2023-05-01").check_defined(&nested).is_ok());
    }

    #[test]
    fn an_older_version_refuses_an_enum_value_it_does_not_define() {
        let oci = json!({"properties": {"sourceKind": "OCIRepository"}});
        let err = flux("2023-05-01").check_defined(&oci).unwrap_err();
        assert!(err.to_string().contains("'OCIRepository'"), "{err}");
        let github = json!({"properties": {"gitRepository": {"provider": "GitHub"}}});
        assert!(flux("2024-11-01").check_defined(&github).is_err());
        let azure = json!({"properties": {"gitRepository": {"provider": "Azure"}}});
        assert!(flux("2024-11-01").check_defined(&azure).is_ok());
        assert!(flux("2025-04-01").check_defined(&github).is_ok());
    }

    #[test]
    fn an_older_version_answers_without_the_properties_it_does_not_define() {
        let resource = json!({"name": "c", "properties": {
            "sourceKind": "OCIRepository",
            "ociRepository": {"url": "oci://x"},
            "kustomizations": {"apps": {"path": "./apps", "wait": true, "prune": false}},
            "statusFreshness": "Fresh",
        }});
        let old = serde_json::to_value(flux("2022-07-01").render(&resource)).unwrap();
        assert_eq!(
            old,
            json!({"name": "c", "properties": {
                "sourceKind": "OCIRepository",
                "kustomizations": {"apps": {"path": "./apps", "prune": false}},
                "statusFreshness": "Fresh",
            }})
        );
        let newest = serde_json::to_value(ApiVersion::<FluxConfigurations>::newest().render(&resource)).unwrap();
        assert_eq!(newest, resource);
    }

    #[test]
    fn an_older_put_keeps_what_the_version_cannot_express() {
        let current = json!({"kind": "ProvisionedCluster", "properties": {
            "agentPublicKeyCertificate": "old",
            "gateway": {"enabled": true},
            "arcAgentProfile": {"desiredAgentVersion": "1.0", "systemComponents": [{"type": "x"}]},
        }});
        let mut replacement = json!({"kind": null, "properties": {
            "agentPublicKeyCertificate": "new",
            "arcAgentProfile": {"desiredAgentVersion": "2.0"},
        }});
        ApiVersion::<Clusters>::of("2024-01-01")
            .unwrap()
            .keep_newer(&mut replacement, &current);
        assert_eq!(
            replacement,
            json!({"kind": null, "properties": {
                "agentPublicKeyCertificate": "new",
                "arcAgentProfile": {"desiredAgentVersion": "2.0", "systemComponents": [{"type": "x"}]},
                "gateway": {"enabled": true},
            }}),
            "2024-01-01 expresses kind: null replaces it"
        );
        let mut older = json!({"properties": {"agentPublicKeyCertificate": "new"}});
        ApiVersion::<Clusters>::of("2021-10-01")
            .unwrap()
            .keep_newer(&mut older, &current);
        assert_eq!(older["kind"], "ProvisionedCluster");
        assert_eq!(
            older["properties"]["arcAgentProfile"],
            current["properties"]["arcAgentProfile"]
        );

        let kustomizations = json!({"properties": {"kustomizations": {
            "apps": {"path": "./apps", "wait": false}, "gone": {"wait": true}
        }}});
        let mut put = json!({"properties": {"kustomizations": {"apps": {"path": "./apps2"}}}});
        flux("2022-03-01").keep_newer(&mut put, &kustomizations);
        assert_eq!(
            put,
            json!({"properties": {"kustomizations": {"apps": {"path": "./apps2", "wait": false}}}}),
            "a kustomization the PUT removed goes with what it held"
        );
    }

    #[test]
    fn an_older_extension_version_neither_answers_nor_takes_what_it_lacks() {
        let old = ApiVersion::<Extensions>::of("2022-07-01").unwrap();
        let answer = json!({"properties": {"extensionType": "microsoft.flux", "currentVersion": "1.0.0",
                                          "isSystemExtension": false}});
        assert_eq!(
            serde_json::to_value(old.render(&answer)).unwrap(),
            json!({"properties": {"extensionType": "microsoft.flux"}})
        );
        assert!(
            old.check_defined(&json!({"plan": {"name": "x"}}))
                .unwrap_err()
                .to_string()
                .contains("2022-11-01")
        );
        let ga = ApiVersion::<Extensions>::of("2023-05-01").unwrap();
        assert_eq!(serde_json::to_value(ga.render(&answer)).unwrap(), answer);
        assert!(
            ga.check_defined(&json!({"identity": {"type": "UserAssigned"}}))
                .is_err()
        );
        assert!(
            ga.check_defined(&json!({"identity": {"type": "SystemAssigned"}}))
                .is_ok()
        );
    }

    #[test]
    fn api_version_is_required() {
        assert_eq!(
            check::<Clusters>(Some("x=1")).unwrap_err().code(),
            "MissingApiVersionParameter"
        );
        assert_eq!(
            check::<Clusters>(None).unwrap_err().code(),
            "MissingApiVersionParameter"
        );
    }

    #[test]
    fn unknown_api_versions_are_refused_with_the_supported_list() {
        let err = check::<FluxConfigurations>(Some("api-version=2019-01-01")).unwrap_err();
        assert_eq!(err.code(), "InvalidApiVersionParameter");
        assert!(err.to_string().contains("2025-04-01"));
    }

    #[test]
    fn api_version_name_matches_case_insensitively() {
        assert_eq!(
            check::<FluxConfigurations>(Some("API-Version=2024-11-01")).unwrap(),
            "2024-11-01"
        );
    }

    #[test]
    fn resource_manager_versions_are_dates_with_an_optional_suffix() {
        for good in ["2022-12-01", "2016-06-01", "2021-04-01-preview"] {
            assert!(is_date_version(good), "{good}");
        }
        for bad in [
            "",
            "2022-12",
            "2022-12-01-",
            "2022-12-01-pre-view",
            "20221201",
            "2022-1a-01",
            "2022-12-01x",
            "2022-12-0é",
            "2022-12-01-é",
        ] {
            assert!(!is_date_version(bad), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_query_string_yields_a_version_or_a_bad_request(query in "\\PC{0,120}|(api-version=[0-9a-z%-]{0,12}&?){0,3}") {
            for outcome in [check::<Clusters>(Some(&query)), check::<FluxConfigurations>(Some(&query)), check::<Fleet>(Some(&query))] {
                if let Err(err) = outcome {
                    proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
                }
            }
        }
    }
}
