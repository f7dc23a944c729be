//! End-to-end: `Fluxplane.Fleet/clusterGroups` select the clusters of their own scope by tags, and follow tag
//! changes at once.

use crate::common::*;
use fluxplane_api::auth::Role;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const FLEET_API: &str = "2026-01-01";

fn group_path(scope: &str, name: &str) -> String {
    with_version(
        &format!("{scope}/providers/Fluxplane.Fleet/clusterGroups/{name}"),
        FLEET_API,
    )
}

fn members_path(scope: &str, name: &str) -> String {
    with_version(
        &format!("{scope}/providers/Fluxplane.Fleet/clusterGroups/{name}/members"),
        FLEET_API,
    )
}

async fn tagged_cluster(api: &Api, subscription: &str, resource_group: &str, name: &str, tags: Value) {
    let body = json!({"location": "westeurope", "tags": tags, "properties": {"agentPublicKeyCertificate": "a2V5"}});
    let path = with_version(&cluster_path(subscription, resource_group, name), CLUSTER_API);
    let answer = api.call(Method::PUT, &path, Some(body)).await;
    assert!(answer.status.is_success(), "{answer:?}");
}

fn names(items: &[Value]) -> Vec<&str> {
    items.iter().map(|c| c["name"].as_str().unwrap()).collect()
}

on_both_backends!(groups_select_the_tagged_clusters_of_their_own_scope_only, scope_case);
async fn scope_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "s", "eu", "eu-prod-1", json!({"env": "prod", "region": "eu"})).await;
    tagged_cluster(
        &api,
        "s",
        "eu",
        "eu-prod-2",
        json!({"env": "prod", "region": "eu", "tier": "gold"}),
    )
    .await;
    tagged_cluster(&api, "s", "eu", "eu-dev", json!({"env": "dev", "region": "eu"})).await;
    tagged_cluster(&api, "s", "us", "us-prod", json!({"env": "prod", "region": "us"})).await;
    tagged_cluster(&api, "other", "eu", "elsewhere", json!({"env": "prod", "region": "eu"})).await;

    let prod = json!({"properties": {"selector": {"matchLabels": {"env": "prod"}}}});
    let at_subscription = api
        .call(Method::PUT, &group_path("/subscriptions/s", "prod"), Some(prod.clone()))
        .await;
    assert_eq!(at_subscription.status, StatusCode::CREATED, "{at_subscription:?}");
    assert_eq!(
        at_subscription.body["id"],
        "/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups/prod"
    );
    assert_eq!(at_subscription.body["type"], "Fluxplane.Fleet/clusterGroups");
    assert_eq!(
        at_subscription.body["properties"]["memberCount"], 3,
        "never another subscription's"
    );
    assert!(at_subscription.header("etag").is_some());
    let (members, _) = api.list_all(&members_path("/subscriptions/s", "prod")).await;
    assert_eq!(names(&members), ["eu-prod-1", "eu-prod-2", "us-prod"]);

    let in_eu = "/subscriptions/s/resourceGroups/eu";
    let created = api.call(Method::PUT, &group_path(in_eu, "prod"), Some(prod)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        created.body["properties"]["memberCount"], 2,
        "only the resource group's clusters"
    );
    let not_gold = json!({"properties": {"selector": {
        "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gold"]},
                             {"key": "region", "operator": "In", "values": ["eu", "us"]}]}}});
    let replaced = api.call(Method::PUT, &group_path(in_eu, "prod"), Some(not_gold)).await;
    assert_eq!(replaced.status, StatusCode::OK);
    let (members, _) = api.list_all(&members_path(in_eu, "prod")).await;
    assert_eq!(names(&members), ["eu-dev", "eu-prod-1"]);
    assert_eq!(
        members[0]["id"],
        "/subscriptions/s/resourceGroups/eu/providers/Microsoft.Kubernetes/connectedClusters/eu-dev"
    );

    // lists: a subscription shows its groups and its resource groups'; a resource group its own
    let list = |scope: &str| with_version(&format!("{scope}/providers/Fluxplane.Fleet/clusterGroups"), FLEET_API);
    let (all, _) = api.list_all(&list("/subscriptions/s")).await;
    let ids: Vec<&str> = all.iter().map(|g| g["id"].as_str().unwrap()).collect();
    assert_eq!(
        ids,
        [
            "/subscriptions/s/resourceGroups/eu/providers/Fluxplane.Fleet/clusterGroups/prod",
            "/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups/prod"
        ],
        "in key order"
    );
    let (own, _) = api.list_all(&list(in_eu)).await;
    assert_eq!(own.len(), 1);
    let (none, _) = api.list_all(&list("/subscriptions/s/resourceGroups/us")).await;
    assert!(none.is_empty());

    // delete: 200, then 204, then 404 on read
    assert_eq!(
        api.call(Method::DELETE, &group_path(in_eu, "prod"), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::DELETE, &group_path(in_eu, "prod"), None).await.status,
        StatusCode::NO_CONTENT
    );
    let gone = api.get(&group_path(in_eu, "prod")).await;
    assert_eq!((gone.status, gone.code()), (StatusCode::NOT_FOUND, "ResourceNotFound"));
}

on_both_backends!(clusters_join_and_leave_groups_as_their_tags_change, membership_case);
async fn membership_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "s", "rg", "a", json!({"env": "prod"})).await;
    let group = json!({"properties": {"selector": {"matchLabels": {"env": "prod"},
        "matchExpressions": [{"key": "frozen", "operator": "DoesNotExist"}]}}});
    api.call(Method::PUT, &group_path("/subscriptions/s", "prod"), Some(group))
        .await;
    let count =
        || async { api.get(&group_path("/subscriptions/s", "prod")).await.body["properties"]["memberCount"].clone() };
    assert_eq!(count().await, 1);

    // a cluster that registers with matching tags is a member at once
    tagged_cluster(&api, "s", "rg", "b", json!({"env": "prod"})).await;
    assert_eq!(count().await, 2);
    // a tag change moves it out, and back in
    let b = with_version(&cluster_path("s", "rg", "b"), CLUSTER_API);
    api.call(
        Method::PATCH,
        &b,
        Some(json!({"tags": {"env": "prod", "frozen": "yes"}})),
    )
    .await;
    assert_eq!(count().await, 1);
    api.call(Method::PATCH, &b, Some(json!({"tags": {"env": "prod"}})))
        .await;
    assert_eq!(count().await, 2);
    // and a deleted cluster is no member
    api.call(Method::DELETE, &b, None).await;
    assert_eq!(count().await, 1);
}

on_both_backends!(members_are_listed_in_pages, paging_case);
async fn paging_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    for i in 0..7 {
        let env = if i % 2 == 0 { "prod" } else { "dev" };
        tagged_cluster(&api, "s", "rg", &format!("c{i}"), json!({"env": env})).await;
    }
    let group = json!({"properties": {"selector": {"matchLabels": {"env": "prod"}}}});
    api.call(Method::PUT, &group_path("/subscriptions/s", "prod"), Some(group))
        .await;
    let first = format!("{}&$top=2", members_path("/subscriptions/s", "prod"));
    let (members, pages) = api.list_all(&first).await;
    assert_eq!(names(&members), ["c0", "c2", "c4", "c6"]);
    assert_eq!(pages, 2);
}

on_both_backends!(bad_group_requests_get_clear_errors_and_change_nothing, errors_case);
async fn errors_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let path = group_path("/subscriptions/s", "g");
    let cases = [
        (
            json!({"properties": {"selector": {"matchLabels": {"bad key!": "x"},
                "matchExpressions": [{"key": "a", "operator": "In", "values": []}]}}}),
            "properties.selector",
        ),
        (
            json!({"properties": {"selector": {"matchExpressions": [{"key": "a", "operator": "Gt"}]}}}),
            "properties.selector.matchExpressions[0].operator",
        ),
        (json!({"properties": {"selector": {}, "extra": 1}}), "properties"),
        (json!({"properties": {}}), "properties"),
    ];
    for (body, target) in cases {
        let answer = api.call(Method::PUT, &path, Some(body.clone())).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {answer:?}");
        assert!(
            answer.body["error"]["target"]
                .as_str()
                .unwrap_or_default()
                .starts_with(target),
            "{body}: {answer:?}"
        );
    }
    let two = api
        .call(
            Method::PUT,
            &path,
            Some(json!({"properties": {"selector": {"matchLabels": {"bad key!": "x"},
                "matchExpressions": [{"key": "a", "operator": "In", "values": []}]}}})),
        )
        .await;
    assert_eq!(
        two.body["error"]["details"].as_array().unwrap().len(),
        2,
        "every problem named"
    );
    let bad_name = api
        .call(
            Method::PUT,
            &group_path("/subscriptions/s", "-bad"),
            Some(json!({"properties": {"selector": {}}})),
        )
        .await;
    assert_eq!(bad_name.status, StatusCode::BAD_REQUEST);
    let old_version = path.replace(FLEET_API, "2024-01-01");
    let answer = api
        .call(Method::PUT, &old_version, Some(json!({"properties": {"selector": {}}})))
        .await;
    assert_eq!(answer.code(), "InvalidApiVersionParameter");
    assert_eq!(
        api.get(&path).await.status,
        StatusCode::NOT_FOUND,
        "nothing was written"
    );
    // an ETag guards a replacement
    let created = api
        .call(Method::PUT, &path, Some(json!({"properties": {"selector": {}}})))
        .await;
    let stale = api
        .raw(
            api.client
                .put(api.url(&path))
                .bearer_auth(&api.token)
                .header("if-match", "\"not-the-etag\"")
                .json(&json!({"properties": {"selector": {"matchLabels": {"env": "x"}}}})),
        )
        .await;
    assert_eq!(stale.status, StatusCode::PRECONDITION_FAILED);
    assert_eq!(api.get(&path).await.body["properties"], created.body["properties"]);
}

on_both_backends!(groups_need_roles_at_their_scope, auth_case);
async fn auth_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let in_rg = "/subscriptions/s/resourceGroups/rg";
    let body = json!({"properties": {"selector": {}}});
    let reader = api.server.token("reader", &[(Role::Reader, in_rg)]);
    let contributor = api.server.token("contributor", &[(Role::Contributor, in_rg)]);
    let refused = api
        .call_as(&reader, Method::PUT, &group_path(in_rg, "g"), Some(body.clone()))
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let created = api
        .call_as(&contributor, Method::PUT, &group_path(in_rg, "g"), Some(body.clone()))
        .await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["systemData"]["createdBy"], "contributor");
    assert_eq!(
        api.call_as(&reader, Method::GET, &group_path(in_rg, "g"), None)
            .await
            .status,
        StatusCode::OK
    );
    // a resource-group role reaches neither the subscription's groups nor another group's
    let at_subscription = group_path("/subscriptions/s", "g");
    assert_eq!(
        api.call_as(&contributor, Method::PUT, &at_subscription, Some(body.clone()))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let other = group_path("/subscriptions/s/resourceGroups/other", "g");
    assert_eq!(
        api.call_as(&reader, Method::GET, &other, None).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        api.call_as(&reader, Method::DELETE, &group_path(in_rg, "g"), None)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let anonymous = api.raw(api.client.get(api.url(&group_path(in_rg, "g")))).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);

    // listing the subscription, a resource-group reader sees the groups of its resource group only
    api.call(Method::PUT, &at_subscription, Some(body.clone())).await;
    let list = with_version("/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups", FLEET_API);
    let seen = api.call_as(&reader, Method::GET, &list, None).await;
    assert_eq!(seen.status, StatusCode::OK);
    let ids: Vec<&str> = seen.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        ["/subscriptions/s/resourceGroups/rg/providers/Fluxplane.Fleet/clusterGroups/g"]
    );
    let stranger = api.server.token("stranger", &[(Role::Reader, "/subscriptions/other")]);
    assert_eq!(
        api.call_as(&stranger, Method::GET, &list, None).await.status,
        StatusCode::FORBIDDEN
    );
}
