//! HTTP handlers of `Fluxplane.Fleet/policyAssignments`. Writing one needs the Owner role at its scope: it writes
//! configurations on every cluster it selects.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{
    AssignmentPlan, AssignmentSpec, AssignmentStatus, ClusterCompliance, ClusterComplianceEntry, ComplianceCounts,
    EnforcementMode, Existing, OnUnmatch, Placement, PlannedChange, PlannedChangeKind, PolicyAssignment,
    PolicyAssignmentProperties, PolicyAssignmentRequest, Rendering, UnresolvableCluster, decide, render,
};
use super::rollout::Steer;
use super::service::{Assignments, TYPE_NAME, assess, proposed};
use crate::arm::api_version::Fleet;
use crate::arm::body::{parse, strip_read_only};
use crate::arm::conditional::{Preconditions, insert_etag};
use crate::arm::paging::list_scopes;
use crate::arm::paging::{BaseUrl, ListParams, Page};
use crate::arm::params::at_both_scopes;
use crate::arm::params::{FleetApiVersionParam, ResourceGroupScopePath, SubscriptionScopePath};
use crate::arm::scope::{FleetScope, parse_name};
use crate::arm::{ApiVersion, ArmQuery, JsonBody};
use crate::auth::readable_scopes;
use crate::auth::{Caller, Role};
use crate::dashboards::history::{self, HistoryEntry, HistoryParams};
use crate::error::{ApiError, ApiResult, ErrorDetail, ErrorResponse};
use crate::fleet::cluster_ref;
use crate::fleet::receivers::model::ReconcileRequested;
use crate::lifecycle::{ProvisioningState, agent_online};
use crate::model::{ClusterTags, ConfigurationRecord, HistorySubject, PolicyAssignmentRecord};
use crate::state::AppState;

pub(super) const TYPE: &str = "Fluxplane.Fleet/policyAssignments";
/// Most conflicts an assignment's status lists (`conflictCount` counts them all).
const MAX_LISTED_CONFLICTS: usize = 100;
/// Most configurations a plan shows rendered (`changeCount` counts them all; `create` and `update` list them all).
const MAX_PLANNED_CHANGES: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            get_at_subscription,
            put_at_subscription,
            delete_at_subscription
        ))
        .routes(routes!(
            get_at_resource_group,
            put_at_resource_group,
            delete_at_resource_group
        ))
        .routes(routes!(list_at_subscription))
        .routes(routes!(list_at_resource_group))
        .routes(routes!(plan_at_subscription))
        .routes(routes!(plan_at_resource_group))
        .routes(routes!(compliance_at_subscription))
        .routes(routes!(compliance_at_resource_group))
        .routes(routes!(history_at_subscription))
        .routes(routes!(history_at_resource_group))
        .routes(routes!(pause_at_subscription))
        .routes(routes!(pause_at_resource_group))
        .routes(routes!(resume_at_subscription))
        .routes(routes!(resume_at_resource_group))
        .routes(routes!(reconcile_at_subscription))
        .routes(routes!(reconcile_at_resource_group))
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct SubscriptionAssignmentPath {
    subscription_id: String,
    policy_assignment_name: String,
}

#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ResourceGroupAssignmentPath {
    subscription_id: String,
    resource_group_name: String,
    policy_assignment_name: String,
}

impl SubscriptionAssignmentPath {
    pub(super) fn target(&self) -> ApiResult<(FleetScope, String)> {
        Ok((
            FleetScope::parse(&self.subscription_id, None)?,
            parse_name("policyAssignmentName", &self.policy_assignment_name)?,
        ))
    }
}

impl ResourceGroupAssignmentPath {
    pub(super) fn target(&self) -> ApiResult<(FleetScope, String)> {
        Ok((
            FleetScope::parse(&self.subscription_id, Some(&self.resource_group_name))?,
            parse_name("policyAssignmentName", &self.policy_assignment_name)?,
        ))
    }
}

/// Every selected cluster with where it stands, in cluster key order, and how many configurations the assignment
/// manages.
async fn assessed(
    state: &AppState,
    record: &PolicyAssignmentRecord,
    scope: &FleetScope,
) -> ApiResult<(Vec<(ClusterTags, ClusterCompliance, String)>, u64)> {
    let matched = state.store.assignment_matches(record).await?;
    let configurations: HashMap<i64, ConfigurationRecord> = state
        .store
        .configurations_named(&scope.clusters(), &record.configuration_name)
        .await?
        .into_iter()
        .map(|c| (c.cluster_id, c))
        .collect();
    let managed = configurations
        .values()
        .filter(|c| c.managed_by == Some(record.id))
        .count() as u64;
    // the template is rendered for each cluster when it reads the cluster, to tell those it cannot be rendered for
    let rendering = Rendering::of(&record.spec);
    let assessed = matched
        .into_iter()
        .map(|cluster| {
            let online = agent_online(cluster.last_connectivity_time, state.config.offline_after);
            let unresolvable = match &rendering {
                Err(why) => Some(why.clone()),
                Ok(r) => {
                    let current = configurations
                        .get(&cluster.id)
                        .filter(|c| {
                            c.managed_by == Some(record.id) && c.provisioning_state != ProvisioningState::Deleting
                        })
                        .map(|c| &c.spec);
                    r.blocked(&cluster.facts(&record.subscription), current)
                }
            };
            let (compliance, reason) = assess(
                record.id,
                record.held_generation(),
                configurations.get(&cluster.id),
                online,
                unresolvable.as_ref(),
            );
            (cluster, compliance, reason)
        })
        .collect();
    Ok((assessed, managed))
}

/// Where the assignment stands now: what its selector matches, what it manages, and how those clusters fare.
async fn status(state: &AppState, record: &PolicyAssignmentRecord, scope: &FleetScope) -> ApiResult<AssignmentStatus> {
    let (assessed, managed_configurations) = assessed(state, record, scope).await?;
    let mut compliance = ComplianceCounts::default();
    for (_, state, _) in &assessed {
        compliance.add(*state);
    }
    let conflicting: Vec<_> = assessed
        .iter()
        .filter(|(_, state, _)| *state == ClusterCompliance::Conflict)
        .collect();
    let conflicts = conflicting
        .iter()
        .take(MAX_LISTED_CONFLICTS)
        .map(|(cluster, _, reason)| {
            ErrorDetail::new("ConfigurationConflict", reason.clone())
                .with_target(cluster_ref(&record.subscription, cluster).id())
        })
        .collect();
    Ok(AssignmentStatus {
        compliance,
        matched_clusters: assessed.len() as u64,
        managed_configurations,
        conflict_count: conflicting.len() as u64,
        conflicts,
        rollout: record.rollout_state.clone(),
    })
}

/// Every selected cluster with where it stands and why, paged in cluster key order.
async fn compliance(
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    params: &ListParams,
    base: &BaseUrl,
    api_version: &str,
) -> ApiResult<Json<Page<ClusterComplianceEntry>>> {
    let id = scope.resource_id(TYPE_NAME, &name);
    caller.require(Role::Reader, &id)?;
    let record = state
        .store
        .get_policy_assignment(&scope.key(&name))
        .await?
        .ok_or_else(|| scope.not_found(TYPE, &name))?;
    let page = params.page()?;
    let entries: Vec<_> = assessed(state, &record, &scope)
        .await?
        .0
        .into_iter()
        .filter(|(cluster, _, _)| page.after.as_ref().is_none_or(|after| cluster.key > *after))
        .take(page.limit as usize + 1)
        .collect();
    Ok(Json(Page::from_items(
        entries,
        &page,
        |(cluster, _, _)| cluster.key.clone(),
        |token| base.next_link(&format!("{id}/compliance"), api_version, params.top.as_deref(), token),
        |(cluster, state, reason)| {
            let cluster = cluster_ref(&record.subscription, &cluster);
            ClusterComplianceEntry {
                configuration_id: cluster.configuration_id(&record.configuration_name),
                cluster_id: cluster.id(),
                state,
                reason,
            }
        },
    )))
}

fn scope_of(record: &PolicyAssignmentRecord) -> ApiResult<FleetScope> {
    FleetScope::parse(&record.subscription, record.resource_group.as_deref())
        .map_err(|_| ApiError::Internal(anyhow::anyhow!("a stored policy assignment has an invalid scope")))
}

async fn render_record(state: &AppState, record: PolicyAssignmentRecord) -> ApiResult<PolicyAssignment> {
    let scope = scope_of(&record)?;
    let status = status(state, &record, &scope).await?;
    Ok(PolicyAssignment {
        id: record.arm_id(),
        name: record.name,
        type_: TYPE.to_owned(),
        system_data: record.system_data,
        properties: PolicyAssignmentProperties {
            spec: record.spec,
            provisioning_state: "Succeeded".to_owned(),
            status,
        },
    })
}

async fn respond(state: &AppState, status: StatusCode, record: PolicyAssignmentRecord) -> ApiResult<Response> {
    let mut headers = HeaderMap::new();
    insert_etag(&mut headers, &record.etag);
    Ok((status, headers, Json(render_record(state, record).await?)).into_response())
}

async fn get(state: &AppState, caller: &Caller, scope: FleetScope, name: String) -> ApiResult<Response> {
    caller.require(Role::Reader, &scope.resource_id(TYPE_NAME, &name))?;
    let record = state
        .store
        .get_policy_assignment(&scope.key(&name))
        .await?
        .ok_or_else(|| scope.not_found(TYPE, &name))?;
    respond(state, StatusCode::OK, record).await
}

async fn put(
    assignments: &Assignments,
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    preconditions: &Preconditions,
    body: Value,
) -> ApiResult<Response> {
    caller.require(Role::Owner, &scope.resource_id(TYPE_NAME, &name))?;
    let spec = proposal(body)?;
    let rendering = render(&spec)?;
    let (record, created) = assignments
        .put(&caller.subject, &scope, &name, &spec, &rendering, preconditions)
        .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    respond(state, status, record).await
}

/// Pauses (a Contributor may: it only holds changes back) or resumes (an Owner, as for a write: it lets the change
/// go on) the assignment's rollout.
async fn steer(
    assignments: &Assignments,
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    steer: Steer,
) -> ApiResult<Response> {
    let role = match steer {
        Steer::Pause => Role::Contributor,
        Steer::Resume => Role::Owner,
    };
    caller.require(role, &scope.resource_id(TYPE_NAME, &name))?;
    let record = assignments
        .steer(&caller.subject, &scope, &name, steer)
        .await?
        .ok_or_else(|| scope.not_found(TYPE, &name))?;
    respond(state, StatusCode::OK, record).await
}

/// Parses and checks a proposed assignment as a PUT does.
fn proposal(mut body: Value) -> ApiResult<AssignmentSpec> {
    strip_read_only(&mut body, &["id", "name", "type", "systemData"]);
    if let Some(properties) = body.get_mut("properties") {
        strip_read_only(properties, &["status", "provisioningState"]);
    }
    let request: PolicyAssignmentRequest = parse(body, "")?;
    Ok(request.properties)
}

/// What applying `body` as the assignment `name` would do, computed as the store would apply it.
async fn plan(
    assignments: &Assignments,
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    body: Value,
) -> ApiResult<Json<AssignmentPlan>> {
    caller.require(Role::Reader, &scope.resource_id(TYPE_NAME, &name))?;
    let spec = proposal(body)?;
    let rendering = render(&spec)?;
    let group = match &spec.cluster_group_id {
        Some(id) => Some(assignments.resolve_group(&scope, id).await?),
        None => None,
    };
    let current = state.store.get_policy_assignment(&scope.key(&name)).await?;
    let now = match &current {
        Some(current) => state.store.assignment_matches(current).await?,
        None => Vec::new(),
    };
    let next_record = proposed(&scope, &name, &spec, &rendering, group, current, &caller.subject);
    let next = state.store.assignment_matches(&next_record).await?;
    let every: HashMap<i64, ClusterTags> = state
        .store
        .cluster_tags(&scope.clusters())
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    let reference = |id: &i64| every.get(id).map(|c| cluster_ref(scope.subscription.as_str(), c));
    let cluster = |id: &i64| reference(id).map(|c| c.id());
    let configuration = |id: &i64| reference(id).map(|c| c.configuration_id(&spec.configuration_name));
    let in_key_order = |mut ids: Vec<i64>| {
        ids.sort_by_key(|id| every.get(id).map(|c| c.key.clone()));
        ids
    };
    let now_ids: std::collections::HashSet<i64> = now.iter().map(|c| c.id).collect();
    let next_ids: Vec<i64> = next.iter().map(|c| c.id).collect();
    let mut plan = AssignmentPlan {
        entering_clusters: next_ids
            .iter()
            .filter(|id| !now_ids.contains(id))
            .filter_map(cluster)
            .collect(),
        leaving_clusters: now
            .iter()
            .filter(|c| !next_ids.contains(&c.id))
            .filter_map(|c| cluster(&c.id))
            .collect(),
        ..Default::default()
    };
    let held: HashMap<i64, ConfigurationRecord> = state
        .store
        .configurations_named(&scope.clusters(), &spec.configuration_name)
        .await?
        .into_iter()
        .map(|c| (c.cluster_id, c))
        .collect();
    let existing: HashMap<i64, Existing> = held
        .iter()
        .map(|(cluster, c)| {
            let deleting = c.provisioning_state == crate::lifecycle::ProvisioningState::Deleting;
            (
                *cluster,
                Existing {
                    managed_by: c.managed_by,
                    managed_generation: c.managed_generation,
                    deleting,
                },
            )
        })
        .collect();
    let decision = decide(next_record.id, next_record.generation, &next_ids, &existing);
    plan.conflicts = decision.conflicts.iter().filter_map(configuration).collect();
    // what each entering or changing cluster would hold, rendered for it; those it cannot be rendered for get
    // nothing (and keep what they have), as applying would do
    let mut written = Vec::new();
    for (kind, ids) in [
        (PlannedChangeKind::Create, &decision.create),
        (PlannedChangeKind::Update, &decision.update),
    ] {
        for id in ids {
            let Some(tags) = every.get(id) else { continue };
            let rendered = rendering
                .for_cluster(&tags.facts(scope.subscription.as_str()))
                .and_then(
                    |rendered| match held.get(id).filter(|_| kind == PlannedChangeKind::Update) {
                        Some(current) => match Placement::of(&current.spec).moved_by(&rendered) {
                            Some(why) => Err(why),
                            None => Ok(rendered),
                        },
                        None => Ok(rendered),
                    },
                );
            match rendered {
                Ok(rendered) => written.push((kind, *id, rendered)),
                Err(why) => plan.unresolvable.push(UnresolvableCluster {
                    cluster_id: cluster_ref(scope.subscription.as_str(), tags).id(),
                    target: why.target,
                    reason: why.message,
                }),
            }
        }
    }
    if spec.enforcement_mode == EnforcementMode::Default {
        let written_ids = |wanted: PlannedChangeKind| {
            written
                .iter()
                .filter(|(kind, ..)| *kind == wanted)
                .filter_map(|(_, id, _)| configuration(id))
                .collect::<Vec<_>>()
        };
        plan.create = written_ids(PlannedChangeKind::Create);
        plan.update = written_ids(PlannedChangeKind::Update);
        plan.changes = written
            .iter()
            .take(MAX_PLANNED_CHANGES)
            .filter_map(|(kind, id, rendered)| {
                let properties = serde_json::to_value(rendered).ok()?;
                let patch = match (kind, held.get(id)) {
                    (PlannedChangeKind::Update, Some(c)) => {
                        let now = serde_json::to_value(&c.spec).ok()?;
                        Some(serde_json::to_value(json_patch::diff(&now, &properties)).ok()?)
                    }
                    _ => None,
                };
                Some(PlannedChange {
                    configuration_id: configuration(id)?,
                    change: *kind,
                    properties,
                    patch,
                })
            })
            .collect();
        plan.change_count = written.len() as u64;
        let released = in_key_order(decision.release)
            .iter()
            .filter_map(configuration)
            .collect();
        match spec.on_unmatch {
            OnUnmatch::Delete => plan.delete = released,
            OnUnmatch::Orphan => plan.orphan = released,
        }
        plan.overlapping_assignments = overlapping(state, &scope, &name, &spec, &next_ids).await?;
    }
    Ok(Json(plan))
}

/// The other enforced assignments of the subscription that write the configuration `spec` names on any of
/// `clusters`.
async fn overlapping(
    state: &AppState,
    scope: &FleetScope,
    name: &str,
    spec: &AssignmentSpec,
    clusters: &[i64],
) -> ApiResult<Vec<String>> {
    let subscription = FleetScope::parse(scope.subscription.as_str(), None)?;
    let mut names = Vec::new();
    let mut page = crate::arm::paging::PageRequest {
        after: None,
        limit: 1000,
    };
    loop {
        let batch = state
            .store
            .list_policy_assignments(&subscription.clusters(), &page)
            .await?;
        let more = batch.len() > page.limit as usize;
        let batch = &batch[..batch.len().min(page.limit as usize)];
        page.after = batch.last().map(|a| a.key.clone());
        for other in batch {
            if other.key == scope.key(name)
                || other.configuration_name != spec.configuration_name
                || other.spec.enforcement_mode != EnforcementMode::Default
            {
                continue;
            }
            let theirs = state.store.assignment_matches(other).await?;
            if theirs.iter().any(|c| clusters.contains(&c.id)) {
                names.push(other.name.clone());
            }
        }
        if !more {
            return Ok(names);
        }
    }
}

async fn delete(assignments: &Assignments, caller: &Caller, scope: FleetScope, name: String) -> ApiResult<StatusCode> {
    caller.require(Role::Owner, &scope.resource_id(TYPE_NAME, &name))?;
    Ok(if assignments.delete(&scope, &name).await? {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    })
}

async fn list(
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    params: &ListParams,
    base: &BaseUrl,
    api_version: &str,
) -> ApiResult<Json<Page<PolicyAssignment>>> {
    let scopes = readable_scopes(caller, &scope)?;
    let page = params.page()?;
    let records = list_scopes(scopes, &page, |scope, page| async move {
        state.store.list_policy_assignments(&scope, &page).await
    })
    .await?;
    let path = format!("{}/providers/{TYPE}", scope.id());
    let mut rendered = Vec::with_capacity(records.len());
    for record in records {
        rendered.push((record.key.clone(), render_record(state, record).await?));
    }
    Ok(Json(Page::from_items(
        rendered,
        &page,
        |(key, _)| key.clone(),
        |token| base.next_link(&path, api_version, params.top.as_deref(), token),
        |(_, assignment)| assignment,
    )))
}

at_both_scopes! {
    get,
    tag = "PolicyAssignments",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "The assignment and where it stands", body = PolicyAssignment),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Reads a policy assignment of a subscription.
    get_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}",
        "PolicyAssignments_GetAtSubscription",
        SubscriptionAssignmentPath;
    /// Reads a policy assignment of a resource group.
    get_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}",
        "PolicyAssignments_Get",
        ResourceGroupAssignmentPath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path () -> ApiResult<Response> {
        let (scope, name) = path.target()?;
        get(&state, &caller, scope, name).await
    }
}

at_both_scopes! {
    put,
    tag = "PolicyAssignments",
    params(FleetApiVersionParam),
    request_body = PolicyAssignmentRequest,
    responses(
        (status = 200, description = "Replaced", body = PolicyAssignment),
        (status = 201, description = "Created", body = PolicyAssignment),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Creates or replaces a policy assignment of a subscription; every matching cluster gets its configuration in the
    /// same transaction.
    put_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}",
        "PolicyAssignments_CreateOrUpdateAtSubscription",
        SubscriptionAssignmentPath;
    /// Creates or replaces a policy assignment of a resource group; every matching cluster of the group gets its
    /// configuration in the same transaction.
    put_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}",
        "PolicyAssignments_CreateOrUpdate",
        ResourceGroupAssignmentPath;
    |path| (
        State(state): State<AppState>,
        State(assignments): State<Assignments>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path (
        preconditions: Preconditions,
        JsonBody(body): JsonBody,
    ) -> ApiResult<Response> {
        let (scope, name) = path.target()?;
        put(&assignments, &state, &caller, scope, name, &preconditions, body).await
    }
}

at_both_scopes! {
    delete,
    tag = "PolicyAssignments",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "Deleted"),
        (status = 204, description = "There was no such assignment"),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Deletes a policy assignment of a subscription (200), its configurations going as its `onUnmatch` says; 204
    /// when there is none.
    delete_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}",
        "PolicyAssignments_DeleteAtSubscription",
        SubscriptionAssignmentPath;
    /// Deletes a policy assignment of a resource group (200), its configurations going as its `onUnmatch` says; 204
    /// when there is none.
    delete_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}",
        "PolicyAssignments_Delete",
        ResourceGroupAssignmentPath;
    |path| (
        State(assignments): State<Assignments>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path () -> ApiResult<StatusCode> {
        let (scope, name) = path.target()?;
        delete(&assignments, &caller, scope, name).await
    }
}

at_both_scopes! {
    get,
    tag = "PolicyAssignments",
    params(FleetApiVersionParam, ListParams),
    responses(
        (status = 200, description = "A page of assignments", body = Page<PolicyAssignment>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Lists the policy assignments of a subscription, those of its resource groups included (a caller who may read
    /// only some resource groups sees theirs, as ARM lists).
    list_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments",
        "PolicyAssignments_ListBySubscription",
        SubscriptionScopePath;
    /// Lists the policy assignments of a resource group.
    list_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments",
        "PolicyAssignments_ListByResourceGroup",
        ResourceGroupScopePath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        version: ApiVersion<Fleet>,
    ) path (
        ArmQuery(params): ArmQuery<ListParams>,
        base: BaseUrl,
    ) -> ApiResult<Json<Page<PolicyAssignment>>> {
        let scope = path.fleet_scope()?;
        list(&state, &caller, scope, &params, &base, version.version).await
    }
}

at_both_scopes! {
    post,
    tag = "PolicyAssignments",
    params(FleetApiVersionParam),
    request_body = PolicyAssignmentRequest,
    responses(
        (status = 200, description = "What applying it would do", body = AssignmentPlan),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// What applying a proposed policy assignment of a subscription would do; writes nothing.
    plan_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/plan",
        "PolicyAssignments_PlanAtSubscription",
        SubscriptionAssignmentPath;
    /// What applying a proposed policy assignment of a resource group would do; writes nothing.
    plan_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/plan",
        "PolicyAssignments_Plan",
        ResourceGroupAssignmentPath;
    |path| (
        State(state): State<AppState>,
        State(assignments): State<Assignments>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path (
        JsonBody(body): JsonBody,
    ) -> ApiResult<Json<AssignmentPlan>> {
        let (scope, name) = path.target()?;
        plan(&assignments, &state, &caller, scope, name, body).await
    }
}

at_both_scopes! {
    get,
    tag = "PolicyAssignments",
    params(FleetApiVersionParam, ListParams),
    responses(
        (status = 200, description = "A page of selected clusters", body = Page<ClusterComplianceEntry>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Where every cluster a subscription's policy assignment selects stands, and why; paged.
    compliance_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/compliance",
        "PolicyAssignments_ListComplianceAtSubscription",
        SubscriptionAssignmentPath;
    /// Where every cluster a resource group's policy assignment selects stands, and why; paged.
    compliance_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/compliance",
        "PolicyAssignments_ListCompliance",
        ResourceGroupAssignmentPath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        version: ApiVersion<Fleet>,
    ) path (
        ArmQuery(params): ArmQuery<ListParams>,
        base: BaseUrl,
    ) -> ApiResult<Json<Page<ClusterComplianceEntry>>> {
        let (scope, name) = path.target()?;
        compliance(&state, &caller, scope, name, &params, &base, version.version).await
    }
}

at_both_scopes! {
    post,
    tag = "PolicyAssignments",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "The assignment, its rollout paused (or paused already)", body = PolicyAssignment),
        (status = "default", description = "Error (409: no rollout under way)", body = ErrorResponse),
    ),
    /// Pauses the rollout of a subscription's policy assignment: no batch starts until it is resumed; the clusters
    /// it reached keep the new generation, the others what they have.
    pause_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/pauseRollout",
        "PolicyAssignments_PauseRolloutAtSubscription",
        SubscriptionAssignmentPath;
    /// Pauses the rollout of a resource group's policy assignment: no batch starts until it is resumed; the clusters
    /// it reached keep the new generation, the others what they have.
    pause_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/pauseRollout",
        "PolicyAssignments_PauseRollout",
        ResourceGroupAssignmentPath;
    |path| (
        State(state): State<AppState>,
        State(assignments): State<Assignments>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path () -> ApiResult<Response> {
        let (scope, name) = path.target()?;
        steer(&assignments, &state, &caller, scope, name, Steer::Pause).await
    }
}

at_both_scopes! {
    post,
    tag = "PolicyAssignments",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "The assignment, its rollout moving again (or moving already)", body = PolicyAssignment),
        (status = "default", description = "Error (409: no rollout paused)", body = ErrorResponse),
    ),
    /// Resumes the paused rollout of a subscription's policy assignment: its batch gets a full `batchTimeout`
    /// again, and moves on at once if it is done.
    resume_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/resumeRollout",
        "PolicyAssignments_ResumeRolloutAtSubscription",
        SubscriptionAssignmentPath;
    /// Resumes the paused rollout of a resource group's policy assignment: its batch gets a full `batchTimeout`
    /// again, and moves on at once if it is done.
    resume_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/resumeRollout",
        "PolicyAssignments_ResumeRollout",
        ResourceGroupAssignmentPath;
    |path| (
        State(state): State<AppState>,
        State(assignments): State<Assignments>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path () -> ApiResult<Response> {
        let (scope, name) = path.target()?;
        steer(&assignments, &state, &caller, scope, name, Steer::Resume).await
    }
}

at_both_scopes! {
    post,
    tag = "PolicyAssignments",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "Asked", body = ReconcileRequested),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Asks the agents of every configuration a subscription's policy assignment manages to check their source again
    /// at once, rather than at their sync interval (no new generation); Contributor or above.
    reconcile_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/reconcile",
        "PolicyAssignments_ReconcileAtSubscription",
        SubscriptionAssignmentPath;
    /// Asks the agents of every configuration a resource group's policy assignment manages to check their source
    /// again at once, rather than at their sync interval (no new generation); Contributor or above.
    reconcile_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/reconcile",
        "PolicyAssignments_Reconcile",
        ResourceGroupAssignmentPath;
    |path| (
        State(assignments): State<Assignments>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path () -> ApiResult<Json<ReconcileRequested>> {
        let (scope, name) = path.target()?;
        caller.require(Role::Contributor, &scope.resource_id(TYPE_NAME, &name))?;
        let (at, configurations) = assignments
            .request_reconcile(&caller.subject, &scope, &name)
            .await?
            .ok_or_else(|| scope.not_found(TYPE, &name))?;
        Ok(Json(ReconcileRequested {
            reconcile_requested_at: crate::lifecycle::reconcile_requested_text(at),
            configurations,
        }))
    }
}

async fn assignment_history(
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    query: &HistoryParams,
    base: &BaseUrl,
) -> ApiResult<Page<HistoryEntry>> {
    let id = scope.resource_id(TYPE_NAME, &name);
    caller.require(Role::Reader, &id)?;
    let record = state
        .store
        .get_policy_assignment(&scope.key(&name))
        .await?
        .ok_or_else(|| scope.not_found(TYPE, &name))?;
    let subject = HistorySubject::Assignment { id: record.arm_id() };
    let path = format!("{id}/history");
    history::page(state.store.as_ref(), subject, &id, false, query, base, &path).await
}

at_both_scopes! {
    get,
    tag = "History",
    params(FleetApiVersionParam, HistoryParams),
    responses(
        (status = 200, description = "A page of the history", body = inline(Page<HistoryEntry>)),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// The history of a policy assignment of a subscription: the status transitions of the configurations it manages
    /// and the writes to it, in time order.
    history_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/history",
        "PolicyAssignments_HistoryAtSubscription",
        SubscriptionAssignmentPath;
    /// The history of a policy assignment of a resource group.
    history_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/history",
        "PolicyAssignments_History",
        ResourceGroupAssignmentPath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
        base: BaseUrl,
    ) path (
        ArmQuery(query): ArmQuery<HistoryParams>,
    ) -> ApiResult<Json<Page<HistoryEntry>>> {
        let (scope, name) = path.target()?;
        assignment_history(&state, &caller, scope, name, &query, &base)
            .await
            .map(Json)
    }
}
