//! The kube target against a fake Kubernetes API server that keeps objects in memory and verifies every request:
//! writes must be server-side applies by our field manager; reads and deletes must name kinds we own.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fluxplane_agent_protocol::agent::DesiredConfiguration;
use serde_json::{Value, json};

use super::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::deploy_key::DeployKey;
use crate::secrets::SecretSet;

type Key = (String, String, String, String); // group/version, plural, namespace, name

#[derive(Default)]
struct FakeApi {
    objects: Mutex<BTreeMap<Key, Value>>,
    /// Requests the fake refused, with why: a test fails if there is any.
    violations: Mutex<Vec<String>>,
    applies: Mutex<usize>,
}

fn not_found() -> Response {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": "not found", "reason": "NotFound", "code": 404});
    (StatusCode::NOT_FOUND, axum::Json(status)).into_response()
}

fn matches(object: &Value, selector: Option<&String>) -> bool {
    selector.is_none_or(|selector| {
        selector.split(',').all(|term| match term.split_once('=') {
            Some((k, v)) => object["metadata"]["labels"][k] == v,
            None => false,
        })
    })
}

/// An object of a named API group: `/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}`.
async fn object(
    State(fake): State<Arc<FakeApi>>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = (format!("{group}/{version}"), plural, namespace, name);
    handle(&fake, key, query, method, headers, body)
}

/// An object of the core group: `/api/v1/namespaces/{namespace}/{plural}/{name}`.
async fn core_object(
    State(fake): State<Arc<FakeApi>>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle(
        &fake,
        ("v1".to_owned(), plural, namespace, name),
        query,
        method,
        headers,
        body,
    )
}

fn handle(
    fake: &FakeApi,
    key: Key,
    query: BTreeMap<String, String>,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (_, plural, namespace, name) = key.clone();
    let mut objects = fake.objects.lock().unwrap();
    match method.as_str() {
        "GET" => objects
            .get(&key)
            .map_or_else(not_found, |o| axum::Json(o.clone()).into_response()),
        "DELETE" => match objects.remove(&key) {
            Some(_) => axum::Json(json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}))
                .into_response(),
            None => not_found(),
        },
        "PATCH" => {
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let mut problems = Vec::new();
            if content_type != "application/apply-patch+yaml" {
                problems.push(format!("{plural}/{name}: not a server-side apply ({content_type})"));
            }
            if query.get("fieldManager").map(String::as_str) != Some(FIELD_MANAGER)
                || query.get("force").map(String::as_str) != Some("true")
            {
                problems.push(format!("{plural}/{name}: wrong field manager or not forced: {query:?}"));
            }
            let Ok(mut applied) = serde_json::from_slice::<Value>(&body) else {
                problems.push(format!("{plural}/{name}: body is not JSON"));
                fake.violations.lock().unwrap().extend(problems);
                return StatusCode::BAD_REQUEST.into_response();
            };
            if applied["metadata"]["name"] != name.as_str() || applied["metadata"]["namespace"] != namespace.as_str() {
                problems.push(format!("{plural}/{name}: body names another object"));
            }
            if !problems.is_empty() {
                fake.violations.lock().unwrap().extend(problems);
                return StatusCode::BAD_REQUEST.into_response();
            }
            // an apply replaces what we own and keeps the status the controllers wrote
            if let Some(status) = objects.get(&key).map(|o| o["status"].clone()).filter(|s| !s.is_null()) {
                applied["status"] = status;
            }
            *fake.applies.lock().unwrap() += 1;
            objects.insert(key, applied.clone());
            axum::Json(applied).into_response()
        }
        other => {
            fake.violations
                .lock()
                .unwrap()
                .push(format!("unexpected {other} on {plural}/{name}"));
            StatusCode::METHOD_NOT_ALLOWED.into_response()
        }
    }
}

async fn list(
    State(fake): State<Arc<FakeApi>>,
    Path((group, version, plural)): Path<(String, String, String)>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    list_of(&fake, format!("{group}/{version}"), plural, query)
}

async fn core_list(
    State(fake): State<Arc<FakeApi>>,
    Path(plural): Path<String>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Response {
    list_of(&fake, "v1".to_owned(), plural, query)
}

fn list_of(fake: &FakeApi, api_version: String, plural: String, query: BTreeMap<String, String>) -> Response {
    let objects = fake.objects.lock().unwrap();
    let items: Vec<Value> = objects
        .iter()
        .filter(|((v, p, _, _), o)| *v == api_version && *p == plural && matches(o, query.get("labelSelector")))
        .map(|(_, o)| o.clone())
        .collect();
    axum::Json(json!({"apiVersion": api_version, "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}))
        .into_response()
}

async fn start() -> (KubeTarget, Arc<FakeApi>) {
    let fake = Arc::new(FakeApi::default());
    let app = Router::new()
        .route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}",
            get(object).patch(object).delete(object),
        )
        .route("/apis/{group}/{version}/{plural}", get(list))
        .route(
            "/api/v1/namespaces/{namespace}/{plural}/{name}",
            get(core_object).patch(core_object).delete(core_object),
        )
        .route(
            "/version",
            get(|| async {
                axum::Json(json!({"major": "1", "minor": "33", "gitVersion": "v1.33.4",
            "gitCommit": "", "gitTreeState": "", "buildDate": "", "goVersion": "", "compiler": "", "platform": ""}))
            }),
        )
        .route(
            "/api/v1/nodes",
            get(|| async {
                axum::Json(
                    json!({"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadataList",
            "metadata": {"resourceVersion": "1"}, "items": [
                {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": "node-1"}},
                {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata", "metadata": {"name": "node-2"}}]}),
                )
            }),
        )
        .route("/api/v1/{plural}", get(core_list))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let config = kube::Config::new(url.parse().unwrap());
    (KubeTarget::new(kube::Client::try_from(config).unwrap()), fake)
}

fn configuration(generation: i64, kustomizations: Value) -> DesiredConfiguration {
    DesiredConfiguration {
        name: "cfg".into(),
        generation,
        deleting: false,
        spec: serde_json::from_value(json!({
            "namespace": "flux-system", "sourceKind": "GitRepository", "suspend": false,
            "gitRepository": {"url": "https://github.com/org/fleet", "repositoryRef": {"branch": "main"},
                              "syncIntervalInSeconds": 600, "timeoutInSeconds": 600},
            "kustomizations": kustomizations,
        }))
        .unwrap(),
        ..Default::default()
    }
}

fn names(fake: &FakeApi) -> Vec<String> {
    let mut names: Vec<String> = fake
        .objects
        .lock()
        .unwrap()
        .keys()
        .map(|(_, plural, _, name)| format!("{plural}/{name}"))
        .collect();
    names.sort();
    names
}

fn set_status(fake: &FakeApi, plural: &str, name: &str, status: Value) {
    let mut objects = fake.objects.lock().unwrap();
    let object = objects
        .iter_mut()
        .find(|((_, p, _, n), _)| p == plural && n == name)
        .map(|(_, o)| o)
        .expect("the object exists");
    object["status"] = status;
}

fn ready(status: &str, message: &str) -> Value {
    json!({"type": "Ready", "status": status, "reason": "Test", "message": message,
           "lastTransitionTime": "2026-11-22T00:00:00Z"})
}

#[tokio::test]
async fn applying_writes_every_object_by_server_side_apply_and_prunes_what_is_gone() {
    let (target, fake) = start().await;
    let two = json!({"infra": {"path": "./infra"}, "apps": {"path": "./apps", "dependsOn": ["infra"]}});
    target
        .apply(&configuration(1, two), &Credentials::default())
        .await
        .unwrap();
    assert!(
        fake.violations.lock().unwrap().is_empty(),
        "{:?}",
        fake.violations.lock().unwrap()
    );
    assert_eq!(
        names(&fake),
        [
            "fluxconfigs/cfg",
            "gitrepositories/cfg",
            "kustomizations/cfg-apps",
            "kustomizations/cfg-infra"
        ]
    );
    assert_eq!(*fake.applies.lock().unwrap(), 4);
    assert_eq!(
        target.inventory().await.unwrap(),
        BTreeMap::from([("cfg".to_owned(), 1)])
    );

    target
        .apply(
            &configuration(2, json!({"infra": {"path": "./infra"}})),
            &Credentials::default(),
        )
        .await
        .unwrap();
    assert_eq!(
        names(&fake),
        ["fluxconfigs/cfg", "gitrepositories/cfg", "kustomizations/cfg-infra"]
    );
    assert_eq!(
        target.inventory().await.unwrap(),
        BTreeMap::from([("cfg".to_owned(), 2)])
    );

    target.remove("cfg").await.unwrap();
    assert!(names(&fake).is_empty());
    target.remove("cfg").await.unwrap();
    assert!(
        fake.violations.lock().unwrap().is_empty(),
        "{:?}",
        fake.violations.lock().unwrap()
    );
}

#[tokio::test]
async fn compliance_follows_the_flux_objects_ready_conditions() {
    let (target, fake) = start().await;
    let config = configuration(1, json!({"infra": {"path": "./infra"}}));
    target.apply(&config, &Credentials::default()).await.unwrap();
    let observed = target.observe(&config).await;
    assert_eq!(observed.compliance, ComplianceState::Pending, "nothing reconciled yet");

    set_status(
        &fake,
        "gitrepositories",
        "cfg",
        json!({
            "conditions": [ready("True", "stored artifact")],
            "artifact": {"revision": "main@sha1:0ba6f0d3", "lastUpdateTime": "2026-11-22T00:00:00Z"}
        }),
    );
    set_status(
        &fake,
        "kustomizations",
        "cfg-infra",
        json!({"conditions": [ready("False", "kustomize build failed")]}),
    );
    let observed = target.observe(&config).await;
    assert_eq!(observed.compliance, ComplianceState::NonCompliant);
    assert!(observed.message.as_deref().unwrap().contains("kustomize build failed"));
    assert_eq!(observed.source_synced_commit_id.as_deref(), Some("main@sha1:0ba6f0d3"));
    assert_eq!(observed.statuses.len(), 2);
    assert_eq!(
        observed.statuses[1].compliance_state,
        Some(ComplianceState::NonCompliant)
    );

    set_status(
        &fake,
        "kustomizations",
        "cfg-infra",
        json!({"conditions": [ready("True", "applied")]}),
    );
    assert_eq!(target.observe(&config).await.compliance, ComplianceState::Compliant);
    // applying again keeps the status the controllers wrote
    target.apply(&config, &Credentials::default()).await.unwrap();
    assert_eq!(target.observe(&config).await.compliance, ComplianceState::Compliant);

    let mut suspended = configuration(2, json!({"infra": {"path": "./infra"}}));
    suspended.spec.suspend = Some(true);
    target.apply(&suspended, &Credentials::default()).await.unwrap();
    assert_eq!(target.observe(&suspended).await.compliance, ComplianceState::Suspended);
}

#[test]
fn ready_conditions_map_to_compliance() {
    let with = |conditions: Value| json!({"status": {"conditions": conditions}});
    assert_eq!(
        compliance_of(&with(json!([ready("True", "")]))).0,
        ComplianceState::Compliant
    );
    assert_eq!(
        compliance_of(&with(json!([ready("False", "")]))).0,
        ComplianceState::NonCompliant
    );
    assert_eq!(
        compliance_of(&with(json!([ready("Unknown", "reconciling")]))).0,
        ComplianceState::Pending
    );
    assert_eq!(compliance_of(&json!({})).0, ComplianceState::Pending);
    assert_eq!(
        compliance_of(&json!({"spec": {"suspend": true}})).0,
        ComplianceState::Suspended
    );
}

#[tokio::test]
async fn the_heartbeat_carries_the_clusters_version_and_node_count() {
    let (target, _) = start().await;
    let facts = target.cluster_facts().await;
    assert_eq!(facts.kubernetes_version.as_deref(), Some("v1.33.4"));
    assert_eq!(facts.total_node_count, Some(2));
}

#[tokio::test]
async fn a_configurations_secrets_become_its_auth_secret_and_leave_with_them() {
    let (target, fake) = start().await;
    let mut config = configuration(1, json!({"infra": {"path": "./infra"}}));
    config.secrets_version = Some(1);
    let secrets = SecretSet {
        version: 1,
        settings: json!({"configurationProtectedSettings": {"sshPrivateKey": "a2V5"}})
            .as_object()
            .unwrap()
            .clone(),
    };
    let credentials = Credentials {
        secrets: Some(secrets),
        deploy_key: None,
    };
    target.apply(&config, &credentials).await.unwrap();
    assert!(
        fake.violations.lock().unwrap().is_empty(),
        "{:?}",
        fake.violations.lock().unwrap()
    );
    assert!(
        names(&fake).contains(&"secrets/cfg-auth".to_owned()),
        "{:?}",
        names(&fake)
    );
    let stored = fake.objects.lock().unwrap()[&(
        "v1".to_owned(),
        "secrets".to_owned(),
        "flux-system".to_owned(),
        "cfg-auth".to_owned(),
    )]
        .clone();
    assert_eq!(
        stored["data"]["identity"], "a2V5",
        "Flux reads the SSH key as `identity`"
    );
    let source = fake.objects.lock().unwrap()[&(
        SOURCE_API.to_owned(),
        "gitrepositories".to_owned(),
        "flux-system".to_owned(),
        "cfg".to_owned(),
    )]
        .clone();
    assert_eq!(source["spec"]["secretRef"]["name"], "cfg-auth");
    assert_eq!(target.credentials(&config).await.unwrap(), credentials);

    // the next generation without secrets prunes the secret; removing the configuration removes everything
    config.generation = 2;
    config.secrets_version = None;
    target.apply(&config, &Credentials::default()).await.unwrap();
    assert!(!names(&fake).contains(&"secrets/cfg-auth".to_owned()));
    assert_eq!(target.credentials(&config).await.unwrap(), Credentials::default());
    target.remove("cfg").await.unwrap();
    assert!(names(&fake).is_empty());
    assert!(
        fake.violations.lock().unwrap().is_empty(),
        "{:?}",
        fake.violations.lock().unwrap()
    );
}

#[tokio::test]
async fn a_deploy_key_lives_in_the_auth_secret_and_its_public_half_is_observed() {
    let (target, fake) = start().await;
    let mut config = configuration(1, json!({"infra": {"path": "./infra"}}));
    config.spec.git_repository.as_mut().unwrap().url = Some("ssh://git@github.com/org/fleet".into());
    let key = DeployKey::generate("fluxplane:c/cfg");
    let credentials = Credentials {
        secrets: None,
        deploy_key: Some(key.clone()),
    };
    target.apply(&config, &credentials).await.unwrap();
    assert!(
        fake.violations.lock().unwrap().is_empty(),
        "{:?}",
        fake.violations.lock().unwrap()
    );
    let stored = fake.objects.lock().unwrap()[&(
        "v1".to_owned(),
        "secrets".to_owned(),
        "flux-system".to_owned(),
        "cfg-auth".to_owned(),
    )]
        .clone();
    let decoded = |k: &str| String::from_utf8(STANDARD.decode(stored["data"][k].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(
        decoded("identity"),
        key.private_openssh(),
        "Flux reads the SSH key as `identity`"
    );
    assert_eq!(decoded("identity.pub"), key.public_openssh());
    let source = fake.objects.lock().unwrap()[&(
        SOURCE_API.to_owned(),
        "gitrepositories".to_owned(),
        "flux-system".to_owned(),
        "cfg".to_owned(),
    )]
        .clone();
    assert_eq!(source["spec"]["secretRef"]["name"], "cfg-auth");
    // what a restarted agent reads back: the same key, not a new one
    assert_eq!(target.credentials(&config).await.unwrap(), credentials);
    let observed = target.observe(&config).await;
    assert_eq!(observed.repository_public_key, Some(key.public_openssh()));

    // an https source has no public key to show, even with a key in its secret
    let mut https = config.clone();
    https.spec.git_repository.as_mut().unwrap().url = Some("https://github.com/org/fleet".into());
    assert_eq!(target.observe(&https).await.repository_public_key, None);
}
