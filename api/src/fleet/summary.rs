//! The fleet compliance summary: how many configuration instances of a subscription or resource group are in each
//! state, grouped by one dimension (`groupBy`) and narrowed by tags, a cluster group, a policy assignment or a
//! compliance state. Freshness (is the status current, is the agent there) is counted apart from compliance, so
//! that a cluster gone dark never counts as freshly compliant. A caller who may read only some resource groups of a
//! subscription gets the summary of those, as ARM lists do.
//!
//! The store answers one row per cluster and combination of states (`Store::state_counts`); the dimensions that
//! depend on the cluster (its connectivity, tags and groups) are applied here, once per cluster.

use std::collections::{BTreeMap, HashMap, HashSet};

use axum::Json;
use axum::extract::State;
use fluxplane_agent_protocol::flux::ComplianceState;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::groups::{FleetApiVersionParam, ResourceGroupScopePath, SubscriptionScopePath};
use super::selector::LabelSelector;
use super::{FleetScope, cluster_ref, readable_scopes};
use crate::arm::api_version::Fleet;
use crate::arm::paging::{MAX_PAGE_SIZE, PageRequest};
use crate::arm::{ApiVersion, ArmPath, ArmQuery};
use crate::auth::Caller;
use crate::clusters::routes::{agent_online, connectivity};
use crate::error::{ApiError, ApiResult, ErrorResponse, Problems};
use crate::state::AppState;
use crate::store::{ClusterGroupRecord, ClusterTags, StateCountQuery};

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
}

const GROUP_BY: &str = "complianceState, provisioningState, freshness, connectivityStatus, cluster, clusterGroup, \
                        policyAssignment, configuration";

/// Query parameters of the summary.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct SummaryParams {
    /// One of complianceState (default), provisioningState, freshness, connectivityStatus, cluster, clusterGroup,
    /// policyAssignment, configuration.
    group_by: Option<String>,
    /// Only clusters whose tags match this Kubernetes label selector, e.g. `env=prod,region in (eu,us)`.
    tag_selector: Option<String>,
    /// Only clusters of this cluster group: its name in the summary's scope, or its ARM id.
    cluster_group: Option<String>,
    /// Only configurations this policy assignment manages: its name in the summary's scope, or its ARM id.
    policy_assignment: Option<String>,
    /// Only configurations in this compliance state.
    compliance_state: Option<String>,
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
    /// By `groupBy`, largest first (then by key). By clusterGroup a cluster counts in each group it is in.
    pub groups: Vec<SummaryGroup>,
}

/// Summarises the configurations of a subscription's clusters (those of the resource groups the caller may read,
/// if it may not read the whole subscription).
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/complianceSummary",
    tag = "ComplianceSummary",
    operation_id = "ComplianceSummary_GetAtSubscription",
    params(SubscriptionScopePath, FleetApiVersionParam, SummaryParams),
    responses(
        (status = 200, description = "The summary", body = ComplianceSummary),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn at_subscription(
    State(state): State<AppState>,
    caller: Caller,
    _version: ApiVersion<Fleet>,
    ArmPath(path): ArmPath<SubscriptionScopePath>,
    ArmQuery(params): ArmQuery<SummaryParams>,
) -> ApiResult<Json<ComplianceSummary>> {
    let scope = FleetScope::parse(path.subscription(), None)?;
    summarise(&state, &caller, scope, &params).await.map(Json)
}

/// Summarises the configurations of a resource group's clusters.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/complianceSummary",
    tag = "ComplianceSummary",
    operation_id = "ComplianceSummary_Get",
    params(ResourceGroupScopePath, FleetApiVersionParam, SummaryParams),
    responses(
        (status = 200, description = "The summary", body = ComplianceSummary),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn at_resource_group(
    State(state): State<AppState>,
    caller: Caller,
    _version: ApiVersion<Fleet>,
    ArmPath(path): ArmPath<ResourceGroupScopePath>,
    ArmQuery(params): ArmQuery<SummaryParams>,
) -> ApiResult<Json<ComplianceSummary>> {
    let (subscription, resource_group) = path.scope();
    let scope = FleetScope::parse(subscription, Some(resource_group))?;
    summarise(&state, &caller, scope, &params).await.map(Json)
}

/// The parameters, checked: every problem is named at once.
struct Request {
    group_by: GroupBy,
    tags: LabelSelector,
    compliance_state: Option<&'static str>,
}

fn check(params: &SummaryParams) -> ApiResult<Request> {
    let mut problems = Problems::default();
    let group_by = match params.group_by.as_deref() {
        None => GroupBy::default(),
        Some(text) => serde_json::from_value(serde_json::Value::String(text.to_owned())).unwrap_or_else(|_| {
            problems.add("groupBy", format!("'{text}' is not one of {GROUP_BY}"));
            GroupBy::default()
        }),
    };
    let tags = match params.tag_selector.as_deref() {
        None => LabelSelector::default(),
        Some(text) => match LabelSelector::parse_str(text) {
            Ok(selector) => {
                selector.validate("tagSelector", &mut problems);
                selector
            }
            Err(why) => {
                problems.add("tagSelector", format!("'{text}' {why}"));
                LabelSelector::default()
            }
        },
    };
    let compliance_state = params.compliance_state.as_deref().and_then(|text| {
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
    });
    problems.into_result("the summary's parameters", None)?;
    Ok(Request {
        group_by,
        tags,
        compliance_state,
    })
}

/// The store key of a fleet resource named by `value` (a name in `scope`, or an ARM id in its subscription).
fn fleet_key(scope: &FleetScope, parameter: &str, type_: &str, value: &str) -> ApiResult<String> {
    if !value.starts_with('/') {
        return Ok(scope.key(value));
    }
    match FleetScope::parse_resource_id(value, type_) {
        Some(Ok((resource_scope, name))) if resource_scope.subscription.key() == scope.subscription.key() => {
            Ok(resource_scope.key(name))
        }
        _ => Err(ApiError::invalid(
            parameter,
            format!("'{value}' is not the ARM id of a {type_} in this scope"),
        )),
    }
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
    let request = check(params)?;
    let group = match &params.cluster_group {
        None => None,
        Some(value) => {
            let key = fleet_key(&scope, "clusterGroup", "clusterGroups", value)?;
            let found = state.store.get_cluster_group(&key).await?;
            Some(found.ok_or_else(|| ApiError::invalid("clusterGroup", format!("no cluster group '{value}'")))?)
        }
    };
    let assignment = match &params.policy_assignment {
        None => None,
        Some(value) => {
            let key = fleet_key(&scope, "policyAssignment", "policyAssignments", value)?;
            let found = state.store.get_policy_assignment(&key).await?;
            Some(
                found
                    .ok_or_else(|| ApiError::invalid("policyAssignment", format!("no policy assignment '{value}'")))?,
            )
        }
    };
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
                id: g.scope()?.resource_id(super::groups::TYPE_NAME, &g.name),
                selector: g.selector,
                within,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let query = StateCountQuery {
        managed_by: assignment.as_ref().map(|a| a.id),
        by_name: request.group_by == GroupBy::Configuration,
        by_assignment: request.group_by == GroupBy::PolicyAssignment,
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
            };
            tally.add(row.cluster_id, keys, freshness, row.count);
        }
    }
    Ok(tally.summary(scope.id(), request.group_by))
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
        let bump = |f: &mut Freshness| match freshness {
            "fresh" => f.fresh += count,
            "stale" => f.stale += count,
            _ => f.offline += count,
        };
        bump(&mut self.total);
        self.clusters.insert(cluster);
        for key in keys {
            let (group, clusters) = self.groups.entry(key).or_default();
            bump(group);
            clusters.insert(cluster);
        }
    }

    fn summary(self, scope: String, group_by: GroupBy) -> ComplianceSummary {
        let sum = |f: &Freshness| f.fresh + f.stale + f.offline;
        let mut groups: Vec<SummaryGroup> = self
            .groups
            .into_iter()
            .map(|(key, (freshness, clusters))| SummaryGroup {
                key,
                count: sum(&freshness),
                clusters: clusters.len() as i64,
                freshness,
            })
            .collect();
        groups.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.key.cmp(&b.key)));
        ComplianceSummary {
            scope,
            group_by,
            count: sum(&self.total),
            clusters: self.clusters.len() as i64,
            freshness: self.total,
            groups,
        }
    }
}
