//! The dashboards' moving parts: the rollups folded and the history pruned on a schedule, the history and its
//! recording, the live stream of status changes, and the web UI. The summary and the grid they draw live with
//! the fleet (`fleet::summary`, `fleet::cluster_compliance`).

pub mod events;
pub mod feed;
pub mod history;
pub mod ui;
pub mod write_log;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::store::Store;

/// How often the deltas are folded into the rollups (a summary reads the deltas of at most this long) and silent
/// clusters marked Offline (the summary counts one as connected at most this long after `--offline-after`).
const COMPACT_EVERY: Duration = Duration::from_secs(1);

/// Every second, folds the rollups and marks Offline the clusters silent past `offline_after` (so that the summary
/// finds them by index); every `prune_every`, drops the history older than `retention` (but each configuration's
/// last state before it: the first prune of a process looks at the whole history, the next ones at what crossed
/// the cut-off since the last that succeeded); until dropped. Safe on every replica at once (each delta is folded
/// once, each row changed once).
pub async fn maintain(store: Arc<dyn Store>, offline_after: Duration, retention: Duration, prune_every: Duration) {
    let mut ticks = tokio::time::interval(COMPACT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_pruned: Option<tokio::time::Instant> = None;
    // the cut-off of the last prune that succeeded
    let mut pruned_before: Option<chrono::DateTime<Utc>> = None;
    loop {
        ticks.tick().await;
        if let Err(err) = store.compact_rollups().await {
            tracing::warn!(error = %err, "folding the summary's deltas failed; will retry");
        }
        let now = Utc::now();
        let heard_before = chrono::Duration::from_std(offline_after)
            .ok()
            .and_then(|d| now.checked_sub_signed(d))
            .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
        match store.mark_offline(heard_before).await {
            Ok(0) => {}
            Ok(marked) => tracing::info!(marked, "clusters silent past --offline-after marked Offline"),
            Err(err) => tracing::warn!(error = %err, "marking silent clusters Offline failed; will retry"),
        }
        if last_pruned.is_none_or(|at| at.elapsed() >= prune_every) {
            last_pruned = Some(tokio::time::Instant::now());
            let now = Utc::now();
            let before = chrono::Duration::from_std(retention)
                .ok()
                .and_then(|r| now.checked_sub_signed(r))
                .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
            match store.prune_history(before, pruned_before).await {
                Ok(pruned) => {
                    pruned_before = Some(before);
                    if pruned > 0 {
                        tracing::info!(pruned, %before, "pruned the history");
                    }
                }
                Err(err) => tracing::warn!(error = %err, "pruning the history failed; will retry"),
            }
        }
    }
}
