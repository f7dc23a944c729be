//! The kube target against a fake Kubernetes API server that keeps objects in memory and verifies every request:
//! writes must be server-side applies by our field manager; reads and deletes must name kinds we own; and, as a real
//! API server would, it refuses (403) any request the agent's RBAC in `deploy/agent/agent.yaml` does not allow
//! (`rbac.rs`), a binding to a role the agent may not bind, and (404) an object in a namespace that does not exist.
//! It can be stopped and started again on the same address, as an API server that goes away and comes back.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fluxplane_agent_protocol::agent::{
    ApplyOutcome, DesiredConfiguration, DesiredExtension, DesiredState, StatusLevel,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::*;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

use crate::client::ControlPlane;
use crate::deploy_key::DeployKey;
use crate::identity::Identity;
use crate::run::{Agent, Options};
use crate::secrets::SecretSet;
use fluxplane_agent_protocol::agent::Drift;

mod rbac;

type Key = (String, String, String, String); // group/version, plural, namespace ("" when cluster-wide), name

#[derive(Default)]
struct FakeApi {
    objects: Mutex<BTreeMap<Key, Value>>,
    /// Requests the fake refused, with why: a test fails if there is any.
    violations: Mutex<Vec<String>>,
    /// Every object applied, as `plural/name`, in order.
    applied: Mutex<Vec<String>>,
    /// Every request received, as the API server's authorizer sees it.
    requests: Mutex<Vec<rbac::Access>>,
    /// Every request received, as `METHOD path`.
    paths: Mutex<Vec<String>>,
}

impl FakeApi {
    fn insert(&self, api_version: &str, plural: &str, namespace: &str, name: &str, object: Value) {
        let key = (
            api_version.to_owned(),
            plural.to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        self.objects.lock().unwrap().insert(key, object);
    }

    fn get(&self, api_version: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = (
            api_version.to_owned(),
            plural.to_owned(),
            namespace.to_owned(),
            name.to_owned(),
        );
        self.objects.lock().unwrap().get(&key).cloned()
    }

    fn assert_no_violation(&self) {
        let violations = self.violations.lock().unwrap().clone();
        assert!(violations.is_empty(), "{violations:#?}");
    }
}

/// What a real API server does before anything else: authorise the request with the agent's RBAC.
async fn authorize(
    State(fake): State<Arc<FakeApi>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let content_type = request
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let uri = request.uri();
    let access = rbac::Access::of(
        request.method().as_str(),
        uri.path(),
        uri.query(),
        content_type.as_deref(),
    );
    fake.paths
        .lock()
        .unwrap()
        .push(format!("{} {}", request.method(), uri.path()));
    fake.requests.lock().unwrap().push(access.clone());
    if !rbac::Rbac::of_manifest().allows(&access) {
        fake.violations
            .lock()
            .unwrap()
            .push(format!("forbidden by deploy/agent/agent.yaml: {access:?}"));
        return forbidden(&format!("forbidden: {access:?}"));
    }
    next.run(request).await
}

fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let status = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                        "message": message, "reason": reason, "code": code.as_u16()});
    (code, axum::Json(status)).into_response()
}

fn forbidden(message: &str) -> Response {
    status(StatusCode::FORBIDDEN, "Forbidden", message)
}

fn not_found() -> Response {
    status(StatusCode::NOT_FOUND, "NotFound", "not found")
}

fn matches(object: &Value, selector: Option<&String>) -> bool {
    selector.is_none_or(|selector| {
        selector.split(',').all(|term| match term.split_once('=') {
            Some((k, v)) => object["metadata"]["labels"][k] == v,
            None => false,
        })
    })
}

type ObjectQuery = Query<BTreeMap<String, String>>;

/// An object of a named API group: `/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}`.
async fn object(
    State(fake): State<Arc<FakeApi>>,
    Path((group, version, namespace, plural, name)): Path<(String, String, String, String, String)>,
    Query(query): ObjectQuery,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = (format!("{group}/{version}"), plural, namespace, name);
    handle(&fake, key, query, method, headers, body)
}

/// A cluster-wide object of a named API group: `/apis/{group}/{version}/{plural}/{name}`.
async fn cluster_object(
    State(fake): State<Arc<FakeApi>>,
    Path((group, version, plural, name)): Path<(String, String, String, String)>,
    Query(query): ObjectQuery,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = (format!("{group}/{version}"), plural, String::new(), name);
    handle(&fake, key, query, method, headers, body)
}

/// An object of the core group: `/api/v1/namespaces/{namespace}/{plural}/{name}`.
async fn core_object(
    State(fake): State<Arc<FakeApi>>,
    Path((namespace, plural, name)): Path<(String, String, String)>,
    Query(query): ObjectQuery,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = ("v1".to_owned(), plural, namespace, name);
    handle(&fake, key, query, method, headers, body)
}

/// A cluster-wide object of the core group (a namespace): `/api/v1/{plural}/{name}`.
async fn core_cluster_object(
    State(fake): State<Arc<FakeApi>>,
    Path((plural, name)): Path<(String, String)>,
    Query(query): ObjectQuery,
    method: axum::http::Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let key = ("v1".to_owned(), plural, String::new(), name);
    handle(&fake, key, query, method, headers, body)
}

/// What a real API server refuses in a write before storing it: an object in a namespace that does not exist, and
/// a binding to a role the writer may neither hold nor bind (RBAC's escalation check, which asks for `bind` on the
/// role where the binding grants it).
fn refusal(fake: &FakeApi, objects: &BTreeMap<Key, Value>, key: &Key, body: &Value) -> Option<Response> {
    let (_, plural, namespace, _) = key;
    let namespace_key = (
        "v1".to_owned(),
        "namespaces".to_owned(),
        String::new(),
        namespace.clone(),
    );
    if !namespace.is_empty() && !objects.contains_key(&namespace_key) {
        return Some(status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("namespaces \"{namespace}\" not found"),
        ));
    }
    if plural == "rolebindings" || plural == "clusterrolebindings" {
        let role = body["roleRef"]["name"].as_str().unwrap_or_default();
        let bind = rbac::Access::Resource {
            verbs: vec!["bind".to_owned()],
            group: "rbac.authorization.k8s.io".to_owned(),
            resource: "clusterroles".to_owned(),
            namespace: (!namespace.is_empty()).then(|| namespace.clone()),
            name: Some(role.to_owned()),
        };
        fake.requests.lock().unwrap().push(bind.clone());
        if body["roleRef"]["kind"] != "ClusterRole" || !rbac::Rbac::of_manifest().allows(&bind) {
            let message =
                format!("{plural} is forbidden: attempting to grant RBAC permissions not currently held: {role}");
            fake.violations.lock().unwrap().push(message.clone());
            return Some(forbidden(&message));
        }
    }
    None
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
            let body_namespace = applied["metadata"]["namespace"].as_str().unwrap_or_default();
            if applied["metadata"]["name"] != name.as_str() || body_namespace != namespace {
                problems.push(format!("{plural}/{name}: body names another object"));
            }
            if !problems.is_empty() {
                fake.violations.lock().unwrap().extend(problems);
                return StatusCode::BAD_REQUEST.into_response();
            }
            if let Some(refused) = refusal(fake, &objects, &key, &applied) {
                return refused;
            }
            // an apply replaces what we own and keeps the status the controllers wrote
            if let Some(status) = objects.get(&key).map(|o| o["status"].clone()).filter(|s| !s.is_null()) {
                applied["status"] = status;
            }
            fake.applied.lock().unwrap().push(format!("{plural}/{name}"));
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
    Query(query): ObjectQuery,
) -> Response {
    list_of(&fake, format!("{group}/{version}"), plural, None, query)
}

async fn namespaced_list(
    State(fake): State<Arc<FakeApi>>,
    Path((group, version, namespace, plural)): Path<(String, String, String, String)>,
    Query(query): ObjectQuery,
) -> Response {
    list_of(&fake, format!("{group}/{version}"), plural, Some(namespace), query)
}

async fn core_list(
    State(fake): State<Arc<FakeApi>>,
    Path(plural): Path<String>,
    Query(query): ObjectQuery,
) -> Response {
    list_of(&fake, "v1".to_owned(), plural, None, query)
}

fn list_of(
    fake: &FakeApi,
    api_version: String,
    plural: String,
    namespace: Option<String>,
    query: BTreeMap<String, String>,
) -> Response {
    let objects = fake.objects.lock().unwrap();
    let items: Vec<Value> = objects
        .iter()
        .filter(|((v, p, n, _), o)| {
            *v == api_version
                && *p == plural
                && namespace.as_ref().is_none_or(|namespace| n == namespace)
                && matches(o, query.get("labelSelector"))
        })
        .map(|(_, o)| o.clone())
        .collect();
    axum::Json(json!({"apiVersion": api_version, "kind": "List", "metadata": {"resourceVersion": "1"}, "items": items}))
        .into_response()
}

fn router(fake: Arc<FakeApi>) -> Router {
    Router::new()
        .route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}/{name}",
            get(object).patch(object).delete(object),
        )
        .route(
            "/apis/{group}/{version}/namespaces/{namespace}/{plural}",
            get(namespaced_list),
        )
        .route(
            "/apis/{group}/{version}/{plural}/{name}",
            get(cluster_object).patch(cluster_object).delete(cluster_object),
        )
        .route("/apis/{group}/{version}/{plural}", get(list))
        .route(
            "/api/v1/namespaces/{namespace}/{plural}/{name}",
            get(core_object).patch(core_object).delete(core_object),
        )
        .route(
            "/api/v1/{plural}/{name}",
            get(core_cluster_object)
                .patch(core_cluster_object)
                .delete(core_cluster_object),
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
        .layer(axum::middleware::from_fn_with_state(fake.clone(), authorize))
        .with_state(fake)
}

/// The fake API server's process: stopped (connections closed, the port no longer listened on) and started again
/// on the same address.
struct Server {
    fake: Arc<FakeApi>,
    address: SocketAddr,
    running: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl Server {
    fn serve(fake: Arc<FakeApi>, listener: tokio::net::TcpListener) -> (oneshot::Sender<()>, JoinHandle<()>) {
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, router(fake))
                .with_graceful_shutdown(async move {
                    // a server whose handle is dropped runs for the rest of the test
                    if stopped.await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
                .await
                .unwrap();
        });
        (stop, task)
    }

    async fn stop(&mut self) {
        let (stop, task) = self.running.take().expect("the server runs");
        let _ = stop.send(());
        task.await.unwrap();
    }

    async fn resume(&mut self) {
        assert!(self.running.is_none(), "the server is stopped");
        let listener = tokio::net::TcpListener::bind(self.address).await.unwrap();
        self.running = Some(Self::serve(self.fake.clone(), listener));
    }
}

async fn start_server() -> (KubeTarget, Server) {
    let fake = Arc::new(FakeApi::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let running = Some(Server::serve(fake.clone(), listener));
    let config = kube::Config::new(format!("http://{address}").parse().unwrap());
    let target = KubeTarget::new(kube::Client::try_from(config).unwrap());
    (target, Server { fake, address, running })
}

async fn start() -> (KubeTarget, Arc<FakeApi>) {
    let (target, server) = start_server().await;
    (target, server.fake.clone())
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

/// The kinds no configuration owns: namespaces and the multi-tenancy applier's account and bindings.
const SHARED: [&str; 4] = ["namespaces", "serviceaccounts", "rolebindings", "clusterrolebindings"];

/// The objects of configurations in the fake, as `plural/name`, sorted.
fn names(fake: &FakeApi) -> Vec<String> {
    names_where(fake, |plural| !SHARED.contains(&plural))
}

/// The shared objects in the fake, as `plural/namespace/name` (no namespace for cluster-wide ones), sorted.
fn shared(fake: &FakeApi) -> Vec<String> {
    let mut names: Vec<String> = fake
        .objects
        .lock()
        .unwrap()
        .keys()
        .filter(|(_, plural, _, _)| SHARED.contains(&plural.as_str()))
        .map(|(_, plural, namespace, name)| match namespace.as_str() {
            "" => format!("{plural}/{name}"),
            namespace => format!("{plural}/{namespace}/{name}"),
        })
        .collect();
    names.sort();
    names
}

fn names_where(fake: &FakeApi, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = fake
        .objects
        .lock()
        .unwrap()
        .keys()
        .filter(|(_, plural, _, _)| keep(plural))
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
    let applied: Vec<String> = fake
        .applied
        .lock()
        .unwrap()
        .iter()
        .filter(|a| !SHARED.contains(&a.split('/').next().unwrap()))
        .cloned()
        .collect();
    assert_eq!(
        applied,
        [
            "gitrepositories/cfg",
            "kustomizations/cfg-apps",
            "kustomizations/cfg-infra",
            "fluxconfigs/cfg"
        ],
        "each once, the FluxConfig last"
    );
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

const CLUSTER: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c";

/// An agent with the kube target, its control plane never called (the tests call its steps themselves).
async fn agent_with(target: KubeTarget) -> Agent {
    let identity = Identity::generate("http://127.0.0.1:9", CLUSTER).unwrap().identity;
    Agent::new(
        ControlPlane::new(identity).unwrap(),
        Box::new(target),
        Options::default(),
    )
    .await
    .unwrap()
}

fn desired(
    revision: i64,
    configurations: Vec<DesiredConfiguration>,
    extensions: Vec<DesiredExtension>,
) -> DesiredState {
    DesiredState {
        cluster_id: CLUSTER.into(),
        revision,
        configurations,
        extensions,
    }
}

fn flux_extension(generation: i64, settings: &[(&str, &str)]) -> DesiredExtension {
    DesiredExtension {
        name: "flux".into(),
        generation,
        extension_type: "microsoft.flux".into(),
        auto_upgrade_minor_version: true,
        release_train: "Stable".into(),
        release_namespace: "flux-system".into(),
        configuration_settings: settings
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        ..Default::default()
    }
}

fn in_namespace(name: &str, namespace: &str, scope: &str) -> DesiredConfiguration {
    let mut config = configuration(1, json!({"apps": {"path": "./apps"}}));
    config.name = name.into();
    config.spec.namespace = Some(namespace.into());
    config.spec.scope = serde_json::from_value(json!(scope)).unwrap();
    config
}

fn namespace_object(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

/// Marks `kustomization` (of `flux-system`) ready, having applied what `entries` lists.
fn applied_from_source(fake: &FakeApi, kustomization: &str, entries: &[(&str, &str)]) {
    let mut status = inventory::inventory(entries)["status"].clone();
    status["conditions"] = json!([ready("True", "Applied revision: main@sha1:0ba6f0d3")]);
    set_status(fake, "kustomizations", kustomization, status);
}

/// A Flux object as its controller left it (of the first version of its kind the fake serves).
fn flux_object(kind: &str, namespace: &str, name: &str, spec: Value, status: Value) -> Value {
    let (group, _, _) = inventory::FLUX_KINDS
        .iter()
        .find(|(_, k, _)| *k == kind)
        .expect("a Flux kind");
    let version = if kind == "HelmRelease" { "v2" } else { "v1" };
    json!({"apiVersion": format!("{group}/{version}"), "kind": kind,
           "metadata": {"name": name, "namespace": namespace}, "spec": spec, "status": status})
}

async fn wait_past_backoff() {
    // the first retries come within 250 ms, the next within 500 ms
    tokio::time::sleep(Duration::from_millis(600)).await;
}

#[tokio::test]
async fn an_object_in_a_namespace_that_does_not_exist_is_refused_so_the_agent_creates_it() {
    let (target, fake) = start().await;
    // the fake refuses as a real API server does
    let repositories = resource(SOURCE_API, "GitRepository").unwrap();
    let refused = target
        .namespaced("team-a", &repositories)
        .patch(
            "x",
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(json!({"apiVersion": SOURCE_API, "kind": "GitRepository",
                                 "metadata": {"name": "x", "namespace": "team-a"}})),
        )
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("namespaces \"team-a\" not found"),
        "{refused}"
    );

    let config = in_namespace("cfg", "team-a", "namespace");
    target.apply(&config, &Credentials::default()).await.unwrap();
    fake.assert_no_violation();
    let namespace = fake.get("v1", "namespaces", "", "team-a").expect("created");
    assert_eq!(
        namespace["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "fluxplane"
    );
    assert_eq!(namespace["metadata"]["annotations"][CREATED_FOR_ANNOTATION], "cfg");
    assert!(names(&fake).contains(&"gitrepositories/cfg".to_owned()));

    // deleting the configuration keeps the namespace: it may hold what Flux applied
    target.remove("cfg").await.unwrap();
    assert!(names(&fake).is_empty());
    assert!(fake.get("v1", "namespaces", "", "team-a").is_some());
    fake.assert_no_violation();
}

#[tokio::test]
async fn a_namespace_that_exists_is_used_as_it_is() {
    let (target, fake) = start().await;
    let platforms = namespace_object("flux-system", json!({"owner": "platform"}));
    fake.insert("v1", "namespaces", "", "flux-system", platforms.clone());
    target
        .apply(
            &configuration(1, json!({"infra": {"path": "./infra"}})),
            &Credentials::default(),
        )
        .await
        .unwrap();
    fake.assert_no_violation();
    assert_eq!(fake.get("v1", "namespaces", "", "flux-system"), Some(platforms));
    assert!(
        !fake
            .applied
            .lock()
            .unwrap()
            .iter()
            .any(|a| a.starts_with("namespaces/")),
        "not written to"
    );
}

#[tokio::test]
async fn the_agent_starts_while_the_api_server_is_down_and_catches_up_once_it_answers() {
    let (target, mut server) = start_server().await;
    server.stop().await;
    let mut agent = agent_with(target).await;
    assert!(agent.unreachable().is_some(), "it could not take the inventory");

    let config = configuration(1, json!({"infra": {"path": "./infra"}}));
    let state = desired(1, vec![config.clone()], Vec::new());
    agent.reconcile(&state).await;
    let report = agent.pending_report("cfg").expect("a report while the cluster is down");
    assert_eq!(report.compliance_state, ComplianceState::Unknown);
    assert_eq!(report.outcome, ApplyOutcome::Failed, "nothing is written yet");
    let message = report.message.as_deref().unwrap();
    assert!(message.contains("cannot read its cluster"), "{message}");
    assert!(message.contains("retries"), "{message}");
    assert!(names(&server.fake).is_empty());

    server.resume().await;
    wait_past_backoff().await;
    agent.reconcile(&state).await;
    assert_eq!(agent.unreachable(), None);
    let report = agent.pending_report("cfg").unwrap();
    assert_eq!(report.outcome, ApplyOutcome::Applied);
    assert_eq!(
        report.compliance_state,
        ComplianceState::Pending,
        "written, not reconciled yet"
    );
    assert!(names(&server.fake).contains(&"fluxconfigs/cfg".to_owned()));
    server.fake.assert_no_violation();
}

#[tokio::test]
async fn an_api_server_that_goes_away_mid_run_is_waited_for_and_caught_up_with() {
    let (target, mut server) = start_server().await;
    let mut agent = agent_with(target).await;
    let first = configuration(1, json!({"infra": {"path": "./infra"}}));
    agent.reconcile(&desired(1, vec![first], Vec::new())).await;
    assert_eq!(agent.pending_report("cfg").unwrap().outcome, ApplyOutcome::Applied);

    server.stop().await;
    let second = configuration(2, json!({"infra": {"path": "./infra"}, "apps": {"path": "./apps"}}));
    let state = desired(2, vec![second], Vec::new());
    agent.reconcile(&state).await;
    assert_eq!(agent.pending_report("cfg").unwrap().outcome, ApplyOutcome::Failed);
    assert!(
        agent.unreachable().is_some(),
        "the failed write made it ask the cluster"
    );
    // until the backoff allows another try, the agent does not write: it says why it cannot
    agent.reconcile(&state).await;
    let report = agent.pending_report("cfg").unwrap();
    assert_eq!(report.compliance_state, ComplianceState::Unknown);
    assert!(
        report.message.as_deref().unwrap().contains("cannot read its cluster"),
        "{report:?}"
    );

    server.resume().await;
    wait_past_backoff().await;
    agent.reconcile(&state).await;
    assert_eq!(agent.unreachable(), None);
    assert_eq!(agent.pending_report("cfg").unwrap().outcome, ApplyOutcome::Applied);
    let written = server
        .fake
        .get(FLUXCONFIG_API, "fluxconfigs", "flux-system", "cfg")
        .unwrap();
    assert_eq!(written["metadata"]["annotations"][GENERATION_ANNOTATION], "2");
    assert!(names(&server.fake).contains(&"kustomizations/cfg-apps".to_owned()));
    server.fake.assert_no_violation();
}

#[tokio::test]
async fn helm_releases_and_other_flux_objects_a_kustomization_applied_are_reported_and_count() {
    let (target, fake) = start().await;
    let config = configuration(1, json!({"infra": {"path": "./infra"}}));
    target.apply(&config, &Credentials::default()).await.unwrap();
    set_status(
        &fake,
        "gitrepositories",
        "cfg",
        json!({"conditions": [ready("True", "stored artifact")]}),
    );
    applied_from_source(
        &fake,
        "cfg-infra",
        &[
            ("_apps__Namespace", "v1"),
            ("apps_podinfo_apps_Deployment", "v1"),
            ("flux-system_podinfo_source.toolkit.fluxcd.io_HelmRepository", "v1"),
            ("flux-system_podinfo_helm.toolkit.fluxcd.io_HelmRelease", "v2"),
        ],
    );
    fake.insert(
        "source.toolkit.fluxcd.io/v1",
        "helmrepositories",
        "flux-system",
        "podinfo",
        flux_object(
            "HelmRepository",
            "flux-system",
            "podinfo",
            json!({"url": "https://stefanprodan.github.io/podinfo"}),
            json!({"conditions": [ready("True", "stored artifact")]}),
        ),
    );
    let release = |ready_condition: Value| {
        flux_object(
            "HelmRelease",
            "flux-system",
            "podinfo",
            json!({"chart": {"spec": {"chart": "podinfo",
                   "sourceRef": {"kind": "HelmRepository", "name": "podinfo"}}}}),
            json!({"conditions": [ready_condition],
                   "history": [{"version": 2, "status": "failed"}, {"version": 1, "status": "deployed"}],
                   "helmChart": "flux-system/flux-system-podinfo",
                   "failures": 3, "installFailures": 0, "upgradeFailures": 3}),
        )
    };
    fake.insert(
        "helm.toolkit.fluxcd.io/v2",
        "helmreleases",
        "flux-system",
        "podinfo",
        release(ready(
            "False",
            "Helm upgrade failed: timed out waiting for the condition",
        )),
    );

    let observed = target.observe(&config).await;
    fake.assert_no_violation();
    let kinds: Vec<&str> = observed.statuses.iter().map(|s| s.kind.as_deref().unwrap()).collect();
    assert_eq!(
        kinds,
        ["GitRepository", "Kustomization", "HelmRepository", "HelmRelease"],
        "Flux's kinds only"
    );
    let helm = &observed.statuses[3];
    assert_eq!(helm.compliance_state, Some(ComplianceState::NonCompliant));
    assert_eq!(
        helm.applied_by,
        Some(ObjectReference {
            name: Some("cfg-infra".into()),
            namespace: Some("flux-system".into()),
        })
    );
    let properties = helm.helm_release_properties.as_ref().unwrap();
    assert_eq!(properties.last_revision_applied, Some(1));
    assert_eq!(properties.upgrade_failure_count, Some(3));
    assert_eq!(
        properties.helm_chart_ref.as_ref().unwrap().name.as_deref(),
        Some("flux-system-podinfo")
    );
    assert_eq!(
        helm.status_conditions.as_ref().unwrap()[0].reason.as_deref(),
        Some("Test")
    );
    assert_eq!(
        observed.compliance,
        ComplianceState::NonCompliant,
        "a failing release fails its configuration, though its Kustomization applied"
    );
    let message = observed.message.unwrap();
    assert!(
        message.contains("HelmRelease flux-system/podinfo: Helm upgrade failed"),
        "{message}"
    );

    fake.insert(
        "helm.toolkit.fluxcd.io/v2",
        "helmreleases",
        "flux-system",
        "podinfo",
        release(ready("True", "Helm upgrade succeeded")),
    );
    assert_eq!(target.observe(&config).await.compliance, ComplianceState::Compliant);
}

#[tokio::test]
async fn at_most_fifty_applied_objects_are_read_per_check_and_the_status_says_so() {
    let (target, fake) = start().await;
    let config = configuration(1, json!({"infra": {"path": "./infra"}}));
    target.apply(&config, &Credentials::default()).await.unwrap();
    set_status(
        &fake,
        "gitrepositories",
        "cfg",
        json!({"conditions": [ready("True", "stored artifact")]}),
    );
    let ids: Vec<String> = (0..60)
        .map(|i| format!("flux-system_release-{i}_helm.toolkit.fluxcd.io_HelmRelease"))
        .collect();
    let entries: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "v2")).collect();
    applied_from_source(&fake, "cfg-infra", &entries);
    for i in 0..60 {
        let name = format!("release-{i}");
        fake.insert(
            "helm.toolkit.fluxcd.io/v2",
            "helmreleases",
            "flux-system",
            &name,
            flux_object(
                "HelmRelease",
                "flux-system",
                &name,
                json!({}),
                json!({"conditions": [ready("True", "installed")]}),
            ),
        );
    }
    fake.paths.lock().unwrap().clear();
    let observed = target.observe(&config).await;
    let reads = fake
        .paths
        .lock()
        .unwrap()
        .iter()
        .filter(|p| p.contains("/helmreleases/"))
        .count();
    assert_eq!(reads, MAX_OBJECTS_READ);
    assert_eq!(observed.statuses.len(), 2 + MAX_OBJECTS_READ);
    let message = observed.message.unwrap();
    assert!(
        message.contains("50 of the 60 Flux objects") && message.contains("at most 50 per check"),
        "{message}"
    );
}

#[tokio::test]
async fn multi_tenancy_applies_kustomizations_as_flux_applier_bound_in_their_namespace() {
    let (target, fake) = start().await;
    let cluster_wide = in_namespace("platform", "cluster-config", "cluster");
    let team = in_namespace("team", "team-a", "namespace");
    target.apply(&cluster_wide, &Credentials::default()).await.unwrap();
    target.apply(&team, &Credentials::default()).await.unwrap();
    fake.assert_no_violation();
    let kustomization = fake
        .get(KUSTOMIZE_API, "kustomizations", "team-a", "team-apps")
        .unwrap();
    assert_eq!(kustomization["spec"]["serviceAccountName"], "flux-applier");
    assert_eq!(
        shared(&fake),
        [
            "clusterrolebindings/flux-applier-binding-cluster-config",
            "namespaces/cluster-config",
            "namespaces/team-a",
            "rolebindings/cluster-config/flux-applier-binding",
            "rolebindings/team-a/flux-applier-binding",
            "serviceaccounts/cluster-config/flux-applier",
            "serviceaccounts/team-a/flux-applier",
        ],
        "a namespace-scoped configuration's applier acts in its namespace only"
    );
    let binding = fake
        .get(tenancy::RBAC_API, "rolebindings", "team-a", "flux-applier-binding")
        .unwrap();
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "flux-applier", "namespace": "team-a"}])
    );

    // the applier is the agent's to keep: deleted, it is drift, and applying restores it
    fake.objects.lock().unwrap().remove(&(
        "v1".to_owned(),
        "serviceaccounts".to_owned(),
        "team-a".to_owned(),
        "flux-applier".to_owned(),
    ));
    let drifted = target.drift(&team, &Credentials::default()).await.unwrap();
    assert_eq!(
        drifted
            .iter()
            .map(|d| (d.kind.as_str(), d.name.as_str(), d.drift))
            .collect::<Vec<_>>(),
        [("ServiceAccount", "flux-applier", Drift::Deleted)]
    );
    target.apply(&team, &Credentials::default()).await.unwrap();
    assert_eq!(target.drift(&team, &Credentials::default()).await.unwrap(), Vec::new());

    // the applier leaves with its namespace's last configuration
    let mut second = in_namespace("team-2", "team-a", "namespace");
    second.generation = 1;
    target.apply(&second, &Credentials::default()).await.unwrap();
    target.remove("team").await.unwrap();
    assert!(fake.get("v1", "serviceaccounts", "team-a", "flux-applier").is_some());
    target.remove("team-2").await.unwrap();
    target.remove("platform").await.unwrap();
    assert_eq!(
        shared(&fake),
        ["namespaces/cluster-config", "namespaces/team-a"],
        "the namespaces stay"
    );
    fake.assert_no_violation();
}

#[tokio::test]
async fn a_cross_namespace_source_reference_is_non_compliant_under_multi_tenancy_only() {
    let (target, fake) = start().await;
    let config = in_namespace("cfg", "apps", "cluster");
    target.apply(&config, &Credentials::default()).await.unwrap();
    set_status(
        &fake,
        "gitrepositories",
        "cfg",
        json!({"conditions": [ready("True", "stored artifact")]}),
    );
    applied_from_source(
        &fake,
        "cfg-apps",
        &[("apps_nginx_helm.toolkit.fluxcd.io_HelmRelease", "v2")],
    );
    fake.insert(
        "helm.toolkit.fluxcd.io/v2",
        "helmreleases",
        "apps",
        "nginx",
        flux_object(
            "HelmRelease",
            "apps",
            "nginx",
            json!({"chart": {"spec": {"chart": "nginx", "sourceRef": {"kind": "HelmRepository",
                   "name": "bitnami", "namespace": "flux-system"}}}}),
            json!({"conditions": [ready("True", "installed")]}),
        ),
    );
    let observed = target.observe(&config).await;
    assert_eq!(observed.compliance, ComplianceState::NonCompliant);
    let message = observed.message.unwrap();
    assert!(
        message.contains("HelmRelease apps/nginx")
            && message.contains("HelmRepository flux-system/bitnami")
            && message.contains("multiTenancy.enforce=false"),
        "{message}"
    );
    let condition = &observed.statuses[2].status_conditions.as_ref().unwrap()[1];
    assert_eq!(
        (condition.type_.as_deref(), condition.reason.as_deref()),
        (Some("MultiTenancy"), Some("CrossNamespaceReference"))
    );

    // off: the Kustomizations run as the controller, the applier goes, the reference is Flux's business
    assert!(target.set_multi_tenancy(false));
    target.apply(&config, &Credentials::default()).await.unwrap();
    let kustomization = fake.get(KUSTOMIZE_API, "kustomizations", "apps", "cfg-apps").unwrap();
    assert!(kustomization["spec"].get("serviceAccountName").is_none());
    assert_eq!(shared(&fake), ["namespaces/apps"]);
    assert_eq!(target.observe(&config).await.compliance, ComplianceState::Compliant);
    fake.assert_no_violation();
}

#[tokio::test]
async fn an_applier_someone_else_made_is_neither_changed_nor_deleted() {
    let (target, fake) = start().await;
    fake.insert("v1", "namespaces", "", "apps", namespace_object("apps", json!({})));
    let theirs = json!({"apiVersion": "v1", "kind": "ServiceAccount",
                        "metadata": {"name": "flux-applier", "namespace": "apps", "labels": {"team": "apps"}}});
    fake.insert("v1", "serviceaccounts", "apps", "flux-applier", theirs.clone());
    let config = in_namespace("cfg", "apps", "namespace");
    target.apply(&config, &Credentials::default()).await.unwrap();
    target.remove("cfg").await.unwrap();
    assert_eq!(fake.get("v1", "serviceaccounts", "apps", "flux-applier"), Some(theirs));
    fake.assert_no_violation();
}

#[tokio::test]
async fn the_extensions_multi_tenancy_setting_reaches_the_cluster_and_its_statuses_name_flux() {
    let (target, fake) = start().await;
    for (component, args) in [
        ("source-controller", json!([])),
        ("kustomize-controller", json!(["--no-cross-namespace-refs=true"])),
        ("helm-controller", json!([])),
    ] {
        fake.insert(
            "apps/v1",
            "deployments",
            "flux-system",
            component,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": component, "namespace": "flux-system", "labels": {
                    "app.kubernetes.io/part-of": "flux", "app.kubernetes.io/version": "v2.7.0",
                    "app.kubernetes.io/component": component}},
                "spec": {"replicas": 1, "selector": {}, "template": {"spec": {"containers": [
                    {"name": "manager", "image": format!("ghcr.io/fluxcd/{component}:v1.7.0"), "args": args}]}}},
                "status": {"readyReplicas": 1}}),
        );
    }
    let mut agent = agent_with(target).await;
    let config = configuration(1, json!({"infra": {"path": "./infra"}}));
    let off = desired(
        1,
        vec![config.clone()],
        vec![flux_extension(1, &[("multiTenancy.enforce", "false")])],
    );
    agent.reconcile_extensions(&off);
    agent.reconcile(&off).await;
    agent.observe_extensions().await;
    fake.assert_no_violation();
    let kustomization = || {
        fake.get(KUSTOMIZE_API, "kustomizations", "flux-system", "cfg-infra")
            .unwrap()
    };
    assert!(kustomization()["spec"].get("serviceAccountName").is_none());
    let report = agent.pending_extension_report("flux").unwrap();
    let statuses: Vec<(&str, &str)> = report
        .statuses
        .iter()
        .map(|s| (s.code.as_deref().unwrap(), s.display_status.as_deref().unwrap()))
        .collect();
    assert_eq!(
        statuses,
        [
            ("FluxVersion", "v2.7.0"),
            ("FluxController", "helm-controller"),
            ("FluxController", "kustomize-controller"),
            ("FluxController", "source-controller"),
            ("MultiTenancy", "NotEnforced"),
        ]
    );
    assert!(report.statuses.iter().all(|s| s.time.is_some()));

    // the setting changes: every configuration is written again, now as the applier
    let on = desired(2, vec![config], vec![flux_extension(2, &[])]);
    agent.reconcile_extensions(&on);
    agent.reconcile(&on).await;
    agent.observe_extensions().await;
    assert_eq!(kustomization()["spec"]["serviceAccountName"], "flux-applier");
    let report = agent.pending_extension_report("flux").unwrap();
    assert_eq!(report.generation, 2);
    let tenancy = report.statuses.last().unwrap();
    assert_eq!(tenancy.display_status.as_deref(), Some("Enforced"));
    assert_eq!(
        tenancy.level,
        Some(StatusLevel::Warning),
        "helm-controller follows cross-namespace references"
    );
    fake.assert_no_violation();
}

#[tokio::test]
async fn flux_is_read_in_the_extensions_namespace_only() {
    let (target, fake) = start().await;
    let statuses = target.flux_statuses("flux-system").await;
    assert_eq!(statuses[0].code.as_deref(), Some("FluxNotFound"));
    fake.assert_no_violation();
    // the agent's Role to read Deployments is in flux-system, nowhere else
    let elsewhere = target.flux_statuses("other").await;
    assert_eq!(elsewhere[0].code.as_deref(), Some("FluxUnknown"));
    assert!(
        elsewhere[0].message.as_deref().unwrap().contains("forbidden"),
        "{elsewhere:?}"
    );
    assert_eq!(fake.violations.lock().unwrap().len(), 1);
}

/// The RBAC of `deploy/agent/agent.yaml` allows every request the kube target makes (the fake refuses the rest, as
/// a real API server would), and grants nothing the target never asks for: a configuration with secrets through
/// each source kind, pruned, observed with one Flux object of each kind the agent reads in its Kustomization's
/// inventory, checked for drift, its secrets read back, removed (its namespace's applier with it), the heartbeat's
/// cluster facts and the Flux extension's statuses.
#[tokio::test]
async fn the_agents_rbac_allows_every_request_the_kube_target_makes_and_nothing_more() {
    let rbac = rbac::Rbac::of_manifest();
    // the check refuses what the rules do not name
    for (method, path, query) in [
        ("GET", "/apis/fluxplane.io/v1alpha1/fluxconfigs", Some("watch=true")),
        (
            "PUT",
            "/apis/kustomize.toolkit.fluxcd.io/v1/namespaces/a/kustomizations/b",
            None,
        ),
        ("GET", "/api/v1/namespaces/a/configmaps/b", None),
        ("DELETE", "/api/v1/namespaces/a", None),
        ("GET", "/api/v1/namespaces", None),
        ("DELETE", "/api/v1/namespaces/a/secrets", None),
        ("GET", "/api/v1/nodes/node-1", None),
        ("GET", "/apis", None),
        ("GET", "/apis/helm.toolkit.fluxcd.io/v2/helmreleases", None),
        (
            "PATCH",
            "/apis/helm.toolkit.fluxcd.io/v2/namespaces/a/helmreleases/b",
            None,
        ),
        ("GET", "/apis/apps/v1/deployments", None),
        ("GET", "/apis/apps/v1/namespaces/kube-system/deployments", None),
        ("POST", "/apis/rbac.authorization.k8s.io/v1/clusterroles", None),
    ] {
        let access = rbac::Access::of(method, path, query, None);
        assert!(!rbac.allows(&access), "{method} {path} is allowed: {access:?}");
    }
    let bind = |role: &str| rbac::Access::Resource {
        verbs: vec!["bind".to_owned()],
        group: "rbac.authorization.k8s.io".to_owned(),
        resource: "clusterroles".to_owned(),
        namespace: None,
        name: Some(role.to_owned()),
    };
    assert!(rbac.allows(&bind("cluster-admin")));
    assert!(
        !rbac.allows(&bind("admin")),
        "cluster-admin is the only role the agent binds"
    );

    let (target, fake) = start().await;
    let with_source = |generation: i64, kustomizations: Value, source: Value| {
        let mut spec = json!({"namespace": "flux-system", "suspend": false, "kustomizations": kustomizations});
        spec.as_object_mut()
            .unwrap()
            .extend(source.as_object().unwrap().clone());
        DesiredConfiguration {
            name: "cfg".into(),
            generation,
            deleting: false,
            spec: serde_json::from_value(spec).unwrap(),
            ..Default::default()
        }
    };
    let mut config = with_source(
        1,
        json!({"infra": {"path": "./infra"}, "apps": {"path": "./apps"}}),
        json!({"sourceKind": "GitRepository", "gitRepository": {"url": "https://github.com/org/fleet",
               "repositoryRef": {"branch": "main"}}}),
    );
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
    assert_eq!(
        target.inventory().await.unwrap(),
        BTreeMap::from([("cfg".to_owned(), 1)])
    );
    assert_eq!(target.credentials(&config).await.unwrap(), credentials);
    assert_eq!(target.observe(&config).await.compliance, ComplianceState::Pending);
    assert_eq!(target.drift(&config, &credentials).await.unwrap(), Vec::new());
    // another source kind each time: the previous source, the dropped kustomization and the secret are pruned
    for (generation, source) in [
        (
            2,
            json!({"sourceKind": "Bucket", "bucket": {"url": "https://minio.local:9000/", "bucketName": "gitops"}}),
        ),
        (
            3,
            json!({"sourceKind": "OCIRepository", "ociRepository": {"url": "oci://ghcr.io/org/manifests",
                   "repositoryRef": {"tag": "v1"}}}),
        ),
    ] {
        let next = with_source(generation, json!({"infra": {"path": "./infra"}}), source);
        target.apply(&next, &Credentials::default()).await.unwrap();
        assert_eq!(target.observe(&next).await.compliance, ComplianceState::Pending);
    }
    // one object of each Flux kind the agent reads, applied by the Kustomization
    let ids: Vec<String> = inventory::FLUX_KINDS
        .iter()
        .map(|(group, kind, _)| format!("flux-system_x_{group}_{kind}"))
        .collect();
    let entries: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "v1")).collect();
    applied_from_source(&fake, "cfg-infra", &entries);
    for (group, kind, plural) in inventory::FLUX_KINDS {
        fake.insert(
            &format!("{group}/v1"),
            plural,
            "flux-system",
            "x",
            flux_object(kind, "flux-system", "x", json!({}), json!({})),
        );
    }
    let last = with_source(
        3,
        json!({"infra": {"path": "./infra"}}),
        json!({"sourceKind": "OCIRepository", "ociRepository": {"url": "oci://ghcr.io/org/manifests",
               "repositoryRef": {"tag": "v1"}}}),
    );
    let observed = target.observe(&last).await;
    assert_eq!(
        observed.statuses.len(),
        2 + inventory::FLUX_KINDS.len(),
        "{observed:#?}"
    );
    let facts = target.cluster_facts().await;
    assert!(facts.kubernetes_version.is_some() && facts.total_node_count.is_some());
    target.reachable().await.unwrap();
    assert_eq!(
        target.flux_statuses("flux-system").await[0].code.as_deref(),
        Some("FluxNotFound")
    );
    target.remove("cfg").await.unwrap();
    assert!(names(&fake).iter().all(|n| !n.starts_with("fluxconfigs/")));
    assert_eq!(shared(&fake), ["namespaces/flux-system"]);

    fake.assert_no_violation();
    let used: BTreeSet<rbac::Grant> = fake
        .requests
        .lock()
        .unwrap()
        .iter()
        .flat_map(rbac::Access::grants_used)
        .collect();
    let unused: Vec<_> = rbac.grants().difference(&used).cloned().collect();
    assert!(
        unused.is_empty(),
        "deploy/agent/agent.yaml grants what the agent never asks for: {unused:#?}"
    );
}

#[tokio::test]
async fn objects_deleted_or_edited_in_the_cluster_are_drift_and_applying_restores_them() {
    let (target, fake) = start().await;
    let config = configuration(1, json!({"infra": {"path": "./infra"}, "apps": {"path": "./apps"}}));
    let credentials = Credentials::default();
    target.apply(&config, &credentials).await.unwrap();
    // what Flux and the API server add is not drift
    set_status(
        &fake,
        "kustomizations",
        "cfg-apps",
        json!({"conditions": [ready("True", "applied")]}),
    );
    assert_eq!(target.drift(&config, &credentials).await.unwrap(), Vec::new());

    let key = |plural: &str, api: &str, name: &str| {
        (
            api.to_owned(),
            plural.to_owned(),
            "flux-system".to_owned(),
            name.to_owned(),
        )
    };
    fake.objects
        .lock()
        .unwrap()
        .remove(&key("kustomizations", KUSTOMIZE_API, "cfg-infra"));
    fake.objects
        .lock()
        .unwrap()
        .get_mut(&key("gitrepositories", SOURCE_API, "cfg"))
        .unwrap()["spec"]["url"] = json!("https://github.com/someone/else");
    let drifted = target.drift(&config, &credentials).await.unwrap();
    let found: Vec<(String, String, Drift)> = drifted
        .iter()
        .map(|d| (d.kind.clone(), d.name.clone(), d.drift))
        .collect();
    assert_eq!(
        found,
        vec![
            ("GitRepository".to_owned(), "cfg".to_owned(), Drift::Changed),
            ("Kustomization".to_owned(), "cfg-infra".to_owned(), Drift::Deleted),
        ]
    );
    target.apply(&config, &credentials).await.unwrap();
    assert_eq!(target.drift(&config, &credentials).await.unwrap(), Vec::new());
    assert_eq!(
        fake.objects.lock().unwrap()[&key("gitrepositories", SOURCE_API, "cfg")]["spec"]["url"],
        "https://github.com/org/fleet"
    );
    assert!(
        fake.violations.lock().unwrap().is_empty(),
        "{:?}",
        fake.violations.lock().unwrap()
    );
}
