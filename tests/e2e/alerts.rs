//! End-to-end: alerts out. A receiver the test runs itself (a real HTTP server on port 0) gets the messages of
//! alert rules: on a compliance change, a rollout halt and a cluster falling silent with real agents; exactly once
//! across a `kill -9` of the real binary and with two replicas on PostgreSQL; within its rate limit and the rules'
//! minimum interval; signed as the README says; and the receiver's URL and key appear in no read and no log.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use fluxplane_api::alerts::message::{DELIVERY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature};
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::{Backend, TestDatabase, TestServer};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::agents::{RunningAgent, registered, served_repository};
use crate::common::process::{Process, run};
use crate::common::*;

const FLEET: &str = "/subscriptions/s/providers/Fluxplane.Fleet";
const FLEET_API: &str = "2026-01-01";
/// The signing key of the tests' webhooks, and the secret part of their URLs: neither may appear in a read or log.
const KEY: &str = "k3y-0f-the-test-RECEIVER-0123456789abcdef";
const URL_SECRET: &str = "T0123/B4567/url-secret-SENTINEL";

fn fleet(kind: &str, name: &str) -> String {
    with_version(&format!("{FLEET}/{kind}/{name}"), FLEET_API)
}

/// One message a test receiver got.
#[derive(Debug, Clone)]
struct Received {
    at: Instant,
    status: u16,
    headers: HeaderMap,
    raw: Vec<u8>,
    body: Value,
}

/// A webhook receiver on port 0 that answers what it is told to and keeps every message.
struct TestReceiver {
    url: String,
    answer: Arc<AtomicU16>,
    received: Arc<Mutex<Vec<Received>>>,
}

impl TestReceiver {
    async fn start() -> Self {
        Self::start_on("127.0.0.1:0").await
    }

    async fn start_on(address: &str) -> Self {
        let answer = Arc::new(AtomicU16::new(200));
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let app = axum::Router::new().route(
            "/{*path}",
            axum::routing::post({
                let (answer, received) = (answer.clone(), received.clone());
                move |headers: HeaderMap, raw: axum::body::Bytes| {
                    let (answer, received) = (answer.clone(), received.clone());
                    async move {
                        let status = answer.load(Ordering::SeqCst);
                        received.lock().unwrap().push(Received {
                            at: Instant::now(),
                            status,
                            headers,
                            body: serde_json::from_slice(&raw).unwrap_or(Value::Null),
                            raw: raw.to_vec(),
                        });
                        StatusCode::from_u16(status).unwrap()
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind(address).await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{address}/hooks/{URL_SECRET}"),
            answer,
            received,
        }
    }

    fn answer(&self, status: u16) {
        self.answer.store(status, Ordering::SeqCst);
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// The messages it acknowledged (2xx).
    fn acknowledged(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Waits until `done` holds of the acknowledged messages (or fails after `within`).
    async fn until(&self, what: &str, within: Duration, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let deadline = Instant::now() + within;
        loop {
            let acknowledged = self.acknowledged();
            if done(&acknowledged) {
                return acknowledged;
            }
            assert!(
                Instant::now() < deadline,
                "waiting for {what}; received: {:#?}",
                self.received()
                    .iter()
                    .map(|r| (&r.status, &r.body["type"], &r.body["subject"]))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// Checks a message's signature as the README tells receivers to.
fn assert_signed(message: &Received) {
    let timestamp: i64 = message.headers[TIMESTAMP_HEADER].to_str().unwrap().parse().unwrap();
    assert!(
        (chrono::Utc::now().timestamp() - timestamp).abs() < 300,
        "a fresh timestamp"
    );
    assert_eq!(
        message.headers[SIGNATURE_HEADER].to_str().unwrap(),
        signature(KEY.as_bytes(), timestamp, &message.raw),
        "{:?}",
        message.body
    );
    assert_eq!(
        message.headers[DELIVERY_HEADER].to_str().unwrap(),
        message.body["id"].as_str().unwrap()
    );
}

fn webhook(url: &str, rate: u32) -> Value {
    json!({"properties": {"receiverType": "Webhook", "url": url, "signingKey": KEY, "rateLimitPerMinute": rate}})
}

fn rule(events: Value, receivers: &[&str], interval: u32) -> Value {
    let ids: Vec<String> = receivers
        .iter()
        .map(|r| format!("{FLEET}/alertReceivers/{r}"))
        .collect();
    json!({"properties": {"events": events, "receiverIds": ids, "severity": "Error",
                          "minimumIntervalInSeconds": interval}})
}

async fn put(api: &Api, path: &str, body: Value) -> Answer {
    let answer = api.call(Method::PUT, path, Some(body)).await;
    assert!(answer.status.is_success(), "PUT {path}: {answer:?}");
    answer
}

/// An API on a server adjusted by `adjust`.
async fn api_with(backend: Backend, adjust: impl FnOnce(&mut fluxplane_api::config::ServeConfig)) -> Option<Api> {
    let server = TestServer::start_with(backend, adjust).await?;
    Some(Api::serving(server))
}

/// `count` configurations on the cluster `c1`, which has no agent: each fails as a change its agent did not pick
/// up within `--pending-ttl`, a `ChangeExpired` event (and so does the Flux extension the first one brings).
async fn expiring(api: &Api, first: usize, count: usize) {
    let cluster = cluster_path("s", "rg", "c1");
    for i in first..first + count {
        let answer = api
            .put_config(&cluster, &format!("cfg-{i:03}"), git_config_body())
            .await;
        assert!(answer.status.is_success(), "{answer:?}");
    }
}

on_both_backends!(
    alerts_reach_a_signed_webhook_on_compliance_changes_a_rollout_halt_and_silence,
    real_agents_case
);
async fn real_agents_case(backend: Backend) {
    // agents poll every 5 s and are heard at each poll: silent past 8 s is Offline
    let Some(api) = api_with(backend, |c| c.offline_after = Duration::from_secs(8)).await else {
        return;
    };
    let receiver = TestReceiver::start().await;
    put(&api, &fleet("alertReceivers", "ops"), webhook(&receiver.url, 600)).await;
    let events = json!([
        "BecameNonCompliant",
        "BecameCompliant",
        "ProvisioningFailed",
        "RolloutHalted",
        "RolloutRolledBack",
        "RolloutCompleted",
        "ClusterOffline",
        "ClusterReconnected"
    ]);
    put(&api, &fleet("alertRules", "everything"), rule(events, &["ops"], 0)).await;

    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let a = RunningAgent::start(registered(&api, "a", dir.path()).await).await;
    let b = RunningAgent::start(registered(&api, "b", dir.path()).await).await;
    let body = |path: &str| {
        json!({"properties": {
            "selector": {"matchLabels": {"env": "test"}},
            "configurationName": "baseline",
            "configurationTemplate": {
                "namespace": "flux-system",
                "gitRepository": {"url": url, "repositoryRef": {"branch": "main"}, "syncIntervalInSeconds": 1},
                "kustomizations": {"k": {"path": "[parameters('path')]"}}
            },
            "parameters": {"path": path},
            "rollout": {"batchSize": 1, "waitForCompliance": true, "maxFailures": 0}
        }})
    };
    put(&api, &fleet("policyAssignments", "baseline"), body("./infra")).await;
    let of = |messages: &[Received], kind: &str| {
        messages
            .iter()
            .filter(|m| m.body["type"] == kind)
            .cloned()
            .collect::<Vec<_>>()
    };
    let completed = receiver
        .until("the first rollout's completion", Duration::from_secs(60), |m| {
            !of(m, "RolloutCompleted").is_empty()
        })
        .await;
    assert!(of(&completed, "BecameNonCompliant").is_empty(), "{completed:?}");

    // a broken change: a turns Non-Compliant, and the rollout halts there
    put(&api, &fleet("policyAssignments", "baseline"), body("./missing")).await;
    let broken = receiver
        .until("a Non-Compliant and the halt", Duration::from_secs(60), |m| {
            !of(m, "BecameNonCompliant").is_empty() && !of(m, "RolloutHalted").is_empty()
        })
        .await;
    let non_compliant = &of(&broken, "BecameNonCompliant")[0].body;
    assert_eq!(non_compliant["severity"], "Error");
    assert_eq!(non_compliant["configurationName"], "baseline");
    assert!(
        non_compliant["subject"]
            .as_str()
            .unwrap()
            .ends_with("/connectedClusters/a/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/baseline"),
        "{non_compliant}"
    );
    assert_eq!(non_compliant["details"]["complianceState"], "Non-Compliant");
    assert!(
        non_compliant["details"]["message"]
            .as_str()
            .unwrap()
            .contains("missing"),
        "{non_compliant}"
    );
    assert!(
        non_compliant["policyAssignmentId"]
            .as_str()
            .unwrap()
            .ends_with("/policyAssignments/baseline")
    );
    assert_eq!(non_compliant["rule"]["name"], "everything");
    let halted = &of(&broken, "RolloutHalted")[0].body;
    assert!(
        halted["subject"]
            .as_str()
            .unwrap()
            .ends_with("/policyAssignments/baseline")
    );
    assert!(
        halted["details"]["message"].as_str().unwrap().contains("maxFailures 0"),
        "{halted}"
    );

    // fixed: a is Compliant again
    put(&api, &fleet("policyAssignments", "baseline"), body("./apps")).await;
    receiver
        .until("a Compliant again", Duration::from_secs(60), |m| {
            !of(m, "BecameCompliant").is_empty()
        })
        .await;

    // b's agent falls silent, then comes back
    let target = b.stop_keeping_target().await;
    let silent = receiver
        .until("b Offline", Duration::from_secs(30), |m| {
            !of(m, "ClusterOffline").is_empty()
        })
        .await;
    let offline = &of(&silent, "ClusterOffline")[0].body;
    assert!(
        offline["subject"].as_str().unwrap().ends_with("/connectedClusters/b"),
        "{offline}"
    );
    let b = RunningAgent::start_in(
        fluxplane_agent::identity::Identity::load(&dir.path().join("b.json")).unwrap(),
        target,
    )
    .await;
    receiver
        .until("b back", Duration::from_secs(30), |m| {
            !of(m, "ClusterReconnected").is_empty()
        })
        .await;

    // every message signed, each delivery once
    let all = receiver.acknowledged();
    for message in &all {
        assert_signed(message);
    }
    let ids: BTreeSet<&str> = all.iter().map(|m| m.body["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "no delivery twice");

    // the delivery log and the receiver's state say the same; no read holds the URL or the key
    let deliveries = api
        .get(&with_version(
            &format!("{FLEET}/alertReceivers/ops/deliveries"),
            FLEET_API,
        ))
        .await;
    assert_eq!(deliveries.status, StatusCode::OK);
    let logged = deliveries.body["value"].as_array().unwrap();
    assert!(logged.len() >= all.len(), "{deliveries:?}");
    assert!(logged.iter().all(|d| d["state"] == "Delivered" && d["attempts"] == 1));
    let read = api.get(&fleet("alertReceivers", "ops")).await;
    assert_eq!(
        read.body["properties"]["urlHost"],
        receiver.url.split('/').nth(2).unwrap()
    );
    assert_eq!(read.body["properties"]["hasSigningKey"], true);
    assert!(read.body["properties"]["deliveryState"]["lastDeliveredAt"].is_string());
    assert_eq!(read.body["properties"]["deliveryState"]["backlog"], 0);
    let listed = api
        .get(&with_version(&format!("{FLEET}/alertReceivers"), FLEET_API))
        .await;
    for answer in [&read, &listed, &deliveries] {
        let text = answer.body.to_string();
        assert!(!text.contains(URL_SECRET) && !text.contains(KEY), "{text}");
    }
    a.stop().await;
    b.stop().await;
}

on_both_backends!(
    bad_receivers_and_rules_are_refused_with_what_is_wrong_and_change_nothing,
    refusals_case
);
async fn refusals_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let receiver = TestReceiver::start().await;
    let created = put(&api, &fleet("alertReceivers", "ops"), webhook(&receiver.url, 60)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let etag = created.header("etag").unwrap().to_owned();
    for (body, target) in [
        (
            json!({"properties": {"receiverType": "Webhook", "url": "ftp://x/y", "signingKey": KEY}}),
            "properties.url",
        ),
        (
            json!({"properties": {"receiverType": "Webhook", "url": receiver.url, "signingKey": "short"}}),
            "properties.signingKey",
        ),
        (
            json!({"properties": {"receiverType": "Slack", "url": receiver.url, "signingKey": KEY}}),
            "properties.signingKey",
        ),
        (
            json!({"properties": {"receiverType": "Webhook", "rateLimitPerMinute": 0}}),
            "properties.rateLimitPerMinute",
        ),
        (
            json!({"properties": {"receiverType": "Pager", "url": receiver.url}}),
            "properties.receiverType",
        ),
        (
            json!({"properties": {"receiverType": "Webhook", "url": receiver.url, "password": "x"}}),
            "properties",
        ),
        (json!({"properties": {"receiverType": "Slack"}}), "properties.url"),
    ] {
        let answer = api
            .call(Method::PUT, &fleet("alertReceivers", "ops"), Some(body.clone()))
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {answer:?}");
        assert!(
            answer.body["error"]["target"]
                .as_str()
                .unwrap_or_default()
                .starts_with(target),
            "{body}: {answer:?}"
        );
        let text = answer.body.to_string();
        assert!(
            !text.contains(KEY) && !text.contains(URL_SECRET),
            "an error echoes no secret: {text}"
        );
    }
    let unchanged = api.get(&fleet("alertReceivers", "ops")).await;
    assert_eq!(
        unchanged.header("etag"),
        Some(etag.as_str()),
        "refused writes change nothing"
    );

    for (body, target) in [
        (
            json!({"properties": {"events": ["Nonsense"], "receiverIds": [format!("{FLEET}/alertReceivers/ops")]}}),
            "properties.events",
        ),
        (
            json!({"properties": {"events": ["ClusterOffline"], "receiverIds": []}}),
            "properties.receiverIds",
        ),
        (
            json!({"properties": {"events": ["ClusterOffline"], "receiverIds": [format!("{FLEET}/alertReceivers/none")]}}),
            "properties.receiverIds[0]",
        ),
        (
            json!({"properties": {"events": ["ClusterOffline"], "receiverIds": [format!("{FLEET}/alertReceivers/ops")],
                               "clusterGroupId": format!("{FLEET}/clusterGroups/none")}}),
            "properties.clusterGroupId",
        ),
        (
            json!({"properties": {"events": ["ClusterOffline"], "receiverIds": [format!("{FLEET}/alertReceivers/ops")],
                               "clusterSelector": {"matchExpressions": [{"key": "env", "operator": "Exists", "values": ["x"]}]}}}),
            "properties.clusterSelector",
        ),
        (
            json!({"properties": {"events": ["ClusterOffline"], "receiverIds": [format!("{FLEET}/alertReceivers/ops")],
                               "severity": "Apocalyptic"}}),
            "properties.severity",
        ),
    ] {
        let answer = api
            .call(Method::PUT, &fleet("alertRules", "r"), Some(body.clone()))
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {answer:?}");
        assert!(
            answer.body["error"]["target"]
                .as_str()
                .unwrap_or_default()
                .starts_with(target),
            "{body}: {answer:?}"
        );
    }
    assert_eq!(api.get(&fleet("alertRules", "r")).await.status, StatusCode::NOT_FOUND);

    // who may: an Owner writes receivers, a Contributor rules and tests, a Reader reads
    let contributor = api
        .server
        .token("carol", &[(fluxplane_api::auth::Role::Contributor, "/subscriptions/s")]);
    let reader = api
        .server
        .token("rita", &[(fluxplane_api::auth::Role::Reader, "/subscriptions/s")]);
    let as_contributor = api
        .call_as(
            &contributor,
            Method::PUT,
            &fleet("alertReceivers", "ops"),
            Some(webhook(&receiver.url, 60)),
        )
        .await;
    assert_eq!(as_contributor.status, StatusCode::FORBIDDEN);
    let rule_body = rule(json!(["ClusterOffline"]), &["ops"], 0);
    let as_reader = api
        .call_as(&reader, Method::PUT, &fleet("alertRules", "r"), Some(rule_body.clone()))
        .await;
    assert_eq!(as_reader.status, StatusCode::FORBIDDEN);
    let written = api
        .call_as(&contributor, Method::PUT, &fleet("alertRules", "r"), Some(rule_body))
        .await;
    assert_eq!(written.status, StatusCode::CREATED, "{written:?}");
    assert_eq!(written.body["properties"]["enabled"], true, "defaults answered");
    let test = |token: String| {
        let api = &api;
        async move {
            api.call_as(
                &token,
                Method::POST,
                &with_version(&format!("{FLEET}/alertReceivers/ops/test"), FLEET_API),
                None,
            )
            .await
        }
    };
    assert_eq!(test(reader.clone()).await.status, StatusCode::FORBIDDEN);
    let tested = test(contributor.clone()).await;
    assert_eq!(tested.status, StatusCode::OK, "{tested:?}");
    assert_eq!(tested.body["delivery"]["state"], "Delivered");
    assert_eq!(tested.body["delivery"]["lastStatusCode"], 200);
    receiver.answer(500);
    let failing = test(contributor).await;
    assert_eq!(failing.body["delivery"]["state"], "Failed");
    assert_eq!(failing.body["delivery"]["lastStatusCode"], 500);
    let read = api
        .call_as(&reader, Method::GET, &fleet("alertReceivers", "ops"), None)
        .await;
    assert_eq!(
        read.body["properties"]["deliveryState"]["lastFailureStatusCode"], 500,
        "{read:?}"
    );
    assert_signed(&receiver.received()[0]);

    // a receiver rules send to stays
    let deleting = api.call(Method::DELETE, &fleet("alertReceivers", "ops"), None).await;
    assert_eq!(deleting.status, StatusCode::CONFLICT);
    assert_eq!(
        api.call(Method::DELETE, &fleet("alertRules", "r"), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call(Method::DELETE, &fleet("alertReceivers", "ops"), None)
            .await
            .status,
        StatusCode::OK
    );
}

on_both_backends!(a_receivers_rate_limit_and_a_rules_minimum_interval_hold, limits_case);
async fn limits_case(backend: Backend) {
    let Some(api) = api_with(backend, |c| c.pending_ttl = Duration::from_secs(1)).await else {
        return;
    };
    api.put_cluster("s", "rg", "c1").await;
    // 60 a minute: ten at once, then one a second
    let limited = TestReceiver::start().await;
    put(&api, &fleet("alertReceivers", "limited"), webhook(&limited.url, 60)).await;
    put(
        &api,
        &fleet("alertRules", "expiries"),
        rule(json!(["ChangeExpired"]), &["limited"], 0),
    )
    .await;
    expiring(&api, 0, 15).await;
    let all = limited
        .until("15 expiries", Duration::from_secs(40), |m| m.len() >= 15)
        .await;
    let first = all[0].at;
    for (i, message) in all.iter().enumerate().skip(10) {
        let earliest = Duration::from_secs((i - 9) as u64).saturating_sub(Duration::from_millis(300));
        assert!(
            message.at.duration_since(first) >= earliest,
            "message {i} came {:?} after the first",
            message.at.duration_since(first)
        );
    }
    let subjects: BTreeSet<&str> = all.iter().map(|m| m.body["subject"].as_str().unwrap()).collect();
    assert_eq!(subjects.len(), 15, "each expiry once");
    put(
        &api,
        &fleet("alertRules", "expiries"),
        json!({"properties": {"events": ["ChangeExpired"],
        "receiverIds": [format!("{FLEET}/alertReceivers/limited")], "enabled": false}}),
    )
    .await;

    // a subject that keeps failing: one message, then one for what the next 8 s held back
    let flapping = TestReceiver::start().await;
    put(&api, &fleet("alertReceivers", "flapping"), webhook(&flapping.url, 600)).await;
    put(
        &api,
        &fleet("alertRules", "calm"),
        rule(json!(["ChangeExpired"]), &["flapping"], 8),
    )
    .await;
    let cluster = cluster_path("s", "rg", "c1");
    let failures = 3;
    for _ in 0..failures {
        api.put_config(&cluster, "flappy", git_config_body()).await;
        let path = with_version(&config_path(&cluster, "flappy"), FLUX_API);
        let deadline = Instant::now() + Duration::from_secs(20);
        while api.get(&path).await.body["properties"]["provisioningState"] != "Failed" {
            assert!(Instant::now() < deadline, "the change did not expire");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let messages = flapping
        .until("the held-back expiries", Duration::from_secs(30), |m| m.len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let messages = {
        let now = flapping.acknowledged();
        assert_eq!(now.len(), messages.len(), "nothing more");
        now
    };
    assert_eq!(
        messages.len(),
        2,
        "{:?}",
        messages.iter().map(|m| &m.body).collect::<Vec<_>>()
    );
    assert!(messages[0].body.get("digest").is_none());
    assert_eq!(messages[1].body["digest"]["events"], failures - 1);
    assert!(
        messages[1].at.duration_since(messages[0].at) >= Duration::from_millis(7700),
        "the interval held"
    );
}

on_both_backends!(two_replicas_deliver_each_alert_once, replicas_case);
async fn replicas_case(backend: Backend) {
    if backend == Backend::Sqlite {
        // the embedded store serves one process: replicas share a PostgreSQL
        return;
    }
    let Some(api) = api_with(backend, |c| c.pending_ttl = Duration::from_secs(1)).await else {
        return;
    };
    let replica = api.server.replica().await;
    let receiver = TestReceiver::start().await;
    put(&api, &fleet("alertReceivers", "ops"), webhook(&receiver.url, 600_000)).await;
    put(
        &api,
        &fleet("alertRules", "expiries"),
        rule(json!(["ChangeExpired"]), &["ops"], 0),
    )
    .await;
    api.put_cluster("s", "rg", "c1").await;
    const EVENTS: usize = 80 + 1;
    expiring(&api, 0, EVENTS - 1).await;
    let all = receiver
        .until("every expiry", Duration::from_secs(60), |m| m.len() >= EVENTS)
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let all_now = receiver.received();
    assert_eq!(all_now.len(), all.len(), "nothing more arrived");
    let mut per_subject: BTreeMap<&str, usize> = BTreeMap::new();
    for message in &all_now {
        *per_subject
            .entry(message.body["subject"].as_str().unwrap())
            .or_default() += 1;
    }
    assert_eq!(per_subject.len(), EVENTS);
    assert!(per_subject.values().all(|n| *n == 1), "{per_subject:?}");
    drop(replica);
}

/// The binary's arguments for the alerts' kill -9 test.
fn serve_args(database: &TestDatabase, data: &std::path::Path, keys: bool) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--pending-ttl",
        "1s",
        "--sweep-interval",
        "200ms",
        "--alert-retry-delay",
        "200ms",
        "--data-dir",
        data.to_str().unwrap(),
    ]
    .map(str::to_owned)
    .to_vec();
    if keys {
        args.extend(["--database-url".to_owned(), database.url.clone()]);
        for (flag, file) in [
            ("--jwt-secret-file", "jwt-secret"),
            ("--secrets-key-file", "secrets-key"),
        ] {
            args.extend([flag.to_owned(), data.join(file).display().to_string()]);
        }
    }
    args
}

on_both_backends!(
    alerts_are_delivered_exactly_once_across_a_kill_9_and_no_secret_reaches_the_log,
    kill_case
);
async fn kill_case(backend: Backend) {
    let Some(database) = TestDatabase::create(backend).await else {
        return;
    };
    let dir = database.dir.path().to_path_buf();
    let data = dir.join("data");
    // the embedded store makes its keys; a shared PostgreSQL needs them given
    let shared = backend == Backend::Postgres;
    if shared {
        std::fs::create_dir_all(&data).unwrap();
        for file in ["jwt-secret", "secrets-key"] {
            assert!(run(&["keygen", data.join(file).to_str().unwrap()]).status.success());
        }
    }
    let args = serve_args(&database, &data, shared);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let start = |dir: &std::path::Path| {
        let mut server = Process::start_logging(&args, dir, "debug");
        let address = server.log_event("fluxplane listening")["address"]
            .as_str()
            .unwrap()
            .to_owned();
        (server, format!("http://{address}"))
    };
    let (mut server, base) = start(&dir);
    let token = run(&[
        "token",
        "--subject",
        "ops",
        "--role",
        "Owner",
        "--scope",
        "/",
        "--jwt-secret-file",
        data.join("jwt-secret").to_str().unwrap(),
    ]);
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();
    let client = http_client();
    let call = |base: String, method: Method, path: String, body: Option<Value>| {
        let (client, token) = (client.clone(), token.clone());
        async move {
            let mut request = client.request(method, format!("{base}{path}")).bearer_auth(&token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            let response = request.send().await.unwrap();
            let status = response.status();
            let text = response.text().await.unwrap();
            assert!(status.is_success(), "{path}: {status} {text}");
            text
        }
    };

    // the receiver is down: the first expiries wait in the outbox, retried
    let receiver = TestReceiver::start().await;
    receiver.answer(503);
    call(
        base.clone(),
        Method::PUT,
        fleet("alertReceivers", "ops"),
        Some(webhook(&receiver.url, 600_000)),
    )
    .await;
    call(
        base.clone(),
        Method::PUT,
        fleet("alertRules", "expiries"),
        Some(rule(json!(["ChangeExpired"]), &["ops"], 0)),
    )
    .await;
    call(
        base.clone(),
        Method::PUT,
        with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API),
        Some(cluster_body()),
    )
    .await;
    let configure = |base: String, range: std::ops::Range<usize>| {
        let call = &call;
        async move {
            for i in range {
                let path = with_version(
                    &config_path(&cluster_path("s", "rg", "c1"), &format!("cfg-{i:03}")),
                    FLUX_API,
                );
                call(base.clone(), Method::PUT, path, Some(git_config_body())).await;
            }
        }
    };
    configure(base.clone(), 0..15).await;
    // fifteen configurations and the Flux extension the first brought wait in the outbox, while the receiver is
    // tried again and again: one message per backoff, not the whole backlog each time
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let receiver_state: Value =
            serde_json::from_str(&call(base.clone(), Method::GET, fleet("alertReceivers", "ops"), None).await).unwrap();
        let backlog = receiver_state["properties"]["deliveryState"]["backlog"].clone();
        if backlog == 16 && receiver.received().len() >= 3 {
            assert_eq!(
                receiver_state["properties"]["deliveryState"]["lastFailureStatusCode"],
                503
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the first expiries did not wait in the outbox: {receiver_state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tried: BTreeSet<String> = receiver
        .received()
        .iter()
        .map(|m| m.body["subject"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        tried.len() < 16,
        "a receiver that is down is not sent its whole backlog: {tried:?}"
    );
    // more changes, which expire while the server is gone: nothing happened to them yet
    configure(base.clone(), 15..30).await;
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    let mut log = server.drain_log();

    receiver.answer(200);
    let (mut server, _) = start(&dir);
    let acknowledged = receiver
        .until(
            "all 31 expiries delivered after the restart",
            Duration::from_secs(60),
            |m| {
                m.iter()
                    .map(|m| m.body["subject"].as_str().unwrap())
                    .collect::<BTreeSet<_>>()
                    .len()
                    == 31
            },
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acknowledged_now = receiver.acknowledged();
    assert_eq!(acknowledged_now.len(), acknowledged.len(), "nothing more came");
    let mut per_subject: BTreeMap<String, usize> = BTreeMap::new();
    for message in &acknowledged_now {
        assert_signed(message);
        *per_subject
            .entry(message.body["subject"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(per_subject.len(), 31, "thirty configurations and the Flux extension");
    assert!(
        per_subject.values().all(|n| *n == 1),
        "each acknowledged once: {per_subject:?}"
    );
    server.terminate();
    log.extend(server.drain_log());
    let log = log.join("\n");
    assert!(log.contains("alert delivered"), "the log says what was sent");
    assert!(!log.contains(URL_SECRET), "a receiver's URL reached the log");
    assert!(!log.contains(KEY), "a signing key reached the log");
    assert!(!log.contains(&token), "a token reached the log");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_ui_shows_each_receivers_delivery_state() {
    use fantoccini::Locator;
    let Some(browser) = fluxplane_api::testing::Browser::start().await else {
        return;
    };
    let client = &browser.client;
    let api = Api::start(Backend::Sqlite).await.expect("the embedded store");
    let (healthy, failing) = (TestReceiver::start().await, TestReceiver::start().await);
    failing.answer(500);
    for (name, receiver) in [("healthy", &healthy), ("failing", &failing)] {
        put(&api, &fleet("alertReceivers", name), webhook(&receiver.url, 60)).await;
        let tested = api
            .call(
                Method::POST,
                &with_version(&format!("{FLEET}/alertReceivers/{name}/test"), FLEET_API),
                None,
            )
            .await;
        assert_eq!(tested.status, StatusCode::OK);
    }
    client.goto(&format!("{}/", api.server.base)).await.unwrap();
    let wait_for = |what: &'static str, script: &'static str| async move {
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.execute(script, vec![]).await.unwrap() != Value::Bool(true) {
            assert!(Instant::now() < deadline, "waiting for {what}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    wait_for(
        "the sign-in form",
        "return !!document.querySelector(\"[data-testid='signin']\")",
    )
    .await;
    let form = client.find(Locator::Css("[data-testid='signin']")).await.unwrap();
    form.find(Locator::Css("input[type='password']"))
        .await
        .unwrap()
        .send_keys(&api.token)
        .await
        .unwrap();
    form.find(Locator::Css("input:not([type='password'])"))
        .await
        .unwrap()
        .send_keys("s")
        .await
        .unwrap();
    form.find(Locator::Css("button[type='submit']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        "the receivers' states",
        "const row = (n) => document.querySelector(`[data-testid='receiver-${n}'] [data-testid='receiver-health']`); \
         return !!row('healthy') && row('healthy').textContent.includes('Delivering') \
         && row('failing').textContent.includes('Failing')",
    )
    .await;
    let row = client
        .find(Locator::Css("[data-testid='receiver-failing']"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(row.contains("HTTP 500") && row.contains("127.0.0.1"), "{row}");
    assert!(!row.contains(URL_SECRET), "{row}");
    client
        .find(Locator::Css("[data-testid='receiver-failing'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        "the failing receiver's delivery log",
        "const p = document.querySelector(\"[data-testid='drilldown']\"); \
         return !!p && p.getClientRects().length > 0 && p.textContent.includes('Test') && p.textContent.includes('Failed')",
    )
    .await;
    let png = client.screenshot().await.unwrap();
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("alert-receivers.png"), png).unwrap();
    browser.client.clone().close().await.unwrap();
}
