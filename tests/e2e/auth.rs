//! End-to-end: user authentication (401) and role-based authorisation by scope (403).

use crate::common::*;
use fluxplane_api::auth::{self, Role, RoleAssignment};
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::json;

on_both_backends!(calls_without_a_valid_token_are_refused, unauthenticated_case);
async fn unauthenticated_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let path = with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API);
    let none = api.raw(api.client.put(api.url(&path)).json(&cluster_body())).await;
    assert_eq!(
        (none.status, none.code()),
        (StatusCode::UNAUTHORIZED, "AuthenticationFailed")
    );
    assert_eq!(none.header("www-authenticate"), Some("Bearer"));
    let secret = auth::read_secret_file(&api.server.state.config.jwt_secret_path()).unwrap();
    let owner = vec![RoleAssignment::parse(Role::Owner, "/").unwrap()];
    let expired = auth::mint(
        &secret,
        "fluxplane",
        "fluxplane",
        "a",
        owner.clone(),
        chrono::Duration::hours(-1),
        api.server.state.config.tenant(),
    )
    .unwrap();
    let audience = auth::mint(
        &secret,
        "fluxplane",
        "other",
        "a",
        owner.clone(),
        chrono::Duration::hours(1),
        api.server.state.config.tenant(),
    )
    .unwrap();
    let other_tenant = auth::mint(
        &secret,
        "fluxplane",
        "fluxplane",
        "a",
        owner.clone(),
        chrono::Duration::hours(1),
        uuid::Uuid::from_u128(7),
    )
    .unwrap();
    let foreign = auth::mint(
        &[3u8; 32],
        "fluxplane",
        "fluxplane",
        "a",
        owner,
        chrono::Duration::hours(1),
        api.server.state.config.tenant(),
    )
    .unwrap();
    for token in [
        "garbage",
        expired.as_str(),
        audience.as_str(),
        other_tenant.as_str(),
        foreign.as_str(),
    ] {
        let refused = api.call_as(token, Method::PUT, &path, Some(cluster_body())).await;
        assert_eq!(
            (refused.status, refused.code()),
            (StatusCode::UNAUTHORIZED, "AuthenticationFailed")
        );
    }
    assert_eq!(
        api.get(&path).await.status,
        StatusCode::NOT_FOUND,
        "nothing was written"
    );
}

on_both_backends!(roles_allow_what_they_name_and_no_more, roles_case);
async fn roles_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    api.put_cluster("s", "rg-a", "c1").await;
    api.put_cluster("s", "rg-b", "c1").await;
    let reader = api.server.token("reader", &[(Role::Reader, "/subscriptions/s")]);
    let contributor = api
        .server
        .token("dev", &[(Role::Contributor, "/subscriptions/s/resourceGroups/rg-a")]);
    let in_a = with_version(&cluster_path("s", "rg-a", "c1"), CLUSTER_API);
    let in_b = with_version(&cluster_path("s", "rg-b", "c1"), CLUSTER_API);

    assert_eq!(
        api.call_as(&reader, Method::GET, &in_b, None).await.status,
        StatusCode::OK
    );
    let write = api.call_as(&reader, Method::PUT, &in_a, Some(cluster_body())).await;
    assert_eq!(
        (write.status, write.code()),
        (StatusCode::FORBIDDEN, "AuthorizationFailed")
    );
    let delete = api.call_as(&reader, Method::DELETE, &in_a, None).await;
    assert_eq!(delete.status, StatusCode::FORBIDDEN);
    assert_eq!(
        api.get(&in_a).await.status,
        StatusCode::OK,
        "the refused delete changed nothing"
    );

    let mut body = cluster_body();
    body["tags"] = json!({"owner": "dev"});
    let own = api.call_as(&contributor, Method::PUT, &in_a, Some(body)).await;
    assert_eq!(own.status, StatusCode::OK);
    assert_eq!(own.body["systemData"]["lastModifiedBy"], "dev");
    assert_eq!(own.body["systemData"]["createdBy"], "test-owner");
    let config = api
        .put_config(&cluster_path("s", "rg-a", "c1"), "cfg", git_config_body())
        .await;
    assert_eq!(config.status, StatusCode::CREATED);

    // outside its scope the caller cannot tell an existing cluster from a missing one
    let existing = api.call_as(&contributor, Method::GET, &in_b, None).await;
    let missing = api
        .call_as(
            &contributor,
            Method::GET,
            &with_version(&cluster_path("s", "rg-b", "nope"), CLUSTER_API),
            None,
        )
        .await;
    assert_eq!(
        (existing.status, existing.code()),
        (StatusCode::FORBIDDEN, "AuthorizationFailed")
    );
    assert_eq!((missing.status, missing.code()), (existing.status, existing.code()));
    let configs = with_version(
        &format!(
            "{}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations",
            cluster_path("s", "rg-b", "c1")
        ),
        FLUX_API,
    );
    assert_eq!(
        api.call_as(&contributor, Method::GET, &configs, None).await.status,
        StatusCode::FORBIDDEN
    );
}

on_both_backends!(
    a_subscription_list_shows_only_what_the_caller_may_read,
    filtered_list_case
);
async fn filtered_list_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    // group names whose keys sort differently from the names themselves ('-' and '.' sort before '/')
    for (group, cluster) in [("a", "c1"), ("a", "c2"), ("a-b", "c1"), ("a.c", "c1"), ("hidden", "c1")] {
        api.put_cluster("s", group, cluster).await;
    }
    let caller = api.server.token(
        "team",
        &[
            (Role::Reader, "/subscriptions/s/resourceGroups/a"),
            (Role::Contributor, "/subscriptions/s/resourceGroups/A-B"),
            (Role::Reader, "/subscriptions/s/resourceGroups/a.c"),
        ],
    );
    let mut seen = Vec::new();
    let mut next = Some(format!(
        "{}&$top=1",
        with_version(
            "/subscriptions/s/providers/Microsoft.Kubernetes/connectedClusters",
            CLUSTER_API
        )
    ));
    while let Some(link) = next {
        let page = api.call_as(&caller, Method::GET, &link, None).await;
        assert_eq!(page.status, StatusCode::OK, "{page:?}");
        assert!(page.body["value"].as_array().unwrap().len() <= 1);
        seen.extend(
            page.body["value"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].as_str().unwrap().to_owned()),
        );
        next = page.body["nextLink"].as_str().map(str::to_owned);
    }
    seen.sort();
    let mut expected: Vec<String> = [("a", "c1"), ("a", "c2"), ("a-b", "c1"), ("a.c", "c1")]
        .iter()
        .map(|(g, c)| cluster_path("s", g, c))
        .collect();
    expected.sort();
    assert_eq!(seen, expected, "every readable cluster once, nothing from 'hidden'");

    let stranger = api.server.token("stranger", &[(Role::Owner, "/subscriptions/other")]);
    let path = with_version(
        "/subscriptions/s/providers/Microsoft.Kubernetes/connectedClusters",
        CLUSTER_API,
    );
    assert_eq!(
        api.call_as(&stranger, Method::GET, &path, None).await.status,
        StatusCode::FORBIDDEN
    );
}

/// Tokens from an external identity provider, verified against its JSON Web Key Set with the pinned algorithm.
#[tokio::test]
async fn tokens_from_a_jwks_provider_are_verified_with_the_pinned_algorithm() {
    use p256::elliptic_curve::JwkEcKey;
    use p256::pkcs8::EncodePrivateKey;

    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    let mut jwk: serde_json::Value = serde_json::from_str(&JwkEcKey::from(key.public_key()).to_string()).unwrap();
    jwk["kid"] = json!("idp-1");
    jwk["alg"] = json!("ES256");
    let dir = tempfile::tempdir().unwrap();
    let jwks_path = dir.path().join("jwks.json");
    std::fs::write(&jwks_path, json!({"keys": [jwk]}).to_string()).unwrap();
    let Some(server) = TestServer::start_with(Backend::Sqlite, |c| {
        c.jwks_file = Some(jwks_path.clone());
        c.jwt_algorithm = Some(fluxplane_api::config::JwtAlgorithm::Es256);
        c.jwt_issuer = "https://idp.example".into();
    })
    .await
    else {
        return;
    };
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "sub": "carol", "iss": "https://idp.example", "aud": "fluxplane", "iat": now, "nbf": now, "exp": now + 600,
        "roles": [{"role": "Reader", "scope": "/subscriptions/s"}]
    });
    let pem = key.to_pkcs8_pem(Default::default()).unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("idp-1".into());
    let token = jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_pem(pem.as_bytes()).unwrap(),
    )
    .unwrap();
    let api = Api {
        token,
        server,
        client: http_client(),
    };
    let path = with_version(
        "/subscriptions/s/providers/Microsoft.Kubernetes/connectedClusters",
        CLUSTER_API,
    );
    assert_eq!(api.get(&path).await.status, StatusCode::OK);
    // an HS256 token, even one signed with a secret the server knows, is not accepted once ES256 is pinned
    let hs = auth::mint(
        &[5u8; 32],
        "https://idp.example",
        "fluxplane",
        "x",
        vec![],
        chrono::Duration::hours(1),
        api.server.state.config.tenant(),
    )
    .unwrap();
    assert_eq!(
        api.call_as(&hs, Method::GET, &path, None).await.status,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn health_and_metrics_need_no_token_and_count_requests() {
    let Some(api) = Api::start(Backend::Sqlite).await else {
        return;
    };
    assert_eq!(
        api.raw(api.client.get(api.url("/healthz"))).await.status,
        StatusCode::OK
    );
    assert_eq!(api.raw(api.client.get(api.url("/readyz"))).await.status, StatusCode::OK);
    api.put_cluster("s", "rg", "c1").await;
    let metrics = api.raw(api.client.get(api.url("/metrics"))).await;
    let text = metrics.body.as_str().unwrap().to_owned();
    let route = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Kubernetes/connectedClusters/{clusterName}";
    assert!(
        text.contains(&format!(
            "fluxplane_http_requests_total{{method=\"PUT\",route=\"{route}\",status=\"201\"}} 1"
        )),
        "{text}"
    );
    assert!(
        text.contains("fluxplane_http_request_duration_seconds_bucket"),
        "{text}"
    );
    assert!(metrics.header("content-type").unwrap().contains("openmetrics"));
    let answer = api
        .get(&with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API))
        .await;
    assert!(answer.header("x-ms-request-id").is_some());
}
