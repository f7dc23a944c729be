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

    /// Deletes the group; false when there was none, 409 while policy assignments or alert rules follow it.
    pub async fn delete(&self, scope: &FleetScope, name: &str) -> ApiResult<bool> {
        match self.store.delete_cluster_group(&scope.key(name)).await? {
            GroupDelete::Deleted => {
                tracing::info!(group = %scope.resource_id(TYPE_NAME, name), "cluster group deleted");
                Ok(true)
            }
            GroupDelete::Missing => Ok(false),
            GroupDelete::InUse => Err(ApiError::Conflict(format!(
                "policy assignments or alert rules follow the cluster group '{name}': delete them or point them \
                 elsewhere first"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fleet::assignments::model::PolicyAssignmentRequest;
    use crate::fleet::assignments::model::render;
    use crate::on_both_backends;
    use crate::testing::{Backend, Services, with_database};

    fn selector(value: serde_json::Value) -> LabelSelector {
        serde_json::from_value(value).unwrap()
    }

    on_both_backends!(
        a_group_is_written_checked_and_kept_while_assignments_follow_it,
        group_case
    );
    async fn group_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            let scope = FleetScope::parse("sub", Some("rg")).unwrap();
            let any = Preconditions::default();
            let prod = selector(json!({"matchLabels": {"env": "prod"}}));
            let (first, created) = services.groups.put("alice", &scope, "prod", &prod, &any).await.unwrap();
            assert!(created);
            assert_eq!(first.key, "sub/rg/prod");
            let wider =
                selector(json!({"matchExpressions": [{"key": "env", "operator": "In", "values": ["prod", "qa"]}]}));
            let (second, created) = services.groups.put("bob", &scope, "prod", &wider, &any).await.unwrap();
            assert!(!created);
            assert_eq!(second.selector, wider);
            let invalid = selector(json!({"matchExpressions": [{"key": "env", "operator": "In", "values": []}]}));
            let refused = services
                .groups
                .put("bob", &scope, "prod", &invalid, &any)
                .await
                .unwrap_err();
            assert_eq!(refused.status(), axum::http::StatusCode::BAD_REQUEST, "{refused:?}");
            let stale = services
                .groups
                .put("carol", &scope, "prod", &prod, &Preconditions::if_match(&first.etag))
                .await
                .unwrap_err();
            assert_eq!(stale.code(), "PreconditionFailed");
            assert_eq!(
                store.get_cluster_group("sub/rg/prod").await.unwrap().unwrap().selector,
                wider
            );

            let request: PolicyAssignmentRequest = serde_json::from_value(json!({"properties": {
                "clusterGroupId": scope.resource_id(TYPE_NAME, "prod"),
                "configurationName": "baseline",
                "configurationTemplate": {
                    "gitRepository": {"url": "https://example.com/fleet.git", "repositoryRef": {"branch": "main"}},
                    "kustomizations": {"infra": {"path": "./infra"}}
                }
            }}))
            .unwrap();
            let rendered = render(&request.properties).unwrap();
            services
                .assignments
                .put("owner", &scope, "baseline", &request.properties, &rendered, &any)
                .await
                .unwrap();
            let in_use = services.groups.delete(&scope, "prod").await.unwrap_err();
            assert_eq!(in_use.code(), "Conflict");
            assert!(services.assignments.delete(&scope, "baseline").await.unwrap());
            assert!(services.groups.delete(&scope, "prod").await.unwrap());
            assert!(!services.groups.delete(&scope, "prod").await.unwrap());
        })
        .await;
    }
}
