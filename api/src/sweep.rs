//! The 48-hour rules, enforced: on every replica, on a schedule, the store deletes secrets past their time to live
//! and fails changes their agent has not picked up in time. Each row changes once however many replicas sweep at
//! once, and nothing is kept in memory, so a restart loses nothing. The same schedule reconciles policy
//! assignments, restoring the configurations they manage that were edited or deleted by hand (drift).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::config::ServeConfig;
use crate::store::{ExpiryMessages, ManagedWrite, Store};

/// What a configuration failed by expiry tells its user.
pub fn messages(config: &ServeConfig) -> ExpiryMessages {
    let secret_ttl = humantime::format_duration(config.secret_ttl);
    let pending_ttl = humantime::format_duration(config.pending_ttl);
    ExpiryMessages {
        secrets: format!(
            "The protected settings expired before the cluster's agent received them (secrets are kept at most \
             {secret_ttl}). Apply the protected settings again (PUT the configuration with them)."
        ),
        rotated: "The cluster's agent was registered again (its keys changed) before it received the protected \
                  settings sealed to its old key, which cannot be opened any more. Apply the protected settings \
                  again (PUT the configuration with them)."
            .to_owned(),
        pending: format!(
            "The cluster's agent did not pick up this change within {pending_ttl}: the cluster is disconnected or \
             its agent is failing. Apply the configuration again once the cluster is connected."
        ),
    }
}

/// Sweeps every `interval` until dropped; generations it writes for policy assignments expire after
/// `pending_ttl` unless picked up.
pub async fn run(store: Arc<dyn Store>, messages: ExpiryMessages, interval: Duration, pending_ttl: Duration) {
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
        let managed = ManagedWrite {
            generation_expires_at: chrono::Duration::from_std(pending_ttl).ok().map(|ttl| Utc::now() + ttl),
        };
        if let Err(err) = store.reconcile_assignments(&managed).await {
            tracing::warn!(error = %err, "reconciling policy assignments failed; will retry");
        }
        if let Err(err) = store.scrub().await {
            tracing::warn!(error = %err, "scrubbing deleted rows from the database files failed; will retry");
        }
    }
}
