//! End-to-end: the 48-hour rules with short limits. Secrets nobody collects are deleted and the configuration says
//! to apply them again; a change no agent picks up fails, naming the disconnection.

use std::time::{Duration, Instant};

use crate::common::agents::registered;
use crate::common::*;
use fluxplane_agent::client::ControlPlane;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

async fn start(backend: Backend, secret_ttl: u64, pending_ttl: u64) -> Option<Api> {
    let server = TestServer::start_with(backend, |c| {
        c.secret_ttl = Duration::from_secs(secret_ttl);
        c.pending_ttl = Duration::from_secs(pending_ttl);
    })
    .await?;
    Some(Api::serving(server))
}

async fn until(api: &Api, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = api.get(path).await;
        if done(&answer.body["properties"]) {
            return answer.body;
        }
        assert!(Instant::now() < deadline, "last answer: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_backends!(
    uncollected_secrets_are_deleted_and_the_configuration_asks_for_them_again,
    secrets_case
);
async fn secrets_case(backend: Backend) {
    let Some(api) = start(backend, 1, 3600).await else {
        return;
    };
    let cluster = cluster_path("s", "rg", "c1");
    // a registered agent that never runs: nobody collects the secrets
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    let mut body = git_config_body();
    body["properties"]["configurationProtectedSettings"] = json!({"httpsKey": "ZXhwaXJpbmc="});
    let created = api.put_config(&cluster, "cfg", body).await;
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let failed = until(&api, &path, |p| p["provisioningState"] == "Failed").await;
    let message = failed["properties"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("protected settings") && message.contains("1s"),
        "{message}"
    );
    let operation = api.get(created.header("azure-asyncoperation").unwrap()).await;
    assert_eq!(operation.body["status"], "Failed");
    let offered = ControlPlane::new(identity)
        .unwrap()
        .desired_state(None, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        offered.configurations[0].sealed_secrets.is_empty(),
        "no ciphertext is left"
    );

    // applying the settings again starts over
    let again = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"configurationProtectedSettings": {"httpsKey": "YWdhaW4="}}})),
        )
        .await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.body["properties"]["provisioningState"], "Updating");
    assert_eq!(again.body["properties"]["errorMessage"], Value::Null);
}

on_both_backends!(a_change_no_agent_picks_up_fails_naming_the_disconnection, pending_case);
async fn pending_case(backend: Backend) {
    let Some(api) = start(backend, 3600, 1).await else {
        return;
    };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    api.put_config(&cluster, "cfg", git_config_body()).await;
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let failed = until(&api, &path, |p| p["provisioningState"] == "Failed").await;
    let message = failed["properties"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("did not pick up") && message.contains("disconnected"),
        "{message}"
    );
    // a delete is never failed by expiry: it waits for the agent or a forced delete
    let deleting = api.call(Method::DELETE, &path, None).await;
    assert_eq!(deleting.status, StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(api.get(&path).await.body["properties"]["provisioningState"], "Deleting");
}
