//! A connected cluster as the API answers it: the stored record, with its connectivity as of now.

use super::model::{ConnectedCluster, ConnectedClusterProperties};
use super::service::TYPE;
use crate::arm::ids::ClusterRef;
use crate::lifecycle::connectivity;
use crate::model::ClusterRecord;

/// The cluster `record` as answered; an agent silent for `offline_after` shows Offline.
pub fn render(record: ClusterRecord, offline_after: std::time::Duration) -> ConnectedCluster {
    let connectivity_status = connectivity(
        &record.connectivity_status,
        record.last_connectivity_time,
        offline_after,
    );
    let cluster = ClusterRef::parse(&record.subscription, &record.resource_group, &record.name)
        .expect("stored names were validated when written");
    ConnectedCluster {
        id: cluster.id(),
        name: record.name,
        type_: TYPE.to_owned(),
        location: record.location,
        tags: record.tags,
        identity: record.spec.identity,
        kind: record.spec.kind,
        system_data: record.system_data,
        properties: ConnectedClusterProperties {
            spec: record.spec.properties,
            provisioning_state: "Succeeded".to_owned(),
            connectivity_status,
            last_connectivity_time: record.last_connectivity_time,
            agent_version: record.agent_version,
            kubernetes_version: record.kubernetes_version,
            total_node_count: record.total_node_count,
        },
    }
}
