//! End-to-end: the fluxConfigurations API over real HTTP, on both backends.

use crate::common::*;
use fluxplane_agent::register::{Registration, register};
use fluxplane_api::flux::secrets::SECRET_FIELDS;
use fluxplane_api::lifecycle::ProvisioningState;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/azure-examples");

/// The request bodies of Azure's published create examples, one per source kind.
fn azure_examples() -> Vec<(String, Value)> {
    [
        "CreateFluxConfiguration.json",
        "CreateFluxConfigurationWithBucket.json",
        "CreateFluxConfigurationWithOCIRepository.json",
        "CreateFluxConfigurationWithProvider.json",
        "CreateFluxConfigurationWithAzureBlob.2024-06-01-preview.json",
    ]
    .into_iter()
    .map(|file| {
        let text = std::fs::read_to_string(format!("{EXAMPLES}/{file}")).expect("the example is in the fixtures");
        let example: Value = serde_json::from_str(&text).expect("example JSON");
        (file.to_owned(), example["parameters"]["fluxConfiguration"].clone())
    })
    .collect()
}

/// The request without its secret fields: what a read must give back.
fn without_secrets(body: &Value) -> Value {
    let mut properties = body["properties"].clone();
    for pointer in SECRET_FIELDS {
        let (parent, field) = pointer.rsplit_once('/').unwrap();
        if let Some(object) = properties.pointer_mut(parent).and_then(Value::as_object_mut) {
            object.remove(field);
        }
    }
    properties
}

on_both_backends!(every_property_of_azures_examples_round_trips, round_trip_case);
async fn round_trip_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("subId1", "rg1", "clusterName1");
    // an agent to seal the examples' secrets to
    let dir = tempfile::tempdir().unwrap();
    let registration = Registration {
        server: api.server.base.clone(),
        user_token: api.token.clone(),
        cluster_id: cluster.clone(),
        tags: Default::default(),
        location: Some("westeurope".into()),
        trust: Default::default(),
    };
    register(&registration, &dir.path().join("agent.json")).await.unwrap();
    for (i, (file, body)) in azure_examples().into_iter().enumerate() {
        let name = format!("example-{i}");
        let created = api.put_config(&cluster, &name, body.clone()).await;
        assert_eq!(created.status, StatusCode::CREATED, "{file}: {created:?}");
        let expected = without_secrets(&body);
        assert_contains(&created.body["properties"], &expected, &file);
        let read = api.get(&with_version(&config_path(&cluster, &name), FLUX_API)).await;
        assert_contains(&read.body["properties"], &expected, &file);
        assert_eq!(read.body["properties"], created.body["properties"], "{file}");
    }
}

on_both_backends!(
    writes_set_provisioning_and_compliance_state_and_bump_the_generation,
    lifecycle_case
);
async fn lifecycle_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    let created = api.put_config(&cluster, "cfg", git_config_body()).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(created.body["properties"]["provisioningState"], "Creating");
    assert_eq!(created.body["properties"]["complianceState"], "Pending");
    assert_eq!(created.header("retry-after"), Some("1"));
    let operation = created
        .header("azure-asyncoperation")
        .expect("an operation URL")
        .to_owned();
    assert!(operation.starts_with(&api.server.base), "{operation}");

    let status = api.get(&operation).await;
    assert_eq!(status.status, StatusCode::OK, "{status:?}");
    assert_eq!(status.body["status"], "InProgress");
    assert!(
        status.body["id"]
            .as_str()
            .unwrap()
            .ends_with(status.body["name"].as_str().unwrap())
    );

    let updated = api.put_config(&cluster, "cfg", git_config_body()).await;
    assert_eq!(updated.status, StatusCode::OK);
    assert_eq!(updated.body["properties"]["provisioningState"], "Updating");
    assert_eq!(
        api.get(&operation).await.body["status"],
        "Canceled",
        "superseded by the newer write"
    );

    let store = &api.server.state.store;
    let cluster_id = store.get_cluster("s/rg/c1").await.unwrap().unwrap().id;
    let stored = store.get_configuration(cluster_id, "cfg").await.unwrap().unwrap();
    assert_eq!(stored.generation, 2);
    assert_eq!(stored.provisioning_state, ProvisioningState::Updating);
}

on_both_backends!(defaults_are_applied_server_side, defaults_case);
async fn defaults_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    let created = api.put_config(&cluster, "cfg", git_config_body()).await;
    let p = &created.body["properties"];
    assert_eq!(p["scope"], "cluster");
    assert_eq!(p["namespace"], "default");
    assert_eq!(p["sourceKind"], "GitRepository");
    assert_eq!(p["suspend"], false);
    assert_eq!(p["gitRepository"]["syncIntervalInSeconds"], 600);
    assert_eq!(p["gitRepository"]["timeoutInSeconds"], 600);
    let apps = &p["kustomizations"]["apps"];
    assert_eq!(apps["name"], "apps");
    assert_eq!(
        (apps["prune"].clone(), apps["force"].clone(), apps["wait"].clone()),
        (json!(false), json!(false), json!(true))
    );
    assert_eq!(apps["syncIntervalInSeconds"], 600);
}

on_both_backends!(patch_merges_and_null_removes_a_kustomization, patch_case);
async fn patch_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    let mut body = git_config_body();
    body["properties"]["kustomizations"]["extra"] = json!({"path": "./extra"});
    api.put_config(&cluster, "cfg", body).await;
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let patched = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {
                "suspend": true,
                "gitRepository": {"repositoryRef": {"branch": "release"}},
                "kustomizations": {"extra": null, "apps": {"prune": true}}
            }})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::ACCEPTED, "{patched:?}");
    assert!(patched.header("azure-asyncoperation").is_some());
    let p = &patched.body["properties"];
    assert_eq!(p["provisioningState"], "Updating");
    assert_eq!(p["suspend"], true);
    assert_eq!(p["gitRepository"]["repositoryRef"], json!({"branch": "release"}));
    assert_eq!(p["gitRepository"]["url"], "https://github.com/Azure/arc-k8s-demo");
    assert!(p["kustomizations"].get("extra").is_none(), "{p}");
    assert_eq!(p["kustomizations"]["apps"]["prune"], true);
    assert_eq!(p["kustomizations"]["apps"]["path"], "./apps");

    let broken = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"kustomizations": {"infra": null}}})),
        )
        .await;
    assert_eq!(
        broken.status,
        StatusCode::BAD_REQUEST,
        "apps still depends on infra: {broken:?}"
    );
    assert!(
        api.get(&path).await.body["properties"]["kustomizations"]
            .get("infra")
            .is_some()
    );
}

on_both_backends!(lists_page_with_skip_token_never_api_version, list_case);
async fn list_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    for i in 0..7 {
        assert!(
            api.put_config(&cluster, &format!("cfg-{i}"), git_config_body())
                .await
                .status
                .is_success()
        );
    }
    let list = format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations");
    let first = api.get(&format!("{}&$top=3", with_version(&list, FLUX_API))).await;
    let next = first.body["nextLink"].as_str().unwrap().to_owned();
    assert!(next.contains("$skipToken=") && next.contains("$top=3"), "{next}");
    // Azure's SDKs replace api-version when they follow nextLink; the page must not depend on it
    let replaced = next.replace(&format!("api-version={FLUX_API}"), "api-version=2024-11-01");
    let second = api.get(&replaced).await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(second.body["value"][0]["name"], "cfg-3");
    let (all, pages) = api.list_all(&format!("{}&$top=3", with_version(&list, FLUX_API))).await;
    assert_eq!((all.len(), pages), (7, 3));
    let bad = api.get(&format!("{}&$top=0", with_version(&list, FLUX_API))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

on_both_backends!(
    delete_is_202_while_the_agent_removes_200_when_forced_204_when_absent,
    delete_case
);
async fn delete_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    api.put_config(&cluster, "cfg", git_config_body()).await;
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let accepted = api.call(Method::DELETE, &path, None).await;
    assert_eq!(accepted.status, StatusCode::ACCEPTED);
    let operation = accepted.header("azure-asyncoperation").unwrap().to_owned();
    assert_eq!(api.get(&operation).await.body["status"], "InProgress");
    let read = api.get(&path).await;
    assert_eq!(read.body["properties"]["provisioningState"], "Deleting");
    let write = api.put_config(&cluster, "cfg", git_config_body()).await;
    assert_eq!((write.status, write.code()), (StatusCode::CONFLICT, "Conflict"));

    let forced = api
        .call(Method::DELETE, &format!("{path}&forceDelete=true"), None)
        .await;
    assert_eq!(forced.status, StatusCode::OK);
    assert_eq!(api.get(&path).await.status, StatusCode::NOT_FOUND);
    assert_eq!(
        api.call(Method::DELETE, &path, None).await.status,
        StatusCode::NO_CONTENT
    );
    let bad = api
        .call(Method::DELETE, &format!("{path}&forceDelete=maybe"), None)
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

on_both_backends!(configurations_need_a_registered_cluster, parent_case);
async fn parent_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let missing = api
        .put_config(&cluster_path("s", "rg", "ghost"), "cfg", git_config_body())
        .await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::NOT_FOUND, "ResourceNotFound")
    );
    // a missing configuration of a registered cluster has a code of its own, as Azure's CLI tells the two apart
    api.put_cluster("s", "rg", "real").await;
    let absent = api
        .get(&with_version(
            &config_path(&cluster_path("s", "rg", "real"), "cfg"),
            FLUX_API,
        ))
        .await;
    assert_eq!(
        (absent.status, absent.code()),
        (StatusCode::NOT_FOUND, "FluxConfigurationNotFound")
    );
}

on_both_backends!(every_azure_cluster_type_reaches_the_registered_cluster, alias_case);
async fn alias_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    api.put_cluster("s", "rg", "c1").await;
    let managed = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/c1";
    let created = api.put_config(managed, "cfg", git_config_body()).await;
    assert_eq!(created.status, StatusCode::CREATED);
    assert_eq!(
        created.body["id"],
        format!("{managed}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/cfg")
    );
    let via_connected = api
        .get(&with_version(
            &config_path(&cluster_path("s", "rg", "c1"), "cfg"),
            FLUX_API,
        ))
        .await;
    assert_eq!(via_connected.status, StatusCode::OK);
    let bogus = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachines/c1";
    assert_eq!(
        api.put_config(bogus, "cfg", git_config_body()).await.status,
        StatusCode::BAD_REQUEST
    );
}

on_both_backends!(concurrent_unconditional_writes_all_land_in_order, concurrency_case);
async fn concurrency_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    api.put_config(&cluster, "cfg", git_config_body()).await;
    let api = std::sync::Arc::new(api);
    let mut writers = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        let cluster = cluster.clone();
        writers.push(tokio::spawn(async move {
            api.put_config(&cluster, "cfg", git_config_body()).await.status
        }));
    }
    for writer in writers {
        assert_eq!(writer.await.unwrap(), StatusCode::OK);
    }
    let store = &api.server.state.store;
    let id = store.get_cluster("s/rg/c1").await.unwrap().unwrap().id;
    assert_eq!(
        store.get_configuration(id, "cfg").await.unwrap().unwrap().generation,
        9,
        "1 create + 8 updates"
    );
}

on_both_backends!(configuration_lists_filter_across_pages, configuration_filter_case);
async fn configuration_filter_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("sub1", "rg1", "c1");
    api.put_cluster("sub1", "rg1", "c1").await;
    for i in 0..9 {
        let mut body = git_config_body();
        body["properties"]["namespace"] = json!(if i % 3 == 0 { "team-a" } else { "team-b" });
        let created = api.put_config(&cluster, &format!("cfg-{i}"), body).await;
        assert!(created.status.is_success(), "{created:?}");
    }
    let list = format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations");
    let query = |filter: &str, top: u32| {
        let mut url = reqwest::Url::parse(&api.url(&list)).expect("a URL");
        url.query_pairs_mut()
            .append_pair("api-version", FLUX_API)
            .append_pair("$filter", filter)
            .append_pair("$top", &top.to_string());
        String::from(url)
    };
    let (items, pages) = api.list_all(&query("properties/namespace eq 'team-a'", 2)).await;
    let names: Vec<&str> = items.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["cfg-0", "cfg-3", "cfg-6"]);
    assert_eq!(pages, 2);

    let (items, _) = api
        .list_all(&query(
            "properties/complianceState eq 'Pending' and properties/statusFreshness eq 'Offline' and \
             properties/sourceKind eq 'GitRepository' and not (name eq 'CFG-1')",
            100,
        ))
        .await;
    assert_eq!(
        items.len(),
        8,
        "new configurations on a cluster without an agent, all but one"
    );
    let (items, _) = api
        .list_all(&query("properties/provisioningState eq 'Succeeded'", 100))
        .await;
    assert!(items.is_empty(), "none has been applied");

    let refused = api.get(&query("properties/spec eq 'x'", 10)).await;
    assert_eq!(refused.status, StatusCode::BAD_REQUEST);
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("properties/complianceState")
    );
}

on_both_backends!(
    an_operation_that_waits_for_reconciliation_ends_only_when_compliant_or_out_of_time,
    reconciliation_wait_case
);
async fn reconciliation_wait_case(backend: Backend) {
    use crate::common::reports::{agent_cluster, report_states};
    use fluxplane_agent_protocol::flux::ComplianceState;
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let agent = agent_cluster(&api, "c1", "prod", dir.path()).await;
    let cluster = cluster_path("s", "rg-a", "c1");
    let operation_of = |answer: &Answer| {
        answer
            .header("azure-asyncoperation")
            .expect("an operation to poll")
            .to_owned()
    };
    let mut waiting = git_config_body();
    waiting["properties"]["waitForReconciliation"] = json!(true);
    waiting["properties"]["reconciliationWaitDuration"] = json!("PT1H");
    let created = api.put_config(&cluster, "waits", waiting.clone()).await;
    let operation = operation_of(&created);
    let immediate = api.put_config(&cluster, "reports", git_config_body()).await;
    let unwaited = operation_of(&immediate);

    // applied, not yet reconciled: only the configuration that does not wait is done
    report_states(&agent, &[], &[], ComplianceState::Pending).await;
    assert_eq!(api.get(&unwaited).await.body["status"], "Succeeded");
    let still = api.get(&operation).await;
    assert_eq!(still.body["status"], "InProgress", "{still:?}");
    assert_eq!(still.header("retry-after"), Some("1"));

    report_states(&agent, &[], &[], ComplianceState::Compliant).await;
    assert_eq!(api.get(&operation).await.body["status"], "Succeeded");

    // a change that never reconciles fails when its wait is over
    waiting["properties"]["suspend"] = json!(true);
    let changed = api.put_config(&cluster, "waits", waiting).await;
    let operation = operation_of(&changed);
    report_states(&agent, &[], &[], ComplianceState::NonCompliant).await;
    assert_eq!(api.get(&operation).await.body["status"], "InProgress");
    let store = &api.server.state.store;
    let soon = chrono::Utc::now() + chrono::Duration::minutes(30);
    assert_eq!(
        store.time_out_reconciliations(soon).await.unwrap(),
        0,
        "within the hour it waits"
    );
    let later = chrono::Utc::now() + chrono::Duration::hours(2);
    assert_eq!(store.time_out_reconciliations(later).await.unwrap(), 1);
    let failed = api.get(&operation).await;
    assert_eq!(failed.body["status"], "Failed");
    assert_eq!(failed.body["error"]["code"], "ReconciliationTimedOut");
}

on_both_backends!(
    concurrent_first_configurations_of_a_cluster_all_land_with_one_flux_extension,
    concurrent_first_case
);
async fn concurrent_first_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "busy");
    api.put_cluster("s", "rg", "busy").await;
    let api = std::sync::Arc::new(api);
    let writers: Vec<_> = (0..16)
        .map(|i| {
            let (api, cluster) = (api.clone(), cluster.clone());
            tokio::spawn(async move { api.put_config(&cluster, &format!("cfg-{i}"), git_config_body()).await })
        })
        .collect();
    for writer in writers {
        let answer = writer.await.unwrap();
        assert_eq!(answer.status, StatusCode::CREATED, "{answer:?}");
    }
    let extensions = api
        .get(&with_version(
            &format!("{cluster}/providers/Microsoft.KubernetesConfiguration/extensions"),
            "2023-05-01",
        ))
        .await;
    assert_eq!(
        extensions.body["value"].as_array().map(Vec::len),
        Some(1),
        "{extensions:?}"
    );
}
