//! End-to-end: where each commit is. Real agents (with `dir` targets) follow a branch of a real Git repository
//! served over real HTTP; as commits land, the summary groups and filters by the commit every agent reports, the
//! grid and the configuration list filter on it, an assignment lists each commit's spread over its clusters, a
//! commit that fails on too many clusters trips the circuit breaker of its repository, and a cluster answers what it
//! ran at a past time.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::common::agents::{RunningAgent, registered, served_repository};
use crate::common::git::{FileServer, MANIFEST, Repository};
use crate::common::*;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::Method;

const FLEET_API: &str = "2026-01-01";
const SUBSCRIPTION: &str = "/subscriptions/s";
const CLUSTERS: [&str; 3] = ["a", "b", "c"];

/// `path` with the fleet api-version and `query`, encoded.
fn fleet(path: &str, query: &[(&str, &str)]) -> String {
    versioned(path, FLEET_API, query)
}

/// `path` with `version` and `query`, encoded.
fn versioned(path: &str, version: &str, query: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse(&format!("http://x{path}")).expect("a URL");
    url.query_pairs_mut().append_pair("api-version", version);
    for (k, v) in query {
        url.query_pairs_mut().append_pair(k, v);
    }
    format!("{}?{}", url.path(), url.query().unwrap_or_default())
}

fn assignment_path(name: &str) -> String {
    format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/policyAssignments/{name}")
}

/// An assignment of `configuration` to every test cluster (`env=test`), reading `url` at `main` every second.
fn assignment(url: &str, configuration: &str, path: &str, extra: Value) -> Value {
    let mut body = json!({"properties": {
        "selector": {"matchLabels": {"env": "test"}},
        "configurationName": configuration,
        "configurationTemplate": {
            "namespace": "flux-system",
            "gitRepository": {"url": url, "repositoryRef": {"branch": "main"}, "syncIntervalInSeconds": 1},
            "kustomizations": {"k": {"path": path}}
        }
    }});
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            body["properties"][k] = v;
        }
    }
    body
}

async fn assign(api: &Api, name: &str, body: Value) {
    let answer = api
        .call(Method::PUT, &fleet(&assignment_path(name), &[]), Some(body))
        .await;
    assert!(answer.status.is_success(), "{answer:?}");
}

fn configuration(cluster: &str, name: &str) -> String {
    with_version(&config_path(&cluster_path("s", "rg", cluster), name), FLUX_API)
}

/// What every cluster's configuration `name` reports now: cluster → (commit, compliance state).
async fn reported(api: &Api, name: &str) -> BTreeMap<String, (Option<String>, String)> {
    let mut truth = BTreeMap::new();
    for cluster in CLUSTERS {
        let answer = api.get(&configuration(cluster, name)).await;
        if answer.status != StatusCode::OK {
            continue;
        }
        let p = &answer.body["properties"];
        truth.insert(
            cluster.to_owned(),
            (
                p["sourceSyncedCommitId"].as_str().map(str::to_owned),
                p["complianceState"].as_str().unwrap_or_default().to_owned(),
            ),
        );
    }
    truth
}

/// Waits until `done` holds of what the clusters report (or fails after 30 s); answers when it was first seen to.
async fn until_reported(
    api: &Api,
    name: &str,
    what: &str,
    done: impl Fn(&BTreeMap<String, (Option<String>, String)>) -> bool,
) -> DateTime<Utc> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = reported(api, name).await;
        if done(&now) {
            return Utc::now();
        }
        assert!(Instant::now() < deadline, "waiting for {what}: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn on(truth: &BTreeMap<String, (Option<String>, String)>, commit: &str) -> usize {
    truth.values().filter(|(c, _)| c.as_deref() == Some(commit)).count()
}

fn time(value: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(value.as_str().unwrap_or_else(|| panic!("a time: {value}")))
        .unwrap()
        .with_timezone(&Utc)
}

fn groups(answer: &Answer) -> BTreeMap<String, (i64, i64)> {
    answer.body["groups"]
        .as_array()
        .unwrap_or_else(|| panic!("groups: {answer:?}"))
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap_or("null").to_owned(),
                (g["count"].as_i64().unwrap(), g["clusters"].as_i64().unwrap()),
            )
        })
        .collect()
}

/// A kustomization that names a manifest the repository does not hold: the agent reports it Non-Compliant.
const BROKEN: &str = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - missing.yaml\n";

on_both_backends!(
    the_summary_the_grid_and_an_assignments_spread_answer_where_each_commit_is_as_the_agents_report_it,
    spread_case
);
async fn spread_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let mut agents = BTreeMap::new();
    for name in CLUSTERS {
        agents.insert(
            name,
            RunningAgent::start(registered(&api, name, dir.path()).await).await,
        );
    }
    let first = format!("main@sha1:{}", repository.head());
    let assigned_at = Utc::now();
    assign(&api, "infra", assignment(&url, "infra", "./infra", json!({}))).await;
    let all_on_first = until_reported(&api, "infra", "every cluster compliant at the first commit", |t| {
        on(t, &first) == 3 && t.values().all(|(_, s)| s == "Compliant")
    })
    .await;

    // c stops; a good commit reaches a and b
    agents.remove("c").unwrap().stop().await;
    let committed_at = Utc::now();
    let second = format!(
        "main@sha1:{}",
        repository.commit(&[("infra/more.yaml", MANIFEST)], "more")
    );
    let mut seen_on_one = None;
    let both_on_second = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let truth = reported(&api, "infra").await;
            if on(&truth, &second) >= 1 && seen_on_one.is_none() {
                seen_on_one = Some(Utc::now());
            }
            if on(&truth, &second) == 2 && truth.values().all(|(_, s)| s == "Compliant") {
                break Utc::now();
            }
            assert!(Instant::now() < deadline, "a and b at the second commit: {truth:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    // the summary by commit counts what every agent reports
    let truth = reported(&api, "infra").await;
    let mut expected: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (commit, _) in truth.values() {
        let entry = expected.entry(commit.clone().unwrap_or("null".into())).or_default();
        *entry = (entry.0 + 1, entry.1 + 1);
    }
    let summary = api
        .get(&fleet(
            &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/complianceSummary"),
            &[("groupBy", "sourceSyncedCommitId")],
        ))
        .await;
    assert_eq!(summary.status, StatusCode::OK, "{summary:?}");
    assert_eq!(summary.body["groupBy"], "sourceSyncedCommitId");
    assert_eq!(groups(&summary), expected, "{summary:?}");
    assert_eq!(
        expected,
        BTreeMap::from([(first.clone(), (1, 1)), (second.clone(), (2, 2))])
    );
    // ... capped at $top, the rest counted
    let capped = api
        .get(&fleet(
            &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/complianceSummary"),
            &[("groupBy", "sourceSyncedCommitId"), ("$top", "1")],
        ))
        .await;
    assert_eq!(groups(&capped), BTreeMap::from([(second.clone(), (2, 2))]));
    assert_eq!(capped.body["otherGroups"]["groups"], 1);
    assert_eq!(capped.body["otherGroups"]["count"], 1);
    assert_eq!(capped.body["count"], 3, "the totals count every group");

    // filtered by a short hash, or by the whole id
    let short = &second["main@sha1:".len().."main@sha1:".len() + 7];
    let filtered = api
        .get(&fleet(
            &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/complianceSummary"),
            &[("sourceSyncedCommitId", short), ("groupBy", "cluster")],
        ))
        .await;
    assert_eq!(filtered.status, StatusCode::OK, "{filtered:?}");
    let on_second: Vec<String> = groups(&filtered)
        .keys()
        .map(|id| id.rsplit('/').next().unwrap().to_owned())
        .collect();
    assert_eq!(on_second, ["a", "b"]);
    let grid = api
        .get(&fleet(
            &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/clusterCompliance"),
            &[("sourceSyncedCommitId", &first)],
        ))
        .await;
    assert_eq!(grid.status, StatusCode::OK, "{grid:?}");
    let rows = grid.body["value"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{grid:?}");
    assert_eq!(rows[0]["name"], "c");
    assert_eq!(rows[0]["configurations"][0]["sourceSyncedCommitId"], first.as_str());
    let list = api
        .get(&versioned(
            &format!(
                "{}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations",
                cluster_path("s", "rg", "a")
            ),
            FLUX_API,
            &[("$filter", &format!("properties/sourceSyncedCommitId eq '{second}'"))],
        ))
        .await;
    assert_eq!(list.status, StatusCode::OK, "{list:?}");
    assert_eq!(list.body["value"].as_array().unwrap().len(), 1, "{list:?}");

    // what the rollups cannot answer, and what is no commit, is refused and changes nothing
    let past = (Utc::now() - chrono::Duration::seconds(1)).to_rfc3339();
    for (query, target) in [
        (
            vec![("groupBy", "sourceSyncedCommitId"), ("asOf", past.as_str())],
            "asOf",
        ),
        (vec![("sourceSyncedCommitId", "main")], "sourceSyncedCommitId"),
        (vec![("sourceSyncedCommitId", "abc")], "sourceSyncedCommitId"),
        (vec![("$top", "0")], "$top"),
    ] {
        let refused = api
            .get(&fleet(
                &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/complianceSummary"),
                &query,
            ))
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{query:?}: {refused:?}");
        assert_eq!(refused.body["error"]["code"], "InvalidParameter");
        assert!(refused.body.to_string().contains(target), "{query:?}: {refused:?}");
    }
    let refused = api
        .get(&fleet(
            &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/clusterCompliance"),
            &[("sourceSyncedCommitId", "not a commit")],
        ))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    assert_eq!(
        refused.body["error"]["details"][0]["target"], "sourceSyncedCommitId",
        "{refused:?}"
    );
    assert_eq!(reported(&api, "infra").await, truth, "nothing changed");

    // the assignment's commits, newest first, against what was seen
    let commits = api
        .get(&fleet(&format!("{}/commits", assignment_path("infra")), &[]))
        .await;
    assert_eq!(commits.status, StatusCode::OK, "{commits:?}");
    let value = commits.body["value"].as_array().unwrap();
    assert_eq!(value.len(), 2, "{commits:?}");
    let (newest, oldest) = (&value[0], &value[1]);
    assert_eq!(newest["commit"], second.as_str());
    assert_eq!(oldest["commit"], first.as_str());
    for c in value {
        assert_eq!(c["selectedClusters"], 3);
        assert_eq!(c["failedClusters"], 0);
    }
    assert_eq!(
        (newest["clusters"].as_u64(), newest["currentClusters"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(
        (oldest["clusters"].as_u64(), oldest["currentClusters"].as_u64()),
        (Some(3), Some(1))
    );
    // seen between the commit and when the test saw it on one cluster; half reached by the time two had it
    assert!(time(&newest["firstSeen"]) >= committed_at && time(&newest["firstSeen"]) <= seen_on_one.unwrap());
    assert!(time(&newest["reached50Percent"]) <= both_on_second);
    assert!(
        newest["reached95Percent"].is_null() && newest["reached100Percent"].is_null(),
        "c never got it"
    );
    assert!(time(&oldest["firstSeen"]) >= assigned_at);
    assert!(time(&oldest["reached100Percent"]) <= all_on_first);
    assert!(time(&oldest["reached50Percent"]) <= time(&oldest["reached95Percent"]));

    // a broken commit: it fails on both clusters that applied it
    let broken = format!(
        "main@sha1:{}",
        repository.commit(&[("infra/kustomization.yaml", BROKEN)], "broken")
    );
    until_reported(&api, "infra", "a and b failing at the broken commit", |t| {
        on(t, &broken) == 2 && t.values().filter(|(_, s)| s == "Non-Compliant").count() == 2
    })
    .await;
    let page = api
        .get(&fleet(
            &format!("{}/commits", assignment_path("infra")),
            &[("$top", "1")],
        ))
        .await;
    let newest = &page.body["value"][0];
    assert_eq!(newest["commit"], broken.as_str());
    assert_eq!(
        (newest["clusters"].as_u64(), newest["failedClusters"].as_u64()),
        (Some(2), Some(2))
    );
    let (all, pages) = api
        .list_all(&fleet(
            &format!("{}/commits", assignment_path("infra")),
            &[("$top", "1")],
        ))
        .await;
    let listed: Vec<&str> = all.iter().map(|c| c["commit"].as_str().unwrap()).collect();
    assert_eq!(
        (listed, pages),
        (vec![broken.as_str(), second.as_str(), first.as_str()], 3)
    );
    let refused = api
        .get(&fleet(
            &format!("{}/commits", assignment_path("infra")),
            &[("$top", "101")],
        ))
        .await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{refused:?}");
    let missing = api
        .get(&fleet(&format!("{}/commits", assignment_path("nope")), &[]))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND, "{missing:?}");
    for (_, agent) in agents {
        agent.stop().await;
    }
}

on_both_backends!(
    a_commit_failing_on_most_clusters_halts_both_assignments_reading_its_repository_and_no_other,
    breaker_case
);
async fn breaker_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (repository, _git, url) = served_repository().await;
    let elsewhere = Repository::new(&[("infra/ns.yaml", MANIFEST)]);
    let other_git = FileServer::start(elsewhere.served_root()).await;
    let other_url = format!("{}/repo.git", other_git.base);
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for name in CLUSTERS {
        agents.push(RunningAgent::start(registered(&api, name, dir.path()).await).await);
    }
    // the breaker is set on one of them; the other rolls out in batches
    assign(
        &api,
        "infra",
        assignment(
            &url,
            "infra",
            "./infra",
            json!({"circuitBreaker": {"maxFailurePercent": 50, "minClusters": 2}}),
        ),
    )
    .await;
    assign(
        &api,
        "apps",
        assignment(&url, "apps", "./apps", json!({"rollout": {"batchSize": 1}})),
    )
    .await;
    assign(
        &api,
        "elsewhere",
        assignment(&other_url, "elsewhere", "./infra", json!({})),
    )
    .await;
    for name in ["infra", "apps", "elsewhere"] {
        until_reported(&api, name, "every cluster compliant", |t| {
            t.len() == 3 && t.values().all(|(_, s)| s == "Compliant")
        })
        .await;
    }
    let status = |name: &'static str| {
        let api = &api;
        async move { api.get(&fleet(&assignment_path(name), &[])).await.body["properties"]["status"].clone() }
    };
    for name in ["infra", "elsewhere"] {
        assert!(
            status(name).await["rollout"].is_null(),
            "{name} has nothing to halt yet"
        );
    }
    // apps staged its first deployment, cluster by cluster, and is done
    let deadline = Instant::now() + Duration::from_secs(30);
    while status("apps").await["rollout"]["state"] != "Completed" {
        assert!(Instant::now() < deadline, "apps completed: {}", status("apps").await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // a setting out of range is refused where it is, and changes nothing
    let before = api.get(&fleet(&assignment_path("infra"), &[])).await;
    for (breaker, target) in [
        (
            json!({"maxFailurePercent": 100}),
            "properties.circuitBreaker.maxFailurePercent",
        ),
        (
            json!({"maxFailurePercent": 10, "minClusters": 0}),
            "properties.circuitBreaker.minClusters",
        ),
        (json!({"maxFailurePercent": -1}), "circuitBreaker"),
        (json!({"maxFailurePercent": 10, "shareOf": "all"}), "shareOf"),
    ] {
        let refused = api
            .call(
                Method::PUT,
                &fleet(&assignment_path("infra"), &[]),
                Some(assignment(&url, "infra", "./infra", json!({"circuitBreaker": breaker}))),
            )
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{breaker}: {refused:?}");
        assert!(refused.body.to_string().contains(target), "{breaker}: {refused:?}");
    }
    assert_eq!(
        api.get(&fleet(&assignment_path("infra"), &[])).await.body,
        before.body,
        "nothing changed"
    );

    // a commit that breaks the infra kustomization on every cluster
    let broken = format!(
        "main@sha1:{}",
        repository.commit(&[("infra/kustomization.yaml", BROKEN)], "broken")
    );
    until_reported(&api, "infra", "every cluster failing at the broken commit", |t| {
        on(t, &broken) == 3 && t.values().all(|(_, s)| s == "Non-Compliant")
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let halted = loop {
        let (infra, apps) = (status("infra").await, status("apps").await);
        if infra["rollout"]["state"] == "Halted" && apps["rollout"]["state"] == "Halted" {
            break [infra, apps];
        }
        assert!(Instant::now() < deadline, "both halted: {infra} {apps}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for status in &halted {
        let message = status["rollout"]["message"].as_str().unwrap();
        for part in [broken.as_str(), "assignment 'infra'", "more than the 50%"] {
            assert!(message.contains(part), "{message} lacks {part}");
        }
        // the share when it tripped: past 50% of at least minClusters (the agents report in their own time)
        let (failed, applied) = message
            .split_once(" failed on ")
            .and_then(|(_, rest)| rest.split_once(" clusters that applied it"))
            .and_then(|(counts, _)| counts.split_once(" of the "))
            .map(|(f, a)| (f.parse::<u64>().unwrap(), a.parse::<u64>().unwrap()))
            .unwrap_or_else(|| panic!("the share in {message}"));
        assert!((2..=3).contains(&applied) && failed * 100 > 50 * applied, "{message}");
        assert!(message.contains(&format!("({}%)", failed * 100 / applied)), "{message}");
    }
    assert!(
        status("elsewhere").await["rollout"].is_null(),
        "another repository goes on"
    );
    for agent in agents {
        agent.stop().await;
    }
}

on_both_backends!(
    a_cluster_and_a_configuration_answer_what_they_ran_at_a_past_time_and_at_which_commit,
    as_of_case
);
async fn as_of_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let agent = RunningAgent::start(registered(&api, "a", dir.path()).await).await;
    let cluster = cluster_path("s", "rg", "a");
    let before = Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    for name in ["web", "jobs"] {
        let body = json!({"properties": {
            "namespace": "flux-system",
            "gitRepository": {"url": url, "repositoryRef": {"branch": "main"}, "syncIntervalInSeconds": 1},
            "kustomizations": {"k": {"path": "./infra"}}
        }});
        assert!(api.put_config(&cluster, name, body).await.status.is_success());
    }
    let first = format!("main@sha1:{}", repository.head());
    for name in ["web", "jobs"] {
        crate::common::agents::until(&api, &configuration("a", name), "compliant", |p| {
            p["complianceState"] == "Compliant" && p["sourceSyncedCommitId"] == first.as_str()
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    let on_first = Utc::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let second = format!(
        "main@sha1:{}",
        repository.commit(&[("infra/more.yaml", MANIFEST)], "more")
    );
    crate::common::agents::until(&api, &configuration("a", "web"), "at the second commit", |p| {
        p["complianceState"] == "Compliant" && p["sourceSyncedCommitId"] == second.as_str()
    })
    .await;
    let deleted = api.call(Method::DELETE, &configuration("a", "jobs"), None).await;
    assert!(deleted.status.is_success(), "{deleted:?}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.get(&configuration("a", "jobs")).await.status != StatusCode::NOT_FOUND {
        assert!(Instant::now() < deadline, "the agent removes jobs");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;

    let as_of = |at: DateTime<Utc>| {
        let api = &api;
        let cluster = cluster.clone();
        async move {
            api.get(&fleet(
                &format!("{cluster}/asOf"),
                &[("time", &at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))],
            ))
            .await
        }
    };
    let then = as_of(on_first).await;
    assert_eq!(then.status, StatusCode::OK, "{then:?}");
    let ran: Vec<(String, String, String)> = then.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["configurationName"].as_str().unwrap().to_owned(),
                e["commit"].as_str().unwrap_or("none").to_owned(),
                e["complianceState"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        ran,
        [
            ("jobs".to_owned(), first.clone(), "Compliant".to_owned()),
            ("web".to_owned(), first.clone(), "Compliant".to_owned())
        ]
    );
    let now = as_of(Utc::now()).await;
    let names: Vec<(&str, &str)> = now.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["configurationName"].as_str().unwrap(), e["commit"].as_str().unwrap()))
        .collect();
    assert_eq!(names, [("web", second.as_str())], "jobs was deleted");
    assert!(
        as_of(before).await.body["value"].as_array().unwrap().is_empty(),
        "nothing yet"
    );
    // a page at a time
    let (items, pages) = api
        .list_all(&fleet(
            &format!("{cluster}/asOf"),
            &[("time", &on_first.to_rfc3339()), ("$top", "1")],
        ))
        .await;
    assert_eq!((items.len(), pages), (2, 2));

    // one configuration
    let jobs = format!(
        "{}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/jobs",
        cluster
    );
    let was = api
        .get(&fleet(&format!("{jobs}/asOf"), &[("time", &on_first.to_rfc3339())]))
        .await;
    assert_eq!(was.status, StatusCode::OK, "{was:?}");
    assert_eq!(was.body["commit"], first.as_str());
    assert!(was.body["generation"].as_i64().is_some());
    let gone = api
        .get(&fleet(&format!("{jobs}/asOf"), &[("time", &Utc::now().to_rfc3339())]))
        .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{gone:?}");
    assert!(gone.body.to_string().contains("did not exist"), "{gone:?}");

    // outside the history, or no time at all: a clear 400
    let long_ago = (Utc::now() - chrono::Duration::days(31)).to_rfc3339();
    let future = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    for (query, says) in [
        (vec![("time", long_ago.as_str())], "before the history kept"),
        (vec![("time", future.as_str())], "in the future"),
        (vec![("time", "last tuesday")], "RFC 3339"),
        (vec![], "give the time"),
    ] {
        for path in [format!("{cluster}/asOf"), format!("{jobs}/asOf")] {
            let refused = api.get(&fleet(&path, &query)).await;
            assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{path} {query:?}: {refused:?}");
            assert_eq!(refused.body["error"]["code"], "InvalidParameter");
            assert!(refused.body.to_string().contains(says), "{path} {query:?}: {refused:?}");
        }
    }
    let wrong_version = api
        .get(&versioned(
            &format!("{cluster}/asOf"),
            CLUSTER_API,
            &[("time", &on_first.to_rfc3339())],
        ))
        .await;
    assert_eq!(wrong_version.status, StatusCode::BAD_REQUEST, "{wrong_version:?}");
    agent.stop().await;
}
