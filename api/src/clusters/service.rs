//! The write rules of connected clusters: registration, replacement and patches under optimistic concurrency, the
//! location that never changes, and what a new agent key does to secrets sealed to the old one. A tag change may
//! give or take configurations of policy assignments: the store applies that in the same transaction, and the
//! store's announcement of changed desired states wakes the agents.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::Utc;
use serde_json::Value;

use super::model::{ClusterProperties, ClusterSpec, validate};
use crate::arm::ApiVersion;
use crate::arm::api_version::Clusters as ClustersVersion;
use crate::arm::body::parse;
use crate::arm::conditional::Preconditions;
use crate::arm::ids::ClusterRef;
use crate::arm::system_data::SystemData;
use crate::arm::write::{Attempt, new_etag, retry};
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::ExpiryMessages;
use crate::lifecycle::{ConnectivityStatus, Lifetimes};
use crate::model::{ClusterRecord, Write};
use crate::store::Store;
use crate::turns::Turns;

pub const TYPE: &str = "Microsoft.Kubernetes/connectedClusters";

/// A cluster as a PUT describes it, checked.
#[derive(Debug, Clone)]
pub struct ClusterDraft {
    pub location: String,
    pub tags: BTreeMap<String, String>,
    pub spec: ClusterSpec,
}

impl ClusterDraft {
    pub fn new(location: String, tags: BTreeMap<String, String>, spec: ClusterSpec) -> ApiResult<Self> {
        validate(&location, &tags, &spec.properties)?;
        Ok(Self { location, tags, spec })
    }
}

/// What a PATCH changes: a JSON merge patch of the properties, and the tags as a whole when given.
#[derive(Debug, Clone, Default)]
pub struct ClusterChanges {
    pub properties: Option<Value>,
    pub tags: Option<BTreeMap<String, String>>,
}

/// Writes connected clusters.
#[derive(Clone)]
pub struct Clusters {
    store: Arc<dyn Store>,
    turns: Arc<Turns>,
    lifetimes: Lifetimes,
    messages: Arc<ExpiryMessages>,
}

impl Clusters {
    pub fn new(store: Arc<dyn Store>, turns: Arc<Turns>, lifetimes: Lifetimes, messages: Arc<ExpiryMessages>) -> Self {
        Self {
            store,
            turns,
            lifetimes,
            messages,
        }
    }

    /// Registers the cluster, or replaces its fields but its location (at an older `version`, the fields that
    /// version can express: [`ApiVersion::keep_newer`]); true when it was created.
    pub async fn put(
        &self,
        subject: &str,
        cluster: &ClusterRef,
        draft: &ClusterDraft,
        preconditions: &Preconditions,
        version: ApiVersion<ClustersVersion>,
    ) -> ApiResult<(ClusterRecord, bool)> {
        let key = &cluster.key();
        retry(&self.turns, &turn(key), preconditions, move || async move {
            let current = self.store.get_cluster(key).await?;
            preconditions.check(current.as_ref().map(|c| c.etag.as_str()))?;
            let now = Utc::now();
            let managed = self.lifetimes.managed_write(now);
            let Some(current) = current else {
                let record = ClusterRecord {
                    id: 0,
                    key: key.to_owned(),
                    subscription_key: cluster.subscription.key(),
                    resource_group_key: cluster.resource_group.key(),
                    subscription: cluster.subscription.as_str().to_owned(),
                    resource_group: cluster.resource_group.as_str().to_owned(),
                    name: cluster.name.as_str().to_owned(),
                    location: draft.location.clone(),
                    tags: draft.tags.clone(),
                    spec: draft.spec.clone(),
                    connectivity_status: ConnectivityStatus::Connecting.as_str().to_owned(),
                    last_connectivity_time: None,
                    agent_version: None,
                    kubernetes_version: None,
                    total_node_count: None,
                    etag: new_etag(),
                    system_data: SystemData::created(subject, now),
                    revision: 0,
                    agent_encryption_key: None,
                };
                return Ok(match self.store.insert_cluster(&record, &managed).await? {
                    Write::Written => Attempt::Done((record, true)),
                    Write::Conflict | Write::ParentMissing => Attempt::Lost,
                });
            };
            if !same_location(&current.location, &draft.location) {
                return Err(ApiError::invalid(
                    "location",
                    format!(
                        "the cluster is registered in '{}'; its location cannot change to '{}'",
                        current.location, draft.location
                    ),
                ));
            }
            let spec = if version.is_newest() {
                draft.spec.clone()
            } else {
                let mut spec = serde_json::to_value(&draft.spec).map_err(anyhow::Error::from)?;
                version.keep_newer(
                    &mut spec,
                    &serde_json::to_value(&current.spec).map_err(anyhow::Error::from)?,
                );
                parse(spec, "")?
            };
            let record = ClusterRecord {
                tags: draft.tags.clone(),
                spec,
                etag: new_etag(),
                system_data: current.system_data.modified(subject, now),
                ..current.clone()
            };
            self.update(&current, record).await.map(|a| match a {
                Attempt::Done(record) => Attempt::Done((record, false)),
                Attempt::Lost => Attempt::Lost,
            })
        })
        .await
        .inspect(|(_, created)| tracing::info!(cluster = %cluster.id(), created, "cluster written"))
    }

    /// Changes the cluster's tags (as a whole) and merges a patch of its properties.
    pub async fn patch(
        &self,
        subject: &str,
        cluster: &ClusterRef,
        changes: &ClusterChanges,
        preconditions: &Preconditions,
    ) -> ApiResult<ClusterRecord> {
        let key = &cluster.key();
        retry(&self.turns, &turn(key), preconditions, move || async move {
            let current = self.store.get_cluster(key).await?.ok_or_else(|| not_found(cluster))?;
            preconditions.check(Some(&current.etag))?;
            let mut properties = serde_json::to_value(&current.spec.properties).map_err(anyhow::Error::from)?;
            if let Some(patch) = &changes.properties {
                json_patch::merge(&mut properties, patch);
            }
            let properties: ClusterProperties = parse(properties, "properties")?;
            let tags = changes.tags.clone().unwrap_or_else(|| current.tags.clone());
            validate(&current.location, &tags, &properties)?;
            let record = ClusterRecord {
                tags,
                spec: ClusterSpec {
                    properties,
                    ..current.spec.clone()
                },
                etag: new_etag(),
                system_data: current.system_data.modified(subject, Utc::now()),
                ..current.clone()
            };
            self.update(&current, record).await
        })
        .await
    }

    /// Writes `record` over `current` if nobody changed it since.
    async fn update(&self, current: &ClusterRecord, record: ClusterRecord) -> ApiResult<Attempt<ClusterRecord>> {
        // a new agent key means a new agent: secrets sealed to the old one can no longer be opened
        let rotated = (current.spec.properties.agent_public_key_certificate.trim()
            != record.spec.properties.agent_public_key_certificate.trim())
        .then_some(self.messages.rotated.as_str());
        let managed = self.lifetimes.managed_write(Utc::now());
        Ok(
            match self
                .store
                .update_cluster(&record, &current.etag, rotated, &managed)
                .await?
            {
                Write::Written => Attempt::Done(record),
                Write::Conflict | Write::ParentMissing => Attempt::Lost,
            },
        )
    }

    /// Deletes the cluster with its configurations; false when there was none.
    pub async fn delete(&self, cluster: &ClusterRef) -> ApiResult<bool> {
        let deleted = self.store.delete_cluster(&cluster.key()).await?;
        if deleted {
            tracing::info!(cluster = %cluster.id(), "cluster deleted with its configurations");
        }
        Ok(deleted)
    }
}

/// The turn writers of the cluster `key` take.
fn turn(key: &str) -> String {
    format!("cluster {key}")
}

pub fn not_found(cluster: &ClusterRef) -> ApiError {
    ApiError::ResourceNotFound(format!(
        "The Resource '{TYPE}/{}' under resource group '{}' was not found.",
        cluster.name.as_str(),
        cluster.resource_group.as_str()
    ))
}

/// ARM treats "West Europe" and "westeurope" as one location.
fn same_location(a: &str, b: &str) -> bool {
    let normal = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase()
    };
    normal(a) == normal(b)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::on_both_backends;
    use crate::testing::{Backend, Services, with_database};

    fn draft(location: &str, env: &str) -> ClusterDraft {
        let spec = serde_json::from_value(json!({"properties": {"agentPublicKeyCertificate": "a2V5"}})).unwrap();
        ClusterDraft::new(location.into(), BTreeMap::from([("env".into(), env.into())]), spec).unwrap()
    }

    on_both_backends!(
        a_cluster_is_registered_replaced_and_patched_but_never_moved,
        registered_replaced_patched_case
    );
    async fn registered_replaced_patched_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let clusters = Services::new(store.clone()).clusters;
            let c1 = ClusterRef::parse("sub", "rg", "c1").unwrap();
            let any = Preconditions::default();
            let (first, created) = clusters
                .put("alice", &c1, &draft("westeurope", "dev"), &any, ApiVersion::newest())
                .await
                .unwrap();
            assert!(created);
            assert_eq!(first.connectivity_status, "Connecting");
            let (second, created) = clusters
                .put("bob", &c1, &draft("West Europe", "prod"), &any, ApiVersion::newest())
                .await
                .unwrap();
            assert!(!created, "the same location, spelled as ARM allows");
            assert_ne!(second.etag, first.etag);
            assert_eq!(second.tags["env"], "prod");
            let moved = clusters
                .put("bob", &c1, &draft("eastus", "prod"), &any, ApiVersion::newest())
                .await
                .unwrap_err();
            assert_eq!(moved.status(), axum::http::StatusCode::BAD_REQUEST, "{moved:?}");

            let changes = ClusterChanges {
                properties: Some(json!({"distribution": "k3s"})),
                tags: Some(BTreeMap::from([("env".into(), "qa".into())])),
            };
            let patched = clusters.patch("carol", &c1, &changes, &any).await.unwrap();
            assert_eq!(patched.spec.properties.distribution.as_deref(), Some("k3s"));
            assert_eq!(
                patched.spec.properties.agent_public_key_certificate, "a2V5",
                "merged, not replaced"
            );
            assert_eq!(patched.tags["env"], "qa");
            assert_eq!(patched.system_data.last_modified_by, "carol");

            let stale = clusters
                .patch("dave", &c1, &changes, &Preconditions::if_match(&first.etag))
                .await
                .unwrap_err();
            assert_eq!(stale.code(), "PreconditionFailed");
            let stored = store.get_cluster(&c1.key()).await.unwrap().unwrap();
            assert_eq!(stored.etag, patched.etag, "a refused write changes nothing");

            assert!(clusters.delete(&c1).await.unwrap());
            assert!(!clusters.delete(&c1).await.unwrap());
            let gone = clusters.patch("carol", &c1, &changes, &any).await.unwrap_err();
            assert_eq!(gone.code(), "ResourceNotFound");
        })
        .await;
    }
}
