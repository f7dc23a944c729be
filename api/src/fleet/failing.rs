//! Failing configurations (Failed, or Non-Compliant: what halts a rollout, `lifecycle::rollout_verdict`) counted by
//! cluster group and by policy assignment, for the metrics that let Prometheus say which one fails. A cluster group
//! is a selector, not a stored membership: each cluster with failing configurations counts in every group of its
//! scope whose selector matches its tags (groups may overlap). An assignment's count comes from the rollups.

use crate::arm::scope::FleetScope;
use crate::fleet::groups_service::TYPE_NAME as GROUPS;
use crate::model::FailingGauges;

/// The label value of configurations no policy assignment manages.
pub const UNMANAGED: &str = "none";

/// Failing configurations per cluster group (ARM id) and per policy assignment (ARM id, or [`UNMANAGED`]); every
/// group and every assignment with configurations is listed, failing or not, in id order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Failing {
    pub by_cluster_group: Vec<(String, i64)>,
    pub by_policy_assignment: Vec<(String, i64)>,
}

pub fn tally(gauges: &FailingGauges) -> Failing {
    let mut by_cluster_group: Vec<(String, i64)> = gauges
        .groups
        .iter()
        .filter_map(|group| {
            let scope = FleetScope::parse(&group.subscription, group.resource_group.as_deref()).ok()?;
            let failing = gauges
                .clusters
                .iter()
                .filter(|c| {
                    c.subscription_key == group.subscription_key
                        && (group.resource_group_key.is_empty() || c.resource_group_key == group.resource_group_key)
                        && group.selector.matches(&c.tags)
                })
                .map(|c| c.failing)
                .sum();
            Some((scope.resource_id(GROUPS, &group.name), failing))
        })
        .collect();
    by_cluster_group.sort();
    let mut by_policy_assignment: Vec<(String, i64)> = gauges
        .by_assignment
        .iter()
        .map(|(assignment, failing)| {
            let label = if assignment.is_empty() { UNMANAGED } else { assignment };
            (label.to_owned(), *failing)
        })
        .collect();
    by_policy_assignment.sort();
    Failing {
        by_cluster_group,
        by_policy_assignment,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::arm::system_data::SystemData;
    use crate::model::{ClusterGroupRecord, FailingCluster};

    fn group(
        subscription: &str,
        resource_group: Option<&str>,
        name: &str,
        selector: serde_json::Value,
    ) -> ClusterGroupRecord {
        ClusterGroupRecord {
            id: 0,
            key: String::new(),
            subscription_key: subscription.to_lowercase(),
            resource_group_key: resource_group.map(str::to_lowercase).unwrap_or_default(),
            subscription: subscription.to_owned(),
            resource_group: resource_group.map(str::to_owned),
            name: name.to_owned(),
            selector: serde_json::from_value(selector).unwrap(),
            etag: String::new(),
            system_data: SystemData::created("t", Utc::now()),
        }
    }

    fn failing(resource_group: &str, env: &str, count: i64) -> FailingCluster {
        FailingCluster {
            subscription_key: "sub".into(),
            resource_group_key: resource_group.into(),
            tags: BTreeMap::from([("env".into(), env.into())]),
            failing: count,
        }
    }

    #[test]
    fn a_failing_cluster_counts_in_every_group_of_its_scope_whose_selector_takes_it() {
        let gauges = FailingGauges {
            by_assignment: vec![
                ("".into(), 1),
                (
                    "/subscriptions/sub/providers/Fluxplane.Fleet/policyAssignments/a".into(),
                    0,
                ),
            ],
            clusters: vec![
                failing("rg", "prod", 2),
                failing("other", "prod", 3),
                failing("rg", "dev", 5),
            ],
            groups: vec![
                group("sub", None, "prod", json!({"matchLabels": {"env": "prod"}})),
                group("sub", Some("rg"), "prod-rg", json!({"matchLabels": {"env": "prod"}})),
                group("sub", None, "everything", json!({})),
                group("elsewhere", None, "all", json!({})),
            ],
        };
        let failing = tally(&gauges);
        assert_eq!(
            failing.by_cluster_group,
            [
                (
                    "/subscriptions/elsewhere/providers/Fluxplane.Fleet/clusterGroups/all".to_owned(),
                    0
                ),
                (
                    "/subscriptions/sub/providers/Fluxplane.Fleet/clusterGroups/everything".to_owned(),
                    10
                ),
                (
                    "/subscriptions/sub/providers/Fluxplane.Fleet/clusterGroups/prod".to_owned(),
                    5
                ),
                (
                    "/subscriptions/sub/resourceGroups/rg/providers/Fluxplane.Fleet/clusterGroups/prod-rg".to_owned(),
                    2
                ),
            ]
        );
        assert_eq!(
            failing.by_policy_assignment,
            [
                (
                    "/subscriptions/sub/providers/Fluxplane.Fleet/policyAssignments/a".to_owned(),
                    0
                ),
                (UNMANAGED.to_owned(), 1)
            ]
        );
    }
}
