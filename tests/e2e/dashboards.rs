//! End-to-end: the history of configurations, clusters and policy assignments, the summary as of a past time, the
//! live status stream and its resumption, the fleet grid and the metrics, over real HTTP with clusters reporting
//! through the real agent API.

use std::time::Duration;

use crate::common::reports::{agent_cluster, report};
use crate::common::*;
use fluxplane_api::auth::Role;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const FLEET_API: &str = "2026-01-01";
const SUBSCRIPTION: &str = "/subscriptions/s";

fn with_fleet_version(path: &str, query: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse(&format!("http://x{path}")).expect("a URL");
    url.query_pairs_mut().append_pair("api-version", FLEET_API);
    for (k, v) in query {
        url.query_pairs_mut().append_pair(k, v);
    }
    format!("{}?{}", url.path(), url.query().unwrap_or_default())
}

/// Every entry of a history, following nextLink.
async fn history(api: &Api, resource: &str, query: &[(&str, &str)]) -> Vec<Value> {
    let (entries, _) = api
        .list_all(&with_fleet_version(&format!("{resource}/history"), query))
        .await;
    entries
}

fn summary_counts(answer: &Answer) -> Vec<(String, i64)> {
    answer.body["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap_or("null").to_owned(),
                g["count"].as_i64().unwrap(),
            )
        })
        .collect()
}

on_both_backends!(
    a_configurations_history_lists_its_writes_and_status_transitions_in_time_order,
    history_case
);
async fn history_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_cluster(&api, "h1", "prod", dir.path()).await;
    let cluster = cluster_path("s", "rg-a", "h1");
    let configuration = config_path(&cluster, "app");
    assert!(
        api.put_config(&cluster, "app", git_config_body())
            .await
            .status
            .is_success()
    );
    report(&agent, &[], &[]).await;
    report(&agent, &["app"], &[]).await;

    let entries = history(&api, &configuration, &[]).await;
    let times: Vec<chrono::DateTime<chrono::FixedOffset>> = entries
        .iter()
        .map(|e| chrono::DateTime::parse_from_rfc3339(e["time"].as_str().unwrap()).unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "in time order: {times:?}");
    let writes: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "write").collect();
    assert_eq!(writes.len(), 1, "{entries:#?}");
    assert_eq!(writes[0]["actor"], "test-owner");
    assert_eq!(writes[0]["action"], "PUT");
    assert_eq!(writes[0]["statusCode"], 201);
    assert!(
        writes[0]["resourceId"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&configuration)
    );
    let states: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e["kind"] == "status")
        .map(|e| (e["event"].as_str().unwrap(), e["complianceState"].as_str().unwrap()))
        .collect();
    assert_eq!(
        states,
        [
            ("Created", "Pending"),
            ("Updated", "Compliant"),
            ("Updated", "Non-Compliant")
        ]
    );
    let failed = entries.iter().rfind(|e| e["kind"] == "status").unwrap();
    assert_eq!(failed["message"], "the branch is missing");
    assert_eq!(failed["reportedGeneration"], 1);
    assert!(
        failed["resourceId"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&configuration)
    );

    // the same entries a page at a time, each once
    let (paged, pages) = api
        .list_all(&with_fleet_version(
            &format!("{configuration}/history"),
            &[("$top", "1")],
        ))
        .await;
    assert_eq!(pages, entries.len());
    let ids = |list: &[Value]| {
        list.iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(&paged), ids(&entries));

    // the cluster's history has its own registration and its configurations'
    let of_cluster = history(&api, &cluster, &[]).await;
    assert!(of_cluster.len() > entries.len(), "{of_cluster:#?}");
    assert!(
        of_cluster
            .iter()
            .any(|e| e["kind"] == "write" && e["resourceId"].as_str().unwrap().eq_ignore_ascii_case(&cluster))
    );

    // a range that ends before anything happened is empty
    let empty = history(&api, &configuration, &[("to", "2020-01-01T00:00:00Z")]).await;
    assert!(empty.is_empty(), "{empty:#?}");

    // the history survives the configuration
    let deleted = api
        .call(
            Method::DELETE,
            &format!("{}&forceDelete=true", with_version(&configuration, FLUX_API)),
            None,
        )
        .await;
    assert!(deleted.status.is_success(), "{deleted:?}");
    let after = history(&api, &configuration, &[]).await;
    let last_status = after.iter().rfind(|e| e["kind"] == "status").unwrap();
    assert_eq!(last_status["event"], "Deleted", "{after:#?}");
    assert!(after.iter().any(|e| e["action"] == "DELETE"), "{after:#?}");
}

on_both_backends!(a_history_refuses_bad_ranges_and_strangers, history_errors_case);
async fn history_errors_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg-a", "h1");
    assert!(api.put_cluster("s", "rg-a", "h1").await.status.is_success());
    let configuration = config_path(&cluster, "app");
    assert!(
        api.put_config(&cluster, "app", git_config_body())
            .await
            .status
            .is_success()
    );
    for query in [
        vec![("from", "yesterday")],
        vec![("from", "2026-01-02T00:00:00Z"), ("to", "2026-01-01T00:00:00Z")],
        vec![("$top", "0")],
        vec![("$skipToken", "garbage")],
    ] {
        let answer = api
            .get(&with_fleet_version(&format!("{configuration}/history"), &query))
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query:?}: {answer:?}");
        assert_eq!(answer.code(), "InvalidParameter");
    }
    let wrong_version = api
        .get(&format!("{configuration}/history?api-version=2025-04-01"))
        .await;
    assert_eq!(wrong_version.status, StatusCode::BAD_REQUEST);
    let stranger = api
        .server
        .token("stranger", &[(Role::Reader, "/subscriptions/s/resourceGroups/other")]);
    let refused = api
        .call_as(
            &stranger,
            Method::GET,
            &with_fleet_version(&format!("{configuration}/history"), &[]),
            None,
        )
        .await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let missing = api
        .get(&with_fleet_version(
            &format!("{}/history", cluster_path("s", "rg-a", "nope")),
            &[],
        ))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing:?}");
}

on_both_backends!(
    an_assignments_history_lists_the_configurations_it_manages,
    assignment_history_case
);
async fn assignment_history_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_cluster(&api, "p1", "prod", dir.path()).await;
    agent_cluster(&api, "d1", "dev", dir.path()).await;
    let assignment = format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/policyAssignments/baseline");
    let body = json!({"properties": {
        "selector": {"matchLabels": {"env": "prod"}},
        "configurationName": "baseline",
        "configurationTemplate": {
            "gitRepository": {"url": "https://github.com/org/fleet", "repositoryRef": {"branch": "main"}},
            "kustomizations": {"infra": {"path": "./infra"}}
        }
    }});
    let written = api
        .call(Method::PUT, &with_version(&assignment, FLEET_API), Some(body))
        .await;
    assert!(written.status.is_success(), "{written:?}");
    report(&agent, &[], &[]).await;
    let entries = history(&api, &assignment, &[]).await;
    let writes: Vec<&Value> = entries.iter().filter(|e| e["kind"] == "write").collect();
    assert_eq!(writes.len(), 1, "{entries:#?}");
    let clusters: Vec<&str> = entries
        .iter()
        .filter(|e| e["kind"] == "status")
        .map(|e| e["clusterId"].as_str().unwrap())
        .collect();
    assert!(
        !clusters.is_empty() && clusters.iter().all(|c| c.ends_with("/p1")),
        "{entries:#?}"
    );
    assert!(entries.iter().any(|e| e["complianceState"] == "Compliant"));
    assert!(entries.iter().filter(|e| e["kind"] == "status").all(|e| {
        e["policyAssignmentId"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&assignment)
    }));
}

on_both_backends!(the_summary_as_of_a_past_time_counts_what_was_then, as_of_case);
async fn as_of_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_cluster(&api, "t1", "prod", dir.path()).await;
    let cluster = cluster_path("s", "rg-a", "t1");
    let summary = |query: Vec<(&'static str, String)>| {
        let api = &api;
        async move {
            let query: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
            api.get(&with_fleet_version(
                &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/complianceSummary"),
                &query,
            ))
            .await
        }
    };
    let before_anything = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        api.put_config(&cluster, "app", git_config_body())
            .await
            .status
            .is_success()
    );
    report(&agent, &[], &[]).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let while_compliant = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    report(&agent, &["app"], &[]).await;

    let now = summary(vec![]).await;
    assert_eq!(summary_counts(&now), [("Non-Compliant".to_owned(), 1)], "{now:?}");
    let then = summary(vec![("asOf", while_compliant.to_rfc3339())]).await;
    assert_eq!(then.status, StatusCode::OK, "{then:?}");
    assert_eq!(summary_counts(&then), [("Compliant".to_owned(), 1)], "{then:?}");
    assert_eq!(then.body["clusters"], 1);
    assert_eq!(then.body["freshness"], json!({"fresh": 1, "stale": 0, "offline": 0}));
    let empty = summary(vec![("asOf", before_anything.to_rfc3339())]).await;
    assert_eq!(empty.body["count"], 0, "{empty:?}");
    assert_eq!(empty.body["clusters"], 0, "{empty:?}");
    let by_provisioning = summary(vec![
        ("asOf", while_compliant.to_rfc3339()),
        ("groupBy", "provisioningState".into()),
    ])
    .await;
    assert_eq!(summary_counts(&by_provisioning), [("Succeeded".to_owned(), 1)]);

    for query in [
        vec![("asOf", "last week".to_owned())],
        vec![("asOf", "2000-01-01T00:00:00Z".to_owned())],
        vec![
            ("asOf", while_compliant.to_rfc3339()),
            ("tagSelector", "env=prod".into()),
        ],
        vec![("asOf", while_compliant.to_rfc3339()), ("groupBy", "cluster".into())],
        vec![
            ("asOf", while_compliant.to_rfc3339()),
            ("groupBy", "connectivityStatus".into()),
        ],
    ] {
        let answer = summary(query.clone()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query:?}: {answer:?}");
        assert_eq!(answer.code(), "InvalidParameter");
    }
}

/// Reads server-sent events from `response` until `wanted` status events arrived: (id, data) of each.
async fn events(response: &mut reqwest::Response, wanted: usize) -> Vec<(String, Value)> {
    let mut buffer = String::new();
    let mut found = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while found.len() < wanted {
        let chunk = tokio::time::timeout_at(deadline, response.chunk())
            .await
            .expect("the events arrive in time")
            .expect("the stream stays open")
            .expect("the stream is not over");
        buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| {
                frame
                    .lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned()))
            };
            if field("event").as_deref() == Some("status") {
                let data: Value = serde_json::from_str(&field("data").unwrap()).unwrap();
                found.push((field("id").unwrap(), data));
            }
        }
    }
    found
}

fn stream_request(api: &Api, token: &str, scope: &str, last_event_id: Option<&str>) -> reqwest::RequestBuilder {
    let url = api.url(&with_fleet_version(
        &format!("{scope}/providers/Fluxplane.Fleet/events"),
        &[],
    ));
    let request = api.client.get(url).bearer_auth(token);
    match last_event_id {
        Some(id) => request.header("Last-Event-ID", id),
        None => request,
    }
}

async fn stream(api: &Api, token: &str, scope: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let response = stream_request(api, token, scope, last_event_id).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    response
}

on_both_backends!(
    the_live_stream_sends_status_changes_in_scope_and_resumes_after_the_last_event_id,
    stream_case
);
async fn stream_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_cluster(&api, "s1", "prod", dir.path()).await;
    let cluster = cluster_path("s", "rg-a", "s1");
    let mut live = stream(&api, &api.token, SUBSCRIPTION, None).await;
    let other_group = api
        .server
        .token("other", &[(Role::Reader, "/subscriptions/s/resourceGroups/rg-b")]);
    let mut elsewhere = stream(&api, &other_group, "/subscriptions/s/resourceGroups/rg-b", None).await;

    assert!(
        api.put_config(&cluster, "app", git_config_body())
            .await
            .status
            .is_success()
    );
    let created = events(&mut live, 1).await;
    assert_eq!(created[0].1["event"], "Created");
    assert_eq!(created[0].1["configurationName"], "app");
    assert!(
        created[0].1["clusterId"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&cluster)
    );
    report(&agent, &[], &[]).await;
    let compliant = events(&mut live, 1).await;
    assert_eq!(compliant[0].1["complianceState"], "Compliant");
    drop(live);

    // changes made while nobody listens arrive on resumption, in order, after the last id seen
    report(&agent, &["app"], &[]).await;
    assert!(
        api.put_config(&cluster, "second", git_config_body())
            .await
            .status
            .is_success()
    );
    let mut resumed = stream(&api, &api.token, SUBSCRIPTION, Some(&compliant[0].0)).await;
    let missed = events(&mut resumed, 2).await;
    assert_eq!(missed[0].1["complianceState"], "Non-Compliant", "{missed:#?}");
    assert_eq!(missed[1].1["configurationName"], "second", "{missed:#?}");
    let ids: Vec<i64> = missed.iter().map(|(id, _)| id.parse().unwrap()).collect();
    assert!(ids[0] > compliant[0].0.parse::<i64>().unwrap() && ids[0] < ids[1]);

    // a reader of another resource group saw none of it: only keep-alives, no event
    let quiet = tokio::time::timeout(Duration::from_millis(700), elsewhere.chunk()).await;
    assert!(quiet.is_err(), "no event for another resource group: {quiet:?}");

    let bad = api
        .raw(stream_request(&api, &api.token, SUBSCRIPTION, Some("yesterday")))
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST, "{bad:?}");
    let stranger = api.server.token("stranger", &[(Role::Reader, "/subscriptions/other")]);
    let refused = api.raw(stream_request(&api, &stranger, SUBSCRIPTION, None)).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
}

on_both_backends!(the_grid_pages_clusters_with_their_configurations_states, grid_case);
async fn grid_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for name in ["g1", "g2", "g3"] {
        agents.push(agent_cluster(&api, name, if name == "g3" { "dev" } else { "prod" }, dir.path()).await);
        let cluster = cluster_path("s", "rg-a", name);
        for configuration in ["app", "infra"] {
            assert!(
                api.put_config(&cluster, configuration, git_config_body())
                    .await
                    .status
                    .is_success()
            );
        }
    }
    report(&agents[0], &[], &[]).await;
    report(&agents[1], &["infra"], &[]).await;
    let grid = format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/clusterCompliance");
    let (rows, pages) = api.list_all(&with_fleet_version(&grid, &[("$top", "2")])).await;
    assert_eq!(pages, 2);
    let names: Vec<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["g1", "g2", "g3"]);
    let cells = |row: &Value| -> Vec<(String, String, String)> {
        row["configurations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["complianceState"].as_str().unwrap().to_owned(),
                    c["freshness"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let cell = |n: &str, s: &str, f: &str| (n.to_owned(), s.to_owned(), f.to_owned());
    assert_eq!(
        cells(&rows[0]),
        [cell("app", "Compliant", "fresh"), cell("infra", "Compliant", "fresh")]
    );
    assert_eq!(
        cells(&rows[1]),
        [
            cell("app", "Compliant", "fresh"),
            cell("infra", "Non-Compliant", "fresh")
        ]
    );
    // g3's agent registered but never polled: offline
    assert_eq!(
        cells(&rows[2]),
        [cell("app", "Pending", "offline"), cell("infra", "Pending", "offline")]
    );
    assert!(
        rows[0]["configurations"][0]["id"]
            .as_str()
            .unwrap()
            .eq_ignore_ascii_case(&config_path(&cluster_path("s", "rg-a", "g1"), "app"))
    );

    // narrowed: the failing configurations and the clusters that have one; tags choose clusters
    let (failing, _) = api
        .list_all(&with_fleet_version(&grid, &[("complianceState", "non-compliant")]))
        .await;
    assert_eq!(failing.len(), 1);
    assert_eq!(cells(&failing[0]), [cell("infra", "Non-Compliant", "fresh")]);
    let (dev, _) = api
        .list_all(&with_fleet_version(&grid, &[("tagSelector", "env=dev"), ("$top", "1")]))
        .await;
    assert_eq!(
        dev.iter().map(|r| r["name"].as_str().unwrap()).collect::<Vec<_>>(),
        ["g3"]
    );
    for query in [
        vec![("$top", "0")],
        vec![("complianceState", "Green")],
        vec![("tagSelector", "env in")],
    ] {
        let answer = api.get(&with_fleet_version(&grid, &query)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query:?}: {answer:?}");
    }
}

on_both_backends!(
    metrics_export_the_fleet_by_state_and_the_latency_of_writes,
    metrics_case
);
async fn metrics_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let agent = std::sync::Arc::new(agent_cluster(&api, "m1", "prod", dir.path()).await);
    assert!(api.put_cluster("s", "rg-a", "silent").await.status.is_success());
    let cluster = cluster_path("s", "rg-a", "m1");
    // a poll that waits: the write below reaches it, and its propagation is timed
    let revision = agent.desired_state(None, Duration::ZERO).await.unwrap().revision;
    let waiting = {
        let agent = agent.clone();
        tokio::spawn(async move { agent.desired_state(Some(revision), Duration::from_secs(20)).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        api.put_config(&cluster, "app", git_config_body())
            .await
            .status
            .is_success()
    );
    let delivered = waiting.await.unwrap().unwrap();
    assert_eq!(delivered.configurations.len(), 1);
    report(&agent, &[], &[]).await;

    let text = api
        .client
        .get(api.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |line: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(line).map(|v| v.trim().parse::<f64>().unwrap()))
            .unwrap_or_else(|| panic!("no '{line}' in\n{text}"))
    };
    assert_eq!(
        value(r#"fluxplane_configurations{compliance_state="Compliant",provisioning_state="Succeeded"}"#),
        1.0
    );
    assert_eq!(value(r#"fluxplane_clusters{connectivity_status="Connected"}"#), 1.0);
    // registered through the API only, never heard from
    assert_eq!(value(r#"fluxplane_clusters{connectivity_status="Connecting"}"#), 1.0);
    assert_eq!(value("fluxplane_propagation_seconds_count"), 1.0);
    assert_eq!(value("fluxplane_status_latency_seconds_count"), 1.0);
    assert!(value("fluxplane_status_latency_seconds_sum") > 0.0);
    assert!(text.contains(r#"fluxplane_agent_reports_total{disposition="Recorded"}"#));
    assert!(text.contains("fluxplane_http_requests_total{"));
}
