//! End-to-end: `Fluxplane.Fleet/policyAssignments` give every matching cluster a configuration rendered from a
//! template, follow clusters that join or leave through their tags in the same write, never overwrite what they
//! do not manage, and refuse to write a configuration another assignment writes.

use crate::common::*;
use fluxplane_api::auth::Role;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const FLEET_API: &str = "2026-01-01";
const SUBSCRIPTION: &str = "/subscriptions/s";

fn fleet_path(scope: &str, kind: &str, name: &str) -> String {
    with_version(&format!("{scope}/providers/Fluxplane.Fleet/{kind}/{name}"), FLEET_API)
}

fn assignment_path(name: &str) -> String {
    fleet_path(SUBSCRIPTION, "policyAssignments", name)
}

async fn tagged_cluster(api: &Api, name: &str, tags: Value) {
    let body = json!({"location": "westeurope", "tags": tags, "properties": {"agentPublicKeyCertificate": "a2V5"}});
    let path = with_version(&cluster_path("s", "rg", name), CLUSTER_API);
    let answer = api.call(Method::PUT, &path, Some(body)).await;
    assert!(answer.status.is_success(), "{answer:?}");
}

async fn retag(api: &Api, name: &str, tags: Value) {
    let path = with_version(&cluster_path("s", "rg", name), CLUSTER_API);
    let answer = api.call(Method::PATCH, &path, Some(json!({"tags": tags}))).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
}

/// The configuration `name` of the cluster, as read through the ARM API.
async fn configuration(api: &Api, cluster: &str, name: &str) -> Answer {
    api.get(&with_version(
        &config_path(&cluster_path("s", "rg", cluster), name),
        FLUX_API,
    ))
    .await
}

fn assignment(selector: Value, branch: &str) -> Value {
    json!({"properties": {
        "selector": selector,
        "configurationName": "baseline",
        "configurationTemplate": {
            "gitRepository": {"url": "https://github.com/org/fleet",
                              "repositoryRef": {"branch": "[parameters('branch')]"}},
            "kustomizations": {"infra": {"path": "./infra"}}
        },
        "parameters": {"branch": branch}
    }})
}

fn prod() -> Value {
    json!({"matchLabels": {"env": "prod"}})
}

on_both_backends!(
    an_assignment_gives_every_matching_cluster_its_configuration_and_follows_tag_changes,
    apply_case
);
async fn apply_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "prod-1", json!({"env": "prod"})).await;
    tagged_cluster(&api, "prod-2", json!({"env": "prod"})).await;
    tagged_cluster(&api, "dev-1", json!({"env": "dev"})).await;

    let created = api
        .call(
            Method::PUT,
            &assignment_path("baseline"),
            Some(assignment(prod(), "main")),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let id = "/subscriptions/s/providers/Fluxplane.Fleet/policyAssignments/baseline";
    assert_eq!(created.body["id"], id);
    assert_eq!(created.body["properties"]["status"]["matchedClusters"], 2);
    assert_eq!(created.body["properties"]["status"]["managedConfigurations"], 2);
    assert_eq!(created.body["properties"]["enforcementMode"], "Default");
    assert_eq!(created.body["properties"]["onUnmatch"], "Delete");
    for cluster in ["prod-1", "prod-2"] {
        let config = configuration(&api, cluster, "baseline").await;
        assert_eq!(config.status, StatusCode::OK, "{cluster}: {config:?}");
        assert_eq!(config.body["properties"]["managedBy"], id);
        assert_eq!(
            config.body["properties"]["gitRepository"]["repositoryRef"]["branch"],
            "main"
        );
        assert_eq!(config.body["properties"]["provisioningState"], "Creating");
    }
    assert_eq!(
        configuration(&api, "dev-1", "baseline").await.status,
        StatusCode::NOT_FOUND
    );

    // a new parameter value reaches every managed configuration as a new generation
    let store = &api.server.state.store;
    let prod_1 = store.get_cluster("s/rg/prod-1").await.unwrap().unwrap();
    let before = store.get_configuration(prod_1.id, "baseline").await.unwrap().unwrap();
    let same = api
        .call(
            Method::PUT,
            &assignment_path("baseline"),
            Some(assignment(prod(), "main")),
        )
        .await;
    assert_eq!(same.status, StatusCode::OK);
    let unchanged = store.get_configuration(prod_1.id, "baseline").await.unwrap().unwrap();
    assert_eq!(
        unchanged.generation, before.generation,
        "nothing to change, no new generation"
    );
    api.call(
        Method::PUT,
        &assignment_path("baseline"),
        Some(assignment(prod(), "release")),
    )
    .await;
    let after = store.get_configuration(prod_1.id, "baseline").await.unwrap().unwrap();
    assert_eq!(after.generation, before.generation + 1);
    let config = configuration(&api, "prod-2", "baseline").await;
    assert_eq!(
        config.body["properties"]["gitRepository"]["repositoryRef"]["branch"],
        "release"
    );

    // a cluster that registers with matching tags has the configuration as soon as its registration answers
    tagged_cluster(&api, "prod-3", json!({"env": "prod"})).await;
    assert_eq!(configuration(&api, "prod-3", "baseline").await.status, StatusCode::OK);
    // one whose tags stop matching loses it (onUnmatch Delete: through its agent), one that starts gains it
    retag(&api, "prod-1", json!({"env": "dev"})).await;
    assert_eq!(
        configuration(&api, "prod-1", "baseline").await.body["properties"]["provisioningState"],
        "Deleting"
    );
    retag(&api, "dev-1", json!({"env": "prod"})).await;
    assert_eq!(
        configuration(&api, "dev-1", "baseline").await.body["properties"]["managedBy"],
        id
    );
    // and coming back restores a configuration being deleted
    retag(&api, "prod-1", json!({"env": "prod"})).await;
    let back = configuration(&api, "prod-1", "baseline").await;
    assert_eq!(back.body["properties"]["provisioningState"], "Updating");
    let status = api.get(&assignment_path("baseline")).await;
    assert_eq!(status.body["properties"]["status"]["matchedClusters"], 4);
    assert_eq!(status.body["properties"]["status"]["managedConfigurations"], 4);
}

on_both_backends!(what_an_assignment_does_not_manage_is_never_overwritten, conflict_case);
async fn conflict_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "prod-1", json!({"env": "prod"})).await;
    tagged_cluster(&api, "prod-2", json!({"env": "prod"})).await;
    let own = api
        .put_config(&cluster_path("s", "rg", "prod-1"), "baseline", git_config_body())
        .await;
    assert_eq!(own.status, StatusCode::CREATED);
    let created = api
        .call(
            Method::PUT,
            &assignment_path("baseline"),
            Some(assignment(prod(), "main")),
        )
        .await;
    let status = &created.body["properties"]["status"];
    assert_eq!(status["matchedClusters"], 2);
    assert_eq!(status["managedConfigurations"], 1);
    assert_eq!(status["conflictCount"], 1);
    assert_eq!(
        status["conflicts"][0]["target"],
        "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/prod-1"
    );
    let kept = configuration(&api, "prod-1", "baseline").await;
    assert_eq!(kept.body["properties"]["managedBy"], Value::Null);
    assert_eq!(
        kept.body["properties"]["gitRepository"]["url"], "https://github.com/Azure/arc-k8s-demo",
        "the hand-written configuration is as it was"
    );

    // a second assignment writing the same configuration on the same clusters is refused; elsewhere it is fine
    let overlapping = api
        .call(Method::PUT, &assignment_path("other"), Some(assignment(prod(), "main")))
        .await;
    assert_eq!(overlapping.status, StatusCode::CONFLICT, "{overlapping:?}");
    assert!(
        overlapping.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("'baseline'")
    );
    assert_eq!(api.get(&assignment_path("other")).await.status, StatusCode::NOT_FOUND);
    let elsewhere = assignment(json!({"matchLabels": {"env": "dev"}}), "main");
    assert_eq!(
        api.call(Method::PUT, &assignment_path("other"), Some(elsewhere))
            .await
            .status,
        StatusCode::CREATED
    );
}

on_both_backends!(
    an_audit_only_assignment_writes_nothing_and_deleting_one_follows_on_unmatch,
    audit_and_delete_case
);
async fn audit_and_delete_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "prod-1", json!({"env": "prod"})).await;
    tagged_cluster(&api, "prod-2", json!({"env": "prod"})).await;
    let mut audit = assignment(prod(), "main");
    audit["properties"]["enforcementMode"] = json!("DoNotEnforce");
    let created = api.call(Method::PUT, &assignment_path("audit"), Some(audit)).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["properties"]["status"]["matchedClusters"], 2);
    assert_eq!(created.body["properties"]["status"]["managedConfigurations"], 0);
    assert_eq!(
        configuration(&api, "prod-1", "baseline").await.status,
        StatusCode::NOT_FOUND
    );
    tagged_cluster(&api, "prod-3", json!({"env": "prod"})).await;
    assert_eq!(
        configuration(&api, "prod-3", "baseline").await.status,
        StatusCode::NOT_FOUND
    );

    // enforced with onUnmatch Orphan: deleting the assignment leaves its configurations, unmanaged
    let mut orphaning = assignment(prod(), "main");
    orphaning["properties"]["onUnmatch"] = json!("Orphan");
    let enforced = api.call(Method::PUT, &assignment_path("audit"), Some(orphaning)).await;
    assert_eq!(enforced.body["properties"]["status"]["managedConfigurations"], 3);
    assert_eq!(
        api.call(Method::DELETE, &assignment_path("audit"), None).await.status,
        StatusCode::OK
    );
    let orphan = configuration(&api, "prod-1", "baseline").await;
    assert_eq!(orphan.status, StatusCode::OK);
    assert_eq!(orphan.body["properties"]["managedBy"], Value::Null);
    assert_eq!(orphan.body["properties"]["provisioningState"], "Creating");

    // with onUnmatch Delete (the default): deleting it deletes them through their agents
    let again = api
        .call(
            Method::PUT,
            &assignment_path("baseline-2"),
            Some(assignment(
                json!({"matchLabels": {"env": "prod"},
            "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}),
                "main",
            )),
        )
        .await;
    assert_eq!(
        again.body["properties"]["status"]["conflictCount"], 3,
        "the orphans are not its own"
    );
    let mut fresh = assignment(prod(), "main");
    fresh["properties"]["configurationName"] = json!("apps");
    api.call(Method::PUT, &assignment_path("apps"), Some(fresh)).await;
    assert_eq!(configuration(&api, "prod-2", "apps").await.status, StatusCode::OK);
    assert_eq!(
        api.call(Method::DELETE, &assignment_path("apps"), None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        configuration(&api, "prod-2", "apps").await.body["properties"]["provisioningState"],
        "Deleting"
    );
    assert_eq!(
        api.call(Method::DELETE, &assignment_path("apps"), None).await.status,
        StatusCode::NO_CONTENT
    );
}

on_both_backends!(assignments_through_a_group_follow_its_selector, group_case);
async fn group_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "eu-1", json!({"region": "eu"})).await;
    tagged_cluster(&api, "us-1", json!({"region": "us"})).await;
    let group = fleet_path(SUBSCRIPTION, "clusterGroups", "eu");
    api.call(
        Method::PUT,
        &group,
        Some(json!({"properties": {"selector": {"matchLabels": {"region": "eu"}}}})),
    )
    .await;
    let mut body = assignment(json!(null), "main");
    let properties = body["properties"].as_object_mut().unwrap();
    properties.remove("selector");
    properties.insert(
        "clusterGroupId".into(),
        json!("/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups/eu"),
    );
    let created = api.call(Method::PUT, &assignment_path("eu-baseline"), Some(body)).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(configuration(&api, "eu-1", "baseline").await.status, StatusCode::OK);
    assert_eq!(
        configuration(&api, "us-1", "baseline").await.status,
        StatusCode::NOT_FOUND
    );
    // the group takes in the US too: the assignment follows in the same write
    api.call(
        Method::PUT,
        &group,
        Some(json!({"properties": {"selector": {"matchExpressions": [{"key": "region", "operator": "Exists"}]}}})),
    )
    .await;
    assert_eq!(configuration(&api, "us-1", "baseline").await.status, StatusCode::OK);
    let refused = api.call(Method::DELETE, &group, None).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
}

on_both_backends!(bad_assignments_get_clear_errors_and_change_nothing, errors_case);
async fn errors_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "prod-1", json!({"env": "prod"})).await;
    let path = assignment_path("bad");
    let mut both = assignment(prod(), "main");
    both["properties"]["clusterGroupId"] = json!("/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups/g");
    let mut unknown_parameter = assignment(prod(), "main");
    unknown_parameter["properties"]["parameters"] = json!({});
    let mut with_secret = assignment(prod(), "main");
    with_secret["properties"]["configurationTemplate"]["configurationProtectedSettings"] = json!({"k": "dg=="});
    let mut invalid_config = assignment(prod(), "main");
    invalid_config["properties"]["configurationTemplate"]["gitRepository"]["url"] = json!("ftp://nope");
    let mut missing_group = assignment(json!(null), "main");
    missing_group["properties"].as_object_mut().unwrap().remove("selector");
    missing_group["properties"]["clusterGroupId"] =
        json!("/subscriptions/s/providers/Fluxplane.Fleet/clusterGroups/none");
    let mut bad_mode = assignment(prod(), "main");
    bad_mode["properties"]["enforcementMode"] = json!("Sometimes");
    let with_path = |path: &str| {
        let mut body = assignment(prod(), "main");
        body["properties"]["configurationTemplate"]["kustomizations"]["infra"]["path"] = json!(path);
        body
    };
    let mut parameter_reading_parameters = assignment(prod(), "main");
    parameter_reading_parameters["properties"]["parameters"]["other"] = json!("[parameters('branch')]");
    const PATH: &str = "properties.configurationTemplate.kustomizations.infra.path";
    let cases = [
        (both, "properties.selector"),
        (
            unknown_parameter,
            "properties.configurationTemplate.gitRepository.repositoryRef.branch",
        ),
        (with_secret, "properties.configurationTemplate"),
        (invalid_config, "properties.configurationTemplate.gitRepository.url"),
        (missing_group, "properties.clusterGroupId"),
        (bad_mode, "properties.enforcementMode"),
    ];
    // template expressions: an unknown function, bad syntax, a wrong number of arguments, an expression inside a
    // longer string, a constant part that fails, a parameter reading parameters: each named where it is
    let expressions = [
        (
            with_path("[clusterName()]"),
            PATH,
            "the template function 'clusterName' is not found",
        ),
        (with_path("[concat('./', cluster().name]"), PATH, "expected ',' or ')'"),
        (
            with_path("[toLower()]"),
            PATH,
            "expects exactly 1 parameter(s), but was given 0",
        ),
        (
            with_path("./[cluster().name]"),
            PATH,
            "an expression must be the whole string",
        ),
        (
            with_path("[concat(cluster().name, int('x'))]"),
            PATH,
            "cannot convert 'x' to an integer",
        ),
        (
            parameter_reading_parameters,
            "properties.parameters.other",
            "cannot use parameters()",
        ),
    ];
    let cases = cases
        .into_iter()
        .map(|(body, target)| (body, target, ""))
        .chain(expressions);
    for (body, target, message) in cases {
        let answer = api.call(Method::PUT, &path, Some(body.clone())).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {answer:?}");
        let named: Vec<(&str, &str)> = std::iter::once(&answer.body["error"])
            .chain(answer.body["error"]["details"].as_array().into_iter().flatten())
            .filter_map(|d| Some((d["target"].as_str()?, d["message"].as_str()?)))
            .collect();
        assert!(
            named.iter().any(|(t, m)| *t == target && m.contains(message)),
            "{target}: {message} not in {named:?}: {answer:?}"
        );
        let plan = api.call(Method::POST, &plan_path("bad"), Some(body.clone())).await;
        assert_eq!(
            plan.status,
            StatusCode::BAD_REQUEST,
            "a plan refuses it as well: {plan:?}"
        );
    }
    assert_eq!(
        api.get(&path).await.status,
        StatusCode::NOT_FOUND,
        "nothing was written"
    );
    assert_eq!(
        configuration(&api, "prod-1", "baseline").await.status,
        StatusCode::NOT_FOUND
    );
}

on_both_backends!(assignments_need_the_owner_role_at_their_scope, auth_case);
async fn auth_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "prod-1", json!({"env": "prod"})).await;
    let in_rg = "/subscriptions/s/resourceGroups/rg";
    let path = fleet_path(in_rg, "policyAssignments", "baseline");
    let contributor = api.server.token("contributor", &[(Role::Contributor, SUBSCRIPTION)]);
    let owner = api.server.token("owner", &[(Role::Owner, in_rg)]);
    let reader = api.server.token("reader", &[(Role::Reader, in_rg)]);
    let body = assignment(prod(), "main");
    let refused = api.call_as(&contributor, Method::PUT, &path, Some(body.clone())).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    assert_eq!(
        configuration(&api, "prod-1", "baseline").await.status,
        StatusCode::NOT_FOUND
    );
    let created = api.call_as(&owner, Method::PUT, &path, Some(body.clone())).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["properties"]["status"]["managedConfigurations"], 1);
    assert_eq!(
        api.call_as(&reader, Method::GET, &path, None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call_as(&reader, Method::DELETE, &path, None).await.status,
        StatusCode::FORBIDDEN
    );
    let at_subscription = assignment_path("baseline");
    assert_eq!(
        api.call_as(&owner, Method::PUT, &at_subscription, Some(body))
            .await
            .status,
        StatusCode::FORBIDDEN,
        "an Owner of a resource group is no Owner of its subscription"
    );
}

fn plan_path(name: &str) -> String {
    with_version(
        &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/policyAssignments/{name}/plan"),
        FLEET_API,
    )
}

fn config_id(cluster: &str, name: &str) -> String {
    config_path(&cluster_path("s", "rg", cluster), name)
}

on_both_backends!(a_plan_writes_nothing_and_says_what_applying_then_does, plan_case);
async fn plan_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "prod-1", json!({"env": "prod"})).await;
    tagged_cluster(&api, "prod-2", json!({"env": "prod", "tier": "gold"})).await;
    tagged_cluster(&api, "dev-1", json!({"env": "dev"})).await;
    api.put_config(&cluster_path("s", "rg", "dev-1"), "baseline", git_config_body())
        .await;

    let first = api
        .call(Method::POST, &plan_path("baseline"), Some(assignment(prod(), "main")))
        .await;
    assert_eq!(first.status, StatusCode::OK, "{first:?}");
    assert_eq!(
        first.body["enteringClusters"],
        json!([cluster_path("s", "rg", "prod-1"), cluster_path("s", "rg", "prod-2")])
    );
    assert_eq!(
        first.body["create"],
        json!([config_id("prod-1", "baseline"), config_id("prod-2", "baseline")])
    );
    assert_eq!(first.body["leavingClusters"], json!([]));
    assert_eq!(
        api.get(&assignment_path("baseline")).await.status,
        StatusCode::NOT_FOUND,
        "the plan wrote nothing"
    );
    assert_eq!(
        configuration(&api, "prod-1", "baseline").await.status,
        StatusCode::NOT_FOUND
    );
    api.call(
        Method::PUT,
        &assignment_path("baseline"),
        Some(assignment(prod(), "main")),
    )
    .await;
    for cluster in ["prod-1", "prod-2"] {
        assert_eq!(
            configuration(&api, cluster, "baseline").await.status,
            StatusCode::OK,
            "as planned"
        );
    }

    let store = &api.server.state.store;
    let prod_1 = store.get_cluster("s/rg/prod-1").await.unwrap().unwrap();
    let before = store.get_configuration(prod_1.id, "baseline").await.unwrap().unwrap();
    let change = assignment(
        json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "dev"]},
                                    {"key": "tier", "operator": "NotIn", "values": ["gold"]}]}),
        "release",
    );
    let second = api
        .call(Method::POST, &plan_path("baseline"), Some(change.clone()))
        .await;
    assert_eq!(
        second.body["enteringClusters"],
        json!([cluster_path("s", "rg", "dev-1")])
    );
    assert_eq!(
        second.body["leavingClusters"],
        json!([cluster_path("s", "rg", "prod-2")])
    );
    assert_eq!(second.body["create"], json!([]));
    assert_eq!(second.body["update"], json!([config_id("prod-1", "baseline")]));
    assert_eq!(second.body["delete"], json!([config_id("prod-2", "baseline")]));
    assert_eq!(second.body["conflicts"], json!([config_id("dev-1", "baseline")]));
    let unchanged = store.get_configuration(prod_1.id, "baseline").await.unwrap().unwrap();
    assert_eq!(unchanged.generation, before.generation, "the plan wrote nothing");

    // applying does what the plan said
    api.call(Method::PUT, &assignment_path("baseline"), Some(change)).await;
    let updated = store.get_configuration(prod_1.id, "baseline").await.unwrap().unwrap();
    assert_eq!(updated.generation, before.generation + 1);
    assert_eq!(
        configuration(&api, "prod-2", "baseline").await.body["properties"]["provisioningState"],
        "Deleting"
    );
    assert_eq!(
        configuration(&api, "dev-1", "baseline").await.body["properties"]["managedBy"],
        Value::Null
    );

    // a plan that would overlap another assignment says so, as applying would refuse it
    let mut apps = assignment(json!({"matchLabels": {"env": "dev"}}), "main");
    apps["properties"]["configurationName"] = json!("apps");
    api.call(Method::PUT, &assignment_path("apps"), Some(apps.clone()))
        .await;
    let overlap = api.call(Method::POST, &plan_path("apps-2"), Some(apps)).await;
    assert_eq!(overlap.body["overlappingAssignments"], json!(["apps"]));
    let invalid = api
        .call(
            Method::POST,
            &plan_path("apps-2"),
            Some(json!({"properties": {"selector": {}}})),
        )
        .await;
    assert_eq!(invalid.status, StatusCode::BAD_REQUEST);
}

on_both_backends!(
    a_managed_configuration_edited_by_hand_is_reported_as_drifted_and_restored,
    drift_case
);
async fn drift_case(backend: Backend) {
    // no sweep of its own during the test: the restore below is the reconciliation run directly
    let Some(server) = fluxplane_api::testing::TestServer::start_with(backend, |c| {
        c.sweep_interval = std::time::Duration::from_secs(3600);
    })
    .await
    else {
        return;
    };
    let api = Api::serving(server);
    tagged_cluster(&api, "prod-1", json!({"env": "prod"})).await;
    tagged_cluster(&api, "prod-2", json!({"env": "prod"})).await;
    api.call(
        Method::PUT,
        &assignment_path("baseline"),
        Some(assignment(prod(), "main")),
    )
    .await;
    let path = with_version(&config_path(&cluster_path("s", "rg", "prod-1"), "baseline"), FLUX_API);
    let edited = api
        .call(Method::PATCH, &path, Some(json!({"properties": {"suspend": true}})))
        .await;
    assert_eq!(edited.status, StatusCode::ACCEPTED, "the edit itself is taken");
    let status = api.get(&assignment_path("baseline")).await;
    assert_eq!(status.body["properties"]["status"]["compliance"]["drifted"], 1);
    let compliance = with_version(
        &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/policyAssignments/baseline/compliance"),
        FLEET_API,
    );
    let (entries, _) = api.list_all(&compliance).await;
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0]["clusterId"], cluster_path("s", "rg", "prod-1"));
    assert_eq!(entries[0]["state"], "Drifted");
    assert!(
        entries[0]["reason"].as_str().unwrap().contains("written by hand"),
        "{entries:?}"
    );
    assert_eq!(entries[1]["state"], "Offline", "no agent ever connected: {entries:?}");
    // a configuration deleted by hand is restored too
    let other = with_version(&config_path(&cluster_path("s", "rg", "prod-2"), "baseline"), FLUX_API);
    let forced = api
        .call(Method::DELETE, &format!("{other}&forceDelete=true"), None)
        .await;
    assert_eq!(forced.status, StatusCode::OK);
    assert_eq!(
        api.get(&assignment_path("baseline")).await.body["properties"]["status"]["compliance"]["missing"],
        1
    );

    // the sweeper's reconciliation (run here directly) restores both from the assignment
    let store = &api.server.state.store;
    store.reconcile_assignments(&Default::default()).await.unwrap();
    let restored = api.get(&path).await;
    assert_eq!(restored.body["properties"]["suspend"], false);
    assert_eq!(
        restored.body["properties"]["managedBy"],
        "/subscriptions/s/providers/Fluxplane.Fleet/policyAssignments/baseline"
    );
    assert_eq!(api.get(&other).await.status, StatusCode::OK);
    let counts = &api.get(&assignment_path("baseline")).await.body["properties"]["status"]["compliance"];
    assert_eq!(
        (counts["drifted"].as_u64(), counts["missing"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(counts["offline"], 2);
}

on_both_backends!(assignment_compliance_follows_what_real_agents_report, compliance_case);
async fn compliance_case(backend: Backend) {
    use crate::common::agents::{RunningAgent, registered, served_repository};
    let Some(api) = Api::start(backend).await else { return };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let a = RunningAgent::start(registered(&api, "a", dir.path()).await).await;
    let b = RunningAgent::start(registered(&api, "b", dir.path()).await).await;
    let body = json!({"properties": {
        "selector": {"matchLabels": {"env": "test"}},
        "configurationName": "baseline",
        "configurationTemplate": {
            "namespace": "flux-system",
            "gitRepository": {"url": "[parameters('url')]", "repositoryRef": {"branch": "[parameters('branch')]"}},
            "kustomizations": {"infra": {"path": "./infra"}}
        },
        "parameters": {"url": url, "branch": "main"}
    }});
    let created = api
        .call(Method::PUT, &assignment_path("baseline"), Some(body.clone()))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let counts =
        || async { api.get(&assignment_path("baseline")).await.body["properties"]["status"]["compliance"].clone() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while counts().await["compliant"] != 2 {
        assert!(std::time::Instant::now() < deadline, "{}", counts().await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(a.file("baseline", "fluxconfig.yaml").exists() && b.file("baseline", "fluxconfig.yaml").exists());
    // a branch that does not exist: both turn non-compliant, with the agents' message as the reason
    let mut broken = body;
    broken["properties"]["parameters"]["branch"] = json!("no-such-branch");
    api.call(Method::PUT, &assignment_path("baseline"), Some(broken)).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while counts().await["nonCompliant"] != 2 {
        assert!(std::time::Instant::now() < deadline, "{}", counts().await);
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let compliance = with_version(
        &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/policyAssignments/baseline/compliance"),
        FLEET_API,
    );
    let (entries, _) = api.list_all(&format!("{compliance}&$top=1")).await;
    assert_eq!(entries.len(), 2);
    assert!(
        entries
            .iter()
            .all(|e| e["state"] == "NonCompliant" && e["reason"].as_str().unwrap().contains("no-such-branch")),
        "{entries:?}"
    );
    a.stop().await;
    b.stop().await;
}

on_both_backends!(
    a_template_change_rolls_out_batch_by_batch_and_halts_at_the_failure_threshold,
    rollout_case
);
async fn rollout_case(backend: Backend) {
    use crate::common::agents::{RunningAgent, registered, served_repository};
    let Some(api) = Api::start(backend).await else { return };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let mut agents = Vec::new();
    for name in ["a", "b", "c"] {
        agents.push(RunningAgent::start(registered(&api, name, dir.path()).await).await);
    }
    let body = |path: &str| {
        json!({"properties": {
            "selector": {"matchLabels": {"env": "test"}},
            "configurationName": "baseline",
            "configurationTemplate": {
                "namespace": "flux-system",
                "gitRepository": {"url": url, "repositoryRef": {"branch": "main"}},
                "kustomizations": {"k": {"path": "[parameters('path')]"}}
            },
            "parameters": {"path": path},
            "rollout": {"batchSize": 1, "waitForCompliance": true, "maxFailures": 0}
        }})
    };
    let status = || async { api.get(&assignment_path("baseline")).await.body["properties"]["status"].clone() };
    let wait_for = |what: &'static str, done: fn(&Value) -> bool| status_until(&api, what, done);
    api.call(Method::PUT, &assignment_path("baseline"), Some(body("./infra")))
        .await;
    wait_for("all compliant", |s| s["compliance"]["compliant"] == 3).await;

    // the change reaches a, then b, then c (key order), each after the one before is compliant
    let store = &api.server.state.store;
    let mut ids = Vec::new();
    for name in ["a", "b", "c"] {
        ids.push(store.get_cluster(&format!("s/rg/{name}")).await.unwrap().unwrap().id);
    }
    let generations = || async {
        let mut generations = Vec::new();
        for id in &ids {
            generations.push(
                store
                    .get_configuration(*id, "baseline")
                    .await
                    .unwrap()
                    .unwrap()
                    .generation,
            );
        }
        generations
    };
    let before = generations().await;
    api.call(Method::PUT, &assignment_path("baseline"), Some(body("./apps")))
        .await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let now = generations().await;
        let changed: Vec<bool> = now.iter().zip(&before).map(|(n, b)| n > b).collect();
        assert!(
            changed.windows(2).all(|w| w[0] || !w[1]),
            "a later batch moved before an earlier one: {changed:?}"
        );
        if changed.iter().all(|c| *c) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the rollout did not finish: {}",
            status().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let done = wait_for("completed", |s| {
        s["rollout"]["state"] == "Completed" && s["compliance"]["compliant"] == 3
    })
    .await;
    assert_eq!(done["rollout"]["failures"], 0);

    // a broken change fails on a, the first batch, and goes no further
    let before = generations().await;
    api.call(Method::PUT, &assignment_path("baseline"), Some(body("./missing")))
        .await;
    let halted = wait_for("halted", |s| s["rollout"]["state"] == "Halted").await;
    assert!(
        halted["rollout"]["message"].as_str().unwrap().contains("maxFailures 0"),
        "{halted}"
    );
    let after = generations().await;
    assert!(after[0] > before[0], "a got the change");
    assert_eq!(&after[1..], &before[1..], "b and c kept what they had");
    assert_eq!(halted["compliance"]["nonCompliant"], 1);
    for agent in agents {
        agent.stop().await;
    }
}

/// An assignment of the configuration `baseline`, from the served repository at `url`, to the test agents' clusters
/// (`env=test`), whose kustomization's path and substitutions come from each cluster.
fn per_cluster_assignment(url: &str) -> Value {
    json!({"properties": {
        "selector": {"matchLabels": {"env": "test"}},
        "configurationName": "baseline",
        "configurationTemplate": {
            "namespace": "flux-system",
            "gitRepository": {"url": "[parameters('url')]", "repositoryRef": {"branch": "main"}},
            "kustomizations": {"layer": {
                "path": "[concat('./', cluster().tags.layer)]",
                "postBuild": {"substitute": {
                    "cluster": "[cluster().name]",
                    "region": "[toUpper(tag('region', 'none'))]"
                }}
            }}
        },
        "parameters": {"url": url}
    }})
}

fn compliance_path() -> String {
    with_version(
        &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/policyAssignments/baseline/compliance"),
        FLEET_API,
    )
}

/// Reads the status of the assignment `baseline` until `done` holds of it (or fails after 60 s).
async fn status_until(api: &Api, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let status = api.get(&assignment_path("baseline")).await.body["properties"]["status"].clone();
        if done(&status) {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "waiting for {what}: {status}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Reads the assignment's compliance counts until `done` holds of them.
async fn counts_until(api: &Api, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    status_until(api, what, |status| done(&status["compliance"])).await["compliance"].clone()
}

/// Waits until the file `fluxconfig.yaml` the agent wrote for `baseline` says `text`.
async fn applied(agent: &crate::common::agents::RunningAgent, text: &str) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let written = std::fs::read_to_string(agent.file("baseline", "fluxconfig.yaml")).unwrap_or_default();
        if written.contains(text) {
            return written;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "waiting for '{text}' in: {written}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

on_both_backends!(
    a_template_renders_each_clusters_configuration_from_its_tags_and_a_tag_change_re_renders_it,
    per_cluster_case
);
async fn per_cluster_case(backend: Backend) {
    use crate::common::agents::{RunningAgent, registered, served_repository};
    let Some(api) = Api::start(backend).await else { return };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let a = RunningAgent::start(registered(&api, "a", dir.path()).await).await;
    let b = RunningAgent::start(registered(&api, "b", dir.path()).await).await;
    retag(&api, "a", json!({"env": "test", "layer": "infra", "region": "eu"})).await;
    retag(&api, "b", json!({"env": "test", "layer": "apps"})).await;

    let created = api
        .call(
            Method::PUT,
            &assignment_path("baseline"),
            Some(per_cluster_assignment(&url)),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    counts_until(&api, "both compliant", |c| c["compliant"] == 2).await;
    // each agent holds and applied the configuration rendered for its cluster
    let on_a = applied(&a, "./infra").await;
    assert!(on_a.contains("cluster: a") && on_a.contains("region: EU"), "{on_a}");
    let on_b = applied(&b, "./apps").await;
    assert!(on_b.contains("cluster: b") && on_b.contains("region: NONE"), "{on_b}");
    let b_config = configuration(&api, "b", "baseline").await;
    assert_eq!(b_config.body["properties"]["kustomizations"]["layer"]["path"], "./apps");

    // b's tags change: its configuration is rendered again in the same write, the agent applies it, a keeps its own
    let store = &api.server.state.store;
    let id = |name: &'static str| async move { store.get_cluster(&format!("s/rg/{name}")).await.unwrap().unwrap().id };
    let (a_id, b_id) = (id("a").await, id("b").await);
    let a_before = store.get_configuration(a_id, "baseline").await.unwrap().unwrap();
    let b_before = store.get_configuration(b_id, "baseline").await.unwrap().unwrap();
    retag(&api, "b", json!({"env": "test", "layer": "infra", "region": "us"})).await;
    let b_after = store.get_configuration(b_id, "baseline").await.unwrap().unwrap();
    assert_eq!(
        b_after.generation,
        b_before.generation + 1,
        "in the tag change's own write"
    );
    assert_eq!(
        b_after.spec.kustomizations.as_ref().unwrap()["layer"].path.as_deref(),
        Some("./infra")
    );
    let on_b = applied(&b, "./infra").await;
    assert!(on_b.contains("region: US"), "{on_b}");
    assert_eq!(
        store
            .get_configuration(a_id, "baseline")
            .await
            .unwrap()
            .unwrap()
            .generation,
        a_before.generation,
        "a's tags did not change"
    );
    // a tag it does not read changes nothing
    retag(
        &api,
        "a",
        json!({"env": "test", "layer": "infra", "region": "eu", "team": "blue"}),
    )
    .await;
    assert_eq!(
        store
            .get_configuration(a_id, "baseline")
            .await
            .unwrap()
            .unwrap()
            .generation,
        a_before.generation
    );
    counts_until(&api, "both compliant again", |c| c["compliant"] == 2).await;
    a.stop().await;
    b.stop().await;
}

on_both_backends!(
    a_cluster_whose_tags_leave_an_expression_unresolvable_is_reported_and_gets_nothing_until_they_do,
    unresolvable_case
);
async fn unresolvable_case(backend: Backend) {
    use crate::common::agents::{RunningAgent, registered, served_repository};
    let Some(api) = Api::start(backend).await else { return };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let a = RunningAgent::start(registered(&api, "a", dir.path()).await).await;
    let c = RunningAgent::start(registered(&api, "c", dir.path()).await).await;
    retag(&api, "a", json!({"env": "test", "layer": "infra"})).await;

    // c has no 'layer' tag: the plan says so, and applying writes nothing for it
    let plan = api
        .call(Method::POST, &plan_path("baseline"), Some(per_cluster_assignment(&url)))
        .await;
    assert_eq!(plan.status, StatusCode::OK, "{plan:?}");
    assert_eq!(plan.body["create"], json!([config_id("a", "baseline")]));
    assert_eq!(plan.body["unresolvable"][0]["clusterId"], cluster_path("s", "rg", "c"));
    assert_eq!(
        plan.body["unresolvable"][0]["target"],
        "properties.configurationTemplate.kustomizations.layer.path"
    );
    assert_eq!(
        plan.body["unresolvable"][0]["reason"],
        "tag 'layer' is not set on cluster 'c'"
    );
    let created = api
        .call(
            Method::PUT,
            &assignment_path("baseline"),
            Some(per_cluster_assignment(&url)),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let counts = counts_until(&api, "a compliant", |c| c["compliant"] == 1).await;
    assert_eq!(counts["unresolvable"], 1, "{counts}");
    assert_eq!(counts["missing"], 0, "not missing: unresolvable, with its reason");
    assert_eq!(configuration(&api, "c", "baseline").await.status, StatusCode::NOT_FOUND);
    let (entries, _) = api.list_all(&compliance_path()).await;
    let entry = entries
        .iter()
        .find(|e| e["clusterId"] == cluster_path("s", "rg", "c"))
        .unwrap();
    assert_eq!(entry["state"], "Unresolvable");
    assert_eq!(
        entry["reason"],
        "tag 'layer' is not set on cluster 'c' (at properties.configurationTemplate.kustomizations.layer.path); \
         it gets the configuration once the template can be rendered for it"
    );

    // the tag comes: c gets its configuration in that write and turns compliant
    retag(&api, "c", json!({"env": "test", "layer": "apps"})).await;
    assert_eq!(configuration(&api, "c", "baseline").await.status, StatusCode::OK);
    applied(&c, "./apps").await;
    counts_until(&api, "both compliant", |c| {
        c["compliant"] == 2 && c["unresolvable"] == 0
    })
    .await;

    // a's tag goes: a keeps the configuration it has, as it was, and is reported
    let store = &api.server.state.store;
    let a_id = store.get_cluster("s/rg/a").await.unwrap().unwrap().id;
    let before = store.get_configuration(a_id, "baseline").await.unwrap().unwrap();
    retag(&api, "a", json!({"env": "test"})).await;
    let after = store.get_configuration(a_id, "baseline").await.unwrap().unwrap();
    assert_eq!((after.generation, &after.spec), (before.generation, &before.spec));
    let counts = counts_until(&api, "a unresolvable", |c| c["unresolvable"] == 1).await;
    assert_eq!(counts["compliant"], 1, "{counts}");
    let (entries, _) = api.list_all(&compliance_path()).await;
    let entry = entries
        .iter()
        .find(|e| e["clusterId"] == cluster_path("s", "rg", "a"))
        .unwrap();
    assert_eq!(entry["state"], "Unresolvable");
    assert!(
        entry["reason"]
            .as_str()
            .unwrap()
            .ends_with("the configuration it has is kept as it was"),
        "{entry}"
    );
    assert!(
        a.file("baseline", "fluxconfig.yaml").exists(),
        "the agent still runs it"
    );
    a.stop().await;
    c.stop().await;
}

on_both_backends!(
    a_plan_shows_each_entering_or_changing_cluster_its_rendered_configuration_and_what_changes,
    plan_rendering_case
);
async fn plan_rendering_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "prod-1", json!({"env": "prod", "region": "eu"})).await;
    tagged_cluster(&api, "prod-2", json!({"env": "prod", "region": "us"})).await;
    tagged_cluster(&api, "staging-1", json!({"env": "staging", "region": "ap"})).await;
    let body = |selector: Value, path: &str| {
        let mut body = assignment(selector, "main");
        body["properties"]["configurationTemplate"]["kustomizations"]["infra"]["path"] = json!(path);
        body
    };
    let applied = api
        .call(
            Method::PUT,
            &assignment_path("baseline"),
            Some(body(prod(), "[concat('./infra/', cluster().tags.region)]")),
        )
        .await;
    assert_eq!(applied.status, StatusCode::CREATED, "{applied:?}");
    // staging-1 enters, prod-1 and prod-2 change
    let wider = json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "staging"]}]});
    let plan = api
        .call(
            Method::POST,
            &plan_path("baseline"),
            Some(body(
                wider,
                "[concat('./clusters/', cluster().tags.region, '/', cluster().name)]",
            )),
        )
        .await;
    assert_eq!(plan.status, StatusCode::OK, "{plan:?}");
    assert_eq!(
        plan.body["enteringClusters"],
        json!([cluster_path("s", "rg", "staging-1")])
    );
    assert_eq!(plan.body["create"], json!([config_id("staging-1", "baseline")]));
    assert_eq!(
        plan.body["update"],
        json!([config_id("prod-1", "baseline"), config_id("prod-2", "baseline")])
    );
    assert_eq!(plan.body["changeCount"], 3);
    let changes = plan.body["changes"].as_array().unwrap();
    let created = &changes[0];
    assert_eq!(
        (created["configurationId"].as_str(), created["change"].as_str()),
        (Some(config_id("staging-1", "baseline").as_str()), Some("Create"))
    );
    assert_eq!(
        created["properties"]["kustomizations"]["infra"]["path"],
        "./clusters/ap/staging-1"
    );
    assert!(
        created.get("patch").is_none(),
        "nothing to compare a new configuration with"
    );
    let updated = &changes[2];
    assert_eq!(updated["configurationId"], config_id("prod-2", "baseline"));
    assert_eq!(
        updated["properties"]["gitRepository"]["repositoryRef"]["branch"], "main",
        "the whole configuration, defaults filled in"
    );
    assert_eq!(
        updated["patch"],
        json!([{"op": "replace", "path": "/kustomizations/infra/path", "value": "./clusters/us/prod-2"}]),
        "against what prod-2 holds: ./infra/us"
    );
    assert_eq!(plan.body["unresolvable"], json!([]));
    let store = &api.server.state.store;
    let prod_2 = store.get_cluster("s/rg/prod-2").await.unwrap().unwrap().id;
    let held = store.get_configuration(prod_2, "baseline").await.unwrap().unwrap();
    assert_eq!(
        held.spec.kustomizations.as_ref().unwrap()["infra"].path.as_deref(),
        Some("./infra/us"),
        "the plan wrote nothing"
    );
}

/// The rollout history entries of the assignment `baseline`: (event, batch, time).
async fn rollout_events(api: &Api) -> Vec<(String, i64, chrono::DateTime<chrono::Utc>)> {
    let path = with_version(
        &format!("{SUBSCRIPTION}/providers/Fluxplane.Fleet/policyAssignments/baseline/history"),
        FLEET_API,
    );
    let answer = api.get(&path).await;
    assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
    answer.body["value"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "rollout")
        .map(|e| {
            (
                e["event"].as_str().unwrap().to_owned(),
                e["batch"].as_i64().unwrap(),
                e["time"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect()
}

on_both_backends!(
    a_rollout_goes_ring_by_ring_soaks_each_batch_rolls_back_a_failing_one_and_pauses_on_demand,
    staged_rollout_case
);
async fn staged_rollout_case(backend: Backend) {
    use crate::common::agents::{RunningAgent, registered, served_repository};
    let Some(api) = Api::start(backend).await else { return };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    // ring order is not name order: b (canary), c (early), then a (broad)
    let rings = [("a", "broad"), ("b", "canary"), ("c", "early")];
    let mut agents = Vec::new();
    for (name, ring) in rings {
        agents.push(RunningAgent::start(registered(&api, name, dir.path()).await).await);
        retag(&api, name, json!({"env": "test", "ring": ring})).await;
    }
    let store = &api.server.state.store;
    let mut ids = Vec::new();
    for name in ["b", "c", "a"] {
        ids.push(store.get_cluster(&format!("s/rg/{name}")).await.unwrap().unwrap().id);
    }
    // each cluster's generation of `baseline` in ring order (0: none yet)
    let generations = || async {
        let mut generations = Vec::new();
        for id in &ids {
            let configuration = store.get_configuration(*id, "baseline").await.unwrap();
            generations.push(configuration.map_or(0, |c| c.generation));
        }
        generations
    };
    let body = |path: &str, soak: &str| {
        json!({"properties": {
            "selector": {"matchLabels": {"env": "test"}},
            "configurationName": "baseline",
            "configurationTemplate": {
                "namespace": "flux-system",
                "gitRepository": {"url": url, "repositoryRef": {"branch": "main"}},
                "kustomizations": {"k": {"path": "[parameters('path')]"}}
            },
            "parameters": {"path": path},
            "rollout": {"batchSize": 1, "maxFailures": 0, "soakTime": soak, "autoRollback": true,
                        "rings": {"tag": "ring", "order": ["canary", "early", "broad"]}}
        }})
    };
    let wait_for = |what: &'static str, done: fn(&Value) -> bool| status_until(&api, what, done);
    // moves in ring order: a later ring never holds a generation an earlier one lacks
    let watch_order = |before: Vec<i64>, what: &'static str| {
        let generations = &generations;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            loop {
                let now = generations().await;
                let moved: Vec<bool> = now.iter().zip(&before).map(|(n, b)| n > b).collect();
                assert!(
                    moved.windows(2).all(|w| w[0] || !w[1]),
                    "{what}: a later ring moved before an earlier one: {moved:?}"
                );
                if moved.iter().all(|m| *m) {
                    return now;
                }
                assert!(std::time::Instant::now() < deadline, "{what} did not finish: {now:?}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };

    // the first deployment is staged: canary, early, broad, each soaking a second once Compliant
    let created = api
        .call(Method::PUT, &assignment_path("baseline"), Some(body("./infra", "PT1S")))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_eq!(
        created.body["properties"]["status"]["managedConfigurations"], 1,
        "the canary only"
    );
    assert_eq!(created.body["properties"]["status"]["rollout"]["ring"], "canary");
    watch_order(vec![0, 0, 0], "the first deployment").await;
    let done = wait_for("completed", |s| {
        s["rollout"]["state"] == "Completed" && s["compliance"]["compliant"] == 3
    })
    .await;
    assert_eq!(done["rollout"]["batches"], 3);
    let events = rollout_events(&api).await;
    let names: Vec<&str> = events.iter().map(|(e, ..)| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "Started",
            "Soaking",
            "BatchStarted",
            "Soaking",
            "BatchStarted",
            "Soaking",
            "Completed"
        ],
        "{events:?}"
    );
    for pair in events.windows(2).filter(|w| w[0].0 == "Soaking") {
        let soaked = pair[1].2 - pair[0].2;
        assert!(
            soaked >= chrono::Duration::seconds(1),
            "batch {} soaked {soaked} only",
            pair[0].1
        );
    }

    // a broken change fails on the canary: the rollout halts and the canary goes back to the first template, the
    // others never leave it
    let before = generations().await;
    api.call(
        Method::PUT,
        &assignment_path("baseline"),
        Some(body("./missing", "PT1S")),
    )
    .await;
    let rolled_back = wait_for("rolled back", |s| s["rollout"]["state"] == "RolledBack").await;
    assert_eq!(rolled_back["rollout"]["rolledBackTo"], 1, "{rolled_back}");
    let message = rolled_back["rollout"]["message"].as_str().unwrap();
    assert!(
        message.contains("maxFailures 0") && message.contains("went back to generation 1"),
        "{message}"
    );
    let healed = wait_for("the canary compliant again", |s| s["compliance"]["compliant"] == 3).await;
    assert_eq!(healed["rollout"]["state"], "RolledBack");
    let after = generations().await;
    assert_eq!(
        after[0],
        before[0] + 2,
        "the canary moved forward and back: {before:?} {after:?}"
    );
    assert_eq!(&after[1..], &before[1..], "the other rings kept what they had");
    let canary = store.get_configuration(ids[0], "baseline").await.unwrap().unwrap();
    assert_eq!(
        canary.spec.kustomizations.as_ref().unwrap()["k"].path.as_deref(),
        Some("./infra")
    );
    assert_eq!(canary.managed_generation, Some(1));
    assert!(rollout_events(&api).await.iter().any(|(e, ..)| e == "RolledBack"));

    // a good change, paused at once: the rings after the canary wait until it is resumed
    let before = generations().await;
    api.call(Method::PUT, &assignment_path("baseline"), Some(body("./apps", "PT1S")))
        .await;
    let pause = fleet_path(SUBSCRIPTION, "policyAssignments", "baseline/pauseRollout");
    let reader = api.server.token("reader", &[(Role::Reader, SUBSCRIPTION)]);
    let refused = api.call_as(&reader, Method::POST, &pause, None).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{refused:?}");
    let contributor = api
        .server
        .token("release-manager", &[(Role::Contributor, SUBSCRIPTION)]);
    let paused = api.call_as(&contributor, Method::POST, &pause, None).await;
    assert_eq!(paused.status, StatusCode::OK, "{paused:?}");
    let rollout = &paused.body["properties"]["status"]["rollout"];
    assert_eq!(
        (rollout["state"].as_str(), rollout["batch"].as_i64()),
        (Some("Paused"), Some(0))
    );
    assert_eq!(rollout["message"], "paused by release-manager");
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    let held = generations().await;
    assert_eq!(
        &held[1..],
        &before[1..],
        "nothing past the canary while paused: {held:?}"
    );
    let resume = fleet_path(SUBSCRIPTION, "policyAssignments", "baseline/resumeRollout");
    let not_owner = api.call_as(&contributor, Method::POST, &resume, None).await;
    assert_eq!(
        not_owner.status,
        StatusCode::FORBIDDEN,
        "resuming lets a change go on: an Owner's call"
    );
    let resumed = api.call(Method::POST, &resume, None).await;
    assert_eq!(resumed.status, StatusCode::OK, "{resumed:?}");
    watch_order(before, "the resumed rollout").await;
    wait_for("completed again", |s| {
        s["rollout"]["state"] == "Completed" && s["compliance"]["compliant"] == 3
    })
    .await;
    let names: Vec<String> = rollout_events(&api).await.into_iter().map(|(e, ..)| e).collect();
    let at = |event: &str| names.iter().rposition(|e| e == event);
    assert!(
        at("Paused") < at("Resumed") && at("Resumed") < at("Completed") && at("Paused").is_some(),
        "paused, resumed, then completed: {names:?}"
    );
    let nothing = api.call(Method::POST, &pause, None).await;
    assert_eq!(
        nothing.status,
        StatusCode::CONFLICT,
        "nothing under way to pause: {nothing:?}"
    );
    assert!(
        nothing.body["error"]["message"].as_str().unwrap().contains("Completed"),
        "{nothing:?}"
    );
    let missing = fleet_path(SUBSCRIPTION, "policyAssignments", "nope/pauseRollout");
    assert_eq!(
        api.call(Method::POST, &missing, None).await.status,
        StatusCode::NOT_FOUND
    );
    for agent in agents {
        agent.stop().await;
    }
}

on_both_backends!(
    a_rendering_that_would_move_a_configuration_to_another_namespace_leaves_it_where_it_is_and_says_so,
    placement_case
);
async fn placement_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    tagged_cluster(&api, "prod-1", json!({"env": "prod", "team": "payments"})).await;
    tagged_cluster(&api, "prod-2", json!({"env": "prod", "team": "search"})).await;
    let body = |namespace: &str| {
        json!({"properties": {
            "selector": prod(),
            "configurationName": "baseline",
            "configurationTemplate": {
                "namespace": namespace,
                "gitRepository": {"url": "https://github.com/org/fleet", "repositoryRef": {"branch": "main"}},
                "kustomizations": {"infra": {"path": "./infra"}}
            }
        }})
    };
    let created = api
        .call(Method::PUT, &assignment_path("baseline"), Some(body("[tag('team')]")))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    let store = &api.server.state.store;
    let id = store.get_cluster("s/rg/prod-1").await.unwrap().unwrap().id;
    let before = store.get_configuration(id, "baseline").await.unwrap().unwrap();
    assert_eq!(before.spec.namespace.as_deref(), Some("payments"));

    // its team changes: Flux's objects cannot move namespace, so the configuration stays and the cluster is reported
    retag(&api, "prod-1", json!({"env": "prod", "team": "billing"})).await;
    let after = store.get_configuration(id, "baseline").await.unwrap().unwrap();
    assert_eq!((after.generation, &after.spec), (before.generation, &before.spec));
    let (entries, _) = api.list_all(&compliance_path()).await;
    let entry = entries
        .iter()
        .find(|e| e["clusterId"] == cluster_path("s", "rg", "prod-1"))
        .unwrap();
    assert_eq!(entry["state"], "Unresolvable", "{entry}");
    let reason = entry["reason"].as_str().unwrap();
    assert!(
        reason.contains("renders namespace 'billing' where the cluster's configuration has 'payments'")
            && reason.contains("at properties.configurationTemplate.namespace"),
        "{reason}"
    );

    // a template moving every cluster's namespace: the plan names each, and applying rewrites none
    let plan = api
        .call(Method::POST, &plan_path("baseline"), Some(body("platform")))
        .await;
    assert_eq!(plan.status, StatusCode::OK, "{plan:?}");
    assert_eq!(plan.body["update"], json!([]), "{plan:?}");
    let targets: Vec<&str> = plan.body["unresolvable"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["target"].as_str().unwrap())
        .collect();
    assert_eq!(targets, ["properties.configurationTemplate.namespace"; 2], "{plan:?}");
    let applied = api
        .call(Method::PUT, &assignment_path("baseline"), Some(body("platform")))
        .await;
    assert_eq!(applied.status, StatusCode::OK, "{applied:?}");
    assert_eq!(applied.body["properties"]["status"]["compliance"]["unresolvable"], 2);
    let kept = store.get_configuration(id, "baseline").await.unwrap().unwrap();
    assert_eq!(kept.spec.namespace.as_deref(), Some("payments"));
    // a new cluster is placed where the template says
    tagged_cluster(&api, "prod-3", json!({"env": "prod"})).await;
    let third = configuration(&api, "prod-3", "baseline").await;
    assert_eq!(third.body["properties"]["namespace"], "platform", "{third:?}");
}
