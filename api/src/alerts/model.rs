//! What alerts are, and the pure decisions on them: the receivers' types and what their settings may hold, the
//! rules (which events, narrowed how, how often), the events an alert can be about and how a queued fact becomes
//! one, which rules an alert matches, the minimum interval per rule and subject, the receivers' rate limits, and
//! the retries. The store applies these inside its transactions (`store::alerts`); the outbox runs them
//! (`alerts::outbox`).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::error::Problems;
use crate::fleet::selector::LabelSelector;

/// Longest receiver URL accepted.
pub const MAX_URL_LENGTH: usize = 2048;
/// A signing key's length bounds, in characters: at least the 256 bits of the HMAC's hash, as RFC 2104 advises.
pub const MIN_SIGNING_KEY: usize = 32;
pub const MAX_SIGNING_KEY: usize = 256;
/// A receiver's rate limit bounds and default, in messages per minute (the default stays under Slack's one message
/// per second per webhook).
pub const MIN_RATE: u32 = 1;
pub const MAX_RATE: u32 = 600_000;
pub const DEFAULT_RATE: u32 = 60;
/// A rule's minimum interval per subject, in seconds: bounds and default.
pub const MAX_INTERVAL_SECONDS: u32 = 86_400;
pub const DEFAULT_INTERVAL_SECONDS: u32 = 300;
/// Most receivers one rule sends to, and most event types it lists (every one).
pub const MAX_RULE_RECEIVERS: usize = 10;

/// Where a receiver's messages go, and in what shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ReceiverKind {
    /// Any HTTP endpoint: the alert as JSON, signed with HMAC-SHA256 (`X-Fluxplane-Signature`).
    Webhook,
    /// A Slack incoming webhook: `text` and Block Kit `blocks`.
    Slack,
    /// A Microsoft Teams Workflows webhook: an Adaptive Card in a `message` envelope.
    MicrosoftTeams,
}

impl ReceiverKind {
    /// Whether the receiver signs its messages (and so needs a signing key).
    pub fn signs(self) -> bool {
        self == ReceiverKind::Webhook
    }
}

/// How much an alert matters, as the rule says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
pub enum Severity {
    Info,
    #[default]
    Warning,
    Error,
    Critical,
}

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ToSchema)]
pub enum EventType {
    /// A configuration's agent reported it Non-Compliant, where it was last settled Compliant or never settled.
    BecameNonCompliant,
    /// A configuration last settled Non-Compliant is reported Compliant again.
    BecameCompliant,
    /// A configuration's provisioning turned Failed (the agent could not apply it, or the control plane failed it).
    ProvisioningFailed,
    /// A policy assignment's rollout halted (a batch failed or timed out, or the circuit breaker tripped).
    RolloutHalted,
    /// A halted rollout rolled its clusters back to the last template Compliant everywhere.
    RolloutRolledBack,
    /// A rollout reached every cluster of its assignment.
    RolloutCompleted,
    /// A cluster's agent fell silent past `--offline-after`.
    ClusterOffline,
    /// The agent of a cluster marked Offline was heard from again.
    ClusterReconnected,
    /// Undelivered protected settings reached their time to live, failing the configuration (or extension).
    SecretsExpired,
    /// A change the cluster's agent did not pick up within `--pending-ttl` failed.
    ChangeExpired,
}

impl EventType {
    pub const ALL: [EventType; 10] = [
        EventType::BecameNonCompliant,
        EventType::BecameCompliant,
        EventType::ProvisioningFailed,
        EventType::RolloutHalted,
        EventType::RolloutRolledBack,
        EventType::RolloutCompleted,
        EventType::ClusterOffline,
        EventType::ClusterReconnected,
        EventType::SecretsExpired,
        EventType::ChangeExpired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventType::BecameNonCompliant => "BecameNonCompliant",
            EventType::BecameCompliant => "BecameCompliant",
            EventType::ProvisioningFailed => "ProvisioningFailed",
            EventType::RolloutHalted => "RolloutHalted",
            EventType::RolloutRolledBack => "RolloutRolledBack",
            EventType::RolloutCompleted => "RolloutCompleted",
            EventType::ClusterOffline => "ClusterOffline",
            EventType::ClusterReconnected => "ClusterReconnected",
            EventType::SecretsExpired => "SecretsExpired",
            EventType::ChangeExpired => "ChangeExpired",
        }
    }

    /// The rollout event (`rollout::events`) this type alerts on, if any.
    pub fn of_rollout(event: &str) -> Option<Self> {
        match event {
            "Halted" => Some(EventType::RolloutHalted),
            "RolledBack" => Some(EventType::RolloutRolledBack),
            "Completed" => Some(EventType::RolloutCompleted),
            _ => None,
        }
    }
}

/// What may be read of a receiver; the URL and the signing key are kept sealed beside it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReceiverSpec {
    #[serde(rename = "type")]
    pub kind: ReceiverKind,
    /// The host of the URL (with its port if it names one): enough to tell receivers apart, never the path, which
    /// is the secret of a Slack or Teams webhook.
    pub url_host: String,
    pub rate_limit_per_minute: u32,
}

/// A receiver URL, checked: `http` or `https`, a host, no fragment, not too long.
#[derive(Clone, PartialEq, Eq)]
pub struct ReceiverUrl(url::Url);

impl std::fmt::Debug for ReceiverUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // the path and query are a webhook's secret
        write!(f, "ReceiverUrl({})", self.host())
    }
}

impl ReceiverUrl {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_URL_LENGTH {
            return Err(format!("is longer than {MAX_URL_LENGTH} characters"));
        }
        let url = url::Url::parse(text).map_err(|err| format!("is not a URL ({err})"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("must be an http:// or https:// URL".to_owned());
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err("must name a host".to_owned());
        }
        if url.fragment().is_some() {
            return Err("may not have a fragment (#...): it is never sent".to_owned());
        }
        Ok(Self(url))
    }

    /// The host, and the port if the URL names one.
    pub fn host(&self) -> String {
        let host = self.0.host_str().unwrap_or_default();
        match self.0.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// A signing key: printable ASCII, `MIN_SIGNING_KEY` to `MAX_SIGNING_KEY` characters; the HMAC key is its bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey(String);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(<redacted>)")
    }
}

impl SigningKey {
    pub fn parse(text: &str) -> Result<Self, String> {
        let length = text.chars().count();
        if !(MIN_SIGNING_KEY..=MAX_SIGNING_KEY).contains(&length) {
            return Err(format!(
                "must be {MIN_SIGNING_KEY} to {MAX_SIGNING_KEY} characters (it has {length})"
            ));
        }
        if !text.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("may hold printable ASCII characters only, no spaces".to_owned());
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// An alert rule as written and stored: which events, narrowed how, how bad, how often per subject, to whom.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleSpec {
    /// The events the rule sends (at least one).
    pub events: Vec<EventType>,
    /// The ARM ids of the `alertReceivers` to send to (1 to 10, in the rule's subscription).
    pub receiver_ids: Vec<String>,
    /// How much its alerts matter (default Warning).
    #[serde(default)]
    pub severity: Severity,
    /// Only events about the clusters of this cluster group (its ARM id, in the rule's subscription) and their
    /// configurations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_group_id: Option<String>,
    /// Only events about the clusters whose tags this selector matches, and their configurations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_selector: Option<LabelSelector>,
    /// Only events of this policy assignment (its ARM id): its rollouts and the configurations it manages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_assignment_id: Option<String>,
    /// Only events about the Flux configurations of this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    /// At most one message per subject (a configuration, a cluster, an assignment) in this many seconds (0 to
    /// 86400, default 300); what happens meanwhile is counted into the next message.
    #[serde(default = "default_interval")]
    pub minimum_interval_in_seconds: u32,
    /// A disabled rule sends nothing (default true).
    #[serde(default = "enabled")]
    pub enabled: bool,
}

fn default_interval() -> u32 {
    DEFAULT_INTERVAL_SECONDS
}

fn enabled() -> bool {
    true
}

impl RuleSpec {
    /// Records every problem of the rule's own fields (what needs the store, the group and the receivers, is
    /// checked by the service).
    pub fn validate(&self, p: &mut Problems) {
        if self.events.is_empty() {
            p.add("properties.events", "name at least one event type");
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(twice) = self.events.iter().find(|e| !seen.insert(**e)) {
            p.add("properties.events", format!("lists {} twice", twice.as_str()));
        }
        if self.receiver_ids.is_empty() || self.receiver_ids.len() > MAX_RULE_RECEIVERS {
            p.add(
                "properties.receiverIds",
                format!("name 1 to {MAX_RULE_RECEIVERS} receivers"),
            );
        }
        if let Some(selector) = &self.cluster_selector {
            selector.validate("properties.clusterSelector", p);
        }
        if let Some(name) = &self.configuration_name
            && crate::arm::ids::ConfigurationName::parse(name).is_err()
        {
            p.add(
                "properties.configurationName",
                format!("'{name}' is not a valid Flux configuration name"),
            );
        }
        if self.minimum_interval_in_seconds > MAX_INTERVAL_SECONDS {
            p.add(
                "properties.minimumIntervalInSeconds",
                format!("at most {MAX_INTERVAL_SECONDS} (a day)"),
            );
        }
    }

    pub fn minimum_interval(&self) -> Duration {
        Duration::from_secs(u64::from(self.minimum_interval_in_seconds))
    }
}

/// An event the database queued for the dispatcher (`alert_events`), as the store reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueuedEvent {
    pub id: i64,
    pub at: DateTime<Utc>,
    /// status, connectivity, rollout or expiry
    pub kind: String,
    pub subscription_key: String,
    pub resource_group_key: String,
    pub cluster_id: Option<i64>,
    pub cluster_path: Option<String>,
    pub name: Option<String>,
    pub policy_assignment: String,
    #[sqlx(json)]
    pub facts: Value,
}

/// What the database records of a status transition that can alert (migrations 0019/0017).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusFacts {
    compliance_state: String,
    provisioning_state: String,
    settled_before: Option<String>,
    provisioning_before: Option<String>,
    generation: i64,
    commit_id: Option<String>,
    message: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConnectivityFacts {
    status: String,
    before: String,
    last_connectivity_time: Option<String>,
}

/// What the store records of a rollout transition and of an expiry.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutFacts {
    pub event: String,
    pub generation: i64,
    /// 1-based
    pub batch: i64,
    pub batches: i64,
    pub message: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExpiryFacts {
    pub secrets: bool,
    pub generation: i64,
    pub message: String,
}

/// One alert: an event about one subject, before rules and receivers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Alert {
    #[serde(rename = "type")]
    pub event: EventType,
    pub time: DateTime<Utc>,
    /// The ARM id of what it is about: a configuration, an extension, a cluster or a policy assignment.
    pub subject: String,
    /// One line saying what happened.
    pub summary: String,
    /// The ARM id of the cluster concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_assignment_id: Option<String>,
    /// The states, generation, commit and message as the event recorded them.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub details: serde_json::Map<String, Value>,
    #[serde(skip)]
    pub scope: AlertScope,
}

/// Where an alert happened, for the rules' narrowing; never sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AlertScope {
    pub subscription_key: String,
    pub resource_group_key: String,
    /// The store id of the cluster concerned.
    pub cluster: Option<i64>,
}

fn cluster_arm_id(path: &str) -> String {
    let mut parts = path.splitn(3, '/');
    let (s, rg, name) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    format!("/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Kubernetes/connectedClusters/{name}")
}

/// The alerts a queued event is: none when it turns out to be no transition an alert is about (a first Compliant
/// report, a cluster connecting for the first time, a rollout batch starting), one or two otherwise (a report can
/// turn a configuration Non-Compliant and its provisioning Failed at once). An event whose facts do not read is
/// logged and dropped: it cannot become readable later.
pub fn classify(queued: &QueuedEvent) -> Vec<Alert> {
    let cluster_id = queued.cluster_path.as_deref().map(cluster_arm_id);
    let scope = AlertScope {
        subscription_key: queued.subscription_key.clone(),
        resource_group_key: queued.resource_group_key.clone(),
        cluster: queued.cluster_id,
    };
    let assignment = Some(queued.policy_assignment.clone()).filter(|a| !a.is_empty());
    let alert = |event: EventType, subject: String, summary: String, details: serde_json::Map<String, Value>| Alert {
        event,
        time: queued.at,
        subject,
        summary,
        cluster_id: cluster_id.clone(),
        configuration_name: None,
        policy_assignment_id: assignment.clone(),
        details,
        scope: scope.clone(),
    };
    let unreadable = |err: serde_json::Error| {
        tracing::warn!(event = queued.id, kind = %queued.kind, error = %err, "an alert event's facts do not read; dropped");
        Vec::new()
    };
    match queued.kind.as_str() {
        "status" => {
            let facts: StatusFacts = match serde_json::from_value(queued.facts.clone()) {
                Ok(facts) => facts,
                Err(err) => return unreadable(err),
            };
            let (Some(cluster), Some(name)) = (cluster_id.as_deref(), queued.name.as_deref()) else {
                return Vec::new();
            };
            let subject = format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{name}");
            let cluster_name = cluster.rsplit('/').next().unwrap_or_default();
            let mut details = serde_json::Map::new();
            details.insert("complianceState".into(), facts.compliance_state.clone().into());
            details.insert("provisioningState".into(), facts.provisioning_state.clone().into());
            details.insert("generation".into(), facts.generation.into());
            if let Some(commit) = &facts.commit_id {
                details.insert("commitId".into(), commit.clone().into());
            }
            if let Some(message) = &facts.message {
                details.insert("message".into(), message.clone().into());
            }
            let mut out = Vec::new();
            let compliance = facts.compliance_state.as_str();
            let settled = facts.settled_before.as_deref();
            if compliance == "Non-Compliant" && settled != Some("Non-Compliant") {
                out.push(alert(
                    EventType::BecameNonCompliant,
                    subject.clone(),
                    format!("Flux configuration '{name}' on cluster '{cluster_name}' is Non-Compliant"),
                    details.clone(),
                ));
            }
            if compliance == "Compliant" && settled == Some("Non-Compliant") {
                out.push(alert(
                    EventType::BecameCompliant,
                    subject.clone(),
                    format!("Flux configuration '{name}' on cluster '{cluster_name}' is Compliant again"),
                    details.clone(),
                ));
            }
            if facts.provisioning_state == "Failed" && facts.provisioning_before.as_deref() != Some("Failed") {
                out.push(alert(
                    EventType::ProvisioningFailed,
                    subject,
                    format!("Flux configuration '{name}' on cluster '{cluster_name}' failed to provision"),
                    details,
                ));
            }
            for a in &mut out {
                a.configuration_name = Some(name.to_owned());
            }
            out
        }
        "connectivity" => {
            let facts: ConnectivityFacts = match serde_json::from_value(queued.facts.clone()) {
                Ok(facts) => facts,
                Err(err) => return unreadable(err),
            };
            let Some(cluster) = cluster_id.clone() else {
                return Vec::new();
            };
            let cluster_name = cluster.rsplit('/').next().unwrap_or_default().to_owned();
            let event = match (facts.before.as_str(), facts.status.as_str()) {
                ("Connected", "Offline") => EventType::ClusterOffline,
                ("Offline", "Connected") => EventType::ClusterReconnected,
                _ => return Vec::new(),
            };
            let summary = match event {
                EventType::ClusterOffline => format!("Cluster '{cluster_name}' is Offline: its agent fell silent"),
                _ => format!("Cluster '{cluster_name}' is connected again"),
            };
            let mut details = serde_json::Map::new();
            details.insert("connectivityStatus".into(), facts.status.into());
            if let Some(last) = facts.last_connectivity_time {
                details.insert("lastConnectivityTime".into(), last.into());
            }
            let mut a = alert(event, cluster, summary, details);
            // a cluster's connectivity is no assignment's
            a.policy_assignment_id = None;
            vec![a]
        }
        "rollout" => {
            let facts: RolloutFacts = match serde_json::from_value(queued.facts.clone()) {
                Ok(facts) => facts,
                Err(err) => return unreadable(err),
            };
            let (Some(event), Some(id)) = (EventType::of_rollout(&facts.event), assignment.clone()) else {
                return Vec::new();
            };
            let name = id.rsplit('/').next().unwrap_or_default().to_owned();
            let summary = match event {
                EventType::RolloutHalted => format!("The rollout of policy assignment '{name}' halted"),
                EventType::RolloutRolledBack => format!("The rollout of policy assignment '{name}' rolled back"),
                _ => format!("The rollout of policy assignment '{name}' completed"),
            };
            let mut details = serde_json::Map::new();
            details.insert("generation".into(), facts.generation.into());
            details.insert("batch".into(), facts.batch.into());
            details.insert("batches".into(), facts.batches.into());
            if !facts.message.is_empty() {
                details.insert("message".into(), facts.message.into());
            }
            let mut a = alert(event, id, summary, details);
            a.cluster_id = None;
            vec![a]
        }
        "expiry" => {
            let facts: ExpiryFacts = match serde_json::from_value(queued.facts.clone()) {
                Ok(facts) => facts,
                Err(err) => return unreadable(err),
            };
            let (Some(cluster), Some(name)) = (cluster_id.as_deref(), queued.name.as_deref()) else {
                return Vec::new();
            };
            let cluster_name = cluster.rsplit('/').next().unwrap_or_default();
            let (subject, what, configuration) = match name.strip_prefix("extensions/") {
                Some(extension) => (
                    format!("{cluster}/providers/Microsoft.KubernetesConfiguration/extensions/{extension}"),
                    format!("extension '{extension}'"),
                    None,
                ),
                None => (
                    format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{name}"),
                    format!("Flux configuration '{name}'"),
                    Some(name.to_owned()),
                ),
            };
            let (event, summary) = if facts.secrets {
                (
                    EventType::SecretsExpired,
                    format!("The protected settings of {what} on cluster '{cluster_name}' expired undelivered"),
                )
            } else {
                (
                    EventType::ChangeExpired,
                    format!("A change of {what} on cluster '{cluster_name}' expired: its agent did not pick it up"),
                )
            };
            let mut details = serde_json::Map::new();
            details.insert("generation".into(), facts.generation.into());
            details.insert("message".into(), facts.message.into());
            let mut a = alert(event, subject, summary, details);
            a.configuration_name = configuration;
            vec![a]
        }
        other => {
            tracing::warn!(
                event = queued.id,
                kind = other,
                "an alert event of an unknown kind; dropped"
            );
            Vec::new()
        }
    }
}

/// A rule as the dispatcher matches it.
#[derive(Debug, Clone)]
pub struct MatchingRule {
    pub id: i64,
    /// '' at subscription scope: then it sees its whole subscription.
    pub resource_group_key: String,
    pub spec: RuleSpec,
    /// The rule's cluster group: its resource group key ('' at subscription scope) and selector.
    pub group: Option<(String, LabelSelector)>,
}

/// What the dispatcher knows of a cluster: its resource group key and tags.
#[derive(Debug, Clone)]
pub struct ClusterFacts {
    pub resource_group_key: String,
    pub tags: BTreeMap<String, String>,
}

/// Whether `rule` sends `alert`, given the cluster the alert is about (`None`: no cluster, or one deleted since).
/// Every narrowing must hold; a narrowing by cluster (group, tags) or configuration name holds only for alerts
/// about one, so that such a rule never receives a rollout's alerts.
pub fn matches(rule: &MatchingRule, alert: &Alert, cluster: Option<&ClusterFacts>) -> bool {
    let spec = &rule.spec;
    if !spec.enabled || !spec.events.contains(&alert.event) {
        return false;
    }
    if !rule.resource_group_key.is_empty() && rule.resource_group_key != alert.scope.resource_group_key {
        return false;
    }
    if let Some((group_rg, selector)) = &rule.group {
        let Some(cluster) = cluster else { return false };
        if (!group_rg.is_empty() && *group_rg != cluster.resource_group_key) || !selector.matches(&cluster.tags) {
            return false;
        }
    }
    if let Some(selector) = &spec.cluster_selector {
        let Some(cluster) = cluster else { return false };
        if !selector.matches(&cluster.tags) {
            return false;
        }
    }
    if let Some(wanted) = &spec.policy_assignment_id
        && !alert
            .policy_assignment_id
            .as_deref()
            .is_some_and(|a| a.eq_ignore_ascii_case(wanted))
    {
        return false;
    }
    if let Some(name) = &spec.configuration_name
        && alert.configuration_name.as_deref() != Some(name.as_str())
    {
        return false;
    }
    true
}

/// The key of an alert's subject for the minimum interval: its ARM id, lower-cased as ARM compares ids.
pub fn subject_key(alert: &Alert) -> String {
    alert.subject.to_ascii_lowercase()
}

/// Whether an alert goes out now (`None`) or is held back until the returned time, given when the rule last sent a
/// message about the subject.
pub fn hold_until(last_sent: Option<DateTime<Utc>>, interval: Duration, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let last = last_sent?;
    let next = last + chrono::Duration::from_std(interval).unwrap_or(chrono::Duration::MAX);
    (next > now).then_some(next)
}

/// What a rule held back about one subject since its last message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Held {
    pub count: u64,
    pub since: DateTime<Utc>,
    pub by_type: BTreeMap<EventType, u64>,
    /// The latest one: the subject's state when the held ones go out.
    pub latest: Alert,
}

/// Adds `alert` to what is held. The latest stays the one that happened last, whatever the order alerts come in
/// (replicas dispatch batches side by side).
pub fn hold(held: Option<Held>, alert: Alert) -> Held {
    let mut held = held.unwrap_or_else(|| Held {
        count: 0,
        since: alert.time,
        by_type: BTreeMap::new(),
        latest: alert.clone(),
    });
    held.count += 1;
    *held.by_type.entry(alert.event).or_default() += 1;
    held.since = held.since.min(alert.time);
    if alert.time >= held.latest.time {
        held.latest = alert;
    }
    held
}

/// A rule as a message names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RuleRef {
    pub id: String,
    pub name: String,
}

/// What a message counts of the events held back by the minimum interval, the latest of which it is about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Digest {
    /// Events about the subject since the last message, this one included.
    pub events: u64,
    pub since: DateTime<Utc>,
    #[schema(value_type = BTreeMap<String, u64>)]
    pub by_type: BTreeMap<EventType, u64>,
}

/// One message as the outbox keeps it and a `Webhook` receiver gets it (Slack and Teams get it rendered,
/// `alerts::message`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// The delivery id, the same on every attempt (`X-Fluxplane-Delivery`): receivers drop repeats by it.
    pub id: String,
    /// The event type, or `Test` for a receiver's test message.
    #[serde(rename = "type")]
    pub kind: String,
    pub severity: Severity,
    /// When the event happened.
    pub time: DateTime<Utc>,
    pub subject: String,
    pub summary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub configuration_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_assignment_id: Option<String>,
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    #[schema(value_type = Object)]
    pub details: serde_json::Map<String, Value>,
    /// Present when the minimum interval held events back: this message stands for them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
}

impl Message {
    /// The message of `alert` for `rule`, with a fresh delivery id.
    pub fn of(alert: &Alert, rule: &RuleRef, severity: Severity, digest: Option<Digest>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            kind: alert.event.as_str().to_owned(),
            severity,
            time: alert.time,
            subject: alert.subject.clone(),
            summary: alert.summary.clone(),
            rule: Some(rule.clone()),
            cluster_id: alert.cluster_id.clone(),
            configuration_name: alert.configuration_name.clone(),
            policy_assignment_id: alert.policy_assignment_id.clone(),
            details: alert.details.clone(),
            digest,
        }
    }

    /// The message of what `held` held back.
    pub fn of_held(held: &Held, rule: &RuleRef, severity: Severity) -> Self {
        let digest = (held.count > 1).then(|| Digest {
            events: held.count,
            since: held.since,
            by_type: held.by_type.clone(),
        });
        Self::of(&held.latest, rule, severity, digest)
    }

    /// A receiver's test message.
    pub fn test(receiver_id: &str, now: DateTime<Utc>) -> Self {
        Self {
            id: uuid::Uuid::new_v4().to_string(),
            kind: "Test".to_owned(),
            severity: Severity::Info,
            time: now,
            subject: receiver_id.to_owned(),
            summary: "A test message from fluxplane, sent by the receiver's test action".to_owned(),
            rule: None,
            cluster_id: None,
            configuration_name: None,
            policy_assignment_id: None,
            details: serde_json::Map::new(),
            digest: None,
        }
    }
}

/// A receiver's rate limit as a token bucket shared by every replica: `per_minute` tokens a minute, holding at
/// most ten seconds' worth (at least one), so that a burst is spread over time rather than sent at once.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateLimit {
    pub per_minute: u32,
}

impl RateLimit {
    pub fn capacity(self) -> f64 {
        f64::from(self.per_minute.div_ceil(6).max(1))
    }

    /// The tokens held at `now`, the bucket having held `tokens` at `at`.
    pub fn refill(self, tokens: f64, at: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
        let elapsed = (now - at).num_milliseconds().max(0) as f64 / 1000.0;
        (tokens + elapsed * f64::from(self.per_minute) / 60.0).min(self.capacity())
    }

    /// Takes up to `wanted` tokens: how many were granted, and the tokens left.
    pub fn take(self, tokens: f64, at: DateTime<Utc>, now: DateTime<Utc>, wanted: usize) -> (usize, f64) {
        let held = self.refill(tokens, at, now);
        let granted = (held.floor().max(0.0) as usize).min(wanted);
        (granted, held - granted as f64)
    }

    /// How long until one token is back, holding `tokens` now.
    pub fn wait_for_one(self, tokens: f64) -> Duration {
        let missing = (1.0 - tokens).max(0.0);
        Duration::from_secs_f64(missing * 60.0 / f64::from(self.per_minute))
    }
}

/// What a receiver's answer (or the lack of one) means for a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Worth trying again: no answer, a timeout, 408, 429 or a server error.
    Retry,
    /// Trying again cannot help: any other 4xx (a revoked Slack webhook answers 404 or 410, a bad payload 400).
    Refused,
}

pub fn verdict(status: Option<u16>) -> Verdict {
    match status {
        Some(code) if (200..300).contains(&code) => Verdict::Delivered,
        Some(408 | 429) | None => Verdict::Retry,
        Some(code) if code >= 500 => Verdict::Retry,
        Some(_) => Verdict::Refused,
    }
}

/// How a delivery is retried: exponential backoff from `first`, at most `longest` apart, for at most `give_up_after`
/// from its creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub longest: Duration,
    pub give_up_after: Duration,
}

impl Backoff {
    /// The wait after the `attempts`-th failed attempt (1-based): `first · 2^(attempts-1)` up to `longest`, of
    /// which a random part (`jitter` in [0, 1)) is left out, up to half, so that deliveries failed together do
    /// not come back together; at least what the receiver's `Retry-After` asks, up to `longest`.
    pub fn delay(self, attempts: u32, jitter: f64, retry_after: Option<Duration>) -> Duration {
        let exponent = attempts.saturating_sub(1).min(30);
        let full = self.first.saturating_mul(1 << exponent).min(self.longest);
        let jittered = full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0);
        retry_after.map_or(jittered, |asked| jittered.max(asked.min(self.longest)))
    }

    /// Whether a delivery created at `created` is given up at `now` rather than tried again at `next`.
    pub fn gives_up(self, created: DateTime<Utc>, next: DateTime<Utc>) -> bool {
        chrono::Duration::from_std(self.give_up_after).is_ok_and(|limit| next - created > limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn queued(kind: &str, facts: Value) -> QueuedEvent {
        QueuedEvent {
            id: 1,
            at: Utc::now(),
            kind: kind.to_owned(),
            subscription_key: "s".into(),
            resource_group_key: "rg".into(),
            cluster_id: Some(7),
            cluster_path: Some("S/RG/c1".into()),
            name: Some("baseline".into()),
            policy_assignment: String::new(),
            facts,
        }
    }

    fn status(compliance: &str, provisioning: &str, settled: Option<&str>, before: Option<&str>) -> Vec<EventType> {
        classify(&queued(
            "status",
            json!({"complianceState": compliance, "provisioningState": provisioning, "settledBefore": settled,
                   "provisioningBefore": before, "generation": 2, "commitId": "main@sha1:abc", "message": null}),
        ))
        .into_iter()
        .map(|a| a.event)
        .collect()
    }

    #[test]
    fn status_transitions_alert_when_the_settled_state_turns_or_provisioning_fails() {
        use EventType::*;
        assert_eq!(
            status("Non-Compliant", "Succeeded", Some("Compliant"), Some("Updating")),
            [BecameNonCompliant]
        );
        assert_eq!(
            status("Non-Compliant", "Succeeded", None, Some("Creating")),
            [BecameNonCompliant]
        );
        assert_eq!(
            status("Non-Compliant", "Succeeded", Some("Non-Compliant"), Some("Updating")),
            []
        );
        assert_eq!(
            status("Compliant", "Succeeded", Some("Non-Compliant"), Some("Updating")),
            [BecameCompliant]
        );
        assert_eq!(
            status("Compliant", "Succeeded", None, Some("Creating")),
            [],
            "a first Compliant is no news"
        );
        assert_eq!(
            status("Non-Compliant", "Failed", Some("Compliant"), Some("Updating")),
            [BecameNonCompliant, ProvisioningFailed]
        );
        assert_eq!(status("Pending", "Failed", None, Some("Failed")), [], "still failing");
        assert_eq!(
            status("Pending", "Failed", None, Some("Updating")),
            [ProvisioningFailed]
        );
    }

    #[test]
    fn an_alert_names_its_subject_by_arm_id_and_says_what_happened() {
        let alerts = classify(&queued(
            "status",
            json!({"complianceState": "Non-Compliant", "provisioningState": "Succeeded", "settledBefore": "Compliant",
                   "provisioningBefore": "Succeeded", "generation": 3, "commitId": "main@sha1:abc",
                   "message": "kustomization 'apps' failed"}),
        ));
        let alert = &alerts[0];
        assert_eq!(
            alert.subject,
            "/subscriptions/S/resourceGroups/RG/providers/Microsoft.Kubernetes/connectedClusters/c1/providers/\
             Microsoft.KubernetesConfiguration/fluxConfigurations/baseline"
        );
        assert_eq!(
            alert.cluster_id.as_deref(),
            Some("/subscriptions/S/resourceGroups/RG/providers/Microsoft.Kubernetes/connectedClusters/c1")
        );
        assert!(alert.summary.contains("'baseline'") && alert.summary.contains("Non-Compliant"));
        assert_eq!(alert.details["message"], "kustomization 'apps' failed");
        assert_eq!(alert.details["commitId"], "main@sha1:abc");
        assert_eq!(alert.configuration_name.as_deref(), Some("baseline"));
    }

    #[test]
    fn connectivity_alerts_offline_and_back_only() {
        let event = |before: &str, status: &str| {
            classify(&queued(
                "connectivity",
                json!({"status": status, "before": before, "lastConnectivityTime": null}),
            ))
            .into_iter()
            .map(|a| a.event)
            .collect::<Vec<_>>()
        };
        assert_eq!(event("Connected", "Offline"), [EventType::ClusterOffline]);
        assert_eq!(event("Offline", "Connected"), [EventType::ClusterReconnected]);
        assert_eq!(event("Connecting", "Connected"), []);
        assert_eq!(event("Connecting", "Offline"), []);
    }

    #[test]
    fn rollouts_alert_on_halts_rollbacks_and_completions() {
        let mut q = queued(
            "rollout",
            json!({"event": "Halted", "generation": 4, "batch": 2, "batches": 3, "message": "batch 2 failed"}),
        );
        q.cluster_id = None;
        q.cluster_path = None;
        q.name = None;
        q.policy_assignment = "/subscriptions/S/providers/Fluxplane.Fleet/policyAssignments/web".into();
        let alerts = classify(&q);
        assert_eq!(alerts.len(), 1);
        assert_eq!(alerts[0].event, EventType::RolloutHalted);
        assert_eq!(alerts[0].subject, q.policy_assignment);
        assert!(alerts[0].cluster_id.is_none());
        q.facts["event"] = json!("BatchStarted");
        assert!(classify(&q).is_empty());
    }

    #[test]
    fn expiries_name_the_configuration_or_the_extension() {
        let secrets = classify(&queued(
            "expiry",
            json!({"secrets": true, "generation": 2, "message": "expired"}),
        ));
        assert_eq!(secrets[0].event, EventType::SecretsExpired);
        assert!(secrets[0].subject.ends_with("/fluxConfigurations/baseline"));
        let mut extension = queued(
            "expiry",
            json!({"secrets": false, "generation": 2, "message": "expired"}),
        );
        extension.name = Some("extensions/flux".into());
        let change = classify(&extension);
        assert_eq!(change[0].event, EventType::ChangeExpired);
        assert!(change[0].subject.ends_with("/extensions/flux"));
        assert!(change[0].configuration_name.is_none());
        assert!(
            classify(&queued("expiry", json!({"nonsense": 1}))).is_empty(),
            "unreadable facts are dropped"
        );
        assert!(classify(&queued("unknown", json!({}))).is_empty());
    }

    fn rule(spec: Value) -> MatchingRule {
        let mut spec = spec;
        spec["receiverIds"] = json!(["r"]);
        MatchingRule {
            id: 1,
            resource_group_key: String::new(),
            spec: serde_json::from_value(spec).unwrap(),
            group: None,
        }
    }

    fn compliance_alert() -> Alert {
        classify(&queued(
            "status",
            json!({"complianceState": "Non-Compliant", "provisioningState": "Succeeded", "settledBefore": null,
                   "provisioningBefore": null, "generation": 1, "commitId": null, "message": null}),
        ))
        .remove(0)
    }

    #[test]
    fn a_rule_matches_its_events_within_every_narrowing() {
        let alert = compliance_alert();
        let prod = ClusterFacts {
            resource_group_key: "rg".into(),
            tags: [("env".to_owned(), "prod".to_owned())].into(),
        };
        assert!(matches(
            &rule(json!({"events": ["BecameNonCompliant"]})),
            &alert,
            Some(&prod)
        ));
        assert!(!matches(
            &rule(json!({"events": ["ClusterOffline"]})),
            &alert,
            Some(&prod)
        ));
        assert!(!matches(
            &rule(json!({"events": ["BecameNonCompliant"], "enabled": false})),
            &alert,
            Some(&prod)
        ));
        let tagged =
            rule(json!({"events": ["BecameNonCompliant"], "clusterSelector": {"matchLabels": {"env": "prod"}}}));
        assert!(matches(&tagged, &alert, Some(&prod)));
        let qa = ClusterFacts {
            resource_group_key: "rg".into(),
            tags: [("env".to_owned(), "qa".to_owned())].into(),
        };
        assert!(!matches(&tagged, &alert, Some(&qa)));
        assert!(!matches(&tagged, &alert, None), "a deleted cluster's tags are unknown");
        let named = rule(json!({"events": ["BecameNonCompliant"], "configurationName": "other"}));
        assert!(!matches(&named, &alert, Some(&prod)));
        let mut elsewhere = rule(json!({"events": ["BecameNonCompliant"]}));
        elsewhere.resource_group_key = "other".into();
        assert!(
            !matches(&elsewhere, &alert, Some(&prod)),
            "a resource group's rule sees its own group"
        );
        let mut grouped = rule(json!({"events": ["BecameNonCompliant"]}));
        grouped.group = Some((
            "rg".into(),
            serde_json::from_value(json!({"matchLabels": {"env": "prod"}})).unwrap(),
        ));
        assert!(matches(&grouped, &alert, Some(&prod)));
        grouped.group = Some(("other".into(), LabelSelector::default()));
        assert!(
            !matches(&grouped, &alert, Some(&prod)),
            "a group sees its own resource group's clusters"
        );
        let assigned = rule(json!({"events": ["BecameNonCompliant"],
            "policyAssignmentId": "/subscriptions/s/providers/Fluxplane.Fleet/policyAssignments/web"}));
        assert!(
            !matches(&assigned, &alert, Some(&prod)),
            "written by hand, no assignment's"
        );
        let mut managed = alert.clone();
        managed.policy_assignment_id = Some("/subscriptions/S/providers/Fluxplane.Fleet/policyAssignments/WEB".into());
        assert!(matches(&assigned, &managed, Some(&prod)), "ids compare in any case");
    }

    #[test]
    fn a_rule_narrowed_by_cluster_never_receives_rollouts() {
        let mut q = queued(
            "rollout",
            json!({"event": "Completed", "generation": 1, "batch": 1, "batches": 1, "message": ""}),
        );
        q.cluster_id = None;
        q.cluster_path = None;
        q.policy_assignment = "/subscriptions/s/providers/Fluxplane.Fleet/policyAssignments/web".into();
        let alert = classify(&q).remove(0);
        assert!(matches(&rule(json!({"events": ["RolloutCompleted"]})), &alert, None));
        let tagged = rule(json!({"events": ["RolloutCompleted"], "clusterSelector": {}}));
        assert!(!matches(&tagged, &alert, None));
    }

    #[test]
    fn the_minimum_interval_holds_back_until_it_has_passed_and_counts_what_it_held() {
        let now = Utc::now();
        let five = Duration::from_secs(300);
        assert_eq!(hold_until(None, five, now), None, "never sent: now");
        let recent = now - chrono::Duration::seconds(10);
        assert_eq!(
            hold_until(Some(recent), five, now),
            Some(recent + chrono::Duration::seconds(300))
        );
        assert_eq!(hold_until(Some(now - chrono::Duration::seconds(300)), five, now), None);
        assert_eq!(hold_until(Some(now), Duration::ZERO, now), None, "0 holds nothing back");

        let first = compliance_alert();
        let mut back = first.clone();
        back.event = EventType::BecameCompliant;
        back.time = first.time + chrono::Duration::seconds(5);
        let held = hold(Some(hold(None, first.clone())), back.clone());
        assert_eq!(held.count, 2);
        assert_eq!(held.since, first.time);
        assert_eq!(held.latest, back);
        assert_eq!(held.by_type[&EventType::BecameNonCompliant], 1);
        let late = hold(Some(hold(None, back.clone())), first.clone());
        assert_eq!(
            (late.latest.clone(), late.since, late.count),
            (back.clone(), first.time, 2),
            "an older one, come late, is counted only"
        );
        let rule = RuleRef {
            id: "/r".into(),
            name: "r".into(),
        };
        let message = Message::of_held(&held, &rule, Severity::Error);
        assert_eq!(message.kind, "BecameCompliant", "the latest state goes out");
        assert_eq!(message.digest.unwrap().events, 2);
        let single = Message::of_held(&hold(None, first), &rule, Severity::Error);
        assert!(single.digest.is_none(), "one held event is a plain message");
    }

    #[test]
    fn the_rate_limit_spreads_a_burst_over_time() {
        let limit = RateLimit { per_minute: 60 };
        assert_eq!(limit.capacity(), 10.0);
        let now = Utc::now();
        let (granted, left) = limit.take(limit.capacity(), now, now, 25);
        assert_eq!((granted, left), (10, 0.0), "ten seconds' worth at once");
        let later = now + chrono::Duration::milliseconds(2500);
        let (granted, left) = limit.take(left, now, later, 25);
        assert_eq!(granted, 2, "then one a second");
        assert!((left - 0.5).abs() < 1e-9);
        assert_eq!(limit.wait_for_one(left), Duration::from_millis(500));
        let (granted, _) = limit.take(0.0, now, now + chrono::Duration::hours(1), 100);
        assert_eq!(granted, 10, "a bucket never holds more than its capacity");
        assert_eq!(RateLimit { per_minute: 1 }.capacity(), 1.0);
    }

    #[test]
    fn answers_decide_between_delivered_retried_and_refused() {
        assert_eq!(verdict(Some(200)), Verdict::Delivered);
        assert_eq!(verdict(Some(202)), Verdict::Delivered, "Teams answers 202");
        for retried in [None, Some(408), Some(429), Some(500), Some(503)] {
            assert_eq!(verdict(retried), Verdict::Retry, "{retried:?}");
        }
        for refused in [Some(400), Some(401), Some(404), Some(410), Some(302)] {
            assert_eq!(verdict(refused), Verdict::Refused, "{refused:?}");
        }
    }

    #[test]
    fn retries_back_off_exponentially_with_jitter_and_give_up() {
        let backoff = Backoff {
            first: Duration::from_secs(10),
            longest: Duration::from_secs(3600),
            give_up_after: Duration::from_secs(86_400),
        };
        assert_eq!(backoff.delay(1, 0.0, None), Duration::from_secs(10));
        assert_eq!(backoff.delay(3, 0.0, None), Duration::from_secs(40));
        assert_eq!(backoff.delay(3, 0.999_999, None).as_secs(), 20, "at most half left out");
        assert_eq!(backoff.delay(40, 0.0, None), Duration::from_secs(3600), "capped");
        assert_eq!(
            backoff.delay(1, 0.0, Some(Duration::from_secs(120))),
            Duration::from_secs(120),
            "Retry-After is honoured"
        );
        assert_eq!(
            backoff.delay(1, 0.0, Some(Duration::from_secs(86_400))),
            Duration::from_secs(3600),
            "up to the longest wait"
        );
        let created = Utc::now();
        assert!(!backoff.gives_up(created, created + chrono::Duration::hours(23)));
        assert!(backoff.gives_up(created, created + chrono::Duration::hours(25)));
    }

    #[test]
    fn urls_and_signing_keys_are_checked_and_never_printed() {
        let url = ReceiverUrl::parse("https://hooks.slack.com/services/T000/B000/XXXXSECRET").unwrap();
        assert_eq!(url.host(), "hooks.slack.com");
        assert!(!format!("{url:?}").contains("SECRET"));
        assert_eq!(
            ReceiverUrl::parse("http://127.0.0.1:9000/hook").unwrap().host(),
            "127.0.0.1:9000"
        );
        for bad in [
            "ftp://x/y",
            "not a url",
            "https://x/#frag",
            "file:///etc/passwd",
            "http://",
        ] {
            assert!(ReceiverUrl::parse(bad).is_err(), "{bad}");
        }
        assert!(ReceiverUrl::parse(&format!("https://x/{}", "a".repeat(MAX_URL_LENGTH))).is_err());
        let key = SigningKey::parse("0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(format!("{key:?}"), "SigningKey(<redacted>)");
        assert!(SigningKey::parse("short").is_err());
        assert!(
            SigningKey::parse(&format!("{} x", "a".repeat(40))).is_err(),
            "no spaces"
        );
    }

    #[test]
    fn rules_are_checked_field_by_field_with_defaults_filled() {
        let spec: RuleSpec =
            serde_json::from_value(json!({"events": ["ClusterOffline"], "receiverIds": ["r"]})).unwrap();
        assert_eq!(spec.severity, Severity::Warning);
        assert_eq!(spec.minimum_interval_in_seconds, DEFAULT_INTERVAL_SECONDS);
        assert!(spec.enabled);
        let mut problems = Problems::default();
        spec.validate(&mut problems);
        assert!(problems.into_result("alert rule", None).is_ok());
        let bad: RuleSpec = serde_json::from_value(json!({
            "events": ["ClusterOffline", "ClusterOffline"], "receiverIds": [],
            "configurationName": "Not_A_Name", "minimumIntervalInSeconds": 100000,
            "clusterSelector": {"matchExpressions": [{"key": "env", "operator": "In", "values": []}]}
        }))
        .unwrap();
        let mut problems = Problems::default();
        bad.validate(&mut problems);
        let err = problems.into_result("alert rule", Some("properties")).unwrap_err();
        let crate::error::ApiError::InvalidParameter { details, .. } = err else {
            panic!()
        };
        let targets: Vec<_> = details.iter().filter_map(|d| d.target.as_deref()).collect();
        for field in [
            "events",
            "receiverIds",
            "configurationName",
            "minimumIntervalInSeconds",
            "clusterSelector",
        ] {
            assert!(targets.iter().any(|t| t.contains(field)), "{field}: {targets:?}");
        }
    }
}
