//! End-to-end: ARM's fixed path segments match in any case, as Azure's clients send them
//! (`@azure/arm-hybridkubernetes` writes `/resourcegroups/`), while names keep the case they were created with.

use crate::common::*;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::json;

const FLEET_API: &str = "2026-01-01";

on_both_backends!(
    fixed_segments_match_in_any_case_and_ids_keep_the_stored_case,
    fixed_segments_case
);
async fn fixed_segments_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let canonical = "/subscriptions/Sub1/resourceGroups/Team-RG/providers/Microsoft.Kubernetes/connectedClusters/Prod";

    let created = api
        .call(
            Method::PUT,
            &with_version(
                "/subscriptions/Sub1/resourcegroups/Team-RG/providers/microsoft.kubernetes/connectedclusters/Prod",
                CLUSTER_API,
            ),
            Some(cluster_body()),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.body["id"], canonical);

    let read = api
        .get(&with_version(
            "/SUBSCRIPTIONS/sub1/RESOURCEGROUPS/team-rg/PROVIDERS/MICROSOFT.KUBERNETES/CONNECTEDCLUSTERS/prod",
            CLUSTER_API,
        ))
        .await;
    assert_eq!(read.status, StatusCode::OK, "{read:?}");
    assert_eq!(read.body["id"], canonical, "the id is echoed as it was created");
    assert_eq!(read.body["name"], "Prod");

    let listed = api
        .get(&with_version(
            "/subscriptions/sub1/Providers/Microsoft.Kubernetes/ConnectedClusters",
            CLUSTER_API,
        ))
        .await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    assert_eq!(listed.body["value"][0]["id"], canonical);

    let configuration = api
        .call(
            Method::PUT,
            &with_version(
                "/subscriptions/sub1/resourcegroups/team-rg/providers/Microsoft.Kubernetes/connectedClusters/PROD/providers/microsoft.kubernetesconfiguration/fluxconfigurations/demo",
                FLUX_API,
            ),
            Some(git_config_body()),
        )
        .await;
    assert!(configuration.status.is_success(), "{configuration:?}");
    assert_eq!(
        configuration.body["id"],
        format!("{canonical}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/demo")
    );

    let group = api
        .call(
            Method::PUT,
            &with_version(
                "/subscriptions/Sub1/providers/fluxplane.fleet/CLUSTERGROUPS/Prod-Group",
                FLEET_API,
            ),
            Some(json!({"properties": {"selector": {"matchLabels": {"env": "prod"}}}})),
        )
        .await;
    assert_eq!(group.status, StatusCode::CREATED, "{group:?}");
    assert_eq!(
        group.body["id"],
        "/subscriptions/Sub1/providers/Fluxplane.Fleet/clusterGroups/Prod-Group"
    );

    let group_read = api
        .get(&with_version(
            "/SUBSCRIPTIONS/sub1/PROVIDERS/Fluxplane.Fleet/clusterGroups/prod-group",
            FLEET_API,
        ))
        .await;
    assert_eq!(group_read.status, StatusCode::OK, "{group_read:?}");
    assert_eq!(group_read.body["id"], group.body["id"]);
    assert_eq!(group_read.body["name"], "Prod-Group");

    let deleted = api
        .call(
            Method::DELETE,
            &with_version(
                "/subscriptions/SUB1/resourcegroups/TEAM-RG/providers/microsoft.kubernetes/connectedclusters/prod",
                CLUSTER_API,
            ),
            None,
        )
        .await;
    assert!(deleted.status.is_success(), "{deleted:?}");
    assert_eq!(
        api.get(&with_version(canonical, CLUSTER_API)).await.status,
        StatusCode::NOT_FOUND
    );
}

on_both_backends!(a_name_that_spells_a_fixed_word_keeps_its_case, name_spells_word_case);
async fn name_spells_word_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let created = api
        .call(
            Method::PUT,
            &with_version(
                "/subscriptions/s/resourceGroups/Providers/providers/Microsoft.Kubernetes/connectedClusters/History",
                CLUSTER_API,
            ),
            Some(cluster_body()),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(created.body["name"], "History");
    assert_eq!(
        created.body["id"],
        "/subscriptions/s/resourceGroups/Providers/providers/Microsoft.Kubernetes/connectedClusters/History"
    );
}
