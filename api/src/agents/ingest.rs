//! The group commit of status reports. A report applied alone was a transaction, and a flush of the database's log,
//! per configuration, with the configurations' triggers run per statement: a fleet reporting at once queued on
//! commits. Reports are instead handed to one task per replica, which applies those waiting together in one
//! transaction (`Store::apply_reports`), set-based where the engine allows. Each request is answered only once its
//! batch is committed, with each report's own outcome (`Recorded`, `Stale`, `Unknown`) exactly as a report applied
//! alone would have had, so nothing is acknowledged that is not committed.
//!
//! A batch that fails is applied again request by request, each in a transaction of its own, so that one bad
//! request fails alone; an unreachable database fails the whole batch at once instead (each retry would wait for
//! it). The queue is bounded by the size of the requests waiting in it: a request that does not fit is refused
//! with 503 `ServerBusy` and `Retry-After`, which agents retry, so memory stays bounded whatever the fleet does.
//!
//! It is bounded by time as well. Agents give up on a report after 30 s and send it again; a queue that holds a
//! report longer than that applies it for nobody, then applies its second copy. At 100,000 agents reporting at
//! once, more than half of the reports timed out in the queue. So a request is refused while the requests the
//! writer last took had waited over [`MAX_QUEUE_WAIT`], and a request whose caller stopped waiting (its agent gave
//! up, or the server's own timeout ended it) is dropped when its turn comes rather than applied: nobody would learn
//! its outcome, and its agent sends it again.
//!
//! A poll's heartbeat waits for its commit only when it makes the cluster Connected; the others are queued with
//! nobody waiting (`Ingest::beat`), admitted as a report is, and not dropped as abandoned.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::error::ApiError;
use crate::model::{BatchOutcome, ConfigurationReportWrite, HeartbeatWrite, ReportOutcome};
use crate::store::Store;

/// Configuration reports applied in one transaction at most: a larger backlog is applied in several, one after
/// another, each request whole (a request carries at most 1,000, so the largest fits in one batch).
pub const BATCH_REPORTS: usize = 1000;
/// The request bytes the queue holds at most (its memory bound): 64 MiB, 100,000 reports of a configuration each.
pub const QUEUE_BYTES: usize = 64 << 20;
/// The unit the queue counts bytes in (a semaphore counts in `u32`).
const QUEUE_UNIT: usize = 1024;
/// The longest the oldest request of a batch may have waited before the queue refuses more: a third of the 30 s an
/// agent waits for its answer, which leaves the rest for the batch's own write.
pub const MAX_QUEUE_WAIT: Duration = Duration::from_secs(10);

/// One request's reports, and the agent's heartbeat if one is due.
#[derive(Debug, Clone)]
pub struct Submission {
    pub reports: Vec<ConfigurationReportWrite>,
    pub heartbeat: Option<HeartbeatWrite>,
}

/// What became of a submission: each report's outcome, in order, and the heartbeat's cluster revision (`None`: no
/// heartbeat was due; `Some(None)`: the cluster is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub reports: Vec<ReportOutcome>,
    pub revision: Option<Option<i64>>,
}

/// A submission waiting in the queue, its room in it, when it came, and who to tell (nobody for a heartbeat sent
/// with [`Ingest::beat`]).
struct Job {
    submission: Submission,
    _room: OwnedSemaphorePermit,
    queued: Instant,
    done: Option<oneshot::Sender<Result<Applied, ApiError>>>,
}

impl Job {
    /// Whether the caller stopped waiting for the outcome it asked for.
    fn abandoned(&self) -> bool {
        self.done.as_ref().is_some_and(oneshot::Sender::is_closed)
    }

    fn answer(self, outcome: Result<Applied, ApiError>) {
        if let Some(done) = self.done {
            let _ = done.send(outcome);
        }
    }
}

/// The handle requests submit through.
#[derive(Clone)]
pub struct Ingest {
    sender: mpsc::UnboundedSender<Job>,
    room: Arc<Semaphore>,
    /// How long, in milliseconds, the oldest request of the writer's last batch had waited; 0 once the queue is empty.
    waited: Arc<AtomicU64>,
}

impl Ingest {
    /// The queue, and the task that applies what it holds (it ends when every handle is gone).
    pub fn start(store: Arc<dyn Store>) -> (Self, tokio::task::JoinHandle<()>) {
        // the semaphore bounds the queue; the channel itself need not
        let (sender, receiver) = mpsc::unbounded_channel();
        let room = Arc::new(Semaphore::new(QUEUE_BYTES / QUEUE_UNIT));
        let waited = Arc::new(AtomicU64::new(0));
        (
            Self {
                sender,
                room,
                waited: waited.clone(),
            },
            tokio::spawn(apply(store, receiver, waited)),
        )
    }

    /// Applies `submission` with whatever else is waiting; `bytes` is the request's size, its share of the queue.
    /// Answers once it is committed, or 503 `ServerBusy` at once if the queue has no room for it or keeps requests
    /// waiting too long.
    pub async fn submit(&self, submission: Submission, bytes: usize) -> Result<Applied, ApiError> {
        let room = self.admit(bytes)?;
        let (done, applied) = oneshot::channel();
        self.sender
            .send(Job {
                submission,
                _room: room,
                queued: Instant::now(),
                done: Some(done),
            })
            .map_err(|_| stopped())?;
        applied.await.map_err(|_| stopped())?
    }

    /// Queues the heartbeat of an agent already Connected without waiting for its commit: a poll needs nothing from
    /// it (its revision is read apart), and at 100,000 agents a poll waiting for a batch held up behind a fleet
    /// write's locks timed out with it. Refused as [`Self::submit`] refuses (503 `ServerBusy`), so that a busy
    /// server never answers a poll whose heartbeat it dropped: a fleet answered that way for minutes would be
    /// marked Offline while it polls.
    pub fn beat(&self, heartbeat: HeartbeatWrite) -> Result<(), ApiError> {
        let room = self.admit(0)?;
        let submission = Submission {
            reports: Vec::new(),
            heartbeat: Some(heartbeat),
        };
        self.sender
            .send(Job {
                submission,
                _room: room,
                queued: Instant::now(),
                done: None,
            })
            .map_err(|_| stopped())
    }

    /// The room for a request of `bytes`, or 503 `ServerBusy` if the queue has none or keeps requests waiting too
    /// long.
    fn admit(&self, bytes: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let waited = Duration::from_millis(self.waited.load(Ordering::Relaxed));
        if waited > MAX_QUEUE_WAIT {
            return Err(ApiError::ServerBusy(format!(
                "status reports wait {} s in this server's queue; retry shortly",
                waited.as_secs()
            )));
        }
        let units = u32::try_from(bytes.div_ceil(QUEUE_UNIT).clamp(1, QUEUE_BYTES / QUEUE_UNIT)).unwrap_or(u32::MAX);
        self.room.clone().try_acquire_many_owned(units).map_err(|_| {
            ApiError::ServerBusy("the server holds as many status reports as it queues; retry shortly".into())
        })
    }
}

fn stopped() -> ApiError {
    ApiError::NotReady("the status reports' writer has stopped".into())
}

/// How many of the waiting submissions, of these sizes in configuration reports, go in the next batch: as many as
/// fit in `limit` reports, in order, and always the first (a request is never split).
pub fn batch_len(sizes: impl IntoIterator<Item = usize>, limit: usize) -> usize {
    let mut total = 0;
    let mut taken = 0;
    for size in sizes {
        // a heartbeat alone costs a statement too
        let size = size.max(1);
        if taken > 0 && total + size > limit {
            break;
        }
        total += size;
        taken += 1;
    }
    taken
}

async fn apply(store: Arc<dyn Store>, mut receiver: mpsc::UnboundedReceiver<Job>, waited: Arc<AtomicU64>) {
    let mut waiting: VecDeque<Job> = VecDeque::new();
    loop {
        if waiting.is_empty() {
            waited.store(0, Ordering::Relaxed);
            match receiver.recv().await {
                Some(job) => waiting.push_back(job),
                None => return,
            }
        }
        // whatever arrived while the last batch was being written goes in the next
        while let Ok(job) = receiver.try_recv() {
            waiting.push_back(job);
        }
        let batch = next_batch(&mut waiting);
        if let Some(oldest) = batch.first() {
            let wait = u64::try_from(oldest.queued.elapsed().as_millis()).unwrap_or(u64::MAX);
            waited.store(wait, Ordering::Relaxed);
            apply_batch(store.as_ref(), batch).await;
        }
    }
}

/// The requests the next batch applies, taken from the front of `waiting`, without those whose caller has stopped
/// waiting (dropped, and their room in the queue with them).
fn next_batch(waiting: &mut VecDeque<Job>) -> Vec<Job> {
    let taken = batch_len(waiting.iter().map(|j| j.submission.reports.len()), BATCH_REPORTS);
    let batch: Vec<Job> = waiting.drain(..taken).filter(|job| !job.abandoned()).collect();
    if batch.len() < taken {
        tracing::debug!(
            dropped = taken - batch.len(),
            "status reports whose agents stopped waiting were not applied"
        );
    }
    batch
}

/// Times a batch the database rolled back for another transaction (a fleet write locking the same clusters) is
/// tried again whole, before its requests are applied one by one: a thousand transactions where one would do.
const COLLISION_RETRIES: usize = 3;

/// Applies a batch in one transaction and answers each of its requests; if that fails, applies each request alone.
async fn apply_batch(store: &dyn Store, batch: Vec<Job>) {
    let submissions: Vec<&Submission> = batch.iter().map(|j| &j.submission).collect();
    let mut written = write(store, &submissions).await;
    for _ in 0..COLLISION_RETRIES {
        match &written {
            Err(err) if err.is_transient() => {
                tracing::debug!(error = ?err, requests = batch.len(), "a batch of status reports was rolled back for another transaction; trying it again");
                written = write(store, &submissions).await;
            }
            _ => break,
        }
    }
    match written {
        Ok(applied) => {
            for (job, applied) in batch.into_iter().zip(applied) {
                job.answer(Ok(applied));
            }
        }
        Err(err) if batch.len() == 1 || err.is_unavailable() => {
            // the others are answered alike: a batch without a connection is not an outage until the watcher says so
            let answers = ApiError::from(err).for_each_of(batch.len());
            for (job, answer) in batch.into_iter().zip(answers) {
                job.answer(Err(answer));
            }
        }
        Err(err) => {
            tracing::warn!(error = ?err, requests = batch.len(), "a batch of status reports failed; applying each request alone");
            for job in batch {
                let applied = write(store, &[&job.submission])
                    .await
                    .map(|mut applied| applied.remove(0));
                job.answer(applied.map_err(ApiError::from));
            }
        }
    }
}

/// One transaction for the submissions; answers what became of each, in order.
async fn write(store: &dyn Store, submissions: &[&Submission]) -> crate::store::StoreResult<Vec<Applied>> {
    let reports: Vec<ConfigurationReportWrite> = submissions.iter().flat_map(|s| s.reports.iter().cloned()).collect();
    let heartbeats: Vec<HeartbeatWrite> = submissions.iter().filter_map(|s| s.heartbeat.clone()).collect();
    let BatchOutcome { reports, revisions } = store.apply_reports(&reports, &heartbeats, Utc::now()).await?;
    Ok(split(submissions, reports, revisions))
}

/// Hands each submission its share of a batch's outcome, in order.
fn split(submissions: &[&Submission], reports: Vec<ReportOutcome>, revisions: Vec<Option<i64>>) -> Vec<Applied> {
    let mut reports = reports.into_iter();
    let mut revisions = revisions.into_iter();
    submissions
        .iter()
        .map(|s| Applied {
            reports: reports.by_ref().take(s.reports.len()).collect(),
            revision: s.heartbeat.as_ref().map(|_| revisions.next().flatten()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AgentInfo, ReportDisposition};
    use crate::on_both_backends;
    use crate::testing::{Backend, with_database};

    #[test]
    fn a_batch_takes_the_waiting_requests_in_order_while_their_reports_fit() {
        assert_eq!(batch_len([400, 400, 300, 10], 1000), 2);
        assert_eq!(batch_len([400, 600, 1], 1000), 2);
    }

    #[test]
    fn a_request_larger_than_a_batch_is_never_split_and_goes_alone() {
        assert_eq!(batch_len([1500, 1], 1000), 1);
        assert_eq!(batch_len([1, 1500], 1000), 1);
    }

    #[test]
    fn a_heartbeat_without_reports_counts_as_one_statement() {
        assert_eq!(batch_len([0; 1500], 1000), 1000);
    }

    #[test]
    fn nothing_waiting_makes_an_empty_batch() {
        assert_eq!(batch_len([], 1000), 0);
    }

    fn outcome(disposition: ReportDisposition) -> ReportOutcome {
        ReportOutcome {
            disposition,
            written_at: None,
        }
    }

    fn submission(reports: usize, heartbeat: bool) -> Submission {
        let report = ConfigurationReportWrite {
            cluster_id: 1,
            name: "cfg".into(),
            generation: 1,
            resource_key: "sub/rg/c1/cfg".into(),
            write: crate::model::ReportWrite::Removed,
            secrets_version: None,
        };
        Submission {
            reports: vec![report; reports],
            heartbeat: heartbeat.then(|| HeartbeatWrite {
                cluster_id: 1,
                info: AgentInfo::default(),
            }),
        }
    }

    #[test]
    fn each_request_gets_its_own_reports_outcomes_and_its_own_heartbeat() {
        let (a, b, c) = (submission(2, true), submission(0, true), submission(1, false));
        let applied = split(
            &[&a, &b, &c],
            vec![
                outcome(ReportDisposition::Recorded),
                outcome(ReportDisposition::Stale),
                outcome(ReportDisposition::Unknown),
            ],
            vec![Some(7), None],
        );
        assert_eq!(
            applied,
            vec![
                Applied {
                    reports: vec![outcome(ReportDisposition::Recorded), outcome(ReportDisposition::Stale)],
                    revision: Some(Some(7)),
                },
                Applied {
                    reports: Vec::new(),
                    revision: Some(None),
                },
                Applied {
                    reports: vec![outcome(ReportDisposition::Unknown)],
                    revision: None,
                },
            ]
        );
    }

    /// A queue without its writer: what is submitted stays in `receiver`.
    fn unattended() -> (Ingest, mpsc::UnboundedReceiver<Job>) {
        let (sender, receiver) = mpsc::unbounded_channel();
        let ingest = Ingest {
            sender,
            room: Arc::new(Semaphore::new(QUEUE_BYTES / QUEUE_UNIT)),
            waited: Arc::new(AtomicU64::new(0)),
        };
        (ingest, receiver)
    }

    #[tokio::test]
    async fn a_request_that_finds_the_queue_full_is_refused_as_busy_at_once() {
        let (ingest, _receiver) = unattended();
        let _held = ingest.room.clone().try_acquire_many_owned(10).unwrap();
        let refused = ingest.submit(submission(1, false), QUEUE_BYTES).await.unwrap_err();
        assert!(matches!(refused, ApiError::ServerBusy(_)), "{refused:?}");
        assert_eq!(refused.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
    }

    #[tokio::test]
    async fn a_request_is_refused_while_the_queue_keeps_requests_waiting_past_its_bound() {
        let (ingest, mut receiver) = unattended();
        let past = u64::try_from(MAX_QUEUE_WAIT.as_millis()).unwrap();
        ingest.waited.store(past + 1, Ordering::Relaxed);
        let refused = ingest.submit(submission(1, false), 100).await.unwrap_err();
        assert!(matches!(refused, ApiError::ServerBusy(_)), "{refused:?}");
        assert!(receiver.try_recv().is_err(), "a refused request is not queued");
        assert_eq!(
            ingest.room.available_permits(),
            QUEUE_BYTES / QUEUE_UNIT,
            "a refused request holds no room"
        );

        ingest.waited.store(past, Ordering::Relaxed);
        let queued = tokio::spawn({
            let ingest = ingest.clone();
            async move { ingest.submit(submission(1, false), 100).await }
        });
        let job = receiver.recv().await.expect("a request within the bound is queued");
        job.answer(Ok(Applied {
            reports: vec![outcome(ReportDisposition::Recorded)],
            revision: None,
        }));
        assert_eq!(
            queued.await.unwrap().unwrap().reports,
            vec![outcome(ReportDisposition::Recorded)]
        );
    }

    #[tokio::test]
    async fn a_request_whose_caller_stopped_waiting_is_dropped_with_its_room_instead_of_applied() {
        let (ingest, mut receiver) = unattended();
        let mut callers = Vec::new();
        for reports in [1, 2, 3] {
            let ingest = ingest.clone();
            callers.push(tokio::spawn(async move {
                ingest.submit(submission(reports, false), 2048).await
            }));
        }
        let mut waiting = VecDeque::new();
        for _ in 0..3 {
            waiting.push_back(receiver.recv().await.unwrap());
        }
        waiting
            .make_contiguous()
            .sort_by_key(|job| job.submission.reports.len());
        // the second caller gives up (its agent's timeout, or the server's): its answer has nobody to go to
        callers.remove(1).abort();
        while !waiting[1].abandoned() {
            tokio::task::yield_now().await;
        }
        let batch = next_batch(&mut waiting);
        let sizes: Vec<usize> = batch.iter().map(|job| job.submission.reports.len()).collect();
        assert_eq!(sizes, vec![1, 3], "the abandoned request is not in the batch");
        assert!(waiting.is_empty());
        assert_eq!(
            ingest.room.available_permits(),
            QUEUE_BYTES / QUEUE_UNIT - 4,
            "the abandoned request's room is free again, the others' held until they are answered"
        );
    }

    #[tokio::test]
    async fn a_heartbeat_nobody_waits_for_is_applied_in_its_batch_and_refused_as_busy_like_a_report() {
        let (ingest, mut receiver) = unattended();
        let beat = |cluster_id| HeartbeatWrite {
            cluster_id,
            info: AgentInfo::default(),
        };
        ingest.beat(beat(7)).expect("a heartbeat is queued while there is room");
        let job = receiver.recv().await.unwrap();
        assert!(
            job.done.is_none() && !job.abandoned(),
            "nobody waits for it, yet it is no abandoned request"
        );
        let mut waiting = VecDeque::from([job]);
        let batch = next_batch(&mut waiting);
        assert_eq!(batch.len(), 1, "it is applied with its batch");
        assert_eq!(batch[0].submission.heartbeat.as_ref().map(|h| h.cluster_id), Some(7));
        batch.into_iter().for_each(|job| job.answer(Err(stopped())));
        assert_eq!(
            ingest.room.available_permits(),
            QUEUE_BYTES / QUEUE_UNIT,
            "its room is free once it is applied"
        );

        ingest.waited.store(
            u64::try_from(MAX_QUEUE_WAIT.as_millis()).unwrap() + 1,
            Ordering::Relaxed,
        );
        let refused = ingest.beat(beat(8)).unwrap_err();
        assert!(
            matches!(refused, ApiError::ServerBusy(_)),
            "a busy queue refuses it: {refused:?}"
        );
        assert!(receiver.try_recv().is_err(), "a refused heartbeat is not queued");
    }

    on_both_backends!(
        the_queue_admits_again_once_the_requests_that_waited_too_long_are_applied,
        drained_case
    );
    async fn drained_case(backend: Backend) {
        with_database(backend, |db| async move {
            let (ingest, mut receiver) = unattended();
            let submitted = tokio::spawn({
                let ingest = ingest.clone();
                async move { ingest.submit(submission(1, true), 100).await }
            });
            // the request came in, then waited past the bound behind others
            let mut job = receiver.recv().await.unwrap();
            job.queued = Instant::now() - 2 * MAX_QUEUE_WAIT;
            let (sender, queue) = mpsc::unbounded_channel();
            sender.send(job).unwrap();
            let _writer = tokio::spawn(apply(db.store().await, queue, ingest.waited.clone()));

            let applied = submitted
                .await
                .unwrap()
                .expect("a queued request is applied however long it waited");
            assert_eq!(applied.reports, vec![outcome(ReportDisposition::Unknown)]);
            tokio::time::timeout(Duration::from_secs(5), async {
                while ingest.waited.load(Ordering::Relaxed) != 0 {
                    tokio::task::yield_now().await;
                }
            })
            .await
            .expect("a drained queue keeps nobody waiting, and so admits again");
            let (again, mut queued) = (ingest.clone(), receiver);
            tokio::spawn(async move { again.submit(submission(1, false), 100).await });
            assert!(queued.recv().await.is_some(), "admitted again");
        })
        .await;
    }
}
