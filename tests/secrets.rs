//! End-to-end: secret fields are write-only. No answer carries them, the database holds only their ciphertext,
//! and a PATCH keeps them unless it changes them.

mod common;

use common::*;
use fluxplane_api::flux::secrets::SecretFields;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

const SECRETS: [&str; 5] = [
    "ssh-private-key-SENTINEL-1",
    "https-key-SENTINEL-2",
    "account-key-SENTINEL-3",
    "client-secret-SENTINEL-4",
    "sas-token-SENTINEL-5",
];

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
    for secret in SECRETS {
        assert!(!text.contains(secret), "{what} contains {secret}: {text}");
    }
}

/// Every byte the database holds, as text.
async fn database_dump(api: &Api) -> String {
    let db = &api.server.database;
    match db.backend {
        Backend::Sqlite => {
            let mut all = String::new();
            for entry in std::fs::read_dir(db.dir.path()).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name().unwrap().to_string_lossy().starts_with("fluxplane.db") {
                    all.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
                }
            }
            assert!(all.contains("gitops"), "the dump reads the database");
            all
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
            let mut all = String::new();
            for table in ["clusters", "flux_configurations", "operations"] {
                let rows: Vec<String> =
                    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT t::text FROM {table} t")))
                        .fetch_all(&mut conn)
                        .await
                        .unwrap();
                all.push_str(&rows.join("\n"));
            }
            assert!(all.contains("gitops"), "the dump reads the database");
            all
        }
    }
}

/// The secrets the store holds for the configuration, decrypted with the server's key.
async fn stored_secrets(api: &Api, name: &str) -> Option<Value> {
    let store = &api.server.state.store;
    let cluster = store.get_cluster("s/rg/c1").await.unwrap().unwrap();
    let record = store.get_configuration(cluster.id, name).await.unwrap().unwrap();
    let sealed = record.secrets?;
    let plain = api
        .server
        .state
        .cipher
        .open(&sealed, &format!("s/rg/c1/{name}"))
        .unwrap();
    Some(SecretFields::from_bytes(&plain).unwrap().as_value())
}

on_both_backends!(secrets_never_appear_in_answers_or_in_the_database, never_out_case);
async fn never_out_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
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
    let mistyped = api
        .put_config(
            &cluster,
            "typo",
            json!({"properties": {
                "gitRepository": {"url": "https://x.io/r", "repositoryRef": {"branch": "main"}},
                "configurationProtectedSettings": SECRETS[1]
            }}),
        )
        .await;
    assert_eq!(mistyped.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        mistyped.body["error"]["target"],
        "properties.configurationProtectedSettings"
    );
    assert_no_secret(&mistyped.body.to_string(), "an error about a mistyped secret");
    assert_no_secret(&database_dump(&api).await, "the database");

    let stored = stored_secrets(&api, "cfg")
        .await
        .expect("the secrets are kept, encrypted");
    assert_eq!(stored["configurationProtectedSettings"]["sshPrivateKey"], SECRETS[0]);
    assert_eq!(stored["azureBlob"]["servicePrincipal"]["clientSecret"], SECRETS[3]);
}

on_both_backends!(a_patch_keeps_secrets_it_does_not_touch, patch_keeps_case);
async fn patch_keeps_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let cluster = cluster_path("s", "rg", "c1");
    api.put_cluster("s", "rg", "c1").await;
    api.put_config(&cluster, "cfg", blob_body()).await;
    let path = with_version(&config_path(&cluster, "cfg"), FLUX_API);

    api.call(
        Method::PATCH,
        &path,
        Some(json!({"properties": {"azureBlob": {"containerName": "other"}}})),
    )
    .await;
    let kept = stored_secrets(&api, "cfg").await.unwrap();
    assert_eq!(kept["azureBlob"]["accountKey"], SECRETS[2]);
    assert_eq!(kept["configurationProtectedSettings"]["httpsKey"], SECRETS[1]);

    api.call(
        Method::PATCH,
        &path,
        Some(json!({"properties": {"configurationProtectedSettings": {"httpsKey": null, "bucketSecretKey": "new"}}})),
    )
    .await;
    let changed = stored_secrets(&api, "cfg").await.unwrap();
    assert_eq!(
        changed["configurationProtectedSettings"],
        json!({"sshPrivateKey": SECRETS[0], "bucketSecretKey": "new"})
    );

    // a PUT replaces the whole configuration, secrets included
    let mut without = blob_body();
    let properties = without["properties"].as_object_mut().unwrap();
    properties.remove("configurationProtectedSettings");
    let blob = properties["azureBlob"].as_object_mut().unwrap();
    for field in ["accountKey", "sasToken", "servicePrincipal"] {
        blob.remove(field);
    }
    assert_eq!(api.put_config(&cluster, "cfg", without).await.status, StatusCode::OK);
    assert!(stored_secrets(&api, "cfg").await.is_none());
}
