//! The write history's group commit. Every accepted write adds a row to `write_history`; appended one by one, that
//! was a second transaction, and a second flush of the database's log, for every PUT. Writes answered at the same
//! time are instead appended together, in one statement, by one task: each request still waits until its row is
//! stored, so what it answers has been recorded, as before.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::model::WriteRecord;
use crate::store::Store;

/// Rows appended in one statement at most (a burst larger than that is appended in several).
const BATCH: usize = 256;

/// A write waiting to be appended, and who to tell when it is.
type Pending = (WriteRecord, oneshot::Sender<Result<(), WriteLogError>>);

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteLogError {
    #[error("the write history's appender has stopped")]
    Stopped,
    #[error("appending to the write history failed: {0}")]
    Store(String),
}

/// The handle requests append through.
#[derive(Clone)]
pub struct WriteLog {
    sender: mpsc::Sender<Pending>,
}

impl WriteLog {
    /// The log, and the task that appends what it is given (it ends when every handle is gone).
    pub fn start(store: Arc<dyn Store>) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::channel(BATCH * 4);
        (Self { sender }, tokio::spawn(append(store, receiver)))
    }

    /// Appends `write` to the history, together with whatever else is waiting.
    pub async fn record(&self, write: WriteRecord) -> Result<(), WriteLogError> {
        let (done, stored) = oneshot::channel();
        self.sender
            .send((write, done))
            .await
            .map_err(|_| WriteLogError::Stopped)?;
        stored.await.map_err(|_| WriteLogError::Stopped)?
    }
}

async fn append(store: Arc<dyn Store>, mut receiver: mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(BATCH);
    while receiver.recv_many(&mut batch, BATCH).await > 0 {
        let (writes, waiting): (Vec<_>, Vec<_>) = batch.drain(..).unzip();
        let stored = store
            .record_writes(&writes)
            .await
            .map_err(|err| WriteLogError::Store(format!("{:#}", anyhow::Error::from(err))));
        for done in waiting {
            let _ = done.send(stored.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::model::{HistoryQuery, HistorySubject};
    use crate::on_both_backends;
    use crate::testing::{Backend, with_database};

    fn write(i: usize) -> WriteRecord {
        let path =
            format!("/subscriptions/sub/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c{i}");
        WriteRecord {
            id: 0,
            at: Utc::now(),
            subscription_key: "sub".to_owned(),
            resource_key: path.to_ascii_lowercase(),
            resource_id: path,
            actor: format!("writer-{i}"),
            action: "PUT".to_owned(),
            status_code: 201,
            request_id: Some(format!("request-{i}")),
        }
    }

    async fn recorded(store: &dyn Store) -> Vec<WriteRecord> {
        let query = HistoryQuery {
            subject: HistorySubject::Cluster { cluster_id: 0 },
            resource_key: "/subscriptions/sub/resourcegroups/rg/providers/microsoft.kubernetes".to_owned(),
            below: true,
            from: Utc::now() - chrono::Duration::hours(1),
            to: Utc::now() + chrono::Duration::hours(1),
            after_status: 0,
            after_write: 0,
            after_rollout: 0,
            limit: 1000,
        };
        store.history(&query).await.expect("reading the history").writes
    }

    on_both_backends!(writes_recorded_at_once_are_each_stored_once, concurrent_case);
    async fn concurrent_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let (log, _task) = WriteLog::start(store.clone());
            let writers: Vec<_> = (0..600)
                .map(|i| {
                    let log = log.clone();
                    tokio::spawn(async move { log.record(write(i)).await })
                })
                .collect();
            for writer in writers {
                writer
                    .await
                    .unwrap()
                    .expect("each write is recorded before its request ends");
            }
            let mut stored = recorded(store.as_ref()).await;
            assert_eq!(stored.len(), 600, "more than one batch's worth, none lost or doubled");
            stored.sort_by_key(|w| w.request_id.clone());
            stored.dedup_by_key(|w| w.request_id.clone());
            assert_eq!(stored.len(), 600);
            let first = stored
                .iter()
                .find(|w| w.request_id.as_deref() == Some("request-7"))
                .unwrap();
            assert_eq!(first.actor, "writer-7");
            assert_eq!(first.status_code, 201);
            assert!(first.resource_id.ends_with("connectedClusters/c7"));
        })
        .await;
    }

    on_both_backends!(a_write_the_store_refuses_is_reported_to_its_request, failure_case);
    async fn failure_case(backend: Backend) {
        with_database(backend, move |db| async move {
            let store = db.store().await;
            let (log, _task) = WriteLog::start(store.clone());
            log.record(write(1)).await.expect("recorded");
            // the history's table gone: every waiting request hears why, and the appender carries on
            let drop = "DROP TABLE write_history";
            match backend {
                Backend::Sqlite => {
                    let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
                    sqlx::query(drop).execute(&pool).await.unwrap();
                }
                Backend::Postgres => {
                    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
                    sqlx::query(drop).execute(&pool).await.unwrap();
                }
            }
            let failed = log.record(write(2)).await.expect_err("the table is gone");
            assert!(
                matches!(failed, WriteLogError::Store(ref why) if why.contains("write_history")),
                "{failed}"
            );
            let again = log.record(write(3)).await.expect_err("still gone");
            assert!(matches!(again, WriteLogError::Store(_)), "{again}");
        })
        .await;
    }
}
