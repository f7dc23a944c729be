//! The connections a server holds: a cap on how many, and which one gives way when a new one arrives at the cap.
//!
//! Every agent of a fleet holds a connection, idle between its requests only for a moment, so a server must hold
//! many; but sockets that never send a request, or stop sending, must not crowd everyone else out. hyper closes a
//! connection that takes longer than the header read timeout to send a request's head (idle time between requests
//! included). On top of that, at the cap a new connection takes the place of the connection that has waited
//! longest for its next request; a connection inside a request (an agent's long-poll, a live stream, an upload) is
//! never closed for another. Only when every connection is inside a request is a new one refused, with a 503 that
//! says why.

use std::collections::{BTreeMap, HashMap};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::http::{Request, Response};
use axum::response::IntoResponse;
use fluxplane_agent_protocol::agent::{DESIRED_STATE_PATH, MAX_WAIT_SECONDS};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::error::ApiError;

/// Files kept free below the open-file limit for everything but client connections (the database pool, logs,
/// the data directory, the refusals' own short-lived sockets).
const RESERVED_FILES: u64 = 512;

/// Refused connections being answered at once; past it, a refused connection is closed without an answer.
pub const MAX_REFUSING: usize = 256;

/// Longest time a refused connection is answered for (and, over TLS, has for its handshake before that).
pub const REFUSAL_TIME: Duration = Duration::from_secs(2);

/// The connections of one server.
pub struct Connections {
    max: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    open: usize,
    next: u64,
    /// Every open connection by id.
    entries: HashMap<u64, Entry>,
    /// The connections waiting for a request, by when they began to wait (a sequence number): the first has
    /// waited longest.
    waiting: BTreeMap<u64, u64>,
}

struct Entry {
    /// Requests in progress (HTTP/1.1 answers one at a time, HTTP/2 many; counted so that a response body outliving
    /// the next request cannot mark the connection idle).
    busy: usize,
    /// Requests begun so far: tells a connection that stayed idle from one that was busy in between.
    begun: u64,
    /// Where the connection sits in `waiting`, while it waits.
    waiting_since: Option<u64>,
    evict: Arc<Notify>,
}

/// Whether a new connection is served.
pub enum Admission {
    Admitted(Arc<Slot>),
    /// Every connection is inside a request: the new one is answered 503 and closed.
    Refused,
}

impl Connections {
    /// Connections up to `max`, lowered to what the open-file limit allows.
    pub fn new(max: usize) -> Self {
        let fitting = match rlimit::Resource::NOFILE.get() {
            Ok((soft, _)) => usize::try_from(soft.saturating_sub(RESERVED_FILES)).unwrap_or(usize::MAX),
            Err(_) => max,
        };
        if fitting < max {
            tracing::warn!(
                max_connections = max,
                allowed = fitting,
                "--max-connections lowered to fit the open-file limit"
            );
        }
        Self::with_cap(max.min(fitting).max(1))
    }

    fn with_cap(max: usize) -> Self {
        Self {
            max,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The cap in force.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Admits a connection just accepted, asking the one that has waited longest for a request to close if the
    /// cap is reached.
    pub fn admit(self: &Arc<Self>) -> Admission {
        let mut inner = self.lock();
        if inner.open >= self.max {
            let Some((_, oldest)) = inner.waiting.pop_first() else {
                return Admission::Refused;
            };
            let entry = inner.entries.get_mut(&oldest).expect("a waiting connection is open");
            entry.waiting_since = None;
            entry.evict.notify_one();
        }
        inner.open += 1;
        let (id, since) = (inner.next, inner.next + 1);
        inner.next += 2;
        let evict = Arc::new(Notify::new());
        inner.entries.insert(
            id,
            Entry {
                busy: 0,
                begun: 0,
                waiting_since: Some(since),
                evict: evict.clone(),
            },
        );
        inner.waiting.insert(since, id);
        Admission::Admitted(Arc::new(Slot {
            id,
            connections: self.clone(),
            evict,
            quiet: Notify::new(),
        }))
    }

    /// Closes every connection waiting for a request, as the cap closes the one waiting longest: a server shutting
    /// down does so once its clients have had time to read its goodbye (an HTTP/2 GOAWAY), so that a client that
    /// never answers it (one no longer reading its socket) cannot hold the shutdown up.
    pub fn close_waiting(&self) {
        let mut inner = self.lock();
        let waiting = std::mem::take(&mut inner.waiting);
        for id in waiting.into_values() {
            if let Some(entry) = inner.entries.get_mut(&id) {
                entry.waiting_since = None;
                entry.evict.notify_one();
            }
        }
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.lock().open
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One admitted connection's place; dropping it frees the place.
pub struct Slot {
    id: u64,
    connections: Arc<Connections>,
    evict: Arc<Notify>,
    /// Told when the connection's last request in progress ends.
    quiet: Notify,
}

impl Slot {
    fn busy(&self) {
        let mut inner = self.connections.lock();
        let Some(entry) = inner.entries.get_mut(&self.id) else {
            return;
        };
        entry.busy += 1;
        entry.begun += 1;
        if let Some(since) = entry.waiting_since.take() {
            inner.waiting.remove(&since);
        }
    }

    fn idle(&self) {
        let mut inner = self.connections.lock();
        let since = inner.next;
        let Some(entry) = inner.entries.get_mut(&self.id) else {
            return;
        };
        entry.busy = entry.busy.saturating_sub(1);
        if entry.busy > 0 {
            return;
        }
        if entry.waiting_since.is_none() {
            entry.waiting_since = Some(since);
            inner.next += 1;
            inner.waiting.insert(since, self.id);
        }
        self.quiet.notify_one();
    }

    /// Requests in progress and requests begun so far.
    fn activity(&self) -> (usize, u64) {
        let inner = self.connections.lock();
        inner.entries.get(&self.id).map_or((0, 0), |e| (e.busy, e.begun))
    }

    /// Completes once the connection has gone `limit` without a request in progress or begun: for HTTP/2, what
    /// hyper's header read timeout is for HTTP/1.1 (which counts idle time between requests). Without it an HTTP/2
    /// connection that opens no stream would hold its place until the cap evicts it.
    pub async fn idle_for(&self, limit: Duration) {
        loop {
            let (busy, begun) = self.activity();
            if busy > 0 {
                // `notify_one` keeps its permit for a request that ends before this waits: no wake-up is lost
                self.quiet.notified().await;
                continue;
            }
            tokio::time::sleep(limit).await;
            if self.activity() == (0, begun) {
                return;
            }
        }
    }

    /// Completes when the connection is asked to make room and is still waiting for a request; the connection
    /// should then be dropped, which closes it.
    pub async fn evicted(&self) {
        loop {
            self.evict.notified().await;
            let inner = self.connections.lock();
            if inner.entries.get(&self.id).is_some_and(|e| e.busy == 0) {
                return;
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut inner = self.connections.lock();
        if let Some(entry) = inner.entries.remove(&self.id) {
            if let Some(since) = entry.waiting_since {
                inner.waiting.remove(&since);
            }
            inner.open -= 1;
        }
    }
}

/// The service every connection is served by: marks its connection busy from a request's arrival until its response
/// body is done, and answers 408 to a request that takes longer than its time limit, reading its body included, so
/// that a client sending slowly cannot hold a connection and its handler for ever. Both live here rather than in
/// middleware because this service boxes each request's future anyway: a middleware layer would clone the routes'
/// services and box again, for every request (measured: about 2 KiB more held per waiting long-poll).
#[derive(Clone)]
pub struct Tracked<S> {
    inner: S,
    slot: Arc<Slot>,
    request_timeout: Duration,
}

impl<S> Tracked<S> {
    pub fn new(inner: S, slot: Arc<Slot>, request_timeout: Duration) -> Self {
        Self {
            inner,
            slot,
            request_timeout,
        }
    }
}

impl<S, B> tower::Service<Request<B>> for Tracked<S>
where
    S: tower::Service<Request<B>, Response = Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        self.slot.busy();
        // the guard goes with the response body, or is dropped with the future if the request is abandoned
        let guard = Busy(self.slot.clone());
        let mut limit = self.request_timeout;
        if request.uri().path() == DESIRED_STATE_PATH {
            // an agent's long-poll waits as long as it asked, at most this, before it is answered
            limit += Duration::from_secs(MAX_WAIT_SECONDS);
        }
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = match tokio::time::timeout(limit, response).await {
                Ok(response) => response?,
                Err(_) => ApiError::RequestTimeout(limit).into_response(),
            };
            Ok(response.map(|body| Body::new(Guarded { body, _guard: guard })))
        })
    }
}

/// Marks the connection idle again when dropped.
struct Busy(Arc<Slot>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.idle();
    }
}

/// A response body that holds its connection busy until it is done.
struct Guarded {
    body: Body,
    _guard: Busy,
}

impl HttpBody for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Answers a connection refused at the cap with a 503 and `Retry-After`, and closes it ([`answer_and_close`]).
/// Over TLS, `stream` is the connection once handshaken.
pub async fn refuse<S: AsyncRead + AsyncWrite + Unpin>(stream: S, max: usize) {
    let message = format!("the server holds its limit of {max} connections, each inside a request; retry shortly");
    answer_and_close(
        stream,
        "503 Service Unavailable",
        "ServerBusy",
        &message,
        "retry-after: 1\r\n",
    )
    .await;
}

/// Answers a plain HTTP request sent to a server that speaks HTTPS: 400 saying so, where the TLS handshake would
/// only send bytes the client shows as garbage ("HTTP/0.9").
pub async fn require_tls(stream: TcpStream) {
    let message = "this server speaks HTTPS only: use an https:// URL";
    answer_and_close(stream, "400 Bad Request", "HttpsRequired", message, "").await;
}

/// Answers an ARM error without serving the connection: reads the request's head (an answer before the request
/// confuses HTTP clients), answers, and closes, reading what else the client sent meanwhile so that closing does
/// not reset the connection before the answer is read. [`REFUSAL_TIME`] at most in all.
async fn answer_and_close<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    status: &str,
    code: &str,
    message: &str,
    headers: &str,
) {
    let body = format!(r#"{{"error":{{"code":"{code}","message":"{message}"}}}}"#);
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nx-ms-error-code: {code}\r\n{headers}\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let answer = async {
        let mut head = Vec::new();
        let mut buffer = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
            let read = stream.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..read]);
        }
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        while stream.read(&mut buffer).await? > 0 {}
        std::io::Result::Ok(())
    };
    let _ = tokio::time::timeout(REFUSAL_TIME, answer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admitted(connections: &Arc<Connections>) -> Arc<Slot> {
        match connections.admit() {
            Admission::Admitted(slot) => slot,
            Admission::Refused => panic!("refused"),
        }
    }

    #[tokio::test]
    async fn at_the_cap_the_connection_waiting_longest_makes_room() {
        let connections = Arc::new(Connections::with_cap(2));
        let first = admitted(&connections);
        let second = admitted(&connections);
        let third = admitted(&connections);
        tokio::time::timeout(Duration::from_secs(1), first.evicted())
            .await
            .expect("the oldest waiting connection is asked to close");
        drop(first);
        assert_eq!(connections.open(), 2);
        drop((second, third));
        assert_eq!(connections.open(), 0);
    }

    #[tokio::test]
    async fn a_connection_inside_a_request_is_never_evicted() {
        let connections = Arc::new(Connections::with_cap(2));
        let polling = admitted(&connections);
        polling.busy();
        let waiting = admitted(&connections);
        // the newcomer takes the waiting connection's place, not the busy one's
        let _newcomer = admitted(&connections);
        tokio::time::timeout(Duration::from_secs(1), waiting.evicted())
            .await
            .expect("the waiting connection makes room");
        drop(waiting);
        let uploading = admitted(&connections);
        uploading.busy();
        // everyone is inside a request now: no room
        assert!(matches!(connections.admit(), Admission::Refused));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), polling.evicted())
                .await
                .is_err()
        );
        // a connection that finishes its request waits again, and may then make room
        polling.idle();
        let _last = admitted(&connections);
        tokio::time::timeout(Duration::from_secs(1), polling.evicted())
            .await
            .expect("once idle it gives way");
        drop(uploading);
    }

    #[tokio::test]
    async fn closing_the_waiting_connections_spares_those_inside_a_request_until_they_end() {
        let connections = Arc::new(Connections::with_cap(4));
        let (waiting, polling) = (admitted(&connections), admitted(&connections));
        polling.busy();
        connections.close_waiting();
        tokio::time::timeout(Duration::from_secs(1), waiting.evicted())
            .await
            .expect("a waiting connection is asked to close");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), polling.evicted())
                .await
                .is_err(),
            "a connection inside a request is left to finish it"
        );
        // once its request ends it waits, and the next round closes it
        polling.idle();
        connections.close_waiting();
        tokio::time::timeout(Duration::from_secs(1), polling.evicted())
            .await
            .expect("closed once its request ended");
    }

    #[tokio::test]
    async fn a_connection_is_idle_only_after_the_limit_passes_without_a_request() {
        let connections = Arc::new(Connections::with_cap(4));
        let slot = admitted(&connections);
        let limit = Duration::from_secs(1);
        let idle = tokio::spawn({
            let slot = slot.clone();
            async move { slot.idle_for(limit).await }
        });
        // a request in progress past the limit keeps the connection from being idle
        tokio::time::sleep(Duration::from_millis(500)).await;
        slot.busy();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(!idle.is_finished(), "idle while a request is in progress");
        // once it ends, the count starts again from there
        slot.idle();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!idle.is_finished(), "idle half the limit since the request ended");
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("idle once the limit passes without a request")
            .unwrap();
    }

    #[tokio::test]
    async fn an_eviction_that_arrives_as_a_request_starts_is_ignored() {
        let connections = Arc::new(Connections::with_cap(1));
        let slot = admitted(&connections);
        let _newcomer = admitted(&connections);
        slot.busy();
        assert!(
            tokio::time::timeout(Duration::from_millis(50), slot.evicted())
                .await
                .is_err(),
            "a request began before the connection saw the eviction"
        );
    }
}
