//! Where an agent materialises its cluster's configurations.

pub mod dir;
pub mod kube;

use std::collections::BTreeMap;

use async_trait::async_trait;
use fluxplane_agent_protocol::agent::{DesiredConfiguration, Drift, ExtensionStatus};
use fluxplane_agent_protocol::flux::{ComplianceState, ObjectStatus};

use crate::secrets::Credentials;

/// The observed state of a configuration's objects.
#[derive(Debug, Clone, PartialEq)]
pub struct Observation {
    pub compliance: ComplianceState,
    /// Why it is not compliant, or why its state is unknown.
    pub message: Option<String>,
    pub statuses: Vec<ObjectStatus>,
    pub source_synced_commit_id: Option<String>,
    pub source_updated_at: Option<String>,
    /// The public key the source authenticates with (`repositoryPublicKey`), where the configuration's secret
    /// holds an SSH key whose public half is known.
    pub repository_public_key: Option<String>,
}

impl Observation {
    /// An observation of nothing but a state and why.
    pub fn only(compliance: ComplianceState, message: Option<String>) -> Self {
        Self {
            compliance,
            message,
            statuses: Vec::new(),
            source_synced_commit_id: None,
            source_updated_at: None,
            repository_public_key: None,
        }
    }
}

#[async_trait]
pub trait Target: Send + Sync {
    /// The configurations the target holds, with the generation each was written at: what a restarted agent
    /// need not write again.
    async fn inventory(&self) -> anyhow::Result<BTreeMap<String, i64>>;
    /// Writes the configuration's objects with its credentials, if it has any (replacing an older generation,
    /// removing objects it no longer implies, the secret included).
    async fn apply(&self, configuration: &DesiredConfiguration, credentials: &Credentials) -> anyhow::Result<()>;
    /// The credentials the target holds for the configuration (none when it holds no secret for it).
    async fn credentials(&self, configuration: &DesiredConfiguration) -> anyhow::Result<Credentials>;
    /// The objects of the configuration, as `apply` writes them with `credentials`, that are missing or hold other
    /// values in the fields the agent writes: what `apply` would write back.
    async fn drift(
        &self,
        configuration: &DesiredConfiguration,
        credentials: &Credentials,
    ) -> anyhow::Result<Vec<Drifted>>;
    /// Removes every object of the configuration; removing what is absent succeeds.
    async fn remove(&self, name: &str) -> anyhow::Result<()>;
    /// Observes the configuration's objects as they are now.
    async fn observe(&self, configuration: &DesiredConfiguration) -> Observation;
    /// What the target knows of its cluster: the Kubernetes version and the node count, where there is a cluster.
    async fn cluster_facts(&self) -> ClusterFacts;
    /// Whether the target's cluster answers (`Err` says why not): what the agent asks before it writes again after
    /// a failure, and while it waits for the cluster to come back. A target without a cluster always answers.
    async fn reachable(&self) -> anyhow::Result<()> {
        Ok(())
    }
    /// Writes configurations from now on with multi-tenancy enforced or not (the Flux extension's
    /// `multiTenancy.enforce`); answers whether what the target writes depends on it, so that the agent writes its
    /// configurations again when it changes.
    fn set_multi_tenancy(&self, _enforced: bool) -> bool {
        false
    }
    /// What the target finds of Flux in its cluster's `namespace` (the Flux extension's), as the extension's
    /// statuses; none where there is no cluster.
    async fn flux_statuses(&self, _namespace: &str) -> Vec<ExtensionStatus> {
        Vec::new()
    }
}

/// An object of a configuration that is not as the agent wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Drifted {
    pub kind: String,
    pub name: String,
    pub namespace: Option<String>,
    pub drift: Drift,
}

impl Drifted {
    /// How `written` (an object as a target writes it) has drifted, given what is there now (`None`: nothing):
    /// every field it writes must hold the same value, while fields others add (defaults, status, other managers'
    /// fields) are theirs.
    pub fn of(written: &serde_json::Value, found: Option<&serde_json::Value>) -> Option<Self> {
        match found {
            None => Some(Self::new(written, Drift::Deleted)),
            Some(found) if !holds(found, written) => Some(Self::new(written, Drift::Changed)),
            Some(_) => None,
        }
    }

    /// `written` (an object as a target writes it), drifted.
    pub fn new(written: &serde_json::Value, drift: Drift) -> Self {
        let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
        Self {
            kind: text(&written["kind"]).unwrap_or_default(),
            name: text(&written["metadata"]["name"]).unwrap_or_default(),
            namespace: text(&written["metadata"]["namespace"]),
            drift,
        }
    }
}

/// Whether `found` holds every field of `written` with its value (objects recursively; lists and scalars whole).
fn holds(found: &serde_json::Value, written: &serde_json::Value) -> bool {
    match (found, written) {
        (serde_json::Value::Object(found), serde_json::Value::Object(written)) => written
            .iter()
            .all(|(key, value)| found.get(key).is_some_and(|there| holds(there, value))),
        _ => found == written,
    }
}

/// Facts about the cluster a target writes to, reported with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    pub kubernetes_version: Option<String>,
    pub total_node_count: Option<i64>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn kustomization(path: &str) -> serde_json::Value {
        json!({"apiVersion": "kustomize.toolkit.fluxcd.io/v1", "kind": "Kustomization",
               "metadata": {"name": "cfg-apps", "namespace": "ns", "labels": {"fluxplane.io/configuration": "cfg"}},
               "spec": {"path": path, "prune": true}})
    }

    #[test]
    fn fields_others_add_are_no_drift_but_a_changed_or_missing_field_of_ours_is() {
        let written = kustomization("./apps");
        let mut found = written.clone();
        found["metadata"]["uid"] = json!("1234");
        found["metadata"]["labels"]["team"] = json!("a");
        found["spec"]["timeout"] = json!("5m");
        found["status"] = json!({"conditions": []});
        assert_eq!(Drifted::of(&written, Some(&found)), None);

        found["spec"]["path"] = json!("./elsewhere");
        let changed = Drifted::of(&written, Some(&found)).unwrap();
        assert_eq!(
            changed,
            Drifted {
                kind: "Kustomization".into(),
                name: "cfg-apps".into(),
                namespace: Some("ns".into()),
                drift: Drift::Changed
            }
        );
        let mut unlabelled = written.clone();
        unlabelled["metadata"]["labels"] = json!({});
        assert_eq!(Drifted::of(&written, Some(&unlabelled)).unwrap().drift, Drift::Changed);
        assert_eq!(Drifted::of(&written, None).unwrap().drift, Drift::Deleted);
    }
}
