//! End-to-end: registering, reading, listing, patching and deleting connected clusters over real HTTP.

use crate::common::*;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::json;

on_both_backends!(registering_answers_201_then_200, registering_answers_201_then_200_case);
async fn registering_answers_201_then_200_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let path = with_version(&cluster_path("sub1", "rg1", "c1"), CLUSTER_API);
    let created = api.call(Method::PUT, &path, Some(cluster_body())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let body = &created.body;
    assert_eq!(
        body["id"],
        "/subscriptions/sub1/resourceGroups/rg1/providers/Microsoft.Kubernetes/connectedClusters/c1"
    );
    assert_eq!(body["type"], "Microsoft.Kubernetes/connectedClusters");
    assert_eq!(body["properties"]["connectivityStatus"], "Connecting");
    assert_eq!(body["properties"]["provisioningState"], "Succeeded");
    assert_eq!(body["properties"]["agentPublicKeyCertificate"], "a2V5");
    assert_eq!(body["systemData"]["createdBy"], "test-owner");
    assert!(created.header("etag").is_some());

    let mut replaced = cluster_body();
    replaced["tags"] = json!({"env": "dev"});
    let updated = api.call(Method::PUT, &path, Some(replaced)).await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["tags"], json!({"env": "dev"}));
    assert_ne!(updated.header("etag"), created.header("etag"));
    assert_eq!(updated.body["systemData"]["createdAt"], body["systemData"]["createdAt"]);
}

on_both_backends!(names_are_case_insensitive, names_are_case_insensitive_case);
async fn names_are_case_insensitive_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    api.put_cluster("Sub1", "RG1", "Cluster1").await;
    let read = api
        .get(&with_version(&cluster_path("sub1", "rg1", "CLUSTER1"), CLUSTER_API))
        .await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["name"], "Cluster1", "the registered spelling is kept");
}

on_both_backends!(lists_page_by_resource_group_and_subscription, lists_page_case);
async fn lists_page_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    for i in 0..5 {
        api.put_cluster("sub1", "rg-a", &format!("c{i}")).await;
    }
    api.put_cluster("sub1", "rg-b", "other").await;
    api.put_cluster("sub2", "rg-a", "elsewhere").await;

    let first = format!(
        "/subscriptions/sub1/resourceGroups/rg-a/providers/Microsoft.Kubernetes/connectedClusters?api-version={CLUSTER_API}&$top=2"
    );
    let page = api.get(&first).await;
    let next = page.body["nextLink"].as_str().expect("a nextLink");
    assert!(next.contains("$skipToken="), "{next}");
    assert_eq!(next.matches("api-version").count(), 1, "{next}");
    let (items, pages) = api.list_all(&first).await;
    assert_eq!(pages, 3);
    let names: Vec<_> = items.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["c0", "c1", "c2", "c3", "c4"]);

    let (all, _) = api
        .list_all(&format!(
            "/subscriptions/sub1/providers/Microsoft.Kubernetes/connectedClusters?api-version={CLUSTER_API}"
        ))
        .await;
    assert_eq!(all.len(), 6);
}

on_both_backends!(patch_replaces_tags_and_merges_properties, patch_case);
async fn patch_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let path = with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API);
    let mut body = cluster_body();
    body["tags"] = json!({"env": "prod", "team": "blue"});
    body["properties"]["distribution"] = json!("k3s");
    api.call(Method::PUT, &path, Some(body)).await;
    let patched = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"tags": {"env": "staging"}, "properties": {"distributionVersion": "1.31"}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{patched:?}");
    assert_eq!(patched.body["tags"], json!({"env": "staging"}));
    assert_eq!(patched.body["properties"]["distribution"], "k3s");
    assert_eq!(patched.body["properties"]["distributionVersion"], "1.31");
    assert_eq!(patched.body["properties"]["agentPublicKeyCertificate"], "a2V5");

    let refused = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"agentPublicKeyCertificate": "bmV3"}})),
        )
        .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_REQUEST,
        "the key is not patchable: {refused:?}"
    );
    let missing = api
        .call(
            Method::PATCH,
            &with_version(&cluster_path("s", "rg", "nope"), CLUSTER_API),
            Some(json!({"tags": {}})),
        )
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::NOT_FOUND, "ResourceNotFound")
    );
}

on_both_backends!(deleting_a_cluster_removes_its_configurations, delete_case);
async fn delete_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    assert_eq!(
        api.put_config(&cluster, "cfg", git_config_body()).await.status,
        StatusCode::CREATED
    );
    let deleted = api
        .call(Method::DELETE, &with_version(&cluster, CLUSTER_API), None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    let again = api
        .call(Method::DELETE, &with_version(&cluster, CLUSTER_API), None)
        .await;
    assert_eq!(again.status, StatusCode::NO_CONTENT);
    let config = api.get(&with_version(&config_path(&cluster, "cfg"), FLUX_API)).await;
    assert_eq!(
        (config.status, config.code()),
        (StatusCode::NOT_FOUND, "ResourceNotFound")
    );
    api.put_cluster("s", "rg", "c1").await;
    let (configs, _) = api
        .list_all(&with_version(
            &format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations"),
            FLUX_API,
        ))
        .await;
    assert!(
        configs.is_empty(),
        "a re-registered cluster starts without the old configurations"
    );
}

on_both_backends!(the_location_cannot_change, location_case);
async fn location_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let path = with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API);
    api.call(Method::PUT, &path, Some(cluster_body())).await;
    let mut moved = cluster_body();
    moved["location"] = json!("eastus");
    let refused = api.call(Method::PUT, &path, Some(moved)).await;
    assert_eq!(
        (refused.status, refused.code()),
        (StatusCode::BAD_REQUEST, "InvalidParameter")
    );
    let mut respelled = cluster_body();
    respelled["location"] = json!("West Europe");
    assert_eq!(
        api.call(Method::PUT, &path, Some(respelled)).await.status,
        StatusCode::OK
    );
}

on_both_backends!(a_stale_if_match_is_refused_and_changes_nothing, if_match_case);
async fn if_match_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let path = with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API);
    let created = api.call(Method::PUT, &path, Some(cluster_body())).await;
    let etag = created.header("etag").unwrap().to_owned();
    let mut body = cluster_body();
    body["tags"] = json!({"env": "changed"});
    let stale = api
        .raw(
            api.client
                .put(api.url(&path))
                .bearer_auth(&api.token)
                .header("If-Match", "\"not-the-etag\"")
                .json(&body),
        )
        .await;
    assert_eq!(
        (stale.status, stale.code()),
        (StatusCode::PRECONDITION_FAILED, "PreconditionFailed")
    );
    assert_eq!(api.get(&path).await.body["tags"], json!({"env": "prod"}));
    let fresh = api
        .raw(
            api.client
                .put(api.url(&path))
                .bearer_auth(&api.token)
                .header("If-Match", &etag)
                .json(&body),
        )
        .await;
    assert_eq!(fresh.status, StatusCode::OK);
    let create_only = api
        .raw(
            api.client
                .put(api.url(&path))
                .bearer_auth(&api.token)
                .header("If-None-Match", "*")
                .json(&body),
        )
        .await;
    assert_eq!(create_only.status, StatusCode::PRECONDITION_FAILED);
}

on_both_backends!(read_only_fields_sent_back_are_ignored, read_only_case);
async fn read_only_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let path = with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API);
    let created = api.call(Method::PUT, &path, Some(cluster_body())).await;
    let mut echoed = created.body.clone();
    echoed["properties"]["connectivityStatus"] = json!("Connected");
    let replaced = api.call(Method::PUT, &path, Some(echoed)).await;
    assert_eq!(replaced.status, StatusCode::OK, "{replaced:?}");
    assert_eq!(replaced.body["properties"]["connectivityStatus"], "Connecting");
}

/// The list at `path` with `$filter`, `$top` and the api-version as query parameters.
fn filtered(api: &Api, path: &str, filter: &str, top: u32) -> String {
    let mut url = reqwest::Url::parse(&api.url(path)).expect("a URL");
    url.query_pairs_mut()
        .append_pair("api-version", CLUSTER_API)
        .append_pair("$filter", filter)
        .append_pair("$top", &top.to_string());
    url.into()
}

on_both_backends!(cluster_lists_filter_by_tag_across_pages, cluster_filter_case);
async fn cluster_filter_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    for i in 0..7 {
        let mut body = cluster_body();
        body["tags"] = json!({"env": if i % 2 == 0 { "prod" } else { "dev" }});
        let path = with_version(
            &cluster_path("sub1", &format!("rg-{}", i % 3), &format!("c{i}")),
            CLUSTER_API,
        );
        assert_eq!(
            api.call(Method::PUT, &path, Some(body)).await.status,
            StatusCode::CREATED
        );
    }
    let list = "/subscriptions/sub1/providers/Microsoft.Kubernetes/connectedClusters";
    let (items, pages) = api.list_all(&filtered(&api, list, "tags/env eq 'prod'", 1)).await;
    let names: Vec<&str> = items.iter().map(|c| c["name"].as_str().unwrap()).collect();
    // key order: resource group, then name
    assert_eq!(names, ["c0", "c6", "c4", "c2"]);
    assert_eq!(pages, 4, "one cluster a page, and no empty page after the last");

    let (items, _) = api
        .list_all(&filtered(
            &api,
            list,
            "tags/env eq 'prod' and not (name in ('c0', 'C6'))",
            100,
        ))
        .await;
    assert_eq!(items.len(), 2, "names compare regardless of case");
    let (items, _) = api
        .list_all(&filtered(
            &api,
            list,
            "properties/connectivityStatus eq 'connected'",
            100,
        ))
        .await;
    assert!(items.is_empty(), "no agent has called yet: every cluster is Connecting");
    let group = "/subscriptions/sub1/resourceGroups/rg-1/providers/Microsoft.Kubernetes/connectedClusters";
    let (items, _) = api.list_all(&filtered(&api, group, "tags/env eq 'dev'", 100)).await;
    let names: Vec<&str> = items.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["c1"]);
}

on_both_backends!(
    an_unsupported_filter_is_refused_naming_what_is_supported,
    bad_filter_case
);
async fn bad_filter_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    api.put_cluster("sub1", "rg1", "c1").await;
    let list = "/subscriptions/sub1/providers/Microsoft.Kubernetes/connectedClusters";
    for (filter, says) in [
        ("properties/totalNodeCount gt '3'", "cannot be filtered on"),
        ("name gt 'a'", "'gt', which is not supported"),
        (
            "properties/connectivityStatus eq 'Green'",
            "Connecting, Connected, Offline, Expired",
        ),
        ("name eq 'c1", "left open"),
    ] {
        let answer = api.get(&filtered(&api, list, filter, 10)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{filter}: {answer:?}");
        assert_eq!(answer.code(), "InvalidParameter", "{filter}");
        let message = answer.body["error"]["message"].as_str().unwrap();
        assert!(message.contains(says), "{filter}: {message}");
    }
}
