//! End-to-end: `fluxplane dev`'s managed identity, the token endpoint in App Service's protocol that MSAL (so
//! `az login --identity` and azure-identity) reads `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` for; `serve` has none.

use std::path::Path;

use crate::common::process::Process;
use crate::common::*;
use fluxplane_api::auth;
use fluxplane_api::config::ManagedIdentity;
use fluxplane_api::managed_identity::{PATH, SUBJECT};
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::Value;

const SECRET: &str = "the-identity-header-of-this-test";

/// A server with the managed identity dev gives it, signing with the server's own key.
async fn start(backend: Backend) -> Option<Api> {
    let server = TestServer::start_with(backend, |config| {
        let key = config.jwt_secret_path();
        fluxplane_api::keys::ensure_key_file(&key).unwrap();
        config.managed_identity = Some(ManagedIdentity {
            header: SECRET.into(),
            signing_key: auth::read_secret_file(&key).unwrap(),
        });
    })
    .await?;
    Some(Api::serving(server))
}

/// Asks `base`'s endpoint for a token the way MSAL does, with `secret` as the identity header if any.
fn token_request(client: &reqwest::Client, base: &str, secret: Option<&str>, query: &str) -> reqwest::RequestBuilder {
    let request = client.get(format!("{base}{PATH}?{query}")).header("Metadata", "true");
    match secret {
        Some(secret) => request.header("X-IDENTITY-HEADER", secret),
        None => request,
    }
}

/// The claims of a JWT, read without checking it (as `az login --identity` reads `tid`).
fn claims(token: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode_claims(token).expect("a JWT")
}

on_both_backends!(
    its_token_is_an_owner_token_for_this_servers_audience_that_lists_the_subscriptions_of_its_tenant,
    token_case
);
async fn token_case(backend: Backend) {
    let Some(api) = start(backend).await else { return };
    api.put_cluster("sub-1", "rg", "c1").await;
    let answer = api
        .raw(token_request(
            &api.client,
            &api.server.base,
            Some(SECRET),
            "api-version=2019-08-01&resource=fluxplane",
        ))
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(answer.header("cache-control"), Some("no-store"));
    let body = &answer.body;
    assert_eq!(
        (&body["resource"], &body["token_type"]),
        (&"fluxplane".into(), &"Bearer".into())
    );
    let expires_on: i64 = body["expires_on"]
        .as_str()
        .expect("epoch seconds as a string")
        .parse()
        .unwrap();
    let lifetime = expires_on - chrono::Utc::now().timestamp();
    assert!(
        (23 * 3600..=24 * 3600).contains(&lifetime),
        "valid 24 hours, not {lifetime} s"
    );
    let token = body["access_token"].as_str().unwrap();
    let tenant = api.server.state.config.tenant().to_string();
    let claims = claims(token);
    assert_eq!(claims["tid"], tenant.as_str(), "{claims}");
    assert_eq!(claims["oid"], body["client_id"], "{claims}");
    assert_eq!((&claims["aud"], &claims["sub"]), (&"fluxplane".into(), &SUBJECT.into()));

    // what `az login --identity` does next: list the subscriptions, which name the token's tenant
    let subscriptions = api
        .call_as(token, Method::GET, "/subscriptions?api-version=2022-12-01", None)
        .await;
    assert_eq!(subscriptions.status, StatusCode::OK, "{subscriptions:?}");
    assert_eq!(subscriptions.body["value"][0]["subscriptionId"], "sub-1");
    assert_eq!(subscriptions.body["value"][0]["tenantId"], tenant.as_str());
    // and it is Owner of everything, as the banner's token, writing under its own name
    let path = with_version(&cluster_path("sub-2", "rg", "c2"), CLUSTER_API);
    let written = api.call_as(token, Method::PUT, &path, Some(cluster_body())).await;
    assert_eq!(written.status, StatusCode::CREATED, "{written:?}");
    assert_eq!(written.body["systemData"]["createdBy"], SUBJECT);
}

#[tokio::test]
async fn it_refuses_a_missing_or_wrong_secret_another_resource_or_protocol_in_the_shape_msal_reads() {
    // the endpoint reads no store: one backend is enough
    let Some(api) = start(Backend::Sqlite).await else {
        return;
    };
    let good = "api-version=2019-08-01&resource=fluxplane";
    let cases = [
        (
            None,
            good,
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "X-IDENTITY-HEADER header is missing",
        ),
        (
            Some("guess"),
            good,
            StatusCode::UNAUTHORIZED,
            "AuthenticationFailed",
            "not the IDENTITY_HEADER",
        ),
        (
            Some(SECRET),
            "api-version=2019-08-01&resource=https://management.core.windows.net/",
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "not for 'https://management.core.windows.net/'",
        ),
        (
            Some(SECRET),
            "api-version=2017-09-01&resource=fluxplane",
            StatusCode::BAD_REQUEST,
            "InvalidApiVersionParameter",
            "2019-08-01",
        ),
        (
            Some(SECRET),
            "api-version=2019-08-01&resource=fluxplane&client_id=0d1e5e4c-0000-0000-0000-000000000000",
            StatusCode::BAD_REQUEST,
            "InvalidParameter",
            "system-assigned",
        ),
    ];
    for (secret, query, status, code, says) in cases {
        let answer = api
            .raw(token_request(&api.client, &api.server.base, secret, query))
            .await;
        assert_eq!((answer.status, answer.code()), (status, code), "{query}: {answer:?}");
        // MSAL reports `statusCode` and `message`; curl users get ARM's error beside them
        assert_eq!(answer.body["statusCode"], status.as_u16(), "{answer:?}");
        let message = answer.body["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert_eq!(answer.body["error"]["message"], message);
        assert!(answer.body.get("access_token").is_none());
    }
}

#[tokio::test]
async fn a_server_not_started_by_dev_has_no_token_endpoint() {
    let Some(api) = Api::start(Backend::Sqlite).await else {
        return;
    };
    let answer = api
        .raw(token_request(
            &api.client,
            &api.server.base,
            Some(SECRET),
            "api-version=2019-08-01&resource=fluxplane",
        ))
        .await;
    assert_eq!((answer.status, answer.code()), (StatusCode::NOT_FOUND, "NotFound"));

    // nor does the binary's `serve`, which never sets one
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut serve = Process::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        dir.path(),
    );
    let address = serve.log_event("fluxplane listening")["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let answer = api
        .raw(token_request(
            &api.client,
            &format!("http://{address}"),
            Some(SECRET),
            "api-version=2019-08-01&resource=fluxplane",
        ))
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND, "{answer:?}");
    serve.terminate();
}

/// `dev` without agents in `dir`; answers it and the values of its banner's `export IDENTITY_...` line.
fn start_dev(dir: &Path) -> (Process, String, String) {
    let data = dir.join("data");
    let mut dev = Process::start(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--agents",
            "0",
            "--data-dir",
            data.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        dir,
    );
    let line = dev.stdout_line("export IDENTITY_ENDPOINT=");
    let mut values = line
        .trim()
        .trim_start_matches("export ")
        .split(' ')
        .map(|pair| pair.split_once('=').expect("NAME=value").1.to_owned());
    let (endpoint, header) = (values.next().unwrap(), values.next().unwrap());
    dev.stdout_line("Stop with Ctrl-C.");
    (dev, endpoint, header)
}

#[tokio::test]
async fn dev_prints_the_environment_of_its_managed_identity_keeps_it_across_restarts_and_never_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let (mut dev, endpoint, header) = start_dev(dir.path());
    assert!(
        endpoint.starts_with("https://127.0.0.1:") && endpoint.ends_with(PATH),
        "{endpoint}"
    );
    let client = https_client(&dir.path().join("data/tls/ca.pem"));
    let answer = client
        .get(format!("{endpoint}?api-version=2019-08-01&resource=fluxplane"))
        .header("X-IDENTITY-HEADER", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let token = answer.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = endpoint.trim_end_matches(PATH);
    let subscriptions = client
        .get(format!("{base}/subscriptions?api-version=2022-12-01"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(subscriptions.status(), StatusCode::OK);
    dev.terminate();
    let log = dev.drain_log().join("\n");
    assert!(log.contains(PATH), "the request is logged: {log}");
    assert!(!log.contains(&header), "the identity header reached the log");
    assert!(!log.contains(&token), "a token reached the log");

    let (mut again, endpoint, kept) = start_dev(dir.path());
    assert_eq!(kept, header, "an export line of an earlier start keeps working");
    let https = https_client(&dir.path().join("data/tls/ca.pem"));
    let answer = https
        .get(format!("{endpoint}?api-version=2019-08-01&resource=fluxplane"))
        .header("X-IDENTITY-HEADER", &header)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    again.terminate();
}
