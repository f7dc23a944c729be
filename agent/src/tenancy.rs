//! Multi-tenancy as Azure's `microsoft.flux` extension enforces it, on by default and off with the extension's
//! setting `multiTenancy.enforce=false`:
//!
//! - each configuration's namespace gets the ServiceAccount `flux-applier`, bound to `cluster-admin` within that
//!   namespace (a RoleBinding), and, for a configuration of cluster scope, across the cluster (a
//!   ClusterRoleBinding): what Azure's Flux extension sets up, so that a namespace-scoped configuration can only
//!   change its own namespace while a cluster-scoped one may still create namespaces and cluster-wide objects;
//! - the configuration's Kustomizations name it (`spec.serviceAccountName: flux-applier`), so Flux applies them
//!   with its rights rather than the kustomize-controller's own;
//! - references from a Flux object to a source in another namespace are what Flux's `--no-cross-namespace-refs`
//!   refuses: the objects the agent writes never hold one, and those the Kustomizations apply from the repository
//!   are reported Non-Compliant when they do ([`cross_namespace_references`]).
//!
//! The objects are shared by every configuration of a namespace, so they carry fluxplane's managed-by label but no
//! configuration's, and leave with the namespace's last configuration (or with the setting).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::objects::{KUSTOMIZE_API, MANAGED_BY};

/// The extension setting that turns multi-tenancy off when `false`.
pub const SETTING: &str = "multiTenancy.enforce";
/// The service account a configuration's Kustomizations run as, in the configuration's namespace.
pub const APPLIER: &str = "flux-applier";
/// The name of the RoleBinding (in the namespace) and the prefix of the ClusterRoleBinding's name.
pub const APPLIER_BINDING: &str = "flux-applier-binding";
/// The role the applier is bound to: Azure binds `cluster-admin`, within the namespace or across the cluster.
pub const APPLIER_ROLE: &str = "cluster-admin";
pub const RBAC_API: &str = "rbac.authorization.k8s.io/v1";

/// Whether the Flux extension's settings enforce multi-tenancy: yes unless `multiTenancy.enforce` says `false` (in
/// any case), as Azure's extension reads it; with no extension, Azure's default.
pub fn enforced(settings: Option<&BTreeMap<String, String>>) -> bool {
    settings
        .and_then(|s| s.get(SETTING))
        .is_none_or(|value| !value.trim().eq_ignore_ascii_case("false"))
}

/// The name of the ClusterRoleBinding that lets `namespace`'s applier act across the cluster: one per namespace,
/// since each namespace has its own applier.
pub fn cluster_binding_name(namespace: &str) -> String {
    format!("{APPLIER_BINDING}-{namespace}")
}

fn shared_metadata(name: &str, namespace: Option<&str>) -> Value {
    let mut metadata = json!({"name": name, "labels": {MANAGED_BY.0: MANAGED_BY.1}});
    if let Some(namespace) = namespace {
        metadata["namespace"] = json!(namespace);
    }
    metadata
}

/// The applier's ServiceAccount in `namespace`.
pub fn service_account(namespace: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": shared_metadata(APPLIER, Some(namespace))})
}

fn subject(namespace: &str) -> Value {
    json!([{"kind": "ServiceAccount", "name": APPLIER, "namespace": namespace}])
}

fn role_ref() -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": APPLIER_ROLE})
}

/// The applier's rights within `namespace`.
pub fn role_binding(namespace: &str) -> Value {
    json!({
        "apiVersion": RBAC_API,
        "kind": "RoleBinding",
        "metadata": shared_metadata(APPLIER_BINDING, Some(namespace)),
        "roleRef": role_ref(),
        "subjects": subject(namespace),
    })
}

/// The applier's rights across the cluster, for configurations of cluster scope in `namespace`.
pub fn cluster_role_binding(namespace: &str) -> Value {
    json!({
        "apiVersion": RBAC_API,
        "kind": "ClusterRoleBinding",
        "metadata": shared_metadata(&cluster_binding_name(namespace), None),
        "roleRef": role_ref(),
        "subjects": subject(namespace),
    })
}

/// Makes every Kustomization among `objects` run as the applier of its own namespace.
pub fn impersonate(objects: &mut [Value]) {
    for object in objects {
        if object["apiVersion"] == KUSTOMIZE_API && object["kind"] == "Kustomization" {
            object["spec"]["serviceAccountName"] = json!(APPLIER);
        }
    }
}

/// The source references of a Flux object that name another namespace than its own, as `Kind namespace/name`:
/// what Flux's controllers refuse under `--no-cross-namespace-refs=true` (a Kustomization's or an
/// ImageUpdateAutomation's `sourceRef`, a HelmRelease's chart source or `chartRef`, an ImagePolicy's
/// `imageRepositoryRef`). A reference without a namespace means the object's own.
pub fn cross_namespace_references(kind: &str, object: &Value) -> Vec<String> {
    let own = object["metadata"]["namespace"].as_str().unwrap_or_default();
    let spec = &object["spec"];
    let references: Vec<(&Value, &str)> = match kind {
        "Kustomization" | "ImageUpdateAutomation" => vec![(&spec["sourceRef"], "")],
        "HelmRelease" => vec![(&spec["chart"]["spec"]["sourceRef"], ""), (&spec["chartRef"], "")],
        "ImagePolicy" => vec![(&spec["imageRepositoryRef"], "ImageRepository")],
        _ => Vec::new(),
    };
    references
        .into_iter()
        .filter_map(|(reference, default_kind)| {
            let namespace = reference["namespace"].as_str().filter(|n| !n.is_empty())?;
            (namespace != own).then(|| {
                let kind = reference["kind"].as_str().unwrap_or(default_kind);
                let name = reference["name"].as_str().unwrap_or_default();
                format!("{kind} {namespace}/{name}").trim_start().to_owned()
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_tenancy_is_on_unless_the_extension_says_false() {
        let with = |value: &str| BTreeMap::from([(SETTING.to_owned(), value.to_owned())]);
        assert!(enforced(None), "no extension: Azure's default");
        assert!(enforced(Some(&BTreeMap::new())));
        assert!(enforced(Some(&with("true"))));
        assert!(!enforced(Some(&with("false"))));
        assert!(!enforced(Some(&with(" FALSE "))));
        assert!(enforced(Some(&with("no"))), "only `false` turns it off");
    }

    #[test]
    fn kustomizations_run_as_the_applier_and_nothing_else_changes() {
        let mut objects = vec![
            json!({"apiVersion": "source.toolkit.fluxcd.io/v1", "kind": "GitRepository", "spec": {}}),
            json!({"apiVersion": KUSTOMIZE_API, "kind": "Kustomization", "spec": {"path": "./"}}),
        ];
        impersonate(&mut objects);
        assert_eq!(objects[1]["spec"]["serviceAccountName"], APPLIER);
        assert_eq!(objects[0]["spec"], json!({}));
    }

    #[test]
    fn the_applier_is_bound_to_cluster_admin_in_its_namespace_or_across_the_cluster() {
        let binding = role_binding("team-a");
        assert_eq!(binding["metadata"]["namespace"], "team-a");
        assert_eq!(binding["roleRef"]["name"], "cluster-admin");
        assert_eq!(
            binding["subjects"][0],
            json!({"kind": "ServiceAccount", "name": "flux-applier", "namespace": "team-a"})
        );
        let cluster = cluster_role_binding("team-a");
        assert_eq!(cluster["metadata"]["name"], "flux-applier-binding-team-a");
        assert!(cluster["metadata"].get("namespace").is_none());
        assert_eq!(cluster["subjects"], binding["subjects"]);
        assert_eq!(
            service_account("team-a")["metadata"]["labels"][MANAGED_BY.0],
            MANAGED_BY.1
        );
    }

    fn crossing(object: &Value) -> Vec<String> {
        cross_namespace_references(object["kind"].as_str().unwrap(), object)
    }

    #[test]
    fn only_references_to_another_namespace_cross() {
        let release = json!({"kind": "HelmRelease", "metadata": {"namespace": "apps", "name": "nginx"},
            "spec": {"chart": {"spec": {"chart": "nginx", "sourceRef": {"kind": "HelmRepository",
                     "name": "bitnami", "namespace": "flux-system"}}}}});
        assert_eq!(crossing(&release), ["HelmRepository flux-system/bitnami"]);
        let local = json!({"kind": "HelmRelease", "metadata": {"namespace": "apps"},
            "spec": {"chartRef": {"kind": "OCIRepository", "name": "podinfo", "namespace": "apps"}}});
        assert!(crossing(&local).is_empty());
        let implicit = json!({"kind": "Kustomization", "metadata": {"namespace": "apps"},
            "spec": {"sourceRef": {"kind": "GitRepository", "name": "repo"}}});
        assert!(crossing(&implicit).is_empty(), "no namespace: its own");
        let kustomization = json!({"kind": "Kustomization", "metadata": {"namespace": "apps"},
            "spec": {"sourceRef": {"kind": "GitRepository", "name": "repo", "namespace": "other"}}});
        assert_eq!(crossing(&kustomization), ["GitRepository other/repo"]);
        let policy = json!({"kind": "ImagePolicy", "metadata": {"namespace": "apps"},
            "spec": {"imageRepositoryRef": {"name": "podinfo", "namespace": "flux-system"}}});
        assert_eq!(crossing(&policy), ["ImageRepository flux-system/podinfo"]);
        let alert = json!({"kind": "Alert", "metadata": {"namespace": "apps"},
            "spec": {"eventSources": [{"kind": "Kustomization", "name": "*", "namespace": "other"}]}});
        assert!(crossing(&alert).is_empty(), "event sources are not source references");
    }
}
