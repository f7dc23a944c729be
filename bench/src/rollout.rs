//! A staged rollout across a fleet: how long a policy assignment with `rollout: {batchSize: "10%"}` takes to bring a
//! new generation to every cluster in ten batches, each starting once every cluster of the one before reports
//! Compliant, from just before its PUT to the rollout's `Completed` with every cluster Compliant. Measured for the
//! first deployment (staged as a change is) and for a template change. The other scenarios time one write's way to
//! the agents; a rollout is ten such ways one after another, each waiting for a batch's reports and for the server
//! to notice them (`fleet::assignments::pace`), which is what a release manager waits for.
//!
//! The template is the assignment scenario's (it reads the cluster, so every batch is rendered per cluster). The
//! agents run in the simulator's process (see `fleet`) and report as the propagation's do. The times of the
//! rollout's transitions, and of the server recording each cluster Compliant, come from the assignment's history;
//! the agents' from their receipts. From them the benchmark also checks the rollout's promise: no batch started
//! before every cluster of the one before was recorded Compliant. It reads nothing from the server while the
//! batches move: once every agent has reported it reads the stored rollout state (one row) every 100 ms until it is
//! `Completed`, then the assignment's status once, to check that every cluster is Compliant. Polling that status
//! throughout would load the server it measures: each read assesses every selected cluster.
//!
//! The HTTP ceiling runs the same batches against pollers: per batch one PUT wakes its pollers' held polls and each
//! reports. The database ceiling writes each batch in one transaction, has its agents read their desired state and
//! report, and counts its Compliant configurations. Neither waits for anything between batches: the server's
//! pacing (its 200 ms gather, its reconciliations) is part of what the figure measures against them.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow, bail};
use axum::body::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use fluxplane_api::arm::scope::FleetScope;
use fluxplane_api::fleet::assignments::rollout::{RolloutPhase, RolloutState};
use serde_json::{Value, json};

use crate::assignment::{FLEET_API, assignment};
use crate::ceiling::{Ceiling, Db, FixedServer};
use crate::fleet::{Fleet, FleetReceipt, polls_ended};
use crate::propagation::{Apply, Exchange};
use crate::{Figure, Target, ms, percentile};

const NAME: &str = "rollout";
const ASSIGNMENT: &str = "/subscriptions/bench/providers/Fluxplane.Fleet/policyAssignments/rollout";
/// Each batch's share of the selected clusters: ten batches.
const BATCH_PERCENT: usize = 10;
/// How often the stored rollout is read once every agent has reported, waiting for its last step.
const POLL: Duration = Duration::from_millis(100);
/// How long the rollout may go without an agent receiving it, or without completing once all have, before the run
/// fails: far more than a batch takes, far less than its `batchTimeout` (10 minutes), after which it would move on
/// without its agents.
const STALL: Duration = Duration::from_secs(120);
/// The target (docs/benchmarks/targets.md).
const TARGET: Duration = Duration::from_secs(30);

/// Clusters per batch, as the server counts `BATCH_PERCENT`% of `clusters`: rounded up.
fn batch_size(clusters: usize) -> usize {
    (clusters * BATCH_PERCENT).div_ceil(100).max(1)
}

/// The assignment scenario's assignment, rolled out in batches of `BATCH_PERCENT`%. `max_failures` above zero lets
/// a rollout with simulated failures count them and go on.
fn body(branch: &str, max_failures: usize) -> Value {
    let mut body = assignment(branch);
    body["properties"]["rollout"] = json!({"batchSize": format!("{BATCH_PERCENT}%"), "maxFailures": max_failures});
    body
}

/// One rollout as the server ran it.
struct Measured {
    /// From just before the PUT to the rollout's `Completed` in its history.
    total: Duration,
    /// From just before the PUT to its answer.
    answered: Duration,
    /// From just before the PUT to the benchmark reading the rollout `Completed`.
    seen: Duration,
    /// Each batch, from its start to the next one's (the last one's: to `Completed`), sorted.
    batches: Vec<Duration>,
    /// Each batch, from its start to its last agent's receipt, sorted.
    received: Vec<Duration>,
    /// Each batch, from its start to the server recording its last cluster Compliant, sorted.
    recorded: Vec<Duration>,
    /// Each batch, from the server recording its last cluster Compliant to the next batch's start (or
    /// `Completed`), sorted.
    paced: Vec<Duration>,
    failed: usize,
    exchange: Exchange,
}

/// A transition of the rollout, from the assignment's history.
struct Transition {
    event: String,
    /// 1-based.
    batch: usize,
    batches: usize,
    time: SystemTime,
}

/// What the assignment's history holds of the rollout of one generation.
struct History {
    /// Its transitions, in time order.
    transitions: Vec<Transition>,
    /// When each cluster (by its index in the fleet) was first recorded Compliant at the generation.
    compliant: HashMap<usize, SystemTime>,
}

/// How much of the assignment's history one request asks for: a span whose entries fit in one page (a batch of
/// 1,000 clusters records about 2,000 entries in a second or two). The history's pages may skip entries: a page ends
/// at a time, but continues after the highest id it showed, and PostgreSQL stamps an entry with its transaction's
/// start, so an entry with a lower id and a later time than the page's last is never shown (the benchmark's check
/// below found 6 of 10,000 Compliant reports missing from the paged history). Windows of one page each miss none.
const WINDOW: Duration = Duration::from_secs(1);

/// The assignment's history from `since` until now, of the rollout of `generation` (the configurations'
/// generation too), read window by window.
async fn history(target: &Target, generation: i64, since: SystemTime) -> anyhow::Result<History> {
    let mut history = History {
        transitions: Vec::new(),
        compliant: HashMap::new(),
    };
    let (mut from, until) = (
        since - Duration::from_secs(1),
        SystemTime::now() + Duration::from_secs(1),
    );
    let time = |at: SystemTime| DateTime::<Utc>::from(at).to_rfc3339_opts(SecondsFormat::Micros, true);
    while from < until {
        let to = (from + WINDOW).min(until);
        let mut next = Some(format!(
            "{}{ASSIGNMENT}/history?api-version={FLEET_API}&$top=5000&from={}&to={}",
            target.server.base,
            time(from),
            time(to)
        ));
        while let Some(url) = next {
            let page: Value = serde_json::from_slice(&target.get_bytes(&url).await?)?;
            for entry in page["value"].as_array().context("a history page without entries")? {
                history.add(entry, generation)?;
            }
            next = page["nextLink"].as_str().map(str::to_owned);
        }
        from = to;
    }
    history.transitions.sort_by_key(|t| t.time);
    Ok(history)
}

impl History {
    /// Takes in an entry of the history, if it concerns `generation`.
    fn add(&mut self, entry: &Value, generation: i64) -> anyhow::Result<()> {
        if entry["generation"] != generation {
            return Ok(());
        }
        let time: SystemTime = entry["time"]
            .as_str()
            .context("a history entry without time")?
            .parse::<DateTime<Utc>>()?
            .into();
        if entry["kind"] == "rollout" {
            self.transitions.push(Transition {
                event: entry["event"].as_str().unwrap_or_default().to_owned(),
                batch: entry["batch"].as_u64().unwrap_or_default() as usize,
                batches: entry["batches"].as_u64().unwrap_or_default() as usize,
                time,
            });
        } else if entry["kind"] == "status"
            && entry["configurationName"] == "baseline"
            && entry["reportedGeneration"] == generation
            && entry["complianceState"] == "Compliant"
            && let Some(cluster) = entry["clusterId"]
                .as_str()
                .and_then(|id| id.rsplit_once("/fleet-")?.1.parse().ok())
        {
            let first = self.compliant.entry(cluster).or_insert(time);
            *first = (*first).min(time);
        }
        Ok(())
    }
}

/// The rollout state the server stores with the assignment.
async fn stored(target: &Target, key: &str) -> anyhow::Result<Option<RolloutState>> {
    let record = target
        .server
        .state
        .store
        .get_policy_assignment(key)
        .await?
        .context("the assignment is gone")?;
    Ok(record.rollout_state)
}

/// PUTs `body`, whose rollout brings `generation` of the configuration to every cluster, and times it to the end.
async fn staged(
    target: &Target,
    fleet: &mut Fleet,
    clusters: usize,
    generation: i64,
    body: &Value,
) -> anyhow::Result<(Measured, Bytes)> {
    let key = FleetScope::parse("bench", None)
        .map_err(|err| anyhow!("{err}"))?
        .key(NAME);
    let written = SystemTime::now();
    let answer = target.put(ASSIGNMENT, FLEET_API, body).await?;
    let answered = written.elapsed().unwrap_or_default();
    // every agent's receipt of the generation, as the batches brought it
    let mut receipts: Vec<FleetReceipt> = Vec::with_capacity(clusters);
    while receipts.len() < clusters {
        let Ok(receipt) = tokio::time::timeout(STALL, fleet.receipts.recv()).await else {
            bail!(
                "the rollout stalled: {} of {clusters} agents hold generation {generation}; its state: {:?}",
                receipts.len(),
                stored(target, &key).await?
            );
        };
        let receipt = receipt.context("the fleet simulator stopped")?;
        if receipt.name == "baseline" && receipt.generation == generation {
            receipts.push(receipt);
        }
    }
    // its last step: the stored state until the server has seen the last batch's reports
    let deadline = Instant::now() + STALL;
    loop {
        let state = stored(target, &key).await?;
        match &state {
            Some(s) if s.generation == generation && s.state == RolloutPhase::Completed => break,
            Some(s) if s.state.moving() && Instant::now() < deadline => {}
            _ => bail!("every agent holds generation {generation}, but the rollout is not completing: {state:?}"),
        }
        tokio::time::sleep(POLL).await;
    }
    let seen = written.elapsed().unwrap_or_default();
    // as the API answers it: Completed, every cluster Compliant but those whose apply failed
    let read: Value = serde_json::from_slice(
        &target
            .get_bytes(&format!("{}{ASSIGNMENT}?api-version={FLEET_API}", target.server.base))
            .await?,
    )?;
    let status = &read["properties"]["status"];
    let failed = receipts.iter().filter(|r| r.failed).count();
    if status["rollout"]["state"] != "Completed" || status["compliance"]["compliant"] != (clusters - failed) as u64 {
        bail!(
            "the rollout of generation {generation} completed, but its status is not every cluster Compliant \
             ({failed} failed): {status}"
        );
    }

    let History { transitions, compliant } = history(target, generation, written).await?;
    let completed = transitions
        .iter()
        .find(|t| t.event == "Completed")
        .with_context(|| format!("no Completed in the history of generation {generation}"))?;
    let batches = completed.batches;
    let mut starts: Vec<Option<SystemTime>> = vec![None; batches];
    for t in &transitions {
        let index = match t.event.as_str() {
            "Started" => 0,
            "BatchStarted" => t.batch.saturating_sub(1),
            _ => continue,
        };
        if let Some(start) = starts.get_mut(index) {
            start.get_or_insert(t.time);
        }
    }
    let starts: Vec<SystemTime> = starts.into_iter().collect::<Option<_>>().with_context(|| {
        let events: Vec<_> = transitions.iter().map(|t| format!("{} {}", t.event, t.batch)).collect();
        format!("the history of generation {generation} lacks the start of a batch: {events:?}")
    })?;
    let size = batch_size(clusters);
    if batches != clusters.div_ceil(size) {
        bail!(
            "the rollout had {batches} batches, where {clusters} clusters in batches of {size} make {}",
            clusters.div_ceil(size)
        );
    }
    // each batch's receipts: a batch starts only once the one before has reported, so in the order they came the
    // receipts fall into batches of `size`; its clusters are the fleet's in name order, `size` at a time
    receipts.sort_by_key(|r| r.received);
    let (mut lengths, mut received, mut recorded, mut paced) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (k, batch) in receipts.chunks(size).enumerate() {
        let end = starts.get(k + 1).copied().unwrap_or(completed.time);
        let last_receipt = batch.iter().map(|r| r.received).max().unwrap_or(starts[k]);
        // when the server recorded the batch's last Compliant report: the rollout may move on from then, never before
        let mut last_compliant = starts[k];
        for cluster in k * size..((k + 1) * size).min(clusters) {
            let Some(at) = compliant.get(&cluster) else {
                bail!("the history of generation {generation} does not show fleet-{cluster:05} Compliant");
            };
            last_compliant = last_compliant.max(*at);
        }
        if last_compliant > end {
            bail!(
                "batch {} of generation {generation} ended {:.0} ms before the server recorded its last cluster \
                 Compliant",
                k + 1,
                ms(last_compliant.duration_since(end).unwrap_or_default())
            );
        }
        lengths.push(end.duration_since(starts[k]).unwrap_or_default());
        received.push(last_receipt.duration_since(starts[k]).unwrap_or_default());
        recorded.push(last_compliant.duration_since(starts[k]).unwrap_or_default());
        paced.push(end.duration_since(last_compliant).unwrap_or_default());
    }
    eprintln!(
        "  batches of generation {generation} (ms: to the last receipt / the last Compliant recorded / the next \
         batch): {}",
        (0..lengths.len())
            .map(|k| format!("{:.0}/{:.0}/{:.0}", ms(received[k]), ms(recorded[k]), ms(lengths[k])))
            .collect::<Vec<_>>()
            .join(", ")
    );
    lengths.sort();
    received.sort();
    recorded.sort();
    paced.sort();
    let measured = Measured {
        total: completed.time.duration_since(written).unwrap_or_default(),
        answered,
        seen,
        batches: lengths,
        received,
        recorded,
        paced,
        failed,
        exchange: receipts[0].exchange,
    };
    Ok((measured, answer))
}

/// The HTTP ceiling of one rollout: per batch of `size`, one PUT wakes its pollers, each reports; the batches one
/// after another. Answers the total.
async fn http_rollout(
    target: &Target,
    fixed: &FixedServer,
    pollers: &mut Fleet,
    clusters: usize,
    generation: i64,
    body: &Value,
) -> anyhow::Result<Duration> {
    let size = batch_size(clusters);
    let mut total = Duration::ZERO;
    for first in (0..clusters).step_by(size) {
        let members = first..(first + size).min(clusters);
        let written = SystemTime::now();
        target.put_url(&fixed.write_range_url(members.clone()), body).await?;
        let (mut reported, mut last) = (0, written);
        while reported < members.len() {
            let receipt = tokio::time::timeout(Duration::from_secs(60), pollers.receipts.recv())
                .await
                .with_context(|| format!("{reported} of the pollers {members:?} reported generation {generation}"))?
                .context("the ceiling's pollers stopped")?;
            if receipt.generation == generation {
                reported += 1;
                last = last.max(receipt.reported);
            }
        }
        total += last.duration_since(written).unwrap_or_default();
    }
    Ok(total)
}

/// `clusters` clusters, each with an agent, and one assignment that selects them all, rolled out in ten batches.
pub async fn rollout(
    target: &Target,
    clusters: usize,
    apply: Apply,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut fleet = Fleet::spawn(target, clusters, &[("fleet", "bench")], apply).await?;
    let notifier = &target.server.state.notifier;
    fleet
        .settled(|| notifier.waiting_clusters(), clusters, Duration::from_secs(600))
        .await?;
    eprintln!(
        "  {clusters} clusters, each with an agent polling, after {:.1} s",
        started.elapsed().as_secs_f64()
    );
    // with simulated failures the rollout counts them and goes on, so that it still reaches every batch
    let max_failures = if apply.failure_rate > 0.0 { clusters } else { 0 };
    let steps = [(1, "first deployment", "main"), (2, "template change", "release")];
    let mut measured = Vec::with_capacity(steps.len());
    let mut answer = Bytes::new();
    for (generation, step, branch) in steps {
        // from a quiet fleet, as an operator's next change comes
        fleet
            .settled(|| notifier.waiting_clusters(), clusters, Duration::from_secs(60))
            .await?;
        let (rollout, put_answer) =
            staged(target, &mut fleet, clusters, generation, &body(branch, max_failures)).await?;
        eprintln!(
            "  {step}: {} batches Completed after {:.1} s",
            rollout.batches.len(),
            rollout.total.as_secs_f64()
        );
        measured.push(rollout);
        answer = put_answer;
    }
    fleet.stop().await?;

    // the HTTP ceiling: as many pollers, each batch's woken by one PUT
    polls_ended(target).await;
    let exchange = measured[0].exchange;
    let fixed = FixedServer::start(Vec::new(), clusters, exchange, answer).await?;
    let mut pollers = Fleet::spawn_ceiling(&fixed, clusters, exchange, apply).await?;
    let mut http = Vec::with_capacity(steps.len());
    for (generation, _, branch) in steps {
        pollers
            .settled(|| fixed.waiting(), clusters, Duration::from_secs(600))
            .await?;
        http.push(
            http_rollout(
                target,
                &fixed,
                &mut pollers,
                clusters,
                generation,
                &body(branch, max_failures),
            )
            .await?,
        );
    }
    pollers.stop().await?;
    fixed.stop().await;
    let pool = Db::open(target).await?;
    let db = pool.rollout(clusters, batch_size(clusters)).await?;
    pool.close().await;

    // the target is for instant, successful applies: a delay or failures measure the agents too
    let has_target = apply.delay.is_zero() && apply.failure_rate == 0.0;
    for ((((_, step, _), rollout), http), db) in steps.into_iter().zip(measured).zip(http).zip(db) {
        let total = ms(rollout.total);
        figures.push(Figure {
            backend,
            scenario: format!(
                "rollout {step}, {clusters} clusters in {} batches, {}",
                rollout.batches.len(),
                apply.describe()
            ),
            value: total,
            unit: "ms",
            target: has_target.then(|| format!("< {} ms", TARGET.as_millis())),
            met: has_target.then_some(rollout.total < TARGET),
            detail: format!(
                "from the PUT to Completed, every cluster Compliant ({} failed); batches of {}: median {:.0} ms, \
                 slowest {:.0} ms; per batch (medians), its last agent held it after {:.0} ms, the server recorded its \
                 last cluster Compliant after {:.0} ms, the next batch started {:.0} ms after that; the PUT answered after {:.0} \
                 ms, Completed read {:.0} ms after it was",
                rollout.failed,
                batch_size(clusters),
                ms(percentile(&rollout.batches, 0.5)),
                ms(rollout.batches[rollout.batches.len() - 1]),
                ms(percentile(&rollout.received, 0.5)),
                ms(percentile(&rollout.recorded, 0.5)),
                ms(percentile(&rollout.paced, 0.5)),
                ms(rollout.answered),
                ms(rollout.seen.saturating_sub(rollout.total)),
            ),
            http_ceiling: Some(Ceiling::time(
                total,
                ms(http),
                "per batch, one PUT wakes its pollers' held polls at once and each reports; batches one after \
                 another, bodies of the same sizes",
            )),
            db_ceiling: Some(Ceiling::time(
                total,
                ms(db),
                "per batch: its configurations inserted (first deployment) or rewritten (change) in one \
                 transaction, each of its agents at once reads its desired state and reports (a transaction each), \
                 one count of its Compliant configurations; batches one after another, scratch table",
            )),
        });
    }
    Ok(())
}
