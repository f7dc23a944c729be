//! The agent's loop: long-poll the desired state, bring the target in line, report what it observed, and re-check
//! each configuration's source on its sync interval. Every failure backs off exponentially with jitter; nothing
//! is lost across failures, because every poll answers the full desired state and reports are kept until sent.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::time::Duration;

use fluxplane_agent_protocol::agent::{
    AgentInfo, ApplyOutcome, ConfigurationReport, DesiredConfiguration, DesiredExtension, DesiredState,
    ExtensionReport, StatusReport, extension_sealing_name,
};
use fluxplane_agent_protocol::flux::{ComplianceState, SourceKind};
use tokio::time::Instant;

use crate::client::{ClientError, ControlPlane};
use crate::deploy_key::{self, DeployKey};
use crate::secrets::{Credentials, SecretSet, resolve, resolve_sealed, spec_with};
use crate::targets::{Observation, Target};

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

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// How soon a configuration whose objects could not be written is tried again.
const RETRY_FAILED_APPLY: Duration = Duration::from_secs(10);

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
}

/// What the agent holds of one extension: the settings of the generation it installed. It records them only:
/// acting on them (multi-tenancy and the rest) is not done yet.
#[derive(Debug)]
pub struct HeldExtension {
    pub generation: i64,
    pub settings: DesiredExtension,
    /// The protected settings of `secrets_version` (`None`: none, or not known after a restart, once acknowledged).
    pub protected: Option<SecretSet>,
    pub secrets_version: Option<i64>,
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

/// The agent: a control plane, a target, and what it holds.
pub struct Agent {
    control_plane: ControlPlane,
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
}

impl Agent {
    pub async fn new(control_plane: ControlPlane, target: Box<dyn Target>, options: Options) -> anyhow::Result<Self> {
        let now = Instant::now();
        // what an earlier run wrote need not be written again: only observed
        let held = target
            .inventory()
            .await?
            .into_iter()
            .map(|(name, generation)| {
                (
                    name,
                    Held {
                        generation,
                        applied: true,
                        secrets_version: None,
                        next_check: now,
                        reported: None,
                    },
                )
            })
            .collect();
        Ok(Self {
            control_plane,
            target,
            options,
            held,
            pending: BTreeMap::new(),
            extensions: HashMap::new(),
            pending_extensions: BTreeMap::new(),
            failed_extensions: HashMap::new(),
        })
    }

    /// The extension `name` as the agent holds it.
    pub fn extension(&self, name: &str) -> Option<&HeldExtension> {
        self.extensions.get(name)
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
            let delay = backoff.next_delay();
            tracing::warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "registering the encryption key failed");
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(delay) => {}
            }
        }
        backoff.reset();
        loop {
            let wait = self.next_wait();
            let polled = tokio::select! {
                () = &mut shutdown => break,
                polled = self.control_plane.desired_state(revision, wait) => polled,
            };
            let desired = match polled {
                Ok(desired) => desired,
                Err(err) => {
                    let delay = backoff.next_delay();
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
            if revision != Some(desired.revision) {
                tracing::debug!(
                    revision = desired.revision,
                    configurations = desired.configurations.len(),
                    "desired state"
                );
            }
            revision = Some(desired.revision);
            self.reconcile_extensions(&desired);
            self.reconcile(&desired).await;
            self.send_reports().await;
        }
        tracing::info!("agent stopped");
        Ok(())
    }

    /// How long the next poll may wait: until the earliest source check is due, at most the poll wait; at once
    /// while reports wait to be sent.
    fn next_wait(&self) -> Duration {
        if !self.pending.is_empty() || !self.pending_extensions.is_empty() {
            return Duration::from_secs(1);
        }
        let now = Instant::now();
        self.held
            .values()
            .map(|h| h.next_check.saturating_duration_since(now))
            .min()
            .unwrap_or(self.options.poll_wait)
            .clamp(Duration::from_secs(1), self.options.poll_wait)
    }

    /// Brings the target in line with `desired` and queues the reports that changed.
    pub async fn reconcile(&mut self, desired: &DesiredState) {
        let now = Instant::now();
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
                    Err(err) => tracing::warn!(configuration = %name, error = format!("{err:#}"), "removing failed"),
                }
                continue;
            }
            let held = self.held.get(&name);
            let new_generation = held.is_none_or(|h| h.generation != configuration.generation);
            // sealed secrets still on offer were not acknowledged (say, by the run before a restart): write them
            let undelivered = !configuration.sealed_secrets.is_empty()
                && held.is_none_or(|h| h.secrets_version != configuration.secrets_version);
            let due = held.is_none_or(|h| h.next_check <= now);
            if !new_generation && !undelivered && !due {
                continue;
            }
            let write = new_generation || undelivered || held.is_some_and(|h| !h.applied);
            let mut applied = true;
            let mut secrets_version = held.and_then(|h| h.secrets_version);
            let report = if write {
                match self.write(configuration).await {
                    Ok(written) => {
                        tracing::info!(configuration = %name, generation = configuration.generation, "applied");
                        secrets_version = written;
                        let observation = self.target.observe(configuration).await;
                        report_of(configuration, ApplyOutcome::Applied, observation, secrets_version)
                    }
                    Err(message) => {
                        applied = false;
                        tracing::warn!(configuration = %name, error = %message, "applying failed; will retry");
                        let observation = Observation::only(ComplianceState::NonCompliant, Some(message));
                        report_of(configuration, ApplyOutcome::Failed, observation, secrets_version)
                    }
                }
            } else {
                let observation = self.target.observe(configuration).await;
                report_of(configuration, ApplyOutcome::Applied, observation, secrets_version)
            };
            let held = self.held.entry(name).or_insert(Held {
                generation: configuration.generation,
                applied,
                secrets_version,
                next_check: now,
                reported: None,
            });
            held.generation = configuration.generation;
            held.applied = applied;
            held.secrets_version = secrets_version;
            held.next_check = now
                + if applied {
                    sync_interval(configuration)
                } else {
                    RETRY_FAILED_APPLY
                };
            if held.reported.as_ref() != Some(&report) {
                held.reported = Some(report.clone());
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
                Err(err) => tracing::warn!(configuration = %name, error = format!("{err:#}"), "removing failed"),
            }
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
    }

    /// Writes the configuration with the credentials it should have: the secret set of its version, and for an SSH
    /// source with no key of the user's, the deploy key the cluster holds or, the first time, a new one. Answers the
    /// secret set's version, or why it failed.
    async fn write(&self, configuration: &DesiredConfiguration) -> Result<Option<i64>, String> {
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
        let version = secrets.as_ref().map(|s| s.version);
        self.target
            .apply(configuration, &Credentials { secrets, deploy_key })
            .await
            .map_err(|err| format!("{err:#}"))?;
        Ok(version)
    }

    fn queue(&mut self, report: ConfigurationReport) {
        self.pending.insert(report.name.clone(), report);
    }

    /// Sends the pending reports; those not accepted stay pending for the next round.
    pub async fn send_reports(&mut self) {
        if self.pending.is_empty() && self.pending_extensions.is_empty() {
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
            Err(err) => tracing::warn!(error = %err, pending = self.pending.len(), "reporting failed; will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::identity::Identity;
    use crate::targets::ClusterFacts;

    /// A target whose first write fails; clones share what they count.
    #[derive(Default, Clone)]
    struct Flaky {
        writes: Arc<AtomicUsize>,
        observed: Arc<Mutex<Vec<String>>>,
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
        async fn remove(&self, _: &str) -> anyhow::Result<()> {
            Ok(())
        }
        async fn observe(&self, configuration: &DesiredConfiguration) -> Observation {
            self.observed.lock().unwrap().push(configuration.name.clone());
            Observation::only(ComplianceState::Compliant, None)
        }
        async fn cluster_facts(&self) -> ClusterFacts {
            ClusterFacts::default()
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
        let identity = Identity::generate("http://127.0.0.1:9", cluster).unwrap().identity;
        let mut agent = Agent::new(
            ControlPlane::new(identity).unwrap(),
            Box::new(Flaky::default()),
            Options::default(),
        )
        .await
        .unwrap();
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
        let identity = Identity::generate("http://127.0.0.1:9", cluster).unwrap().identity;
        let mut agent = Agent::new(
            ControlPlane::new(identity).unwrap(),
            Box::new(Flaky::default()),
            Options::default(),
        )
        .await
        .unwrap();
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
}
