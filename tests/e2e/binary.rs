//! End-to-end: the real `fluxplane` binary, as users start it.

use std::time::Duration;

use crate::common::process::{Process, run};
use crate::common::*;
use fluxplane_api::keys::ensure_key_file;
use fluxplane_api::testing::{Backend, TestDatabase};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A protected setting (base64, as Azure's CLI sends them) to look for in the logs.
const SENTINEL: &str = "YmluYXJ5LXRlc3Qtc2VjcmV0LVNFTlRJTkVM";

/// The resident memory of a process, in bytes.
fn resident_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/<pid>/status");
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invented_methods_grow_neither_the_metrics_nor_the_memory() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut server = Process::start_logging(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        dir.path(),
        "info",
    );
    let address = server.log_event("fluxplane listening")["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let base = format!("http://{address}");
    let client = http_client();
    let send = |count: usize, invent: bool| {
        let workers: Vec<_> = (0..8)
            .map(|worker| {
                let (client, base) = (client.clone(), base.clone());
                tokio::spawn(async move {
                    for i in (worker..count).step_by(8) {
                        let method = if invent {
                            reqwest::Method::from_bytes(format!("M{i:05}").as_bytes()).unwrap()
                        } else {
                            reqwest::Method::GET
                        };
                        let path = if i % 2 == 0 { "/healthz" } else { "/no/such/route" };
                        let answer = client.request(method, format!("{base}{path}")).send().await.unwrap();
                        assert!(answer.status().is_client_error() || answer.status().is_success());
                    }
                })
            })
            .collect();
        async move {
            for worker in workers {
                worker.await.unwrap();
            }
        }
    };
    let metrics = || async {
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    };
    // warm up: every allocation a request makes has been made once
    send(4_000, false).await;
    send(2_000, true).await;
    let (metrics_before, memory_before) = (metrics().await.len(), resident_bytes(server.child.id()));
    send(20_000, true).await;
    let (exported, memory_after) = (metrics().await, resident_bytes(server.child.id()));
    assert!(
        !exported.contains("M00001") && !exported.contains("M19999"),
        "no invented method is a label"
    );
    assert!(
        exported.contains(r#"method="other""#),
        "invented methods are counted as other"
    );
    assert!(
        exported.len() < metrics_before + 4096,
        "/metrics grew from {metrics_before} to {} bytes",
        exported.len()
    );
    let grown = memory_after.saturating_sub(memory_before);
    assert!(
        grown < 16 << 20,
        "20,000 invented methods grew the resident memory by {grown} bytes"
    );
    server.terminate();
}

#[test]
fn dev_refuses_an_address_other_machines_reach() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let output = run(&["dev", "--listen", "0.0.0.0:0", "--data-dir", data.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--allow-remote"), "{stderr}");
    assert!(!data.join("jwt-secret").exists(), "nothing was set up");
}

#[tokio::test]
async fn dev_serves_https_prints_a_working_owner_token_logs_json_without_secrets_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = Process::start(
        &[
            "dev",
            "--listen",
            "127.0.0.1:0",
            "--git-listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        dir.path(),
    );
    let url = dev.stdout_line("API:").split_whitespace().last().unwrap().to_owned();
    let ca = data.join("tls/ca.pem");
    let trust = dev.stdout_line("TLS:");
    assert!(
        trust.contains(&ca.display().to_string()),
        "the banner names the CA: {trust}"
    );
    let token = dev
        .stdout_line("export TOKEN=")
        .trim()
        .trim_start_matches("export TOKEN=")
        .to_owned();
    let listening = dev.log_event("fluxplane listening");
    assert_eq!(
        url,
        format!("https://{}", listening["address"].as_str().unwrap()),
        "dev serves HTTPS"
    );

    // with a certificate from dev's own CA, which its agents trust too (they turn the demo Compliant below)
    let client = https_client(&ca);
    let untrusting = http_client().get(format!("{url}/healthz")).send().await;
    assert!(untrusting.is_err(), "a client without dev's CA refuses its certificate");
    // a secret for dev-1's demo configuration: sealed to its agent, which writes it beside the demo's objects
    let demo_1 = format!(
        "{url}/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/dev/providers/Microsoft.Kubernetes/connectedClusters/dev-1/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/demo?api-version=2025-04-01"
    );
    let patched = client
        .patch(&demo_1)
        .bearer_auth(&token)
        .json(&json!({"properties": {"configurationProtectedSettings": {"httpsKey": SENTINEL}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::ACCEPTED);
    // the demo: local agents turn their clusters' demo configuration Compliant with the demo repository's commit
    let demo = format!(
        "{url}/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/dev/providers/Microsoft.Kubernetes/connectedClusters/dev-3/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/demo?api-version=2025-04-01"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let answer: Value = client
            .get(&demo)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if answer["properties"]["complianceState"] == "Compliant" {
            assert!(
                answer["properties"]["sourceSyncedCommitId"]
                    .as_str()
                    .unwrap()
                    .starts_with("main@sha1:")
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the demo did not turn Compliant: {answer}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(data.join("clusters/dev-3/demo/fluxconfig.yaml").exists());
    let secret = data.join("clusters/dev-1/demo/secret.yaml");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&secret).is_ok_and(|text| text.contains(SENTINEL)) {
        assert!(
            std::time::Instant::now() < deadline,
            "dev-1's agent did not write the secret"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // the API documentation page loads nothing from the internet: its scripts come from the binary
    let docs = client.get(format!("{url}/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let page = docs.text().await.unwrap();
    assert!(
        page.contains("swagger-ui-bundle.js") && !page.contains("src=\"http"),
        "{page}"
    );
    let bundle = client
        .get(format!("{url}/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(bundle.status(), StatusCode::OK);
    let spec: Value = client
        .get(format!("{url}/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(spec["info"]["title"], "fluxplane");

    dev.terminate();
    // the terminal has this test's own write; the demo's writes are with the agents' traffic in their own file
    let log = dev.drain_log().join("\n");
    assert!(log.contains("configuration patched"), "{log}");
    let agents_log = std::fs::read_to_string(data.join("logs/agents.log")).unwrap();
    assert!(agents_log.contains("configuration written"), "{agents_log}");
    for log in [&log, &agents_log] {
        assert!(!log.contains(SENTINEL), "a secret reached the log");
        assert!(!log.contains(&token), "a token reached the log");
        for line in log.lines() {
            assert!(
                serde_json::from_str::<Value>(line).is_ok(),
                "not a JSON log line: {line}"
            );
        }
    }
    for file in ["fluxplane.db", "jwt-secret"] {
        assert!(data.join(file).exists(), "{file} in the data directory");
    }
}

#[tokio::test]
async fn dev_serves_plain_http_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut dev = Process::start(
        &[
            "dev",
            "--plain-http",
            "--agents",
            "0",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--log-format",
            "json",
        ],
        dir.path(),
    );
    let url = dev.stdout_line("API:").split_whitespace().last().unwrap().to_owned();
    assert!(url.starts_with("http://"), "{url}");
    dev.stdout_line("Stop with Ctrl-C.");
    let ready = http_client().get(format!("{url}/healthz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert!(!data.join("tls").exists(), "no CA made");
    dev.terminate();
}

#[tokio::test]
async fn serve_runs_on_postgres_with_the_keys_it_is_given() {
    let Some(database) = TestDatabase::create(Backend::Postgres).await else {
        return;
    };
    let dir = database.dir.path();
    let jwt_secret = dir.join("jwt-secret");
    let common = [
        "--database-url",
        database.url.as_str(),
        "--listen",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--data-dir",
        dir.to_str().unwrap(),
    ];

    // a shared database needs every replica to use the same keys, so serve never invents them there
    let missing = run(&[&["serve"][..], &common[..]].concat());
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("jwt-secret"),
        "{missing:?}"
    );

    let keygen = run(&["keygen", jwt_secret.to_str().unwrap()]);
    assert!(keygen.status.success(), "{keygen:?}");
    let first = std::fs::read(&jwt_secret).unwrap();
    assert!(run(&["keygen", jwt_secret.to_str().unwrap()]).status.success());
    assert_eq!(
        std::fs::read(&jwt_secret).unwrap(),
        first,
        "keygen keeps an existing key"
    );
    let keys = ["--jwt-secret-file", jwt_secret.to_str().unwrap()];
    let mut serve = Process::start(&[&["serve"][..], &common[..], &keys[..]].concat(), dir);
    let address = serve.log_event("fluxplane listening")["address"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = run(&[
        "token",
        "--subject",
        "ops",
        "--role",
        "Contributor",
        "--scope",
        "/subscriptions/s",
        "--jwt-secret-file",
        jwt_secret.to_str().unwrap(),
    ]);
    assert!(token.status.success(), "{token:?}");
    let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();

    let client = http_client();
    let ready = client.get(format!("http://{address}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let registered = client
        .put(format!(
            "http://{address}{}",
            with_version(&cluster_path("s", "rg", "c1"), CLUSTER_API)
        ))
        .bearer_auth(&token)
        .json(&cluster_body())
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let body: Value = registered.json().await.unwrap();
    assert_eq!(body["systemData"]["createdBy"], "ops");
    serve.terminate();
}

#[test]
fn token_refuses_mismatched_roles_and_malformed_scopes() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("jwt-secret");
    ensure_key_file(&secret).unwrap();
    let secret = secret.to_str().unwrap();
    let base = ["token", "--subject", "a", "--jwt-secret-file", secret];
    let mismatched = run(&[&base[..], &["--role", "Reader", "--role", "Owner", "--scope", "/"]].concat());
    assert!(!mismatched.status.success());
    assert!(String::from_utf8_lossy(&mismatched.stderr).contains("one --scope for each --role"));
    let malformed = run(&[&base[..], &["--role", "Reader", "--scope", "subscriptions/x"]].concat());
    assert!(!malformed.status.success());
    let no_key = run(&[
        "token",
        "--subject",
        "a",
        "--role",
        "Reader",
        "--scope",
        "/",
        "--jwt-secret-file",
        "/nonexistent",
    ]);
    assert!(!no_key.status.success());
    assert!(String::from_utf8_lossy(&no_key.stderr).contains("/nonexistent"));
}

#[test]
fn the_openapi_subcommand_prints_the_committed_document() {
    let printed = run(&["openapi"]);
    assert!(printed.status.success());
    let committed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json")).unwrap();
    assert_eq!(printed.stdout, committed);
}
