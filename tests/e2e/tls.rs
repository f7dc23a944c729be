//! End-to-end: HTTPS served by the real binary with `--tls-cert`/`--tls-key`, to a real HTTPS client (reqwest with
//! rustls) and to the agent with `--ca-file`; a renewal rewritten in place reaches new connections.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::process::{Process, run};
use crate::common::*;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A CA made for one test, and the server certificates it signs for 127.0.0.1 and localhost.
struct Authority {
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
    pem: String,
}

impl Authority {
    fn new() -> Self {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "fluxplane e2e CA");
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        Self {
            issuer: rcgen::Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate (PEM) and its key (PEM).
    fn server(&self) -> (String, String) {
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// Where one test's files are: the CA, the served certificate and key.
struct Files {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl Files {
    fn write(dir: &Path, authority: &Authority, (cert, key): &(String, String)) -> Self {
        let files = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        };
        std::fs::write(&files.ca, &authority.pem).unwrap();
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }
}

/// `fluxplane serve` over HTTPS on the embedded store in `dir`; answers it and its base URL.
fn serve_https(dir: &Path, files: &Files) -> (Process, String) {
    let data = dir.join("data");
    let mut server = Process::start(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            data.to_str().unwrap(),
            "--log-format",
            "json",
            "--tls-cert",
            files.cert.to_str().unwrap(),
            "--tls-key",
            files.key.to_str().unwrap(),
            "--header-read-timeout",
            "2s",
        ],
        dir,
    );
    let address = server.log_event("fluxplane listening")["address"]
        .as_str()
        .unwrap()
        .to_owned();
    (server, format!("https://{address}"))
}

fn owner_token(dir: &Path) -> String {
    let data = dir.join("data");
    let minted = run(&[
        "token",
        "--data-dir",
        data.to_str().unwrap(),
        "--subject",
        "ops",
        "--role",
        "Owner",
        "--scope",
        "/",
    ]);
    assert!(minted.status.success(), "{minted:?}");
    String::from_utf8(minted.stdout).unwrap().trim().to_owned()
}

/// The certificate a new connection is served, in DER.
async fn served_certificate(base: &str, ca: &Path) -> Vec<u8> {
    let trust = fluxplane_agent::tls::Trust::from_ca_file(ca).unwrap();
    // a client of its own, without a pool: every call is a new connection and handshake
    let client = fluxplane_agent::tls::http_client_trusting(&trust)
        .tls_info(true)
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let answer = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    answer
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .expect("the certificate the server presented")
        .to_vec()
}

fn der(pem: &str) -> Vec<u8> {
    use rustls_pki_types::pem::PemObject;
    rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[tokio::test]
async fn serve_speaks_https_with_the_files_it_is_given_and_serves_a_renewal_to_the_next_connection() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new();
    let first = authority.server();
    let files = Files::write(dir.path(), &authority, &first);
    let (mut server, base) = serve_https(dir.path(), &files);
    let token = owner_token(dir.path());
    assert_eq!(served_certificate(&base, &files.ca).await, der(&first.0));

    // the URLs it writes say https://, unless a proxy in front says otherwise
    let client = https_client(&files.ca);
    let cluster = cluster_path("s", "rg", "c1");
    let registered = client
        .put(format!("{base}{}", with_version(&cluster, CLUSTER_API)))
        .bearer_auth(&token)
        .json(&cluster_body())
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), StatusCode::CREATED);
    let config = with_version(&config_path(&cluster, "c"), FLUX_API);
    let written = client
        .put(format!("{base}{config}"))
        .bearer_auth(&token)
        .json(&git_config_body())
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), StatusCode::CREATED);
    let operation = written.headers()["azure-asyncoperation"].to_str().unwrap();
    assert!(
        operation.starts_with(&format!("{base}/subscriptions/s/")),
        "{operation}"
    );
    let deleted = client
        .delete(format!("{base}{config}"))
        .bearer_auth(&token)
        .header("x-forwarded-proto", "http")
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::ACCEPTED);
    let location = deleted.headers()["location"].to_str().unwrap();
    assert!(location.starts_with("http://127.0.0.1:"), "{location}");

    // plain HTTP gets an answer that says why, rather than TLS bytes
    let plain = http_client()
        .get(base.replacen("https://", "http://", 1) + "/healthz")
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
    let body: Value = plain.json().await.unwrap();
    assert_eq!(body["error"]["code"], "HttpsRequired", "{body}");
    // a client that does not trust the certificate is refused, and that is no error of the server's
    assert!(http_client().get(format!("{base}/healthz")).send().await.is_err());
    server.log_event("TLS handshake failed");
    // nor is a connection that never starts its handshake: it is closed after --header-read-timeout
    let silent = tokio::net::TcpStream::connect(base.trim_start_matches("https://"))
        .await
        .unwrap();
    server.log_event("TLS handshake not finished in time");
    drop(silent);

    // cert-manager renews: the files are rewritten in place, and the next connection gets the new certificate
    let renewed = authority.server();
    std::fs::write(&files.cert, &renewed.0).unwrap();
    std::fs::write(&files.key, &renewed.1).unwrap();
    server.log_event("TLS certificate reloaded; new connections get it");
    assert_eq!(served_certificate(&base, &files.ca).await, der(&renewed.0));

    // a rewrite that does not load is an error in the log, and the certificate in use stays
    std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ncut short").unwrap();
    let failed =
        server.log_event("the TLS certificate files changed but do not load; still serving the previous certificate");
    assert_eq!(failed["level"], "ERROR");
    assert!(failed["error"].as_str().unwrap().contains("tls.crt"), "{failed}");
    assert_eq!(served_certificate(&base, &files.ca).await, der(&renewed.0));

    server.terminate();
    let log = server.drain_log();
    let problems: Vec<_> = log
        .iter()
        .filter(|line| line.contains(r#""level":"WARN""#) || line.contains(r#""level":"ERROR""#))
        .filter(|line| !line.contains("do not load") && !line.contains("--max-connections lowered"))
        .collect();
    assert!(
        problems.is_empty(),
        "handshake failures are the client's, logged at debug: {problems:#?}"
    );
    assert!(
        !log.iter().any(|line| line.contains("PRIVATE KEY")),
        "the key reached the log"
    );
}

#[test]
fn serve_refuses_a_certificate_without_its_key_and_names_the_file_that_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new();
    let files = Files::write(dir.path(), &authority, &authority.server());
    let data = dir.path().join("data");
    let serve = |tls: &[&str]| {
        let output = std::process::Command::new(crate::common::process::BINARY)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()])
            .args(tls)
            .env_remove("FLUXPLANE_TLS_CERT")
            .env_remove("FLUXPLANE_TLS_KEY")
            .output()
            .unwrap();
        assert!(!output.status.success(), "{tls:?} served");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    let (cert, key) = (files.cert.to_str().unwrap(), files.key.to_str().unwrap());

    assert!(serve(&["--tls-cert", cert]).contains("--tls-key"));
    assert!(serve(&["--tls-key", key]).contains("--tls-cert"));
    let missing = dir.path().join("missing.crt");
    let unreadable = serve(&["--tls-cert", missing.to_str().unwrap(), "--tls-key", key]);
    assert!(unreadable.contains("missing.crt"), "{unreadable}");

    let other_key = dir.path().join("other.key");
    std::fs::write(&other_key, authority.server().1).unwrap();
    let mismatched = serve(&["--tls-cert", cert, "--tls-key", other_key.to_str().unwrap()]);
    assert!(
        mismatched.contains("other.key") && mismatched.contains("does not match"),
        "{mismatched}"
    );
    let swapped = serve(&["--tls-cert", key, "--tls-key", cert]);
    assert!(
        swapped.contains("tls.key") && swapped.contains("holds no certificate"),
        "{swapped}"
    );
    assert!(!swapped.contains("PRIVATE KEY-----\n"), "{swapped}");

    // the environment's variables follow the same rule
    let only_variable = std::process::Command::new(crate::common::process::BINARY)
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir", data.to_str().unwrap()])
        .env("FLUXPLANE_TLS_CERT", cert)
        .env_remove("FLUXPLANE_TLS_KEY")
        .output()
        .unwrap();
    assert!(!only_variable.status.success());
    assert!(String::from_utf8_lossy(&only_variable.stderr).contains("--tls-key"));
}

#[tokio::test]
async fn an_agent_registers_and_polls_over_https_trusting_its_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new();
    let files = Files::write(dir.path(), &authority, &authority.server());
    let (mut server, base) = serve_https(dir.path(), &files);
    let token = owner_token(dir.path());
    let identity = dir.path().join("agent.json");
    let cluster = cluster_path("s", "rg", "https-1");
    let register = |ca: Option<&Path>| {
        let mut args = vec![
            "agent",
            "register",
            "--server",
            &base,
            "--token",
            &token,
            "--cluster",
            &cluster,
            "--identity",
            identity.to_str().unwrap(),
        ];
        if let Some(ca) = ca {
            args.extend(["--ca-file", ca.to_str().unwrap()]);
        }
        run(&args)
    };

    // the platform's roots do not know this CA
    let untrusted = register(None);
    assert!(!untrusted.status.success());
    let message = String::from_utf8_lossy(&untrusted.stderr);
    assert!(message.contains("--ca-file"), "{message}");
    // a CA file that does not parse is an error naming it
    let garbled = dir.path().join("garbled.pem");
    std::fs::write(&garbled, "not a certificate").unwrap();
    let refused = register(Some(&garbled));
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("garbled.pem") && message.contains("no certificate"),
        "{message}"
    );

    let registered = register(Some(&files.ca));
    assert!(registered.status.success(), "{registered:?}");

    let target = dir.path().join("cluster");
    // `agent run` takes the CA from the environment here (registration took the flag)
    let agent_log = dir.path().join("agent.log");
    let mut agent = std::process::Command::new(crate::common::process::BINARY)
        .args([
            "agent",
            "run",
            "--identity",
            identity.to_str().unwrap(),
            "--target",
            &format!("dir:{}", target.display()),
            "--poll-wait",
            "5s",
        ])
        .env("FLUXPLANE_CA_FILE", &files.ca)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&agent_log).unwrap())
        .spawn()
        .unwrap();

    let client = https_client(&files.ca);
    let config = with_version(&config_path(&cluster, "over-https"), FLUX_API);
    let written = client
        .put(format!("{base}{config}"))
        .bearer_auth(&token)
        .json(&json!({"properties": {
            "gitRepository": {"url": "https://example.invalid/fleet.git", "repositoryRef": {"branch": "main"}},
            "kustomizations": {"apps": {"path": "./apps"}}
        }}))
        .send()
        .await
        .unwrap();
    assert_eq!(written.status(), StatusCode::CREATED);
    // the agent polled it over HTTPS and wrote it out
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let written_out = target.join("over-https/fluxconfig.yaml");
    while !written_out.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the agent did not write the configuration; its log: {}",
            std::fs::read_to_string(&agent_log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cluster_answer: Value = client
        .get(format!("{base}{}", with_version(&cluster, CLUSTER_API)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        cluster_answer["properties"]["connectivityStatus"], "Connected",
        "{cluster_answer}"
    );
    let _ = agent.kill();
    let _ = agent.wait();
    server.terminate();
}

#[tokio::test]
async fn over_tls_a_connection_stuck_in_its_handshake_makes_room_at_the_cap_and_a_busy_server_still_answers_503() {
    use tokio::io::AsyncReadExt;

    let dir = tempfile::tempdir().unwrap();
    let authority = Authority::new();
    let files = Files::write(dir.path(), &authority, &authority.server());
    let (cert, key) = (files.cert.clone(), files.key.clone());
    let Some(server) = fluxplane_api::testing::TestServer::start_with(fluxplane_api::testing::Backend::Sqlite, |c| {
        c.tls_cert = Some(cert);
        c.tls_key = Some(key);
        c.max_connections = 2;
    })
    .await
    else {
        return;
    };
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let token = server.owner_token();
    // a connection that never begins its handshake holds a place while it waits
    let mut silent = tokio::net::TcpStream::connect(server.address).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // two live streams, each inside a request on a connection of its own: the second takes the silent one's place
    let events = format!(
        "{}/subscriptions/s/providers/Fluxplane.Fleet/events?api-version=2026-01-01",
        server.base
    );
    let mut streams = Vec::new();
    for _ in 0..2 {
        let stream = https_client(&files.ca)
            .get(&events)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(stream.status(), StatusCode::OK);
        streams.push(stream);
    }
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read(&mut byte))
        .await
        .expect("the connection stuck in its handshake is closed to make room");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    // every place is inside a request: a new connection is refused, over TLS, with a 503 that says why
    let refused = https_client(&files.ca)
        .get(format!("{}/healthz", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["code"], "ServerBusy", "{body}");
    drop(streams);
    drop(server);
}
