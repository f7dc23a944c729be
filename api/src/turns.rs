//! Writers of one resource take turns on this replica.
//!
//! A write reads the resource, decides, and writes it back if its ETag has not changed, retrying a few times when it
//! has. Unconditional writers racing on one resource kept invalidating each other's reads: at 64 concurrent PUTs,
//! most ran out of retries and got 409. Taking turns per resource makes each write see the one before it, so every
//! unconditional write lands as its own generation; the retries remain for writers on other replicas.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::OwnedMutexGuard;

/// One lock per resource key that someone is writing, forgotten when nobody holds or waits for it.
#[derive(Debug, Default)]
pub struct Turns {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// A writer's turn on one resource; the next writer's begins when it is dropped.
pub struct Turn<'a> {
    turns: &'a Turns,
    key: String,
    guard: Option<OwnedMutexGuard<()>>,
}

impl Turns {
    /// Waits for the turn to write the resource `key` (compared as given: pass the store's lower-cased key).
    pub async fn take(&self, key: &str) -> Turn<'_> {
        let lock = {
            let mut locks = self.lock();
            // a writer that gave up while waiting (its request cancelled) leaves its lock behind: swept now and
            // then, so that the map stays in proportion to the writers at work
            if locks.len() >= 64 && locks.len().is_power_of_two() {
                locks.retain(|_, lock| Arc::strong_count(lock) > 1);
            }
            locks
                .entry(key.to_owned())
                .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
                .clone()
        };
        Turn {
            turns: self,
            key: key.to_owned(),
            guard: Some(lock.lock_owned().await),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.locks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.turns.lock();
        // the map's reference is the only one left: nobody holds or waits for this resource
        if locks.get(&self.key).is_some_and(|lock| Arc::strong_count(lock) == 1) {
            locks.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_of_one_resource_take_turns_and_others_do_not_wait() {
        let turns = Arc::new(Turns::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let writers: Vec<_> = (0..16)
            .map(|_| {
                let (turns, inside, most) = (turns.clone(), inside.clone(), most.clone());
                tokio::spawn(async move {
                    let _turn = turns.take("s/rg/c1").await;
                    let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    inside.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        let other = turns.take("s/rg/c2");
        tokio::time::timeout(Duration::from_secs(1), other)
            .await
            .expect("another resource is not held up");
        for writer in writers {
            writer.await.unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "one writer at a time");
        assert_eq!(turns.held(), 0, "nothing is kept once every turn is over");
    }
}
