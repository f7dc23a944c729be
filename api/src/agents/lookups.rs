//! The agents' cluster look-ups, read together. Every agent request (each poll, each report) first reads its
//! cluster, to check its token against the key registered there: one statement, one round trip and one pooled
//! connection per request, which a fleet reporting at once queued by the thousand on the pool. The look-ups waiting
//! at a moment are instead read in one statement, up to [`IN_FLIGHT`] statements at a time: while they are busy, the
//! look-ups arriving gather into the next. Alone, a look-up waits for nothing but a hop to the reading task.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::ApiError;
use crate::model::ClusterRecord;
use crate::store::Store;

/// Statements reading clusters at once: a share of the pool, so that look-ups never take every connection.
pub const IN_FLIGHT: usize = 4;
/// Clusters one statement reads at most.
pub const BATCH: usize = 512;

type Found = Result<Option<ClusterRecord>, ApiError>;

struct Lookup {
    key: String,
    found: oneshot::Sender<Found>,
}

/// The handle requests look their cluster up through (cheap to clone).
#[derive(Clone)]
pub struct ClusterLookups {
    sender: mpsc::UnboundedSender<Lookup>,
}

impl ClusterLookups {
    /// The queue, and the task that reads what it holds (it ends when every handle is gone). The queue needs no
    /// bound of its own: it holds a look-up per request in progress, which the connection cap bounds.
    pub fn start(store: Arc<dyn Store>) -> (Self, tokio::task::JoinHandle<()>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self { sender }, tokio::spawn(read(store, receiver)))
    }

    /// The cluster with this key, read with the others waiting; `None` when none is registered under it.
    pub async fn get(&self, key: String) -> Found {
        let (found, answer) = oneshot::channel();
        self.sender.send(Lookup { key, found }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ApiError {
    ApiError::NotReady("the agents' cluster look-ups have stopped".into())
}

async fn read(store: Arc<dyn Store>, mut receiver: mpsc::UnboundedReceiver<Lookup>) {
    let in_flight = Arc::new(Semaphore::new(IN_FLIGHT));
    loop {
        // room first: while every statement is busy, what arrives waits in the channel and goes in one batch
        let Ok(room) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::new();
        if receiver.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        let store = store.clone();
        tokio::spawn(async move {
            answer(store.as_ref(), batch).await;
            drop(room);
        });
    }
}

/// Reads a batch's clusters in one statement and answers each look-up.
async fn answer(store: &dyn Store, batch: Vec<Lookup>) {
    let mut keys: Vec<String> = batch.iter().map(|l| l.key.clone()).collect();
    keys.sort_unstable();
    keys.dedup();
    match store.clusters_by_key(&keys).await {
        Ok(clusters) => {
            let clusters: HashMap<String, ClusterRecord> = clusters.into_iter().map(|c| (c.key.clone(), c)).collect();
            for lookup in batch {
                let _ = lookup.found.send(Ok(clusters.get(&lookup.key).cloned()));
            }
        }
        Err(err) => {
            let answer = ApiError::from(err);
            let mut lookups = batch.into_iter();
            let first = lookups.next();
            for lookup in lookups {
                let _ = lookup.found.send(Err(answer.for_another()));
            }
            if let Some(first) = first {
                let _ = first.found.send(Err(answer));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::on_both_backends;
    use crate::store::tests::registered;
    use crate::testing::{Backend, with_database};

    on_both_backends!(
        look_ups_made_at_once_are_each_answered_with_their_own_cluster,
        at_once_case
    );
    async fn at_once_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let mut keys = Vec::new();
            for i in 0..20 {
                keys.push(registered(&store, &format!("c{i}")).await.key);
            }
            let (lookups, _reader) = ClusterLookups::start(store.clone());
            // every cluster asked for many times over, and clusters never registered, all at once
            let asked: Vec<_> = (0..2000)
                .map(|i| {
                    let key = if i % 10 == 9 {
                        format!("sub/rg/missing-{i}")
                    } else {
                        keys[i % 20].clone()
                    };
                    let lookups = lookups.clone();
                    tokio::spawn(async move { (key.clone(), lookups.get(key).await) })
                })
                .collect();
            for asked in asked {
                let (key, found) = asked.await.unwrap();
                let expected = (!key.contains("missing")).then(|| key.clone());
                assert_eq!(found.unwrap().map(|c| c.key), expected, "{key}");
            }
        })
        .await;
    }
}
