//! Liveness, readiness and metrics endpoints, outside the ARM API and its authentication.

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::error::ApiError;
use crate::fleet;
use crate::state::AppState;

/// The process is up.
pub async fn healthz() -> &'static str {
    "ok"
}

/// The database answers and its schema is current.
pub async fn readyz(State(state): State<AppState>) -> Result<&'static str, ApiError> {
    if let Some(why) = state.database.outage() {
        return Err(ApiError::NotReady(why));
    }
    state.store.check_ready().await.map_err(|err| {
        if err.is_pool_timeout() {
            // answered once the watcher has told an outage from an overload (`availability`)
            tokio::spawn(
                state
                    .database
                    .clone()
                    .suspect(format!("{:#}", anyhow::Error::from(err))),
            );
            return ApiError::NotReady(crate::store::NO_CONNECTION.into());
        }
        if err.is_unavailable() {
            state.database.mark_down(&format!("{:#}", anyhow::Error::from(err)));
            return ApiError::NotReady(state.database.outage().unwrap_or_default());
        }
        tracing::warn!(error = %err, "not ready");
        ApiError::NotReady(err.to_string())
    })?;
    Ok("ready")
}

/// Prometheus metrics in the OpenMetrics text format. The fleet gauges are read from the store's rollups at
/// each scrape, and the failing configurations by cluster group and policy assignment from the rollups and the
/// failing rows only; if that fails the rest is still answered, and the failure logged.
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let now = chrono::Utc::now();
    let heard_since = chrono::Duration::from_std(state.config.offline_after)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MIN_UTC);
    match state.store.fleet_gauges(heard_since).await {
        Ok(gauges) => state.metrics.set_fleet(&gauges),
        Err(err) => tracing::warn!(error = %err, "reading the fleet gauges failed"),
    }
    match state.store.failing_gauges().await {
        Ok(gauges) => state.metrics.set_failing(&fleet::failing::tally(&gauges)),
        Err(err) => tracing::warn!(error = %err, "reading the failing configurations failed"),
    }
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
