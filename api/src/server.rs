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
use axum::routing::get;
use tokio::net::TcpListener;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use tracing::Span;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_swagger_ui::SwaggerUi;

use crate::auth::{self, Authenticator};
use crate::cipher::SecretCipher;
use crate::config::ServeConfig;
use crate::error::ApiError;
use crate::metrics::{self, Metrics};
use crate::openapi::ApiDoc;
use crate::state::AppState;
use crate::store::Store;
use crate::{clusters, flux, health};

const REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");

/// The ARM API's routes with their OpenAPI description.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(clusters::routes::router())
        .merge(flux::routes::router())
}

impl AppState {
    /// Builds the state from a configuration and a store: loads the keys the configuration names.
    pub fn new(config: ServeConfig, store: Arc<dyn Store>) -> anyhow::Result<Self> {
        let auth = Authenticator::from_config(&config).context("loading the user token key")?;
        let cipher = SecretCipher::from_file(&config.secret_key_path()).context("loading the secret key")?;
        Ok(Self {
            config: Arc::new(config),
            store,
            auth: Arc::new(auth),
            cipher: Arc::new(cipher),
            metrics: Arc::new(Metrics::default()),
        })
    }
}

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let (api, openapi) = api_router().split_for_parts();
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate));
    Router::new()
        .merge(api)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .fallback(|| async { ApiError::NotFound("no resource or route matches this path".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(state.config.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::track))
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
                }),
        )
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::Internal(anyhow::anyhow!("handler panicked")))
        }))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .with_state(state)
}

/// Serves `app` on `listener` until `shutdown` completes, then finishes the requests in flight.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

/// Completes on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down: finishing requests in flight");
}

/// Opens the store the configuration names, binds its address and serves until SIGTERM or Ctrl-C. `generate_keys`
/// creates missing key files in the data directory; `announce` is told the bound address once it listens.
pub async fn run(
    config: ServeConfig,
    generate_keys: bool,
    announce: impl FnOnce(std::net::SocketAddr),
) -> anyhow::Result<()> {
    crate::keys::prepare(&config, generate_keys)?;
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
    serve(listener, app(state), shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
