//! The outbox at work, on every replica: a loop that turns queued events into messages (`Alerts::dispatch_alerts`)
//! and sends what rules held back once their interval passed, and senders that lease each receiver's due messages,
//! post them and record how each attempt ended. Nothing is kept in memory that a restart would miss: an event is
//! in `alert_events` until its messages are queued, a message in `alert_deliveries` until it is delivered or given
//! up, and a lease ends by itself when the replica holding it dies (at least once; receivers drop repeats by the
//! delivery id). Bounded throughout: batches, concurrent sends, each receiver's backlog (`--alert-backlog`), retries
//! (`--alert-give-up-after`) and the delivery log (a week, the last thousand per receiver).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use super::message;
use super::model::{Backoff, Verdict, verdict};
use crate::config::ServeConfig;
use crate::lifecycle::DeliveryState;
use crate::metrics::Metrics;
use crate::model::{AlertReceiverRecord, DeliveryOutcome, DeliveryRecord, DispatchLimits, FinishedDelivery};
use crate::store::Store;
use crate::vault::Vault;

/// How often the loop looks for events, held messages and due deliveries when nothing woke it.
const TICK: Duration = Duration::from_millis(250);
/// Queued events (or held messages) per transaction, and batches per tick before the loop lets others run.
const BATCH: i64 = 500;
const BATCHES_PER_TICK: usize = 20;
/// Deliveries one receiver's sender leases at a time: fewer leasing transactions for a receiver that answers
/// quickly; a slow one's lease is released before it could end mid-attempt.
const CLAIM: i64 = 100;
/// Receivers sent to at once by one replica.
const CONCURRENT_RECEIVERS: usize = 16;
/// How long past its time limit a lease lasts: a replica that has not finished an attempt by then is taken for dead.
const LEASE_SLACK: Duration = Duration::from_secs(20);
/// The delivery log: finished deliveries are kept this long, and at most this many per receiver.
const LOG_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);
const LOG_KEEP_PER_RECEIVER: i64 = 1000;
/// The longest wait between retries, and the longest minimum interval (a subject quiet longer is forgotten).
const LONGEST_RETRY: Duration = Duration::from_secs(3600);
const LONGEST_INTERVAL: Duration = Duration::from_secs(86_400);
/// How often the log is pruned and the queue gauges read.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
const GAUGES_EVERY: Duration = Duration::from_secs(5);
/// What a receiver's answer body is read up to (and then dropped), so that its connection is reused.
const ANSWER_BYTES: usize = 64 * 1024;

/// Posts messages to receivers: the HTTP client and what opening their credentials takes.
pub struct Sender {
    client: reqwest::Client,
    vault: Option<Arc<Vault>>,
    timeout: Duration,
    backoff: Backoff,
}

/// A receiver's opened credentials: where to post, in what shape, and the signing key. Never printed.
pub struct Credentials {
    kind: super::model::ReceiverKind,
    url: String,
    key: Option<Vec<u8>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({:?}, <redacted>)", self.kind)
    }
}

/// How one attempt ended, before it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempted {
    pub status: Option<u16>,
    /// What went wrong, never the URL.
    pub error: Option<String>,
    pub retry_after: Option<Duration>,
    pub elapsed: Duration,
    /// The receiver's credentials do not open with this server's key: no later attempt can do better.
    pub unsendable: bool,
}

impl Sender {
    pub fn new(config: &ServeConfig, vault: Option<Arc<Vault>>) -> anyhow::Result<Self> {
        // the process's rustls provider (ring), as every client of this workspace (ARCHITECTURE.md, TLS)
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let client = reqwest::Client::builder()
            .user_agent(concat!("fluxplane/", env!("CARGO_PKG_VERSION")))
            .timeout(config.alert_request_timeout)
            .connect_timeout(config.alert_request_timeout.min(Duration::from_secs(5)))
            // a redirect would send the message (and, for a webhook, its signature) somewhere not configured
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(Self {
            client,
            vault,
            timeout: config.alert_request_timeout,
            backoff: Backoff {
                first: config.alert_retry_delay,
                longest: LONGEST_RETRY,
                give_up_after: config.alert_give_up_after,
            },
        })
    }

    /// When a lease taken at `now` ends.
    pub fn lease_until(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.timeout + LEASE_SLACK).unwrap_or(chrono::Duration::MAX)
    }

    /// Opens the receiver's URL and signing key, once for a lease's attempts; when they do not open, what every
    /// attempt meets instead.
    pub fn open(&self, receiver: &AlertReceiverRecord) -> Result<Credentials, Attempted> {
        let failed = |error: String, unsendable: bool| Attempted {
            status: None,
            error: Some(error),
            retry_after: None,
            elapsed: Duration::ZERO,
            unsendable,
        };
        let Some(vault) = &self.vault else {
            // another replica wrote the receiver: this one may get the key file at its next start
            return Err(failed(
                "this server has no --secrets-key-file to open the receiver's URL with".to_owned(),
                false,
            ));
        };
        let url = vault
            .open(&AlertReceiverRecord::url_place(&receiver.key), &receiver.sealed_url)
            .map_err(|err| err.to_string())
            .and_then(|url| String::from_utf8(url).map_err(|_| "the receiver's URL is not text".to_owned()))
            .map_err(|error| failed(format!("{error}; write the receiver again"), true))?;
        let key = match &receiver.sealed_signing_key {
            Some(sealed) => Some(
                vault
                    .open(&AlertReceiverRecord::signing_key_place(&receiver.key), sealed)
                    .map_err(|err| failed(format!("{err}; write the receiver again"), true))?,
            ),
            None => None,
        };
        Ok(Credentials {
            kind: receiver.spec.kind,
            url,
            key,
        })
    }

    /// Posts the delivery's message to the receiver, once.
    pub async fn attempt(&self, credentials: &Result<Credentials, Attempted>, delivery: &DeliveryRecord) -> Attempted {
        let credentials = match credentials {
            Ok(credentials) => credentials,
            Err(unopened) => return unopened.clone(),
        };
        let started = std::time::Instant::now();
        let rendered = message::render(
            credentials.kind,
            &delivery.message,
            credentials.key.as_deref(),
            Utc::now().timestamp(),
        );
        let mut request = self
            .client
            .post(&credentials.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in rendered.headers {
            request = request.header(name, value);
        }
        match request.body(rendered.body).send().await {
            Ok(mut response) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                let mut read = 0;
                while read < ANSWER_BYTES {
                    match response.chunk().await {
                        Ok(Some(chunk)) => read += chunk.len(),
                        _ => break,
                    }
                }
                Attempted {
                    status: Some(status.as_u16()),
                    error: (!status.is_success()).then(|| format!("the receiver answered {status}")),
                    retry_after,
                    elapsed: started.elapsed(),
                    unsendable: false,
                }
            }
            Err(err) => Attempted {
                status: None,
                error: Some(describe(&err, self.timeout)),
                retry_after: None,
                elapsed: started.elapsed(),
                unsendable: false,
            },
        }
    }

    /// Where the delivery stands after `attempted`: delivered, refused, given up or due again (with backoff and
    /// jitter).
    pub fn outcome(&self, delivery: &DeliveryRecord, attempted: &Attempted, now: DateTime<Utc>) -> DeliveryOutcome {
        let status_code = attempted.status.map(i32::from);
        if attempted.unsendable {
            return DeliveryOutcome {
                state: DeliveryState::Failed,
                due_at: now,
                status_code,
                error: attempted.error.clone(),
            };
        }
        match verdict(attempted.status) {
            Verdict::Delivered => DeliveryOutcome {
                state: DeliveryState::Delivered,
                due_at: now,
                status_code,
                error: None,
            },
            Verdict::Refused => DeliveryOutcome {
                state: DeliveryState::Failed,
                due_at: now,
                status_code,
                error: Some(format!(
                    "{}; not retried: the receiver refuses the message",
                    attempted.error.as_deref().unwrap_or("refused")
                )),
            },
            Verdict::Retry => {
                let attempts = u32::try_from(delivery.attempts).unwrap_or(1);
                let delay = self
                    .backoff
                    .delay(attempts, rand::random::<f64>(), attempted.retry_after);
                let next = now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX);
                if self.backoff.gives_up(delivery.created_at, next) {
                    DeliveryOutcome {
                        state: DeliveryState::Failed,
                        due_at: now,
                        status_code,
                        error: Some(format!(
                            "gave up after {attempts} attempts over {}: {}",
                            humantime::format_duration(self.backoff.give_up_after),
                            attempted.error.as_deref().unwrap_or("failed")
                        )),
                    }
                } else {
                    DeliveryOutcome {
                        state: DeliveryState::Pending,
                        due_at: next,
                        status_code,
                        error: attempted.error.clone(),
                    }
                }
            }
        }
    }
}

impl Sender {
    /// Where a leased delivery stands that goes back unattempted: due with `after`'s next attempt (the attempt before
    /// it failed: the receiver is failing), given up if that is past its time, or due `now` (the lease ran out).
    pub fn release(
        &self,
        delivery: &DeliveryRecord,
        after: Option<&DeliveryOutcome>,
        now: DateTime<Utc>,
    ) -> DeliveryOutcome {
        let Some(failed) = after else {
            return DeliveryOutcome {
                state: DeliveryState::Pending,
                due_at: now,
                status_code: None,
                error: None,
            };
        };
        if self.backoff.gives_up(delivery.created_at, failed.due_at) {
            DeliveryOutcome {
                state: DeliveryState::Failed,
                due_at: now,
                status_code: None,
                error: Some(format!(
                    "gave up after {}: the receiver kept failing ({})",
                    humantime::format_duration(self.backoff.give_up_after),
                    failed.error.as_deref().unwrap_or("failed")
                )),
            }
        } else {
            DeliveryOutcome {
                state: DeliveryState::Pending,
                due_at: failed.due_at,
                status_code: None,
                error: None,
            }
        }
    }
}

/// What a failed request met, without its URL (reqwest's errors print it, and a webhook's URL is its secret).
fn describe(err: &reqwest::Error, timeout: Duration) -> String {
    if err.is_timeout() {
        return format!("no answer within {}", humantime::format_duration(timeout));
    }
    let what = if err.is_connect() {
        "could not connect"
    } else {
        "the request failed"
    };
    let mut causes = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        causes.push(cause.to_string());
        source = cause.source();
    }
    match causes.last() {
        Some(root) => format!("{what}: {root}"),
        None => what.to_owned(),
    }
}

/// Runs the outbox until dropped: the dispatcher (events to messages, held messages once due, the log's pruning
/// and the queue gauges) and the senders' scheduler, side by side, so that sending starts with the first batch a
/// dispatch commits (it wakes the scheduler) rather than after the whole burst.
pub async fn run(store: Arc<dyn Store>, sender: Arc<Sender>, metrics: Arc<Metrics>, backlog: u32) {
    let queued = Arc::new(Notify::new());
    tokio::join!(
        dispatch(store.clone(), metrics.clone(), backlog, queued.clone()),
        schedule(store, sender, metrics, queued),
    );
}

async fn dispatch(store: Arc<dyn Store>, metrics: Arc<Metrics>, backlog: u32, queued: Arc<Notify>) {
    let limits = DispatchLimits {
        batch: BATCH,
        backlog: i64::from(backlog),
    };
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut pruned_at, mut gauged_at) = (None::<tokio::time::Instant>, None::<tokio::time::Instant>);
    loop {
        ticks.tick().await;
        for _ in 0..BATCHES_PER_TICK {
            match store.dispatch_alerts(Utc::now(), &limits).await {
                Ok(done) => {
                    report_dropped(&metrics, &done.dropped);
                    if done.queued > 0 {
                        queued.notify_one();
                    }
                    if done.queued > 0 || done.held > 0 {
                        tracing::debug!(
                            events = done.taken,
                            queued = done.queued,
                            held = done.held,
                            "alerts dispatched"
                        );
                    }
                    if done.taken < BATCH as usize {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "dispatching alert events failed; will retry");
                    break;
                }
            }
        }
        match store.flush_held_alerts(Utc::now(), &limits).await {
            Ok(done) => {
                report_dropped(&metrics, &done.dropped);
                if done.queued > 0 {
                    queued.notify_one();
                }
            }
            Err(err) => tracing::warn!(error = %err, "sending held-back alerts failed; will retry"),
        }
        if pruned_at.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            pruned_at = Some(tokio::time::Instant::now());
            let now = Utc::now();
            let ago = |d: Duration| now - chrono::Duration::from_std(d).unwrap_or(chrono::Duration::zero());
            match store
                .prune_alerts(ago(LOG_KEEP), ago(LONGEST_INTERVAL), LOG_KEEP_PER_RECEIVER)
                .await
            {
                Ok(0) => {}
                Ok(pruned) => tracing::debug!(pruned, "pruned the alert delivery log"),
                Err(err) => tracing::warn!(error = %err, "pruning the alert delivery log failed; will retry"),
            }
        }
        if gauged_at.is_none_or(|at| at.elapsed() >= GAUGES_EVERY) {
            gauged_at = Some(tokio::time::Instant::now());
            if let Ok((events, backlog)) = store.alert_queues().await {
                metrics.alert_events_waiting.set(events);
                metrics.alert_backlog.set(backlog);
            }
        }
    }
}

/// Starts a sender for each receiver with deliveries due (and none running here), at most `CONCURRENT_RECEIVERS`
/// at once; the senders end with the scheduler.
async fn schedule(store: Arc<dyn Store>, sender: Arc<Sender>, metrics: Arc<Metrics>, queued: Arc<Notify>) {
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sending: Arc<Mutex<BTreeSet<i64>>> = Arc::default();
    let permits = Arc::new(Semaphore::new(CONCURRENT_RECEIVERS));
    let mut senders = JoinSet::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = queued.notified() => {}
        }
        while senders.try_join_next().is_some() {}
        let receivers = match store.due_receivers(Utc::now(), 1000).await {
            Ok(receivers) => receivers,
            Err(err) => {
                tracing::warn!(error = %err, "reading the alerts due failed; will retry");
                continue;
            }
        };
        for receiver in receivers {
            if !sending.lock().unwrap_or_else(PoisonError::into_inner).insert(receiver) {
                continue;
            }
            let Ok(permit) = permits.clone().try_acquire_owned() else {
                sending.lock().unwrap_or_else(PoisonError::into_inner).remove(&receiver);
                break;
            };
            let (store, sender, metrics, sending) = (store.clone(), sender.clone(), metrics.clone(), sending.clone());
            senders.spawn(async move {
                send_to(store, &sender, metrics, receiver).await;
                sending.lock().unwrap_or_else(PoisonError::into_inner).remove(&receiver);
                drop(permit);
            });
        }
    }
}

fn report_dropped(metrics: &Metrics, dropped: &[(i64, u64)]) {
    for (receiver, count) in dropped {
        metrics.alert_dropped.inc_by(*count);
        tracing::warn!(
            receiver_id = receiver,
            dropped = count,
            "an alert receiver's backlog is full (--alert-backlog): new messages for it are dropped and counted"
        );
    }
}

/// Sends the receiver's due deliveries, a lease at a time, in order, until none is due or its rate limit says wait.
/// Outcomes are recorded by a task of their own while the next message goes out, as many per transaction as have
/// come meanwhile: a slow commit does not hold the sending up, and a fast receiver gets its messages in batched
/// commits. A message whose attempt fails stops the lease: the rest wait for its next attempt, so that a receiver
/// that is down gets one message per backoff, not its whole backlog each time; and the rest are released when the
/// lease would end before another attempt could.
async fn send_to(store: Arc<dyn Store>, sender: &Sender, metrics: Arc<Metrics>, receiver_id: i64) {
    let (outcomes, recorded) = tokio::sync::mpsc::channel(CLAIM as usize * 2);
    let recorder = tokio::spawn(record_all(store.clone(), metrics, recorded));
    loop {
        let now = Utc::now();
        let lease_until = sender.lease_until(now);
        let claimed = match store.claim_deliveries(receiver_id, now, lease_until, CLAIM).await {
            Ok(Some(claimed)) => claimed,
            Ok(None) => break,
            Err(err) => {
                tracing::warn!(receiver_id, error = %err, "leasing alert deliveries failed; will retry");
                break;
            }
        };
        let (receiver, deliveries, limited) = claimed;
        let credentials = sender.open(&receiver);
        let receiver = Arc::new(receiver);
        let full = deliveries.len() as i64 == CLAIM;
        let mut stopped = false;
        let mut claimed = deliveries.into_iter();
        while let Some(delivery) = claimed.next() {
            if Utc::now() + chrono::Duration::from_std(sender.timeout).unwrap_or_default() >= lease_until {
                // no time left for another attempt under this lease: the rest go back, due now
                let now = Utc::now();
                let rest = std::iter::once(delivery).chain(claimed.by_ref());
                for d in rest {
                    let outcome = sender.release(&d, None, now);
                    let _ = outcomes.send(Recorded::released(&receiver, d, outcome)).await;
                }
                break;
            }
            let attempted = sender.attempt(&credentials, &delivery).await;
            let now = Utc::now();
            let outcome = sender.outcome(&delivery, &attempted, now);
            let failing = outcome.state == DeliveryState::Pending;
            if failing {
                for d in claimed.by_ref() {
                    let released = sender.release(&d, Some(&outcome), now);
                    let _ = outcomes.send(Recorded::released(&receiver, d, released)).await;
                }
                stopped = true;
            }
            let _ = outcomes
                .send(Recorded {
                    receiver: receiver.clone(),
                    delivery,
                    attempted: Some(attempted),
                    outcome,
                    at: now,
                })
                .await;
        }
        if stopped || limited || !full {
            break;
        }
    }
    drop(outcomes);
    let _ = recorder.await;
}

/// A delivery's end, waiting to be recorded.
pub struct Recorded {
    pub receiver: Arc<AlertReceiverRecord>,
    pub delivery: DeliveryRecord,
    /// `None` when it was released without an attempt.
    pub attempted: Option<Attempted>,
    pub outcome: DeliveryOutcome,
    pub at: DateTime<Utc>,
}

impl Recorded {
    fn released(receiver: &Arc<AlertReceiverRecord>, delivery: DeliveryRecord, outcome: DeliveryOutcome) -> Self {
        Self {
            receiver: receiver.clone(),
            delivery,
            attempted: None,
            outcome,
            at: Utc::now(),
        }
    }
}

/// Records what `ends` brings, a transaction for all that has come at once, until the channel closes.
async fn record_all(store: Arc<dyn Store>, metrics: Arc<Metrics>, mut ends: tokio::sync::mpsc::Receiver<Recorded>) {
    let mut batch = Vec::new();
    while ends.recv_many(&mut batch, 256).await > 0 {
        record(&*store, &metrics, &batch).await;
        batch.clear();
    }
}

/// Records attempts' ends in one transaction, logs them and counts them.
pub async fn record(store: &dyn Store, metrics: &Metrics, ends: &[Recorded]) {
    let finished: Vec<FinishedDelivery> = ends
        .iter()
        .map(|e| FinishedDelivery {
            id: e.delivery.id,
            attempts: e.delivery.attempts,
            attempted_at: e.attempted.as_ref().map(|_| e.at),
            outcome: e.outcome.clone(),
        })
        .collect();
    let held = match store.finish_deliveries(&finished).await {
        Ok(held) => held,
        Err(err) => {
            // the leases end and the deliveries are tried again: at least once
            tracing::warn!(error = %err, deliveries = ends.len(), "recording alert deliveries failed");
            return;
        }
    };
    for (end, held) in ends.iter().zip(held) {
        let (receiver, delivery, outcome) = (&end.receiver, &end.delivery, &end.outcome);
        let receiver_id = receiver.arm_id();
        if !held {
            tracing::warn!(
                receiver = %receiver_id, delivery = %delivery.delivery_id,
                "an alert delivery's lease ended before its attempt did: another attempt took it over"
            );
            continue;
        }
        let Some(attempted) = &end.attempted else {
            if outcome.state == DeliveryState::Failed {
                metrics.alert_delivery("failed");
                tracing::warn!(
                    receiver = %receiver_id, host = %receiver.spec.url_host, delivery = %delivery.delivery_id,
                    error = outcome.error.as_deref().unwrap_or_default(), "alert not delivered"
                );
            }
            continue;
        };
        match outcome.state {
            DeliveryState::Delivered => {
                metrics.alert_delivery("delivered");
                tracing::debug!(
                    receiver = %receiver_id, host = %receiver.spec.url_host, delivery = %delivery.delivery_id,
                    status = attempted.status, elapsed_ms = attempted.elapsed.as_millis() as u64, "alert delivered"
                )
            }
            DeliveryState::Failed => {
                metrics.alert_delivery("failed");
                tracing::warn!(
                    receiver = %receiver_id, host = %receiver.spec.url_host, delivery = %delivery.delivery_id,
                    attempts = delivery.attempts, error = outcome.error.as_deref().unwrap_or_default(),
                    "alert not delivered"
                )
            }
            _ => {
                metrics.alert_delivery("retried");
                tracing::info!(
                    receiver = %receiver_id, host = %receiver.spec.url_host, delivery = %delivery.delivery_id,
                    attempts = delivery.attempts, next_attempt = %outcome.due_at,
                    error = outcome.error.as_deref().unwrap_or_default(), "alert delivery failed; will retry"
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alerts::model::Message;

    fn sender() -> Sender {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::testing::test_config(dir.path(), "sqlite::memory:");
        Sender::new(&config, None).unwrap()
    }

    fn delivery(attempts: i32, created_at: DateTime<Utc>) -> DeliveryRecord {
        DeliveryRecord {
            id: 1,
            delivery_id: "d".into(),
            receiver_id: 1,
            rule_id: None,
            created_at,
            state: DeliveryState::Sending,
            due_at: created_at,
            attempts,
            last_attempt_at: None,
            last_status_code: None,
            last_error: None,
            finished_at: None,
            message: Message::test("/r", created_at),
        }
    }

    fn attempted(status: Option<u16>) -> Attempted {
        Attempted {
            status,
            error: status.filter(|s| *s >= 300).map(|s| format!("answered {s}")),
            retry_after: None,
            elapsed: Duration::ZERO,
            unsendable: false,
        }
    }

    #[test]
    fn an_attempt_ends_delivered_refused_due_again_or_given_up() {
        let sender = sender();
        let now = Utc::now();
        let delivered = sender.outcome(&delivery(1, now), &attempted(Some(204)), now);
        assert_eq!((delivered.state, delivered.error), (DeliveryState::Delivered, None));
        let refused = sender.outcome(&delivery(1, now), &attempted(Some(404)), now);
        assert_eq!(refused.state, DeliveryState::Failed);
        assert!(refused.error.unwrap().contains("not retried"));
        let retried = sender.outcome(&delivery(2, now), &attempted(Some(503)), now);
        assert_eq!(retried.state, DeliveryState::Pending);
        assert!(retried.due_at > now && retried.due_at <= now + chrono::Duration::milliseconds(400));
        assert_eq!(retried.status_code, Some(503));
        let old = now - chrono::Duration::hours(25);
        let given_up = sender.outcome(&delivery(9, old), &attempted(None), now);
        assert_eq!(given_up.state, DeliveryState::Failed);
        assert!(given_up.error.unwrap().starts_with("gave up after 9 attempts"));
    }

    #[test]
    fn what_a_failing_receivers_lease_leaves_waits_for_the_next_attempt_or_is_given_up() {
        let sender = sender();
        let now = Utc::now();
        let failed = sender.outcome(&delivery(1, now), &attempted(Some(503)), now);
        let waiting = sender.release(&delivery(1, now), Some(&failed), now);
        assert_eq!((waiting.state, waiting.due_at), (DeliveryState::Pending, failed.due_at));
        let old = now - chrono::Duration::hours(25);
        let given_up = sender.release(&delivery(1, old), Some(&failed), now);
        assert_eq!(given_up.state, DeliveryState::Failed);
        assert!(given_up.error.unwrap().contains("kept failing"));
        let lease_over = sender.release(&delivery(1, now), None, now);
        assert_eq!((lease_over.state, lease_over.due_at), (DeliveryState::Pending, now));
    }

    #[tokio::test]
    async fn a_failed_request_is_described_without_its_url() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        drop(listener);
        let err = sender()
            .client
            .post(format!("http://{address}/services/T/B/SECRET-TOKEN"))
            .send()
            .await
            .unwrap_err();
        let described = describe(&err, Duration::from_secs(1));
        assert!(described.starts_with("could not connect"), "{described}");
        assert!(!described.contains("SECRET"), "{described}");
    }
}
