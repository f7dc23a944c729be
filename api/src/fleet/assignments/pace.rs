//! Keeps a moving rollout moving: the sweeper reconciles every assignment at `--sweep-interval` (30 s by default),
//! which would leave a batch that turned Compliant waiting that long for the next one. This task reconciles the
//! assignments whose rollout is moving within a moment of their agents' reports (`Pace::reported`), once a second
//! while one moves (soak times and batch timeouts end between reports), and otherwise looks at the sweep interval
//! for rollouts another replica started. Each replica runs it; the fleet lock serialises their reconciliations.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Notify;

use crate::lifecycle::Lifetimes;
use crate::store::Store;

/// How long the task lets reports gather after the first one wakes it: a batch's agents report within moments of
/// each other, and one reconciliation takes them all.
const GATHER: Duration = Duration::from_millis(200);
/// How often a moving rollout is looked at without reports.
const WHILE_MOVING: Duration = Duration::from_secs(1);

/// Wakes the task: reports count only while a rollout moves; a rollout started or resumed here wakes it at once.
#[derive(Debug, Default)]
pub struct Pace {
    moving: AtomicBool,
    wake: Notify,
}

impl Pace {
    /// An agent reported: a moving rollout may move on.
    pub fn reported(&self) {
        if self.moving.load(Ordering::Relaxed) {
            self.wake.notify_one();
        }
    }

    /// A rollout started or resumed on this replica.
    pub fn started(&self) {
        self.moving.store(true, Ordering::Relaxed);
        self.wake.notify_one();
    }
}

/// Runs until dropped.
pub async fn run(store: Arc<dyn Store>, pace: Arc<Pace>, idle: Duration, lifetimes: Lifetimes) {
    loop {
        let wait = if pace.moving.load(Ordering::Relaxed) {
            WHILE_MOVING
        } else {
            idle
        };
        tokio::select! {
            _ = pace.wake.notified() => tokio::time::sleep(GATHER).await,
            _ = tokio::time::sleep(wait) => {}
        }
        match store.advance_rollouts(&lifetimes.managed_write(Utc::now())).await {
            Ok(moving) => pace.moving.store(moving > 0, Ordering::Relaxed),
            Err(err) => tracing::warn!(error = %err, "advancing rollouts failed; will retry"),
        }
    }
}
