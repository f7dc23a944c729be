//! Whether the database can be reached, and failing fast while it cannot.
//!
//! When PostgreSQL is down, every request would wait for the pool's acquire timeout (10 s) and then fail as an
//! internal error. The first request that meets an unreachable database marks it down; from then on, requests
//! that need it are answered 503 with `Retry-After` at once, `/readyz` says since when and why, and a watcher
//! tries a connection of its own every second until the database answers again.
//!
//! A request that found no pooled connection free within the timeout met either an outage (sqlx keeps trying a
//! refused connection until then) or an overload (every connection busy): 100,000 agents arriving at once gave
//! thousands of such timeouts a second. Marking the database down on them refused every request until the
//! watcher's next connection succeeded, and then the waiting agents came back together and timed out again: the
//! replica swung between refusing everyone and drowning, and no agent got through. Such a request is answered
//! 503 alone and only makes the watcher try a connection of its own: the database is marked down if that fails,
//! and the overload logged (once a second at most) if it succeeds.

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

use crate::error::{ApiError, Unanswered, Unreachable};
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
    /// Why a request found no connection free, until the watcher has tried the database (`suspect`).
    suspicion: Mutex<Option<String>>,
    /// When the watcher's own connection last found the database answering while requests found no connection
    /// free: for a second after, such requests are known to meet an overload and wait for no new try.
    answered_at: Mutex<Option<tokio::time::Instant>>,
    /// Tells the requests waiting on a suspicion that the watcher has tried the database.
    checked: Notify,
    /// Wakes the watcher: the database was marked down, or a request found no connection free (`suspect`).
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

    /// Records that a request found no pooled connection free in time, and waits (4 s at most) until
    /// the watcher has tried the database with a connection of its own, marking it down (for `why`) if it does not
    /// answer: so the request is answered once its cause is known, and the client's next request meets the
    /// outage at once. Other requests go on meanwhile. A second after the database last answered such a try, the
    /// overload is known and nothing waits.
    pub async fn suspect(self: Arc<Self>, why: String) {
        if self.is_down.load(Ordering::Acquire) {
            return;
        }
        let answered = *self.answered_at.lock().unwrap_or_else(PoisonError::into_inner);
        if answered.is_some_and(|at| at.elapsed() < PROBE_EVERY) {
            return;
        }
        let checked = self.checked.notified();
        tokio::pin!(checked);
        // counted from now, before the watcher can be woken: its answer cannot be missed
        checked.as_mut().enable();
        {
            let mut suspicion = self.suspicion.lock().unwrap_or_else(PoisonError::into_inner);
            if suspicion.is_none() {
                *suspicion = Some(why);
                self.went_down.notify_one();
            }
        }
        let _ = tokio::time::timeout(PROBE_TIMEOUT + PROBE_EVERY, checked).await;
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

/// Runs for the life of the state with `store.reachable()` as its probe (see [`watch_with`]).
pub async fn watch(store: Arc<dyn Store>, health: Arc<DatabaseHealth>) {
    watch_with(
        move || {
            let store = store.clone();
            async move {
                store
                    .reachable()
                    .await
                    .map_err(|err| format!("{:#}", anyhow::Error::from(err)))
            }
        },
        health,
    )
    .await
}

/// Runs for the life of the state: whenever a request found no connection free, tries the database once with
/// `probe` (a connection of its own) and marks it down if it does not answer; whenever the database is marked
/// down, tries it at once, then every second until it answers.
pub async fn watch_with<P, F>(probe: P, health: Arc<DatabaseHealth>)
where
    P: Fn() -> F,
    F: Future<Output = Result<(), String>>,
{
    let tried = || async {
        match tokio::time::timeout(PROBE_TIMEOUT, probe()).await {
            Ok(answered) => answered,
            Err(_) => Err("the database did not answer within the probe's timeout".to_owned()),
        }
    };
    loop {
        health.went_down.notified().await;
        let suspicion = health.suspicion.lock().unwrap_or_else(PoisonError::into_inner).clone();
        if let Some(why) = suspicion.filter(|_| !health.is_down.load(Ordering::Acquire)) {
            match tried().await {
                Ok(()) => {
                    tracing::warn!(
                        error = why,
                        "requests found no database connection free, yet the database answers: this server is \
                         overloaded (answering them 503 one by one)"
                    );
                    // one try a second at most, however many requests time out meanwhile (`suspect`)
                    *health.answered_at.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(tokio::time::Instant::now());
                }
                Err(err) => {
                    tracing::debug!(error = err, "the database does not answer either");
                    health.mark_down(&why);
                }
            }
        }
        *health.suspicion.lock().unwrap_or_else(PoisonError::into_inner) = None;
        health.checked.notify_waiters();
        while health.is_down.load(Ordering::Acquire) {
            match tried().await {
                Ok(()) => health.mark_up(),
                Err(err) => {
                    tracing::debug!(error = err, "the database is still unreachable");
                    tokio::time::sleep(PROBE_EVERY).await;
                }
            }
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
        // a response that found no connection free, held until the watcher has tried the database (`suspect`)
        Checking { check: Pin<Box<dyn Future<Output = ()> + Send>>, response: Option<Response> },
    }
}

impl<F, E> Future for Guarded<F>
where
    F: Future<Output = Result<Response, E>>,
{
    type Output = Result<Response, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let checking = match self.as_mut().project() {
            GuardedProjection::Refused { response } => {
                return Poll::Ready(Ok(response.take().expect("a refused request is answered once")));
            }
            GuardedProjection::Called { future, health } => {
                let response = std::task::ready!(future.poll(cx))?;
                if let Some(Unreachable(why)) = response.extensions().get::<Unreachable>() {
                    health.mark_down(why);
                }
                let Some(Unanswered(why)) = response.extensions().get::<Unanswered>() else {
                    return Poll::Ready(Ok(response));
                };
                Guarded::Checking {
                    check: Box::pin(health.clone().suspect(why.clone())),
                    response: Some(response),
                }
            }
            GuardedProjection::Checking { check, response } => {
                std::task::ready!(check.as_mut().poll(cx));
                return Poll::Ready(Ok(response.take().expect("a checked request is answered once")));
            }
        };
        self.set(checking);
        self.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    const TIMED_OUT: &str = "pool timed out while waiting for an open connection";

    /// A watcher whose probe answers while `answering` holds, counting its tries.
    fn watcher(
        health: &Arc<DatabaseHealth>,
        answering: &Arc<AtomicBool>,
    ) -> (tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
        let tries = Arc::new(AtomicUsize::new(0));
        let probe = {
            let (answering, tries) = (answering.clone(), tries.clone());
            move || {
                tries.fetch_add(1, Ordering::SeqCst);
                let answers = answering.load(Ordering::SeqCst);
                async move {
                    if answers {
                        Ok(())
                    } else {
                        Err("connection refused".to_owned())
                    }
                }
            }
        };
        (tokio::spawn(watch_with(probe, health.clone())), tries)
    }

    #[tokio::test(start_paused = true)]
    async fn requests_without_a_free_connection_while_the_database_answers_are_an_overload_not_an_outage() {
        let health = Arc::new(DatabaseHealth::default());
        let (watching, tries) = watcher(&health, &Arc::new(AtomicBool::new(true)));
        let mut burst = tokio::task::JoinSet::new();
        for _ in 0..1000 {
            burst.spawn(health.clone().suspect(TIMED_OUT.to_owned()));
        }
        burst.join_all().await;
        assert_eq!(health.outage(), None, "nobody is refused for an overload");
        assert_eq!(tries.load(Ordering::SeqCst), 1, "one try for the whole burst");
        tokio::time::sleep(PROBE_EVERY / 2).await;
        health.clone().suspect(TIMED_OUT.to_owned()).await;
        assert_eq!(tries.load(Ordering::SeqCst), 1, "at most one try a second");
        tokio::time::sleep(PROBE_EVERY).await;
        health.clone().suspect(TIMED_OUT.to_owned()).await;
        assert_eq!(tries.load(Ordering::SeqCst), 2, "tried again a second later");
        assert_eq!(health.outage(), None);
        watching.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn requests_without_a_free_connection_while_the_database_is_silent_mark_it_down_until_it_answers() {
        let health = Arc::new(DatabaseHealth::default());
        let answering = Arc::new(AtomicBool::new(false));
        let (watching, _) = watcher(&health, &answering);
        health.clone().suspect(TIMED_OUT.to_owned()).await;
        let why = health
            .outage()
            .expect("marked down before the request that met the timeout is answered");
        assert!(why.contains("pool timed out"), "{why}");
        answering.store(true, Ordering::SeqCst);
        tokio::time::sleep(PROBE_EVERY * 2).await;
        assert_eq!(health.outage(), None, "up again once it answers");
        watching.abort();
    }

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
