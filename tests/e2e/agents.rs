//! End-to-end: agents with their own identities long-poll a real server, materialise configurations of real Git
//! repositories (served over real HTTP) in `dir` targets, and report status back; an agent whose cluster does not
//! answer keeps its heartbeat and says so.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::agents::*;
use crate::common::git::MANIFEST;
use crate::common::*;
use fluxplane_agent::client::{ClientError, ControlPlane, Polled};
use fluxplane_agent::identity::Identity;
use fluxplane_agent::run::{Agent, Options};
use fluxplane_agent::secrets::Credentials;
use fluxplane_agent::targets::{ClusterFacts, Drifted, Observation, Target};
use fluxplane_agent_protocol::agent::{AGENT_AUDIENCE, AgentClaims, DesiredConfiguration};
use fluxplane_agent_protocol::flux::ComplianceState;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::{Backend, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn agent_token(identity: &Identity, claims: &AgentClaims) -> String {
    let key = jsonwebtoken::EncodingKey::from_ed_pem(identity.private_key.as_bytes()).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA), claims, &key).unwrap()
}

on_both_backends!(
    agents_materialise_configurations_and_report_real_status,
    materialise_case
);
async fn materialise_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "demo"), FLUX_API);

    let created = api.put_config(&cluster, "demo", config_body(&url)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let head = repository.head();
    let ready = until(&api, &path, "Succeeded and Compliant", |p| {
        p["provisioningState"] == "Succeeded" && p["complianceState"] == "Compliant"
    })
    .await;
    assert_eq!(ready["properties"]["sourceSyncedCommitId"], format!("main@sha1:{head}"));
    let metrics = api.raw(api.client.get(api.url("/metrics"))).await;
    let recorded = metrics
        .body
        .as_str()
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("fluxplane_agent_reports_total{disposition=\"Recorded\"} "))
        .and_then(|n| n.trim().parse::<f64>().ok());
    assert!(
        recorded.is_some_and(|n| n >= 1.0),
        "the agent's reports are counted: {recorded:?}"
    );
    assert_eq!(
        ready["properties"]["statuses"].as_array().unwrap().len(),
        3,
        "the source and two kustomizations"
    );
    let operation = api.get(created.header("azure-asyncoperation").unwrap()).await;
    assert_eq!(operation.body["status"], "Succeeded");
    for file in [
        "fluxconfig.yaml",
        "source.yaml",
        "kustomization-infra.yaml",
        "kustomization-apps.yaml",
    ] {
        assert!(agent.file("demo", file).exists(), "{file}");
    }
    let source = std::fs::read_to_string(agent.file("demo", "source.yaml")).unwrap();
    assert!(
        source.contains("kind: GitRepository") && source.contains(&url),
        "{source}"
    );
    let cluster_state = api.get(&with_version(&cluster, CLUSTER_API)).await;
    assert_eq!(cluster_state.body["properties"]["connectivityStatus"], "Connected");
    assert!(cluster_state.body["properties"]["agentVersion"].is_string());

    // a new commit is picked up on the sync interval
    let next = repository.commit(&[("apps/more.yaml", MANIFEST)], "more");
    until(&api, &path, "the new commit", |p| {
        p["sourceSyncedCommitId"] == format!("main@sha1:{next}")
    })
    .await;

    // a missing branch is reported, with the reason
    let patch = |body: Value| api.call(Method::PATCH, &path, Some(json!({ "properties": body })));
    assert_eq!(
        patch(json!({"gitRepository": {"repositoryRef": {"branch": "missing"}}}))
            .await
            .status,
        StatusCode::ACCEPTED
    );
    let broken = until(&api, &path, "Non-Compliant", |p| {
        p["complianceState"] == "Non-Compliant"
    })
    .await;
    assert!(
        broken["properties"]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{broken}"
    );
    assert_eq!(
        broken["properties"]["provisioningState"], "Succeeded",
        "the objects are written; the source is not"
    );

    // so is a missing path
    patch(json!({"gitRepository": {"repositoryRef": {"branch": "main"}}, "kustomizations": {"apps": {"path": "./nowhere"}}})).await;
    let no_path = until(&api, &path, "a missing path", |p| {
        p["complianceState"] == "Non-Compliant" && p["errorMessage"].as_str().is_some_and(|m| m.contains("nowhere"))
    })
    .await;
    assert!(no_path["properties"]["errorMessage"].as_str().unwrap().contains("apps"));

    patch(json!({"suspend": true, "kustomizations": {"apps": {"path": "./apps"}}})).await;
    until(&api, &path, "Suspended", |p| p["complianceState"] == "Suspended").await;

    // deleting waits for the agent, which removes the files
    let deleted = api.call(Method::DELETE, &path, None).await;
    assert_eq!(deleted.status, StatusCode::ACCEPTED);
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.get(&path).await.status != StatusCode::NOT_FOUND {
        assert!(Instant::now() < deadline, "the agent did not confirm the deletion");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!agent.file("demo", "fluxconfig.yaml").exists());
    assert_eq!(
        api.get(deleted.header("azure-asyncoperation").unwrap()).await.body["status"],
        "Succeeded"
    );
    agent.stop().await;
}

on_both_backends!(
    agent_tokens_other_than_the_clusters_own_are_refused_without_side_effects,
    tokens_case
);
async fn tokens_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let a = registered(&api, "a", dir.path()).await;
    let b = registered(&api, "b", dir.path()).await;
    let poll = format!("{}/agent/v1/desired-state?wait=0", api.server.base);
    let now = chrono::Utc::now().timestamp();
    let claims = |sub: &Identity, aud: &str, iat: i64, exp: i64| AgentClaims {
        sub: sub.cluster_id.clone(),
        aud: aud.to_owned(),
        iat,
        exp,
    };
    let mut tampered = b.token().unwrap().value;
    let middle = tampered.len() / 2;
    tampered.replace_range(
        middle..middle + 1,
        if &tampered[middle..middle + 1] == "A" { "B" } else { "A" },
    );
    let refused = [
        (
            "a's key claiming b",
            agent_token(&a, &claims(&b, AGENT_AUDIENCE, now, now + 60)),
        ),
        (
            "expired",
            agent_token(&b, &claims(&b, AGENT_AUDIENCE, now - 600, now - 300)),
        ),
        (
            "wrong audience",
            agent_token(&b, &claims(&b, "fluxplane", now, now + 60)),
        ),
        (
            "too long-lived",
            agent_token(&b, &claims(&b, AGENT_AUDIENCE, now, now + 3600)),
        ),
        ("tampered", tampered),
        ("a user token", api.token.clone()),
    ];
    for (what, token) in refused {
        let answer = api.raw(api.client.get(&poll).bearer_auth(&token)).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::UNAUTHORIZED, "AuthenticationFailed"),
            "{what}"
        );
        let report = api
            .raw(
                api.client
                    .post(format!("{}/agent/v1/status", api.server.base))
                    .bearer_auth(&token)
                    .json(&json!({})),
            )
            .await;
        assert_eq!(report.status, StatusCode::UNAUTHORIZED, "{what}");
    }
    let b_cluster = api.get(&with_version(&cluster_path("s", "rg", "b"), CLUSTER_API)).await;
    assert_eq!(
        b_cluster.body["properties"]["connectivityStatus"], "Connecting",
        "no refused call was a heartbeat"
    );
    assert_eq!(b_cluster.body["properties"]["lastConnectivityTime"], Value::Null);

    // an agent token cannot call the user API
    let user_api = api
        .raw(
            api.client
                .get(api.url(&with_version(&cluster_path("s", "rg", "b"), CLUSTER_API)))
                .bearer_auth(b.token().unwrap().value),
        )
        .await;
    assert_eq!(user_api.status, StatusCode::UNAUTHORIZED);

    // b's own token works; registering b again rotates its key and the old one stops working
    let poll_with = |identity: &Identity| api.raw(api.client.get(&poll).bearer_auth(identity.token().unwrap().value));
    assert_eq!(poll_with(&b).await.status, StatusCode::OK);
    let rotated = registered(&api, "b", dir.path()).await;
    assert_eq!(poll_with(&b).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(poll_with(&rotated).await.status, StatusCode::OK);
}

on_both_backends!(an_agent_sees_and_writes_only_its_own_cluster, isolation_case);
async fn isolation_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let a = RunningAgent::start(registered(&api, "a", dir.path()).await).await;
    let b_identity = registered(&api, "b", dir.path()).await;
    let b = RunningAgent::start(b_identity.clone()).await;
    api.put_config(&cluster_path("s", "rg", "a"), "only-a", config_body(&url))
        .await;
    api.put_config(&cluster_path("s", "rg", "b"), "only-b", config_body(&url))
        .await;
    for (cluster, name) in [("a", "only-a"), ("b", "only-b")] {
        let path = with_version(&config_path(&cluster_path("s", "rg", cluster), name), FLUX_API);
        until(&api, &path, "applied by its own agent", |p| {
            p["provisioningState"] == "Succeeded"
        })
        .await;
    }
    assert!(a.file("only-a", "fluxconfig.yaml").exists() && !a.file("only-b", "fluxconfig.yaml").exists());
    assert!(b.file("only-b", "fluxconfig.yaml").exists() && !b.file("only-a", "fluxconfig.yaml").exists());
    let desired = ControlPlane::new(b_identity.clone())
        .unwrap()
        .desired_state(None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        desired
            .configurations
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["only-b"]
    );
    // b reporting about a's configuration name changes nothing of a's
    let report = json!({"configurations": [{"name": "only-a", "generation": 1, "outcome": "Failed",
                                            "complianceState": "Non-Compliant", "message": "forged"}]});
    let answer = api
        .raw(
            api.client
                .post(format!("{}/agent/v1/status", api.server.base))
                .bearer_auth(b_identity.token().unwrap().value)
                .json(&report),
        )
        .await;
    assert_eq!(answer.body["results"][0]["result"], "Unknown");
    let a_config = api
        .get(&with_version(
            &config_path(&cluster_path("s", "rg", "a"), "only-a"),
            FLUX_API,
        ))
        .await;
    assert_eq!(a_config.body["properties"]["provisioningState"], "Succeeded");
    a.stop().await;
    b.stop().await;
}

on_both_backends!(a_write_wakes_the_waiting_poll_at_once, wake_case);
async fn wake_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    let client = ControlPlane::new(identity).unwrap();
    let first = client.desired_state(None, Duration::ZERO).await.unwrap();

    // an idle poll waits, then answers the same revision
    let started = Instant::now();
    let idle = client
        .desired_state(Some(first.revision), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(idle.revision, first.revision);
    assert!(started.elapsed() >= Duration::from_millis(900), "the poll waited");

    let waiting = tokio::spawn(async move {
        let started = Instant::now();
        let state = client
            .desired_state(Some(first.revision), Duration::from_secs(20))
            .await
            .unwrap();
        (state, started)
    });
    wait_for_poll(&api.server).await;
    let written = Instant::now();
    api.put_config(&cluster_path("s", "rg", "c1"), "cfg", git_config_body())
        .await;
    let (state, _) = waiting.await.unwrap();
    assert!(
        written.elapsed() < Duration::from_secs(1),
        "woken in {:?}",
        written.elapsed()
    );
    assert!(state.revision > first.revision);
    assert_eq!(state.configurations[0].name, "cfg");
    assert_eq!(state.configurations[0].generation, 1);
}

on_both_backends!(
    an_agent_holding_the_current_revision_is_told_so_instead_of_sent_it_again,
    unchanged_case
);
async fn unchanged_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    api.put_config(&cluster_path("s", "rg", "c1"), "cfg", git_config_body())
        .await;
    let token = identity.token().unwrap().value;
    let client = ControlPlane::new(identity).unwrap();
    let poll = |query: &str, held: Option<String>| {
        let mut request = api
            .client
            .get(format!("{}/agent/v1/desired-state?{query}", api.server.base))
            .bearer_auth(&token);
        if let Some(held) = held {
            request = request.header("if-none-match", held);
        }
        api.raw(request)
    };

    // a full answer is tagged with its revision
    let full = poll("wait=0", None).await;
    assert_eq!(full.status, StatusCode::OK);
    let revision = full.body["revision"].as_i64().unwrap();
    let tag = format!("\"{revision}\"");
    assert_eq!(full.header("etag"), Some(tag.as_str()));

    // holding it: told so at once without `after`, and when an idle wait ends with it
    let at_once = poll("wait=0", Some(tag.clone())).await;
    assert_eq!(
        (at_once.status, at_once.header("etag"), &at_once.body),
        (StatusCode::NOT_MODIFIED, Some(tag.as_str()), &Value::Null)
    );
    let started = Instant::now();
    let idle = poll(&format!("after={revision}&wait=1"), Some(tag.clone())).await;
    assert_eq!((idle.status, &idle.body), (StatusCode::NOT_MODIFIED, &Value::Null));
    assert!(started.elapsed() >= Duration::from_millis(900), "the poll waited");

    // holding another revision: the whole desired state
    let other = poll("wait=0", Some(format!("\"{}\"", revision - 1))).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body["configurations"][0]["name"], "cfg");

    // the agent's client: unchanged while nothing moved, the new desired state once a write moved it
    assert!(matches!(
        client.poll(Some(revision), Duration::from_secs(1)).await.unwrap(),
        Polled::Unchanged
    ));
    let waiting = tokio::spawn(async move { client.poll(Some(revision), Duration::from_secs(20)).await });
    wait_for_poll(&api.server).await;
    api.put_config(&cluster_path("s", "rg", "c1"), "second", git_config_body())
        .await;
    let Polled::Changed(state) = waiting.await.unwrap().unwrap() else {
        panic!("a write moved the revision: the poll answers the new desired state");
    };
    assert!(state.revision > revision);
    let names: Vec<_> = state.configurations.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["cfg", "second"]);
}

on_both_backends!(a_server_shutting_down_answers_its_held_polls_and_stops, shutdown_case);
async fn shutdown_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    let client = ControlPlane::new(identity).unwrap();
    let first = client.desired_state(None, Duration::ZERO).await.unwrap();
    let waiting = tokio::spawn(async move {
        client
            .desired_state(Some(first.revision), Duration::from_secs(60))
            .await
    });
    wait_for_poll(&api.server).await;
    // a keep-alive connection with nothing in flight does not hold the shutdown up either
    let idle = api.get("/healthz").await;
    assert_eq!(idle.status, StatusCode::OK);

    let stopping = Instant::now();
    let Api { server, .. } = api;
    server.stop().await;
    let answered = waiting.await.unwrap().expect("the held poll is answered");
    assert_eq!(answered.revision, first.revision);
    assert!(
        stopping.elapsed() < Duration::from_secs(30),
        "stopped after {:?}: the poll's 60 s wait held the shutdown",
        stopping.elapsed()
    );
}

/// Waits until a poll is waiting on the server.
async fn wait_for_poll(server: &TestServer) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.state.notifier.waiting_clusters() == 0 {
        assert!(Instant::now() < deadline, "no poll started waiting");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_one_replica_wakes_a_poll_on_another() {
    let Some(api) = Api::start(Backend::Postgres).await else {
        return;
    };
    let replica = api.server.replica().await;
    let dir = tempfile::tempdir().unwrap();
    let mut identity = registered(&api, "c1", dir.path()).await;
    identity.server = replica.base.clone();
    let client = ControlPlane::new(identity).unwrap();
    let first = client.desired_state(None, Duration::ZERO).await.unwrap();
    let waiting = tokio::spawn(async move {
        client
            .desired_state(Some(first.revision), Duration::from_secs(20))
            .await
    });
    wait_for_poll(&replica).await;
    let written = Instant::now();
    // the write goes to the first replica; the poll waits on the second
    api.put_config(&cluster_path("s", "rg", "c1"), "cfg", git_config_body())
        .await;
    let state = waiting.await.unwrap().unwrap();
    assert!(
        written.elapsed() < Duration::from_secs(1),
        "woken across replicas in {:?}",
        written.elapsed()
    );
    assert_eq!(state.configurations.len(), 1);
}

on_both_backends!(the_agent_recovers_when_the_server_restarts, restart_case);
async fn restart_case(backend: Backend) {
    let Some(mut api) = Api::start(backend).await else {
        return;
    };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "c1");
    api.put_config(&cluster, "before", config_body(&url)).await;
    let before = with_version(&config_path(&cluster, "before"), FLUX_API);
    until(&api, &before, "applied before the restart", |p| {
        p["provisioningState"] == "Succeeded"
    })
    .await;

    api.server.restart().await;
    api.put_config(&cluster, "after", config_body(&url)).await;
    let after = with_version(&config_path(&cluster, "after"), FLUX_API);
    until(&api, &after, "applied after the restart", |p| {
        p["provisioningState"] == "Succeeded" && p["complianceState"] == "Compliant"
    })
    .await;
    assert!(agent.file("after", "fluxconfig.yaml").exists());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_agents_poll_is_answered_while_its_heartbeat_waits_behind_a_lock() {
    use sqlx::Connection as _;
    // a heartbeat every 2 s
    let Some(server) = TestServer::start_with(Backend::Postgres, |c| c.offline_after = Duration::from_secs(8)).await
    else {
        return;
    };
    let url = server.database.url.clone();
    let api = Api::serving(server);
    let dir = tempfile::tempdir().unwrap();
    let client = ControlPlane::new(registered(&api, "c1", dir.path()).await).unwrap();
    let cluster = with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API);
    client.desired_state(None, Duration::ZERO).await.unwrap();
    let first = api.get(&cluster).await.body["properties"].clone();
    assert_eq!(
        first["connectivityStatus"], "Connected",
        "the first poll's heartbeat is written before its answer"
    );
    tokio::time::sleep(Duration::from_millis(2500)).await;

    // what a fleet write or a batch of reports does to the cluster's row for as long as its transaction lasts
    let mut holder = sqlx::PgConnection::connect(&url).await.unwrap();
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("SELECT id FROM clusters WHERE name = 'c1' FOR UPDATE")
        .fetch_one(&mut *lock)
        .await
        .unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), client.desired_state(None, Duration::ZERO)).await;
    assert!(
        matches!(answered, Ok(Ok(_))),
        "a poll whose heartbeat is due is answered without waiting for it to be written: {answered:?}"
    );
    assert_eq!(
        api.get(&cluster).await.body["properties"]["lastConnectivityTime"],
        first["lastConnectivityTime"],
        "the heartbeat waits for the lock"
    );
    lock.rollback().await.unwrap();
    until(&api, &cluster, "the heartbeat written once the lock is gone", |p| {
        p["lastConnectivityTime"] != first["lastConnectivityTime"]
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refused_by_a_busy_server_reads_when_to_come_back() {
    let Some(server) = TestServer::start_with(Backend::Sqlite, |c| c.max_connections = 3).await else {
        return;
    };
    let api = Api::serving(server);
    let dir = tempfile::tempdir().unwrap();
    let client = ControlPlane::new(registered(&api, "c1", dir.path()).await).unwrap();
    // every place taken by a request: the agent's connection is refused by the server's own 503
    let _held = hold_connections(api.server.address, &api.token, 3).await;
    let refused = client.desired_state(None, Duration::ZERO).await.unwrap_err();
    assert!(
        matches!(&refused, ClientError::Status { status, .. } if *status == StatusCode::SERVICE_UNAVAILABLE),
        "{refused:?}"
    );
    assert_eq!(
        refused.retry_after(),
        Some(Duration::from_secs(1)),
        "the server's Retry-After, as the agent reads it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_clusters_status_is_not_shown_as_fresh() {
    let Some(server) = TestServer::start_with(Backend::Sqlite, |c| c.offline_after = Duration::from_secs(1)).await
    else {
        return;
    };
    let api = Api::serving(server);
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    until(
        &api,
        &with_version(&cluster, CLUSTER_API),
        "the agent's first poll",
        |p| p["connectivityStatus"] == "Connected",
    )
    .await;
    let before = api.put_config(&cluster, "cfg", config_body(&url)).await;
    assert_eq!(
        before.body["properties"]["statusFreshness"], "Stale",
        "no report on this generation yet"
    );
    until(&api, &path, "a fresh Compliant", |p| {
        p["complianceState"] == "Compliant" && p["statusFreshness"] == "Fresh"
    })
    .await;
    agent.stop().await;
    let offline = until(&api, &path, "Offline", |p| p["statusFreshness"] == "Offline").await;
    assert_eq!(
        offline["properties"]["complianceState"], "Compliant",
        "the last report is kept, marked as not fresh"
    );
    let cluster_state = api.get(&with_version(&cluster, CLUSTER_API)).await;
    assert_eq!(cluster_state.body["properties"]["connectivityStatus"], "Offline");
}

on_both_backends!(
    files_deleted_or_edited_by_hand_are_restored_and_recorded_in_the_history,
    self_repair_case
);
async fn self_repair_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "demo"), FLUX_API);
    assert_eq!(
        api.put_config(&cluster, "demo", config_body(&url)).await.status,
        StatusCode::CREATED
    );
    until(&api, &path, "Compliant", |p| p["complianceState"] == "Compliant").await;

    // by hand: one kustomization's file deleted, the source's URL edited
    let kustomization = agent.file("demo", "kustomization-apps.yaml");
    let source = agent.file("demo", "source.yaml");
    let written_source = std::fs::read_to_string(&source).unwrap();
    std::fs::remove_file(&kustomization).unwrap();
    std::fs::write(
        &source,
        written_source.replace(&url, "http://127.0.0.1:9/elsewhere.git"),
    )
    .unwrap();

    // written back within the sync interval (1 s), each shown as restored on its status...
    let repaired = until(&api, &path, "both objects marked restored", |p| {
        let restored = |kind: &str, name: &str| {
            p["statuses"].as_array().into_iter().flatten().any(|s| {
                s["kind"] == kind
                    && s["name"] == name
                    && s["statusConditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Restored")
            })
        };
        restored("Kustomization", "demo-apps") && restored("GitRepository", "demo")
    })
    .await;
    assert_eq!(repaired["properties"]["complianceState"], "Compliant");
    assert!(kustomization.exists());
    assert_eq!(std::fs::read_to_string(&source).unwrap(), written_source);
    let deleted = repaired["properties"]["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "demo-apps")
        .unwrap()["statusConditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Restored")
        .unwrap()
        .clone();
    assert_eq!(deleted["reason"], "Deleted");

    // ...and in the configuration's history
    let history = api
        .get(&format!(
            "{}/history?api-version=2026-01-01",
            config_path(&cluster, "demo")
        ))
        .await;
    let restored: Vec<&str> = history.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["event"] == "Restored")
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        restored
            .iter()
            .any(|m| m.starts_with("restored Kustomization flux-system/demo-apps, deleted in the cluster (noticed at ")),
        "{restored:?}"
    );
    assert!(
        restored
            .iter()
            .any(|m| m.starts_with("restored GitRepository flux-system/demo, changed in the cluster")),
        "{restored:?}"
    );
    agent.stop().await;
}

/// The dir target's honesty, through the real server: a semver range as Flux writes it picks the tag Flux would, an
/// overlay missing a file is Non-Compliant with the file and the reference named, and what depends on it waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_overlay_is_reported_by_file_and_reference_and_semver_ranges_read_as_flux_reads_them() {
    let Some(api) = Api::start(Backend::Sqlite).await else {
        return;
    };
    let repository = crate::common::git::Repository::new(&[
        ("infra/ns.yaml", MANIFEST),
        ("apps/base/kustomization.yaml", "resources:\n- app.yaml\n"),
        ("apps/base/app.yaml", MANIFEST),
        ("apps/overlays/prod/kustomization.yaml", "resources:\n- ../../base\n"),
        ("tools/tool.yaml", MANIFEST),
    ]);
    repository.tag("v1.0.0");
    repository.commit(
        &[(
            "apps/overlays/prod/kustomization.yaml",
            "resources:\n- ../../base\n- ../base/missing.yaml\n",
        )],
        "break the overlay",
    );
    repository.tag("v1.4.0");
    let broken = repository.head();
    repository.commit(&[("NEXT", "2")], "next major");
    repository.tag("v2.0.0");
    let git = crate::common::git::FileServer::start(repository.served_root()).await;
    let url = format!("{}/repo.git", git.base);
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "demo"), FLUX_API);
    let body = |range: &str| {
        json!({"properties": {
            "namespace": "flux-system",
            "gitRepository": {"url": url, "repositoryRef": {"semver": range}, "syncIntervalInSeconds": 1},
            "kustomizations": {
                "infra": {"path": "./infra"},
                "apps": {"path": "./apps/overlays/prod", "dependsOn": ["infra"]},
                "tools": {"path": "./tools", "dependsOn": ["apps"]}
            }
        }})
    };

    let refused = api.put_config(&cluster, "demo", body("latest")).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert!(
        refused
            .body
            .to_string()
            .contains("properties.gitRepository.repositoryRef.semver"),
        "{}",
        refused.body
    );

    let created = api.put_config(&cluster, "demo", body(">= 1.2, < 2.0")).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let reported = until(&api, &path, "Non-Compliant at v1.4.0", |p| {
        p["complianceState"] == "Non-Compliant" && p["sourceSyncedCommitId"] == format!("v1.4.0@sha1:{broken}")
    })
    .await;
    let properties = &reported["properties"];
    let message = properties["errorMessage"].as_str().unwrap();
    assert!(
        message.contains(
            "kustomization 'apps': apps/overlays/prod/kustomization.yaml: resource '../base/missing.yaml' does not exist"
        ),
        "{message}"
    );
    let status = |name: &str| {
        properties["statuses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no status {name}: {properties}"))
    };
    assert_eq!(status("demo-infra")["complianceState"], "Compliant");
    assert_eq!(status("demo-apps")["complianceState"], "Non-Compliant");
    let tools = status("demo-tools");
    assert_eq!(tools["complianceState"], "Non-Compliant");
    assert_eq!(tools["statusConditions"][0]["reason"], "DependencyNotReady");
    assert!(
        tools["statusConditions"][0]["message"]
            .as_str()
            .unwrap()
            .contains("dependency 'flux-system/demo-apps' is not ready"),
        "{tools}"
    );

    // the range moved to the unbroken release: everything is compliant
    let patched = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"gitRepository": {"repositoryRef": {"semver": "~1.0"}}}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::ACCEPTED, "{patched:?}");
    until(&api, &path, "Compliant at v1.0.0", |p| {
        p["complianceState"] == "Compliant"
            && p["sourceSyncedCommitId"]
                .as_str()
                .is_some_and(|id| id.starts_with("v1.0.0@sha1:"))
    })
    .await;
    agent.stop().await;
}

/// A target whose cluster never answers, as a kube target's while its API server is down.
struct Unanswering;

#[async_trait::async_trait]
impl Target for Unanswering {
    async fn inventory(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        anyhow::bail!("connection refused")
    }
    async fn apply(&self, _: &DesiredConfiguration, _: &Credentials) -> anyhow::Result<()> {
        anyhow::bail!("connection refused")
    }
    async fn credentials(&self, _: &DesiredConfiguration) -> anyhow::Result<Credentials> {
        anyhow::bail!("connection refused")
    }
    async fn drift(&self, _: &DesiredConfiguration, _: &Credentials) -> anyhow::Result<Vec<Drifted>> {
        anyhow::bail!("connection refused")
    }
    async fn remove(&self, _: &str) -> anyhow::Result<()> {
        anyhow::bail!("connection refused")
    }
    async fn observe(&self, _: &DesiredConfiguration) -> Observation {
        Observation::only(ComplianceState::Unknown, Some("connection refused".into()))
    }
    async fn cluster_facts(&self) -> ClusterFacts {
        ClusterFacts::default()
    }
    async fn reachable(&self) -> anyhow::Result<()> {
        anyhow::bail!("connection refused")
    }
}

on_both_backends!(
    an_agent_whose_cluster_does_not_answer_keeps_its_heartbeat_and_reports_its_configurations_unknown,
    unanswering_case
);
async fn unanswering_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    let cluster = cluster_path("s", "rg", "c1");
    let created = api.put_config(&cluster, "cfg", git_config_body()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    // it starts, though its cluster does not answer (it used to exit here)
    let agent = Agent::new(
        ControlPlane::new(identity).unwrap(),
        Box::new(Unanswering),
        Options {
            poll_wait: Duration::from_secs(2),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(agent.run(async {
        let _ = stopped.await;
    }));
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let reported = until(&api, &path, "the configuration reported Unknown", |p| {
        p["complianceState"] == "Unknown"
    })
    .await;
    let message = reported["properties"]["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("cannot read its cluster"), "{reported}");
    let cluster_answer = api.get(&with_version(&cluster, CLUSTER_API)).await;
    assert_eq!(
        cluster_answer.body["properties"]["connectivityStatus"], "Connected",
        "every poll is a heartbeat: {cluster_answer:?}"
    );
    let _ = stop.send(());
    running.await.unwrap().unwrap();
}

/// How many requests on routes containing `route` the server has answered, from its metrics.
async fn requests_to(api: &Api, route: &str) -> f64 {
    let metrics = api.raw(api.client.get(api.url("/metrics"))).await;
    metrics
        .body
        .as_str()
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("fluxplane_http_requests_total{") && l.contains(route))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

on_both_backends!(
    checks_between_polls_cost_the_control_plane_no_request,
    quiet_checks_case
);
async fn quiet_checks_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "demo"), FLUX_API);
    api.put_config(&cluster, "demo", config_body(&url)).await;
    until(&api, &path, "Compliant", |p| p["complianceState"] == "Compliant").await;
    // the source is checked every second (syncIntervalInSeconds: 1) and the files are re-read for drift, while
    // one poll at a time stays open for 5 s (RunningAgent's poll wait): 4 s of checks take at most one new poll
    // (and a check that finds all as it was reports nothing)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (polls, reports) = (
        requests_to(&api, "desired-state").await,
        requests_to(&api, "/agent/v1/status").await,
    );
    tokio::time::sleep(Duration::from_secs(4)).await;
    let polls = requests_to(&api, "desired-state").await - polls;
    let reports = requests_to(&api, "/agent/v1/status").await - reports;
    assert!(polls <= 1.0, "{polls} polls in 4 s");
    assert_eq!(reports, 0.0, "nothing changed, nothing reported");
    let removed = agent.file("demo", "kustomization-infra.yaml");
    std::fs::remove_file(&removed).unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(removed.exists(), "the checks ran meanwhile");
    // the polls that ended meanwhile with nothing new were answered without the desired state
    assert!(
        requests_to(&api, "desired-state\",status=\"304").await >= 1.0,
        "the agent names the revision it holds"
    );
    agent.stop().await;
}
