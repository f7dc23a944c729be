//! The lifecycle of what fluxplane stores, decided in one place: the states a configuration, its operation and
//! its cluster's agent can be in, what each write and report moves them to, and how long what a write creates lives
//! (generations waiting for their agent, sealed secrets waiting for delivery).
//!
//! Services call these transitions to build the records they write; the store calls them where a decision is made
//! inside a transaction (reports, expiry, rollouts). SQL that must name a state (a `WHERE` in a store statement, a
//! trigger's count) spells it as `as_str` does here: a test below reads the migrations and the store's SQL and fails
//! on any state name this module does not know.

use std::time::Duration;

use chrono::{DateTime, Timelike, Utc};
use fluxplane_agent_protocol::agent::{ApplyOutcome, ReportDisposition};
use fluxplane_agent_protocol::flux::{ComplianceState, FluxConfigurationSpec};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::ServeConfig;
use crate::error::ErrorDetail;

/// Provisioning state of a configuration: where the last write stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ProvisioningState {
    Succeeded,
    Failed,
    Canceled,
    Creating,
    Updating,
    Deleting,
}

impl ProvisioningState {
    pub const ALL: [ProvisioningState; 6] = [
        ProvisioningState::Succeeded,
        ProvisioningState::Failed,
        ProvisioningState::Canceled,
        ProvisioningState::Creating,
        ProvisioningState::Updating,
        ProvisioningState::Deleting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ProvisioningState::Succeeded => "Succeeded",
            ProvisioningState::Failed => "Failed",
            ProvisioningState::Canceled => "Canceled",
            ProvisioningState::Creating => "Creating",
            ProvisioningState::Updating => "Updating",
            ProvisioningState::Deleting => "Deleting",
        }
    }
}

impl TryFrom<String> for ProvisioningState {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == value)
            .ok_or_else(|| format!("unknown provisioning state '{value}'"))
    }
}

/// Where a long-running operation (a configuration's create, update or delete) stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationState {
    InProgress,
    Succeeded,
    Failed,
    /// A newer write took over before the agent applied this one.
    Canceled,
}

impl OperationState {
    pub const ALL: [OperationState; 4] = [
        OperationState::InProgress,
        OperationState::Succeeded,
        OperationState::Failed,
        OperationState::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OperationState::InProgress => "InProgress",
            OperationState::Succeeded => "Succeeded",
            OperationState::Failed => "Failed",
            OperationState::Canceled => "Canceled",
        }
    }
}

impl PartialEq<&str> for OperationState {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl TryFrom<String> for OperationState {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == value)
            .ok_or_else(|| format!("unknown operation state '{value}'"))
    }
}

/// What happened to a configuration, as its history records it (the history triggers of migrations 0010/0009 and
/// their successors write these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HistoryEvent {
    Created,
    Updated,
    Deleted,
    /// The agent found an object of the configuration deleted or changed in its cluster and wrote it back (recorded
    /// by `store::apply_reports`, not by a trigger).
    Restored,
}

impl HistoryEvent {
    pub const ALL: [HistoryEvent; 4] = [
        HistoryEvent::Created,
        HistoryEvent::Updated,
        HistoryEvent::Deleted,
        HistoryEvent::Restored,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            HistoryEvent::Created => "Created",
            HistoryEvent::Updated => "Updated",
            HistoryEvent::Deleted => "Deleted",
            HistoryEvent::Restored => "Restored",
        }
    }
}

impl TryFrom<String> for HistoryEvent {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|event| event.as_str() == value)
            .ok_or_else(|| format!("unknown history event '{value}'"))
    }
}

/// The error codes of operations the control plane ends itself.
pub mod failure {
    /// Undelivered secrets or an unpicked generation reached their time to live.
    pub const EXPIRED: &str = "Expired";
    /// The agent registered new keys while secrets sealed to its old ones were undelivered.
    pub const AGENT_KEY_CHANGED: &str = "AgentKeyChanged";
    /// The agent reported that it could not apply the generation.
    pub const APPLY_FAILED: &str = "FluxConfigurationFailed";
    /// With `waitForReconciliation`: the configuration was not reported Compliant within its
    /// `reconciliationWaitDuration`.
    pub const RECONCILIATION_TIMED_OUT: &str = "ReconciliationTimedOut";
    /// The agent reported that it could not install an extension with its settings.
    pub const EXTENSION_FAILED: &str = "ExtensionInstallFailed";
}

/// How long a write with `waitForReconciliation` and no `reconciliationWaitDuration` waits for Compliance.
pub const DEFAULT_RECONCILIATION_WAIT: Duration = Duration::from_secs(3600);

/// When the operation of a write of `spec` made at `now` must have seen the configuration Compliant: `None` unless
/// the configuration asks to wait (`waitForReconciliation`), in which case its operation ends with the first
/// Compliant report (or a failure), not with the first report.
pub fn reconcile_by(spec: &FluxConfigurationSpec, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    if spec.wait_for_reconciliation != Some(true) {
        return None;
    }
    let wait = spec
        .reconciliation_wait_duration
        .as_deref()
        .and_then(|text| iso8601::duration(text).ok())
        .map_or(DEFAULT_RECONCILIATION_WAIT, Duration::from);
    Some(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::MAX))
}

/// When a request to re-check a source at once (a Git push, a `reconcile` action) made at `now` is recorded: to
/// the millisecond, as agents read it (`reconcileRequestedAt`), so that what is stored is what they compare.
pub fn reconcile_requested(now: DateTime<Utc>) -> DateTime<Utc> {
    now.with_nanosecond(now.timestamp_subsec_millis() * 1_000_000)
        .unwrap_or(now)
}

/// `reconcileRequestedAt` as agents receive it.
pub fn reconcile_requested_text(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Connectivity of a cluster's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ConnectivityStatus {
    Connecting,
    Connected,
    Offline,
    Expired,
}

impl ConnectivityStatus {
    pub const ALL: [ConnectivityStatus; 4] = [
        ConnectivityStatus::Connecting,
        ConnectivityStatus::Connected,
        ConnectivityStatus::Offline,
        ConnectivityStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ConnectivityStatus::Connecting => "Connecting",
            ConnectivityStatus::Connected => "Connected",
            ConnectivityStatus::Offline => "Offline",
            ConnectivityStatus::Expired => "Expired",
        }
    }
}

/// Where an alert's delivery to a receiver stands (`alert_deliveries.state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum DeliveryState {
    /// Waiting for its first attempt or its next one.
    Pending,
    /// A replica holds its lease and is sending it; if that replica dies, the lease ends and it is sent again.
    Sending,
    Delivered,
    /// Refused by the receiver (a 4xx that retrying cannot fix), or given up after its retries.
    Failed,
}

impl DeliveryState {
    pub const ALL: [DeliveryState; 4] = [
        DeliveryState::Pending,
        DeliveryState::Sending,
        DeliveryState::Delivered,
        DeliveryState::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "Pending",
            DeliveryState::Sending => "Sending",
            DeliveryState::Delivered => "Delivered",
            DeliveryState::Failed => "Failed",
        }
    }
}

impl TryFrom<String> for DeliveryState {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::ALL
            .into_iter()
            .find(|state| state.as_str() == value)
            .ok_or_else(|| format!("unknown delivery state '{value}'"))
    }
}

/// A connected cluster whose agent has been silent for `offline_after` is Offline when read, at once: the
/// dashboards' maintenance marks it Offline in the database too (for the rollups), but only every few seconds.
pub fn connectivity(
    status: &str,
    last_connectivity_time: Option<DateTime<Utc>>,
    offline_after: std::time::Duration,
) -> String {
    if status == ConnectivityStatus::Connected.as_str() && !agent_online(last_connectivity_time, offline_after) {
        ConnectivityStatus::Offline.as_str().to_owned()
    } else {
        status.to_owned()
    }
}

/// Whether the cluster's agent has been heard from within `offline_after`.
pub fn agent_online(last: Option<DateTime<Utc>>, offline_after: std::time::Duration) -> bool {
    last.is_some_and(|last| chrono::Duration::from_std(offline_after).is_ok_and(|limit| Utc::now() - last <= limit))
}

/// What writes made for policy assignments need to know beside the assignment.
#[derive(Debug, Clone, Default)]
pub struct ManagedWrite {
    /// When a generation written for an assignment fails unless its agent has picked it up.
    pub generation_expires_at: Option<DateTime<Utc>>,
}

/// The messages a configuration the control plane failed shows.
#[derive(Debug, Clone)]
pub struct ExpiryMessages {
    /// Undelivered secrets reached their time to live.
    pub secrets: String,
    /// The agent did not pick the generation up in time.
    pub pending: String,
    /// The agent's keys changed while secrets sealed to the old ones were undelivered.
    pub rotated: String,
    /// An extension's protected settings reached their time to live undelivered.
    pub extension_secrets: String,
    /// The agent did not pick an extension's change up in time.
    pub extension_pending: String,
}
/// How long what a write creates lives unless its agent acts on it (the 48-hour rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    /// Sealed secrets not yet delivered to the agent.
    pub secrets: Duration,
    /// A generation its agent has not picked up: it fails after this long.
    pub pending: Duration,
}

impl Lifetimes {
    pub fn of(config: &ServeConfig) -> Self {
        Self {
            secrets: config.secret_ttl,
            pending: config.pending_ttl,
        }
    }

    /// When a generation written at `now` fails unless picked up.
    pub fn pending_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        after(now, self.pending)
    }

    /// When secrets sealed at `now` are deleted unless delivered.
    pub fn secrets_until(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        after(now, self.secrets)
    }

    /// What writes made for policy assignments at `now` tell the store.
    pub fn managed_write(&self, now: DateTime<Utc>) -> ManagedWrite {
        ManagedWrite {
            generation_expires_at: self.pending_until(now),
        }
    }

    /// What the configurations the control plane fails itself say, naming these lifetimes.
    pub fn messages(&self) -> ExpiryMessages {
        let secret_ttl = humantime::format_duration(self.secrets);
        let pending_ttl = humantime::format_duration(self.pending);
        ExpiryMessages {
            secrets: format!(
                "The protected settings expired before the cluster's agent received them (secrets are kept at most \
                 {secret_ttl}). Apply the protected settings again (PUT the configuration with them)."
            ),
            rotated: "The cluster's agent was registered again (its keys changed) before it received the protected \
                      settings sealed to its old key, which cannot be opened any more. Apply the protected settings \
                      again (PUT the configuration with them)."
                .to_owned(),
            pending: format!(
                "The cluster's agent did not pick up this change within {pending_ttl}: the cluster is disconnected or \
                 its agent is failing. Apply the configuration again once the cluster is connected."
            ),
            extension_secrets: format!(
                "The protected settings expired before the cluster's agent received them (secrets are kept at most \
                 {secret_ttl}). Apply them again (PUT or PATCH the extension with configurationProtectedSettings)."
            ),
            extension_pending: format!(
                "The cluster's agent did not pick up this change of the extension within {pending_ttl}: the cluster \
                 is disconnected or its agent is failing. Apply the extension again once the cluster is connected."
            ),
        }
    }
}

/// `now + limit`, or never when the limit is beyond what a timestamp holds.
fn after(now: DateTime<Utc>, limit: Duration) -> Option<DateTime<Utc>> {
    chrono::Duration::from_std(limit)
        .ok()
        .and_then(|d| now.checked_add_signed(d))
}

/// The lifecycle fields of a configuration's next generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stage {
    pub generation: i64,
    pub provisioning_state: ProvisioningState,
    pub compliance_state: ComplianceState,
    /// When the generation fails unless its agent picks it up.
    pub generation_expires_at: Option<DateTime<Utc>>,
}

/// A configuration written by a user (`current`: its last generation and compliance, `None` when it is new): a new
/// generation, pending until its agent reports, failing if not picked up in time.
pub fn written(current: Option<i64>, now: DateTime<Utc>, lifetimes: &Lifetimes) -> Stage {
    Stage {
        generation: current.map_or(1, |generation| generation + 1),
        provisioning_state: match current {
            None => ProvisioningState::Creating,
            Some(_) => ProvisioningState::Updating,
        },
        compliance_state: ComplianceState::Pending,
        generation_expires_at: lifetimes.pending_until(now),
    }
}

/// A configuration whose deletion starts: a new generation the agent completes by removing it. A deletion never
/// expires: the configuration goes once its agent confirms or the user forces it; its compliance stays as it was.
pub fn deleting(generation: i64, compliance_state: ComplianceState) -> Stage {
    Stage {
        generation: generation + 1,
        provisioning_state: ProvisioningState::Deleting,
        compliance_state,
        generation_expires_at: None,
    }
}

/// The secret fields a write brings, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretsInput {
    /// A PUT without secrets: the configuration has none any more.
    ReplaceWithNone,
    /// A PUT with secrets: the whole set.
    Replace,
    /// A PATCH that does not touch secrets.
    Untouched,
    /// A PATCH of some secrets.
    Merge,
}

/// What a write does to the sealed secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretsStep {
    Keep,
    Clear,
    /// Seal the set as a replacement.
    Replace,
    /// Seal the patch over the version `base` the agent holds or will hold.
    Merge {
        base: Option<i64>,
    },
}

/// The secret set a configuration holds after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secrets {
    pub step: SecretsStep,
    /// The version of the set the cluster should hold: the generation that last wrote secrets.
    pub version: Option<i64>,
    /// When undelivered changes are deleted: with the oldest of them.
    pub expire_at: Option<DateTime<Utc>>,
}

/// The secrets after a write of `generation` bringing `input`, over `held` (the version and expiry the
/// configuration held before, `None` when it is new).
pub fn secrets(
    held: Option<(Option<i64>, Option<DateTime<Utc>>)>,
    input: SecretsInput,
    generation: i64,
    now: DateTime<Utc>,
    lifetimes: &Lifetimes,
) -> Secrets {
    let (version, expire_at) = held.unwrap_or_default();
    match input {
        // a version is kept while a secret set is held: without one, nothing can be waiting to be cleared
        SecretsInput::ReplaceWithNone => Secrets {
            step: if version.is_some() {
                SecretsStep::Clear
            } else {
                SecretsStep::Keep
            },
            version: None,
            expire_at: None,
        },
        SecretsInput::Replace => Secrets {
            step: SecretsStep::Replace,
            version: Some(generation),
            expire_at: lifetimes.secrets_until(now),
        },
        SecretsInput::Untouched => Secrets {
            step: SecretsStep::Keep,
            version,
            expire_at,
        },
        SecretsInput::Merge => Secrets {
            step: SecretsStep::Merge { base: version },
            version: Some(generation),
            expire_at: expire_at.or_else(|| lifetimes.secrets_until(now)),
        },
    }
}

/// What an agent's report of applying a generation sets: the configuration's provisioning state, and how its
/// operation ends.
pub fn reported(
    outcome: ApplyOutcome,
    message: Option<&str>,
) -> (ProvisioningState, OperationState, Option<ErrorDetail>) {
    match outcome {
        ApplyOutcome::Applied | ApplyOutcome::Removed => {
            (ProvisioningState::Succeeded, OperationState::Succeeded, None)
        }
        ApplyOutcome::Failed => (
            ProvisioningState::Failed,
            OperationState::Failed,
            Some(ErrorDetail::new(
                failure::APPLY_FAILED,
                message
                    .unwrap_or("the agent could not apply the configuration")
                    .to_owned(),
            )),
        ),
    }
}

/// What an agent's report of installing an extension's generation sets: its provisioning state, and how its
/// operation ends.
pub fn extension_reported(
    outcome: ApplyOutcome,
    message: Option<&str>,
) -> (ProvisioningState, OperationState, Option<ErrorDetail>) {
    match outcome {
        ApplyOutcome::Applied | ApplyOutcome::Removed => {
            (ProvisioningState::Succeeded, OperationState::Succeeded, None)
        }
        ApplyOutcome::Failed => (
            ProvisioningState::Failed,
            OperationState::Failed,
            Some(ErrorDetail::new(
                failure::EXTENSION_FAILED,
                message
                    .unwrap_or("the agent could not install the extension")
                    .to_owned(),
            )),
        ),
    }
}

/// Why a Flux configuration may not be written on a cluster, from the state of its Flux extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FluxExtensionRefusal {
    /// The extension is being deleted.
    BeingDeleted,
    /// The cluster has no Flux extension but holds configurations: it was deleted after they were written.
    NotInstalled,
}

/// Whether a Flux configuration may be written on a cluster whose Flux extension is in `extension` (`None`: it has
/// none) and which holds configurations or not. A cluster's first configuration brings the extension with it (the
/// store creates it in the same transaction), as Azure's tools install it; once deleted, the extension must be
/// installed again before configurations change, as Azure refuses them without it.
pub fn flux_extension_gate(
    extension: Option<ProvisioningState>,
    has_configurations: bool,
) -> Result<(), FluxExtensionRefusal> {
    match extension {
        Some(ProvisioningState::Deleting) => Err(FluxExtensionRefusal::BeingDeleted),
        Some(_) => Ok(()),
        None if has_configurations => Err(FluxExtensionRefusal::NotInstalled),
        None => Ok(()),
    }
}

/// How a report that changed nothing is answered: the configuration still exists at another generation (stale),
/// or is gone.
pub fn unrecorded(current_generation: Option<i64>) -> ReportDisposition {
    match current_generation {
        None => ReportDisposition::Unknown,
        Some(_) => ReportDisposition::Stale,
    }
}

/// Whether a configuration whose agent reported on its current generation counts as failed for a rollout (which
/// halts on failures) or as compliant (which lets the next batch go).
pub fn rollout_verdict(provisioning_state: &str, compliance_state: &str) -> (bool, bool) {
    let failed = provisioning_state == ProvisioningState::Failed.as_str()
        || compliance_state == ComplianceState::NonCompliant.as_str();
    let compliant = !failed && compliance_state == ComplianceState::Compliant.as_str();
    (failed, compliant)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::path::Path;

    use super::*;

    fn lifetimes() -> Lifetimes {
        Lifetimes {
            secrets: Duration::from_secs(48 * 3600),
            pending: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_reconcile_request_is_kept_to_the_millisecond_agents_read() {
        let now = DateTime::parse_from_rfc3339("2026-11-21T18:20:05.123456789Z")
            .unwrap()
            .to_utc();
        let at = reconcile_requested(now);
        assert_eq!(reconcile_requested_text(at), "2026-11-21T18:20:05.123Z");
        assert_eq!(
            DateTime::parse_from_rfc3339(&reconcile_requested_text(at))
                .unwrap()
                .to_utc(),
            at,
            "what agents read is what is stored"
        );
    }

    #[test]
    fn only_a_configuration_that_asks_to_wait_for_reconciliation_waits_and_for_as_long_as_it_says() {
        let now = Utc::now();
        let mut spec = FluxConfigurationSpec::default();
        assert_eq!(reconcile_by(&spec, now), None);
        spec.wait_for_reconciliation = Some(true);
        assert_eq!(reconcile_by(&spec, now), Some(now + chrono::Duration::hours(1)));
        spec.reconciliation_wait_duration = Some("PT5M".into());
        assert_eq!(reconcile_by(&spec, now), Some(now + chrono::Duration::minutes(5)));
        spec.wait_for_reconciliation = Some(false);
        assert_eq!(reconcile_by(&spec, now), None);
    }

    #[test]
    fn a_write_starts_a_pending_generation_that_expires_and_a_deletion_one_that_does_not() {
        let now = Utc::now();
        let created = written(None, now, &lifetimes());
        assert_eq!(created.generation, 1);
        assert_eq!(created.provisioning_state, ProvisioningState::Creating);
        assert_eq!(created.compliance_state, ComplianceState::Pending);
        assert_eq!(created.generation_expires_at, Some(now + chrono::Duration::hours(1)));
        let updated = written(Some(4), now, &lifetimes());
        assert_eq!(
            (updated.generation, updated.provisioning_state),
            (5, ProvisioningState::Updating)
        );
        let deleted = deleting(5, ComplianceState::Compliant);
        assert_eq!(
            deleted,
            Stage {
                generation: 6,
                provisioning_state: ProvisioningState::Deleting,
                compliance_state: ComplianceState::Compliant,
                generation_expires_at: None,
            }
        );
    }

    #[test]
    fn secrets_take_the_generation_that_wrote_them_and_expire_with_the_oldest_undelivered_change() {
        let now = Utc::now();
        let l = lifetimes();
        let replaced = secrets(None, SecretsInput::Replace, 1, now, &l);
        assert_eq!(replaced.step, SecretsStep::Replace);
        assert_eq!(replaced.version, Some(1));
        assert_eq!(replaced.expire_at, Some(now + chrono::Duration::hours(48)));
        let earlier = now - chrono::Duration::hours(5);
        let merged = secrets(Some((Some(1), Some(earlier))), SecretsInput::Merge, 2, now, &l);
        assert_eq!(merged.step, SecretsStep::Merge { base: Some(1) });
        assert_eq!((merged.version, merged.expire_at), (Some(2), Some(earlier)));
        let untouched = secrets(Some((Some(2), Some(earlier))), SecretsInput::Untouched, 3, now, &l);
        assert_eq!((untouched.step, untouched.version), (SecretsStep::Keep, Some(2)));
        assert_eq!(
            secrets(Some((Some(2), None)), SecretsInput::ReplaceWithNone, 4, now, &l).step,
            SecretsStep::Clear
        );
        assert_eq!(
            secrets(Some((None, None)), SecretsInput::ReplaceWithNone, 4, now, &l).step,
            SecretsStep::Keep,
            "nothing held, nothing to clear"
        );
    }

    #[test]
    fn reports_end_operations_and_failures_say_why() {
        assert_eq!(
            reported(ApplyOutcome::Applied, None),
            (ProvisioningState::Succeeded, OperationState::Succeeded, None)
        );
        let (state, operation, error) = reported(ApplyOutcome::Failed, Some("kustomize build failed"));
        assert_eq!((state, operation), (ProvisioningState::Failed, OperationState::Failed));
        let error = error.unwrap();
        assert_eq!(
            (error.code.as_str(), error.message.as_str()),
            ("FluxConfigurationFailed", "kustomize build failed")
        );
        assert_eq!(unrecorded(Some(3)), ReportDisposition::Stale);
        assert_eq!(unrecorded(None), ReportDisposition::Unknown);
        assert_eq!(rollout_verdict("Succeeded", "Compliant"), (false, true));
        assert_eq!(rollout_verdict("Failed", "Compliant"), (true, false));
        assert_eq!(rollout_verdict("Succeeded", "Non-Compliant"), (true, false));
        assert_eq!(rollout_verdict("Succeeded", "Pending"), (false, false));
    }

    #[test]
    fn a_configuration_waits_for_a_flux_extension_being_deleted_or_deleted_but_not_for_a_first_one() {
        assert_eq!(
            flux_extension_gate(None, false),
            Ok(()),
            "the first configuration brings it"
        );
        assert_eq!(flux_extension_gate(Some(ProvisioningState::Creating), true), Ok(()));
        assert_eq!(flux_extension_gate(Some(ProvisioningState::Failed), true), Ok(()));
        assert_eq!(
            flux_extension_gate(Some(ProvisioningState::Deleting), false),
            Err(FluxExtensionRefusal::BeingDeleted)
        );
        assert_eq!(flux_extension_gate(None, true), Err(FluxExtensionRefusal::NotInstalled));
    }

    #[test]
    fn an_extension_report_ends_its_operation_and_a_failure_says_why() {
        assert_eq!(
            extension_reported(ApplyOutcome::Applied, None),
            (ProvisioningState::Succeeded, OperationState::Succeeded, None)
        );
        let (state, operation, error) = extension_reported(ApplyOutcome::Failed, Some("no key"));
        assert_eq!((state, operation), (ProvisioningState::Failed, OperationState::Failed));
        assert_eq!(error.unwrap().code, failure::EXTENSION_FAILED);
    }

    #[test]
    fn a_silent_agent_is_offline_when_read() {
        let minute = Duration::from_secs(60);
        assert!(agent_online(Some(Utc::now()), minute));
        assert!(!agent_online(Some(Utc::now() - chrono::Duration::minutes(2)), minute));
        assert!(!agent_online(None, minute));
        assert_eq!(connectivity("Connected", None, minute), "Offline");
        assert_eq!(connectivity("Connecting", None, minute), "Connecting");
    }

    /// Every state name the SQL spells: in the migrations of both engines and in the store's statements.
    fn state_names_in_sql() -> BTreeSet<(String, String)> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = Vec::new();
        for dir in ["../migrations/postgres", "../migrations/sqlite", "src/store"] {
            for entry in std::fs::read_dir(root.join(dir)).unwrap() {
                let path = entry.unwrap().path();
                if path.file_name().is_some_and(|n| n != "tests.rs") {
                    files.push(path);
                }
            }
        }
        let mut names = BTreeSet::new();
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            for quoted in text.split('\'').skip(1).step_by(2) {
                // a state name: a capitalised word, possibly hyphenated (Non-Compliant); not a keyword (TG_OP's
                // 'DELETE')
                let looks_like_state = quoted.len() > 2
                    && quoted.starts_with(|c: char| c.is_ascii_uppercase())
                    && quoted.chars().any(|c| c.is_ascii_lowercase())
                    && quoted.chars().all(|c| c.is_ascii_alphabetic() || c == '-');
                if looks_like_state {
                    names.insert((quoted.to_owned(), path.display().to_string()));
                }
            }
        }
        names
    }

    #[test]
    fn the_sql_names_only_states_of_this_module() {
        let known: BTreeSet<&str> = ProvisioningState::ALL
            .iter()
            .map(|s| s.as_str())
            .chain(ComplianceState::ALL.iter().map(|s| s.as_str()))
            .chain(OperationState::ALL.iter().map(|s| s.as_str()))
            .chain(ConnectivityStatus::ALL.iter().map(|s| s.as_str()))
            .chain(HistoryEvent::ALL.iter().map(|e| e.as_str()))
            .chain(DeliveryState::ALL.iter().map(|s| s.as_str()))
            .chain([failure::EXPIRED, failure::AGENT_KEY_CHANGED, failure::APPLY_FAILED])
            .collect();
        let found = state_names_in_sql();
        assert!(found.len() > 10, "the scan finds the SQL's states: {found:?}");
        let unknown: Vec<_> = found
            .iter()
            .filter(|(name, _)| !known.contains(name.as_str()))
            .collect();
        assert!(
            unknown.is_empty(),
            "SQL names states the lifecycle does not know: {unknown:?}"
        );
    }
}
