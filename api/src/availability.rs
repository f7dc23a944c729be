//! Whether the database can be reached, and failing fast while it cannot.
//!
//! When PostgreSQL is down, every request would wait for the pool's acquire timeout (10 s) and then fail as an
//! internal error. The first request that meets an unreachable database marks it down; from then on, requests
//! that need it are answered 503 with `Retry-After` at once, `/readyz` says since when and why, and a watcher
//! tries a connection of its own every second until the database answers again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use tokio::sync::Notify;

use crate::error::{ApiError, Unreachable};
use crate::store::Store;

/// How often the watcher tries the database while it is down, and how long one try may take.
const PROBE_EVERY: Duration = Duration::from_secs(1);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The database's reachability as this replica last saw it.
#[derive(Debug, Default)]
pub struct DatabaseHealth {
    /// Whether `down` holds an outage: read by every request, so without taking the lock.
    is_down: AtomicBool,
    down: Mutex<Option<Outage>>,
    went_down: Notify,
}

#[derive(Debug, Clone)]
struct Outage {
    since: DateTime<Utc>,
    why: String,
}

impl DatabaseHealth {
    /// Why requests are refused now, if they are.
    pub fn outage(&self) -> Option<String> {
        if !self.is_down.load(Ordering::Acquire) {
            return None;
        }
        self.lock().as_ref().map(|outage| {
            format!(
                "the database is unreachable since {} ({}); retry shortly",
                outage.since.to_rfc3339_opts(SecondsFormat::Secs, true),
                outage.why
            )
        })
    }

    /// Records that the database could not be reached, and wakes the watcher.
    pub fn mark_down(&self, why: &str) {
        let mut down = self.lock();
        if down.is_none() {
            tracing::error!(
                error = why,
                "the database is unreachable: answering 503 until it is back"
            );
            *down = Some(Outage {
                since: Utc::now(),
                why: why.to_owned(),
            });
            self.is_down.store(true, Ordering::Release);
            self.went_down.notify_one();
        }
    }

    fn mark_up(&self) {
        let mut down = self.lock();
        self.is_down.store(false, Ordering::Release);
        if let Some(outage) = down.take() {
            let seconds = (Utc::now() - outage.since).num_seconds();
            tracing::info!(down_for_seconds = seconds, "the database is reachable again");
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Outage>> {
        self.down.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs for the life of the state: whenever the database is marked down, tries it at once (a pool that timed out
/// under load alone clears within a connection's time), then every second until it answers.
pub async fn watch(store: Arc<dyn Store>, health: Arc<DatabaseHealth>) {
    loop {
        health.went_down.notified().await;
        loop {
            match tokio::time::timeout(PROBE_TIMEOUT, store.reachable()).await {
                Ok(Ok(())) => {
                    health.mark_up();
                    break;
                }
                Ok(Err(err)) => tracing::debug!(error = %err, "the database is still unreachable"),
                Err(_) => tracing::debug!("the database did not answer within the probe's timeout"),
            }
            tokio::time::sleep(PROBE_EVERY).await;
        }
    }
}

/// The layer of the routes that need the database: 503 at once while it is down; marks it down when a response
/// says it met an unreachable database. A plain service rather than `from_fn` middleware, which would clone the
/// routes below it and box their futures for every request, memory a waiting long-poll holds for its whole wait.
#[derive(Clone)]
pub struct Guard<S> {
    inner: S,
    health: Arc<DatabaseHealth>,
}

impl<S> Guard<S> {
    /// Guards `inner` by `health` (a layer of these: `tower::layer::layer_fn`).
    pub fn new(inner: S, health: Arc<DatabaseHealth>) -> Self {
        Self { inner, health }
    }
}

impl<S> tower::Service<Request> for Guard<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Guarded<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        match self.health.outage() {
            Some(why) => Guarded::Refused {
                response: Some(ApiError::DatabaseUnavailable(why).into_response()),
            },
            None => Guarded::Called {
                future: self.inner.call(request),
                health: self.health.clone(),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a guarded request.
    #[project = GuardedProjection]
    pub enum Guarded<F> {
        Refused { response: Option<Response> },
        Called { #[pin] future: F, health: Arc<DatabaseHealth> },
    }
}

impl<F, E> Future for Guarded<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            GuardedProjection::Refused { response } => {
                Poll::Ready(Ok(response.take().expect("a refused request is answered once")))
            }
            GuardedProjection::Called { future, health } => {
                let response = std::task::ready!(future.poll(cx))?;
                if let Some(Unreachable(why)) = response.extensions().get::<Unreachable>() {
                    health.mark_down(why);
                }
                Poll::Ready(Ok(response))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_outage_says_since_when_until_it_ends() {
        let health = DatabaseHealth::default();
        assert_eq!(health.outage(), None);
        health.mark_down("connection refused");
        let why = health.outage().expect("down");
        assert!(why.contains("connection refused") && why.contains("since"), "{why}");
        health.mark_down("another failure");
        assert!(
            health.outage().unwrap().contains("connection refused"),
            "the first cause is kept"
        );
        health.mark_up();
        assert_eq!(health.outage(), None);
    }
}
