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
//! {configuration}/verification-keys.yaml     the Secret of an OCI source's cosign public keys, if it has any
//! .fluxplane/git/{configuration}.git         the bare mirror the source check fetches into
//! .fluxplane/ssh/{configuration}/            the SSH key and known hosts that fetch uses (mode 0600)
//! ```
//!
//! Each file is written to a temporary name and renamed into place, so a reader never sees half a file. No Flux
//! runs here, so the target checks Git sources itself (see `git.rs`): the reference resolves, each kustomization's
//! build would read only what exists and parses (`kustomize.rs`), and its `dependsOn` are ready (`settle`). What it
//! cannot check (Bucket and OCI sources, remote kustomize references) reports `Unknown`, never `Compliant`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use fluxplane_agent_protocol::agent::{DesiredConfiguration, Drift};
use fluxplane_agent_protocol::flux::{ComplianceState, Kustomization, ObjectStatus, ObjectStatusCondition, SourceKind};
use serde_json::Value;

use super::{ClusterFacts, Drifted, Observation, Target};
use crate::deploy_key::ssh_git_source;
use crate::files::write_atomically;
use crate::git::{Mirror, Resolved, mirror_path, ssh_command};
use crate::kustomize::Outcome;
use crate::objects::{
    CONFIGURATION_LABEL, GENERATION_ANNOTATION, configuration_objects, credentials_of, repository_public_key_of,
    verification_secret_name,
};
use crate::secrets::Credentials;

const FLUXCONFIG_FILE: &str = "fluxconfig.yaml";
const SECRET_FILE: &str = "secret.yaml";
/// The public keys an OCI source verifies with (`objects::verification_secret_name`); no secret, so not private.
const VERIFICATION_FILE: &str = "verification-keys.yaml";

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
                write_if_changed(&path, &key)?;
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
                write_if_changed(&path, &hosts)?;
                Some(path)
            }
            None => None,
        };
        ssh_command(identity.as_deref(), known_hosts.as_deref())
    }
}

/// Writes a private file unless it already holds `contents`: the SSH files are read at every check of the source,
/// and rewriting (and syncing) them each time would be disk work for nothing.
fn write_if_changed(path: &std::path::Path, contents: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|held| held == contents) {
        return Ok(());
    }
    write_atomically(path, contents, true)
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
        Some("Secret")
            if object["metadata"]["labels"][CONFIGURATION_LABEL]
                .as_str()
                .is_some_and(|c| object["metadata"]["name"] == verification_secret_name(c).as_str()) =>
        {
            VERIFICATION_FILE.to_owned()
        }
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
        let checked = check_kustomizations(&mirror, &resolved, configuration).await;
        statuses.extend(checked.statuses);
        Observation {
            compliance: checked.compliance,
            message: checked.message,
            statuses,
            source_synced_commit_id: Some(resolved.synced_id),
            source_updated_at: Some(resolved.committed_at),
            repository_public_key: None,
        }
    }
}

/// The kustomizations' side of an observation.
struct Checked {
    statuses: Vec<ObjectStatus>,
    compliance: ComplianceState,
    message: Option<String>,
}

/// Checks each kustomization's build at the resolved commit (`kustomize.rs`), then its `dependsOn` (`settle`), into
/// statuses and the configuration's compliance: Non-Compliant if any is, else Unknown if any is, else Compliant.
async fn check_kustomizations(mirror: &Mirror, resolved: &Resolved, configuration: &DesiredConfiguration) -> Checked {
    let spec = &configuration.spec;
    let namespace = spec.namespace.as_deref().unwrap_or("default");
    let kustomizations: Vec<(&String, &Kustomization)> = spec.kustomizations.iter().flatten().collect();
    let paths = kustomizations
        .iter()
        .map(|(_, k)| k.path.clone().unwrap_or_default())
        .collect();
    let outcomes = match mirror.check_kustomizations(&resolved.commit, paths).await {
        Ok(outcomes) => outcomes,
        Err(err) => vec![Outcome::Unverified(format!("checking the build: {err:#}")); kustomizations.len()],
    };
    let graph = kustomizations
        .iter()
        .zip(outcomes)
        .map(|((name, k), outcome)| ((*name).clone(), (k.depends_on.clone().unwrap_or_default(), outcome)))
        .collect();
    let verdicts = settle(&configuration.name, namespace, &graph, &resolved.synced_id);
    let mut statuses = Vec::new();
    let mut problems = Vec::new();
    let mut compliance = ComplianceState::Compliant;
    for (kustomization, verdict) in verdicts {
        let ok = verdict.state == ComplianceState::Compliant;
        if !ok {
            problems.push(format!("kustomization '{kustomization}': {}", verdict.message));
        }
        compliance = match (compliance, verdict.state) {
            (ComplianceState::NonCompliant, _) | (_, ComplianceState::NonCompliant) => ComplianceState::NonCompliant,
            (ComplianceState::Unknown, _) | (_, ComplianceState::Unknown) => ComplianceState::Unknown,
            _ => ComplianceState::Compliant,
        };
        statuses.push(status(
            &format!("{}-{kustomization}", configuration.name),
            namespace,
            "Kustomization",
            verdict.state,
            condition(ok, verdict.reason, &verdict.message),
        ));
    }
    Checked {
        statuses,
        compliance,
        message: (!problems.is_empty()).then(|| problems.join("; ")),
    }
}

/// A kustomization's state once its dependencies are accounted for.
#[derive(Debug, Clone, PartialEq)]
struct Verdict {
    state: ComplianceState,
    /// The Ready condition's reason, in Flux's words.
    reason: &'static str,
    message: String,
}

/// Each kustomization's verdict, given its `dependsOn` and its own build's outcome, as Flux's kustomize-controller
/// decides: a kustomization waits for its dependencies before it builds, so one whose dependency is not ready is
/// not ready either ("dependency 'ns/name' is not ready"; Unknown when the dependency is, Non-Compliant otherwise),
/// whatever its own build; a cycle of dependencies is reported on every kustomization in it, never followed round.
fn settle(
    configuration: &str,
    namespace: &str,
    graph: &BTreeMap<String, (Vec<String>, Outcome)>,
    revision: &str,
) -> BTreeMap<String, Verdict> {
    struct Walk<'a> {
        configuration: &'a str,
        namespace: &'a str,
        graph: &'a BTreeMap<String, (Vec<String>, Outcome)>,
        revision: &'a str,
        done: BTreeMap<String, Verdict>,
        path: Vec<String>,
    }

    impl Walk<'_> {
        fn object(&self, kustomization: &str) -> String {
            format!("{}/{}-{kustomization}", self.namespace, self.configuration)
        }

        fn visit(&mut self, name: &str) -> Verdict {
            if let Some(verdict) = self.done.get(name) {
                return verdict.clone();
            }
            if let Some(start) = self.path.iter().position(|p| p == name) {
                let mut way: Vec<String> = self.path[start..].to_vec();
                way.push(name.to_owned());
                let verdict = Verdict {
                    state: ComplianceState::NonCompliant,
                    reason: "DependencyNotReady",
                    message: format!("dependency cycle: {}", way.join(" → ")),
                };
                for member in &self.path[start..] {
                    self.done.insert(member.clone(), verdict.clone());
                }
                return verdict;
            }
            let Some((depends_on, outcome)) = self.graph.get(name) else {
                return Verdict {
                    state: ComplianceState::NonCompliant,
                    reason: "DependencyNotReady",
                    message: format!("unable to get '{}' dependency: not found", self.object(name)),
                };
            };
            self.path.push(name.to_owned());
            let mut blocked = None;
            for dependency in depends_on {
                let verdict = self.visit(dependency);
                if verdict.state != ComplianceState::Compliant {
                    blocked = Some((dependency, verdict));
                    break;
                }
            }
            self.path.pop();
            // a cycle found below may have settled this one already
            if let Some(verdict) = self.done.get(name) {
                return verdict.clone();
            }
            let verdict = match (blocked, outcome) {
                (Some((dependency, verdict)), _) => Verdict {
                    state: if verdict.state == ComplianceState::Unknown {
                        ComplianceState::Unknown
                    } else {
                        ComplianceState::NonCompliant
                    },
                    reason: "DependencyNotReady",
                    message: format!(
                        "dependencies do not meet ready condition (dependency '{}' is not ready)",
                        self.object(dependency)
                    ),
                },
                (None, Outcome::Built { .. }) => Verdict {
                    state: ComplianceState::Compliant,
                    reason: "ReconciliationSucceeded",
                    message: format!("Applied revision: {}", self.revision),
                },
                (None, Outcome::Broken(message)) => Verdict {
                    state: ComplianceState::NonCompliant,
                    reason: "BuildFailed",
                    message: message.clone(),
                },
                (None, Outcome::Unverified(message)) => Verdict {
                    state: ComplianceState::Unknown,
                    reason: "Unverified",
                    message: message.clone(),
                },
            };
            self.done.insert(name.to_owned(), verdict.clone());
            verdict
        }
    }

    let mut walk = Walk {
        configuration,
        namespace,
        graph,
        revision,
        done: BTreeMap::new(),
        path: Vec::new(),
    };
    for name in graph.keys() {
        walk.visit(name);
    }
    walk.done
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::{CONFIG_MAP, Repository, git};

    fn graph(entries: &[(&str, &[&str], Outcome)]) -> BTreeMap<String, (Vec<String>, Outcome)> {
        entries
            .iter()
            .map(|(name, deps, outcome)| {
                (
                    name.to_string(),
                    (deps.iter().map(|d| d.to_string()).collect(), outcome.clone()),
                )
            })
            .collect()
    }

    fn built() -> Outcome {
        Outcome::Built { files: 1 }
    }

    #[test]
    fn a_kustomization_whose_dependency_fails_is_not_ready_in_fluxs_words() {
        let verdicts = settle(
            "cfg",
            "ns",
            &graph(&[
                (
                    "infra",
                    &[],
                    Outcome::Broken("infra/kustomization.yaml: resource 'x' does not exist".into()),
                ),
                ("apps", &["infra"], built()),
                ("tests", &["apps"], built()),
                ("other", &[], built()),
            ]),
            "main@sha1:abc",
        );
        assert_eq!(verdicts["infra"].state, ComplianceState::NonCompliant);
        assert_eq!(verdicts["infra"].reason, "BuildFailed");
        assert_eq!(verdicts["apps"].state, ComplianceState::NonCompliant);
        assert_eq!(verdicts["apps"].reason, "DependencyNotReady");
        assert_eq!(
            verdicts["apps"].message,
            "dependencies do not meet ready condition (dependency 'ns/cfg-infra' is not ready)"
        );
        assert_eq!(
            verdicts["tests"].message,
            "dependencies do not meet ready condition (dependency 'ns/cfg-apps' is not ready)",
            "a chain waits link by link"
        );
        assert_eq!(verdicts["other"].state, ComplianceState::Compliant);
        assert_eq!(verdicts["other"].message, "Applied revision: main@sha1:abc");
    }

    #[test]
    fn a_dependency_that_cannot_be_verified_leaves_its_dependents_unknown() {
        let verdicts = settle(
            "cfg",
            "ns",
            &graph(&[
                ("remote", &[], Outcome::Unverified("remote base".into())),
                ("apps", &["remote"], built()),
            ]),
            "r",
        );
        assert_eq!(verdicts["remote"].state, ComplianceState::Unknown);
        assert_eq!(verdicts["apps"].state, ComplianceState::Unknown);
        assert_eq!(verdicts["apps"].reason, "DependencyNotReady");
    }

    #[test]
    fn a_broken_build_waiting_on_a_dependency_reports_the_dependency_first_as_flux_does() {
        let verdicts = settle(
            "cfg",
            "ns",
            &graph(&[
                ("infra", &[], Outcome::Unverified("remote".into())),
                ("apps", &["infra"], Outcome::Broken("its own problem".into())),
            ]),
            "r",
        );
        assert!(
            verdicts["apps"]
                .message
                .contains("dependency 'ns/cfg-infra' is not ready")
        );
    }

    #[test]
    fn dependency_cycles_and_missing_dependencies_are_reported_not_followed() {
        let verdicts = settle(
            "cfg",
            "ns",
            &graph(&[
                ("a", &["b"], built()),
                ("b", &["c"], built()),
                ("c", &["a"], built()),
                ("d", &["a"], built()),
                ("e", &["ghost"], built()),
            ]),
            "r",
        );
        for member in ["a", "b", "c"] {
            assert_eq!(verdicts[member].state, ComplianceState::NonCompliant, "{member}");
            assert!(
                verdicts[member].message.starts_with("dependency cycle: "),
                "{member}: {:?}",
                verdicts[member]
            );
        }
        assert_eq!(verdicts["a"].message, "dependency cycle: a → b → c → a");
        assert!(verdicts["d"].message.contains("dependency 'ns/cfg-a' is not ready"));
        assert!(verdicts["e"].message.contains("dependency 'ns/cfg-ghost' is not ready"));
    }

    fn configuration(repository: &Repository, reference: Value, kustomizations: Value) -> DesiredConfiguration {
        DesiredConfiguration {
            name: "demo".into(),
            generation: 1,
            deleting: false,
            spec: serde_json::from_value(json!({
                "namespace": "flux-system",
                "gitRepository": {"url": repository.url(), "repositoryRef": reference, "timeoutInSeconds": 60},
                "kustomizations": kustomizations,
            }))
            .unwrap(),
            secrets_version: None,
            sealed_secrets: Vec::new(),
            reconcile_requested_at: None,
        }
    }

    fn status_of<'a>(observation: &'a Observation, name: &str) -> &'a ObjectStatus {
        observation
            .statuses
            .iter()
            .find(|s| s.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("no status for {name}: {observation:?}"))
    }

    fn message(status: &ObjectStatus) -> String {
        status.status_conditions.as_ref().unwrap()[0].message.clone().unwrap()
    }

    #[tokio::test]
    async fn a_broken_overlay_and_its_dependents_are_non_compliant_and_the_rest_compliant() {
        let repository = Repository::new(&[
            (
                "infra/kustomization.yaml",
                "resources:\n- ns.yaml\npatches:\n- path: missing-patch.yaml\n",
            ),
            ("infra/ns.yaml", CONFIG_MAP),
            ("apps/app.yaml", CONFIG_MAP),
            ("tools/tool.yaml", CONFIG_MAP),
        ]);
        let dir = tempfile::tempdir().unwrap();
        let target = DirTarget::new(dir.path()).unwrap();
        let desired = configuration(
            &repository,
            json!({"branch": "main"}),
            json!({"infra": {"path": "./infra"}, "apps": {"path": "./apps", "dependsOn": ["infra"]},
                   "tools": {"path": "./tools"}}),
        );
        let observed = target.observe(&desired).await;
        assert_eq!(observed.compliance, ComplianceState::NonCompliant, "{observed:?}");
        let infra = status_of(&observed, "demo-infra");
        assert_eq!(infra.compliance_state, Some(ComplianceState::NonCompliant));
        assert_eq!(
            message(infra),
            "infra/kustomization.yaml: patch 'missing-patch.yaml' does not exist"
        );
        let apps = status_of(&observed, "demo-apps");
        assert_eq!(apps.compliance_state, Some(ComplianceState::NonCompliant));
        assert!(
            message(apps).contains("dependency 'flux-system/demo-infra' is not ready"),
            "{apps:?}"
        );
        assert_eq!(
            status_of(&observed, "demo-tools").compliance_state,
            Some(ComplianceState::Compliant)
        );
        let summary = observed.message.unwrap();
        assert!(
            summary
                .contains("kustomization 'infra': infra/kustomization.yaml: patch 'missing-patch.yaml' does not exist"),
            "{summary}"
        );

        // fixed in the next commit, every kustomization is compliant
        repository.commit(
            &[(
                "infra/missing-patch.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n",
            )],
            "fix",
        );
        let observed = target.observe(&desired).await;
        assert_eq!(observed.compliance, ComplianceState::Compliant, "{observed:?}");
        assert_eq!(observed.message, None);
    }

    #[tokio::test]
    async fn a_remote_base_makes_the_configuration_unknown_never_compliant() {
        let repository = Repository::new(&[(
            "apps/kustomization.yaml",
            "resources:\n- https://github.com/stefanprodan/podinfo//kustomize?ref=6.7.0\n",
        )]);
        let dir = tempfile::tempdir().unwrap();
        let target = DirTarget::new(dir.path()).unwrap();
        let observed = target
            .observe(&configuration(
                &repository,
                json!({"branch": "main"}),
                json!({"apps": {"path": "apps"}}),
            ))
            .await;
        assert_eq!(observed.compliance, ComplianceState::Unknown, "{observed:?}");
        let apps = status_of(&observed, "demo-apps");
        assert_eq!(apps.compliance_state, Some(ComplianceState::Unknown));
        assert!(message(apps).contains("is remote; the dir target does not fetch remote references"));
    }

    #[tokio::test]
    async fn a_semver_range_as_flux_writes_it_resolves_to_the_highest_matching_tag() {
        let repository = Repository::new(&[("apps/app.yaml", CONFIG_MAP)]);
        let mut tagged = BTreeMap::new();
        for tag in ["v1.0.0", "v1.2.0", "v1.4.2", "v2.0.0", "v1.5.0-rc.1", "release-7"] {
            let commit = repository.commit(&[("VERSION", tag)], tag);
            git(&repository.work, &["tag", "-a", tag, "-m", tag]);
            tagged.insert(tag, commit);
        }
        let dir = tempfile::tempdir().unwrap();
        let target = DirTarget::new(dir.path()).unwrap();
        let kustomizations = json!({"apps": {"path": "apps"}});
        for (range, expected) in [
            (">= 1.2, < 2.0", "v1.4.2"),
            (">=1.1.0 <2.0.0", "v1.4.2"),
            ("~1.2", "v1.2.0"),
            ("^1", "v1.4.2"),
            ("1.0.0 - 1.3.0", "v1.2.0"),
            ("^1 || ^2", "v2.0.0"),
            (">=1.0.0-0 <2.0.0-0", "v1.5.0-rc.1"),
        ] {
            let observed = target
                .observe(&configuration(
                    &repository,
                    json!({"semver": range}),
                    kustomizations.clone(),
                ))
                .await;
            assert_eq!(observed.compliance, ComplianceState::Compliant, "{range}: {observed:?}");
            assert_eq!(
                observed.source_synced_commit_id,
                Some(format!("{expected}@sha1:{}", tagged[expected])),
                "{range}"
            );
        }
        let observed = target
            .observe(&configuration(&repository, json!({"semver": ">=3"}), kustomizations))
            .await;
        assert_eq!(observed.compliance, ComplianceState::NonCompliant);
        assert_eq!(observed.message.as_deref(), Some("no match found for semver: >=3"));
    }

    #[tokio::test]
    async fn an_oci_sources_public_keys_get_a_file_of_their_own_beside_the_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let target = DirTarget::new(dir.path()).unwrap();
        let mut desired = DesiredConfiguration {
            name: "oci".into(),
            generation: 1,
            deleting: false,
            spec: serde_json::from_value(json!({
                "sourceKind": "OCIRepository", "namespace": "team",
                "ociRepository": {"url": "oci://ghcr.io/org/m", "repositoryRef": {"tag": "v1"},
                                  "verify": {"provider": "cosign", "verificationConfig": {"cosign.pub": "a2V5"}}},
                "kustomizations": {"k": {"path": "./"}}
            }))
            .unwrap(),
            secrets_version: None,
            sealed_secrets: Vec::new(),
            reconcile_requested_at: None,
        };
        target.apply(&desired, &Credentials::default()).await.unwrap();
        let keys = std::fs::read_to_string(dir.path().join("oci").join(VERIFICATION_FILE)).unwrap();
        assert!(keys.contains("cosign.pub: a2V5"), "{keys}");
        assert!(!dir.path().join("oci").join(SECRET_FILE).exists());
        let source = std::fs::read_to_string(dir.path().join("oci").join("source.yaml")).unwrap();
        assert!(source.contains("name: oci-verify"), "{source}");

        // keys dropped, file gone
        desired.spec.oci_repository.as_mut().unwrap().verify = None;
        target.apply(&desired, &Credentials::default()).await.unwrap();
        assert!(!dir.path().join("oci").join(VERIFICATION_FILE).exists());
    }
}
