//! The write rules of cluster groups: a selector written under optimistic concurrency. A changed selector may give
//! or take configurations of the policy assignments that follow the group: the store applies that in the same
//! transaction (and announces the clusters whose desired state changed); a group that assignments follow cannot
//! be deleted.

use std::sync::Arc;

use chrono::Utc;

use super::selector::LabelSelector;
use crate::arm::conditional::Preconditions;
use crate::arm::scope::FleetScope;
use crate::arm::system_data::SystemData;
use crate::arm::write::{Attempt, new_etag, retry};
use crate::error::{ApiError, ApiResult, Problems};
use crate::lifecycle::Lifetimes;
use crate::model::{ClusterGroupRecord, GroupDelete, Write};
use crate::store::Store;
use crate::turns::Turns;

pub const TYPE_NAME: &str = "clusterGroups";

/// Writes cluster groups.
#[derive(Clone)]
pub struct Groups {
    store: Arc<dyn Store>,
    turns: Arc<Turns>,
    lifetimes: Lifetimes,
}

impl Groups {
    pub fn new(store: Arc<dyn Store>, turns: Arc<Turns>, lifetimes: Lifetimes) -> Self {
        Self {
            store,
            turns,
            lifetimes,
        }
    }

    /// Creates or replaces the group `name` of `scope` with `selector`; true when it was created.
    pub async fn put(
        &self,
        subject: &str,
        scope: &FleetScope,
        name: &str,
        selector: &LabelSelector,
        preconditions: &Preconditions,
    ) -> ApiResult<(ClusterGroupRecord, bool)> {
        let mut problems = Problems::default();
        selector.validate("properties.selector", &mut problems);
        problems.into_result("cluster group", Some("properties.selector"))?;
        let key = &scope.key(name);
        let written = retry(
            &self.turns,
            &format!("{TYPE_NAME} {key}"),
            preconditions,
            move || async move {
                let current = self.store.get_cluster_group(key).await?;
                preconditions.check(current.as_ref().map(|g| g.etag.as_str()))?;
                let now = Utc::now();
                let (record, created, outcome) = match current {
                    None => {
                        let record = ClusterGroupRecord {
                            id: 0,
                            key: key.to_owned(),
                            subscription_key: scope.subscription.key(),
                            resource_group_key: scope.resource_group.as_ref().map(|g| g.key()).unwrap_or_default(),
                            subscription: scope.subscription.as_str().to_owned(),
                            resource_group: scope.resource_group.as_ref().map(|g| g.as_str().to_owned()),
                            name: name.to_owned(),
                            selector: selector.clone(),
                            etag: new_etag(),
                            system_data: SystemData::created(subject, now),
                        };
                        let outcome = self.store.insert_cluster_group(&record).await?;
                        (record, true, outcome)
                    }
                    Some(current) => {
                        let expected = current.etag.clone();
                        let record = ClusterGroupRecord {
                            selector: selector.clone(),
                            etag: new_etag(),
                            system_data: current.system_data.modified(subject, now),
                            ..current
                        };
                        let outcome = self
                            .store
                            .update_cluster_group(&record, &expected, &self.lifetimes.managed_write(now))
                            .await?;
                        (record, false, outcome)
                    }
                };
                Ok(match outcome {
                    Write::Written => Attempt::Done((record, created)),
                    Write::Conflict | Write::ParentMissing => Attempt::Lost,
                })
            },
        )
        .await?;
        tracing::info!(group = %scope.resource_id(TYPE_NAME, name), "cluster group written");
        Ok(written)
    }

    /// Deletes the group; false when there was none, 409 while policy assignments follow it.
    pub async fn delete(&self, scope: &FleetScope, name: &str) -> ApiResult<bool> {
        match self.store.delete_cluster_group(&scope.key(name)).await? {
            GroupDelete::Deleted => {
                tracing::info!(group = %scope.resource_id(TYPE_NAME, name), "cluster group deleted");
                Ok(true)
            }
            GroupDelete::Missing => Ok(false),
            GroupDelete::InUse => Err(ApiError::Conflict(format!(
                "policy assignments follow the cluster group '{name}': delete them or point them elsewhere first"
            ))),
        }
    }
}
