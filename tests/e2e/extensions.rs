//! End-to-end: the `microsoft.flux` cluster extension as Azure's tools drive it. A real agent completes its
//! long-running operations; a cluster's first Flux configuration brings it; other types and a second Flux
//! extension are refused; configurations wait while it is deleted; its protected settings are never answered; what
//! the agent finds of Flux in its cluster is answered as its statuses.

use std::time::{Duration, Instant};

use crate::common::agents::*;
use crate::common::*;
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent_protocol::agent::{ApplyOutcome, ExtensionReport, ExtensionStatus, StatusLevel, StatusReport};
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The default api-version of `@azure/arm-kubernetesconfiguration` 6.1.0.
const EXTENSIONS_API: &str = "2023-05-01";
/// A protected setting findable in any answer.
const SECRET: &str = "sentinel-extension-secret-9";

fn extensions_path(cluster: &str) -> String {
    format!("{cluster}/providers/Microsoft.KubernetesConfiguration/extensions")
}

fn extension_path(cluster: &str, name: &str) -> String {
    with_version(&format!("{}/{name}", extensions_path(cluster)), EXTENSIONS_API)
}

/// What `az k8s-extension create --extension-type microsoft.flux` sends for a connected cluster (with the
/// cluster's location, as the CLI adds it).
fn flux_body() -> Value {
    json!({
        "identity": {"type": "SystemAssigned"},
        "location": "westeurope",
        "properties": {
            "extensionType": "microsoft.flux",
            "autoUpgradeMinorVersion": true,
            "releaseTrain": "Stable",
            "scope": {"cluster": {"releaseNamespace": "flux-system"}},
            "configurationSettings": {"multiTenancy.enforce": "false"},
            "configurationProtectedSettings": {"token": SECRET}
        }
    })
}

/// Polls an operation until it leaves InProgress (or fails after 20 s); every InProgress answer carries
/// Retry-After.
async fn finished(api: &Api, url: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = api.get(url).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        if answer.body["status"] != "InProgress" {
            assert!(answer.header("retry-after").is_none(), "{answer:?}");
            return answer.body;
        }
        assert!(answer.header("retry-after").is_some(), "{answer:?}");
        assert!(Instant::now() < deadline, "the operation is still running: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_no_secret(answer: &Answer) {
    let text = answer.body.to_string();
    assert!(!text.contains(SECRET), "the answer holds the protected setting: {text}");
    assert!(!text.contains("configurationProtectedSettings"), "{text}");
}

on_both_backends!(
    the_flux_extension_is_created_read_listed_patched_and_deleted_through_a_real_agent,
    lifecycle_case
);
async fn lifecycle_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = extension_path(&cluster, "flux");

    let created = api.call(Method::PUT, &path, Some(flux_body())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_no_secret(&created);
    assert!(created.header("retry-after").is_some(), "{created:?}");
    assert_eq!(created.body["type"], "Microsoft.KubernetesConfiguration/extensions");
    assert_eq!(created.body["identity"], json!({"type": "SystemAssigned"}));
    let operation = created.header("azure-asyncoperation").unwrap().to_owned();
    assert!(operation.contains("/extensions/flux/operations/"), "{operation}");
    assert_eq!(finished(&api, &operation).await["status"], "Succeeded");

    let read = api.get(&path).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_no_secret(&read);
    let properties = &read.body["properties"];
    assert_eq!(properties["provisioningState"], "Succeeded", "{read:?}");
    assert_eq!(
        properties["currentVersion"],
        env!("CARGO_PKG_VERSION"),
        "the agent's version is installed"
    );
    assert_eq!(properties["isSystemExtension"], false);
    assert_eq!(
        properties["scope"],
        json!({"cluster": {"releaseNamespace": "flux-system"}})
    );
    assert_eq!(
        properties["configurationSettings"],
        json!({"multiTenancy.enforce": "false"})
    );
    assert!(read.header("etag").is_some());

    // what `az k8s-configuration flux create` looks for before it writes a configuration
    let listed = api.get(&with_version(&extensions_path(&cluster), EXTENSIONS_API)).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_no_secret(&listed);
    let flux: Vec<&Value> = listed.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["properties"]["extensionType"] == "microsoft.flux")
        .collect();
    assert_eq!(flux.len(), 1);
    assert_eq!(flux[0]["properties"]["provisioningState"], "Succeeded");

    let older = api
        .get(&with_version(
            &format!("{}/flux", extensions_path(&cluster)),
            "2022-03-01",
        ))
        .await;
    assert!(
        older.body["properties"].get("currentVersion").is_none(),
        "2022-03-01 lacks it"
    );

    let patch = json!({"properties": {"configurationSettings": {"multiTenancy.enforce": "true"}}});
    let patched = api.call(Method::PATCH, &path, Some(patch)).await;
    assert_eq!(patched.status, StatusCode::ACCEPTED, "{patched:?}");
    assert_eq!(patched.body["properties"]["provisioningState"], "Updating");
    let operation = patched.header("azure-asyncoperation").unwrap().to_owned();
    assert_eq!(finished(&api, &operation).await["status"], "Succeeded");
    let read = api.get(&path).await;
    assert_eq!(
        read.body["properties"]["configurationSettings"]["multiTenancy.enforce"],
        "true"
    );
    assert_eq!(read.body["properties"]["provisioningState"], "Succeeded");

    let retype = json!({"properties": {"extensionType": "microsoft.dapr"}});
    let refused = api.call(Method::PATCH, &path, Some(retype)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    let newest = with_version(&format!("{}/flux", extensions_path(&cluster)), "2025-03-01");
    let mode = json!({"properties": {"autoUpgradeMode": "patch"}});
    let refused = api.call(Method::PATCH, &newest, Some(mode)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not supported"),
        "{refused:?}"
    );

    let deleted = api.call(Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED, "{deleted:?}");
    assert!(deleted.header("location").is_some());
    let operation = deleted.header("azure-asyncoperation").unwrap().to_owned();
    assert_eq!(finished(&api, &operation).await["status"], "Succeeded");
    assert_eq!(api.get(&path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.call(Method::DELETE, &path, None).await.status,
        StatusCode::NO_CONTENT
    );
    agent.stop().await;
}

on_both_backends!(
    other_types_a_second_flux_extension_and_configuration_writes_while_it_is_deleted_are_refused,
    refusals_case
);
async fn refusals_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    assert!(api.put_cluster("s", "rg", "c1").await.status.is_success());
    let cluster = cluster_path("s", "rg", "c1");
    let path = extension_path(&cluster, "flux");

    let mut monitor = flux_body();
    monitor["properties"]["extensionType"] = json!("microsoft.azuremonitor.containers");
    monitor["properties"]
        .as_object_mut()
        .unwrap()
        .remove("configurationProtectedSettings");
    let refused = api.call(Method::PUT, &path, Some(monitor)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert_eq!(refused.code(), "InvalidParameter");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("microsoft.flux")
    );
    assert_eq!(
        api.get(&path).await.status,
        StatusCode::NOT_FOUND,
        "a refused write changes nothing"
    );

    // the cluster has no agent to seal to: an empty set, as Azure's CLI sends when given none, seals nothing
    let mut plain = flux_body();
    plain["properties"]["configurationProtectedSettings"] = json!({});
    let created = api.call(Method::PUT, &path, Some(plain.clone())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let second = api
        .call(Method::PUT, &extension_path(&cluster, "gitops"), Some(plain))
        .await;
    assert_eq!(second.status, StatusCode::CONFLICT, "{second:?}");
    assert!(
        second.body["error"]["message"].as_str().unwrap().contains("'flux'"),
        "{second:?}"
    );

    let config = api.put_config(&cluster, "cfg", git_config_body()).await;
    assert_eq!(config.status, StatusCode::CREATED, "{config:?}");

    let deleting = api.call(Method::DELETE, &path, None).await;
    assert_eq!(deleting.status, StatusCode::ACCEPTED);
    let waiting = api.put_config(&cluster, "cfg", git_config_body()).await;
    assert_eq!(waiting.status, StatusCode::CONFLICT, "{waiting:?}");
    assert!(
        waiting.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Flux extension 'flux' of cluster 'c1' is being deleted"),
        "{waiting:?}"
    );
    let patch = json!({"properties": {"suspend": true}});
    let config_url = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    assert_eq!(
        api.call(Method::PATCH, &config_url, Some(patch.clone())).await.status,
        StatusCode::CONFLICT
    );

    let forced = api
        .call(Method::DELETE, &format!("{path}&forceDelete=true"), None)
        .await;
    assert_eq!(forced.status, StatusCode::OK, "{forced:?}");
    assert_eq!(api.get(&path).await.status, StatusCode::NOT_FOUND);
    let gone = api.call(Method::PATCH, &config_url, Some(patch)).await;
    assert_eq!(gone.status, StatusCode::CONFLICT, "{gone:?}");
    assert!(
        gone.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("is not installed"),
        "{gone:?}"
    );
    let kept = api.get(&config_url).await;
    assert_eq!(
        kept.status,
        StatusCode::OK,
        "deleting the extension leaves the configurations"
    );
    assert_eq!(
        kept.body["properties"]["suspend"], false,
        "the refused patch changed nothing"
    );
}

on_both_backends!(
    a_first_configuration_brings_the_flux_extension_azures_cli_looks_for_and_the_agent_installs_it,
    brought_case
);
async fn brought_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "c1");
    let created = api.put_config(&cluster, "demo", config_body(&url)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    // listed through another cluster type's path, as scripts written for AKS list it
    let aks = cluster.replace(
        "Microsoft.Kubernetes/connectedClusters",
        "Microsoft.ContainerService/managedClusters",
    );
    let path = with_version(&format!("{}/flux", extensions_path(&aks)), EXTENSIONS_API);
    let installed = until(&api, &path, "the Flux extension installed", |p| {
        p["provisioningState"] == "Succeeded"
    })
    .await;
    assert_eq!(installed["properties"]["extensionType"], "microsoft.flux");
    assert!(
        installed["id"]
            .as_str()
            .unwrap()
            .contains("managedClusters/c1/providers"),
        "{installed}"
    );
    assert_eq!(
        installed["systemData"]["createdBy"],
        created.body["systemData"]["createdBy"]
    );
    agent.stop().await;
}

on_both_backends!(
    a_policy_assignment_brings_the_flux_extension_to_each_cluster_it_gives_a_configuration,
    assignment_case
);
async fn assignment_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    assert!(api.put_cluster("s", "rg", "c1").await.status.is_success());
    let body = json!({"properties": {
        "selector": {"matchLabels": {"env": "prod"}},
        "configurationName": "baseline",
        "configurationTemplate": {
            "gitRepository": {"url": "https://github.com/org/fleet", "repositoryRef": {"branch": "main"}},
            "kustomizations": {"infra": {"path": "./infra"}}
        }
    }});
    let assignment = with_version(
        "/subscriptions/s/providers/Fluxplane.Fleet/policyAssignments/baseline",
        "2026-01-01",
    );
    let created = api.call(Method::PUT, &assignment, Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let listed = api
        .get(&with_version(
            &extensions_path(&cluster_path("s", "rg", "c1")),
            EXTENSIONS_API,
        ))
        .await;
    let names: Vec<&str> = listed.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["flux"], "{listed:?}");
}

on_both_backends!(
    the_statuses_an_agent_reports_are_answered_as_the_extensions_statuses,
    statuses_case
);
async fn statuses_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let client = ControlPlane::new(registered(&api, "c1", dir.path()).await).unwrap();
    let path = extension_path(&cluster_path("s", "rg", "c1"), "flux");
    let created = api.call(Method::PUT, &path, Some(flux_body())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let generation = client.desired_state(None, Duration::ZERO).await.unwrap().extensions[0].generation;
    let flux = |version: &str| ExtensionStatus {
        code: Some("FluxVersion".into()),
        display_status: Some(version.into()),
        level: Some(StatusLevel::Information),
        message: Some(format!("Flux {version} in flux-system: source-controller")),
        time: Some("2026-11-22T00:00:00Z".into()),
    };
    let mut report = StatusReport {
        extensions: vec![ExtensionReport {
            name: "flux".into(),
            generation,
            outcome: ApplyOutcome::Applied,
            message: None,
            current_version: Some("0.1.0".into()),
            secrets_version: None,
            statuses: vec![flux("v2.7.0")],
        }],
        ..Default::default()
    };
    client.report(&report).await.unwrap();
    let read = api.get(&path).await;
    assert_eq!(read.body["properties"]["provisioningState"], "Succeeded");
    assert_eq!(
        read.body["properties"]["statuses"],
        json!([{"code": "FluxVersion", "displayStatus": "v2.7.0", "level": "Information",
                "message": "Flux v2.7.0 in flux-system: source-controller", "time": "2026-11-22T00:00:00Z"}])
    );

    // the agent reports the same generation again when what it finds changes (Flux upgraded)
    report.extensions[0].statuses = vec![flux("v2.8.0")];
    client.report(&report).await.unwrap();
    let read = api.get(&path).await;
    assert_eq!(read.body["properties"]["statuses"][0]["displayStatus"], "v2.8.0");
    assert_eq!(read.body["properties"]["provisioningState"], "Succeeded");
}
