//! Where an agent materialises its cluster's configurations.

pub mod dir;
pub mod kube;

use std::collections::BTreeMap;

use async_trait::async_trait;
use fluxplane_agent_protocol::agent::DesiredConfiguration;
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
    /// Removes every object of the configuration; removing what is absent succeeds.
    async fn remove(&self, name: &str) -> anyhow::Result<()>;
    /// Observes the configuration's objects as they are now.
    async fn observe(&self, configuration: &DesiredConfiguration) -> Observation;
    /// What the target knows of its cluster: the Kubernetes version and the node count, where there is a cluster.
    async fn cluster_facts(&self) -> ClusterFacts;
}

/// Facts about the cluster a target writes to, reported with every heartbeat.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterFacts {
    pub kubernetes_version: Option<String>,
    pub total_node_count: Option<i64>,
}
