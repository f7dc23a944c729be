//! End-to-end: every GA api-version Azure published answers for each resource, and each answers only the
//! properties it defines; an older version refuses newer properties and its PUT keeps them.

use crate::common::*;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const CLUSTER_VERSIONS: [&str; 4] = ["2021-03-01", "2021-10-01", "2024-01-01", "2026-05-01"];
const FLUX_VERSIONS: [&str; 6] = [
    "2022-03-01",
    "2022-07-01",
    "2022-11-01",
    "2023-05-01",
    "2024-11-01",
    "2025-04-01",
];
const NEWEST_CLUSTER: &str = "2026-05-01";
const NEWEST_FLUX: &str = "2025-04-01";

fn configurations(cluster: &str) -> String {
    format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations")
}

/// A configuration that uses properties of 2023-05-01 (a kustomization's `wait` and `postBuild`,
/// `waitForReconciliation`).
fn newer_config_body(branch: &str) -> Value {
    json!({"properties": {
        "gitRepository": {"url": "https://github.com/Azure/arc-k8s-demo", "repositoryRef": {"branch": branch}},
        "waitForReconciliation": true,
        "kustomizations": {"apps": {"path": "./apps", "wait": false, "postBuild": {"substitute": {"env": "prod"}}}}
    }})
}

on_both_backends!(every_version_creates_reads_and_lists_each_resource, every_version_case);
async fn every_version_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    for version in CLUSTER_VERSIONS {
        let cluster = cluster_path("s", "rg", &format!("c{}", version.replace('-', "")));
        let created = api
            .call(Method::PUT, &with_version(&cluster, version), Some(cluster_body()))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{version}: {created:?}");
        let read = api.get(&with_version(&cluster, version)).await;
        assert_eq!(read.status, StatusCode::OK, "{version}: {read:?}");
        assert_eq!(
            read.body["properties"]["agentPublicKeyCertificate"], "a2V5",
            "{version}"
        );
        let listed = api
            .get(&format!(
                "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters?api-version={version}"
            ))
            .await;
        assert_eq!(listed.status, StatusCode::OK, "{version}: {listed:?}");
        assert!(
            listed.body["value"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == read.body["id"]),
            "{version}"
        );
    }

    let cluster = cluster_path("s", "rg", "flux");
    api.put_cluster("s", "rg", "flux").await;
    for version in FLUX_VERSIONS {
        let path = config_path(&cluster, &format!("v{}", version.replace('-', "")));
        let created = api
            .call(Method::PUT, &with_version(&path, version), Some(git_config_body()))
            .await;
        assert_eq!(created.status, StatusCode::CREATED, "{version}: {created:?}");
        let operation = created
            .header("azure-asyncoperation")
            .expect("an operation URL")
            .to_owned();
        assert!(operation.ends_with(&format!("api-version={version}")), "{operation}");
        let status = api.get(&operation).await;
        assert_eq!(status.status, StatusCode::OK, "{version}: {status:?}");
        let read = api.get(&with_version(&path, version)).await;
        assert_eq!(read.status, StatusCode::OK, "{version}: {read:?}");
        assert_eq!(
            read.body["properties"]["gitRepository"]["repositoryRef"]["branch"],
            "main"
        );
        let listed = api.get(&with_version(&configurations(&cluster), version)).await;
        assert_eq!(listed.status, StatusCode::OK, "{version}: {listed:?}");
        assert!(
            listed.body["value"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["id"] == read.body["id"]),
            "{version}"
        );
    }
}

on_both_backends!(an_older_version_answers_without_newer_properties, older_answers_case);
async fn older_answers_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    let mut body = cluster_body();
    body["kind"] = json!("ProvisionedCluster");
    body["properties"]["distributionVersion"] = json!("1.31");
    body["properties"]["gateway"] = json!({"enabled": true});
    let created = api
        .call(Method::PUT, &with_version(&cluster, NEWEST_CLUSTER), Some(body))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.body["properties"]["gateway"], json!({"enabled": true}));

    let at_2024 = api.get(&with_version(&cluster, "2024-01-01")).await;
    assert!(
        at_2024.body["properties"].get("gateway").is_none(),
        "{:?}",
        at_2024.body
    );
    assert_eq!(at_2024.body["kind"], "ProvisionedCluster");
    let at_2021 = api.get(&with_version(&cluster, "2021-10-01")).await;
    assert!(at_2021.body.get("kind").is_none(), "{:?}", at_2021.body);
    assert!(at_2021.body["properties"].get("distributionVersion").is_none());
    assert_eq!(at_2021.body["properties"]["agentPublicKeyCertificate"], "a2V5");
    let listed = api
        .get("/subscriptions/s/providers/Microsoft.Kubernetes/connectedClusters?api-version=2021-03-01")
        .await;
    assert!(listed.body["value"][0].get("kind").is_none(), "{:?}", listed.body);

    let config = config_path(&cluster, "cfg");
    let created = api
        .call(
            Method::PUT,
            &with_version(&config, NEWEST_FLUX),
            Some(newer_config_body("main")),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let old = api.get(&with_version(&config, "2022-11-01")).await;
    assert_eq!(old.status, StatusCode::OK);
    let apps = &old.body["properties"]["kustomizations"]["apps"];
    assert_eq!(apps["path"], "./apps");
    assert!(
        apps.get("wait").is_none() && apps.get("postBuild").is_none(),
        "{apps:?}"
    );
    assert!(old.body["properties"].get("waitForReconciliation").is_none());
    let listed = api.get(&with_version(&configurations(&cluster), "2022-03-01")).await;
    assert!(
        listed.body["value"][0]["properties"]["kustomizations"]["apps"]
            .get("postBuild")
            .is_none()
    );
    let current = api.get(&with_version(&config, "2023-05-01")).await;
    assert_eq!(current.body["properties"]["kustomizations"]["apps"]["wait"], false);
    assert_eq!(current.body["properties"]["waitForReconciliation"], true);
}

on_both_backends!(an_older_version_refuses_newer_properties, older_refuses_case);
async fn older_refuses_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    let mut body = cluster_body();
    body["properties"]["gateway"] = json!({"enabled": true});
    let refused = api
        .call(Method::PUT, &with_version(&cluster, "2024-01-01"), Some(body))
        .await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::BAD_REQUEST, "InvalidParameter")
    );
    assert_eq!(refused.body["error"]["target"], "properties.gateway");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains(NEWEST_CLUSTER)
    );
    assert_eq!(
        api.get(&with_version(&cluster, NEWEST_CLUSTER)).await.status,
        StatusCode::NOT_FOUND
    );

    api.put_cluster("s", "rg", "c1").await;
    let patch = json!({"properties": {"distributionVersion": "1.31"}});
    let refused = api
        .call(Method::PATCH, &with_version(&cluster, "2021-10-01"), Some(patch))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert_eq!(refused.body["error"]["target"], "properties.distributionVersion");

    let config = config_path(&cluster, "cfg");
    let refused = api
        .call(
            Method::PUT,
            &with_version(&config, "2022-11-01"),
            Some(newer_config_body("main")),
        )
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    let target = refused.body["error"]["target"].as_str().unwrap();
    assert!(
        [
            "properties.kustomizations.apps.wait",
            "properties.kustomizations.apps.postBuild"
        ]
        .contains(&target),
        "{refused:?}"
    );
    assert_eq!(
        api.get(&with_version(&config, NEWEST_FLUX)).await.status,
        StatusCode::NOT_FOUND
    );
    let oci = json!({"properties": {"sourceKind": "OCIRepository", "ociRepository": {"url": "oci://ghcr.io/x/y"}}});
    let refused = api
        .call(Method::PUT, &with_version(&config, "2023-05-01"), Some(oci))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2024-11-01"),
        "{refused:?}"
    );
}

on_both_backends!(an_older_put_keeps_what_it_cannot_express, older_put_keeps_case);
async fn older_put_keeps_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    let mut body = cluster_body();
    body["kind"] = json!("ProvisionedCluster");
    body["properties"]["gateway"] = json!({"enabled": true});
    api.call(Method::PUT, &with_version(&cluster, NEWEST_CLUSTER), Some(body))
        .await;
    let mut older = cluster_body();
    older["properties"]["distribution"] = json!("k3s");
    let replaced = api
        .call(Method::PUT, &with_version(&cluster, "2021-10-01"), Some(older))
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{replaced:?}");
    let read = api.get(&with_version(&cluster, NEWEST_CLUSTER)).await;
    assert_eq!(read.body["properties"]["distribution"], "k3s");
    assert_eq!(read.body["kind"], "ProvisionedCluster");
    assert_eq!(read.body["properties"]["gateway"], json!({"enabled": true}));

    let config = config_path(&cluster, "cfg");
    api.call(
        Method::PUT,
        &with_version(&config, NEWEST_FLUX),
        Some(newer_config_body("main")),
    )
    .await;
    let mut older = git_config_body();
    older["properties"]["gitRepository"]["repositoryRef"]["branch"] = json!("release");
    older["properties"]["kustomizations"] = json!({"apps": {"path": "./apps-v2"}});
    let replaced = api
        .call(Method::PUT, &with_version(&config, "2022-03-01"), Some(older))
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{replaced:?}");
    assert!(
        replaced.body["properties"]["kustomizations"]["apps"]
            .get("postBuild")
            .is_none()
    );
    let read = api.get(&with_version(&config, NEWEST_FLUX)).await;
    let properties = &read.body["properties"];
    assert_eq!(properties["gitRepository"]["repositoryRef"]["branch"], "release");
    assert_eq!(properties["kustomizations"]["apps"]["path"], "./apps-v2");
    assert_eq!(
        properties["kustomizations"]["apps"]["postBuild"],
        json!({"substitute": {"env": "prod"}})
    );
    assert_eq!(properties["kustomizations"]["apps"]["wait"], false);
    assert_eq!(properties["waitForReconciliation"], true);
    assert!(
        properties["kustomizations"].get("infra").is_none(),
        "the PUT's kustomizations replace the old ones"
    );
}

on_both_backends!(an_older_put_replaces_a_source_it_cannot_see, older_put_source_case);
async fn older_put_source_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    api.put_cluster("s", "rg", "c1").await;
    let config = config_path(&cluster_path("s", "rg", "c1"), "cfg");
    let oci = json!({"properties": {"sourceKind": "OCIRepository",
        "ociRepository": {"url": "oci://ghcr.io/x/y", "repositoryRef": {"tag": "v1"}}}});
    let created = api
        .call(Method::PUT, &with_version(&config, NEWEST_FLUX), Some(oci))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let replaced = api
        .call(
            Method::PUT,
            &with_version(&config, "2022-03-01"),
            Some(git_config_body()),
        )
        .await;
    assert_eq!(replaced.status, StatusCode::OK, "{replaced:?}");
    let read = api.get(&with_version(&config, NEWEST_FLUX)).await;
    assert_eq!(read.body["properties"]["sourceKind"], "GitRepository");
    assert!(
        read.body["properties"].get("ociRepository").is_none(),
        "{:?}",
        read.body
    );
}
