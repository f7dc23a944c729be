//! The fleet's grid: clusters in key order, a page at a time, each with the states of its configurations, so that
//! a dashboard draws clusters × configurations without a request per cluster. Narrowed by the summary's filters:
//! tags and cluster group choose clusters; compliance state, policy assignment and commit choose configurations,
//! and then only clusters with one of them are listed.

use std::collections::{BTreeMap, HashMap};

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::summary::{cluster_group, commit_filter, compliance_state, policy_assignment, tag_selector};
use crate::arm::api_version::Fleet;
use crate::arm::ids::ClusterRef;
use crate::arm::paging::list_scopes;
use crate::arm::paging::{BaseUrl, ListParams, MAX_PAGE_SIZE, Page, PageRequest, encode_token};
use crate::arm::params::at_both_scopes;
use crate::arm::params::{FleetApiVersionParam, ResourceGroupScopePath, SubscriptionScopePath};
use crate::arm::scope::FleetScope;
use crate::arm::{ApiVersion, ArmQuery};
use crate::auth::Caller;
use crate::auth::readable_scopes;
use crate::error::{ApiResult, ErrorResponse, Problems};
use crate::lifecycle::{agent_online, connectivity};
use crate::model::{ClusterRecord, ConfigurationState};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(at_subscription))
        .routes(routes!(at_resource_group))
}

/// Query parameters of the grid.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct GridParams {
    /// Only clusters whose tags match this Kubernetes label selector, e.g. `env=prod,region in (eu,us)`.
    tag_selector: Option<String>,
    /// Only clusters of this cluster group: its name in the scope, or its ARM id.
    cluster_group: Option<String>,
    /// Only configurations this policy assignment manages (name or ARM id), and clusters with one.
    policy_assignment: Option<String>,
    /// Only configurations in this compliance state, and clusters with one.
    compliance_state: Option<String>,
    /// Only configurations whose agent last reported this commit (as reported, `main@sha1:<hash>`, or a commit hash
    /// or its first 7 or more hexadecimal digits), and clusters with one.
    source_synced_commit_id: Option<String>,
    /// Largest number of clusters in one page (1-1000, default 100).
    #[serde(rename = "$top")]
    #[param(rename = "$top")]
    top: Option<String>,
    /// Continuation token from a previous page's `nextLink`.
    #[serde(rename = "$skipToken")]
    #[param(rename = "$skipToken")]
    skip_token: Option<String>,
}

/// A configuration's states in the grid.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConfigurationCell {
    /// The configuration's ARM id.
    pub id: String,
    pub name: String,
    pub compliance_state: String,
    pub provisioning_state: String,
    /// fresh, stale or offline (see the summary).
    pub freshness: String,
    pub policy_assignment_id: Option<String>,
    /// The commit the agent last reported (absent before its first sync).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_synced_commit_id: Option<String>,
}

/// A cluster's row of the grid.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRow {
    /// The cluster's ARM id.
    pub id: String,
    pub name: String,
    pub resource_group: String,
    pub tags: BTreeMap<String, String>,
    pub connectivity_status: String,
    pub last_connectivity_time: Option<DateTime<Utc>>,
    /// In name order.
    pub configurations: Vec<ConfigurationCell>,
}

at_both_scopes! {
    get,
    tag = "ComplianceSummary",
    params(FleetApiVersionParam, GridParams),
    responses(
        (status = 200, description = "A page of clusters", body = inline(Page<ClusterRow>)),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// A page of a subscription's clusters with their configurations' states (the resource groups the caller may
    /// read, if it may not read the whole subscription).
    at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/clusterCompliance",
        "ClusterCompliance_ListAtSubscription",
        SubscriptionScopePath;
    /// A page of a resource group's clusters with their configurations' states.
    at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/clusterCompliance",
        "ClusterCompliance_List",
        ResourceGroupScopePath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
        base: BaseUrl,
    ) path (
        ArmQuery(params): ArmQuery<GridParams>,
    ) -> ApiResult<Json<Page<ClusterRow>>> {
        let scope = path.fleet_scope()?;
        grid(&state, &caller, scope, &params, &base).await.map(Json)
    }
}

async fn grid(
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    params: &GridParams,
    base: &BaseUrl,
) -> ApiResult<Page<ClusterRow>> {
    let scopes = readable_scopes(caller, &scope)?;
    let mut problems = Problems::default();
    let tags = tag_selector(params.tag_selector.as_deref(), &mut problems);
    let wanted_state = compliance_state(params.compliance_state.as_deref(), &mut problems);
    let wanted_commit = commit_filter(params.source_synced_commit_id.as_deref(), &mut problems);
    let list = ListParams {
        top: params.top.clone(),
        skip_token: params.skip_token.clone(),
    };
    let page = match list.page() {
        Ok(page) => Some(page),
        Err(err) => {
            problems.add("$top or $skipToken", err.to_string());
            None
        }
    };
    problems.into_result("grid request", None)?;
    let page = page.expect("checked above");
    let group = cluster_group(state, caller, &scope, params.cluster_group.as_deref()).await?;
    let assignment = policy_assignment(state, caller, &scope, params.policy_assignment.as_deref()).await?;
    let assignment_id = assignment.as_ref().map(|a| a.arm_id());
    let narrowed = wanted_state.is_some() || assignment_id.is_some() || wanted_commit.is_some();
    let mut rows: Vec<(String, ClusterRow)> = Vec::new();
    let mut after = page.after.clone();
    // read clusters a batch at a time until the page (and one more, to know of a next page) is full
    loop {
        let batch: Vec<ClusterRecord> = list_scopes(
            scopes.clone(),
            &PageRequest {
                after: after.clone(),
                limit: MAX_PAGE_SIZE,
            },
            |readable, page| {
                let store = state.store.clone();
                async move { store.list_clusters(&readable, &page).await }
            },
        )
        .await?;
        let more = batch.len() > MAX_PAGE_SIZE as usize;
        let batch: Vec<ClusterRecord> = batch
            .into_iter()
            .take(MAX_PAGE_SIZE as usize)
            .inspect(|c| after = Some(c.key.clone()))
            .collect();
        let kept: Vec<ClusterRecord> = batch
            .into_iter()
            .filter(|c| tags.matches(&c.tags) && group.as_ref().is_none_or(|g| g.selector.matches(&c.tags)))
            .collect();
        let mut cells = configuration_states(state, &scopes, &kept).await?;
        for cluster in kept {
            let online = agent_online(cluster.last_connectivity_time, state.config.offline_after);
            let cluster_ref = ClusterRef::parse(&cluster.subscription, &cluster.resource_group, &cluster.name)
                .expect("stored names were validated when written");
            let configurations: Vec<ConfigurationCell> = cells
                .remove(&cluster.id)
                .unwrap_or_default()
                .into_iter()
                .filter(|c| wanted_state.is_none_or(|s| s == c.compliance_state))
                .filter(|c| wanted_commit.as_ref().is_none_or(|w| w.matches(c.commit_id.as_deref())))
                .filter(|c| {
                    assignment_id
                        .as_ref()
                        .is_none_or(|a| a.eq_ignore_ascii_case(&c.policy_assignment))
                })
                .map(|c| ConfigurationCell {
                    id: cluster_ref.configuration_id(&c.name),
                    freshness: match (online, c.reported) {
                        (false, _) => "offline",
                        (true, true) => "fresh",
                        (true, false) => "stale",
                    }
                    .to_owned(),
                    name: c.name,
                    compliance_state: c.compliance_state,
                    provisioning_state: c.provisioning_state,
                    policy_assignment_id: (!c.policy_assignment.is_empty()).then_some(c.policy_assignment),
                    source_synced_commit_id: c.commit_id,
                })
                .collect();
            if narrowed && configurations.is_empty() {
                continue;
            }
            rows.push((
                cluster.key,
                ClusterRow {
                    id: cluster_ref.id(),
                    name: cluster.name,
                    resource_group: cluster.resource_group,
                    tags: cluster.tags,
                    connectivity_status: connectivity(
                        &cluster.connectivity_status,
                        cluster.last_connectivity_time,
                        state.config.offline_after,
                    ),
                    last_connectivity_time: cluster.last_connectivity_time,
                    configurations,
                },
            ));
        }
        if rows.len() > page.limit as usize || !more {
            break;
        }
    }
    let next_link = if rows.len() > page.limit as usize {
        rows.truncate(page.limit as usize);
        rows.last().map(|(key, _)| {
            let mut link = base.next_link(
                &format!("{}/providers/Fluxplane.Fleet/clusterCompliance", scope.id()),
                "2026-01-01",
                params.top.as_deref(),
                &encode_token(key),
            );
            let filters = [
                ("tagSelector", &params.tag_selector),
                ("clusterGroup", &params.cluster_group),
                ("policyAssignment", &params.policy_assignment),
                ("complianceState", &params.compliance_state),
                ("sourceSyncedCommitId", &params.source_synced_commit_id),
            ];
            for (name, value) in filters {
                if let Some(value) = value {
                    link.push('&');
                    link.push_str(
                        &form_urlencoded::Serializer::new(String::new())
                            .append_pair(name, value)
                            .finish(),
                    );
                }
            }
            link
        })
    } else {
        None
    };
    Ok(Page {
        value: rows.into_iter().map(|(_, row)| row).collect(),
        next_link,
    })
}

/// The configurations' states of `clusters` (in key order), by cluster id: one range read per scope.
async fn configuration_states(
    state: &AppState,
    scopes: &[crate::arm::scope::ClusterSet],
    clusters: &[ClusterRecord],
) -> ApiResult<HashMap<i64, Vec<ConfigurationState>>> {
    let mut by_cluster: HashMap<i64, Vec<ConfigurationState>> = HashMap::new();
    let (Some(first), Some(last)) = (clusters.first(), clusters.last()) else {
        return Ok(by_cluster);
    };
    for readable in scopes {
        for row in state
            .store
            .configuration_states(readable, &first.key, &last.key)
            .await?
        {
            by_cluster.entry(row.cluster_id).or_default().push(row);
        }
    }
    Ok(by_cluster)
}
