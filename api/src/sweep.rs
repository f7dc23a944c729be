//! The 48-hour rules, enforced: on every replica, on a schedule, the store deletes secrets past their time to live
//! and fails changes their agent has not picked up in time, and operations that waited for reconciliation too long. Each row changes once however many replicas sweep at
//! once, and nothing is kept in memory, so a restart loses nothing. The same schedule reconciles policy
//! assignments, restoring the configurations they manage that were edited or deleted by hand (drift).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::lifecycle::ExpiryMessages;
use crate::lifecycle::Lifetimes;
use crate::store::Store;

/// Sweeps every `interval` until dropped; generations it writes for policy assignments live as `lifetimes` say.
pub async fn run(store: Arc<dyn Store>, messages: ExpiryMessages, interval: Duration, lifetimes: Lifetimes) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        match store.expire(Utc::now(), &messages).await {
            Ok(expired) => {
                for e in expired {
                    tracing::info!(
                        cluster_id = e.cluster_id,
                        configuration = %e.name,
                        generation = e.generation,
                        secrets = e.secrets,
                        "expired"
                    );
                }
            }
            Err(err) => tracing::warn!(error = %err, "sweeping expired secrets and changes failed; will retry"),
        }
        match store.time_out_reconciliations(Utc::now()).await {
            Ok(0) => {}
            Ok(failed) => tracing::info!(failed, "operations waiting for reconciliation timed out"),
            Err(err) => {
                tracing::warn!(error = %err, "timing out operations waiting for reconciliation failed; will retry")
            }
        }
        if let Err(err) = store.reconcile_assignments(&lifetimes.managed_write(Utc::now())).await {
            tracing::warn!(error = %err, "reconciling policy assignments failed; will retry");
        }
        if let Err(err) = store.scrub().await {
            tracing::warn!(error = %err, "scrubbing deleted rows from the database files failed; will retry");
        }
    }
}
