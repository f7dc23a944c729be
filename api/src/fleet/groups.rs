//! `Fluxplane.Fleet/clusterGroups`: a named label selector over the tags of the clusters in its scope (a
//! subscription or a resource group). Membership is never stored: it is what the selector matches now, so a
//! cluster joins or leaves a group in the same write that changes its tags.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::groups_service::{Groups, TYPE_NAME};
use super::selector::LabelSelector;
use crate::arm::api_version::Fleet;
use crate::arm::body::{parse, strip_read_only};
use crate::arm::conditional::{Preconditions, insert_etag};
use crate::arm::paging::list_scopes;
use crate::arm::paging::{BaseUrl, ListParams, Page, PageRequest};
use crate::arm::params::at_both_scopes;
use crate::arm::params::{FleetApiVersionParam, ResourceGroupScopePath, SubscriptionScopePath};
use crate::arm::scope::{FleetScope, parse_name};
use crate::arm::system_data::SystemData;
use crate::arm::{ApiVersion, ArmQuery, JsonBody};
use crate::auth::readable_scopes;
use crate::auth::{Caller, Role};
use crate::clusters::model::ConnectedCluster;
use crate::clusters::view::render as render_cluster;
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::model::ClusterGroupRecord;
use crate::state::AppState;

const TYPE: &str = "Fluxplane.Fleet/clusterGroups";
/// How many clusters one read of a members page scans at a time.
const MEMBER_SCAN: u32 = 1000;

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
        .routes(routes!(members_at_subscription))
        .routes(routes!(members_at_resource_group))
}

/// A cluster group as the API answers it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGroup {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub system_data: SystemData,
    pub properties: ClusterGroupProperties,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterGroupProperties {
    pub selector: LabelSelector,
    /// How many clusters of the group's scope the selector matches now.
    pub member_count: u64,
    pub provisioning_state: String,
}

/// The body of a cluster group PUT.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClusterGroupRequest {
    properties: ClusterGroupRequestProperties,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ClusterGroupRequestProperties {
    /// Which clusters of the scope belong to the group; an empty selector takes them all.
    selector: LabelSelector,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct SubscriptionGroupPath {
    subscription_id: String,
    cluster_group_name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ResourceGroupGroupPath {
    subscription_id: String,
    resource_group_name: String,
    cluster_group_name: String,
}

impl SubscriptionGroupPath {
    fn target(&self) -> ApiResult<(FleetScope, String)> {
        Ok((
            FleetScope::parse(&self.subscription_id, None)?,
            parse_name("clusterGroupName", &self.cluster_group_name)?,
        ))
    }
}

impl ResourceGroupGroupPath {
    fn target(&self) -> ApiResult<(FleetScope, String)> {
        Ok((
            FleetScope::parse(&self.subscription_id, Some(&self.resource_group_name))?,
            parse_name("clusterGroupName", &self.cluster_group_name)?,
        ))
    }
}

/// The clusters of the scope the selector matches.
async fn member_count(state: &AppState, scope: &FleetScope, selector: &LabelSelector) -> ApiResult<u64> {
    let tags = state.store.cluster_tags(&scope.clusters()).await?;
    Ok(tags.iter().filter(|c| selector.matches(&c.tags)).count() as u64)
}

impl ClusterGroupRecord {
    /// The group's scope as stored.
    pub fn scope(&self) -> ApiResult<FleetScope> {
        FleetScope::parse(&self.subscription, self.resource_group.as_deref())
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("a stored cluster group has an invalid scope")))
    }
}

async fn render(state: &AppState, record: ClusterGroupRecord) -> ApiResult<ClusterGroup> {
    let scope = record.scope()?;
    let member_count = member_count(state, &scope, &record.selector).await?;
    Ok(ClusterGroup {
        id: scope.resource_id(TYPE_NAME, &record.name),
        name: record.name,
        type_: TYPE.to_owned(),
        system_data: record.system_data,
        properties: ClusterGroupProperties {
            selector: record.selector,
            member_count,
            provisioning_state: "Succeeded".to_owned(),
        },
    })
}

async fn respond(state: &AppState, status: StatusCode, record: ClusterGroupRecord) -> ApiResult<Response> {
    let mut headers = HeaderMap::new();
    insert_etag(&mut headers, &record.etag);
    Ok((status, headers, Json(render(state, record).await?)).into_response())
}

async fn get(state: &AppState, caller: &Caller, scope: FleetScope, name: String) -> ApiResult<Response> {
    caller.require(Role::Reader, &scope.resource_id(TYPE_NAME, &name))?;
    let record = state
        .store
        .get_cluster_group(&scope.key(&name))
        .await?
        .ok_or_else(|| scope.not_found(TYPE, &name))?;
    respond(state, StatusCode::OK, record).await
}

async fn put(
    groups: &Groups,
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    preconditions: &Preconditions,
    mut body: Value,
) -> ApiResult<Response> {
    caller.require(Role::Contributor, &scope.resource_id(TYPE_NAME, &name))?;
    strip_read_only(&mut body, &["id", "name", "type", "systemData"]);
    if let Some(properties) = body.get_mut("properties") {
        strip_read_only(properties, &["memberCount", "provisioningState"]);
    }
    let request: ClusterGroupRequest = parse(body, "")?;
    let (record, created) = groups
        .put(
            &caller.subject,
            &scope,
            &name,
            &request.properties.selector,
            preconditions,
        )
        .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    respond(state, status, record).await
}

async fn delete(groups: &Groups, caller: &Caller, scope: FleetScope, name: String) -> ApiResult<StatusCode> {
    caller.require(Role::Contributor, &scope.resource_id(TYPE_NAME, &name))?;
    Ok(if groups.delete(&scope, &name).await? {
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
) -> ApiResult<Json<Page<ClusterGroup>>> {
    let scopes = readable_scopes(caller, &scope)?;
    let page = params.page()?;
    let records = list_scopes(scopes, &page, |scope, page| async move {
        state.store.list_cluster_groups(&scope, &page).await
    })
    .await?;
    let path = format!("{}/providers/{TYPE}", scope.id());
    let mut rendered = Vec::with_capacity(records.len());
    for record in records {
        rendered.push((record.key.clone(), render(state, record).await?));
    }
    Ok(Json(Page::from_items(
        rendered,
        &page,
        |(key, _)| key.clone(),
        |token| base.next_link(&path, api_version, params.top.as_deref(), token),
        |(_, group)| group,
    )))
}

/// The clusters the group's selector matches, in key order, paged.
async fn members(
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    params: &ListParams,
    base: &BaseUrl,
    api_version: &str,
) -> ApiResult<Json<Page<ConnectedCluster>>> {
    let id = scope.resource_id(TYPE_NAME, &name);
    caller.require(Role::Reader, &id)?;
    let group = state
        .store
        .get_cluster_group(&scope.key(&name))
        .await?
        .ok_or_else(|| scope.not_found(TYPE, &name))?;
    let page = params.page()?;
    let wanted = page.limit as usize + 1;
    let mut found = Vec::with_capacity(wanted);
    let mut after = page.after.clone();
    loop {
        let scan = PageRequest {
            after: after.clone(),
            limit: MEMBER_SCAN,
        };
        let clusters = state.store.list_clusters(&scope.clusters(), &scan).await?;
        let exhausted = clusters.len() <= MEMBER_SCAN as usize;
        after = clusters.last().map(|c| c.key.clone());
        found.extend(clusters.into_iter().filter(|c| group.selector.matches(&c.tags)));
        if found.len() >= wanted || exhausted {
            break;
        }
    }
    found.truncate(wanted);
    let offline_after = state.config.offline_after;
    Ok(Json(Page::from_items(
        found,
        &page,
        |c| c.key.clone(),
        |token| base.next_link(&format!("{id}/members"), api_version, params.top.as_deref(), token),
        |record| render_cluster(record, offline_after),
    )))
}

at_both_scopes! {
    get,
    tag = "ClusterGroups",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "The group", body = ClusterGroup),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Reads a cluster group of a subscription.
    get_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/clusterGroups/{clusterGroupName}",
        "ClusterGroups_GetAtSubscription",
        SubscriptionGroupPath;
    /// Reads a cluster group of a resource group.
    get_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/clusterGroups/{clusterGroupName}",
        "ClusterGroups_Get",
        ResourceGroupGroupPath;
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
    tag = "ClusterGroups",
    params(FleetApiVersionParam),
    request_body = ClusterGroupRequest,
    responses(
        (status = 200, description = "Replaced", body = ClusterGroup),
        (status = 201, description = "Created", body = ClusterGroup),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Creates or replaces a cluster group of a subscription: its selector sees every cluster of the subscription.
    put_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/clusterGroups/{clusterGroupName}",
        "ClusterGroups_CreateOrUpdateAtSubscription",
        SubscriptionGroupPath;
    /// Creates or replaces a cluster group of a resource group: its selector sees the clusters of that group only.
    put_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/clusterGroups/{clusterGroupName}",
        "ClusterGroups_CreateOrUpdate",
        ResourceGroupGroupPath;
    |path| (
        State(state): State<AppState>,
        State(groups): State<Groups>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path (
        preconditions: Preconditions,
        JsonBody(body): JsonBody,
    ) -> ApiResult<Response> {
        let (scope, name) = path.target()?;
        put(&groups, &state, &caller, scope, name, &preconditions, body).await
    }
}

at_both_scopes! {
    delete,
    tag = "ClusterGroups",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "Deleted"),
        (status = 204, description = "There was no such group"),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Deletes a cluster group of a subscription (200), or finds nothing to delete (204); 409 while policy
    /// assignments or alert rules follow it.
    delete_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/clusterGroups/{clusterGroupName}",
        "ClusterGroups_DeleteAtSubscription",
        SubscriptionGroupPath;
    /// Deletes a cluster group of a resource group (200), or finds nothing to delete (204); 409 while policy
    /// assignments or alert rules follow it.
    delete_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/clusterGroups/{clusterGroupName}",
        "ClusterGroups_Delete",
        ResourceGroupGroupPath;
    |path| (
        State(groups): State<Groups>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path () -> ApiResult<StatusCode> {
        let (scope, name) = path.target()?;
        delete(&groups, &caller, scope, name).await
    }
}

at_both_scopes! {
    get,
    tag = "ClusterGroups",
    params(FleetApiVersionParam, ListParams),
    responses(
        (status = 200, description = "A page of groups", body = Page<ClusterGroup>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Lists the cluster groups of a subscription, those of its resource groups included (a caller who may read only
    /// some resource groups sees theirs, as ARM lists).
    list_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/clusterGroups",
        "ClusterGroups_ListBySubscription",
        SubscriptionScopePath;
    /// Lists the cluster groups of a resource group.
    list_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/clusterGroups",
        "ClusterGroups_ListByResourceGroup",
        ResourceGroupScopePath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        version: ApiVersion<Fleet>,
    ) path (
        ArmQuery(params): ArmQuery<ListParams>,
        base: BaseUrl,
    ) -> ApiResult<Json<Page<ClusterGroup>>> {
        let scope = path.fleet_scope()?;
        list(&state, &caller, scope, &params, &base, version.version).await
    }
}

at_both_scopes! {
    get,
    tag = "ClusterGroups",
    params(FleetApiVersionParam, ListParams),
    responses(
        (status = 200, description = "A page of member clusters", body = Page<ConnectedCluster>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Lists the clusters a subscription's cluster group takes in now.
    members_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/clusterGroups/{clusterGroupName}/members",
        "ClusterGroups_ListMembersAtSubscription",
        SubscriptionGroupPath;
    /// Lists the clusters a resource group's cluster group takes in now.
    members_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/clusterGroups/{clusterGroupName}/members",
        "ClusterGroups_ListMembers",
        ResourceGroupGroupPath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        version: ApiVersion<Fleet>,
    ) path (
        ArmQuery(params): ArmQuery<ListParams>,
        base: BaseUrl,
    ) -> ApiResult<Json<Page<ConnectedCluster>>> {
        let (scope, name) = path.target()?;
        members(&state, &caller, scope, name, &params, &base, version.version).await
    }
}
