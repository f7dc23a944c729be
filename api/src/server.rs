//! Assembling the app from a configuration and a store, and serving it on a listener the caller binds, until a
//! shutdown signal the caller provides. Nothing here binds a port or reads the environment, so tests run the real
//! app on port 0.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, Response, header};
use axum::middleware;
use axum::response::IntoResponse;
use axum::routing::get;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceBuilder;
use tower::layer::layer_fn;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::{DefaultOnFailure, TraceLayer};
use tracing::Span;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::agents::ingest::Ingest;
use crate::agents::lookups::{ClusterLookups, DesiredLookups, RevisionLookups};
use crate::arm::segments::Vocabulary;
use crate::auth::{self, Authenticator};
use crate::availability::{self, DatabaseHealth, Guard};
use crate::config::ServeConfig;
use crate::connections::{self, Admission, Connections, Slot, Tracked};
use crate::dashboards::feed::Feed;
use crate::dashboards::write_log::WriteLog;
use crate::error::ApiError;
use crate::fleet::assignments::pace::{self, Pace};
use crate::lifecycle::Lifetimes;
use crate::metrics::{Metrics, Track};
use crate::notify::Notifier;
use crate::openapi::ApiDoc;
use crate::state::{AppState, TaskGuard};
use crate::store::Store;
use crate::tls::{self, Certificates};
use crate::vault::Vault;
use crate::{agents, alerts, clusters, dashboards, extensions, fleet, flux, health, managed_identity, manager, sweep};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");

/// Every API route with its OpenAPI description: the ARM API for users and the agent API.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(arm_router())
        .merge(agents::routes::router())
        .merge(fleet::receivers::hook::router())
        .merge(manager::public_router())
}

/// The ARM API users call.
fn arm_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(clusters::routes::router())
        .merge(flux::routes::router())
        .merge(extensions::routes::router())
        .merge(flux::source_control::router())
        .merge(fleet::groups::router())
        .merge(fleet::receivers::routes::router())
        .merge(fleet::assignments::routes::router())
        .merge(fleet::assignments::commits::router())
        .merge(fleet::summary::router())
        .merge(fleet::cluster_compliance::router())
        .merge(alerts::receivers::router())
        .merge(alerts::rules::router())
        .merge(dashboards::events::router())
        .merge(manager::router())
}

impl AppState {
    /// Builds the state from a configuration and a store: loads the keys and the TLS certificate the configuration
    /// names, and starts following the store's changes for the long-polls (inside a Tokio runtime).
    pub fn new(config: ServeConfig, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let auth = Authenticator::from_config(&config).context("loading the user token key")?;
        let tls = match config.tls_files()? {
            Some(files) => Some(Certificates::load(files).context("loading the TLS certificate")?),
            None => None,
        };
        let notifier = Arc::new(Notifier::default());
        let vault = match config.secrets_key_path() {
            path if path.exists() => Some(Arc::new(Vault::load(&path).context("loading the secrets key")?)),
            path if config.secrets_key_file.is_some() => {
                anyhow::bail!("--secrets-key-file {}: no such file", path.display())
            }
            _ => None,
        };
        let lifetimes = Lifetimes::of(&config);
        let messages = Arc::new(lifetimes.messages());
        let follower = tokio::spawn({
            let (store, notifier) = (store.clone(), notifier.clone());
            async move {
                if let Err(err) = store.follow_changes(notifier).await {
                    tracing::error!(error = %err, "following desired-state changes stopped; polls wake on their own writes and timeouts only");
                }
            }
        });
        let sweeper = tokio::spawn(sweep::run(
            store.clone(),
            messages.as_ref().clone(),
            config.sweep_interval,
            lifetimes,
        ));
        let rollouts = Arc::new(Pace::default());
        let pacer = tokio::spawn(pace::run(
            store.clone(),
            rollouts.clone(),
            config.sweep_interval,
            lifetimes,
        ));
        let maintainer = tokio::spawn(dashboards::maintain(
            store.clone(),
            config.offline_after,
            config.history_retention,
            config.sweep_interval,
        ));
        let feed = Arc::new(Feed::default());
        let tail = tokio::spawn(feed.clone().run(store.clone()));
        let (writes, appender) = WriteLog::start(store.clone());
        let (reports, ingester) = Ingest::start(store.clone());
        let (agent_clusters, looker) = ClusterLookups::clusters(store.clone());
        let (agent_revisions, revision_looker) = RevisionLookups::revisions(store.clone());
        let (agent_desired, desired_looker) = DesiredLookups::desired_states(store.clone());
        let database = Arc::new(DatabaseHealth::default());
        let watcher = tokio::spawn(availability::watch(store.clone(), database.clone()));
        let metrics = Arc::new(Metrics::default());
        let alert_sender =
            Arc::new(alerts::outbox::Sender::new(&config, vault.clone()).context("building the alerts' HTTP client")?);
        let outbox = tokio::spawn(alerts::outbox::run(
            store.clone(),
            alert_sender.clone(),
            metrics.clone(),
            config.alert_backlog,
        ));
        let mut tasks = vec![
            TaskGuard(follower.abort_handle()),
            TaskGuard(sweeper.abort_handle()),
            TaskGuard(pacer.abort_handle()),
            TaskGuard(maintainer.abort_handle()),
            TaskGuard(tail.abort_handle()),
            TaskGuard(appender.abort_handle()),
            TaskGuard(ingester.abort_handle()),
            TaskGuard(looker.abort_handle()),
            TaskGuard(revision_looker.abort_handle()),
            TaskGuard(desired_looker.abort_handle()),
            TaskGuard(watcher.abort_handle()),
            TaskGuard(outbox.abort_handle()),
        ];
        if let Some(tls) = &tls {
            let reloader = tokio::spawn(tls.clone().watch(tls::RELOAD_INTERVAL));
            tasks.push(TaskGuard(reloader.abort_handle()));
        }
        Ok(Self {
            config: Arc::new(config),
            store,
            auth: Arc::new(auth),
            messages,
            metrics,
            notifier,
            agent_tokens: Arc::default(),
            agent_clusters,
            agent_revisions,
            agent_desired,
            feed,
            writes,
            turns: Arc::default(),
            vault,
            alert_sender,
            rollouts,
            reports,
            hooks: Arc::default(),
            lifetimes,
            database,
            tls,
            _tasks: tasks.into(),
        })
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (_, openapi) = api_router().split_for_parts();
    let vocabulary = Vocabulary::of(openapi.paths.paths.keys().map(String::as_str));
    let (arm, _) = arm_router().split_for_parts();
    // recording writes runs inside authentication, which tells it who wrote
    let arm = arm
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            dashboards::history::record_writes,
        ))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .route_layer(guard(state.database.clone()));
    let (agent, _) = agents::routes::router().split_for_parts();
    let agent = agent
        .route_layer(layer_fn({
            let (clusters, tokens) = (state.agent_clusters.clone(), state.agent_tokens.clone());
            move |inner| agents::auth::Authenticate::new(inner, clusters.clone(), tokens.clone())
        }))
        .route_layer(guard(state.database.clone()));
    // Git hosts authenticate each delivery with the receiver's secret, not with a token
    let (hooks, _) = fleet::receivers::hook::router().split_for_parts();
    let hooks = hooks.route_layer(guard(state.database.clone()));
    // the cloud's metadata is read before signing in, and needs no database
    let (metadata, _) = manager::public_router().split_for_parts();
    let mut app = Router::new().merge(arm).merge(agent).merge(hooks).merge(metadata);
    // `dev` only: a server that hands out no token has no such route, not even one that refuses
    if state.config.managed_identity.is_some() {
        app = app.merge(managed_identity::router());
    }
    let app = app
        .merge(dashboards::ui::router())
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .fallback(|| async { ApiError::NotFound("no resource or route matches this path".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        // the layers that name the route a request matched sit inside the routing; each layer there wraps every
        // route and costs a boxed future per request, kept as long as a long-poll is held
        .layer(layer_fn({
            let metrics = state.metrics.clone();
            move |inner| Track::new(inner, metrics.clone())
        }))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|request: &Request| {
                    let route = request
                        .extensions()
                        .get::<MatchedPath>()
                        .map_or("unmatched", |p| p.as_str());
                    let request_id = request
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default();
                    tracing::info_span!(
                        "request",
                        method = %request.method(),
                        route,
                        request_id,
                        caller = tracing::field::Empty,
                    )
                })
                .on_response(|response: &Response<Body>, latency: Duration, _span: &Span| {
                    tracing::info!(
                        status = response.status().as_u16(),
                        latency_ms = latency.as_millis() as u64,
                        "answered"
                    );
                })
                // A failed answer is logged where it arises (`ApiError::into_response`: an internal error with its
                // cause, a refused flood not at all, an outage once); tower-http's own line per 5xx at ERROR made an
                // overload of 100,000 agents a million lines in minutes.
                .on_failure(DefaultOnFailure::new().level(tracing::Level::DEBUG)),
        )
        .with_state(state.clone());
    // the rest need no route: one stack around the routing, its futures nested in one allocation per request
    let around = ServiceBuilder::new()
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
            managed_identity::SECRET_HEADER,
            // what Git hosts authenticate their webhook deliveries with
            HeaderName::from_static("x-gitlab-token"),
            HeaderName::from_static("x-hub-signature"),
            HeaderName::from_static("x-hub-signature-256"),
            HeaderName::from_static("x-signature"),
        ]))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::Internal(anyhow::anyhow!("handler panicked")).into_response()
        }))
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        // ARM's fixed segments match in any case: the path is respelled before the routes see it
        .map_request(move |request| vocabulary.canonicalize(request))
        .service(app);
    Router::new().fallback_service(around)
}

/// The layer of the routes that need the database (see `availability`).
fn guard<S>(health: Arc<DatabaseHealth>) -> impl tower::Layer<S, Service = Guard<S>> + Clone {
    layer_fn(move |inner| Guard::new(inner, health.clone()))
}

/// The first bytes of an HTTP/2 connection with prior knowledge (RFC 9113 §3.4); `PRI` is no HTTP/1.1 method.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Bytes of the preface that tell HTTP/2 from HTTP/1.1.
const HTTP2_SIGN: usize = 3;
/// HTTP/2 streams a client may open and reset before the server has accepted them (hyper's default, named here
/// since it is the guard against the rapid reset attack, CVE-2023-44487): past it the connection is closed.
const HTTP2_MAX_PENDING_RESETS: usize = 20;
/// HTTP/2 streams the server may reset for a client's errors before it closes the connection (hyper's default).
const HTTP2_MAX_ERROR_RESETS: usize = 1024;
/// Bytes an HTTP/2 client may send on one stream, and on the whole connection, before the server has read them:
/// what one connection can make the server buffer. 64 KiB per stream is the protocol's own default window.
const HTTP2_STREAM_WINDOW: u32 = 64 * 1024;
const HTTP2_CONNECTION_WINDOW: u32 = 1024 * 1024;
/// Bytes of response the server buffers per stream for a client that does not read them.
const HTTP2_SEND_BUFFER: usize = 64 * 1024;
/// Largest request head (decoded header list) an HTTP/2 client may send: hyper's default.
const HTTP2_MAX_HEADER_LIST: u32 = 16 * 1024;
/// How long an HTTP/2 client has to answer the server's ping before its connection is closed.
const HTTP2_PING_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a stopping server gives its idle connections to read its goodbye (HTTP/1.1's close, HTTP/2's GOAWAY
/// and the ping hyper sends with it, one round trip) before it closes them itself, and how often it looks again
/// for connections whose last request has ended.
const SHUTDOWN_ROUND: Duration = Duration::from_secs(1);

/// Where the server is in its life, as its connections' tasks see it; phases only move forward.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// No new connections; those still in their handshake or first bytes give up, the others finish their
    /// requests.
    Stopping,
    /// The requests had their time: every connection still open is closed.
    Closing,
}

/// The protocol a connection speaks.
#[derive(Clone, Copy)]
enum Protocol {
    Http1,
    Http2,
}

/// The service each connection is served by.
type Service = TowerToHyperService<Tracked<Router>>;

/// Both protocols' connection builders, configured once for every connection.
#[derive(Clone)]
struct Protocols {
    http1: hyper::server::conn::http1::Builder,
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// How long an HTTP/2 connection may stay without a request (HTTP/1.1's is hyper's header read timeout).
    idle: Duration,
}

impl Protocols {
    fn new(config: &ServeConfig) -> Self {
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(config.header_read_timeout);
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .max_concurrent_streams(config.http2_max_streams)
            .max_pending_accept_reset_streams(HTTP2_MAX_PENDING_RESETS)
            .max_local_error_reset_streams(HTTP2_MAX_ERROR_RESETS)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .max_send_buf_size(HTTP2_SEND_BUFFER)
            .max_header_list_size(HTTP2_MAX_HEADER_LIST)
            // a peer that vanished (a load balancer's connection cut without a close) no longer holds its streams
            .keep_alive_interval(config.header_read_timeout)
            .keep_alive_timeout(HTTP2_PING_TIMEOUT);
        Self {
            http1,
            http2,
            idle: config.header_read_timeout,
        }
    }

    /// Serves a connection in `protocol` until it ends, is evicted, stays too long without a request, or the
    /// server closes its last connections.
    async fn serve<I>(&self, io: I, protocol: Protocol, service: Service, watcher: Watcher, ends: Ends)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        match protocol {
            Protocol::Http1 => {
                let connection = watcher.watch(self.http1.serve_connection(TokioIo::new(io), service));
                connection_ended(connection, ends, std::future::pending()).await;
            }
            Protocol::Http2 => {
                let connection = watcher.watch(self.http2.serve_connection(TokioIo::new(io), service));
                let idle = ends.slot.clone();
                // boxed: an HTTP/2 connection's state is larger than an HTTP/1.1 one's, and every connection's task
                // would otherwise be sized for it, where an HTTP/2 connection carries hundreds of agents
                Box::pin(connection_ended(connection, ends, idle.idle_for(self.idle))).await;
            }
        }
    }
}

/// What, besides its own end, ends a connection: its place asked for (eviction at the cap, or a stopping server
/// closing its idle connections), and the server's last phase.
struct Ends {
    slot: Arc<Slot>,
    phase: tokio::sync::watch::Receiver<Phase>,
}

/// Completes once the server has reached `phase` (or passed it).
async fn reached(phases: &mut tokio::sync::watch::Receiver<Phase>, phase: Phase) {
    let _ = phases.wait_for(|now| *now >= phase).await;
}

/// Tells HTTP/2 with prior knowledge (h2c) from HTTP/1.1 by the connection's first bytes, peeked rather than read:
/// hyper's HTTP/1.1 connection then reads the request from the socket itself, with its read buffer at its first
/// size (a replayed prefix would have doubled it, see [`serve`]).
async fn sniff(stream: &TcpStream) -> std::io::Result<Protocol> {
    let mut first = [0u8; HTTP2_SIGN];
    loop {
        let peeked = stream.peek(&mut first).await?;
        if peeked == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if !HTTP2_PREFACE.starts_with(&first[..peeked]) {
            return Ok(Protocol::Http1);
        }
        if peeked == HTTP2_SIGN {
            return Ok(Protocol::Http2);
        }
        // a peek answers at once with the bytes already there: a preface arriving byte by byte is peeked again
        // after a pause rather than in a busy loop (the whole wait is bounded by the header read timeout)
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Serves the app on `listener` until `shutdown` completes, then ends the long-polls and finishes the requests in
/// flight.
///
/// Connections are served by hyper's HTTP/1.1 and HTTP/2 servers directly rather than through `axum::serve` or
/// hyper-util's `auto` builder, which first read up to 24 bytes to tell HTTP/2's preface from HTTP/1 and replay
/// them: hyper then finds a partial request head in its 8 KiB read buffer and doubles it. Measured with heaptrack
/// over 2,000 idle long-polls, that was 16 KiB of read buffer per connection, kept for as long as the agent polls;
/// with the first bytes peeked instead ([`sniff`]), it stays at 8 KiB.
///
/// HTTP/2 comes with prior knowledge on plain HTTP (h2c, as a load balancer or ingress speaks to its backends) and
/// by ALPN under TLS. Its connections keep HTTP/1.1's protections: the same cap and eviction (a connection with a
/// stream open is inside a request), the header read timeout as the longest time without a request, the request
/// timeout and body limit per stream; and its own: `--http2-max-streams` streams at once, bounded flow-control
/// windows and send buffers, pings to a silent peer, and the connection closed after a burst of reset streams.
///
/// With a TLS certificate in the state (`--tls-cert`), every connection is TLS: its handshake runs in the
/// connection's task within `--header-read-timeout`, and a failed one is logged at debug level only, since it says
/// something about the client (an untrusted certificate, a scanner, plain HTTP), not about the server.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let notifier = state.notifier.clone();
    let limits = Arc::new(Connections::new(state.config.max_connections));
    let tls = match &state.tls {
        Some(certificates) => Some((
            certificates.acceptor().map_err(std::io::Error::other)?,
            certificates.refusal_acceptor().map_err(std::io::Error::other)?,
        )),
        None => None,
    };
    let protocols = Arc::new(Protocols::new(&state.config));
    let (request_timeout, handshake_timeout) = (state.config.request_timeout, state.config.header_read_timeout);
    // a built router is an `Arc`: each connection gets a clone, the route tables are built once
    let router = app(state);
    let graceful = GracefulShutdown::new();
    // connections still in their TLS handshake or first bytes give up when the server stops, rather than hold up
    // its shutdown
    let (phase, phases) = tokio::sync::watch::channel(Phase::Serving);
    let (mut refusals, mut last_warned) = (0u64, None);
    let refusing = Arc::new(tokio::sync::Semaphore::new(connections::MAX_REFUSING));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    refused(err).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let slot = match limits.admit() {
            Admission::Admitted(slot) => slot,
            Admission::Refused => {
                // a flood of connections must not become a flood of log lines: one every ten seconds at most
                refusals += 1;
                if last_warned.is_none_or(|at: std::time::Instant| at.elapsed() >= Duration::from_secs(10)) {
                    tracing::warn!(
                        max_connections = limits.max(),
                        refused = refusals,
                        "connections refused: every connection is inside a request"
                    );
                    (refusals, last_warned) = (0, Some(std::time::Instant::now()));
                }
                // answered while few are, else closed at once: refusals must not use up the files left
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    let (max, tls) = (limits.max(), tls.as_ref().map(|(_, refusal)| refusal.clone()));
                    tokio::spawn(async move {
                        match tls {
                            None => connections::refuse(stream, max).await,
                            Some(tls) => {
                                if let Ok(Ok(stream)) =
                                    tokio::time::timeout(connections::REFUSAL_TIME, tls.accept(stream)).await
                                {
                                    connections::refuse(stream, max).await;
                                }
                            }
                        }
                        drop(permit);
                    });
                }
                continue;
            }
        };
        let service = TowerToHyperService::new(Tracked::new(router.clone(), slot.clone(), request_timeout));
        let (protocols, watcher) = (protocols.clone(), graceful.watcher());
        let mut ends = Ends {
            slot,
            phase: phases.clone(),
        };
        let Some((tls, _)) = &tls else {
            // the first bytes are awaited in the connection's own task, bounded as a TLS handshake is
            tokio::spawn(async move {
                let protocol = tokio::select! {
                    sniffed = tokio::time::timeout(handshake_timeout, sniff(&stream)) => match sniffed {
                        Ok(Ok(protocol)) => protocol,
                        Ok(Err(err)) => return tracing::debug!(error = %err, "connection closed before a request"),
                        Err(_) => return tracing::debug!(timeout = ?handshake_timeout, "no request in time"),
                    },
                    () = ends.slot.evicted() => return tracing::debug!("idle connection closed to make room for a new one"),
                    () = reached(&mut ends.phase, Phase::Stopping) => return,
                };
                protocols.serve(stream, protocol, service, watcher, ends).await;
            });
            continue;
        };
        // the handshake runs in the connection's own task, so that a slow one holds up no other connection; it is
        // bounded, since until it ends the connection holds a place without a request
        let tls = tls.clone();
        tokio::spawn(async move {
            let handshake = async {
                // a TLS connection opens with a handshake record (22); a letter is a plain HTTP request's method
                let mut first = [0u8; 1];
                if matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_alphabetic()) {
                    connections::require_tls(stream).await;
                    return Err(std::io::Error::other("a plain HTTP request, answered 400"));
                }
                tls.accept(stream).await
            };
            let stream = tokio::select! {
                handshake = tokio::time::timeout(handshake_timeout, handshake) => match handshake {
                    Ok(Ok(stream)) => stream,
                    // a client that does not trust the certificate, a port scanner, plain HTTP: the client's problem
                    Ok(Err(err)) => return tracing::debug!(error = %err, "TLS handshake failed"),
                    Err(_) => return tracing::debug!(timeout = ?handshake_timeout, "TLS handshake not finished in time"),
                },
                () = ends.slot.evicted() => return tracing::debug!("connection in its TLS handshake closed to make room for a new one"),
                () = reached(&mut ends.phase, Phase::Stopping) => return,
            };
            let protocol = match stream.get_ref().1.alpn_protocol() {
                Some(tls::ALPN_HTTP2) => Protocol::Http2,
                _ => Protocol::Http1,
            };
            protocols.serve(stream, protocol, service, watcher, ends).await;
        });
    }
    drop(listener);
    let _ = phase.send(Phase::Stopping);
    notifier.close();
    stop_connections(graceful, &limits, &phase, request_timeout).await;
    Ok(())
}

/// Ends the connections of a server that stopped accepting: each is told to finish (HTTP/1.1 closes after its
/// response, HTTP/2 sends GOAWAY), the held long-polls having been answered already. Connections waiting for a
/// request are then closed a round later, whether or not their client answered, and those still inside a request
/// once the longest request time has passed.
async fn stop_connections(
    graceful: GracefulShutdown,
    limits: &Connections,
    phase: &tokio::sync::watch::Sender<Phase>,
    request_timeout: Duration,
) {
    let finished = graceful.shutdown();
    let mut finished = std::pin::pin!(finished);
    let deadline = tokio::time::sleep(request_timeout + SHUTDOWN_ROUND);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut finished => return,
            () = tokio::time::sleep(SHUTDOWN_ROUND) => limits.close_waiting(),
            () = &mut deadline => break,
        }
    }
    tracing::warn!(
        connections = limits.open(),
        "closing the connections still open: their requests outlasted the request timeout"
    );
    let _ = phase.send(Phase::Closing);
    finished.await;
}

/// Serves a connection until it ends, or until it is asked to close while it waits for a request (to make room for
/// a new one, or by a stopping server), or until `idle_too_long` completes (HTTP/2's limit on time without a
/// request; HTTP/1.1's is hyper's own), or until a stopping server closes what is left.
async fn connection_ended(
    connection: impl Future<Output = hyper::Result<()>>,
    mut ends: Ends,
    idle_too_long: impl Future<Output = ()>,
) {
    tokio::select! {
        ended = connection => if let Err(err) = ended {
            tracing::debug!(error = %err, "connection ended with an error");
        },
        // dropping the connection closes it: it was waiting for a request, so none is cut short
        () = ends.slot.evicted() => tracing::debug!("idle connection closed"),
        () = idle_too_long => tracing::debug!("connection closed: no request within the header read timeout"),
        () = reached(&mut ends.phase, Phase::Closing) => tracing::debug!("connection closed: the server stopped"),
    }
}

/// Handles a failed accept: a connection the peer gave up on is skipped; anything else (most often the open-file
/// limit) is logged and retried after a pause, rather than spinning or ending the server.
async fn refused(err: std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        err.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::error!(error = %err, "cannot accept connections; retrying in a second");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// A future that completes on SIGTERM or Ctrl-C. The signals are caught from this call on, not from the future's
/// first poll: a process that has said it is ready (a banner, a log line) must not die of a SIGTERM that arrives
/// before its server task ran.
pub fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        [SignalKind::terminate(), SignalKind::interrupt()].map(|kind| {
            signal(kind)
                .inspect_err(|err| tracing::warn!(error = %err, "cannot listen for SIGTERM or SIGINT"))
                .ok()
        })
    };
    async move {
        #[cfg(unix)]
        {
            let [terminate, interrupt] = signals;
            let received = |signal: Option<tokio::signal::unix::Signal>| async move {
                match signal {
                    Some(mut signal) => {
                        signal.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                () = received(terminate) => {},
                () = received(interrupt) => {},
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down: finishing requests in flight");
    }
}

/// Raises the soft open-file limit to the hard one: every long-polling agent holds a connection, and the usual soft
/// limit of 1,024 would refuse a fleet of thousands. Logged either way, since it bounds the fleet one replica serves.
pub fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit"),
        Err(err) => tracing::warn!(error = %err, "could not raise the open-file limit"),
    }
}

/// Opens the store the configuration names, binds its address and serves until SIGTERM or Ctrl-C. `generate_keys`
/// creates missing key files in the data directory; `announce` is told the bound address once it listens.
pub async fn run(
    config: ServeConfig,
    generate_keys: bool,
    announce: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    // caught from here on, before anyone is told the server is there
    let shutdown = shutdown_signal();
    crate::keys::prepare(&config, generate_keys)?;
    raise_open_file_limit();
    let store = crate::store::connect(&config.database_url())
        .await
        .context("opening the database")?;
    let listen = config.listen;
    let state = AppState::new(config, store)?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let address = listener.local_addr()?;
    tracing::info!(%address, "fluxplane listening");
    announce(address);
    serve(listener, state, shutdown).await?;
    tracing::info!("stopped");
    Ok(())
}
