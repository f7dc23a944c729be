//! `Fluxplane.Fleet`: resources over many clusters at once, at subscription or resource-group scope. Cluster
//! groups select clusters by their tags (`selector`, served by `groups`); policy assignments give every cluster
//! they select a Flux configuration rendered from a template (`template`, served by `assignments`); the compliance
//! summary counts their configurations' states (`summary`). Where each commit is and how it spread (`commits`), and
//! the circuit breaker that halts the assignments reading a repository whose commit fails (`breaker`). Git
//! receivers hear of pushes and ask the configurations reading the pushed repository to re-check it at once
//! (`receivers`).

pub mod assignments;
pub mod breaker;
pub mod cluster_compliance;
pub mod commits;
pub mod failing;
pub mod groups;
pub mod groups_service;
pub mod receivers;
pub mod selector;
pub mod summary;
pub mod template;

use crate::arm::ids::ClusterRef;
use crate::model::ClusterTags;

/// The cluster a fleet query found, as ARM addresses it (`subscription` as the caller spelled it).
pub fn cluster_ref(subscription: &str, cluster: &ClusterTags) -> ClusterRef {
    ClusterRef::parse(subscription, &cluster.resource_group, &cluster.name)
        .expect("stored names were validated when written")
}
