//! End-to-end: the fleet compliance summary over real HTTP, its counts checked against ground truth the test
//! computes itself from the configuration and cluster lists, with agents reporting through the real agent API.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use fluxplane_api::auth::Role;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const FLEET_API: &str = "2026-01-01";

fn summary_url(api: &Api, scope: &str, query: &[(&str, &str)]) -> String {
    let mut url =
        reqwest::Url::parse(&api.url(&format!("{scope}/providers/Fluxplane.Fleet/complianceSummary"))).expect("a URL");
    url.query_pairs_mut().append_pair("api-version", FLEET_API);
    for (k, v) in query {
        url.query_pairs_mut().append_pair(k, v);
    }
    url.into()
}

/// One configuration instance as the ordinary lists answer it: the ground truth.
#[derive(Debug, Clone)]
struct Instance {
    cluster: String,
    connectivity: String,
    env: Option<String>,
    name: String,
    compliance: String,
    provisioning: String,
    freshness: String,
}

async fn ground_truth(api: &Api, scope: &str) -> Vec<Instance> {
    let (clusters, _) = api
        .list_all(&with_version(
            &format!("{scope}/providers/Microsoft.Kubernetes/connectedClusters"),
            CLUSTER_API,
        ))
        .await;
    let mut instances = Vec::new();
    for cluster in clusters {
        let id = cluster["id"].as_str().unwrap();
        let (configurations, _) = api
            .list_all(&with_version(
                &format!("{id}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations"),
                FLUX_API,
            ))
            .await;
        for c in configurations {
            instances.push(Instance {
                cluster: id.to_owned(),
                connectivity: cluster["properties"]["connectivityStatus"].as_str().unwrap().to_owned(),
                env: cluster["tags"]["env"].as_str().map(str::to_owned),
                name: c["name"].as_str().unwrap().to_owned(),
                compliance: c["properties"]["complianceState"].as_str().unwrap().to_owned(),
                provisioning: c["properties"]["provisioningState"].as_str().unwrap().to_owned(),
                freshness: c["properties"]["statusFreshness"]
                    .as_str()
                    .unwrap()
                    .to_ascii_lowercase(),
            });
        }
    }
    instances
}

/// The groups the truth implies: key -> (count, clusters, fresh, stale, offline).
fn expected(instances: &[Instance], key: impl Fn(&Instance) -> String) -> BTreeMap<String, (i64, i64, i64, i64, i64)> {
    let mut groups: BTreeMap<String, (i64, std::collections::BTreeSet<String>, [i64; 3])> = BTreeMap::new();
    for i in instances {
        let entry = groups.entry(key(i)).or_default();
        entry.0 += 1;
        entry.1.insert(i.cluster.clone());
        entry.2[["fresh", "stale", "offline"]
            .iter()
            .position(|f| *f == i.freshness)
            .unwrap()] += 1;
    }
    groups
        .into_iter()
        .map(|(k, (count, clusters, f))| (k, (count, clusters.len() as i64, f[0], f[1], f[2])))
        .collect()
}

fn answered(summary: &Value) -> BTreeMap<String, (i64, i64, i64, i64, i64)> {
    summary["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            let n = |v: &Value| v.as_i64().unwrap();
            (
                g["key"].as_str().unwrap_or("(none)").to_owned(),
                (
                    n(&g["count"]),
                    n(&g["clusters"]),
                    n(&g["freshness"]["fresh"]),
                    n(&g["freshness"]["stale"]),
                    n(&g["freshness"]["offline"]),
                ),
            )
        })
        .collect()
}

on_both_backends!(the_summary_counts_what_the_lists_show, summary_case);
async fn summary_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for (i, env) in ["prod", "prod", "dev", "prod"].iter().enumerate() {
        agents.push(reports::agent_cluster(&api, &format!("a{i}"), env, dir.path()).await);
    }
    // clusters whose agents never call: their configurations are offline
    for name in ["b0", "b1"] {
        let path = with_version(&cluster_path("s", "rg-b", name), CLUSTER_API);
        let mut body = cluster_body();
        body["tags"] = json!({"env": "prod"});
        assert!(api.call(Method::PUT, &path, Some(body)).await.status.is_success());
    }
    for (rg, names) in [("rg-a", vec!["a0", "a1", "a2", "a3"]), ("rg-b", vec!["b0", "b1"])] {
        for name in names {
            let cluster = cluster_path("s", rg, name);
            for configuration in ["base", "extra"] {
                let created = api.put_config(&cluster, configuration, git_config_body()).await;
                assert!(created.status.is_success(), "{created:?}");
            }
        }
    }
    reports::report(&agents[0], &[], &[]).await;
    reports::report(&agents[1], &["base"], &[]).await;
    reports::report(&agents[2], &[], &["extra"]).await;
    // a3 never reports: connected (its registration was no heartbeat, but the poll below is) and stale
    agents[3].desired_state(None, Duration::ZERO).await.unwrap();

    let truth = ground_truth(&api, "/subscriptions/s").await;
    assert_eq!(truth.len(), 12);
    let get = |query: Vec<(&'static str, &'static str)>, scope: &'static str| {
        let api = &api;
        async move {
            let answer = api.get(&summary_url(api, scope, &query)).await;
            assert_eq!(answer.status, StatusCode::OK, "{query:?}: {answer:?}");
            answer.body
        }
    };

    let whole = get(vec![], "/subscriptions/s").await;
    assert_eq!(whole["groupBy"], "complianceState");
    assert_eq!(whole["count"], 12);
    assert_eq!(whole["clusters"], 6);
    assert_eq!(answered(&whole), expected(&truth, |i| i.compliance.clone()));
    let total = expected(&truth, |_| "all".into())["all"];
    assert_eq!(
        (
            whole["freshness"]["fresh"].as_i64(),
            whole["freshness"]["stale"].as_i64(),
            whole["freshness"]["offline"].as_i64()
        ),
        (Some(total.2), Some(total.3), Some(total.4))
    );
    assert!(
        total.2 > 0 && total.3 > 0 && total.4 > 0,
        "the fleet has every freshness: {total:?}"
    );

    for (group_by, key) in [
        (
            "provisioningState",
            (|i: &Instance| i.provisioning.clone()) as fn(&Instance) -> String,
        ),
        ("freshness", |i| i.freshness.clone()),
        ("connectivityStatus", |i| i.connectivity.clone()),
        ("cluster", |i| i.cluster.clone()),
        ("configuration", |i| i.name.clone()),
    ] {
        let summary = get(vec![("groupBy", group_by)], "/subscriptions/s").await;
        assert_eq!(answered(&summary), expected(&truth, key), "groupBy={group_by}");
    }

    // filters: tags, state, and a resource group's scope
    let prod: Vec<Instance> = truth
        .iter()
        .filter(|i| i.env.as_deref() == Some("prod"))
        .cloned()
        .collect();
    let summary = get(vec![("tagSelector", "env=prod")], "/subscriptions/s").await;
    assert_eq!(answered(&summary), expected(&prod, |i| i.compliance.clone()));
    let summary = get(
        vec![
            ("tagSelector", "env in (prod, dev)"),
            ("complianceState", "non-compliant"),
            ("groupBy", "cluster"),
        ],
        "/subscriptions/s",
    )
    .await;
    let failing: Vec<Instance> = truth
        .iter()
        .filter(|i| i.compliance == "Non-Compliant")
        .cloned()
        .collect();
    assert_eq!(answered(&summary), expected(&failing, |i| i.cluster.clone()));
    assert_eq!(summary["count"], 1);
    let in_b: Vec<Instance> = truth.iter().filter(|i| i.cluster.contains("/rg-b/")).cloned().collect();
    let summary = get(vec![], "/subscriptions/s/resourceGroups/rg-b").await;
    assert_eq!(answered(&summary), expected(&in_b, |i| i.compliance.clone()));

    // a cluster group and a policy assignment narrow and group too
    let group = format!("/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups/dev?api-version={FLEET_API}");
    let created = api
        .call(
            Method::PUT,
            &group,
            Some(json!({"properties": {"selector": {"matchLabels": {"env": "dev"}}}})),
        )
        .await;
    assert!(created.status.is_success(), "{created:?}");
    let summary = get(vec![("clusterGroup", "dev")], "/subscriptions/s").await;
    let dev: Vec<Instance> = truth
        .iter()
        .filter(|i| i.env.as_deref() == Some("dev"))
        .cloned()
        .collect();
    assert_eq!(answered(&summary), expected(&dev, |i| i.compliance.clone()));
    let summary = get(vec![("groupBy", "clusterGroup")], "/subscriptions/s").await;
    assert_eq!(
        answered(&summary),
        expected(&dev, |_| "/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups/dev"
            .into()),
        "only clusters in a group are counted by group"
    );
    let summary = get(vec![("groupBy", "policyAssignment")], "/subscriptions/s").await;
    assert_eq!(
        answered(&summary),
        expected(&truth, |_| "(none)".into()),
        "no assignment manages any"
    );
}

on_both_backends!(
    the_summary_respects_the_callers_scope_and_refuses_bad_input,
    summary_scope_case
);
async fn summary_scope_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    for (rg, name) in [("rg-a", "a0"), ("rg-b", "b0"), ("rg-b", "b1")] {
        api.put_cluster("s", rg, name).await;
        let created = api
            .put_config(&cluster_path("s", rg, name), "base", git_config_body())
            .await;
        assert!(created.status.is_success());
    }
    let reader = api
        .server
        .token("reader-b", &[(Role::Reader, "/subscriptions/s/resourceGroups/rg-b")]);
    let answer = api
        .call_as(&reader, Method::GET, &summary_url(&api, "/subscriptions/s", &[]), None)
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    assert_eq!(
        answer.body["count"], 2,
        "a resource group's reader sees its clusters only"
    );
    let answer = api
        .call_as(
            &reader,
            Method::GET,
            &summary_url(&api, "/subscriptions/s/resourceGroups/rg-a", &[]),
            None,
        )
        .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);

    for (query, target) in [
        (vec![("groupBy", "colour")], "groupBy"),
        (vec![("tagSelector", "env in (a")], "tagSelector"),
        (vec![("tagSelector", "-bad-=x")], "tagSelector"),
        (vec![("complianceState", "Green")], "complianceState"),
        (vec![("clusterGroup", "missing")], "clusterGroup"),
        (
            vec![(
                "policyAssignment",
                "/subscriptions/other/providers/Fluxplane.Fleet/policyAssignments/x",
            )],
            "policyAssignment",
        ),
    ] {
        let answer = api.get(&summary_url(&api, "/subscriptions/s", &query)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{query:?}: {answer:?}");
        assert!(
            answer.body["error"].to_string().contains(target),
            "{query:?}: {}",
            answer.body
        );
    }
    let unknown = api
        .get(&summary_url(&api, "/subscriptions/s", &[]).replace(FLEET_API, "2020-01-01"))
        .await;
    assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
}
