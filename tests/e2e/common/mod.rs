//! Helpers of the end-to-end tests: the real app on port 0 with a fresh database, and an HTTP client that speaks
//! to it the way Azure's SDKs do.

#![allow(dead_code)] // each test file uses its own subset

use fluxplane_api::testing::{Backend, TestServer};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

pub const CLUSTER_API: &str = "2024-01-01";
pub const FLUX_API: &str = "2025-04-01";
pub const FLEET_API: &str = "2026-01-01";

/// `n` connections to the server at `address`, each held inside a request (the fleet's event stream, which stays
/// open) as a busy server's clients hold theirs: at `--max-connections n` the next connection is refused.
pub async fn hold_connections(address: std::net::SocketAddr, token: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!(
            "GET /subscriptions/s/providers/Fluxplane.Fleet/events?api-version={FLEET_API} HTTP/1.1\r\nHost: x\r\n\
             Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(&head, b"HTTP/1.1 200", "the stream is open");
        streams.push(stream);
    }
    streams
}

pub fn cluster_path(subscription: &str, resource_group: &str, name: &str) -> String {
    format!(
        "/subscriptions/{subscription}/resourceGroups/{resource_group}/providers/Microsoft.Kubernetes/connectedClusters/{name}"
    )
}

pub fn config_path(cluster: &str, name: &str) -> String {
    format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{name}")
}

pub fn with_version(path: &str, version: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}api-version={version}")
}

/// A minimal valid cluster body.
pub fn cluster_body() -> Value {
    json!({"location": "westeurope", "tags": {"env": "prod"}, "properties": {"agentPublicKeyCertificate": "a2V5"}})
}

/// A minimal valid Flux configuration body.
pub fn git_config_body() -> Value {
    json!({"properties": {
        "gitRepository": {"url": "https://github.com/Azure/arc-k8s-demo", "repositoryRef": {"branch": "main"}},
        "kustomizations": {"infra": {"path": "./infra"}, "apps": {"path": "./apps", "dependsOn": ["infra"]}}
    }})
}

#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The ARM error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_default()
    }
}

/// An HTTP client as the tests' own: reqwest, its TLS through the agent's provider (rustls with ring), which
/// reqwest needs installed before a client is built.
pub fn http_client() -> reqwest::Client {
    fluxplane_agent::tls::http_client().build().expect("an HTTP client")
}

/// An HTTP client that trusts the CAs of `ca_file` beside the platform's roots, as the agent's `--ca-file` does.
pub fn https_client(ca_file: &std::path::Path) -> reqwest::Client {
    let trust = fluxplane_agent::tls::Trust::from_ca_file(ca_file).expect("a CA file");
    fluxplane_agent::tls::http_client_trusting(&trust)
        .build()
        .expect("an HTTP client")
}

pub struct Api {
    pub server: TestServer,
    pub client: reqwest::Client,
    pub token: String,
}

impl Api {
    pub async fn start(backend: Backend) -> Option<Self> {
        Some(Self::serving(TestServer::start(backend).await?))
    }

    /// The API of `server` as its owner calls it, over a client trusting its certificate.
    pub fn serving(server: TestServer) -> Self {
        Self {
            token: server.owner_token(),
            server,
            client: http_client(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.server.base)
        }
    }

    /// Sends a request with the owner token; `path` includes the query.
    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call_as(&self.token, method, path, body).await
    }

    pub async fn call_as(&self, token: &str, method: Method, path: &str, body: Option<Value>) -> Answer {
        let mut request = self.client.request(method, self.url(path)).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        answer(request.send().await.expect("the server answers")).await
    }

    pub async fn raw(&self, request: reqwest::RequestBuilder) -> Answer {
        answer(request.send().await.expect("the server answers")).await
    }

    pub async fn put_cluster(&self, subscription: &str, resource_group: &str, name: &str) -> Answer {
        let path = with_version(&cluster_path(subscription, resource_group, name), CLUSTER_API);
        let answer = self.call(Method::PUT, &path, Some(cluster_body())).await;
        assert!(answer.status.is_success(), "registering {name}: {answer:?}");
        answer
    }

    pub async fn put_config(&self, cluster: &str, name: &str, body: Value) -> Answer {
        self.call(
            Method::PUT,
            &with_version(&config_path(cluster, name), FLUX_API),
            Some(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, None).await
    }

    /// Follows `nextLink` from `first`, returning every item and the number of pages.
    pub async fn list_all(&self, first: &str) -> (Vec<Value>, usize) {
        let mut items = Vec::new();
        let mut pages = 0;
        let mut next = Some(first.to_owned());
        while let Some(link) = next {
            let page = self.get(&link).await;
            assert_eq!(page.status, StatusCode::OK, "{page:?}");
            pages += 1;
            items.extend(page.body["value"].as_array().expect("a value array").iter().cloned());
            next = page.body["nextLink"].as_str().map(str::to_owned);
        }
        (items, pages)
    }
}

async fn answer(response: reqwest::Response) -> Answer {
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.expect("a body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    Answer { status, headers, body }
}

/// Asserts that every field of `expected` is in `actual` with the same value (extra fields in `actual` are fine).
pub fn assert_contains(actual: &Value, expected: &Value, at: &str) {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            for (key, value) in e {
                let inner = a
                    .get(key)
                    .unwrap_or_else(|| panic!("{at}.{key} is missing from {actual}"));
                assert_contains(inner, value, &format!("{at}.{key}"));
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{at}: {actual} vs {expected}");
            for (i, (a, e)) in a.iter().zip(e).enumerate() {
                assert_contains(a, e, &format!("{at}[{i}]"));
            }
        }
        _ => assert_eq!(actual, expected, "{at}"),
    }
}

pub mod agents;
pub mod git;
pub mod process;
pub mod reports;
pub mod sshd;
