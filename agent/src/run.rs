//! The agent's loop: long-poll the desired state, bring the target in line, report what it observed, and re-check
//! each configuration's source on its sync interval. Every failure backs off exponentially with jitter; nothing
//! is lost across failures, because every poll answers the full desired state (or that the one held is still
//! current, `client::Polled::Unchanged`) and reports are kept until sent.
//!
//! A target whose cluster does not answer (its API server down, at start or later) does not stop the agent: it keeps
//! polling (every poll is a heartbeat), reports each configuration `Unknown` saying why, asks the cluster again with
//! backoff, and once it answers takes the inventory it could not take and checks every configuration at once.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use fluxplane_agent_protocol::agent::{
    AgentInfo, ApplyOutcome, ConfigurationReport, DesiredConfiguration, DesiredExtension, DesiredState,
    ExtensionReport, ExtensionStatus, Restoration, StatusReport, extension_sealing_name,
};
use fluxplane_agent_protocol::flux::{ComplianceState, ObjectStatusCondition, SourceKind};
use tokio::time::Instant;

use crate::client::{ClientError, ControlPlane, Polled};
use crate::deploy_key::{self, DeployKey};
use crate::secrets::{Credentials, SecretSet, resolve, resolve_sealed, spec_with};
use crate::targets::{Observation, Target};
use crate::tenancy;

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Longest wait of one desired-state poll.
    pub poll_wait: Duration,
    /// Facts sent with every report.
    pub info: AgentInfo,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            poll_wait: Duration::from_secs(30),
            info: AgentInfo {
                agent_version: Some(env!("CARGO_PKG_VERSION").to_owned()),
                ..Default::default()
            },
        }
    }
}

/// Exponential backoff with full jitter, from 250 ms to 30 s.
#[derive(Debug)]
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    const BASE: Duration = Duration::from_millis(250);
    const CAP: Duration = Duration::from_secs(30);

    pub fn new() -> Self {
        Self { attempt: 0 }
    }

    /// The next delay: a random duration up to `BASE * 2^attempt`, capped.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = Self::BASE.saturating_mul(1 << self.attempt.min(16)).min(Self::CAP);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(rand::random_range(0.5..=1.0))
    }

    /// The next delay after `err`, never sooner than the control plane asked (`Retry-After`): what it asked and up
    /// to half as much again, so that agents refused at the same moment do not all come back at the same moment.
    pub fn after(&mut self, err: &ClientError) -> Duration {
        let delay = self.next_delay();
        match err.retry_after() {
            Some(asked) => delay.max(asked.min(Self::CAP).mul_f64(rand::random_range(1.0..=1.5))),
            None => delay,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// The type of the condition a restored object's status carries.
pub const RESTORED_CONDITION: &str = "Restored";

/// How soon a configuration whose objects could not be written is tried again.
const RETRY_FAILED_APPLY: Duration = Duration::from_secs(10);
/// How often what the cluster runs of an extension (for Flux: its version and controllers) is read again.
const EXTENSION_CHECK: Duration = Duration::from_secs(300);
/// The extension type whose settings the agent acts on.
const FLUX_EXTENSION: &str = "microsoft.flux";

/// The target's cluster does not answer: why, and when to ask it again.
#[derive(Debug)]
struct Unreachable {
    message: String,
    backoff: Backoff,
    retry_at: Instant,
}

/// What the agent knows of one configuration.
#[derive(Debug)]
struct Held {
    generation: i64,
    /// Whether that generation's objects were written; a failed write is retried when `next_check` comes.
    applied: bool,
    /// The version of the secret set written with them (`None`: none, or not known after a restart).
    secrets_version: Option<i64>,
    /// When its source is due for another check (or its failed write for another try).
    next_check: Instant,
    /// What was last reported for it, to report again only on change.
    reported: Option<ConfigurationReport>,
    /// The objects of this generation the agent wrote back after they drifted, the latest per object: each shows
    /// as a `Restored` condition on its status for as long as the generation lasts.
    restorations: Vec<Restoration>,
    /// The last request to re-check the source at once that the agent acted on (`reconcileRequestedAt`).
    reconcile_requested_at: Option<String>,
}

/// What the agent holds of one extension: the settings of the generation it installed, which the agent acts on
/// (for `microsoft.flux`, `multiTenancy.enforce`), and what it last reported finding in the cluster.
#[derive(Debug)]
pub struct HeldExtension {
    pub generation: i64,
    pub settings: DesiredExtension,
    /// The protected settings of `secrets_version` (`None`: none, or not known after a restart, once acknowledged).
    pub protected: Option<SecretSet>,
    pub secrets_version: Option<i64>,
    /// What the cluster runs of it, as last reported.
    pub statuses: Vec<ExtensionStatus>,
    /// When that is due to be read again.
    next_check: Instant,
}

fn sync_interval(configuration: &DesiredConfiguration) -> Duration {
    let spec = &configuration.spec;
    let seconds = match spec.source_kind.unwrap_or(SourceKind::GitRepository) {
        SourceKind::GitRepository => spec.git_repository.as_ref().and_then(|g| g.sync_interval_in_seconds),
        SourceKind::Bucket => spec.bucket.as_ref().and_then(|b| b.sync_interval_in_seconds),
        SourceKind::AzureBlob => spec.azure_blob.as_ref().and_then(|b| b.sync_interval_in_seconds),
        SourceKind::OciRepository => spec.oci_repository.as_ref().and_then(|o| o.sync_interval_in_seconds),
    };
    Duration::from_secs(seconds.unwrap_or(600).max(1) as u64)
}

fn report_of(
    configuration: &DesiredConfiguration,
    outcome: ApplyOutcome,
    observation: Observation,
    secrets_version: Option<i64>,
) -> ConfigurationReport {
    ConfigurationReport {
        restored: Vec::new(),
        secrets_version,
        name: configuration.name.clone(),
        generation: configuration.generation,
        outcome,
        compliance_state: observation.compliance,
        message: observation.message,
        statuses: observation.statuses,
        source_synced_commit_id: observation.source_synced_commit_id,
        source_updated_at: observation.source_updated_at,
        repository_public_key: observation.repository_public_key,
    }
}

/// The condition a restored object's status carries: when, and what had become of it.
fn restored_condition(restoration: &Restoration) -> ObjectStatusCondition {
    ObjectStatusCondition {
        last_transition_time: Some(restoration.noticed_at.clone()),
        message: Some(format!(
            "restored by the agent: it was {} in the cluster",
            restoration.drift.as_str()
        )),
        reason: Some(format!("{:?}", restoration.drift)),
        status: Some("True".to_owned()),
        type_: Some(RESTORED_CONDITION.to_owned()),
    }
}

/// Adds each restoration's condition to the status of the object it restored.
fn mark_restored(report: &mut ConfigurationReport, restorations: &[Restoration]) {
    for restoration in restorations {
        let status = report.statuses.iter_mut().find(|status| {
            status.kind.as_deref() == Some(restoration.kind.as_str())
                && status.name.as_deref() == Some(restoration.name.as_str())
                && status.namespace == restoration.namespace
        });
        if let Some(status) = status {
            status
                .status_conditions
                .get_or_insert_with(Vec::new)
                .push(restored_condition(restoration));
        }
    }
}

/// A condition's `lastTransitionTime` says when it last changed: one that reads as it did in the previous report
/// keeps that report's time (a target that stamps its conditions when it observes them would otherwise make every
/// check a new report, and every agent a steady load on the control plane).
fn keep_transition_times(report: &mut ConfigurationReport, previous: &ConfigurationReport) {
    for status in &mut report.statuses {
        let Some(before) = previous
            .statuses
            .iter()
            .find(|p| (&p.kind, &p.name, &p.namespace) == (&status.kind, &status.name, &status.namespace))
        else {
            continue;
        };
        for condition in status.status_conditions.iter_mut().flatten() {
            let same = before.status_conditions.iter().flatten().find(|b| {
                (&b.type_, &b.status, &b.reason, &b.message)
                    == (
                        &condition.type_,
                        &condition.status,
                        &condition.reason,
                        &condition.message,
                    )
            });
            if let Some(same) = same {
                condition.last_transition_time = same.last_transition_time.clone();
            }
        }
    }
}

/// The agent: a control plane, a target, and what it holds.
pub struct Agent {
    /// Shared with the poll in flight, which stays open while the agent re-checks its cluster.
    control_plane: Arc<ControlPlane>,
    target: Box<dyn Target>,
    options: Options,
    held: HashMap<String, Held>,
    /// Reports not yet accepted by the control plane, by configuration.
    pending: BTreeMap<String, ConfigurationReport>,
    /// The cluster's extensions, as last installed.
    extensions: HashMap<String, HeldExtension>,
    /// Extension reports not yet accepted, by extension.
    pending_extensions: BTreeMap<String, ExtensionReport>,
    /// The generation of each extension whose settings failed to open, reported once.
    failed_extensions: HashMap<String, i64>,
    /// Whether the target's inventory was taken: until then the agent does not know what an earlier run wrote.
    inventoried: bool,
    /// Set while the target's cluster does not answer.
    unreachable: Option<Unreachable>,
    /// Until when pending reports wait, as the control plane asked when it refused the last (`Retry-After`).
    reports_wait_until: Option<Instant>,
    /// Whether the target writes with multi-tenancy enforced, as last set (`None`: not set by this run).
    multi_tenancy: Option<bool>,
}

impl Agent {
    /// An agent that holds what the target's inventory lists. A cluster that does not answer does not stop it: the
    /// inventory is taken once it answers.
    pub async fn new(control_plane: ControlPlane, target: Box<dyn Target>, options: Options) -> anyhow::Result<Self> {
        let mut agent = Self {
            control_plane: Arc::new(control_plane),
            target,
            options,
            held: HashMap::new(),
            pending: BTreeMap::new(),
            extensions: HashMap::new(),
            pending_extensions: BTreeMap::new(),
            failed_extensions: HashMap::new(),
            inventoried: false,
            unreachable: None,
            reports_wait_until: None,
            multi_tenancy: None,
        };
        agent.take_inventory().await;
        Ok(agent)
    }

    /// The extension `name` as the agent holds it.
    pub fn extension(&self, name: &str) -> Option<&HeldExtension> {
        self.extensions.get(name)
    }

    /// The report on configuration `name` waiting to be sent, if one is.
    pub fn pending_report(&self, name: &str) -> Option<&ConfigurationReport> {
        self.pending.get(name)
    }

    /// The report on extension `name` waiting to be sent, if one is.
    pub fn pending_extension_report(&self, name: &str) -> Option<&ExtensionReport> {
        self.pending_extensions.get(name)
    }

    /// Why the target's cluster does not answer, while it does not.
    pub fn unreachable(&self) -> Option<&str> {
        self.unreachable.as_ref().map(|u| u.message.as_str())
    }

    /// Takes the target's inventory: what an earlier run wrote need not be written again, only observed (and what
    /// this run failed to write while the cluster did not answer stays to be written). Answers whether it could.
    async fn take_inventory(&mut self) -> bool {
        match self.target.inventory().await {
            Ok(found) => {
                let now = Instant::now();
                for (name, generation) in found {
                    self.held.entry(name).or_insert(Held {
                        generation,
                        applied: true,
                        secrets_version: None,
                        next_check: now,
                        reported: None,
                        restorations: Vec::new(),
                        reconcile_requested_at: None,
                    });
                }
                self.inventoried = true;
                true
            }
            Err(err) => {
                self.mark_unreachable(format!("{err:#}"));
                false
            }
        }
    }

    /// Notes that the target's cluster does not answer, and when to ask again.
    fn mark_unreachable(&mut self, message: String) {
        let now = Instant::now();
        if self.unreachable.is_none() {
            tracing::warn!(error = %message, "the cluster does not answer; the agent keeps running and retries");
        }
        let state = self.unreachable.get_or_insert_with(|| Unreachable {
            message: String::new(),
            backoff: Backoff::new(),
            retry_at: now,
        });
        state.message = message;
        state.retry_at = now + state.backoff.next_delay();
    }

    /// Whether the target's cluster answers: at once when it was not known to fail; while it fails, asked again
    /// when the backoff allows. Once it answers again, every configuration and extension is checked at once.
    async fn cluster_answers(&mut self) -> bool {
        let Some(state) = &self.unreachable else {
            return true;
        };
        if state.retry_at > Instant::now() {
            return false;
        }
        let answers = if self.inventoried {
            match self.target.reachable().await {
                Ok(()) => true,
                Err(err) => {
                    self.mark_unreachable(format!("{err:#}"));
                    false
                }
            }
        } else {
            self.take_inventory().await
        };
        if answers {
            tracing::info!("the cluster answers again; catching up");
            self.unreachable = None;
            let now = Instant::now();
            for held in self.held.values_mut() {
                held.next_check = now;
            }
            for extension in self.extensions.values_mut() {
                extension.next_check = now;
            }
        }
        answers
    }

    /// While the cluster does not answer: each configuration is reported `Unknown`, saying why. Objects an earlier
    /// round (or run) wrote for its generation are still `Applied`; a generation not written yet is `Failed` until
    /// the cluster answers and it is.
    fn report_unreachable(&mut self, desired: &DesiredState) {
        let why = self.unreachable.as_ref().map(|u| u.message.clone()).unwrap_or_default();
        let message = format!(
            "the agent cannot read its cluster ({why}); it retries with backoff and catches up once the cluster \
             answers"
        );
        let now = Instant::now();
        for configuration in desired.configurations.iter().filter(|c| !c.deleting) {
            let held = self.held.entry(configuration.name.clone()).or_insert(Held {
                generation: configuration.generation,
                applied: false,
                secrets_version: None,
                next_check: now,
                reported: None,
                restorations: Vec::new(),
                reconcile_requested_at: None,
            });
            if held.generation != configuration.generation {
                held.generation = configuration.generation;
                held.applied = false;
            }
            let outcome = if held.applied {
                ApplyOutcome::Applied
            } else {
                ApplyOutcome::Failed
            };
            let observation = Observation::only(ComplianceState::Unknown, Some(message.clone()));
            let report = report_of(configuration, outcome, observation, held.secrets_version);
            if held.reported.as_ref() != Some(&report) {
                held.reported = Some(report.clone());
                self.pending.insert(report.name.clone(), report);
            }
        }
    }

    /// Runs until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut revision = None;
        let mut backoff = Backoff::new();
        tracing::info!(
            cluster = self.control_plane.cluster_id(),
            held = self.held.len(),
            "agent started"
        );
        // the control plane seals secrets to this key; registering it again is harmless
        loop {
            let registered = tokio::select! {
                () = &mut shutdown => return Ok(()),
                registered = self.control_plane.register_encryption_key() => registered,
            };
            let Err(err) = registered else { break };
            let delay = backoff.after(&err);
            tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "registering the encryption key failed");
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
        backoff.reset();
        // the desired state last received: what the checks between polls hold the cluster to
        let mut desired: Option<DesiredState> = None;
        'polling: loop {
            // The poll stays open while the agent re-checks its cluster between answers, so that checks and
            // retries, however frequent, never cost the control plane a request.
            let poll = {
                let control_plane = Arc::clone(&self.control_plane);
                let wait = self.options.poll_wait;
                async move { control_plane.poll(revision, wait).await }
            };
            tokio::pin!(poll);
            let polled = loop {
                let due = self.next_due();
                tokio::select! {
                    () = &mut shutdown => break 'polling,
                    polled = &mut poll => break polled,
                    () = tokio::time::sleep_until(due), if desired.is_some() => {
                        if let Some(desired) = &desired {
                            self.reconcile(desired).await;
                            self.observe_extensions().await;
                            self.send_reports().await;
                        }
                    }
                }
            };
            let answer = match polled {
                Ok(Polled::Changed(answer)) => answer,
                // the revision held is still the desired state: checked again as a new answer would be
                Ok(Polled::Unchanged) => match desired.take() {
                    Some(held) => held,
                    // nothing held to keep (cannot happen: a revision is held with its desired state): ask in full
                    None => {
                        revision = None;
                        continue;
                    }
                },
                Err(err) => {
                    let delay = backoff.after(&err);
                    match &err {
                        ClientError::Unauthorized(_) => {
                            tracing::error!(error = %err, "refused: was the cluster deleted or registered again?")
                        }
                        _ => tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "polling failed"),
                    }
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            backoff.reset();
            if revision != Some(answer.revision) {
                tracing::debug!(
                    revision = answer.revision,
                    configurations = answer.configurations.len(),
                    "desired state"
                );
            }
            revision = Some(answer.revision);
            self.reconcile_extensions(&answer);
            self.reconcile(&answer).await;
            self.observe_extensions().await;
            self.send_reports().await;
            desired = Some(answer);
        }
        tracing::info!("agent stopped");
        Ok(())
    }

    /// When the agent next has work between polls: the earliest source check (while the cluster does not answer,
    /// the next time it is asked), or a second from now while reports wait to be sent again; never sooner than a
    /// second from now.
    fn next_due(&self) -> Instant {
        let now = Instant::now();
        let soonest = now + Duration::from_secs(1);
        if !self.pending.is_empty() || !self.pending_extensions.is_empty() {
            return self.reports_wait_until.map_or(soonest, |until| until.max(soonest));
        }
        let due = match &self.unreachable {
            Some(state) => Some(state.retry_at),
            None => self.held.values().map(|h| h.next_check).min(),
        };
        due.unwrap_or(now + self.options.poll_wait).max(soonest)
    }

    /// Brings the target in line with `desired` and queues the reports that changed.
    pub async fn reconcile(&mut self, desired: &DesiredState) {
        if !self.cluster_answers().await {
            self.report_unreachable(desired);
            return;
        }
        let now = Instant::now();
        // a failure may be the cluster going away: if so, the next rounds wait for it instead of failing each write
        let mut failed = false;
        for configuration in &desired.configurations {
            let name = configuration.name.clone();
            if configuration.deleting {
                match self.target.remove(&name).await {
                    Ok(()) => {
                        tracing::info!(configuration = %name, "removed");
                        self.held.remove(&name);
                        let observation = Observation::only(ComplianceState::Unknown, None);
                        self.queue(report_of(configuration, ApplyOutcome::Removed, observation, None));
                    }
                    Err(err) => {
                        failed = true;
                        tracing::warn!(configuration = %name, error = format!("{err:#}"), "removing failed")
                    }
                }
                continue;
            }
            let held = self.held.get(&name);
            let new_generation = held.is_none_or(|h| h.generation != configuration.generation);
            // sealed secrets still on offer were not acknowledged (say, by the run before a restart): write them
            let undelivered = !configuration.sealed_secrets.is_empty()
                && held.is_none_or(|h| h.secrets_version != configuration.secrets_version);
            let due = held.is_none_or(|h| h.next_check <= now);
            // a request to re-check at once (a push, a `reconcile` action) not acted on yet: the objects are written
            // again with it (Flux's request annotation, `objects::configuration_objects`) and the source checked now
            let requested = configuration.reconcile_requested_at.is_some()
                && held.is_some_and(|h| h.reconcile_requested_at != configuration.reconcile_requested_at);
            if !new_generation && !undelivered && !due && !requested {
                continue;
            }
            if requested {
                tracing::info!(configuration = %name, requested_at = ?configuration.reconcile_requested_at, "re-checking at once, as asked");
            }
            let write = new_generation || undelivered || requested || held.is_some_and(|h| !h.applied);
            let mut applied = true;
            let mut secrets_version = held.and_then(|h| h.secrets_version);
            let mut restored = Vec::new();
            let written = if write {
                Some(self.write(configuration).await)
            } else {
                // what it wrote, it keeps: objects deleted or changed since are written back
                match self.restore(configuration).await {
                    Ok(found) => {
                        restored = found;
                        None
                    }
                    Err(message) => Some(Err(message)),
                }
            };
            let report = match written {
                Some(Ok(version)) => {
                    tracing::info!(configuration = %name, generation = configuration.generation, "applied");
                    secrets_version = version;
                    let observation = self.target.observe(configuration).await;
                    report_of(configuration, ApplyOutcome::Applied, observation, secrets_version)
                }
                Some(Err(message)) => {
                    applied = false;
                    failed = true;
                    tracing::warn!(configuration = %name, error = %message, "applying failed; will retry");
                    let observation = Observation::only(ComplianceState::NonCompliant, Some(message));
                    report_of(configuration, ApplyOutcome::Failed, observation, secrets_version)
                }
                None => {
                    let observation = self.target.observe(configuration).await;
                    report_of(configuration, ApplyOutcome::Applied, observation, secrets_version)
                }
            };
            failed |= report.compliance_state == ComplianceState::Unknown;
            let held = self.held.entry(name).or_insert(Held {
                generation: configuration.generation,
                applied,
                secrets_version,
                next_check: now,
                reported: None,
                restorations: Vec::new(),
                reconcile_requested_at: None,
            });
            if held.generation != configuration.generation {
                held.restorations.clear();
            }
            held.generation = configuration.generation;
            held.applied = applied;
            // acted on, whatever came of it: a failed write is tried again on its own clock (`RETRY_FAILED_APPLY`)
            held.reconcile_requested_at
                .clone_from(&configuration.reconcile_requested_at);
            held.secrets_version = secrets_version;
            held.next_check = now
                + if applied {
                    sync_interval(configuration)
                } else {
                    RETRY_FAILED_APPLY
                };
            for restoration in &restored {
                held.restorations.retain(|r| {
                    (&r.kind, &r.name, &r.namespace) != (&restoration.kind, &restoration.name, &restoration.namespace)
                });
                held.restorations.push(restoration.clone());
            }
            let mut report = report;
            mark_restored(&mut report, &held.restorations);
            if let Some(previous) = &held.reported {
                keep_transition_times(&mut report, previous);
            }
            if held.reported.as_ref() != Some(&report) || !restored.is_empty() {
                held.reported = Some(report.clone());
                // restorations not yet accepted stay with the report that replaces theirs
                let mut unsent = self
                    .pending
                    .remove(&report.name)
                    .filter(|pending| pending.generation == report.generation)
                    .map(|pending| pending.restored)
                    .unwrap_or_default();
                unsent.extend(restored);
                report.restored = unsent;
                self.pending.insert(report.name.clone(), report);
            }
        }
        // configurations deleted at once (forceDelete) leave the desired state without passing through Deleting
        let wanted: std::collections::HashSet<&str> = desired.configurations.iter().map(|c| c.name.as_str()).collect();
        let gone: Vec<String> = self
            .held
            .keys()
            .filter(|n| !wanted.contains(n.as_str()))
            .cloned()
            .collect();
        for name in gone {
            match self.target.remove(&name).await {
                Ok(()) => {
                    tracing::info!(configuration = %name, "removed (no longer desired)");
                    self.held.remove(&name);
                    self.pending.remove(&name);
                }
                Err(err) => {
                    failed = true;
                    tracing::warn!(configuration = %name, error = format!("{err:#}"), "removing failed")
                }
            }
        }
        if failed && let Err(err) = self.target.reachable().await {
            self.mark_unreachable(format!("{err:#}"));
        }
    }

    /// Records the extensions of `desired` and queues a report on each generation not reported yet: installed with
    /// its settings (the protected ones opened), failed (they do not open), or removed.
    pub fn reconcile_extensions(&mut self, desired: &DesiredState) {
        let version = self.options.info.agent_version.clone();
        for extension in &desired.extensions {
            let name = extension.name.clone();
            let report = |outcome, message, secrets_version| ExtensionReport {
                name: extension.name.clone(),
                generation: extension.generation,
                outcome,
                message,
                current_version: match outcome {
                    // the agent is what installs the extension here: its version is the one installed
                    ApplyOutcome::Applied => version.clone(),
                    _ => None,
                },
                secrets_version,
                statuses: Vec::new(),
            };
            if extension.deleting {
                if self.extensions.remove(&name).is_some() || !self.pending_extensions.contains_key(&name) {
                    tracing::info!(extension = %name, "extension uninstalled");
                }
                self.pending_extensions
                    .insert(name, report(ApplyOutcome::Removed, None, None));
                continue;
            }
            let held = self.extensions.get(&name);
            let new_generation = held.is_none_or(|h| h.generation != extension.generation);
            let undelivered = !extension.sealed_secrets.is_empty()
                && held.is_none_or(|h| h.secrets_version != extension.secrets_version);
            let failed_before = self.failed_extensions.get(&name) == Some(&extension.generation);
            if (!new_generation && !undelivered) || failed_before {
                continue;
            }
            let kept = held.and_then(|h| h.protected.clone());
            let opened = if extension.sealed_secrets.is_empty() {
                // acknowledged before (by this run, or by one before a restart, whose copy is gone)
                Ok(kept.filter(|k| Some(k.version) == extension.secrets_version))
            } else {
                resolve_sealed(
                    self.control_plane.cluster_id(),
                    &extension_sealing_name(&name),
                    extension.secrets_version,
                    &extension.sealed_secrets,
                    kept,
                    self.control_plane.encryption_key(),
                )
            };
            let queued = match opened {
                Ok(protected) => {
                    self.failed_extensions.remove(&name);
                    let secrets_version = protected.as_ref().map(|p| p.version);
                    tracing::info!(extension = %name, generation = extension.generation, "extension installed");
                    self.extensions.insert(
                        name.clone(),
                        HeldExtension {
                            generation: extension.generation,
                            settings: extension.clone(),
                            protected,
                            secrets_version: extension.secrets_version,
                            statuses: Vec::new(),
                            next_check: Instant::now(),
                        },
                    );
                    report(ApplyOutcome::Applied, None, secrets_version)
                }
                Err(message) => {
                    tracing::warn!(extension = %name, error = %message, "installing the extension failed");
                    self.failed_extensions.insert(name.clone(), extension.generation);
                    report(ApplyOutcome::Failed, Some(message), None)
                }
            };
            self.pending_extensions.insert(name, queued);
        }
        let wanted: std::collections::HashSet<&str> = desired.extensions.iter().map(|e| e.name.as_str()).collect();
        // deleted at once (forceDelete): nothing to report
        self.extensions.retain(|name, _| wanted.contains(name.as_str()));
        self.pending_extensions.retain(|name, _| wanted.contains(name.as_str()));
        self.failed_extensions.retain(|name, _| wanted.contains(name.as_str()));
        self.apply_multi_tenancy();
    }

    /// Sets multi-tenancy on the target as the Flux extension's settings say (on without one, as in Azure). When it
    /// changes, or was not set by this run (an earlier run may have written under the other setting), every
    /// configuration is written again, on the target that depends on it.
    fn apply_multi_tenancy(&mut self) {
        let settings = self
            .extensions
            .values()
            .find(|e| e.settings.extension_type.eq_ignore_ascii_case(FLUX_EXTENSION))
            .map(|e| &e.settings.configuration_settings);
        let enforced = tenancy::enforced(settings);
        if self.multi_tenancy == Some(enforced) {
            return;
        }
        self.multi_tenancy = Some(enforced);
        if self.target.set_multi_tenancy(enforced) {
            tracing::info!(enforced, "multi-tenancy set; writing every configuration again");
            let now = Instant::now();
            for held in self.held.values_mut() {
                held.applied = false;
                held.next_check = now;
            }
        }
    }

    /// Reads what the cluster runs of each installed extension, for its statuses: with the report of a generation
    /// just installed, and every [`EXTENSION_CHECK`] after, reporting the generation again when they changed.
    pub async fn observe_extensions(&mut self) {
        let now = Instant::now();
        let time = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        for (name, held) in &mut self.extensions {
            // a report of the installed generation waits without statuses: it goes with them
            let queued = self.pending_extensions.get(name).is_some_and(|r| {
                r.generation == held.generation && r.outcome == ApplyOutcome::Applied && r.statuses.is_empty()
            });
            if !queued && held.next_check > now {
                continue;
            }
            held.next_check = now + EXTENSION_CHECK;
            let mut statuses = self.target.flux_statuses(&held.settings.release_namespace).await;
            let unchanged = statuses.len() == held.statuses.len()
                && statuses.iter().zip(&held.statuses).all(|(new, old)| {
                    ExtensionStatus {
                        time: None,
                        ..old.clone()
                    } == *new
                });
            if unchanged {
                // the time says when it was first seen so
                statuses.clone_from(&held.statuses);
            } else {
                for status in &mut statuses {
                    status.time = Some(time.clone());
                }
            }
            if !queued && unchanged {
                continue;
            }
            held.statuses.clone_from(&statuses);
            let report = self
                .pending_extensions
                .entry(name.clone())
                .or_insert_with(|| ExtensionReport {
                    name: name.clone(),
                    generation: held.generation,
                    outcome: ApplyOutcome::Applied,
                    message: None,
                    current_version: self.options.info.agent_version.clone(),
                    secrets_version: held.protected.as_ref().map(|p| p.version),
                    statuses: Vec::new(),
                });
            report.statuses = statuses;
        }
    }

    /// The credentials the configuration's objects carry: the secret set of its version, brought up to date from
    /// what the cluster holds, and for an SSH source with no key of the user's, the deploy key the cluster holds or,
    /// the first time (or once it was lost), a new one. The error says what the user must do.
    async fn credentials(&self, configuration: &DesiredConfiguration) -> Result<Credentials, String> {
        let needs_key = deploy_key::ssh_git_source(&configuration.spec).is_some();
        let held = if configuration.secrets_version.is_some() || needs_key {
            self.target
                .credentials(configuration)
                .await
                .map_err(|err| format!("{err:#}"))?
        } else {
            Credentials::default()
        };
        let secrets = if configuration.secrets_version.is_some() {
            resolve(
                self.control_plane.cluster_id(),
                configuration,
                held.secrets,
                self.control_plane.encryption_key(),
            )?
        } else {
            None
        };
        let deploy_key = deploy_key::wanted(&spec_with(&configuration.spec, secrets.as_ref())).then(|| {
            held.deploy_key.unwrap_or_else(|| {
                tracing::info!(configuration = %configuration.name, "made a deploy key for the SSH source");
                let cluster = self.control_plane.cluster_id().rsplit('/').next().unwrap_or_default();
                DeployKey::generate(&format!("fluxplane:{cluster}/{}", configuration.name))
            })
        });
        Ok(Credentials { secrets, deploy_key })
    }

    /// Writes the configuration with the credentials it should have; answers the secret set's version, or why it
    /// failed.
    async fn write(&self, configuration: &DesiredConfiguration) -> Result<Option<i64>, String> {
        let credentials = self.credentials(configuration).await?;
        let version = credentials.secrets.as_ref().map(|s| s.version);
        self.target
            .apply(configuration, &credentials)
            .await
            .map_err(|err| format!("{err:#}"))?;
        Ok(version)
    }

    /// Writes back the objects of a configuration written before that were deleted or changed in the cluster since;
    /// answers what it restored, or why it could not.
    async fn restore(&self, configuration: &DesiredConfiguration) -> Result<Vec<Restoration>, String> {
        let credentials = self.credentials(configuration).await?;
        let drifted = match self.target.drift(configuration, &credentials).await {
            Ok(drifted) => drifted,
            Err(err) => {
                // not knowing is no reason to rewrite: the next check looks again
                tracing::warn!(configuration = %configuration.name, error = format!("{err:#}"), "checking for drift failed");
                return Ok(Vec::new());
            }
        };
        if drifted.is_empty() {
            return Ok(Vec::new());
        }
        self.target
            .apply(configuration, &credentials)
            .await
            .map_err(|err| format!("{err:#}"))?;
        let noticed_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        Ok(drifted
            .into_iter()
            .map(|drifted| {
                tracing::info!(
                    configuration = %configuration.name,
                    kind = %drifted.kind,
                    object = %drifted.name,
                    drift = drifted.drift.as_str(),
                    "restored"
                );
                Restoration {
                    kind: drifted.kind,
                    name: drifted.name,
                    namespace: drifted.namespace,
                    drift: drifted.drift,
                    noticed_at: noticed_at.clone(),
                }
            })
            .collect())
    }

    fn queue(&mut self, report: ConfigurationReport) {
        self.pending.insert(report.name.clone(), report);
    }

    /// Sends the pending reports; those not accepted stay pending for the next round, which a refusal asking the
    /// agent to wait (`Retry-After`) puts off until then.
    pub async fn send_reports(&mut self) {
        if self.pending.is_empty() && self.pending_extensions.is_empty() {
            return;
        }
        if self.reports_wait_until.is_some_and(|until| until > Instant::now()) {
            return;
        }
        let facts = self.target.cluster_facts().await;
        let report = StatusReport {
            agent: AgentInfo {
                kubernetes_version: facts.kubernetes_version,
                total_node_count: facts.total_node_count,
                ..self.options.info.clone()
            },
            configurations: self.pending.values().cloned().collect(),
            extensions: self.pending_extensions.values().cloned().collect(),
        };
        match self.control_plane.report(&report).await {
            Ok(accepted) => {
                self.reports_wait_until = None;
                for result in accepted.results {
                    if self
                        .pending
                        .get(&result.name)
                        .is_some_and(|r| r.generation == result.generation)
                    {
                        self.pending.remove(&result.name);
                    }
                }
                for result in accepted.extensions {
                    if self
                        .pending_extensions
                        .get(&result.name)
                        .is_some_and(|r| r.generation == result.generation)
                    {
                        self.pending_extensions.remove(&result.name);
                    }
                }
            }
            Err(err) => {
                self.reports_wait_until = err.retry_after().map(|asked| Instant::now() + asked);
                tracing::warn!(error = %err, pending = self.pending.len(), "reporting failed; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::identity::Identity;
    use crate::targets::{ClusterFacts, Drifted};
    use fluxplane_agent_protocol::agent::Drift;

    /// A target whose first write fails; clones share what they count. Its objects drift when a test says so,
    /// its one object is the Kustomization `ns/cfg-apps`, and it finds of Flux what a test says.
    #[derive(Default, Clone)]
    struct Flaky {
        writes: Arc<AtomicUsize>,
        observed: Arc<Mutex<Vec<String>>>,
        drifted: Arc<Mutex<Vec<Drifted>>>,
        flux: Arc<Mutex<Vec<ExtensionStatus>>>,
    }

    #[async_trait::async_trait]
    impl Target for Flaky {
        async fn inventory(&self) -> anyhow::Result<BTreeMap<String, i64>> {
            Ok(BTreeMap::new())
        }
        async fn apply(&self, _: &DesiredConfiguration, _: &Credentials) -> anyhow::Result<()> {
            if self.writes.fetch_add(1, Ordering::SeqCst) == 0 {
                anyhow::bail!("disk full");
            }
            Ok(())
        }
        async fn credentials(&self, _: &DesiredConfiguration) -> anyhow::Result<Credentials> {
            Ok(Credentials::default())
        }
        async fn drift(&self, _: &DesiredConfiguration, _: &Credentials) -> anyhow::Result<Vec<Drifted>> {
            Ok(std::mem::take(&mut *self.drifted.lock().unwrap()))
        }
        async fn remove(&self, _: &str) -> anyhow::Result<()> {
            Ok(())
        }
        async fn observe(&self, configuration: &DesiredConfiguration) -> Observation {
            self.observed.lock().unwrap().push(configuration.name.clone());
            Observation {
                statuses: vec![fluxplane_agent_protocol::flux::ObjectStatus {
                    kind: Some("Kustomization".into()),
                    name: Some("cfg-apps".into()),
                    namespace: Some("ns".into()),
                    ..Default::default()
                }],
                ..Observation::only(ComplianceState::Compliant, None)
            }
        }
        async fn cluster_facts(&self) -> ClusterFacts {
            ClusterFacts::default()
        }
        async fn flux_statuses(&self, _: &str) -> Vec<ExtensionStatus> {
            self.flux.lock().unwrap().clone()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_write_is_retried_not_mistaken_for_applied() {
        let identity = Identity::generate(
            "http://127.0.0.1:9",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c",
        )
        .unwrap()
        .identity;
        let target = Flaky::default();
        let mut agent = Agent::new(
            ControlPlane::new(identity).unwrap(),
            Box::new(target.clone()),
            Options::default(),
        )
        .await
        .unwrap();
        let desired = DesiredState {
            cluster_id: "c".into(),
            revision: 1,
            configurations: vec![DesiredConfiguration {
                name: "cfg".into(),
                generation: 1,
                ..Default::default()
            }],
            extensions: Vec::new(),
        };
        agent.reconcile(&desired).await;
        assert_eq!(agent.pending["cfg"].outcome, ApplyOutcome::Failed);
        assert!(
            target.observed.lock().unwrap().is_empty(),
            "a failed write is not observed as applied"
        );
        agent.reconcile(&desired).await;
        assert_eq!(target.writes.load(Ordering::SeqCst), 1, "the retry waits for its time");
        tokio::time::advance(RETRY_FAILED_APPLY).await;
        agent.reconcile(&desired).await;
        assert_eq!(target.writes.load(Ordering::SeqCst), 2, "then the write is tried again");
        assert_eq!(agent.pending["cfg"].outcome, ApplyOutcome::Applied);
    }

    fn agent_identity() -> Identity {
        agent_identity_at("http://127.0.0.1:9")
    }

    /// The agent of cluster `c` with the control plane at `server`.
    fn agent_identity_at(server: &str) -> Identity {
        Identity::generate(
            server,
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c",
        )
        .unwrap()
        .identity
    }

    /// An agent of cluster `c` writing to a `Flaky` target, its control plane at `server`.
    async fn flaky_agent(server: &str) -> Agent {
        let control_plane = ControlPlane::new(agent_identity_at(server)).unwrap();
        Agent::new(control_plane, Box::new(Flaky::default()), Options::default())
            .await
            .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn drifted_objects_are_written_back_and_reported_once_with_a_lasting_condition() {
        let target = Flaky::default();
        target.writes.store(1, Ordering::SeqCst); // no failing first write here
        let mut agent = Agent::new(
            ControlPlane::new(agent_identity()).unwrap(),
            Box::new(target.clone()),
            Options::default(),
        )
        .await
        .unwrap();
        let mut desired = DesiredState {
            cluster_id: "c".into(),
            revision: 1,
            configurations: vec![DesiredConfiguration {
                name: "cfg".into(),
                generation: 1,
                ..Default::default()
            }],
            extensions: Vec::new(),
        };
        agent.reconcile(&desired).await;
        assert_eq!(target.writes.load(Ordering::SeqCst), 2);
        agent.pending.clear(); // as if accepted

        // deleted in the cluster: noticed at the next check, which comes with the sync interval
        target.drifted.lock().unwrap().push(Drifted {
            kind: "Kustomization".into(),
            name: "cfg-apps".into(),
            namespace: Some("ns".into()),
            drift: Drift::Deleted,
        });
        agent.reconcile(&desired).await;
        assert_eq!(target.writes.load(Ordering::SeqCst), 2, "not before the check is due");
        tokio::time::advance(Duration::from_secs(600)).await;
        agent.reconcile(&desired).await;
        assert_eq!(target.writes.load(Ordering::SeqCst), 3, "written back");
        let report = agent.pending["cfg"].clone();
        assert_eq!(report.restored.len(), 1);
        assert_eq!(report.restored[0].drift, Drift::Deleted);
        let condition = |report: &ConfigurationReport| {
            report.statuses[0]
                .status_conditions
                .iter()
                .flatten()
                .find(|c| c.type_.as_deref() == Some(RESTORED_CONDITION))
                .cloned()
        };
        assert_eq!(condition(&report).unwrap().reason.as_deref(), Some("Deleted"));

        // a report that replaces an unsent one keeps its restorations
        target.drifted.lock().unwrap().push(Drifted {
            kind: "GitRepository".into(),
            name: "cfg".into(),
            namespace: Some("ns".into()),
            drift: Drift::Changed,
        });
        tokio::time::advance(Duration::from_secs(600)).await;
        agent.reconcile(&desired).await;
        assert_eq!(
            agent.pending["cfg"].restored.len(),
            2,
            "{:?}",
            agent.pending["cfg"].restored
        );
        agent.pending.clear();

        // nothing drifted: nothing written, nothing new to say; the condition stays with the generation
        tokio::time::advance(Duration::from_secs(600)).await;
        agent.reconcile(&desired).await;
        assert_eq!(target.writes.load(Ordering::SeqCst), 4);
        assert!(agent.pending.is_empty(), "{:?}", agent.pending);
        assert!(condition(agent.held["cfg"].reported.as_ref().unwrap()).is_some());

        // a new generation starts clean
        desired.configurations[0].generation = 2;
        agent.reconcile(&desired).await;
        let fresh = &agent.pending["cfg"];
        assert!(fresh.restored.is_empty());
        assert!(condition(fresh).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconcile_request_is_acted_on_at_once_and_once() {
        let target = Flaky::default();
        target.writes.store(1, Ordering::SeqCst); // no failing first write here
        let mut agent = Agent::new(
            ControlPlane::new(agent_identity()).unwrap(),
            Box::new(target.clone()),
            Options::default(),
        )
        .await
        .unwrap();
        let mut desired = DesiredState {
            cluster_id: "c".into(),
            revision: 1,
            configurations: vec![DesiredConfiguration {
                name: "cfg".into(),
                generation: 1,
                ..Default::default()
            }],
            extensions: Vec::new(),
        };
        agent.reconcile(&desired).await;
        let observed = || target.observed.lock().unwrap().len();
        assert_eq!((target.writes.load(Ordering::SeqCst), observed()), (2, 1));

        // long before the sync interval, with no new generation
        tokio::time::advance(Duration::from_secs(5)).await;
        desired.revision = 2;
        desired.configurations[0].reconcile_requested_at = Some("2026-11-21T18:20:05.123Z".into());
        agent.reconcile(&desired).await;
        assert_eq!(
            (target.writes.load(Ordering::SeqCst), observed()),
            (3, 2),
            "written again (with Flux's request annotation) and checked at once"
        );
        agent.reconcile(&desired).await;
        assert_eq!(observed(), 2, "a request is acted on once");
        agent.pending.clear(); // as if accepted
        assert_eq!(
            agent.next_due(),
            Instant::now() + Duration::from_secs(600),
            "the next check comes a sync interval after this one"
        );
    }

    fn flux_extension(generation: i64) -> DesiredExtension {
        DesiredExtension {
            name: "flux".into(),
            generation,
            extension_type: "microsoft.flux".into(),
            auto_upgrade_minor_version: true,
            release_train: "Stable".into(),
            release_namespace: "flux-system".into(),
            configuration_settings: [("multiTenancy.enforce".to_owned(), "false".to_owned())].into(),
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn an_extension_is_recorded_with_its_opened_settings_and_reported_once_per_generation() {
        let cluster = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c";
        let mut agent = flaky_agent("http://127.0.0.1:9").await;
        let recipient = agent.control_plane.encryption_key().public_base64();
        let envelope = fluxplane_agent_protocol::sealing::Envelope {
            cluster_id: cluster,
            configuration: "extensions/flux",
            version: 1,
            change: fluxplane_agent_protocol::agent::SecretsChange::Replace,
            base_version: None,
        };
        let plaintext = br#"{"configurationProtectedSettings": {"token": "s3cr3t"}}"#;
        let sealed = fluxplane_agent_protocol::sealing::seal(&recipient, envelope, plaintext).unwrap();
        let mut desired = DesiredState {
            cluster_id: cluster.into(),
            revision: 1,
            extensions: vec![DesiredExtension {
                secrets_version: Some(1),
                sealed_secrets: vec![sealed],
                ..flux_extension(1)
            }],
            ..Default::default()
        };
        agent.reconcile_extensions(&desired);
        let report = agent.pending_extensions["flux"].clone();
        assert_eq!((report.outcome, report.generation), (ApplyOutcome::Applied, 1));
        assert_eq!(report.secrets_version, Some(1), "acknowledges the settings it opened");
        assert_eq!(report.current_version, Options::default().info.agent_version);
        let held = agent.extension("flux").unwrap();
        assert_eq!(held.settings.configuration_settings["multiTenancy.enforce"], "false");
        let protected = held.protected.as_ref().unwrap();
        assert_eq!(protected.settings["configurationProtectedSettings"]["token"], "s3cr3t");

        agent.pending_extensions.clear();
        agent.reconcile_extensions(&desired);
        assert!(agent.pending_extensions.is_empty(), "a generation is reported once");

        // the control plane deleted its copy once acknowledged: the agent keeps its own
        desired.extensions[0].sealed_secrets.clear();
        desired.extensions[0].generation = 2;
        agent.reconcile_extensions(&desired);
        assert_eq!(agent.pending_extensions["flux"].secrets_version, Some(1));
        assert!(agent.extension("flux").unwrap().protected.is_some());

        desired.extensions[0].deleting = true;
        desired.extensions[0].generation = 3;
        agent.reconcile_extensions(&desired);
        assert_eq!(agent.pending_extensions["flux"].outcome, ApplyOutcome::Removed);
        assert!(agent.extension("flux").is_none());
    }

    #[tokio::test]
    async fn settings_sealed_to_another_key_fail_the_extension_and_are_not_acknowledged() {
        let cluster = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c";
        let mut agent = flaky_agent("http://127.0.0.1:9").await;
        let other = fluxplane_agent_protocol::sealing::EncryptionKey::generate();
        let envelope = fluxplane_agent_protocol::sealing::Envelope {
            cluster_id: cluster,
            configuration: "extensions/flux",
            version: 1,
            change: fluxplane_agent_protocol::agent::SecretsChange::Replace,
            base_version: None,
        };
        let sealed = fluxplane_agent_protocol::sealing::seal(&other.public_base64(), envelope, b"{}").unwrap();
        let desired = DesiredState {
            extensions: vec![DesiredExtension {
                secrets_version: Some(1),
                sealed_secrets: vec![sealed],
                ..flux_extension(1)
            }],
            ..Default::default()
        };
        agent.reconcile_extensions(&desired);
        let report = &agent.pending_extensions["flux"];
        assert_eq!(report.outcome, ApplyOutcome::Failed);
        assert_eq!(report.secrets_version, None);
        assert!(
            report
                .message
                .as_deref()
                .unwrap_or_default()
                .contains("cannot be opened")
        );
        assert!(agent.extension("flux").is_none());
        agent.pending_extensions.clear();
        agent.reconcile_extensions(&desired);
        assert!(
            agent.pending_extensions.is_empty(),
            "the failure is reported once per generation"
        );
    }

    #[test]
    fn a_retry_is_never_sooner_than_the_control_plane_asked() {
        let refused = |retry_after| ClientError::Status {
            status: reqwest::StatusCode::SERVICE_UNAVAILABLE,
            body: String::new(),
            retry_after,
        };
        let mut backoff = Backoff::new();
        for _ in 0..4 {
            let delay = backoff.after(&refused(Some(Duration::from_secs(5))));
            assert!(delay >= Duration::from_secs(5), "{delay:?}");
            assert!(
                delay <= Duration::from_millis(7500),
                "jittered by half at most: {delay:?}"
            );
        }
        backoff.reset();
        assert!(
            backoff.after(&refused(None)) <= Duration::from_millis(250),
            "without it, the backoff's own"
        );
    }

    #[tokio::test]
    async fn reports_refused_with_a_retry_after_wait_that_long_before_they_are_sent_again() {
        let sent = Arc::new(AtomicUsize::new(0));
        let counted = sent.clone();
        let app = axum::Router::new().route(
            &format!("{}/status", fluxplane_agent_protocol::agent::PREFIX),
            axum::routing::post(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                async {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        [("retry-after", "1")],
                        "busy",
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut agent = flaky_agent(&server).await;
        let configuration = DesiredConfiguration {
            name: "cfg".into(),
            generation: 1,
            ..Default::default()
        };
        let observed = Observation::only(ComplianceState::Compliant, None);
        agent.queue(report_of(&configuration, ApplyOutcome::Applied, observed, None));
        agent.send_reports().await;
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        assert!(
            agent.next_due() >= Instant::now() + Duration::from_millis(900),
            "the next round waits"
        );
        agent.send_reports().await;
        assert_eq!(sent.load(Ordering::SeqCst), 1, "not sent again before the time asked");
        tokio::time::sleep(Duration::from_millis(1100)).await;
        agent.send_reports().await;
        assert_eq!(sent.load(Ordering::SeqCst), 2, "then sent again");
        assert!(
            agent.pending_report("cfg").is_some(),
            "and still pending, refused again"
        );
    }

    #[test]
    fn backoff_grows_with_jitter_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::new();
        let first = backoff.next_delay();
        assert!(first <= Duration::from_millis(250) && first >= Duration::from_millis(125));
        for _ in 0..20 {
            assert!(backoff.next_delay() <= Duration::from_secs(30));
        }
        assert!(
            backoff.next_delay() >= Duration::from_secs(15),
            "it has reached the cap"
        );
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(250));
    }

    #[tokio::test(start_paused = true)]
    async fn what_the_cluster_runs_of_flux_goes_with_the_install_and_again_when_it_changes() {
        let cluster = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c";
        let identity = Identity::generate("http://127.0.0.1:9", cluster).unwrap().identity;
        let target = Flaky::default();
        let version = |v: &str| ExtensionStatus {
            code: Some("FluxVersion".into()),
            display_status: Some(v.into()),
            ..Default::default()
        };
        *target.flux.lock().unwrap() = vec![version("v2.6.0")];
        let mut agent = Agent::new(
            ControlPlane::new(identity).unwrap(),
            Box::new(target.clone()),
            Options::default(),
        )
        .await
        .unwrap();
        let desired = DesiredState {
            cluster_id: cluster.into(),
            revision: 1,
            extensions: vec![flux_extension(1)],
            ..Default::default()
        };
        agent.reconcile_extensions(&desired);
        agent.observe_extensions().await;
        let installed = agent.pending_extensions["flux"].clone();
        assert_eq!(installed.outcome, ApplyOutcome::Applied);
        assert_eq!(installed.statuses[0].display_status.as_deref(), Some("v2.6.0"));
        assert!(installed.statuses[0].time.is_some(), "stamped when seen");

        agent.pending_extensions.clear();
        tokio::time::advance(EXTENSION_CHECK).await;
        agent.observe_extensions().await;
        assert!(agent.pending_extensions.is_empty(), "unchanged: not reported again");

        *target.flux.lock().unwrap() = vec![version("v2.7.0")];
        agent.observe_extensions().await;
        assert!(agent.pending_extensions.is_empty(), "not read again before it is due");
        tokio::time::advance(EXTENSION_CHECK).await;
        agent.observe_extensions().await;
        let again = &agent.pending_extensions["flux"];
        assert_eq!((again.generation, again.outcome), (1, ApplyOutcome::Applied));
        assert_eq!(again.statuses[0].display_status.as_deref(), Some("v2.7.0"));
        assert_eq!(again.current_version, installed.current_version);
    }
}
