//! The Flux objects a Kustomization applied from its source (HelmReleases, nested Kustomizations, sources,
//! notification and image objects), found in its inventory, and what each one's status says: its compliance, its
//! `Ready` condition, and for a HelmRelease Azure's `helmReleaseProperties`.
//!
//! Flux records what a Kustomization applied in `status.inventory.entries[]`, each `{"id":
//! "<namespace>_<name>_<group>_<kind>", "v": "<version>"}` (an empty namespace for cluster-wide objects, an empty
//! group for the core one). Only the kinds of Flux's own API groups (`*.toolkit.fluxcd.io`) are read, one request
//! each, and at most [`MAX_OBJECTS_READ`] per check of a configuration: a Kustomization may list thousands of
//! objects, and the report carries each one read.

use fluxplane_agent_protocol::flux::{
    ComplianceState, HelmReleaseProperties, ObjectReference, ObjectStatus, ObjectStatusCondition,
};
use kube::core::ApiResource;
use serde_json::Value;
#[cfg(test)]
use serde_json::json;

use super::compliance_of;
use crate::tenancy;

/// How many Flux objects of the Kustomizations' inventories one check of a configuration reads, at most.
pub const MAX_OBJECTS_READ: usize = 50;

/// The Flux kinds read from inventories, as (group, kind, plural). Each needs `get` in the agent's RBAC.
pub const FLUX_KINDS: [(&str, &str, &str); 13] = [
    ("helm.toolkit.fluxcd.io", "HelmRelease", "helmreleases"),
    ("kustomize.toolkit.fluxcd.io", "Kustomization", "kustomizations"),
    ("source.toolkit.fluxcd.io", "GitRepository", "gitrepositories"),
    ("source.toolkit.fluxcd.io", "OCIRepository", "ocirepositories"),
    ("source.toolkit.fluxcd.io", "Bucket", "buckets"),
    ("source.toolkit.fluxcd.io", "HelmRepository", "helmrepositories"),
    ("source.toolkit.fluxcd.io", "HelmChart", "helmcharts"),
    ("notification.toolkit.fluxcd.io", "Alert", "alerts"),
    ("notification.toolkit.fluxcd.io", "Provider", "providers"),
    ("notification.toolkit.fluxcd.io", "Receiver", "receivers"),
    ("image.toolkit.fluxcd.io", "ImageRepository", "imagerepositories"),
    ("image.toolkit.fluxcd.io", "ImagePolicy", "imagepolicies"),
    (
        "image.toolkit.fluxcd.io",
        "ImageUpdateAutomation",
        "imageupdateautomations",
    ),
];

/// One object of an inventory.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Entry {
    pub namespace: String,
    pub name: String,
    pub group: String,
    pub kind: String,
    pub version: String,
}

impl Entry {
    /// An inventory entry's id, `<namespace>_<name>_<group>_<kind>`: the kind and group are the last two fields
    /// and the namespace (a DNS label, without `_`) the first, so whatever is left is the name.
    pub fn parse(id: &str, version: &str) -> Option<Entry> {
        let (rest, kind) = id.rsplit_once('_')?;
        let (rest, group) = rest.rsplit_once('_')?;
        let (namespace, name) = rest.split_once('_')?;
        (!name.is_empty() && !kind.is_empty()).then(|| Entry {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            group: group.to_owned(),
            kind: kind.to_owned(),
            version: version.to_owned(),
        })
    }

    /// Whether the entry is of one of Flux's API groups.
    pub fn is_flux(&self) -> bool {
        self.group.ends_with(".toolkit.fluxcd.io")
    }

    /// The API resource to read it at, if it is a kind the agent reads.
    pub fn resource(&self) -> Option<ApiResource> {
        let (_, _, plural) = FLUX_KINDS
            .iter()
            .find(|(group, kind, _)| *group == self.group && *kind == self.kind)?;
        Some(ApiResource {
            group: self.group.clone(),
            version: self.version.clone(),
            api_version: format!("{}/{}", self.group, self.version),
            kind: self.kind.clone(),
            plural: (*plural).to_owned(),
        })
    }
}

/// The Flux objects a Kustomization's inventory lists, in its order.
pub fn flux_entries(kustomization: &Value) -> Vec<Entry> {
    kustomization["status"]["inventory"]["entries"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| Entry::parse(entry["id"].as_str()?, entry["v"].as_str().unwrap_or_default()))
        .filter(Entry::is_flux)
        .collect()
}

/// The compliance of an object read from an inventory. Notification `Alert`s and `Provider`s have had no status
/// since `v1beta3` (they are static configuration): one without conditions is compliant by being there.
fn child_compliance(kind: &str, object: &Value) -> (ComplianceState, Option<ObjectStatusCondition>) {
    let conditions = object["status"]["conditions"].as_array().is_some_and(|c| !c.is_empty());
    if matches!(kind, "Alert" | "Provider") && !conditions && object["spec"]["suspend"] != Value::Bool(true) {
        return (ComplianceState::Compliant, None);
    }
    compliance_of(object)
}

/// Azure's `helmReleaseProperties` of a HelmRelease: the last successful release's revision (the newest
/// `deployed` snapshot of `status.history` in `v2`, `status.lastReleaseRevision` before), the HelmChart it was made
/// from (`status.helmChart`, `namespace/name`), and its failure counts.
pub fn helm_release_properties(object: &Value) -> HelmReleaseProperties {
    let status = &object["status"];
    let deployed = status["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|snapshot| snapshot["status"] == "deployed")
        .filter_map(|snapshot| snapshot["version"].as_i64())
        .max();
    let helm_chart_ref = status["helmChart"]
        .as_str()
        .and_then(|chart| chart.split_once('/'))
        .map(|(namespace, name)| ObjectReference {
            name: Some(name.to_owned()),
            namespace: Some(namespace.to_owned()),
        });
    HelmReleaseProperties {
        last_revision_applied: deployed.or_else(|| status["lastReleaseRevision"].as_i64()),
        helm_chart_ref,
        failure_count: status["failures"].as_i64(),
        install_failure_count: status["installFailures"].as_i64(),
        upgrade_failure_count: status["upgradeFailures"].as_i64(),
    }
}

/// The status of one inventory object as read (`None`: not found), applied by `applied_by`, and why it is not
/// compliant when it is not. Under multi-tenancy a cross-namespace source reference makes it Non-Compliant, with a
/// condition saying so, as Flux's `--no-cross-namespace-refs` would fail it.
pub fn object_status(
    entry: &Entry,
    object: Option<&Value>,
    applied_by: &ObjectReference,
    multi_tenancy: bool,
) -> (ObjectStatus, Option<String>) {
    let mut status = ObjectStatus {
        name: Some(entry.name.clone()),
        namespace: (!entry.namespace.is_empty()).then(|| entry.namespace.clone()),
        kind: Some(entry.kind.clone()),
        compliance_state: Some(ComplianceState::Pending),
        applied_by: Some(applied_by.clone()),
        status_conditions: None,
        helm_release_properties: None,
    };
    let label = format!("{} {}/{}", entry.kind, entry.namespace, entry.name);
    let Some(object) = object else {
        // listed as applied but gone: Flux creates it again on its next reconciliation
        return (status, None);
    };
    let (mut state, condition) = child_compliance(&entry.kind, object);
    let mut conditions: Vec<ObjectStatusCondition> = condition.into_iter().collect();
    let mut message = (state == ComplianceState::NonCompliant)
        .then(|| conditions.first().and_then(|c| c.message.clone()))
        .flatten()
        .map(|m| format!("{label}: {m}"));
    if multi_tenancy {
        let crossing = tenancy::cross_namespace_references(&entry.kind, object);
        if !crossing.is_empty() {
            let why = format!(
                "cross-namespace references are refused under multi-tenancy (the Flux extension's \
                 {}=false turns it off): {}",
                tenancy::SETTING,
                crossing.join(", ")
            );
            state = ComplianceState::NonCompliant;
            message = Some(format!("{label}: {why}"));
            conditions.push(ObjectStatusCondition {
                last_transition_time: None,
                message: Some(why),
                reason: Some("CrossNamespaceReference".to_owned()),
                status: Some("False".to_owned()),
                type_: Some("MultiTenancy".to_owned()),
            });
        }
    }
    status.compliance_state = Some(state);
    status.status_conditions = (!conditions.is_empty()).then_some(conditions);
    if entry.kind == "HelmRelease" {
        status.helm_release_properties = Some(helm_release_properties(object));
    }
    (status, message)
}

/// What the check says of the inventories' objects it did not read.
pub fn unread_message(read: usize, listed: usize, unknown_kinds: &[String]) -> Option<String> {
    let mut parts = Vec::new();
    if listed > read {
        parts.push(format!(
            "{read} of the {listed} Flux objects the kustomizations applied were read (at most \
             {MAX_OBJECTS_READ} per check); the others are not in statuses"
        ));
    }
    if !unknown_kinds.is_empty() {
        parts.push(format!(
            "Flux objects of kinds the agent does not read are not in statuses: {}",
            unknown_kinds.join(", ")
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// A Flux object as an inventory lists it, for tests.
#[cfg(test)]
pub fn inventory(entries: &[(&str, &str)]) -> Value {
    let entries: Vec<Value> = entries.iter().map(|(id, v)| json!({"id": id, "v": v})).collect();
    json!({"status": {"inventory": {"entries": entries}}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inventory_ids_name_namespace_name_group_and_kind() {
        assert_eq!(
            Entry::parse("apps_podinfo_helm.toolkit.fluxcd.io_HelmRelease", "v2"),
            Some(Entry {
                namespace: "apps".into(),
                name: "podinfo".into(),
                group: "helm.toolkit.fluxcd.io".into(),
                kind: "HelmRelease".into(),
                version: "v2".into(),
            })
        );
        let namespace = Entry::parse("_apps__Namespace", "v1").unwrap();
        assert_eq!(
            (
                namespace.namespace.as_str(),
                namespace.name.as_str(),
                namespace.group.as_str()
            ),
            ("", "apps", "")
        );
        let config_map = Entry::parse("apps_settings__ConfigMap", "v1").unwrap();
        assert_eq!((config_map.group.as_str(), config_map.kind.as_str()), ("", "ConfigMap"));
        assert_eq!(Entry::parse("nonsense", "v1"), None);
    }

    #[test]
    fn only_fluxs_own_kinds_are_taken_from_an_inventory() {
        let kustomization = inventory(&[
            ("_apps__Namespace", "v1"),
            ("apps_podinfo_apps_Deployment", "v1"),
            ("apps_podinfo_helm.toolkit.fluxcd.io_HelmRelease", "v2"),
            ("apps_podinfo_source.toolkit.fluxcd.io_HelmRepository", "v1"),
        ]);
        let entries = flux_entries(&kustomization);
        let kinds: Vec<&str> = entries.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["HelmRelease", "HelmRepository"]);
        let resource = entries[0].resource().unwrap();
        assert_eq!(resource.api_version, "helm.toolkit.fluxcd.io/v2");
        assert_eq!(resource.plural, "helmreleases");
        let unknown = Entry::parse("apps_x_source.toolkit.fluxcd.io_FutureSource", "v1").unwrap();
        assert!(unknown.is_flux() && unknown.resource().is_none());
        assert!(flux_entries(&json!({"status": {}})).is_empty());
    }

    #[test]
    fn a_helm_releases_properties_come_from_its_v2_status() {
        let release = json!({"status": {
            "history": [
                {"version": 4, "status": "failed", "chartVersion": "6.1.0"},
                {"version": 3, "status": "deployed", "chartVersion": "6.0.0"},
                {"version": 2, "status": "superseded", "chartVersion": "5.0.0"}
            ],
            "helmChart": "flux-system/apps-podinfo",
            "failures": 5, "installFailures": 0, "upgradeFailures": 3,
            "lastAttemptedRevision": "6.1.0"
        }});
        assert_eq!(
            helm_release_properties(&release),
            HelmReleaseProperties {
                last_revision_applied: Some(3),
                helm_chart_ref: Some(ObjectReference {
                    name: Some("apps-podinfo".into()),
                    namespace: Some("flux-system".into()),
                }),
                failure_count: Some(5),
                install_failure_count: Some(0),
                upgrade_failure_count: Some(3),
            }
        );
        let older = json!({"status": {"lastReleaseRevision": 7}});
        assert_eq!(helm_release_properties(&older).last_revision_applied, Some(7));
        assert_eq!(helm_release_properties(&json!({})), HelmReleaseProperties::default());
    }

    #[test]
    fn static_notification_objects_are_compliant_by_being_there_and_releases_by_their_ready_condition() {
        let by = ObjectReference {
            name: Some("cfg-apps".into()),
            namespace: Some("flux-system".into()),
        };
        let alert = Entry::parse("apps_slack_notification.toolkit.fluxcd.io_Alert", "v1beta3").unwrap();
        let (status, message) = object_status(&alert, Some(&json!({"spec": {}})), &by, true);
        assert_eq!(status.compliance_state, Some(ComplianceState::Compliant));
        assert_eq!(message, None);

        let release = Entry::parse("apps_podinfo_helm.toolkit.fluxcd.io_HelmRelease", "v2").unwrap();
        let (status, _) = object_status(&release, Some(&json!({"spec": {}})), &by, true);
        assert_eq!(
            status.compliance_state,
            Some(ComplianceState::Pending),
            "not reconciled yet"
        );
        let (status, _) = object_status(&release, None, &by, true);
        assert_eq!(status.compliance_state, Some(ComplianceState::Pending), "gone");
        assert_eq!(status.applied_by, Some(by));
    }
}
