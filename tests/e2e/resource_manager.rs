//! End-to-end: what Resource Manager itself answers to Azure's tools — the cloud's metadata, the caller's
//! subscriptions, provider registrations and operations — and the retired Flux v1 `sourceControlConfigurations`.

use crate::common::*;
use fluxplane_api::auth::Role;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::json;

const SOURCE_CONTROL_API: &str = "2023-05-01";

on_both_backends!(
    the_cloud_metadata_is_public_and_names_this_server_and_its_token_audience,
    metadata_case
);
async fn metadata_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let current = api
        .raw(api.client.get(api.url("/metadata/endpoints?api-version=2022-09-01")))
        .await;
    assert_eq!(current.status, StatusCode::OK, "{current:?}");
    assert_eq!(current.body["resourceManager"], format!("{}/", api.server.base));
    assert_eq!(current.body["authentication"]["audiences"], json!(["fluxplane"]));
    assert_eq!(
        current.body["authentication"]["tenant"],
        api.server.state.config.tenant().to_string()
    );
    let listed = api
        .raw(api.client.get(api.url("/metadata/endpoints?api-version=2019-05-01")))
        .await;
    assert_eq!(listed.body[0]["resourceManager"], current.body["resourceManager"]);
    let unversioned = api.raw(api.client.get(api.url("/metadata/endpoints"))).await;
    assert_eq!(unversioned.status, StatusCode::BAD_REQUEST);
    assert_eq!(unversioned.code(), "MissingApiVersionParameter");
}

on_both_backends!(
    a_caller_lists_the_subscriptions_its_roles_name_and_an_owner_of_everything_those_in_use,
    subscriptions_case
);
async fn subscriptions_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    api.put_cluster("Sub-1", "rg", "c1").await;
    api.put_cluster("sub-2", "rg", "c2").await;
    let group = api
        .call(
            Method::PUT,
            "/subscriptions/sub-3/providers/Fluxplane.Fleet/clusterGroups/all?api-version=2026-01-01",
            Some(json!({"properties": {"selector": {}}})),
        )
        .await;
    assert!(group.status.is_success(), "{group:?}");

    let (owned, pages) = api.list_all("/subscriptions?api-version=2022-12-01&$top=2").await;
    let ids: Vec<&str> = owned.iter().map(|s| s["subscriptionId"].as_str().unwrap()).collect();
    assert_eq!(ids, ["Sub-1", "sub-2", "sub-3"]);
    assert_eq!(pages, 2);
    assert_eq!(owned[0]["id"], "/subscriptions/Sub-1");
    assert_eq!(owned[0]["state"], "Enabled");
    assert_eq!(owned[0]["tenantId"], api.server.state.config.tenant().to_string());

    let reader = api.server.token(
        "reader",
        &[
            (Role::Reader, "/subscriptions/team-a"),
            (Role::Reader, "/subscriptions/sub-2/resourceGroups/rg"),
        ],
    );
    let seen = api
        .call_as(&reader, Method::GET, "/subscriptions?api-version=2022-12-01", None)
        .await;
    let ids: Vec<&str> = seen.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["subscriptionId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["sub-2", "team-a"],
        "only what the roles name, whether it holds resources or not"
    );
    let elsewhere = api
        .call_as(
            &reader,
            Method::GET,
            "/subscriptions/Sub-1?api-version=2022-12-01",
            None,
        )
        .await;
    assert_eq!(elsewhere.status, StatusCode::NOT_FOUND);
    assert_eq!(elsewhere.code(), "SubscriptionNotFound");
    let own = api
        .call_as(
            &reader,
            Method::GET,
            "/subscriptions/TEAM-A?api-version=2022-12-01",
            None,
        )
        .await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.body["subscriptionId"], "TEAM-A");
}

on_both_backends!(
    providers_are_registered_with_the_versions_they_serve_and_list_their_operations,
    providers_case
);
async fn providers_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let provider = api
        .get("/subscriptions/s/providers/microsoft.kubernetesconfiguration?api-version=2021-04-01")
        .await;
    assert_eq!(provider.status, StatusCode::OK, "{provider:?}");
    assert_eq!(provider.body["namespace"], "Microsoft.KubernetesConfiguration");
    assert_eq!(provider.body["registrationState"], "Registered");
    let flux = provider.body["resourceTypes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["resourceType"] == "fluxConfigurations")
        .expect("fluxConfigurations is a resource type");
    assert!(flux["apiVersions"].as_array().unwrap().contains(&json!(FLUX_API)));

    let all = api.get("/subscriptions/s/providers?api-version=2021-04-01").await;
    assert_eq!(all.body["value"].as_array().unwrap().len(), 3);

    let unknown = api
        .get("/subscriptions/s/providers/Microsoft.Compute?api-version=2021-04-01")
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown.code(), "InvalidResourceNamespace");

    let reader = api.server.token("reader", &[(Role::Reader, "/subscriptions/s")]);
    let register = "/subscriptions/s/providers/Microsoft.Kubernetes/register?api-version=2021-04-01";
    let refused = api.call_as(&reader, Method::POST, register, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let registered = api.call(Method::POST, register, None).await;
    assert_eq!(registered.status, StatusCode::OK, "{registered:?}");
    assert_eq!(registered.body["registrationState"], "Registered");

    let operations = api
        .call_as(
            &reader,
            Method::GET,
            "/providers/Microsoft.KubernetesConfiguration/operations?api-version=2023-05-01",
            None,
        )
        .await;
    assert_eq!(operations.status, StatusCode::OK, "{operations:?}");
    let names: Vec<&str> = operations.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Microsoft.KubernetesConfiguration/fluxConfigurations/write"),
        "{names:?}"
    );
    let unauthenticated = api
        .raw(
            api.client
                .get(api.url("/providers/Microsoft.Kubernetes/operations?api-version=2023-05-01")),
        )
        .await;
    assert_eq!(unauthenticated.status, StatusCode::UNAUTHORIZED);
}

on_both_backends!(
    a_cluster_has_no_flux_v1_configurations_and_refuses_new_ones,
    source_control_case
);
async fn source_control_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    let list = with_version(
        &format!("{cluster}/providers/Microsoft.KubernetesConfiguration/sourceControlConfigurations"),
        SOURCE_CONTROL_API,
    );
    assert_eq!(api.get(&list).await.code(), "ResourceNotFound");
    api.put_cluster("s", "rg", "c1").await;

    let listed = api.get(&list).await;
    assert_eq!(listed.status, StatusCode::OK, "{listed:?}");
    assert_eq!(listed.body, json!({"value": []}));

    let item = with_version(
        &format!("{cluster}/providers/Microsoft.KubernetesConfiguration/sourceControlConfigurations/legacy"),
        SOURCE_CONTROL_API,
    );
    assert_eq!(api.get(&item).await.code(), "ResourceNotFound");
    let created = api
        .call(
            Method::PUT,
            &item,
            Some(json!({"properties": {"repositoryUrl": "https://example.com/r.git"}})),
        )
        .await;
    assert_eq!(created.status, StatusCode::BAD_REQUEST);
    assert_eq!(created.code(), "FluxV1Retired");
    assert!(
        created.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fluxConfigurations")
    );
    assert_eq!(api.call(Method::DELETE, &item, None).await.code(), "FluxV1Retired");

    let newest_flux_version = with_version(
        &format!("{cluster}/providers/Microsoft.KubernetesConfiguration/sourceControlConfigurations"),
        "2025-04-01",
    );
    assert_eq!(api.get(&newest_flux_version).await.code(), "InvalidApiVersionParameter");
}
