//! End-to-end: Git hosts' push webhooks and the `reconcile` actions bring a new commit to real agents (with `dir`
//! targets, checking a real repository served over HTTP) long before their sync interval; a delivery that does not
//! authenticate changes nothing; a Reader may not ask for a reconcile; a receiver's secret is never answered.

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::agents::*;
use crate::common::*;
use fluxplane_api::auth::Role;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;

const FLEET_API: &str = "2026-01-01";
const SECRET: &str = "s3cr3t-webhook-key-0f9a8b7c6d5e";
/// Far longer than any test waits: a new commit arriving sooner came through a webhook or an action.
const SYNC_INTERVAL: u64 = 3600;

fn receiver_path(name: &str) -> String {
    format!("/subscriptions/s/resourceGroups/rg/providers/Fluxplane.Fleet/gitReceivers/{name}")
}

fn long_interval_config(url: &str) -> Value {
    json!({"properties": {
        "namespace": "flux-system",
        "gitRepository": {"url": url, "repositoryRef": {"branch": "main"}, "syncIntervalInSeconds": SYNC_INTERVAL},
        "kustomizations": {"infra": {"path": "./infra"}, "apps": {"path": "./apps", "dependsOn": ["infra"]}}
    }})
}

fn hmac_hex(body: &[u8], secret: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// A push of `commit` to `main` of the repository at `url`, as `host` delivers it (payload and headers), signed or
/// authenticated with `secret`.
fn delivery(host: &str, url: &str, commit: &str, secret: &str) -> (Vec<u8>, Vec<(&'static str, String)>) {
    let web = url.trim_end_matches(".git");
    let payload = match host {
        "GitHub" => json!({"ref": "refs/heads/main", "before": "0000000000000000000000000000000000000001",
            "after": commit, "repository": {"clone_url": url, "html_url": web, "ssh_url": "git@example.com:x/y.git"}}),
        "GitLab" => json!({"object_kind": "push", "ref": "refs/heads/main", "checkout_sha": commit,
            "project": {"git_http_url": url, "git_ssh_url": "git@example.com:x/y.git", "web_url": web}}),
        "Bitbucket" => json!({"repository": {"links": {"html": {"href": web}}},
            "push": {"changes": [{"new": {"type": "branch", "name": "main", "target": {"hash": commit}},
                                  "old": {"type": "branch", "name": "main", "target": {"hash": "abc1234"}}}]}}),
        "AzureDevOps" => json!({"eventType": "git.push", "resource": {
            "refUpdates": [{"name": "refs/heads/main", "oldObjectId": "0000000000000000000000000000000000000001",
                            "newObjectId": commit}],
            "repository": {"remoteUrl": url}}}),
        _ => json!({"ref": "refs/heads/main", "commit": commit, "repository": url}),
    };
    let body = serde_json::to_vec(&payload).unwrap();
    let signature = format!("sha256={}", hmac_hex(&body, secret));
    let headers = match host {
        "GitHub" => vec![
            ("X-GitHub-Event", "push".to_owned()),
            ("X-Hub-Signature-256", signature),
        ],
        "GitLab" => vec![
            ("X-Gitlab-Event", "Push Hook".to_owned()),
            ("X-Gitlab-Token", secret.to_owned()),
        ],
        "Bitbucket" => vec![("X-Event-Key", "repo:push".to_owned()), ("X-Hub-Signature", signature)],
        "AzureDevOps" => vec![(
            "Authorization",
            format!("Basic {}", STANDARD.encode(format!("fluxplane:{secret}"))),
        )],
        _ => vec![("X-Signature", signature)],
    };
    (body, headers)
}

async fn deliver(api: &Api, webhook: &str, (body, headers): (Vec<u8>, Vec<(&'static str, String)>)) -> Answer {
    let mut request = api
        .client
        .post(webhook)
        .header("content-type", "application/json")
        .body(body);
    for (name, value) in headers {
        request = request.header(name, value);
    }
    api.raw(request).await
}

async fn put_receiver(api: &Api, name: &str, host: &str, url: &str) -> Answer {
    let body = json!({"properties": {"repositoryUrl": url, "hostType": host, "secret": SECRET}});
    let answer = api
        .call(Method::PUT, &with_version(&receiver_path(name), FLEET_API), Some(body))
        .await;
    assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    answer
}

/// Waits until the configuration reports `commit` Compliant; answers how long that took.
async fn compliant_at(api: &Api, path: &str, commit: &str) -> Duration {
    let started = Instant::now();
    let synced = format!("main@sha1:{commit}");
    until(api, path, &format!("Compliant at {commit}"), |p| {
        p["complianceState"] == "Compliant" && p["sourceSyncedCommitId"] == synced.as_str()
    })
    .await;
    started.elapsed()
}

on_both_backends!(
    a_push_from_each_host_brings_its_commit_long_before_the_sync_interval_and_a_forged_one_nothing,
    push_case
);
async fn push_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let _agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "demo"), FLUX_API);
    let created = api.put_config(&cluster, "demo", long_interval_config(&url)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    compliant_at(&api, &path, &repository.head()).await;

    for (i, host) in ["GitHub", "GitLab", "Bitbucket", "AzureDevOps", "Generic"]
        .into_iter()
        .enumerate()
    {
        let receiver = put_receiver(&api, &format!("fleet-{i}"), host, &url).await;
        let webhook = receiver.body["properties"]["webhookUrl"].as_str().unwrap().to_owned();
        assert!(webhook.starts_with(&api.server.base), "{webhook}");
        assert!(
            !receiver.body.to_string().contains(SECRET),
            "never answered: {receiver:?}"
        );

        let commit = repository.commit(&[(&format!("apps/{host}.yaml"), crate::common::git::MANIFEST)], host);
        let delivered = deliver(&api, &webhook, delivery(host, &url, &commit, SECRET)).await;
        assert_eq!(delivered.status, StatusCode::ACCEPTED, "{host}: {delivered:?}");
        assert_eq!(delivered.body["configurations"], 1, "{host}: {delivered:?}");
        let took = compliant_at(&api, &path, &commit).await;
        assert!(
            took < Duration::from_secs(SYNC_INTERVAL / 100),
            "{host}: the new commit took {took:?}"
        );
        let read = api
            .get(&with_version(&receiver_path(&format!("fleet-{i}")), FLEET_API))
            .await;
        assert_eq!(
            read.body["properties"]["lastPush"]["refs"],
            json!(["refs/heads/main"]),
            "{read:?}"
        );
        assert_eq!(read.body["properties"]["lastPush"]["configurations"], 1);
    }

    // forged: signed with another secret, or not at all; and a webhook that does not exist
    let receiver = api.get(&with_version(&receiver_path("fleet-0"), FLEET_API)).await;
    let webhook = receiver.body["properties"]["webhookUrl"].as_str().unwrap().to_owned();
    let before = api.get(&path).await.body["properties"]["sourceSyncedCommitId"].clone();
    let commit = repository.commit(&[("apps/forged.yaml", crate::common::git::MANIFEST)], "forged");
    let forged = deliver(
        &api,
        &webhook,
        delivery("GitHub", &url, &commit, "another-secret-of-some-length"),
    )
    .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED, "{forged:?}");
    assert_eq!(forged.code(), "AuthenticationFailed");
    assert_eq!(
        forged.body["error"]["message"], "the delivery is not authenticated",
        "says no more"
    );
    let (body, _) = delivery("GitHub", &url, &commit, SECRET);
    let unsigned = deliver(&api, &webhook, (body, vec![("X-GitHub-Event", "push".to_owned())])).await;
    assert_eq!(unsigned.status, StatusCode::UNAUTHORIZED);
    let nowhere = format!("{}/webhooks/git/{}", api.server.base, "A".repeat(32));
    let unknown = deliver(&api, &nowhere, delivery("GitHub", &url, &commit, SECRET)).await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    // nothing was asked: the agent, waiting on its poll, sees no new commit (a request would take well under this)
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = api.get(&path).await;
    assert_eq!(after.body["properties"]["sourceSyncedCommitId"], before, "{after:?}");
    let read = api.get(&with_version(&receiver_path("fleet-0"), FLEET_API)).await;
    assert_ne!(
        read.body["properties"]["lastPush"]["commit"],
        commit.as_str(),
        "a forged push is not recorded"
    );

    // a push to another branch, or to another repository, asks nothing
    let (body, _) = delivery("Generic", &url, &commit, SECRET);
    let body = String::from_utf8(body)
        .unwrap()
        .replace("refs/heads/main", "refs/heads/dev")
        .into_bytes();
    let signature = format!("sha256={}", hmac_hex(&body, SECRET));
    let generic = api.get(&with_version(&receiver_path("fleet-4"), FLEET_API)).await;
    let generic_hook = generic.body["properties"]["webhookUrl"].as_str().unwrap().to_owned();
    let other_branch = deliver(&api, &generic_hook, (body, vec![("X-Signature", signature)])).await;
    assert_eq!(other_branch.status, StatusCode::ACCEPTED);
    assert_eq!(other_branch.body["configurations"], 0);
    let elsewhere = deliver(
        &api,
        &generic_hook,
        delivery("Generic", "https://example.com/other.git", &commit, SECRET),
    )
    .await;
    assert_eq!(elsewhere.status, StatusCode::BAD_REQUEST, "{elsewhere:?}");

    // the list never answers the secret either
    let (receivers, _) = api
        .list_all(&with_version(
            "/subscriptions/s/providers/Fluxplane.Fleet/gitReceivers",
            FLEET_API,
        ))
        .await;
    assert_eq!(receivers.len(), 5);
    assert!(!Value::Array(receivers).to_string().contains(SECRET));
}

on_both_backends!(
    the_reconcile_actions_bring_a_new_commit_at_once_and_a_reader_may_not_ask,
    reconcile_case
);
async fn reconcile_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let _agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "demo"), FLUX_API);
    assert_eq!(
        api.put_config(&cluster, "demo", long_interval_config(&url))
            .await
            .status,
        StatusCode::CREATED
    );
    compliant_at(&api, &path, &repository.head()).await;

    let reader = api.server.token("reader", &[(Role::Reader, "/subscriptions/s")]);
    let contributor = api
        .server
        .token("contributor", &[(Role::Contributor, "/subscriptions/s")]);
    let action = with_version(&format!("{}/reconcile", config_path(&cluster, "demo")), FLEET_API);
    let commit = repository.commit(&[("apps/more.yaml", crate::common::git::MANIFEST)], "more");
    let refused = api.call_as(&reader, Method::POST, &action, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let asked = api.call_as(&contributor, Method::POST, &action, None).await;
    assert_eq!(asked.status, StatusCode::OK, "{asked:?}");
    assert_eq!(asked.body["configurations"], 1);
    assert!(asked.body["reconcileRequestedAt"].as_str().unwrap().ends_with('Z'));
    let took = compliant_at(&api, &path, &commit).await;
    assert!(took < Duration::from_secs(SYNC_INTERVAL / 100), "took {took:?}");
    let missing = api
        .call_as(
            &contributor,
            Method::POST,
            &with_version(&format!("{}/reconcile", config_path(&cluster, "none")), FLEET_API),
            None,
        )
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);

    // by policy assignment
    let assignment = "/subscriptions/s/providers/Fluxplane.Fleet/policyAssignments/baseline";
    let written = api
        .call(
            Method::PUT,
            &with_version(assignment, FLEET_API),
            Some(json!({"properties": {
                "selector": {"matchLabels": {"env": "test"}},
                "configurationName": "baseline",
                "configurationTemplate": long_interval_config(&url)["properties"].clone()
            }})),
        )
        .await;
    assert_eq!(written.status, StatusCode::CREATED, "{written:?}");
    let baseline = with_version(&config_path(&cluster, "baseline"), FLUX_API);
    compliant_at(&api, &baseline, &commit).await;
    let commit = repository.commit(&[("apps/again.yaml", crate::common::git::MANIFEST)], "again");
    let action = with_version(&format!("{assignment}/reconcile"), FLEET_API);
    let refused = api.call_as(&reader, Method::POST, &action, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let asked = api.call_as(&contributor, Method::POST, &action, None).await;
    assert_eq!(asked.status, StatusCode::OK, "{asked:?}");
    assert_eq!(asked.body["configurations"], 1);
    compliant_at(&api, &baseline, &commit).await;
}

#[tokio::test]
async fn a_receivers_secret_appears_in_no_answer_and_in_no_line_of_the_servers_log() {
    use crate::common::process::{Process, run};
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let mut serve = Process::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
            data_arg,
        ],
        dir.path(),
    );
    let address = serve.log_event("fluxplane listening")["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = format!("http://{address}");
    let jwt_secret = data.join("jwt-secret");
    let token = run(&[
        "token",
        "--subject",
        "ops",
        "--role",
        "Owner",
        "--scope",
        "/",
        "--jwt-secret-file",
        jwt_secret.to_str().unwrap(),
    ]);
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let client = http_client();
    let url = "https://git.example.com/org/fleet.git";
    let mut answers = Vec::new();
    for (name, host) in [("lab", "GitLab"), ("devops", "AzureDevOps"), ("hub", "GitHub")] {
        let body = json!({"properties": {"repositoryUrl": url, "hostType": host, "secret": SECRET}});
        let path = format!("{base}{}", with_version(&receiver_path(name), FLEET_API));
        let written = client.put(&path).bearer_auth(&token).json(&body).send().await.unwrap();
        assert_eq!(written.status(), StatusCode::CREATED);
        let written: Value = written.json().await.unwrap();
        let webhook = written["properties"]["webhookUrl"].as_str().unwrap().to_owned();
        answers.push(written.to_string());
        answers.push(
            client
                .get(&path)
                .bearer_auth(&token)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
        // a delivery with the secret, and one with another
        for secret in [SECRET, "not-the-secret-but-long-enough"] {
            let (body, headers) = delivery(host, url, "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c", secret);
            let mut request = client
                .post(&webhook)
                .header("content-type", "application/json")
                .body(body);
            for (name, value) in headers {
                request = request.header(name, value);
            }
            let delivered = request.send().await.unwrap();
            assert!(
                [StatusCode::ACCEPTED, StatusCode::UNAUTHORIZED].contains(&delivered.status()),
                "{host}: {delivered:?}"
            );
            answers.push(delivered.text().await.unwrap());
        }
    }
    let list = format!(
        "{base}{}",
        with_version("/subscriptions/s/providers/Fluxplane.Fleet/gitReceivers", FLEET_API)
    );
    answers.push(
        client
            .get(&list)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    serve.terminate();
    let log = serve.drain_log();
    assert!(
        log.iter().any(|line| line.contains("did not authenticate")),
        "the refusals are logged: {log:#?}"
    );
    let basic = STANDARD.encode(format!("fluxplane:{SECRET}"));
    for text in answers.iter().chain(&log) {
        assert!(
            !text.contains(SECRET) && !text.contains(&basic),
            "the secret shows in: {text}"
        );
    }
}
