//! End-to-end: secret fields are write-only and sealed to the cluster's agent. No answer carries them, the database
//! holds only what the agent alone can open, a real agent writes them to its cluster and acknowledges them, and
//! then the control plane holds nothing of them at all.

use std::time::Duration;

use crate::common::agents::*;
use crate::common::*;
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::identity::Identity;
use fluxplane_agent_protocol::agent::{DesiredConfiguration, SecretsChange};
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

/// Every secret value the tests write, each findable in any byte dump. Protected settings are base64 (as Azure's
/// CLI sends them); the text of the first two is `sentinel-ssh-key-1` and `sentinel-https-key-2`.
const SECRETS: [&str; 5] = [
    "c2VudGluZWwtc3NoLWtleS0x",
    "c2VudGluZWwtaHR0cHMta2V5LTI=",
    "account-key-SENTINEL-3",
    "client-secret-SENTINEL-4",
    "sas-token-SENTINEL-5",
];
/// `sentinel-new-bucket-key-7`, written by a PATCH.
const PATCHED: &str = "c2VudGluZWwtbmV3LWJ1Y2tldC1rZXktNw==";

fn blob_body() -> Value {
    json!({"properties": {
        "sourceKind": "AzureBlob",
        "azureBlob": {
            "url": "https://account.blob.core.windows.net",
            "containerName": "gitops",
            "accountKey": SECRETS[2],
            "sasToken": SECRETS[4],
            "servicePrincipal": {"clientId": "app-id", "tenantId": "tenant", "clientSecret": SECRETS[3]}
        },
        "configurationProtectedSettings": {"sshPrivateKey": SECRETS[0], "httpsKey": SECRETS[1]},
        "kustomizations": {"apps": {"path": "./apps"}}
    }})
}

fn assert_no_secret(text: &str, what: &str) {
    for secret in SECRETS.iter().chain([&PATCHED]) {
        assert!(!text.contains(secret), "{what} contains {secret}: {text}");
    }
}

/// Every byte the database holds, as text: the SQLite files, or every row of every PostgreSQL table.
async fn database_dump(api: &Api) -> String {
    let db = &api.server.database;
    match db.backend {
        Backend::Sqlite => {
            let all = sqlite_files(api);
            assert!(
                all.contains("gitops") || all.contains("flux-system"),
                "the dump reads the database"
            );
            all
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let tables: Vec<String> =
                sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = 'public'")
                    .fetch_all(&mut conn)
                    .await
                    .unwrap();
            assert!(tables.contains(&"sealed_secrets".to_owned()), "{tables:?}");
            let mut all = String::new();
            for table in tables {
                let rows: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {table} t")))
                        .fetch_all(&mut conn)
                        .await
                        .unwrap();
                all.push_str(&rows.join("\n"));
            }
            assert!(
                all.contains("gitops") || all.contains("flux-system"),
                "the dump reads the database"
            );
            all
        }
    }
}

/// What the agent is offered for the configuration `name`: the desired state over the agent API.
async fn offered(identity: &Identity, name: &str) -> DesiredConfiguration {
    let desired = ControlPlane::new(identity.clone())
        .unwrap()
        .desired_state(None, Duration::ZERO)
        .await
        .unwrap();
    desired
        .configurations
        .into_iter()
        .find(|c| c.name == name)
        .expect("the configuration is offered")
}

/// The sealed changes offered for `name`, opened with the agent's key: (version, change, plaintext).
async fn opened(identity: &Identity, name: &str) -> Vec<(i64, SecretsChange, Value)> {
    let key = identity.encryption_key().unwrap();
    offered(identity, name)
        .await
        .sealed_secrets
        .iter()
        .map(|sealed| {
            let plain = key
                .open(&identity.cluster_id, name, sealed)
                .expect("the agent opens it");
            (sealed.version, sealed.change, serde_json::from_slice(&plain).unwrap())
        })
        .collect()
}

on_both_backends!(
    secrets_never_appear_in_answers_and_are_stored_sealed_to_the_agent,
    never_out_case
);
async fn never_out_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    let cluster = cluster_path("s", "rg", "c1");
    let created = api.put_config(&cluster, "cfg", blob_body()).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");
    assert_no_secret(&created.body.to_string(), "the PUT answer");
    assert_eq!(
        created.body["properties"]["azureBlob"]["servicePrincipal"]["clientId"],
        "app-id"
    );

    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let list = with_version(
        &format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations"),
        FLUX_API,
    );
    let patched = api
        .call(Method::PATCH, &path, Some(json!({"properties": {"suspend": true}})))
        .await;
    let operation = api.get(patched.header("azure-asyncoperation").unwrap()).await;
    let bad = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"azureBlob": {"accountKey": 7}, "suspend": "x"}})),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    for (what, answer) in [
        ("GET", api.get(&path).await),
        ("LIST", api.get(&list).await),
        ("PATCH", patched),
        ("operation status", operation),
        ("error", bad),
    ] {
        assert_no_secret(&format!("{:?} {}", answer.headers, answer.body), what);
    }
    for (body, target) in [
        (json!(SECRETS[1]), "properties.configurationProtectedSettings"),
        (
            json!({"httpsKey": "not base64: sentinel-plain-8"}),
            "properties.configurationProtectedSettings.httpsKey",
        ),
    ] {
        let mistyped = api
            .put_config(
                &cluster,
                "typo",
                json!({"properties": {
                    "gitRepository": {"url": "https://x.io/r", "repositoryRef": {"branch": "main"}},
                    "configurationProtectedSettings": body
                }}),
            )
            .await;
        assert_eq!(mistyped.status, StatusCode::BAD_REQUEST, "{mistyped:?}");
        assert_eq!(mistyped.body["error"]["target"], target);
        assert_no_secret(&mistyped.body.to_string(), "an error about a mistyped secret");
        assert!(!mistyped.body.to_string().contains("sentinel-plain-8"));
    }
    // the database holds ciphertext only, which the agent's key opens (and only for this configuration)
    assert_no_secret(&database_dump(&api).await, "the database");
    let sealed = opened(&identity, "cfg").await;
    assert_eq!(sealed.len(), 1);
    let (version, change, set) = &sealed[0];
    assert_eq!((*version, *change), (1, SecretsChange::Replace));
    assert_eq!(set["configurationProtectedSettings"]["sshPrivateKey"], SECRETS[0]);
    assert_eq!(set["azureBlob"]["servicePrincipal"]["clientSecret"], SECRETS[3]);
    assert_eq!(
        set["azureBlob"].get("containerName"),
        None,
        "nothing but secrets is sealed"
    );
    let offer = offered(&identity, "cfg").await;
    assert_eq!(
        offer.secrets_version,
        Some(1),
        "the suspend PATCH left the secrets as they were"
    );
    let key = identity.encryption_key().unwrap();
    assert!(
        key.open(&identity.cluster_id, "other", &offer.sealed_secrets[0])
            .is_err()
    );
}

on_both_backends!(
    secrets_cannot_be_written_before_the_agent_can_receive_them,
    no_agent_key_case
);
async fn no_agent_key_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    let refused = api.put_config(&cluster, "cfg", blob_body()).await;
    assert_eq!(refused.status, StatusCode::CONFLICT, "{refused:?}");
    assert_eq!(refused.code(), "AgentEncryptionKeyMissing");
    assert!(
        refused.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("fluxplane agent register")
    );
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    assert_eq!(
        api.get(&path).await.status,
        StatusCode::NOT_FOUND,
        "nothing was written"
    );
    // a configuration without secrets needs no agent yet
    assert_eq!(
        api.put_config(&cluster, "plain", git_config_body()).await.status,
        StatusCode::CREATED
    );
}

on_both_backends!(
    a_patch_delivers_secret_changes_and_leaves_untouched_ones_alone,
    patch_case
);
async fn patch_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    let cluster = cluster_path("s", "rg", "c1");
    api.put_config(&cluster, "cfg", blob_body()).await;
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);

    let untouched = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"azureBlob": {"containerName": "other"}}})),
        )
        .await;
    assert_eq!(untouched.status, StatusCode::ACCEPTED);
    let offer = offered(&identity, "cfg").await;
    assert_eq!((offer.generation, offer.secrets_version), (2, Some(1)));
    assert_eq!(offer.sealed_secrets.len(), 1);

    let changed = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"configurationProtectedSettings": {"httpsKey": null, "bucketSecretKey": PATCHED}}})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::ACCEPTED, "{changed:?}");
    let sealed = opened(&identity, "cfg").await;
    assert_eq!(sealed.len(), 2, "the undelivered set and the patch on top of it");
    assert_eq!((sealed[1].0, sealed[1].1), (3, SecretsChange::Merge));
    assert_eq!(
        sealed[1].2,
        json!({"configurationProtectedSettings": {"httpsKey": null, "bucketSecretKey": PATCHED}})
    );
    assert_eq!(offered(&identity, "cfg").await.sealed_secrets[1].base_version, Some(1));

    // a PUT replaces the whole configuration, secrets included
    let mut without = blob_body();
    let properties = without["properties"].as_object_mut().unwrap();
    properties.remove("configurationProtectedSettings");
    let blob = properties["azureBlob"].as_object_mut().unwrap();
    for field in ["accountKey", "sasToken", "servicePrincipal"] {
        blob.remove(field);
    }
    assert_eq!(api.put_config(&cluster, "cfg", without).await.status, StatusCode::OK);
    let offer = offered(&identity, "cfg").await;
    assert_eq!(offer.secrets_version, None);
    assert!(offer.sealed_secrets.is_empty());
    assert_no_secret(&database_dump(&api).await, "the database");
}

/// The secret the agent wrote to its `dir` target for `configuration`, parsed.
fn written_secret(agent: &RunningAgent, configuration: &str) -> Option<Value> {
    let text = std::fs::read_to_string(agent.file(configuration, "secret.yaml")).ok()?;
    Some(serde_yaml_ng::from_str(&text).unwrap())
}

/// Waits until the agent's secret for `configuration` holds `version` (`None`: until it is gone).
async fn secret_version(agent: &RunningAgent, configuration: &str, version: Option<i64>) -> Option<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let secret = written_secret(agent, configuration);
        let held = secret.as_ref().map(|s| {
            s["metadata"]["annotations"]["fluxplane.io/secrets-version"]
                .as_str()
                .unwrap()
                .parse::<i64>()
                .unwrap()
        });
        if held == version {
            return secret;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the agent holds {held:?}, not {version:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

on_both_backends!(
    an_agent_receives_secrets_once_and_the_control_plane_then_holds_nothing,
    delivery_case
);
async fn delivery_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let (_repository, _git, url) = served_repository().await;
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    let agent = RunningAgent::start(identity.clone()).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let mut body = config_body(&url);
    body["properties"]["gitRepository"]["httpsUser"] = json!("deploy-bot");
    body["properties"]["configurationProtectedSettings"] = json!({"httpsKey": SECRETS[1]});
    assert_eq!(api.put_config(&cluster, "cfg", body).await.status, StatusCode::CREATED);

    // the agent writes the secret where Flux reads it: a 0600 file for the dir target
    let secret = secret_version(&agent, "cfg", Some(1)).await.unwrap();
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["metadata"]["name"], "cfg-auth");
    assert_eq!(secret["data"]["password"], SECRETS[1]);
    assert_eq!(
        secret["data"]["username"], "ZGVwbG95LWJvdA==",
        "base64 of the HTTPS user"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(agent.file("cfg", "secret.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let source = std::fs::read_to_string(agent.file("cfg", "source.yaml")).unwrap();
    assert!(source.contains("cfg-auth"), "the source refers to the secret: {source}");
    until(&api, &path, "applied", |p| p["provisioningState"] == "Succeeded").await;
    // acknowledged with the status report: the control plane's copy is gone, ciphertext included
    let offer = offered(&identity, "cfg").await;
    assert_eq!(offer.secrets_version, Some(1));
    assert!(offer.sealed_secrets.is_empty(), "nothing left to deliver");
    let dump = database_dump(&api).await;
    assert_no_secret(&dump, "the database after acknowledgement");

    // a PATCH that does not touch secrets keeps the cluster's copy
    let suspended = api
        .call(Method::PATCH, &path, Some(json!({"properties": {"suspend": true}})))
        .await;
    assert_eq!(suspended.status, StatusCode::ACCEPTED);
    until(&api, &path, "suspended", |p| p["complianceState"] == "Suspended").await;
    let kept = written_secret(&agent, "cfg").unwrap();
    assert_eq!(kept["data"]["password"], SECRETS[1]);
    assert_eq!(kept["metadata"]["annotations"]["fluxplane.io/secrets-version"], "1");

    // one that changes them delivers the merged set
    let changed = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"suspend": false, "configurationProtectedSettings": {"httpsKey": PATCHED}}})),
        )
        .await;
    assert_eq!(changed.status, StatusCode::ACCEPTED);
    let merged = secret_version(&agent, "cfg", Some(3)).await.unwrap();
    assert_eq!(merged["data"]["password"], PATCHED);
    until(&api, &path, "re-applied", |p| p["provisioningState"] == "Succeeded").await;
    assert!(offered(&identity, "cfg").await.sealed_secrets.is_empty());
    assert_no_secret(
        &database_dump(&api).await,
        "the database after the second acknowledgement",
    );

    // a PUT without secrets removes the cluster's copy
    assert_eq!(
        api.put_config(&cluster, "cfg", config_body(&url)).await.status,
        StatusCode::OK
    );
    assert!(secret_version(&agent, "cfg", None).await.is_none());
    agent.stop().await;
}

on_both_backends!(
    secrets_sealed_to_a_replaced_agent_key_must_be_applied_again,
    rotation_case
);
async fn rotation_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    registered(&api, "c1", dir.path()).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let created = api.put_config(&cluster, "cfg", blob_body()).await;
    assert_eq!(created.status, StatusCode::CREATED);

    // the cluster's agent is registered again (a new identity, new keys) before it received them
    let identity = registered(&api, "c1", dir.path()).await;
    let failed = api.get(&path).await;
    assert_eq!(failed.body["properties"]["provisioningState"], "Failed");
    let message = failed.body["properties"]["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("registered again") && message.contains("Apply the protected settings again"),
        "{message}"
    );
    let operation = api.get(created.header("azure-asyncoperation").unwrap()).await;
    assert_eq!(operation.body["status"], "Failed");
    assert!(offered(&identity, "cfg").await.sealed_secrets.is_empty());
    assert_no_secret(&database_dump(&api).await, "the database");

    // writing them again seals them to the new key
    assert_eq!(
        api.put_config(&cluster, "cfg", blob_body()).await.status,
        StatusCode::OK
    );
    let sealed = opened(&identity, "cfg").await;
    assert_eq!(sealed[0].2["configurationProtectedSettings"]["httpsKey"], SECRETS[1]);
}

on_both_backends!(an_agent_registers_only_well_formed_encryption_keys, bad_key_case);
async fn bad_key_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    let url = api.url("/agent/v1/encryption-key");
    for body in [json!({"publicKey": "a2V5"}), json!({"publicKey": 5}), json!({})] {
        let request = api
            .client
            .put(&url)
            .bearer_auth(identity.token().unwrap().value)
            .json(&body);
        let answer = api.raw(request).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{body}: {answer:?}");
    }
    let users = api
        .client
        .put(&url)
        .bearer_auth(&api.token)
        .json(&json!({"publicKey": "a2V5"}));
    assert_eq!(api.raw(users).await.status, StatusCode::UNAUTHORIZED);
    // the registered key is still the agent's own: secrets written now open with it
    api.put_config(&cluster_path("s", "rg", "c1"), "cfg", blob_body()).await;
    assert_eq!(opened(&identity, "cfg").await.len(), 1);
}

/// Every byte of the SQLite store's files (database, write-ahead log), as text.
fn sqlite_files(api: &Api) -> String {
    let mut all = String::new();
    for entry in std::fs::read_dir(api.server.database.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("fluxplane.db") {
            all.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_sealed_secrets_leave_no_ciphertext_in_the_sqlite_files() {
    let Some(api) = Api::start(Backend::Sqlite).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", dir.path()).await;
    let cluster = cluster_path("s", "rg", "c1");
    assert_eq!(
        api.put_config(&cluster, "cfg", blob_body()).await.status,
        StatusCode::CREATED
    );
    let sealed = offered(&identity, "cfg").await.sealed_secrets;
    let ciphertext = sealed[0].ciphertext.clone();
    assert!(
        sqlite_files(&api).contains(&ciphertext),
        "the search finds what is stored"
    );

    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);
    let deleted = api
        .call(Method::DELETE, &format!("{path}&forceDelete=true"), None)
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    // secure_delete zeroes the rows; the next sweep checkpoints and truncates the write-ahead log
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sqlite_files(&api).contains(&ciphertext) {
        assert!(
            std::time::Instant::now() < deadline,
            "the deleted ciphertext is still in the SQLite files"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
