//! What the agent finds of Flux in its cluster, reported as the `microsoft.flux` extension's statuses: the Flux
//! version and each controller, from the Deployments of the extension's namespace that Flux's install manifests
//! label `app.kubernetes.io/part-of: flux` (with `app.kubernetes.io/version: v2.x.y` and
//! `app.kubernetes.io/component: <controller>`), and how multi-tenancy stands: enforced by the agent, and by Flux's
//! own controllers only where they run with `--no-cross-namespace-refs=true`, which the agent cannot set since it
//! does not install Flux.

use std::collections::BTreeSet;

use fluxplane_agent_protocol::agent::{ExtensionStatus, StatusLevel};
use k8s_openapi::api::apps::v1::Deployment;

use crate::tenancy;

/// The label Flux's install manifests give every object of Flux, as `key=value`.
pub const PART_OF_FLUX: &str = "app.kubernetes.io/part-of=flux";
const VERSION_LABEL: &str = "app.kubernetes.io/version";
const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// The controllers that follow source references, and so the ones `--no-cross-namespace-refs` matters to.
const REFERENCE_FOLLOWERS: [&str; 2] = ["kustomize-controller", "helm-controller"];
const NO_CROSS_NAMESPACE_REFS: &str = "--no-cross-namespace-refs";

fn status(code: &str, display: &str, level: StatusLevel, message: String) -> ExtensionStatus {
    ExtensionStatus {
        code: Some(code.to_owned()),
        display_status: Some(display.to_owned()),
        level: Some(level),
        message: Some(message),
        time: None,
    }
}

fn label<'a>(deployment: &'a Deployment, key: &str) -> Option<&'a str> {
    deployment.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn controller_name(deployment: &Deployment) -> String {
    label(deployment, COMPONENT_LABEL)
        .or(deployment.metadata.name.as_deref())
        .unwrap_or("controller")
        .to_owned()
}

fn args(deployment: &Deployment) -> impl Iterator<Item = &String> {
    deployment
        .spec
        .iter()
        .flat_map(|spec| spec.template.spec.iter())
        .flat_map(|pod| pod.containers.iter())
        .flat_map(|container| container.args.iter().flatten())
}

/// Whether a controller runs with `--no-cross-namespace-refs` (a Go boolean flag: alone, or `=true`).
fn refuses_cross_namespace_refs(deployment: &Deployment) -> bool {
    args(deployment)
        .any(|arg| arg == NO_CROSS_NAMESPACE_REFS || arg.strip_prefix(NO_CROSS_NAMESPACE_REFS) == Some("=true"))
}

/// The statuses of Flux as found in `namespace`'s Deployments labelled part of Flux.
pub fn statuses(namespace: &str, deployments: &[Deployment], multi_tenancy: bool) -> Vec<ExtensionStatus> {
    if deployments.is_empty() {
        return vec![status(
            "FluxNotFound",
            "NotFound",
            StatusLevel::Error,
            format!(
                "no Deployment labelled {PART_OF_FLUX} in the namespace {namespace}: Flux is not installed there \
                 (`flux install`), so nothing reconciles the configurations' Flux objects"
            ),
        )];
    }
    let mut found = Vec::new();
    let versions: BTreeSet<&str> = deployments.iter().filter_map(|d| label(d, VERSION_LABEL)).collect();
    let names: Vec<String> = deployments.iter().map(controller_name).collect();
    let versions_text = versions.iter().copied().collect::<Vec<_>>().join(", ");
    found.push(match versions.len() {
        0 => status(
            "FluxVersion",
            "Unknown",
            StatusLevel::Warning,
            format!(
                "Flux's controllers in {namespace} ({}) carry no {VERSION_LABEL} label",
                names.join(", ")
            ),
        ),
        1 => status(
            "FluxVersion",
            &versions_text,
            StatusLevel::Information,
            format!("Flux {versions_text} in {namespace}: {}", names.join(", ")),
        ),
        _ => status(
            "FluxVersion",
            &versions_text,
            StatusLevel::Warning,
            format!(
                "Flux's controllers in {namespace} are of several versions ({versions_text}): an upgrade did not \
                 finish"
            ),
        ),
    });
    for deployment in deployments {
        let name = controller_name(deployment);
        let wanted = deployment.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let ready = deployment.status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0);
        let image = deployment
            .spec
            .iter()
            .flat_map(|spec| spec.template.spec.iter())
            .flat_map(|pod| pod.containers.iter())
            .find_map(|container| container.image.clone())
            .unwrap_or_default();
        let healthy = wanted > 0 && ready >= wanted;
        found.push(status(
            "FluxController",
            &name,
            if healthy {
                StatusLevel::Information
            } else {
                StatusLevel::Warning
            },
            format!("{name} ({image}): {ready}/{wanted} replicas ready"),
        ));
    }
    let followers: Vec<&Deployment> = deployments
        .iter()
        .filter(|d| REFERENCE_FOLLOWERS.contains(&controller_name(d).as_str()))
        .collect();
    let lax: Vec<String> = followers
        .iter()
        .filter(|d| !refuses_cross_namespace_refs(d))
        .map(|d| controller_name(d))
        .collect();
    found.push(if !multi_tenancy {
        status(
            "MultiTenancy",
            "NotEnforced",
            StatusLevel::Information,
            format!(
                "{}=false: Kustomizations run as the kustomize-controller's own service account and \
                 cross-namespace references are not reported",
                tenancy::SETTING
            ),
        )
    } else if lax.is_empty() {
        status(
            "MultiTenancy",
            "Enforced",
            StatusLevel::Information,
            format!(
                "Kustomizations run as {} in their configuration's namespace; Flux's controllers refuse \
                 cross-namespace references ({NO_CROSS_NAMESPACE_REFS}=true)",
                tenancy::APPLIER
            ),
        )
    } else {
        status(
            "MultiTenancy",
            "Enforced",
            StatusLevel::Warning,
            format!(
                "Kustomizations run as {} in their configuration's namespace and the agent reports cross-namespace \
                 source references Non-Compliant, but {} run without {NO_CROSS_NAMESPACE_REFS}=true, so Flux still \
                 follows them",
                tenancy::APPLIER,
                lax.join(", ")
            ),
        )
    });
    found
}

/// The statuses when the Deployments cannot be read.
pub fn unreadable(namespace: &str, error: &str) -> Vec<ExtensionStatus> {
    vec![status(
        "FluxUnknown",
        "Unknown",
        StatusLevel::Warning,
        format!("reading Flux's controllers in {namespace} failed: {error}"),
    )]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment(component: &str, version: &str, ready: i32, args: &[&str]) -> Deployment {
        serde_json::from_value(json!({
            "metadata": {"name": component, "namespace": "flux-system", "labels": {
                "app.kubernetes.io/part-of": "flux", "app.kubernetes.io/version": version,
                "app.kubernetes.io/component": component, "app.kubernetes.io/instance": "flux-system"}},
            "spec": {"replicas": 1, "selector": {}, "template": {"spec": {"containers": [
                {"name": "manager", "image": format!("ghcr.io/fluxcd/{component}:v1.7.0"), "args": args}]}}},
            "status": {"readyReplicas": ready}
        }))
        .unwrap()
    }

    fn codes(statuses: &[ExtensionStatus]) -> Vec<(&str, &str, StatusLevel)> {
        statuses
            .iter()
            .map(|s| {
                (
                    s.code.as_deref().unwrap(),
                    s.display_status.as_deref().unwrap(),
                    s.level.unwrap(),
                )
            })
            .collect()
    }

    #[test]
    fn the_flux_version_and_each_controller_are_reported() {
        let found = statuses(
            "flux-system",
            &[
                deployment("source-controller", "v2.7.0", 1, &[]),
                deployment("kustomize-controller", "v2.7.0", 0, &["--no-cross-namespace-refs=true"]),
                deployment("helm-controller", "v2.7.0", 1, &["--no-cross-namespace-refs"]),
            ],
            true,
        );
        assert_eq!(
            codes(&found),
            [
                ("FluxVersion", "v2.7.0", StatusLevel::Information),
                ("FluxController", "source-controller", StatusLevel::Information),
                ("FluxController", "kustomize-controller", StatusLevel::Warning),
                ("FluxController", "helm-controller", StatusLevel::Information),
                ("MultiTenancy", "Enforced", StatusLevel::Information),
            ]
        );
        assert!(found[2].message.as_deref().unwrap().contains("0/1 replicas ready"));
        assert!(
            found[1]
                .message
                .as_deref()
                .unwrap()
                .contains("ghcr.io/fluxcd/source-controller:v1.7.0")
        );
    }

    #[test]
    fn controllers_that_follow_cross_namespace_references_are_named_under_multi_tenancy() {
        let lax = [
            deployment(
                "kustomize-controller",
                "v2.7.0",
                1,
                &["--no-cross-namespace-refs=false"],
            ),
            deployment("helm-controller", "v2.6.0", 1, &[]),
        ];
        let found = statuses("flux-system", &lax, true);
        assert_eq!(found[0].level, Some(StatusLevel::Warning), "mixed versions");
        let tenancy = found.last().unwrap();
        assert_eq!(tenancy.level, Some(StatusLevel::Warning));
        assert!(
            tenancy
                .message
                .as_deref()
                .unwrap()
                .contains("kustomize-controller, helm-controller run without"),
            "{tenancy:?}"
        );
        let off = statuses("flux-system", &lax, false);
        assert_eq!(
            codes(&off).last().unwrap(),
            &("MultiTenancy", "NotEnforced", StatusLevel::Information)
        );
    }

    #[test]
    fn a_cluster_without_flux_says_so() {
        let found = statuses("flux-system", &[], true);
        assert_eq!(codes(&found), [("FluxNotFound", "NotFound", StatusLevel::Error)]);
        assert!(found[0].message.as_deref().unwrap().contains("flux-system"));
    }
}
