//! The agents' look-ups, read together. Every agent request (each poll, each report) first reads its cluster, to
//! check its token against the key registered there, and a poll reads its cluster's revision before it waits and,
//! when the wait ends with nothing new, again: a statement, a round trip and a pooled connection each, which a
//! fleet reporting at once queued by the thousand on the pool. The look-ups of one kind waiting at a moment are
//! instead read in one statement, up to [`IN_FLIGHT`] statements at a time: while they are busy, the look-ups
//! arriving gather into the next. Alone, a look-up waits for nothing but a hop to the reading task.
//!
//! A woken poll reads its cluster's desired state the same way. A policy assignment wakes every agent of the
//! clusters it writes at once, and each read its revision, configurations and extensions in three statements of
//! its own: 30,000 statements queued on the pool for 10,000 agents, 300,000 for 100,000, while the polls behind
//! them timed out. Read together, the desired states of 512 clusters are three statements. A look-up whose request
//! ended while it waited (its agent gave up) is not read.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::error::ApiError;
use crate::model::{ClusterRecord, DesiredRecords};
use crate::store::{Store, StoreResult};

/// Statements of one kind reading at once: a share of the pool, so that look-ups never take every connection.
pub const IN_FLIGHT: usize = 4;
/// Look-ups one statement answers at most.
pub const BATCH: usize = 512;

type Found<V> = Result<Option<V>, ApiError>;

struct Lookup<K, V> {
    key: K,
    found: oneshot::Sender<Found<V>>,
}

/// The handle requests look up through (cheap to clone): values of type `V` by keys of type `K`.
pub struct Lookups<K, V> {
    sender: mpsc::UnboundedSender<Lookup<K, V>>,
}

impl<K, V> Clone for Lookups<K, V> {
    fn clone(&self) -> Self {
        Self {
            sender: self.sender.clone(),
        }
    }
}

/// The registered clusters, by key.
pub type ClusterLookups = Lookups<String, ClusterRecord>;
/// The clusters' revisions, by cluster id.
pub type RevisionLookups = Lookups<i64, i64>;
/// The clusters' desired states, by cluster id.
pub type DesiredLookups = Lookups<i64, DesiredRecords>;

impl ClusterLookups {
    pub fn clusters(store: Arc<dyn Store>) -> (Self, tokio::task::JoinHandle<()>) {
        Self::start(move |keys: Vec<String>| {
            let store = store.clone();
            async move {
                let clusters = store.clusters_by_key(&keys).await?;
                Ok(clusters.into_iter().map(|c| (c.key.clone(), c)).collect())
            }
        })
    }
}

impl RevisionLookups {
    pub fn revisions(store: Arc<dyn Store>) -> (Self, tokio::task::JoinHandle<()>) {
        Self::start(move |ids: Vec<i64>| {
            let store = store.clone();
            async move { Ok(store.revisions(&ids).await?.into_iter().collect()) }
        })
    }
}

impl DesiredLookups {
    pub fn desired_states(store: Arc<dyn Store>) -> (Self, tokio::task::JoinHandle<()>) {
        Self::start(move |ids: Vec<i64>| {
            let store = store.clone();
            async move { Ok(store.desired_states(&ids).await?.into_iter().collect()) }
        })
    }
}

impl<K, V> Lookups<K, V>
where
    K: Eq + Hash + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
{
    /// The queue, and the task that reads what it holds with `read` (given distinct keys; it answers the values of
    /// those that have one). The task ends when every handle is gone. The queue needs no bound of its own: it holds
    /// a look-up per request in progress, which the connection cap bounds.
    pub fn start<R, F>(read: R) -> (Self, tokio::task::JoinHandle<()>)
    where
        R: Fn(Vec<K>) -> F + Send + Sync + 'static,
        F: Future<Output = StoreResult<HashMap<K, V>>> + Send + 'static,
    {
        let (sender, receiver) = mpsc::unbounded_channel();
        (Self { sender }, tokio::spawn(gather(read, receiver)))
    }

    /// The value under `key`, read with the other look-ups waiting; `None` when there is none.
    pub async fn get(&self, key: K) -> Found<V> {
        let (found, answer) = oneshot::channel();
        self.sender.send(Lookup { key, found }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> ApiError {
    ApiError::NotReady("the agents' look-ups have stopped".into())
}

async fn gather<K, V, R, F>(read: R, mut receiver: mpsc::UnboundedReceiver<Lookup<K, V>>)
where
    K: Eq + Hash + Ord + Clone + Send + 'static,
    V: Clone + Send + 'static,
    R: Fn(Vec<K>) -> F,
    F: Future<Output = StoreResult<HashMap<K, V>>> + Send + 'static,
{
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
        if !still_awaited(&mut batch) {
            continue;
        }
        let mut keys: Vec<K> = batch.iter().map(|l| l.key.clone()).collect();
        keys.sort_unstable();
        keys.dedup();
        let reading = read(keys);
        tokio::spawn(async move {
            answer(reading.await, batch);
            drop(room);
        });
    }
}

/// Drops the look-ups nobody waits for any more, and answers whether any are left. Under overload a woken poll can
/// wait for its desired state longer than its agent waits for the answer (100,000 agents woken at once): the agent
/// gives up (an HTTP/2 stream reset, or the server's request timeout ends the request) and polls again, and reading
/// the first poll's desired state as well would double the work that made it late.
fn still_awaited<K, V>(batch: &mut Vec<Lookup<K, V>>) -> bool {
    batch.retain(|lookup| !lookup.found.is_closed());
    !batch.is_empty()
}

/// Answers each look-up of a batch from what its statement read: the last look-up of a key gets the value itself,
/// the others (requests of one agent at once) a copy.
fn answer<K: Eq + Hash, V: Clone>(read: StoreResult<HashMap<K, V>>, batch: Vec<Lookup<K, V>>) {
    match read {
        Ok(mut values) => {
            let mut left: HashMap<&K, usize> = HashMap::new();
            for lookup in &batch {
                *left.entry(&lookup.key).or_default() += 1;
            }
            let mut found = Vec::with_capacity(batch.len());
            for lookup in &batch {
                let remaining = left.get_mut(&lookup.key).map(|n| {
                    *n -= 1;
                    *n
                });
                found.push(match remaining {
                    Some(0) => values.remove(&lookup.key),
                    _ => values.get(&lookup.key).cloned(),
                });
            }
            for (lookup, value) in batch.into_iter().zip(found) {
                let _ = lookup.found.send(Ok(value));
            }
        }
        Err(err) => {
            let answers = ApiError::from(err).for_each_of(batch.len());
            for (lookup, answer) in batch.into_iter().zip(answers) {
                let _ = lookup.found.send(Err(answer));
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

    #[test]
    fn a_look_up_whose_request_ended_is_not_read() {
        let (first, first_waits) = oneshot::channel::<Found<i64>>();
        let (second, second_waits) = oneshot::channel::<Found<i64>>();
        let mut batch = vec![Lookup { key: 1, found: first }, Lookup { key: 2, found: second }];
        drop(second_waits);
        assert!(still_awaited(&mut batch));
        let keys: Vec<i64> = batch.iter().map(|l| l.key).collect();
        assert_eq!(keys, vec![1], "the look-up of the request that ended is dropped");
        drop(first_waits);
        assert!(!still_awaited(&mut batch), "nothing is left to read");
        assert!(batch.is_empty());
    }

    on_both_backends!(
        look_ups_made_at_once_are_each_answered_with_their_own_value,
        at_once_case
    );
    async fn at_once_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let mut clusters = Vec::new();
            for i in 0..20 {
                clusters.push(registered(&store, &format!("c{i}")).await);
            }
            let (lookups, _reader) = ClusterLookups::clusters(store.clone());
            let (revisions, _revisions_reader) = RevisionLookups::revisions(store.clone());
            let (desired, _desired_reader) = DesiredLookups::desired_states(store.clone());
            // each cluster's own configuration, named after it
            for cluster in &clusters {
                let configuration = crate::store::tests::configuration(cluster.id, &format!("cfg-{}", cluster.name));
                let operation = crate::store::tests::operation(&cluster.key, 1);
                store
                    .insert_configuration(&configuration, &crate::model::SecretsWrite::Keep, &operation)
                    .await
                    .unwrap();
            }
            // every cluster asked for many times over, and clusters never registered, all at once
            let asked: Vec<_> = (0..2000)
                .map(|i| {
                    let known = (i % 10 != 9).then(|| clusters[i % 20].clone());
                    let (lookups, revisions, desired) = (lookups.clone(), revisions.clone(), desired.clone());
                    tokio::spawn(async move {
                        let key = known.as_ref().map_or(format!("sub/rg/missing-{i}"), |c| c.key.clone());
                        let id = known.as_ref().map_or(1_000_000 + i as i64, |c| c.id);
                        let (cluster, revision, desired) =
                            tokio::join!(lookups.get(key), revisions.get(id), desired.get(id));
                        (known, cluster.unwrap(), revision.unwrap(), desired.unwrap())
                    })
                })
                .collect();
            for asked in asked {
                let (known, cluster, revision, desired) = asked.await.unwrap();
                assert_eq!(
                    cluster.map(|c| (c.id, c.key)),
                    known.as_ref().map(|c| (c.id, c.key.clone()))
                );
                let now = match &known {
                    Some(c) => store.revision(c.id).await.unwrap(),
                    None => None,
                };
                assert_eq!(revision, now);
                assert_eq!(desired.as_ref().map(|d| d.revision), now);
                let names: Option<Vec<String>> =
                    desired.map(|d| d.configurations.into_iter().map(|c| c.name).collect());
                assert_eq!(
                    names,
                    known.map(|c| vec![format!("cfg-{}", c.name)]),
                    "its own desired state"
                );
            }
        })
        .await;
    }
}
