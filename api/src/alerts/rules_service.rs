//! The write rules of alert rules: the spec checked (`RuleSpec::validate`), its cluster group and receivers
//! resolved to rows of the rule's subscription (a group's scope must share clusters with the rule's), its policy
//! assignment id checked for form (the assignment may come and go: the rule matches its events while it exists),
//! then written under optimistic concurrency with its receivers in one transaction.

use std::sync::Arc;

use chrono::Utc;

use super::model::RuleSpec;
use super::receivers_service::TYPE_NAME as RECEIVERS;
use crate::arm::conditional::Preconditions;
use crate::arm::scope::FleetScope;
use crate::arm::system_data::SystemData;
use crate::arm::write::{Attempt, new_etag, retry};
use crate::error::{ApiError, ApiResult, Problems};
use crate::model::{AlertRuleRecord, Write};
use crate::store::Store;
use crate::turns::Turns;

pub const TYPE_NAME: &str = "alertRules";

/// Writes alert rules.
#[derive(Clone)]
pub struct Rules {
    store: Arc<dyn Store>,
    turns: Arc<Turns>,
}

impl Rules {
    pub fn new(store: Arc<dyn Store>, turns: Arc<Turns>) -> Self {
        Self { store, turns }
    }

    /// The store ids of the receivers `spec` names, in its order: each must exist in the rule's subscription, and
    /// be named once.
    async fn resolve_receivers(&self, scope: &FleetScope, spec: &RuleSpec) -> ApiResult<Vec<i64>> {
        let mut ids = Vec::with_capacity(spec.receiver_ids.len());
        for (i, id) in spec.receiver_ids.iter().enumerate() {
            let target = format!("properties.receiverIds[{i}]");
            let invalid = |message: &str| ApiError::invalid(target.clone(), format!("{target}: '{id}' {message}"));
            let (receiver_scope, name) = FleetScope::parse_resource_id(id, RECEIVERS)
                .ok_or_else(|| invalid("is not the ARM id of an alert receiver"))?
                .map_err(|_| invalid("is not a valid ARM id"))?;
            if receiver_scope.subscription.key() != scope.subscription.key() {
                return Err(invalid("is not in the rule's subscription"));
            }
            let receiver = self
                .store
                .get_alert_receiver(&receiver_scope.key(name))
                .await?
                .ok_or_else(|| invalid("names no alert receiver"))?;
            if ids.contains(&receiver.id) {
                return Err(invalid("is named twice"));
            }
            ids.push(receiver.id);
        }
        Ok(ids)
    }

    /// The store id of the cluster group `spec` names, which must exist in the rule's subscription and share
    /// clusters with its scope.
    async fn resolve_group(&self, scope: &FleetScope, id: &str) -> ApiResult<i64> {
        const TARGET: &str = "properties.clusterGroupId";
        let invalid = |message: &str| ApiError::invalid(TARGET, format!("{TARGET}: '{id}' {message}"));
        let (group_scope, name) = FleetScope::parse_resource_id(id, "clusterGroups")
            .ok_or_else(|| invalid("is not the ARM id of a cluster group"))?
            .map_err(|_| invalid("is not a valid ARM id"))?;
        if group_scope.subscription.key() != scope.subscription.key() {
            return Err(invalid("is not in the rule's subscription"));
        }
        if let (Some(rule), Some(group)) = (&scope.resource_group, &group_scope.resource_group)
            && rule.key() != group.key()
        {
            return Err(invalid("is in a resource group whose clusters the rule does not see"));
        }
        let group = self
            .store
            .get_cluster_group(&group_scope.key(name))
            .await?
            .ok_or_else(|| invalid("names no cluster group"))?;
        Ok(group.id)
    }

    /// Creates or replaces the rule `name` of `scope`; true when it was created.
    pub async fn put(
        &self,
        subject: &str,
        scope: &FleetScope,
        name: &str,
        spec: &RuleSpec,
        preconditions: &Preconditions,
    ) -> ApiResult<(AlertRuleRecord, bool)> {
        let mut problems = Problems::default();
        spec.validate(&mut problems);
        if let Some(id) = &spec.policy_assignment_id {
            match FleetScope::parse_resource_id(id, "policyAssignments") {
                Some(Ok((assignment, name)))
                    if assignment.subscription.key() == scope.subscription.key()
                        && crate::arm::scope::parse_name("policyAssignmentName", name).is_ok() => {}
                Some(Ok((assignment, _))) if assignment.subscription.key() == scope.subscription.key() => problems.add(
                    "properties.policyAssignmentId",
                    format!("'{id}' does not end in a valid policy assignment name"),
                ),
                Some(Ok(_)) => problems.add(
                    "properties.policyAssignmentId",
                    format!("'{id}' is not in the rule's subscription"),
                ),
                _ => problems.add(
                    "properties.policyAssignmentId",
                    format!("'{id}' is not the ARM id of a policy assignment"),
                ),
            }
        }
        problems.into_result("alert rule", Some("properties"))?;
        let receivers = self.resolve_receivers(scope, spec).await?;
        let group = match &spec.cluster_group_id {
            Some(id) => Some(self.resolve_group(scope, id).await?),
            None => None,
        };
        let key = &scope.key(name);
        let (receivers, group) = (&receivers, group);
        let written = retry(
            &self.turns,
            &format!("{TYPE_NAME} {key}"),
            preconditions,
            move || async move {
                let current = self.store.get_alert_rule(key).await?;
                preconditions.check(current.as_ref().map(|r| r.etag.as_str()))?;
                let now = Utc::now();
                let (record, created, outcome) = match current {
                    None => {
                        let record = AlertRuleRecord {
                            id: 0,
                            key: key.to_owned(),
                            subscription_key: scope.subscription.key(),
                            resource_group_key: scope.resource_group.as_ref().map(|g| g.key()).unwrap_or_default(),
                            subscription: scope.subscription.as_str().to_owned(),
                            resource_group: scope.resource_group.as_ref().map(|g| g.as_str().to_owned()),
                            name: name.to_owned(),
                            spec: spec.clone(),
                            cluster_group_id: group,
                            etag: new_etag(),
                            system_data: SystemData::created(subject, now),
                            receivers: receivers.clone(),
                        };
                        let outcome = self.store.insert_alert_rule(&record).await?;
                        (record, true, outcome)
                    }
                    Some(current) => {
                        let expected = current.etag.clone();
                        let record = AlertRuleRecord {
                            spec: spec.clone(),
                            cluster_group_id: group,
                            etag: new_etag(),
                            system_data: current.system_data.modified(subject, now),
                            receivers: receivers.clone(),
                            ..current
                        };
                        let outcome = self.store.update_alert_rule(&record, &expected).await?;
                        (record, false, outcome)
                    }
                };
                match outcome {
                    Write::Written => Ok(Attempt::Done((record, created))),
                    Write::Conflict => Ok(Attempt::Lost),
                    Write::ParentMissing => Err(ApiError::invalid(
                        "properties",
                        "properties: the rule's cluster group or one of its receivers was deleted meanwhile",
                    )),
                }
            },
        )
        .await?;
        tracing::info!(rule = %scope.resource_id(TYPE_NAME, name), "alert rule written");
        Ok(written)
    }

    /// Deletes the rule (and what its minimum interval held back); false when there was none.
    pub async fn delete(&self, scope: &FleetScope, name: &str) -> ApiResult<bool> {
        let deleted = self.store.delete_alert_rule(&scope.key(name)).await?;
        if deleted {
            tracing::info!(rule = %scope.resource_id(TYPE_NAME, name), "alert rule deleted");
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::on_both_backends;
    use crate::testing::{Backend, Services, with_database};

    fn spec(value: serde_json::Value) -> RuleSpec {
        serde_json::from_value(value).unwrap()
    }

    on_both_backends!(
        a_rule_names_receivers_and_a_group_of_its_subscription_and_keeps_them_from_deletion,
        rule_case
    );
    async fn rule_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            let rules = Rules::new(store.clone(), Arc::default());
            let scope = FleetScope::parse("sub", Some("rg")).unwrap();
            let any = Preconditions::default();
            let receiver = crate::model::AlertReceiverRecord {
                id: 0,
                key: "sub/ops".into(),
                subscription_key: "sub".into(),
                resource_group_key: String::new(),
                subscription: "sub".into(),
                resource_group: None,
                name: "ops".into(),
                spec: crate::alerts::model::ReceiverSpec {
                    kind: crate::alerts::model::ReceiverKind::Slack,
                    url_host: "hooks.slack.com".into(),
                    rate_limit_per_minute: 60,
                },
                sealed_url: "sealed".into(),
                sealed_signing_key: None,
                etag: "e".into(),
                system_data: SystemData::created("owner", Utc::now()),
                tokens: 10.0,
                tokens_at: Utc::now(),
                dropped: 0,
                dropped_at: None,
            };
            store.insert_alert_receiver(&receiver).await.unwrap();
            let ops = "/subscriptions/sub/providers/Fluxplane.Fleet/alertReceivers/ops";
            let prod: crate::fleet::selector::LabelSelector =
                serde_json::from_value(json!({"matchLabels": {"env": "prod"}})).unwrap();
            services.groups.put("owner", &scope, "prod", &prod, &any).await.unwrap();
            let group = "/subscriptions/sub/resourceGroups/rg/providers/Fluxplane.Fleet/clusterGroups/prod";

            for (bad, target) in [
                (json!({"events": ["ClusterOffline"], "receiverIds": ["/subscriptions/sub/providers/Fluxplane.Fleet/alertReceivers/none"]}), "receiverIds[0]"),
                (json!({"events": ["ClusterOffline"], "receiverIds": ["/subscriptions/other/providers/Fluxplane.Fleet/alertReceivers/ops"]}), "receiverIds[0]"),
                (json!({"events": ["ClusterOffline"], "receiverIds": [ops, ops]}), "receiverIds[1]"),
                (json!({"events": ["ClusterOffline"], "receiverIds": ["not an id"]}), "receiverIds[0]"),
                (json!({"events": ["ClusterOffline"], "receiverIds": [ops], "clusterGroupId": "/subscriptions/sub/resourceGroups/other/providers/Fluxplane.Fleet/clusterGroups/prod"}), "clusterGroupId"),
                (json!({"events": ["ClusterOffline"], "receiverIds": [ops], "clusterGroupId": "/subscriptions/sub/resourceGroups/rg/providers/Fluxplane.Fleet/clusterGroups/none"}), "clusterGroupId"),
                (json!({"events": ["ClusterOffline"], "receiverIds": [ops], "policyAssignmentId": "/subscriptions/other/providers/Fluxplane.Fleet/policyAssignments/a"}), "policyAssignmentId"),
                (json!({"events": [], "receiverIds": [ops]}), "events"),
                (json!({"events": ["RolloutHalted"], "receiverIds": [ops], "policyAssignmentId": format!("/subscriptions/sub/providers/Fluxplane.Fleet/policyAssignments/{}", "a".repeat(64))}), "policyAssignmentId"),
            ] {
                let err = rules.put("alice", &scope, "r", &spec(bad.clone()), &any).await.unwrap_err();
                assert_eq!(err.code(), "InvalidParameter", "{bad}");
                let crate::error::ApiError::InvalidParameter { target: Some(at), .. } = &err else {
                    panic!("{err:?}")
                };
                assert!(at.ends_with(target), "{bad}: {at}");
            }
            assert!(store.get_alert_rule("sub/rg/r").await.unwrap().is_none(), "refused writes change nothing");

            let good = spec(json!({"events": ["BecameNonCompliant"], "receiverIds": [ops], "clusterGroupId": group,
                                   "severity": "Critical"}));
            let (written, created) = rules.put("alice", &scope, "r", &good, &any).await.unwrap();
            assert!(created);
            assert_eq!(written.receivers.len(), 1);
            assert!(written.cluster_group_id.is_some());
            let stale = rules
                .put("bob", &scope, "r", &good, &Preconditions::if_match("stale"))
                .await
                .unwrap_err();
            assert_eq!(stale.code(), "PreconditionFailed");

            let in_use = services.groups.delete(&scope, "prod").await.unwrap_err();
            assert_eq!(in_use.code(), "Conflict", "rules follow the group");
            assert_eq!(
                store.delete_alert_receiver("sub/ops").await.unwrap(),
                crate::model::GroupDelete::InUse
            );
            assert!(rules.delete(&scope, "r").await.unwrap());
            assert!(!rules.delete(&scope, "r").await.unwrap());
            assert!(services.groups.delete(&scope, "prod").await.unwrap());
        })
        .await;
    }
}
