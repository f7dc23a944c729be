//! End-to-end: every kind of bad input gets a clear ARM error with the right status, and changes nothing.

use crate::common::*;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

on_both_backends!(api_version_is_required_and_checked, api_version_case);
async fn api_version_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    let missing = api.call(Method::PUT, &cluster, Some(cluster_body())).await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::BAD_REQUEST, "MissingApiVersionParameter")
    );
    let wrong = api
        .call(Method::PUT, &with_version(&cluster, FLUX_API), Some(cluster_body()))
        .await;
    assert_eq!(
        (wrong.status, wrong.code()),
        (StatusCode::BAD_REQUEST, "InvalidApiVersionParameter")
    );
    assert!(wrong.body["error"]["message"].as_str().unwrap().contains("2024-01-01"));
    api.put_cluster("s", "rg", "c1").await;
    let config = api
        .call(
            Method::GET,
            &with_version(&config_path(&cluster, "cfg"), "2021-09-01"),
            None,
        )
        .await;
    assert_eq!(config.code(), "InvalidApiVersionParameter");
    for version in ["2023-05-01", "2024-11-01", "2025-04-01"] {
        let created = api
            .put_config(&cluster, &format!("v{}", &version[..4]), git_config_body())
            .await;
        let listed = api
            .get(&with_version(
                &format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations"),
                version,
            ))
            .await;
        assert!(created.status.is_success() && listed.status.is_success(), "{version}");
    }
    let newer = api.get(&with_version(&cluster, "2026-05-01")).await;
    assert_eq!(newer.status, StatusCode::OK);
}

on_both_backends!(malformed_bodies_are_refused_and_write_nothing, malformed_case);
async fn malformed_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let send = |body: &'static str| {
        api.client
            .put(api.url(&path))
            .bearer_auth(&api.token)
            .header("content-type", "application/json")
            .body(body)
    };
    let syntax = api.raw(send("{\"properties\": {")).await;
    assert_eq!(
        (syntax.status, syntax.code()),
        (StatusCode::BAD_REQUEST, "InvalidRequestContent")
    );
    let array = api.raw(send("[1, 2]")).await;
    assert_eq!(
        (array.status, array.code()),
        (StatusCode::BAD_REQUEST, "InvalidRequestContent")
    );

    let cases = [
        (json!({"properties": {"suspend": "yes"}}), "properties.suspend"),
        (json!({"properties": {"sourceKind": "Svn"}}), "properties.sourceKind"),
        (
            json!({"properties": {"gitRepository": {"url": "https://x.io/r", "branch": "main"}}}),
            "properties.gitRepository",
        ),
        (
            json!({"properties": {"kustomizations": {"k": {"prune": 1}}}}),
            "properties.kustomizations.k.prune",
        ),
        (
            json!({"properties": {"configurationProtectedSettings": {"k": 5}}}),
            "properties.configurationProtectedSettings.k",
        ),
        (json!({"properties": {}, "location": "westeurope"}), "location"),
    ];
    for (body, target) in cases {
        let refused = api.call(Method::PUT, &path, Some(body.clone())).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::BAD_REQUEST, "InvalidParameter"),
            "{body}"
        );
        let got = refused.body["error"]["target"].as_str().unwrap_or_default();
        assert!(got.starts_with(target), "{body}: target {got}, expected {target}");
    }
    let invalid = api
        .call(
            Method::PUT,
            &path,
            Some(json!({"properties": {"gitRepository": {"url": "ftp://x/y", "repositoryRef": {}}}})),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        invalid.body["error"]["details"].as_array().unwrap().len(),
        2,
        "{invalid:?}"
    );
    assert_eq!(
        api.get(&path).await.status,
        StatusCode::NOT_FOUND,
        "nothing was written"
    );
}

on_both_backends!(bad_names_are_refused, names_case);
async fn names_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    for name in ["Bad_Name", "-lead", &"x".repeat(64)] {
        let refused = api.put_config(&cluster, name, git_config_body()).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::BAD_REQUEST, "InvalidParameter"),
            "{name}"
        );
    }
    for (rg, name) in [("rg", "-c"), ("rg.", "c"), ("rg", "c$")] {
        let path = with_version(&cluster_path("s", rg, name), CLUSTER_API);
        let refused = api.call(Method::PUT, &path, Some(cluster_body())).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{rg}/{name}: {refused:?}");
    }
    let mut body = git_config_body();
    body["properties"]["kustomizations"] = json!({ "k".repeat(40): {} });
    let too_long = api.put_config(&cluster, &"c".repeat(30), body).await;
    assert_eq!(too_long.status, StatusCode::BAD_REQUEST);
}

on_both_backends!(media_type_and_size_are_enforced, media_case);
async fn media_case(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |c| c.max_body_bytes = 2048).await else {
        return;
    };
    let api = Api::serving(server);
    let path = with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API);
    let text = api
        .raw(
            api.client
                .put(api.url(&path))
                .bearer_auth(&api.token)
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(
        (text.status, text.code()),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType")
    );
    let mut big = cluster_body();
    big["tags"] = json!({"padding": "x".repeat(4096)});
    let large = api.call(Method::PUT, &path, Some(big)).await;
    assert_eq!(
        (large.status, large.code()),
        (StatusCode::PAYLOAD_TOO_LARGE, "RequestEntityTooLarge")
    );
    assert_eq!(api.get(&path).await.status, StatusCode::NOT_FOUND);
}

on_both_backends!(unknown_routes_and_methods_answer_in_arm_shape, routes_case);
async fn routes_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let unknown = api
        .get("/subscriptions/s/providers/Microsoft.Nothing/things?api-version=1")
        .await;
    assert_eq!((unknown.status, unknown.code()), (StatusCode::NOT_FOUND, "NotFound"));
    let cluster = cluster_path("s", "rg", "c1");
    let wrong = api
        .call(Method::POST, &with_version(&cluster, CLUSTER_API), Some(cluster_body()))
        .await;
    assert_eq!(
        (wrong.status, wrong.code()),
        (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed")
    );
    let op = api
        .get(&with_version(
            &format!("{}/operations/nope", config_path(&cluster, "cfg")),
            FLUX_API,
        ))
        .await;
    assert_eq!(op.status, StatusCode::NOT_FOUND);
}
