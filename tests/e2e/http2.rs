//! End-to-end: HTTP/2 beside HTTP/1.1. A load balancer or ingress speaking HTTP/2 to the server carries many
//! agents' long-polls on one connection, a stream each; the server must serve them as it serves HTTP/1.1, and
//! hold an HTTP/2 client to the same limits (docs/SECURITY.md, "Hostile clients"). The client here is `h2`
//! itself, so that the tests send the frames they mean to.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::common::agents::*;
use crate::common::*;
use axum::body::Bytes;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::{Backend, TestServer};
use h2::client::SendRequest;
use reqwest::StatusCode;
use serde_json::Value;
use tokio::net::TcpStream;

/// An HTTP/2 connection with prior knowledge (h2c) to `address`, driven in a task of its own; the task answers how
/// the connection ended.
async fn connect(address: SocketAddr) -> (SendRequest<Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let tcp = TcpStream::connect(address).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("an HTTP/2 handshake");
    (client, tokio::spawn(connection))
}

/// A request's head for `path` on `address`, with a bearer `token`.
fn request(method: &str, address: SocketAddr, path: &str, token: &str) -> http::request::Builder {
    http::Request::builder()
        .method(method)
        .uri(format!("http://{address}{path}"))
        .header("authorization", format!("Bearer {token}"))
}

/// Sends `request` without a body on a stream of its own; answers the status and the body.
async fn send(client: &SendRequest<Bytes>, request: http::Request<()>) -> (StatusCode, Bytes) {
    let mut client = client.clone().ready().await.expect("a stream");
    let (response, _) = client.send_request(request, true).expect("the request sent");
    let response = response.await.expect("an answer");
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    let mut body = response.into_body();
    let mut bytes = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("the body");
        let _ = body.flow_control().release_capacity(chunk.len());
        bytes.extend_from_slice(&chunk);
    }
    (status, Bytes::from(bytes))
}

fn json(body: &Bytes) -> Value {
    serde_json::from_slice(body).expect("a JSON body")
}

on_both_backends!(
    agents_long_poll_on_one_http2_connection_and_a_write_wakes_its_own,
    polls_case
);
async fn polls_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (
        registered(&api, "first", dir.path()).await,
        registered(&api, "second", dir.path()).await,
    );
    let address = api.server.address;
    let (client, _connection) = connect(address).await;

    // a read answers as it does over HTTP/1.1
    let cluster = with_version(&cluster_path("s", "rg", "first"), CLUSTER_API);
    let (status, body) = send(&client, request("GET", address, &cluster, &api.token).body(()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    let over_http1 = api.get(&cluster).await;
    assert_eq!(json(&body), over_http1.body);

    // both agents poll on the one connection, each with its own identity
    let poll = |identity: &fluxplane_agent::identity::Identity, after: Option<i64>| {
        let token = identity.token().unwrap().value;
        let path = match after {
            Some(revision) => format!("/agent/v1/desired-state?after={revision}&wait=30"),
            None => "/agent/v1/desired-state".to_owned(),
        };
        let (client, request) = (client.clone(), request("GET", address, &path, &token).body(()).unwrap());
        async move { send(&client, request).await }
    };
    let (status, now) = poll(&first, None).await;
    assert_eq!(status, StatusCode::OK);
    let revision = json(&now)["revision"].as_i64().expect("a revision");
    let (_, now) = poll(&second, None).await;
    let second_revision = json(&now)["revision"].as_i64().expect("a revision");
    let first_poll = tokio::spawn(poll(&first, Some(revision)));
    let second_poll = tokio::spawn(poll(&second, Some(second_revision)));
    // both held: the server counts each cluster's poll
    let deadline = Instant::now() + Duration::from_secs(5);
    while api.server.state.notifier.waiting_clusters() < 2 {
        assert!(Instant::now() < deadline, "both polls are held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // a write to the first cluster answers its poll, and only its poll
    let (_repository, _git, url) = served_repository().await;
    let written = api
        .put_config(&cluster_path("s", "rg", "first"), "demo", config_body(&url))
        .await;
    assert_eq!(written.status, StatusCode::CREATED, "{written:?}");
    let (status, desired) = tokio::time::timeout(Duration::from_secs(5), first_poll)
        .await
        .expect("the write wakes its agent's poll")
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&desired)["configurations"][0]["name"], "demo");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!second_poll.is_finished(), "the other agent's poll is still held");
    second_poll.abort();
}

on_both_backends!(
    http2_connections_are_held_to_the_limits_of_http11_and_their_own,
    limits_case
);
async fn limits_case(backend: Backend) {
    let Some(server) = TestServer::start_with(backend, |c| {
        c.header_read_timeout = Duration::from_secs(2);
        c.request_timeout = Duration::from_secs(3);
        c.max_body_bytes = 64 * 1024;
        c.http2_max_streams = 8;
    })
    .await
    else {
        return;
    };
    let (address, token) = (server.address, server.owner_token());
    let cluster = with_version(&cluster_path("s", "rg", "slow"), CLUSTER_API);

    // the server allows a client its configured streams at once
    let (client, connection) = connect(address).await;
    let (status, _) = send(&client, request("GET", address, "/healthz", "").body(()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(client.current_max_send_streams(), 8);

    // a body past the limit is refused, as over HTTP/1.1
    let mut ready = client.clone().ready().await.unwrap();
    let too_big = request("PUT", address, &cluster, &token)
        .header("content-type", "application/json")
        .header("content-length", (128 * 1024).to_string())
        .body(())
        .unwrap();
    let (response, mut upload) = ready.send_request(too_big, false).unwrap();
    let _ = upload.send_data(Bytes::from(vec![b' '; 128 * 1024]), true);
    let response = tokio::time::timeout(Duration::from_secs(5), response)
        .await
        .expect("answered")
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 413);

    // a body that never ends is cut off by the request timeout with a 408
    let mut ready = client.clone().ready().await.unwrap();
    let slow = request("PUT", address, &cluster, &token)
        .header("content-type", "application/json")
        .header("content-length", "100")
        .body(())
        .unwrap();
    let started = Instant::now();
    let (response, mut upload) = ready.send_request(slow, false).unwrap();
    upload.send_data(Bytes::from_static(b"{"), false).unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the slow upload is answered")
        .expect("an answer");
    assert_eq!(response.status().as_u16(), 408);
    assert!(started.elapsed() >= Duration::from_secs(3), "{:?}", started.elapsed());
    drop(upload);

    // a connection without a request for the header read timeout is closed
    let idle_since = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), connection)
        .await
        .expect("the idle connection is closed")
        .unwrap()
        .ok();
    assert!(
        idle_since.elapsed() >= Duration::from_secs(1),
        "{:?}",
        idle_since.elapsed()
    );
    drop(client);

    // streams opened and reset at once, thousands of them (the rapid reset attack), leave the server serving
    // others at once
    let (attacker, attacked) = connect(address).await;
    let flood = tokio::spawn(async move {
        for _ in 0..5_000 {
            let Ok(mut ready) = attacker.clone().ready().await else {
                return;
            };
            let head = request("GET", address, "/healthz", "").body(()).unwrap();
            let Ok((_, mut stream)) = ready.send_request(head, false) else {
                return;
            };
            stream.send_reset(h2::Reason::CANCEL);
        }
    });
    let started = Instant::now();
    let (other, _other_connection) = connect(address).await;
    let (status, _) = send(&other, request("GET", address, "/healthz", "").body(()).unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "answered in {:?}",
        started.elapsed()
    );
    tokio::time::timeout(Duration::from_secs(30), flood)
        .await
        .expect("the flood ends, its connection closed or its streams spent")
        .unwrap();
    attacked.abort();
}

/// A client that stops reading its socket (a paused process, a peer gone without a close) never answers the ping
/// hyper sends with its GOAWAY, and HTTP/2 closes a connection only once that ping is answered: the server must not
/// wait for it (the header read timeout, then the ping timeout) before it stops.
#[tokio::test]
async fn a_stopping_server_closes_an_http2_connection_whose_client_stopped_reading() {
    let Some(server) = TestServer::start(Backend::Sqlite).await else {
        return;
    };
    let tcp = TcpStream::connect(server.address).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.expect("an HTTP/2 handshake");
    let (pause, paused) = tokio::sync::oneshot::channel::<()>();
    let held = tokio::spawn(async move {
        let mut connection = connection;
        tokio::select! {
            _ = &mut connection => panic!("the connection ended while in use"),
            _ = paused => {}
        }
        // the connection stays open, and nothing reads it any more
        std::future::pending::<()>().await;
        drop(connection);
    });
    let healthz = http::Request::builder()
        .uri(format!("http://{}/healthz", server.address))
        .body(())
        .unwrap();
    let (status, _) = send(&client, healthz).await;
    assert_eq!(status, StatusCode::OK, "the connection is served");
    pause.send(()).unwrap();

    let stopping = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("the server stopped without the client's answer");
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        stopping.elapsed()
    );
    held.abort();
}
