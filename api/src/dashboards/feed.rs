//! The tail of the status history on this replica: one task reads the transitions every replica's writes append
//! (in the writing transaction) and fans them out to the live streams (`events`). Ids are handed out before commit,
//! so a transaction can commit after a later id is visible: the tail waits a moment at such a gap rather than skip
//! past a transition that is about to appear.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::model::StatusRecord;
use crate::store::Store;

/// How often the tail looks for new transitions.
const POLL: Duration = Duration::from_millis(200);
/// How long the tail waits for a missing id to commit before it takes it for rolled back.
const GAP_WAIT: Duration = Duration::from_secs(2);
/// Rows read at once, by the tail and by a replay.
pub(super) const BATCH: i64 = 1000;

/// The tail of the status history, fanned out to the streams of this replica.
pub struct Feed {
    pub(super) sender: broadcast::Sender<Arc<StatusRecord>>,
    /// The last id sent: every transition up to it has been sent or taken for rolled back.
    pub(super) cursor: AtomicI64,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            sender: broadcast::channel(4096).0,
            cursor: AtomicI64::new(-1),
        }
    }
}

impl Feed {
    /// Tails the history until dropped.
    pub async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        let mut gap_since: Option<Instant> = None;
        let mut first = true;
        loop {
            if !std::mem::take(&mut first) {
                tokio::time::sleep(POLL).await;
            }
            let cursor = self.cursor.load(Ordering::Acquire);
            if cursor < 0 {
                // start at the present: what happened before is the history's, for streams that resume
                match store.latest_status_event().await {
                    Ok(latest) => self.cursor.store(latest, Ordering::Release),
                    Err(err) => tracing::warn!(error = %err, "reading the status history failed; will retry"),
                }
                continue;
            }
            let rows = match store.status_events(None, cursor, BATCH).await {
                Ok(rows) => rows,
                Err(err) => {
                    tracing::warn!(error = %err, "tailing the status history failed; will retry");
                    continue;
                }
            };
            let mut cursor = cursor;
            for row in rows {
                if row.id != cursor + 1 {
                    let since = *gap_since.get_or_insert_with(Instant::now);
                    if since.elapsed() < GAP_WAIT {
                        break;
                    }
                }
                gap_since = None;
                cursor = row.id;
                self.cursor.store(cursor, Ordering::Release);
                // no stream listening is not an error
                let _ = self.sender.send(Arc::new(row));
            }
        }
    }
}
