//! The fleet compliance summary: how many configuration instances of a subscription or resource group are in each
//! state, grouped by one dimension (`groupBy`) and narrowed by tags, a cluster group, a policy assignment or a
//! compliance state. Freshness (is the status current, is the agent there) is counted apart from compliance, so
//! that a cluster gone dark never counts as freshly compliant. A caller who may read only some resource groups of a
//! subscription gets the summary of those, as ARM lists do.
//!
//! The store answers one row per cluster and combination of states (`Store::state_counts`); the dimensions that
//! depend on the cluster (its connectivity, tags and groups) are applied here, once per cluster.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Utc};

use axum::Json;
use axum::extract::State;
use fluxplane_agent_protocol::flux::ComplianceState;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::cluster_ref;
use super::commits::CommitFilter;
use super::groups_service::TYPE_NAME;
use super::selector::LabelSelector;
use crate::arm::api_version::Fleet;
use crate::arm::paging::{MAX_PAGE_SIZE, PageRequest};
use crate::arm::params::at_both_scopes;
use crate::arm::params::{FleetApiVersionParam, ResourceGroupScopePath, SubscriptionScopePath};
use crate::arm::scope::ClusterSet;
use crate::arm::scope::FleetScope;
use crate::arm::{ApiVersion, ArmQuery};
use crate::auth::readable_scopes;
use crate::auth::{Caller, Role};
use crate::dashboards::history::{PastTime, past_time};
use crate::error::{ApiError, ApiResult, ErrorResponse, Problems};
use crate::lifecycle::ConnectivityStatus;
use crate::lifecycle::{agent_online, connectivity};
use crate::model::{ClusterGroupRecord, ClusterTags, InstanceCount, PolicyAssignmentRecord, StateCountQuery};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(at_subscription))
        .routes(routes!(at_resource_group))
}

/// What the counts are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum GroupBy {
    #[default]
    ComplianceState,
    ProvisioningState,
    Freshness,
    ConnectivityStatus,
    Cluster,
    ClusterGroup,
    PolicyAssignment,
    Configuration,
    /// The commit each configuration's agent last reported; `key: null` before a first sync.
    SourceSyncedCommitId,
}

const GROUP_BY: &str = "complianceState, provisioningState, freshness, connectivityStatus, cluster, clusterGroup, \
                        policyAssignment, configuration, sourceSyncedCommitId";

/// Most groups a summary answers, and how many by default (`$top`): the largest; `otherGroups` counts the rest.
pub const MAX_GROUPS: usize = 1000;

/// Query parameters of the summary.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct SummaryParams {
    /// One of complianceState (default), provisioningState, freshness, connectivityStatus, cluster, clusterGroup,
    /// policyAssignment, configuration, sourceSyncedCommitId.
    group_by: Option<String>,
    /// Only clusters whose tags match this Kubernetes label selector, e.g. `env=prod,region in (eu,us)`.
    tag_selector: Option<String>,
    /// Only clusters of this cluster group: its name in the summary's scope, or its ARM id.
    cluster_group: Option<String>,
    /// Only configurations this policy assignment manages: its name in the summary's scope, or its ARM id.
    policy_assignment: Option<String>,
    /// Only configurations in this compliance state.
    compliance_state: Option<String>,
    /// Only configurations whose agent last reported this commit: as reported (`main@sha1:<hash>`), or a commit
    /// hash or its first 7 or more hexadecimal digits (whatever the ref).
    source_synced_commit_id: Option<String>,
    /// Most groups answered, the largest (1-1000, default 1000); `otherGroups` counts the rest.
    #[serde(rename = "$top")]
    #[param(rename = "$top")]
    top: Option<String>,
    /// The summary as it was at this time (RFC 3339), within the history's retention; now or later answers the
    /// current summary. Freshness then counts what agents had reported (agent silence is not history: nothing is
    /// offline), and only the unfiltered groupings by complianceState, provisioningState, freshness and
    /// policyAssignment are available (commits are not rolled up: sourceSyncedCommitId is answered for now only).
    as_of: Option<String>,
}

/// Configuration instances by freshness: `fresh` (the agent is connected and reported on the current generation),
/// `stale` (connected, not yet reported on it), `offline` (the agent has not been heard from).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, ToSchema)]
pub struct Freshness {
    pub fresh: i64,
    pub stale: i64,
    pub offline: i64,
}

/// The counts of one group.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SummaryGroup {
    /// The group's value: a state, a cluster's or group's ARM id, a configuration name; null for configurations
    /// that no policy assignment manages (by policyAssignment).
    pub key: Option<String>,
    /// Configuration instances.
    pub count: i64,
    /// Clusters with at least one of them.
    pub clusters: i64,
    pub freshness: Freshness,
}

/// The compliance summary of a scope.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceSummary {
    /// The scope summarised.
    pub scope: String,
    pub group_by: GroupBy,
    /// Configuration instances in all.
    pub count: i64,
    /// Clusters with at least one (the cluster filters applied).
    pub clusters: i64,
    pub freshness: Freshness,
    /// By `groupBy`, largest first (then by key), at most `$top`. By clusterGroup a cluster counts in each group it
    /// is in.
    pub groups: Vec<SummaryGroup>,
    /// The groups past `$top`, counted together; absent when every group is listed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_groups: Option<OtherGroups>,
}

/// The groups a summary does not list (past `$top`), counted together.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OtherGroups {
    /// How many groups.
    pub groups: i64,
    /// Their configuration instances.
    pub count: i64,
    pub freshness: Freshness,
}

at_both_scopes! {
    get,
    tag = "ComplianceSummary",
    params(FleetApiVersionParam, SummaryParams),
    responses(
        (status = 200, description = "The summary", body = ComplianceSummary),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Summarises the configurations of a subscription's clusters (those of the resource groups the caller may read,
    /// if it may not read the whole subscription).
    at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/complianceSummary",
        "ComplianceSummary_GetAtSubscription",
        SubscriptionScopePath;
    /// Summarises the configurations of a resource group's clusters.
    at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/complianceSummary",
        "ComplianceSummary_Get",
        ResourceGroupScopePath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path (
        ArmQuery(params): ArmQuery<SummaryParams>,
    ) -> ApiResult<Json<ComplianceSummary>> {
        let scope = path.fleet_scope()?;
        summarise(&state, &caller, scope, &params).await.map(Json)
    }
}

/// The parameters, checked: every problem is named at once.
struct Request {
    group_by: GroupBy,
    tags: LabelSelector,
    compliance_state: Option<&'static str>,
    commit: Option<CommitFilter>,
    top: usize,
    as_of: Option<DateTime<Utc>>,
}

impl Request {
    /// Whether the rollups can answer: they count by scope and states, not by tag, cluster group or name.
    fn rolled_up(&self, params: &SummaryParams) -> bool {
        params.tag_selector.is_none()
            && params.cluster_group.is_none()
            && params.policy_assignment.is_none()
            && self.compliance_state.is_none()
            && self.commit.is_none()
            && !matches!(
                self.group_by,
                GroupBy::Cluster | GroupBy::ClusterGroup | GroupBy::Configuration | GroupBy::SourceSyncedCommitId
            )
    }
}

fn check(params: &SummaryParams, retention: std::time::Duration) -> ApiResult<Request> {
    let mut problems = Problems::default();
    let group_by = match params.group_by.as_deref() {
        None => GroupBy::default(),
        Some(text) => serde_json::from_value(serde_json::Value::String(text.to_owned())).unwrap_or_else(|_| {
            problems.add("groupBy", format!("'{text}' is not one of {GROUP_BY}"));
            GroupBy::default()
        }),
    };
    let tags = tag_selector(params.tag_selector.as_deref(), &mut problems);
    let compliance_state = compliance_state(params.compliance_state.as_deref(), &mut problems);
    let commit = commit_filter(params.source_synced_commit_id.as_deref(), &mut problems);
    let top = match params.top.as_deref() {
        None => MAX_GROUPS,
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=MAX_GROUPS).contains(n))
            .unwrap_or_else(|| {
                problems.add("$top", format!("$top must be a whole number from 1 to {MAX_GROUPS}"));
                MAX_GROUPS
            }),
    };
    let as_of = params
        .as_of
        .as_deref()
        .and_then(|text| past_time("asOf", text, retention, &mut problems))
        .and_then(|at| match at {
            PastTime::Now => None,
            PastTime::At(at) => Some(at),
        });
    problems.into_result("summary request", None)?;
    let request = Request {
        group_by,
        tags,
        compliance_state,
        commit,
        top,
        as_of,
    };
    if request.as_of.is_some() && (request.commit.is_some() || request.group_by == GroupBy::SourceSyncedCommitId) {
        return Err(ApiError::invalid(
            "asOf",
            "commits are not rolled up: a summary by or of sourceSyncedCommitId is answered for now only (each \
             assignment's commits and their spread over time: GET {assignmentId}/commits)",
        ));
    }
    if request.as_of.is_some() && (!request.rolled_up(params) || request.group_by == GroupBy::ConnectivityStatus) {
        return Err(ApiError::invalid(
            "asOf",
            "a past summary is grouped by complianceState, provisioningState, freshness or policyAssignment, \
             without filters",
        ));
    }
    Ok(request)
}

/// The `tagSelector` parameter, parsed and checked.
pub(super) fn tag_selector(text: Option<&str>, problems: &mut Problems) -> LabelSelector {
    match text {
        None => LabelSelector::default(),
        Some(text) => match LabelSelector::parse_str(text) {
            Ok(selector) => {
                selector.validate("tagSelector", problems);
                selector
            }
            Err(why) => {
                problems.add("tagSelector", format!("'{text}' {why}"));
                LabelSelector::default()
            }
        },
    }
}

/// The `complianceState` parameter, in its canonical spelling.
pub(super) fn compliance_state(text: Option<&str>, problems: &mut Problems) -> Option<&'static str> {
    let text = text?;
    let found = ComplianceState::ALL
        .into_iter()
        .map(ComplianceState::as_str)
        .find(|s| s.eq_ignore_ascii_case(text));
    if found.is_none() {
        problems.add(
            "complianceState",
            format!(
                "'{text}' is not one of {}",
                ComplianceState::ALL.map(ComplianceState::as_str).join(", ")
            ),
        );
    }
    found
}

/// The `sourceSyncedCommitId` parameter, parsed.
pub(super) fn commit_filter(text: Option<&str>, problems: &mut Problems) -> Option<CommitFilter> {
    CommitFilter::parse(text?)
        .map_err(|why| problems.add("sourceSyncedCommitId", why))
        .ok()
}

/// The cluster group the `clusterGroup` parameter names, if given and readable by the caller.
pub(super) async fn cluster_group(
    state: &AppState,
    caller: &Caller,
    scope: &FleetScope,
    value: Option<&str>,
) -> ApiResult<Option<ClusterGroupRecord>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let found = match readable_key(caller, scope, "clusterGroup", TYPE_NAME, value)? {
        Some(key) => state.store.get_cluster_group(&key).await?,
        None => None,
    };
    Ok(Some(found.ok_or_else(|| {
        ApiError::invalid("clusterGroup", format!("no cluster group '{value}'"))
    })?))
}

/// The policy assignment the `policyAssignment` parameter names, if given and readable by the caller.
pub(super) async fn policy_assignment(
    state: &AppState,
    caller: &Caller,
    scope: &FleetScope,
    value: Option<&str>,
) -> ApiResult<Option<PolicyAssignmentRecord>> {
    let Some(value) = value else {
        return Ok(None);
    };
    let found = match readable_key(caller, scope, "policyAssignment", "policyAssignments", value)? {
        Some(key) => state.store.get_policy_assignment(&key).await?,
        None => None,
    };
    Ok(Some(found.ok_or_else(|| {
        ApiError::invalid("policyAssignment", format!("no policy assignment '{value}'"))
    })?))
}

/// The store key of a fleet resource named by `value` (a name in `scope`, or an ARM id in its subscription), or
/// `None` when the caller may not read it: a name outside the caller's reach is answered as one that does not
/// exist, so that naming it tells nothing.
fn readable_key(
    caller: &Caller,
    scope: &FleetScope,
    parameter: &str,
    type_: &str,
    value: &str,
) -> ApiResult<Option<String>> {
    let (resource_scope, name) = if value.starts_with('/') {
        match FleetScope::parse_resource_id(value, type_) {
            Some(Ok((resource_scope, name))) if resource_scope.subscription.key() == scope.subscription.key() => {
                (resource_scope, name)
            }
            _ => {
                return Err(ApiError::invalid(
                    parameter,
                    format!("'{value}' is not the ARM id of a {type_} in this scope"),
                ));
            }
        }
    } else {
        (scope.clone(), value)
    };
    let readable = caller
        .require(Role::Reader, &resource_scope.resource_id(type_, name))
        .is_ok();
    Ok(readable.then(|| resource_scope.key(name)))
}

/// A cluster group as the summary counts by it: its id, its selector, and the key prefix of the clusters it can
/// see (a resource group's group sees that resource group's only).
struct Counted {
    id: String,
    selector: LabelSelector,
    within: String,
}

async fn summarise(
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    params: &SummaryParams,
) -> ApiResult<ComplianceSummary> {
    let scopes = readable_scopes(caller, &scope)?;
    let request = check(params, state.config.history_retention)?;
    if request.rolled_up(params) {
        return from_rollups(state, &scopes, scope.id(), request.group_by, request.as_of, request.top).await;
    }
    let group = cluster_group(state, caller, &scope, params.cluster_group.as_deref()).await?;
    let assignment = policy_assignment(state, caller, &scope, params.policy_assignment.as_deref()).await?;
    // the groups clusters are counted in, by clusterGroup: those of the scope the caller may read
    let mut records = Vec::new();
    if request.group_by == GroupBy::ClusterGroup {
        for readable in &scopes {
            let mut page = PageRequest {
                after: None,
                limit: MAX_PAGE_SIZE,
            };
            loop {
                let batch = state.store.list_cluster_groups(readable, &page).await?;
                let more = batch.len() > MAX_PAGE_SIZE as usize;
                records.extend(batch.into_iter().take(MAX_PAGE_SIZE as usize));
                if !more {
                    break;
                }
                page.after = records.last().map(|g: &ClusterGroupRecord| g.key.clone());
            }
        }
    }
    let groups = records
        .into_iter()
        .map(|g| {
            let within = match g.resource_group_key.as_str() {
                "" => format!("{}/", g.subscription_key),
                group => format!("{}/{group}/", g.subscription_key),
            };
            Ok(Counted {
                id: g.scope()?.resource_id(super::groups_service::TYPE_NAME, &g.name),
                selector: g.selector,
                within,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let query = StateCountQuery {
        managed_by: assignment.as_ref().map(|a| a.id),
        by_name: request.group_by == GroupBy::Configuration,
        by_assignment: request.group_by == GroupBy::PolicyAssignment,
        by_commit: request.group_by == GroupBy::SourceSyncedCommitId || request.commit.is_some(),
    };
    let mut tally = Tally::default();
    for readable in &scopes {
        let clusters: HashMap<i64, ClusterTags> = state
            .store
            .cluster_tags(readable)
            .await?
            .into_iter()
            .filter(|c| request.tags.matches(&c.tags))
            .filter(|c| group.as_ref().is_none_or(|g| g.selector.matches(&c.tags)))
            .map(|c| (c.id, c))
            .collect();
        for row in state.store.state_counts(readable, &query).await? {
            let Some(cluster) = clusters.get(&row.cluster_id) else {
                continue;
            };
            if request.compliance_state.is_some_and(|s| s != row.compliance_state) {
                continue;
            }
            if request
                .commit
                .as_ref()
                .is_some_and(|c| !c.matches(row.commit_id.as_deref()))
            {
                continue;
            }
            let online = agent_online(cluster.last_connectivity_time, state.config.offline_after);
            let freshness = match (online, row.reported) {
                (false, _) => "offline",
                (true, true) => "fresh",
                (true, false) => "stale",
            };
            let keys: Vec<Option<String>> = match request.group_by {
                GroupBy::ComplianceState => vec![Some(row.compliance_state.clone())],
                GroupBy::ProvisioningState => vec![Some(row.provisioning_state.clone())],
                GroupBy::Freshness => vec![Some(freshness.to_owned())],
                GroupBy::ConnectivityStatus => vec![Some(connectivity(
                    &cluster.connectivity_status,
                    cluster.last_connectivity_time,
                    state.config.offline_after,
                ))],
                GroupBy::Cluster => vec![Some(cluster_ref(scope.subscription.as_str(), cluster).id())],
                GroupBy::ClusterGroup => groups
                    .iter()
                    .filter(|g| g.selector.matches(&cluster.tags))
                    .filter(|g| cluster.key.starts_with(&g.within))
                    .map(|g| Some(g.id.clone()))
                    .collect(),
                GroupBy::PolicyAssignment => vec![(!row.managed_by_id.is_empty()).then(|| row.managed_by_id.clone())],
                GroupBy::Configuration => vec![Some(row.name.clone())],
                GroupBy::SourceSyncedCommitId => vec![row.commit_id.clone()],
            };
            tally.add(row.cluster_id, keys, freshness, row.count);
        }
    }
    Ok(tally.summary(scope.id(), request.group_by, request.top))
}

/// Counts as they accumulate.
#[derive(Default)]
struct Tally {
    total: Freshness,
    clusters: HashSet<i64>,
    groups: BTreeMap<Option<String>, (Freshness, HashSet<i64>)>,
}

impl Tally {
    fn add(&mut self, cluster: i64, keys: Vec<Option<String>>, freshness: &str, count: i64) {
        let bump = |f: &mut Freshness| *f.bucket(freshness) += count;
        bump(&mut self.total);
        self.clusters.insert(cluster);
        for key in keys {
            let (group, clusters) = self.groups.entry(key).or_default();
            bump(group);
            clusters.insert(cluster);
        }
    }

    fn summary(self, scope: String, group_by: GroupBy, top: usize) -> ComplianceSummary {
        let groups = self
            .groups
            .into_iter()
            .map(|(key, (freshness, clusters))| SummaryGroup {
                key,
                count: freshness.sum(),
                clusters: clusters.len() as i64,
                freshness,
            })
            .collect();
        finish(scope, group_by, self.total, self.clusters.len() as i64, groups, top)
    }
}

impl Freshness {
    fn sum(&self) -> i64 {
        self.fresh + self.stale + self.offline
    }

    fn bucket(&mut self, freshness: &str) -> &mut i64 {
        match freshness {
            "fresh" => &mut self.fresh,
            "stale" => &mut self.stale,
            _ => &mut self.offline,
        }
    }
}

/// The summary with its groups largest first (then by key), empty groups left out, the first `top` listed and the
/// rest counted together.
fn finish(
    scope: String,
    group_by: GroupBy,
    total: Freshness,
    clusters: i64,
    mut groups: Vec<SummaryGroup>,
    top: usize,
) -> ComplianceSummary {
    groups.retain(|g| g.count != 0);
    groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
    let other_groups = (groups.len() > top).then(|| {
        let mut other = OtherGroups::default();
        for g in groups.drain(top..) {
            other.groups += 1;
            other.count += g.count;
            other.freshness.fresh += g.freshness.fresh;
            other.freshness.stale += g.freshness.stale;
            other.freshness.offline += g.freshness.offline;
        }
        other
    });
    ComplianceSummary {
        scope,
        group_by,
        count: total.sum(),
        clusters,
        freshness: total,
        groups,
        other_groups,
    }
}

/// The group an instance count of the rollups falls in, as if its agent were connected.
fn rolled_up_key(group_by: GroupBy, row: &InstanceCount) -> Option<String> {
    match group_by {
        GroupBy::ComplianceState => Some(row.compliance_state.clone()),
        GroupBy::ProvisioningState => Some(row.provisioning_state.clone()),
        GroupBy::Freshness => Some(reported_freshness(row.reported).to_owned()),
        GroupBy::PolicyAssignment => (!row.policy_assignment.is_empty()).then(|| row.policy_assignment.clone()),
        _ => Some(ConnectivityStatus::Connected.as_str().to_owned()),
    }
}

fn group(groups: &mut BTreeMap<Option<String>, SummaryGroup>, key: Option<String>) -> &mut SummaryGroup {
    groups.entry(key.clone()).or_insert_with(|| SummaryGroup {
        key,
        ..SummaryGroup::default()
    })
}

fn reported_freshness(reported: bool) -> &'static str {
    if reported { "fresh" } else { "stale" }
}

/// The unfiltered summary from the rollups: the counts as if every agent were connected, then the configurations
/// of the clusters whose agent is not (usually few) moved to where they belong. In the past (`as_of`) nothing is
/// moved: connectivity is not history.
async fn from_rollups(
    state: &AppState,
    scopes: &[ClusterSet],
    scope_id: String,
    group_by: GroupBy,
    as_of: Option<DateTime<Utc>>,
    top: usize,
) -> ApiResult<ComplianceSummary> {
    let now = Utc::now();
    let heard_since = chrono::Duration::from_std(state.config.offline_after)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let dimension = match group_by {
        GroupBy::ComplianceState => "complianceState",
        GroupBy::ProvisioningState => "provisioningState",
        GroupBy::Freshness => "freshness",
        GroupBy::PolicyAssignment => "policyAssignment",
        _ => "all",
    };
    let connected = ConnectivityStatus::Connected.as_str();
    let mut total = Freshness::default();
    let mut clusters = 0;
    let mut groups: BTreeMap<Option<String>, SummaryGroup> = BTreeMap::new();
    for readable in scopes {
        // In the past nothing is moved: connectivity is not history. The read runs as a task of its own: a
        // transaction cut off by a client going away can leave its pooled connection inside it.
        let rollup = {
            let (store, readable) = (state.store.clone(), readable.clone());
            tokio::spawn(async move { store.rollup(&readable, as_of, as_of.is_none()).await })
                .await
                .map_err(|err| ApiError::Internal(err.into()))??
        };
        for row in &rollup.instances {
            let freshness = reported_freshness(row.reported);
            *total.bucket(freshness) += row.instances;
            let g = group(&mut groups, rolled_up_key(group_by, row));
            g.count += row.instances;
            *g.freshness.bucket(freshness) += row.instances;
        }
        for row in rollup.clusters.iter().filter(|c| c.dimension == dimension) {
            let key = match group_by {
                GroupBy::ConnectivityStatus => Some(connected.to_owned()),
                GroupBy::PolicyAssignment if row.value.is_empty() => None,
                _ => Some(row.value.clone()),
            };
            group(&mut groups, key).clusters += row.clusters;
        }
        clusters += rollup
            .clusters
            .iter()
            .filter(|c| c.dimension == "all")
            .map(|c| c.clusters)
            .sum::<i64>();
        // by cluster: (online, connectivity, had reported instances, had unreported ones)
        let mut unheard: BTreeMap<i64, (bool, String, bool, bool)> = BTreeMap::new();
        for row in rollup.unheard {
            let online = row.last_connectivity_time.is_some_and(|last| last >= heard_since);
            let status = if row.connectivity_status == connected && !online {
                ConnectivityStatus::Offline.as_str().to_owned()
            } else {
                row.connectivity_status.clone()
            };
            let counted = InstanceCount {
                policy_assignment: row.policy_assignment,
                compliance_state: row.compliance_state,
                provisioning_state: row.provisioning_state,
                reported: row.reported,
                instances: row.count,
            };
            let was = reported_freshness(row.reported);
            let is = if online { was } else { "offline" };
            let from = rolled_up_key(group_by, &counted);
            let to = match group_by {
                GroupBy::Freshness => Some(is.to_owned()),
                GroupBy::ConnectivityStatus => Some(status.clone()),
                _ => from.clone(),
            };
            *total.bucket(was) -= row.count;
            *total.bucket(is) += row.count;
            let g = group(&mut groups, from);
            g.count -= row.count;
            *g.freshness.bucket(was) -= row.count;
            let g = group(&mut groups, to);
            g.count += row.count;
            *g.freshness.bucket(is) += row.count;
            let cluster = unheard
                .entry(row.cluster_id)
                .or_insert_with(|| (online, status, false, false));
            if row.reported {
                cluster.2 = true;
            } else {
                cluster.3 = true;
            }
        }
        // the clusters counted as connected or fresh/stale that are not
        for (online, status, reported, unreported) in unheard.into_values() {
            match group_by {
                GroupBy::ConnectivityStatus => {
                    group(&mut groups, Some(connected.to_owned())).clusters -= 1;
                    group(&mut groups, Some(status)).clusters += 1;
                }
                GroupBy::Freshness if !online => {
                    if reported {
                        group(&mut groups, Some("fresh".to_owned())).clusters -= 1;
                    }
                    if unreported {
                        group(&mut groups, Some("stale".to_owned())).clusters -= 1;
                    }
                    group(&mut groups, Some("offline".to_owned())).clusters += 1;
                }
                _ => {}
            }
        }
    }
    Ok(finish(
        scope_id,
        group_by,
        total,
        clusters,
        groups.into_values().collect(),
        top,
    ))
}
