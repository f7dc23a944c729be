//! How a batch of reports is cut for set-based statements (`Store::apply_reports`). One `UPDATE ... FROM unnest(...)`
//! (PostgreSQL) or `UPDATE ... FROM json_each(...)` (SQLite) changes each row once, however many of its input rows
//! match it: a configuration reported twice
//! in one batch would be applied once, and its second report answered as though it had not been. So the batch is
//! applied in rounds, each naming a configuration at most once, in the order the reports came: the n-th report on a
//! configuration goes in round n, and the rounds run one after another in the batch's transaction, as the reports
//! would have one after another.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

use crate::model::{AgentInfo, ConfigurationReportWrite, HeartbeatWrite, ReportWrite};

/// The rounds of a batch whose reports name `keys` (in order): each round the positions of its reports, in order.
pub(super) fn rounds<K: Eq + Hash>(keys: impl IntoIterator<Item = K>) -> Vec<Vec<usize>> {
    let mut seen: HashMap<K, usize> = HashMap::new();
    let mut rounds: Vec<Vec<usize>> = Vec::new();
    for (position, key) in keys.into_iter().enumerate() {
        let count = seen.entry(key).or_default();
        if rounds.len() <= *count {
            rounds.push(Vec::new());
        }
        rounds[*count].push(position);
        *count += 1;
    }
    rounds
}

/// Whether a report is applied with its round's others in one statement: a status, acknowledging no secrets (their
/// deletion locks the row first, report by report) and restoring nothing (a history row of its own).
pub(super) fn set_based(report: &ConfigurationReportWrite) -> bool {
    report.secrets_version.is_none()
        && matches!(&report.write, ReportWrite::Status { restored, .. } if restored.is_empty())
}

/// The heartbeats as one write per cluster, in id order (so that two batches lock the clusters they share in the same
/// order): a cluster heard from twice gets what its agent said last of each fact, as heartbeats applied one after
/// another would leave it.
pub(super) fn merged_heartbeats(heartbeats: &[HeartbeatWrite]) -> BTreeMap<i64, AgentInfo> {
    let mut merged: BTreeMap<i64, AgentInfo> = BTreeMap::new();
    for heartbeat in heartbeats {
        let known = merged.entry(heartbeat.cluster_id).or_default();
        let said = heartbeat.info.clone();
        known.agent_version = said.agent_version.or(known.agent_version.take());
        known.kubernetes_version = said.kubernetes_version.or(known.kubernetes_version.take());
        known.total_node_count = said.total_node_count.or(known.total_node_count);
    }
    merged
}

/// Each heartbeat's cluster revision, in the heartbeats' order, from what their merged write answered (`None`: the
/// cluster is gone).
pub(super) fn revisions_in_order(heartbeats: &[HeartbeatWrite], revisions: &HashMap<i64, i64>) -> Vec<Option<i64>> {
    heartbeats
        .iter()
        .map(|h| revisions.get(&h.cluster_id).copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heartbeat(cluster_id: i64, agent_version: Option<&str>, total_node_count: Option<i64>) -> HeartbeatWrite {
        HeartbeatWrite {
            cluster_id,
            info: AgentInfo {
                agent_version: agent_version.map(str::to_owned),
                total_node_count,
                ..AgentInfo::default()
            },
        }
    }

    #[test]
    fn a_cluster_heard_from_twice_keeps_what_its_agent_said_last_of_each_fact() {
        let merged = merged_heartbeats(&[
            heartbeat(7, Some("1.0"), Some(3)),
            heartbeat(2, None, None),
            heartbeat(7, Some("1.1"), None),
        ]);
        assert_eq!(merged.keys().copied().collect::<Vec<_>>(), vec![2, 7]);
        assert_eq!(merged[&7].agent_version.as_deref(), Some("1.1"));
        assert_eq!(merged[&7].total_node_count, Some(3));
        assert_eq!(merged[&2].agent_version, None);
    }

    #[test]
    fn a_batch_naming_each_configuration_once_is_one_round_in_order() {
        assert_eq!(rounds([(1, "a"), (1, "b"), (2, "a")]), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn a_configuration_reported_again_goes_in_the_next_round_after_its_first_report() {
        let keys = [(1, "a"), (2, "a"), (1, "a"), (1, "b"), (1, "a"), (2, "a")];
        assert_eq!(rounds(keys), vec![vec![0, 1, 3], vec![2, 5], vec![4]]);
    }

    #[test]
    fn an_empty_batch_has_no_round() {
        assert!(rounds(Vec::<(i64, &str)>::new()).is_empty());
    }
}
