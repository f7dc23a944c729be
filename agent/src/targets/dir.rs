//! The `dir` target: the objects of each configuration as YAML files, for clusters reached through GitOps tooling
//! of their own, for trying fluxplane out, and for tests.
//!
//! Layout, under the target directory:
//!
//! ```text
//! {configuration}/fluxconfig.yaml            the FluxConfig (fluxplane.io/v1alpha1) as received
//! {configuration}/source.yaml                the GitRepository, Bucket or OCIRepository it implies
//! {configuration}/kustomization-{name}.yaml  one Flux Kustomization per kustomization
//! {configuration}/secret.yaml                the Secret of its secrets, if it has any (mode 0600)
//! .fluxplane/git/{configuration}.git         the bare mirror the source check fetches into
//! .fluxplane/ssh/{configuration}/            the SSH key and known hosts that fetch uses (mode 0600)
//! ```
//!
//! Each file is written to a temporary name and renamed into place, so a reader never sees half a file. No Flux
//! runs here, so the target checks Git sources itself (see `git.rs`); sources it cannot check report `Unknown`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use fluxplane_agent_protocol::agent::{DesiredConfiguration, Drift};
use fluxplane_agent_protocol::flux::{ComplianceState, ObjectStatus, ObjectStatusCondition, SourceKind};
use serde_json::Value;

use super::{ClusterFacts, Drifted, Observation, Target};
use crate::deploy_key::ssh_git_source;
use crate::files::write_atomically;
use crate::git::{Mirror, mirror_path, ssh_command};
use crate::objects::{GENERATION_ANNOTATION, configuration_objects, credentials_of, repository_public_key_of};
use crate::secrets::Credentials;

const FLUXCONFIG_FILE: &str = "fluxconfig.yaml";
const SECRET_FILE: &str = "secret.yaml";

pub struct DirTarget {
    root: PathBuf,
}

impl DirTarget {
    pub fn new(root: impl Into<PathBuf>) -> anyhow::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(&root).with_context(|| format!("creating the target directory {}", root.display()))?;
        Ok(Self { root })
    }

    fn dir(&self, configuration: &str) -> PathBuf {
        self.root.join(configuration)
    }

    fn ssh_dir(&self, configuration: &str) -> PathBuf {
        self.root.join(".fluxplane").join("ssh").join(configuration)
    }

    /// The configuration's secret as written, if there is one.
    fn secret(&self, configuration: &str) -> anyhow::Result<Option<Value>> {
        let path = self.dir(configuration).join(SECRET_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
        };
        let object = serde_yaml_ng::from_str(&text).with_context(|| format!("reading {}", path.display()))?;
        Ok(Some(object))
    }

    /// The command git reaches the configuration's `ssh://` source with: the key its secret holds (the user's or
    /// the agent's deploy key) and its `sshKnownHosts`, written where only the agent reads them.
    fn ssh_access(&self, configuration: &DesiredConfiguration, secret: Option<&Value>) -> anyhow::Result<String> {
        let dir = self.ssh_dir(&configuration.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let decoded = |value: Option<&str>| value.and_then(|text| STANDARD.decode(text.trim()).ok());
        let identity = match decoded(secret.and_then(|s| s["data"]["identity"].as_str())) {
            Some(key) => {
                let path = dir.join("identity");
                write_atomically(&path, &key, true)?;
                Some(path)
            }
            None => None,
        };
        let known_hosts = match decoded(
            configuration
                .spec
                .git_repository
                .as_ref()
                .and_then(|g| g.ssh_known_hosts.as_deref()),
        ) {
            Some(hosts) => {
                let path = dir.join("known_hosts");
                write_atomically(&path, &hosts, true)?;
                Some(path)
            }
            None => None,
        };
        ssh_command(identity.as_deref(), known_hosts.as_deref())
    }
}

fn file_name(object: &Value) -> String {
    match object["kind"].as_str() {
        Some("Kustomization") => format!(
            "kustomization-{}.yaml",
            object["metadata"]["labels"]["fluxplane.io/kustomization"]
                .as_str()
                .unwrap_or_default()
        ),
        Some("FluxConfig") => FLUXCONFIG_FILE.to_owned(),
        Some("Secret") => SECRET_FILE.to_owned(),
        _ => "source.yaml".to_owned(),
    }
}

fn condition(ok: bool, reason: &str, message: &str) -> ObjectStatusCondition {
    ObjectStatusCondition {
        last_transition_time: Some(Utc::now().to_rfc3339()),
        message: Some(message.to_owned()),
        reason: Some(reason.to_owned()),
        status: Some(if ok { "True" } else { "False" }.to_owned()),
        type_: Some("Ready".to_owned()),
    }
}

fn status(
    name: &str,
    namespace: &str,
    kind: &str,
    state: ComplianceState,
    condition: ObjectStatusCondition,
) -> ObjectStatus {
    ObjectStatus {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        kind: Some(kind.to_owned()),
        compliance_state: Some(state),
        applied_by: None,
        status_conditions: Some(vec![condition]),
        helm_release_properties: None,
    }
}

#[async_trait]
impl Target for DirTarget {
    async fn inventory(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let mut held = BTreeMap::new();
        for entry in std::fs::read_dir(&self.root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type()?.is_dir() {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path().join(FLUXCONFIG_FILE)) else {
                continue;
            };
            let object: Value = serde_yaml_ng::from_str(&text).unwrap_or_default();
            if let Some(generation) = object["metadata"]["annotations"][GENERATION_ANNOTATION]
                .as_str()
                .and_then(|g| g.parse().ok())
            {
                held.insert(name, generation);
            }
        }
        Ok(held)
    }

    async fn apply(&self, configuration: &DesiredConfiguration, credentials: &Credentials) -> anyhow::Result<()> {
        let dir = self.dir(&configuration.name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut written = BTreeSet::new();
        for object in &configuration_objects(configuration, credentials) {
            let file = file_name(object);
            let private = file == SECRET_FILE;
            write_atomically(&dir.join(&file), serde_yaml_ng::to_string(object)?.as_bytes(), private)?;
            written.insert(file);
        }
        for entry in std::fs::read_dir(&dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.ends_with(".yaml") && !written.contains(&name) {
                std::fs::remove_file(dir.join(&name)).with_context(|| format!("removing {name}"))?;
            }
        }
        Ok(())
    }

    async fn credentials(&self, configuration: &DesiredConfiguration) -> anyhow::Result<Credentials> {
        Ok(self
            .secret(&configuration.name)?
            .map(|secret| credentials_of(&secret))
            .unwrap_or_default())
    }

    async fn remove(&self, name: &str) -> anyhow::Result<()> {
        for path in [self.dir(name), mirror_path(&self.root, name), self.ssh_dir(name)] {
            match std::fs::remove_dir_all(&path) {
                Ok(()) => {}
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err).with_context(|| format!("removing {}", path.display())),
            }
        }
        Ok(())
    }

    /// Its files are the agent's alone: one that is missing, no longer parses or holds anything else has drifted.
    async fn drift(
        &self,
        configuration: &DesiredConfiguration,
        credentials: &Credentials,
    ) -> anyhow::Result<Vec<Drifted>> {
        let dir = self.dir(&configuration.name);
        let mut drifted = Vec::new();
        for object in &configuration_objects(configuration, credentials) {
            let path = dir.join(file_name(object));
            let found = match std::fs::read_to_string(&path) {
                Ok(text) => serde_yaml_ng::from_str::<Value>(&text).unwrap_or(Value::Null),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                    drifted.push(Drifted::new(object, Drift::Deleted));
                    continue;
                }
                Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
            };
            if found != *object {
                drifted.push(Drifted::new(object, Drift::Changed));
            }
        }
        Ok(drifted)
    }

    /// A directory is no cluster: nothing to report.
    async fn cluster_facts(&self) -> ClusterFacts {
        ClusterFacts::default()
    }

    async fn observe(&self, configuration: &DesiredConfiguration) -> Observation {
        let secret = match self.secret(&configuration.name) {
            Ok(secret) => secret,
            Err(err) => return Observation::only(ComplianceState::Unknown, Some(format!("{err:#}"))),
        };
        let mut observation = self.observe_source(configuration, secret.as_ref()).await;
        // only an SSH source authenticates with a key whose public half means something to the user
        if ssh_git_source(&configuration.spec).is_some() {
            observation.repository_public_key = secret.as_ref().and_then(repository_public_key_of);
        }
        observation
    }
}

impl DirTarget {
    async fn observe_source(&self, configuration: &DesiredConfiguration, secret: Option<&Value>) -> Observation {
        let spec = &configuration.spec;
        let name = configuration.name.as_str();
        let namespace = spec.namespace.as_deref().unwrap_or("default");
        let kind = spec.source_kind.unwrap_or(SourceKind::GitRepository);
        if spec.suspend == Some(true) {
            return Observation {
                compliance: ComplianceState::Suspended,
                message: Some("reconciliation is suspended".into()),
                statuses: Vec::new(),
                source_synced_commit_id: None,
                source_updated_at: None,
                repository_public_key: None,
            };
        }
        let Some(git) = spec
            .git_repository
            .as_ref()
            .filter(|_| kind == SourceKind::GitRepository)
        else {
            let message = format!(
                "the dir target checks Git sources only; a {} source is verified by Flux in a cluster",
                kind.as_str()
            );
            return Observation {
                compliance: ComplianceState::Unknown,
                message: Some(message.clone()),
                statuses: vec![status(
                    name,
                    namespace,
                    kind.as_str(),
                    ComplianceState::Unknown,
                    condition(false, "Unverified", &message),
                )],
                source_synced_commit_id: None,
                source_updated_at: None,
                repository_public_key: None,
            };
        };
        let timeout = Duration::from_secs(git.timeout_in_seconds.unwrap_or(600).max(1) as u64);
        let mut mirror = Mirror::new(mirror_path(&self.root, name), timeout);
        if ssh_git_source(spec).is_some() {
            match self.ssh_access(configuration, secret) {
                Ok(command) => mirror = mirror.with_ssh_command(command),
                Err(err) => return Observation::only(ComplianceState::Unknown, Some(format!("{err:#}"))),
            }
        }
        let url = git.url.clone().unwrap_or_default();
        let resolved = match mirror.fetch(&url).await {
            Ok(()) => mirror.resolve(&git.repository_ref.clone().unwrap_or_default()).await,
            Err(err) => Err(err),
        };
        let resolved = match resolved {
            Ok(resolved) => resolved,
            Err(err) => {
                let message = format!("{err:#}");
                return Observation {
                    compliance: ComplianceState::NonCompliant,
                    message: Some(message.clone()),
                    statuses: vec![status(
                        name,
                        namespace,
                        "GitRepository",
                        ComplianceState::NonCompliant,
                        condition(false, "GitOperationFailed", &message),
                    )],
                    source_synced_commit_id: None,
                    source_updated_at: None,
                    repository_public_key: None,
                };
            }
        };
        let mut statuses = vec![status(
            name,
            namespace,
            "GitRepository",
            ComplianceState::Compliant,
            condition(
                true,
                "Succeeded",
                &format!("stored artifact for revision '{}'", resolved.synced_id),
            ),
        )];
        let mut problems = Vec::new();
        for (kustomization, k) in spec.kustomizations.iter().flatten() {
            let path = k.path.clone().unwrap_or_default();
            let object = format!("{name}-{kustomization}");
            match mirror.check_path(&resolved.commit, &path).await {
                Ok(_) => statuses.push(status(
                    &object,
                    namespace,
                    "Kustomization",
                    ComplianceState::Compliant,
                    condition(
                        true,
                        "ReconciliationSucceeded",
                        &format!("Applied revision: {}", resolved.synced_id),
                    ),
                )),
                Err(err) => {
                    let message = format!("kustomization '{kustomization}': {err:#}");
                    statuses.push(status(
                        &object,
                        namespace,
                        "Kustomization",
                        ComplianceState::NonCompliant,
                        condition(false, "BuildFailed", &message),
                    ));
                    problems.push(message);
                }
            }
        }
        Observation {
            compliance: if problems.is_empty() {
                ComplianceState::Compliant
            } else {
                ComplianceState::NonCompliant
            },
            message: (!problems.is_empty()).then(|| problems.join("; ")),
            statuses,
            source_synced_commit_id: Some(resolved.synced_id),
            source_updated_at: Some(resolved.committed_at),
            repository_public_key: None,
        }
    }
}
