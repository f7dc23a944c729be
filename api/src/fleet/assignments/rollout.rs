//! Rollouts: how a new generation of a policy assignment reaches its clusters when the assignment has `rollout`.
//! This file holds a rollout's whole vocabulary, as Flux's controllers keep a resource's states in one place: the
//! settings users write, the state stored with the assignment, the order of its batches (rings by a tag, then
//! names), how a batch moves on (compliance, soak time, timeout, failures), pause and resume, halts (its own and a
//! circuit breaker's), the automatic rollback to the last template that was Compliant everywhere, and the events
//! each transition leaves in the assignment's history. Every function here is pure; the store applies them inside
//! the assignment's reconciliation (`store::fleet`).

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::Problems;

/// Most ring values one rollout may order.
pub const MAX_RINGS: usize = 32;

/// How a new generation reaches the clusters: in batches, each waiting for the one before. The first deployment
/// of a new assignment is staged the same way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rollout {
    /// Clusters per batch: a count (`2`) or a percentage of the selected clusters (`"25%"`).
    #[schema(schema_with = batch_size_schema)]
    pub batch_size: Value,
    /// Wait for a batch to be Compliant before the next (default true); otherwise one batch per reconciliation.
    #[serde(default = "yes")]
    pub wait_for_compliance: bool,
    /// How many clusters may fail (non-compliant or failed at the new generation) before the rollout halts.
    #[serde(default)]
    pub max_failures: u32,
    /// How long a batch may take to turn Compliant before the next one starts anyway (ISO 8601, default PT10M).
    #[serde(default = "ten_minutes")]
    pub batch_timeout: String,
    /// Roll out ring by ring: clusters ordered by the value of a tag, in the order given, then by name. A batch
    /// never spans two rings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rings: Option<Rings>,
    /// How long a batch stays Compliant before the next one starts (ISO 8601, default PT0S: at once). A cluster
    /// that stops being Compliant meanwhile starts the soak again once it is back; one that fails counts as a
    /// failure. Needs `waitForCompliance`.
    #[serde(default = "no_time")]
    pub soak_time: String,
    /// When the rollout halts, move the clusters it already reached back to the last template that was Compliant
    /// on every cluster it was applied to (default false: they keep the new one).
    #[serde(default)]
    pub auto_rollback: bool,
}

/// The rings of a rollout: clusters whose tag `tag` has the first value of `order` go first, then those with the
/// second, and so on; clusters without the tag, or with a value not listed, go last.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rings {
    /// The tag whose value names a cluster's ring, e.g. `ring`.
    pub tag: String,
    /// The ring values in rollout order, e.g. `["canary", "early", "broad"]`.
    pub order: Vec<String>,
}

fn yes() -> bool {
    true
}

fn ten_minutes() -> String {
    "PT10M".to_owned()
}

fn no_time() -> String {
    "PT0S".to_owned()
}

fn duration(text: &str) -> Option<chrono::Duration> {
    let parsed = iso8601::duration(text).ok()?;
    chrono::Duration::from_std(parsed.into()).ok()
}

impl Rollout {
    /// Records the problems of the rollout settings.
    pub fn validate(&self, p: &mut Problems) {
        if self.batch_count(100).is_none() {
            p.add(
                "properties.rollout.batchSize",
                "a whole number of clusters of at least 1, or a percentage such as \"25%\"",
            );
        }
        if self.timeout().is_none() {
            p.add("properties.rollout.batchTimeout", "an ISO 8601 duration such as PT10M");
        }
        match self.soak() {
            None => p.add("properties.rollout.soakTime", "an ISO 8601 duration such as PT30M"),
            Some(soak) if soak > chrono::Duration::zero() && !self.wait_for_compliance => p.add(
                "properties.rollout.soakTime",
                "a soak time needs waitForCompliance: a batch soaks once it is Compliant",
            ),
            Some(_) => {}
        }
        if let Some(rings) = &self.rings {
            if rings.tag.trim().is_empty() || rings.tag.len() > 512 {
                p.add(
                    "properties.rollout.rings.tag",
                    "the name of a tag (1 to 512 characters)",
                );
            }
            if rings.order.is_empty() || rings.order.len() > MAX_RINGS {
                p.add(
                    "properties.rollout.rings.order",
                    format!("from 1 to {MAX_RINGS} tag values, in rollout order"),
                );
            }
            let mut seen = HashSet::new();
            for (i, value) in rings.order.iter().enumerate() {
                if value.len() > 256 {
                    p.add(format!("properties.rollout.rings.order[{i}]"), "at most 256 characters");
                } else if !seen.insert(value.as_str()) {
                    p.add(
                        format!("properties.rollout.rings.order[{i}]"),
                        format!("'{value}' is listed twice"),
                    );
                }
            }
        }
    }

    /// The batch size for `selected` clusters (at least 1).
    pub fn batch_count(&self, selected: usize) -> Option<usize> {
        match &self.batch_size {
            Value::Number(n) => n.as_u64().filter(|n| *n >= 1).map(|n| n as usize),
            Value::String(text) => {
                let percent: u64 = text.strip_suffix('%')?.parse().ok().filter(|p| (1..=100).contains(p))?;
                Some(((selected as u64 * percent).div_ceil(100)).max(1) as usize)
            }
            _ => None,
        }
    }

    pub fn timeout(&self) -> Option<chrono::Duration> {
        duration(&self.batch_timeout)
    }

    pub fn soak(&self) -> Option<chrono::Duration> {
        duration(&self.soak_time)
    }
}

/// `batchSize` in the OpenAPI document: a count of at least 1, or a percentage from `"1%"` to `"100%"`.
fn batch_size_schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
    let one_of = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1)))
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[0-9]{1,3}%$")),
        )
        .description(Some(
            "Clusters per batch: a count (`2`) or a percentage of the selected clusters (`\"25%\"`).",
        ));
    Schema::OneOf(one_of.build()).into()
}

/// Where a rollout stands: stored with the assignment, shown in its status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutState {
    /// The assignment generation being rolled out.
    pub generation: i64,
    pub state: RolloutPhase,
    /// The batch now updating (0-based); batches before it are done.
    pub batch: usize,
    pub batch_started_at: DateTime<Utc>,
    /// Clusters non-compliant or failed at the new generation so far.
    pub failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How many batches the rollout has (as the selection stood when it last moved).
    #[serde(default)]
    pub batches: usize,
    /// The ring of the batch now updating, when the rollout has rings (empty: clusters in no listed ring).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ring: Option<String>,
    /// Since when the batch now updating has been Compliant (`Soaking`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub soaking_since: Option<DateTime<Utc>>,
    /// `RolledBack`: the generation whose template the clusters the rollout reached went back to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_back_to: Option<i64>,
}

/// The phases of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum RolloutPhase {
    /// A batch is updating.
    Progressing,
    /// The batch is Compliant and waits out the soak time before the next starts.
    Soaking,
    /// Paused by a user (`pauseRollout`): no batch starts until `resumeRollout`.
    Paused,
    /// Every batch is done.
    Completed,
    /// Too many clusters failed, or a circuit breaker tripped: no batch starts; the clusters reached keep the new
    /// generation until a corrected template is written.
    Halted,
    /// Halted, and the clusters it reached went back to the last template that was Compliant everywhere
    /// (`rolledBackTo`); a new template starts a new rollout.
    RolledBack,
}

impl RolloutPhase {
    /// A batch is updating or soaking: the rollout moves on by itself.
    pub fn moving(self) -> bool {
        matches!(self, Self::Progressing | Self::Soaking)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progressing => "Progressing",
            Self::Soaking => "Soaking",
            Self::Paused => "Paused",
            Self::Completed => "Completed",
            Self::Halted => "Halted",
            Self::RolledBack => "RolledBack",
        }
    }
}

/// The state of a rollout of `generation` starting now, from its first batch.
pub fn start(generation: i64, now: DateTime<Utc>) -> RolloutState {
    RolloutState {
        generation,
        state: RolloutPhase::Progressing,
        batch: 0,
        batch_started_at: now,
        failures: 0,
        message: None,
        batches: 0,
        ring: None,
        soaking_since: None,
        rolled_back_to: None,
    }
}

/// A selected cluster, as the order of batches needs it.
#[derive(Debug, Clone, Copy)]
pub struct Candidate<'a> {
    pub id: i64,
    pub name: &'a str,
    pub tags: &'a BTreeMap<String, String>,
}

/// One batch: its ring (with rings: the value, or `""` for clusters in no listed ring) and its clusters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub ring: Option<String>,
    pub clusters: Vec<i64>,
}

/// The batches of a rollout over `candidates`: ordered by ring, then by cluster name (case aside, then id), each of
/// `batchSize` clusters (a percentage of all candidates) and never spanning two rings.
pub fn batches(rollout: &Rollout, candidates: &[Candidate<'_>]) -> Vec<Batch> {
    let size = rollout.batch_count(candidates.len()).unwrap_or(1).max(1);
    let rank = |c: &Candidate<'_>| -> usize {
        rollout
            .rings
            .as_ref()
            .map(|rings| {
                c.tags
                    .get(&rings.tag)
                    .and_then(|value| rings.order.iter().position(|r| r == value))
                    .unwrap_or(rings.order.len())
            })
            .unwrap_or(0)
    };
    let mut ordered: Vec<(usize, String, i64)> = candidates
        .iter()
        .map(|c| (rank(c), c.name.to_lowercase(), c.id))
        .collect();
    ordered.sort();
    let ring_name = |rank: usize| -> Option<String> {
        let rings = rollout.rings.as_ref()?;
        Some(rings.order.get(rank).cloned().unwrap_or_default())
    };
    let mut batches = Vec::new();
    for ring in ordered.chunk_by(|a, b| a.0 == b.0) {
        for chunk in ring.chunks(size) {
            batches.push(Batch {
                ring: ring_name(chunk[0].0),
                clusters: chunk.iter().map(|(_, _, id)| *id).collect(),
            });
        }
    }
    batches
}

/// What the rollout needs to know of a selected cluster's configuration.
#[derive(Debug, Clone, Copy)]
pub struct BatchMember {
    /// It holds the generation being rolled out and its agent reported on it.
    pub reported: bool,
    pub compliant: bool,
    pub failed: bool,
}

/// What a rollout knows of its clusters: each one's configuration, and whether the template can be rendered for
/// it at all (a cluster it cannot be rendered for never gets the generation, so it does not hold its batch up).
pub trait Members {
    fn member(&self, cluster: i64) -> Option<BatchMember>;

    /// Asked only of clusters whose agent has not reported on the generation.
    fn resolvable(&self, _cluster: i64) -> bool {
        true
    }
}

impl Members for HashMap<i64, BatchMember> {
    fn member(&self, cluster: i64) -> Option<BatchMember> {
        self.get(&cluster).copied()
    }
}

/// Advances a moving rollout. The current batch is done when all of it is Compliant at the new generation (and
/// has stayed so for the soak time), when each of its clusters is Compliant or failed (failures counted), or when
/// its time is up;
/// without `waitForCompliance` one batch goes per call. Past `maxFailures` the rollout halts; past the last batch
/// it completes. Any other phase is answered as it is.
pub fn advance(
    rollout: &Rollout,
    state: &RolloutState,
    batches: &[Batch],
    members: &dyn Members,
    now: DateTime<Utc>,
) -> RolloutState {
    let mut next = state.clone();
    if !next.state.moving() {
        return next;
    }
    next.batches = batches.len();
    let timeout = rollout.timeout().unwrap_or(chrono::Duration::minutes(10));
    let soak = rollout.soak().unwrap_or_else(chrono::Duration::zero);
    loop {
        let Some(batch) = batches.get(next.batch) else {
            next.state = RolloutPhase::Completed;
            next.soaking_since = None;
            next.ring = None;
            return next;
        };
        next.ring = batch.ring.clone();
        let member = |c: &i64| members.member(*c);
        // a cluster the template cannot be rendered for is left out: it gets nothing, its compliance says why
        let counted: Vec<i64> = batch
            .clusters
            .iter()
            .copied()
            .filter(|c| member(c).is_some_and(|m| m.reported) || members.resolvable(*c))
            .collect();
        let compliant = counted
            .iter()
            .all(|c| member(c).is_some_and(|m| m.reported && m.compliant));
        if rollout.wait_for_compliance {
            if compliant {
                if soak > chrono::Duration::zero() {
                    let since = *next.soaking_since.get_or_insert(now);
                    next.state = RolloutPhase::Soaking;
                    if now - since < soak {
                        return next;
                    }
                }
            } else {
                next.soaking_since = None;
                next.state = RolloutPhase::Progressing;
                // every cluster's agent has a verdict on the generation: Compliant, or failed (counted below)
                let settled = counted
                    .iter()
                    .all(|c| member(c).is_some_and(|m| m.reported && (m.compliant || m.failed)));
                let timed_out = now - next.batch_started_at >= timeout;
                if !(settled || timed_out) {
                    return next;
                }
            }
        }
        next.failures += batch
            .clusters
            .iter()
            .filter(|c| member(c).is_some_and(|m| m.failed))
            .count() as u32;
        next.soaking_since = None;
        if next.failures > rollout.max_failures {
            next.state = RolloutPhase::Halted;
            next.message = Some(format!(
                "halted after batch {} of {}: {} clusters failed at generation {}, more than maxFailures {}",
                next.batch + 1,
                batches.len(),
                next.failures,
                next.generation,
                rollout.max_failures
            ));
            return next;
        }
        next.state = RolloutPhase::Progressing;
        next.batch += 1;
        next.batch_started_at = now;
        if !rollout.wait_for_compliance {
            if next.batch >= batches.len() {
                next.state = RolloutPhase::Completed;
                next.ring = None;
            } else {
                next.ring = batches[next.batch].ring.clone();
            }
            return next;
        }
    }
}

/// The halted rollout's next state when `autoRollback` takes it back to `last_compliant` (the last generation
/// whose template was Compliant on every cluster it was applied to), if there is one before the halted one; a
/// halted rollout with nothing to go back to says so and stays halted.
pub fn roll_back(rollout: &Rollout, state: &RolloutState, last_compliant: Option<i64>) -> Option<RolloutState> {
    if !rollout.auto_rollback || state.state != RolloutPhase::Halted {
        return None;
    }
    let halted = state.message.clone().unwrap_or_else(|| "halted".to_owned());
    match last_compliant.filter(|g| *g < state.generation) {
        Some(generation) => Some(RolloutState {
            state: RolloutPhase::RolledBack,
            rolled_back_to: Some(generation),
            message: Some(format!(
                "{halted}; rolled back: the clusters it reached went back to generation {generation}, the last \
                 template that was Compliant everywhere"
            )),
            ..state.clone()
        }),
        None if !halted.contains("nothing to roll back to") => Some(RolloutState {
            message: Some(format!(
                "{halted}; nothing to roll back to: no earlier template was Compliant everywhere"
            )),
            ..state.clone()
        }),
        None => None,
    }
}

/// The state a halt writes for `generation` (a circuit breaker's trip, `fleet::breaker`), or `None` when it is
/// halted or rolled back already. A rollout under way halts where it is (the batches it reached keep the
/// generation, the others keep what they had); an assignment at rest halts with every batch reached, so that its
/// status says why and a corrected template is what goes on, as after any halt.
pub fn halt(
    current: Option<&RolloutState>,
    generation: i64,
    batches: usize,
    message: String,
    now: DateTime<Utc>,
) -> Option<RolloutState> {
    match current.filter(|s| s.generation == generation) {
        Some(s) if matches!(s.state, RolloutPhase::Halted | RolloutPhase::RolledBack) => None,
        Some(s) if s.state.moving() || s.state == RolloutPhase::Paused => Some(RolloutState {
            state: RolloutPhase::Halted,
            soaking_since: None,
            message: Some(message),
            ..s.clone()
        }),
        other => Some(RolloutState {
            state: RolloutPhase::Halted,
            batch: batches,
            batches,
            batch_started_at: now,
            failures: other.map_or(0, |s| s.failures),
            message: Some(message),
            ..start(generation, now)
        }),
    }
}

/// What a user asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steer {
    Pause,
    Resume,
}

/// Why a pause or a resume was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

/// Pauses the rollout of `generation` (`by` whom): no batch starts until it is resumed (those started keep going).
/// `None`: paused already.
pub fn pause(state: Option<&RolloutState>, generation: i64, by: &str) -> Result<Option<RolloutState>, Refused> {
    match state.filter(|s| s.generation == generation) {
        Some(s) if s.state == RolloutPhase::Paused => Ok(None),
        Some(s) if s.state.moving() => Ok(Some(RolloutState {
            state: RolloutPhase::Paused,
            soaking_since: None,
            message: Some(format!("paused by {by}")),
            ..s.clone()
        })),
        other => Err(Refused(format!(
            "no rollout of generation {generation} is in progress{}: there is nothing to pause",
            other
                .map(|s| format!(" (it is {})", s.state.as_str()))
                .unwrap_or_default()
        ))),
    }
}

/// Resumes a paused rollout: its batch gets a full `batchTimeout` again, and soaks again once Compliant. `None`:
/// it is moving already.
pub fn resume(
    state: Option<&RolloutState>,
    generation: i64,
    by: &str,
    now: DateTime<Utc>,
) -> Result<Option<RolloutState>, Refused> {
    match state.filter(|s| s.generation == generation) {
        Some(s) if s.state.moving() => Ok(None),
        Some(s) if s.state == RolloutPhase::Paused => Ok(Some(RolloutState {
            state: RolloutPhase::Progressing,
            batch_started_at: now,
            message: Some(format!("resumed by {by}")),
            ..s.clone()
        })),
        other => Err(Refused(format!(
            "no rollout of generation {generation} is paused{}: there is nothing to resume",
            other
                .map(|s| format!(" (it is {})", s.state.as_str()))
                .unwrap_or_default()
        ))),
    }
}

/// Which clusters a reconciliation may write, as the rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// No rollout under way: every cluster gets the assignment's generation.
    All,
    /// The clusters of the batches reached so far get the generation; the others keep what they have.
    Only(HashSet<i64>),
    /// Nothing now: a single cluster's reconciliation (a tag change) during a rollout leaves the cluster to the
    /// rollout's next step, which knows its batch.
    Deferred,
    /// Rolled back: the target is the last Compliant generation; the clusters holding the rolled-back generation
    /// go back to it, new clusters get it, the others keep what they have.
    RolledBack { to: i64 },
}

/// What a reconciliation does with a rollout: its next state (when it changed, for the store to write) and which
/// clusters it may write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gate {
    pub next: Option<RolloutState>,
    pub reach: Reach,
}

/// Moves the assignment's rollout on (all of it: `candidates` are every selected cluster; `None` for a single
/// cluster's reconciliation, which moves nothing) and says which clusters the reconciliation may write.
/// `last_compliant`: the last generation whose template was Compliant everywhere it was applied.
pub fn gate(
    rollout: Option<&Rollout>,
    state: Option<&RolloutState>,
    generation: i64,
    candidates: Option<&[Candidate<'_>]>,
    members: &dyn Members,
    last_compliant: Option<i64>,
    now: DateTime<Utc>,
) -> Gate {
    let current = state.filter(|s| s.generation == generation && s.state != RolloutPhase::Completed);
    let (Some(rollout), Some(current)) = (rollout, current) else {
        return Gate {
            next: None,
            reach: Reach::All,
        };
    };
    if let Some(to) = current
        .rolled_back_to
        .filter(|_| current.state == RolloutPhase::RolledBack)
    {
        return Gate {
            next: None,
            reach: Reach::RolledBack { to },
        };
    }
    let Some(candidates) = candidates else {
        return Gate {
            next: None,
            reach: Reach::Deferred,
        };
    };
    let batches = batches(rollout, candidates);
    let mut next = advance(rollout, current, &batches, members, now);
    if let Some(rolled_back) = roll_back(rollout, &next, last_compliant) {
        next = rolled_back;
    }
    let reach = match (next.state, next.rolled_back_to) {
        (RolloutPhase::Completed, _) => Reach::All,
        (RolloutPhase::RolledBack, Some(to)) => Reach::RolledBack { to },
        _ => Reach::Only(
            batches
                .iter()
                .take(next.batch.saturating_add(1))
                .flat_map(|b| b.clusters.iter().copied())
                .collect(),
        ),
    };
    Gate {
        next: (next != *current).then_some(next),
        reach,
    }
}

/// Whether a generation's template is Compliant everywhere it was applied: given each managed configuration of
/// the selected clusters (whether it holds the generation, and how its agent last reported), none is left
/// behind and every one is reported Compliant; and at least one cluster holds it.
pub fn compliant_everywhere(members: impl IntoIterator<Item = (bool, BatchMember)>) -> bool {
    let mut any = false;
    for (holds, m) in members {
        if !(holds && m.reported && m.compliant) {
            return false;
        }
        any = true;
    }
    any
}

/// What a rollout's transition records in the assignment's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutEvent {
    /// Started, Superseded, BatchStarted, Soaking, Paused, Resumed, Halted, RolledBack or Completed.
    pub event: &'static str,
    pub generation: i64,
    /// The batch it concerns (0-based).
    pub batch: usize,
    pub batches: usize,
    pub message: String,
}

/// The events of the transition from `previous` to `next` (the same rollout, or a new generation's).
pub fn events(previous: Option<&RolloutState>, next: &RolloutState) -> Vec<RolloutEvent> {
    let event = |event: &'static str, s: &RolloutState, message: String| RolloutEvent {
        event,
        generation: s.generation,
        batch: s.batch,
        batches: s.batches,
        message,
    };
    let batch_of = |s: &RolloutState| match (&s.ring, s.batches) {
        (Some(ring), 0) => format!("batch {} (ring '{ring}')", s.batch + 1),
        (Some(ring), n) => format!("batch {} of {n} (ring '{ring}')", s.batch + 1),
        (None, 0) => format!("batch {}", s.batch + 1),
        (None, n) => format!("batch {} of {n}", s.batch + 1),
    };
    let mut out = Vec::new();
    let previous = match previous {
        Some(p) if p.generation == next.generation => p.clone(),
        other => {
            if let Some(p) = other.filter(|p| p.state.moving() || p.state == RolloutPhase::Paused) {
                out.push(event(
                    "Superseded",
                    p,
                    format!("generation {} replaced it at {}", next.generation, batch_of(p)),
                ));
            }
            let started = start(next.generation, next.batch_started_at);
            if next.state != RolloutPhase::Halted {
                // a breaker's halt of an assignment at rest starts nothing
                out.push(event(
                    "Started",
                    next,
                    format!("rolling out generation {}", next.generation),
                ));
            }
            started
        }
    };
    if next.batch > previous.batch && next.state.moving() {
        out.push(event("BatchStarted", next, format!("{} started", batch_of(next))));
    }
    if next.state == previous.state {
        return out;
    }
    let message = next.message.clone().unwrap_or_default();
    match next.state {
        RolloutPhase::Soaking => out.push(event(
            "Soaking",
            next,
            format!("{} is Compliant: soaking before the next batch", batch_of(next)),
        )),
        RolloutPhase::Paused => out.push(event("Paused", next, format!("{message} at {}", batch_of(next)))),
        RolloutPhase::Progressing if previous.state == RolloutPhase::Paused => {
            out.push(event("Resumed", next, format!("{message} at {}", batch_of(next))))
        }
        RolloutPhase::Progressing => {}
        RolloutPhase::Halted => out.push(event("Halted", next, message)),
        RolloutPhase::RolledBack => out.push(event("RolledBack", next, message)),
        RolloutPhase::Completed => out.push(event(
            "Completed",
            next,
            format!(
                "generation {} reached every batch ({} failed)",
                next.generation, next.failures
            ),
        )),
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rollout(settings: Value) -> Rollout {
        let mut base = json!({"batchSize": 2, "maxFailures": 0, "batchTimeout": "PT1M"});
        json_patch::merge(&mut base, &settings);
        serde_json::from_value(base).unwrap()
    }

    fn started(now: DateTime<Utc>) -> RolloutState {
        start(2, now)
    }

    fn member(reported: bool, compliant: bool, failed: bool) -> BatchMember {
        BatchMember {
            reported,
            compliant,
            failed,
        }
    }

    fn plain(clusters: &[&[i64]]) -> Vec<Batch> {
        clusters
            .iter()
            .map(|c| Batch {
                ring: None,
                clusters: c.to_vec(),
            })
            .collect()
    }

    struct Fleet {
        names: Vec<String>,
        tags: Vec<BTreeMap<String, String>>,
    }

    impl Fleet {
        fn new(clusters: &[(&str, Option<&str>)]) -> Self {
            Self {
                names: clusters.iter().map(|(n, _)| (*n).to_owned()).collect(),
                tags: clusters
                    .iter()
                    .map(|(_, ring)| ring.map(|r| ("ring".to_owned(), r.to_owned())).into_iter().collect())
                    .collect(),
            }
        }

        fn candidates(&self) -> Vec<Candidate<'_>> {
            (0..self.names.len())
                .map(|i| Candidate {
                    id: i as i64 + 1,
                    name: &self.names[i],
                    tags: &self.tags[i],
                })
                .collect()
        }
    }

    #[test]
    fn batches_go_ring_by_ring_then_by_name_and_never_span_two_rings() {
        let fleet = Fleet::new(&[
            ("zeta", Some("canary")),
            ("alpha", Some("broad")),
            ("Beta", Some("broad")),
            ("gamma", None),
            ("delta", Some("early")),
            ("eps", Some("other")),
            ("carol", Some("broad")),
        ]);
        let r = rollout(json!({"rings": {"tag": "ring", "order": ["canary", "early", "broad"]}}));
        let got: Vec<(Option<String>, Vec<i64>)> = batches(&r, &fleet.candidates())
            .into_iter()
            .map(|b| (b.ring, b.clusters))
            .collect();
        let ring = |r: &str| Some(r.to_owned());
        assert_eq!(
            got,
            vec![
                (ring("canary"), vec![1]),
                (ring("early"), vec![5]),
                (ring("broad"), vec![2, 3]),
                (ring("broad"), vec![7]),
                (ring(""), vec![6, 4]),
            ],
            "canary alone although batches hold 2; names within a ring, case aside; unlisted rings last"
        );
        let without = batches(&rollout(json!({})), &fleet.candidates());
        assert_eq!(without[0].clusters, vec![2, 3], "without rings: by name");
        assert_eq!(without.len(), 4);
    }

    #[test]
    fn batch_sizes_are_counts_or_percentages_of_the_selection() {
        assert_eq!(rollout(json!({"batchSize": 3})).batch_count(10), Some(3));
        assert_eq!(rollout(json!({"batchSize": "25%"})).batch_count(10), Some(3));
        assert_eq!(rollout(json!({"batchSize": "1%"})).batch_count(10), Some(1));
        for bad in [json!(0), json!("0%"), json!("101%"), json!("half"), json!(true)] {
            let mut p = Problems::default();
            rollout(json!({ "batchSize": bad.clone() })).validate(&mut p);
            assert!(p.into_result("x", None).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_rings_and_soak_times_are_named() {
        for (settings, place) in [
            (json!({"soakTime": "soon"}), "properties.rollout.soakTime"),
            (
                json!({"soakTime": "PT5M", "waitForCompliance": false}),
                "properties.rollout.soakTime",
            ),
            (
                json!({"rings": {"tag": "", "order": ["a"]}}),
                "properties.rollout.rings.tag",
            ),
            (
                json!({"rings": {"tag": "ring", "order": []}}),
                "properties.rollout.rings.order",
            ),
            (
                json!({"rings": {"tag": "ring", "order": ["a", "b", "a"]}}),
                "properties.rollout.rings.order[2]",
            ),
        ] {
            let mut p = Problems::default();
            rollout(settings.clone()).validate(&mut p);
            let err = p.into_result("x", None).unwrap_err();
            assert!(format!("{err:?}").contains(place), "{settings}: {err:?}");
        }
        let mut p = Problems::default();
        rollout(json!({"soakTime": "PT0S", "waitForCompliance": false})).validate(&mut p);
        assert!(p.into_result("x", None).is_ok(), "no soak without waiting is fine");
    }

    #[test]
    fn a_rollout_moves_on_when_its_batch_is_compliant_and_halts_past_max_failures() {
        let now = Utc::now();
        let batches = plain(&[&[1, 2], &[3, 4], &[5]]);
        let r = rollout(json!({"maxFailures": 1}));
        let mut members = HashMap::new();
        members.insert(1, member(true, true, false));
        members.insert(2, member(false, false, false));
        assert_eq!(
            advance(&r, &started(now), &batches, &members, now).batch,
            0,
            "2 has not reported"
        );
        members.insert(2, member(true, false, false));
        assert_eq!(
            advance(&r, &started(now), &batches, &members, now).batch,
            0,
            "2 reported, but neither Compliant nor failed yet (Flux still reconciling)"
        );
        members.insert(2, member(true, true, false));
        let second = advance(&r, &started(now), &batches, &members, now);
        assert_eq!(
            (second.batch, second.state, second.batches),
            (1, RolloutPhase::Progressing, 3)
        );
        // one failure is allowed, the second halts it
        members.insert(3, member(true, false, true));
        members.insert(4, member(true, true, false));
        let third = advance(&r, &second, &batches, &members, now);
        assert_eq!((third.batch, third.failures), (2, 1));
        members.insert(5, member(true, false, true));
        let halted = advance(&r, &third, &batches, &members, now);
        assert_eq!(halted.state, RolloutPhase::Halted);
        assert!(halted.message.unwrap().contains("2 clusters failed"));
        members.insert(5, member(true, true, false));
        assert_eq!(
            advance(&r, &third, &batches, &members, now).state,
            RolloutPhase::Completed
        );
    }

    #[test]
    fn a_compliant_batch_soaks_before_the_next_and_soaks_again_after_a_relapse() {
        let now = Utc::now();
        let batches = plain(&[&[1], &[2]]);
        let r = rollout(json!({"soakTime": "PT10M", "batchTimeout": "PT1H"}));
        let mut members = HashMap::new();
        members.insert(1, member(true, true, false));
        let soaking = advance(&r, &started(now), &batches, &members, now);
        assert_eq!(
            (soaking.state, soaking.batch, soaking.soaking_since),
            (RolloutPhase::Soaking, 0, Some(now))
        );
        let later = now + chrono::Duration::minutes(5);
        assert_eq!(
            advance(&r, &soaking, &batches, &members, later),
            soaking,
            "half-way: nothing moves"
        );
        members.insert(1, member(true, false, false));
        let relapsed = advance(&r, &soaking, &batches, &members, later);
        assert_eq!(
            (relapsed.state, relapsed.soaking_since),
            (RolloutPhase::Progressing, None)
        );
        members.insert(1, member(true, true, false));
        let again = advance(&r, &relapsed, &batches, &members, later);
        assert_eq!(again.soaking_since, Some(later), "the soak starts again");
        let done = advance(&r, &again, &batches, &members, later + chrono::Duration::minutes(10));
        assert_eq!((done.state, done.batch), (RolloutPhase::Progressing, 1));
    }

    struct Unrenderable(HashMap<i64, BatchMember>, i64);

    impl Members for Unrenderable {
        fn member(&self, cluster: i64) -> Option<BatchMember> {
            self.0.get(&cluster).copied()
        }

        fn resolvable(&self, cluster: i64) -> bool {
            cluster != self.1
        }
    }

    #[test]
    fn a_cluster_the_template_cannot_be_rendered_for_does_not_hold_its_batch() {
        let now = Utc::now();
        let batches = plain(&[&[1, 2], &[3]]);
        let r = rollout(json!({}));
        let members = HashMap::from([(1, member(true, true, false))]);
        assert_eq!(
            advance(&r, &started(now), &batches, &members, now).batch,
            0,
            "2 pending"
        );
        let two_unrenderable = Unrenderable(members.clone(), 2);
        assert_eq!(
            advance(&r, &started(now), &batches, &two_unrenderable, now).batch,
            1,
            "2 gets nothing: the batch is done without it"
        );
        let one_unrenderable = Unrenderable(members, 1);
        assert_eq!(
            advance(&r, &started(now), &batches, &one_unrenderable, now).batch,
            0,
            "a cluster that reported counts, whatever its tags say now"
        );
    }

    #[test]
    fn a_slow_batch_is_passed_after_its_timeout_and_without_waiting_batches_go_one_per_step() {
        let now = Utc::now();
        let batches = plain(&[&[1], &[2]]);
        let members = HashMap::new();
        let waiting = rollout(json!({"batchSize": 1}));
        assert_eq!(advance(&waiting, &started(now), &batches, &members, now).batch, 0);
        let later = now + chrono::Duration::minutes(2);
        assert_eq!(advance(&waiting, &started(now), &batches, &members, later).batch, 1);
        let eager = rollout(json!({"batchSize": 1, "waitForCompliance": false}));
        let first = advance(&eager, &started(now), &batches, &members, now);
        assert_eq!((first.batch, first.state), (1, RolloutPhase::Progressing));
        assert_eq!(
            advance(&eager, &first, &batches, &members, now).state,
            RolloutPhase::Completed
        );
    }

    #[test]
    fn a_rollout_lets_its_batches_so_far_through_and_defers_single_clusters() {
        let now = Utc::now();
        let fleet = Fleet::new(&[("a", None), ("b", None), ("c", None), ("d", None), ("e", None)]);
        let candidates = fleet.candidates();
        let r = rollout(json!({}));
        let mut members = HashMap::new();
        let gated = gate(Some(&r), Some(&started(now)), 2, Some(&candidates), &members, None, now);
        assert_eq!(gated.reach, Reach::Only(HashSet::from([1, 2])), "the first batch");
        assert_eq!(
            gated.next.map(|s| s.batches),
            Some(3),
            "the count of batches is written"
        );

        members.insert(1, member(true, true, false));
        members.insert(2, member(true, true, false));
        let gated = gate(Some(&r), Some(&started(now)), 2, Some(&candidates), &members, None, now);
        assert_eq!(gated.next.as_ref().map(|s| s.batch), Some(1), "moved on");
        assert_eq!(gated.reach, Reach::Only(HashSet::from([1, 2, 3, 4])));

        let single = gate(Some(&r), Some(&started(now)), 2, None, &members, None, now);
        assert_eq!(
            single.reach,
            Reach::Deferred,
            "a tag change waits for the rollout's next step"
        );

        let other = gate(Some(&r), Some(&started(now)), 3, Some(&candidates), &members, None, now);
        assert_eq!(
            (other.next, other.reach),
            (None, Reach::All),
            "no rollout of this generation"
        );

        let mut paused = started(now);
        paused.state = RolloutPhase::Paused;
        let held = gate(Some(&r), Some(&paused), 2, Some(&candidates), &members, None, now);
        assert_eq!(
            (held.next, held.reach),
            (None, Reach::Only(HashSet::from([1, 2]))),
            "paused: compliant as its batch is, it does not move on"
        );
    }

    #[test]
    fn a_halted_rollout_with_auto_rollback_goes_back_to_the_last_template_compliant_everywhere() {
        let now = Utc::now();
        let fleet = Fleet::new(&[("a", None), ("b", None), ("c", None)]);
        let candidates = fleet.candidates();
        let r = rollout(json!({"batchSize": 1, "autoRollback": true}));
        let members = HashMap::from([(1, member(true, false, true))]);
        let gated = gate(
            Some(&r),
            Some(&started(now)),
            2,
            Some(&candidates),
            &members,
            Some(1),
            now,
        );
        let next = gated.next.unwrap();
        assert_eq!((next.state, next.rolled_back_to), (RolloutPhase::RolledBack, Some(1)));
        assert!(
            next.message.as_deref().unwrap().contains("went back to generation 1"),
            "{next:?}"
        );
        assert_eq!(gated.reach, Reach::RolledBack { to: 1 });
        let again = gate(Some(&r), Some(&next), 2, Some(&candidates), &members, Some(1), now);
        assert_eq!(
            (again.next, again.reach),
            (None, Reach::RolledBack { to: 1 }),
            "it stays so"
        );

        let nothing = gate(Some(&r), Some(&started(now)), 2, Some(&candidates), &members, None, now);
        let halted = nothing.next.unwrap();
        assert_eq!(halted.state, RolloutPhase::Halted);
        assert!(halted.message.as_deref().unwrap().contains("nothing to roll back to"));
        assert_eq!(roll_back(&r, &halted, None), None, "said once");
        let without = rollout(json!({"batchSize": 1}));
        let kept = gate(
            Some(&without),
            Some(&started(now)),
            2,
            Some(&candidates),
            &members,
            Some(1),
            now,
        );
        assert_eq!(
            kept.next.unwrap().state,
            RolloutPhase::Halted,
            "no rollback unless asked"
        );
    }

    #[test]
    fn pause_and_resume_apply_to_a_rollout_under_way_only() {
        let now = Utc::now();
        let moving = started(now);
        let paused = pause(Some(&moving), 2, "alice").unwrap().unwrap();
        assert_eq!(
            (paused.state, paused.message.as_deref()),
            (RolloutPhase::Paused, Some("paused by alice"))
        );
        assert_eq!(pause(Some(&paused), 2, "bob"), Ok(None), "paused already");
        let later = now + chrono::Duration::minutes(3);
        let resumed = resume(Some(&paused), 2, "bob", later).unwrap().unwrap();
        assert_eq!(
            (resumed.state, resumed.batch_started_at),
            (RolloutPhase::Progressing, later)
        );
        assert_eq!(resume(Some(&resumed), 2, "bob", later), Ok(None), "moving already");
        let mut done = started(now);
        done.state = RolloutPhase::Completed;
        assert!(pause(Some(&done), 2, "alice").unwrap_err().0.contains("Completed"));
        assert!(pause(None, 2, "alice").is_err());
        assert!(resume(Some(&moving), 3, "bob", now).is_err(), "another generation's");
    }

    #[test]
    fn a_breaker_halts_a_rollout_where_it_is_and_one_at_rest_with_every_batch_reached() {
        let now = Utc::now();
        let mut moving = started(now);
        moving.batch = 1;
        let halted = halt(Some(&moving), 2, 4, "tripped".into(), now).unwrap();
        assert_eq!((halted.state, halted.batch), (RolloutPhase::Halted, 1));
        let mut done = started(now);
        done.state = RolloutPhase::Completed;
        let halted = halt(Some(&done), 2, 5, "tripped".into(), now).unwrap();
        assert_eq!((halted.state, halted.batch), (RolloutPhase::Halted, 5));
        let older = start(1, now);
        let halted = halt(Some(&older), 2, 3, "tripped".into(), now).unwrap();
        assert_eq!((halted.generation, halted.batch), (2, 3));
        assert_eq!(halt(Some(&halted), 2, 3, "again".into(), now), None, "halted already");
    }

    #[test]
    fn only_a_generation_every_cluster_holds_and_reports_compliant_is_compliant_everywhere() {
        let ok = member(true, true, false);
        assert!(compliant_everywhere([(true, ok), (true, ok)]));
        assert!(!compliant_everywhere([(true, ok), (false, ok)]), "one left behind");
        assert!(!compliant_everywhere([(true, ok), (true, member(true, false, true))]));
        assert!(
            !compliant_everywhere([(true, member(false, false, false))]),
            "not reported"
        );
        assert!(!compliant_everywhere(std::iter::empty()), "applied nowhere");
    }

    #[test]
    fn each_transition_leaves_its_events() {
        let now = Utc::now();
        let first = RolloutState {
            batches: 3,
            ..started(now)
        };
        let names = |events: Vec<RolloutEvent>| events.into_iter().map(|e| e.event).collect::<Vec<_>>();
        assert_eq!(names(events(None, &first)), ["Started"]);
        let second = RolloutState {
            batch: 1,
            ..first.clone()
        };
        let moved = events(Some(&first), &second);
        assert_eq!(moved[0].message, "batch 2 of 3 started");
        let soaking = RolloutState {
            state: RolloutPhase::Soaking,
            ..second.clone()
        };
        assert_eq!(names(events(Some(&second), &soaking)), ["Soaking"]);
        let paused = RolloutState {
            state: RolloutPhase::Paused,
            message: Some("paused by alice".into()),
            ..second.clone()
        };
        let pausing = events(Some(&second), &paused);
        assert_eq!(pausing[0].message, "paused by alice at batch 2 of 3");
        assert_eq!(names(events(Some(&paused), &second)), ["Resumed"]);
        let newer = start(3, now);
        assert_eq!(names(events(Some(&second), &newer)), ["Superseded", "Started"]);
        let done = RolloutState {
            state: RolloutPhase::Completed,
            batch: 3,
            ..first.clone()
        };
        assert_eq!(names(events(Some(&second), &done)), ["Completed"]);
        assert!(events(Some(&second), &second).is_empty());
    }
}
