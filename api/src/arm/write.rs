//! The write kit every resource's service shares: new ETags, and the optimistic-concurrency loop that reads a
//! resource, decides, and writes it back only if nobody changed it in between.
//!
//! Writers of one resource take turns on this replica (`turns`), so an unconditional write sees the one before it;
//! writers on other replicas still race, and a write that loses re-reads and tries again, `WRITE_ATTEMPTS` times
//! in all. A conditional write (`If-Match`) that loses answers 412 at once: the version it named is gone.

use crate::arm::conditional::Preconditions;
use crate::error::{ApiError, ApiResult};
use crate::turns::Turns;

/// How often an unconditional write re-reads and retries after losing a race before giving up.
pub const WRITE_ATTEMPTS: usize = 8;

/// A new ETag: every accepted write changes it.
pub fn new_etag() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// The answer when a write lost every attempt to other writers.
pub fn contention() -> ApiError {
    ApiError::Conflict("the resource is being changed by other requests; retry".into())
}

/// What one attempt of a write came to.
#[derive(Debug)]
pub enum Attempt<T> {
    /// Written, or decided without a write: the answer.
    Done(T),
    /// Another writer changed the resource between this attempt's read and its write.
    Lost,
}

/// Runs `attempt` in the resource's turn until it is done, it fails, or it has lost `WRITE_ATTEMPTS` times (a race
/// with another writer, or a transaction the database rolled back to break a deadlock). `key` names the resource as
/// the store keys it, prefixed by its type.
///
/// `attempt` is a closure returning a future rather than an async closure: the futures of async closures cannot yet
/// be shown `Send` where axum needs it. Callers capture references (`move || async move { .. }`).
pub async fn retry<T, F, Fut>(turns: &Turns, key: &str, preconditions: &Preconditions, mut attempt: F) -> ApiResult<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ApiResult<Attempt<T>>>,
{
    let _turn = turns.take(key).await;
    let mut collided = None;
    for _ in 0..WRITE_ATTEMPTS {
        match attempt().await {
            Ok(Attempt::Done(value)) => return Ok(value),
            Ok(Attempt::Lost) if preconditions.is_conditional() => return Err(Preconditions::lost_race()),
            Ok(Attempt::Lost) => continue,
            // rolled back whole for another transaction: the attempt wrote nothing, and its preconditions are
            // checked again on the next one
            Err(err @ ApiError::WriteCollided(_)) => {
                tracing::debug!(error = %err, "a write collided with another transaction; trying again");
                collided = Some(err);
            }
            Err(err) => return Err(err),
        }
    }
    Err(collided.unwrap_or_else(contention))
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    #[tokio::test]
    async fn an_unconditional_write_retries_until_it_lands_and_gives_up_after_the_last_attempt() {
        let turns = Turns::default();
        let tries = Cell::new(0);
        let landed = retry(&turns, "k", &Preconditions::default(), || async {
            tries.set(tries.get() + 1);
            Ok(if tries.get() < 3 {
                Attempt::Lost
            } else {
                Attempt::Done("written")
            })
        })
        .await
        .unwrap();
        assert_eq!((landed, tries.get()), ("written", 3));

        tries.set(0);
        let err = retry(&turns, "k", &Preconditions::default(), || async {
            tries.set(tries.get() + 1);
            Ok(Attempt::<()>::Lost)
        })
        .await
        .unwrap_err();
        assert_eq!(tries.get(), WRITE_ATTEMPTS);
        assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_write_the_database_rolled_back_for_another_is_tried_again_conditional_or_not() {
        let turns = Turns::default();
        let collided = || ApiError::WriteCollided("rolled back".into());
        for preconditions in [Preconditions::default(), Preconditions::if_match("e1")] {
            let tries = Cell::new(0);
            let landed = retry(&turns, "k", &preconditions, || async {
                tries.set(tries.get() + 1);
                if tries.get() < 3 {
                    Err(collided())
                } else {
                    Ok(Attempt::Done("written"))
                }
            })
            .await
            .unwrap();
            assert_eq!((landed, tries.get()), ("written", 3));
        }

        // rolled back every time: answered as such (503, retry), not as a conflict with other writers
        let tries = Cell::new(0);
        let err = retry(&turns, "k", &Preconditions::default(), || async {
            tries.set(tries.get() + 1);
            Err::<Attempt<()>, _>(collided())
        })
        .await
        .unwrap_err();
        assert_eq!(tries.get(), WRITE_ATTEMPTS);
        assert_eq!(err.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.code(), "ServerBusy");

        // any other failure ends the loop at once
        let tries = Cell::new(0);
        let err = retry(&turns, "k", &Preconditions::default(), || async {
            tries.set(tries.get() + 1);
            Err::<Attempt<()>, _>(ApiError::Conflict("overlap".into()))
        })
        .await
        .unwrap_err();
        assert_eq!(tries.get(), 1);
        assert!(matches!(err, ApiError::Conflict(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_conditional_write_that_loses_does_not_retry() {
        let turns = Turns::default();
        let tries = Cell::new(0);
        let err = retry(&turns, "k", &Preconditions::if_match("e1"), || async {
            tries.set(tries.get() + 1);
            Ok(Attempt::<()>::Lost)
        })
        .await
        .unwrap_err();
        assert_eq!(tries.get(), 1);
        assert_eq!(err.status(), axum::http::StatusCode::PRECONDITION_FAILED);
    }
}
