//! HTTP handlers of `Microsoft.Kubernetes/connectedClusters`.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{
    ClusterPatch, ClusterRequest, ClusterSpec, ConnectedCluster, READ_ONLY_FIELDS, READ_ONLY_IDENTITY,
    READ_ONLY_PROPERTIES,
};
use super::service::{ClusterChanges, ClusterDraft, Clusters, TYPE, not_found};
use super::view::render;
use crate::arm::api_version::Rendered;
use crate::arm::api_version::{Clusters as ClustersVersion, Fleet};
use crate::arm::body::{parse, strip_read_only};
use crate::arm::conditional::{Preconditions, insert_etag};
use crate::arm::filter::{Field, FilterParam, Matching, scan};
use crate::arm::ids::{ClusterRef, ResourceGroupName, SubscriptionId};
use crate::arm::paging::{BaseUrl, ListParams, Page, PageRequest};
use crate::arm::params::FleetApiVersionParam;
use crate::arm::{ApiVersion, ArmPath, ArmQuery, JsonBody};
use crate::auth::{Caller, Role};
use crate::dashboards::history::{self, ClusterAsOfParams, HistoryEntry, HistoryParams, StatusEntry};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::model::ClusterRecord;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_cluster, put_cluster, patch_cluster, delete_cluster))
        .routes(routes!(list_by_resource_group))
        .routes(routes!(list_by_subscription))
        .routes(routes!(cluster_history))
        .routes(routes!(cluster_as_of))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ClusterNamePath {
    subscription_id: String,
    resource_group_name: String,
    cluster_name: String,
}

impl ClusterNamePath {
    fn cluster(&self) -> Result<ClusterRef, ApiError> {
        ClusterRef::parse(&self.subscription_id, &self.resource_group_name, &self.cluster_name)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ResourceGroupPath {
    subscription_id: String,
    resource_group_name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct SubscriptionPath {
    subscription_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApiVersionParam {
    /// The API version: 2021-03-01, 2021-10-01, 2024-01-01 or 2026-05-01. An older version refuses, and does not
    /// answer, the properties it does not define; its PUT keeps them.
    #[serde(rename = "api-version")]
    #[param(rename = "api-version")]
    #[allow(dead_code)]
    api_version: String,
}

fn respond(
    state: &AppState,
    status: StatusCode,
    record: ClusterRecord,
    version: ApiVersion<ClustersVersion>,
) -> Response {
    let mut headers = HeaderMap::new();
    insert_etag(&mut headers, &record.etag);
    let body = version.render(render(record, state.config.offline_after));
    (status, headers, Json(body)).into_response()
}

/// Registers a cluster or replaces its location-independent fields.
#[utoipa::path(
    put,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Kubernetes/connectedClusters/{clusterName}",
    tag = "ConnectedClusters",
    operation_id = "ConnectedCluster_CreateOrReplace",
    params(ClusterNamePath, ApiVersionParam),
    request_body = ClusterRequest,
    responses(
        (status = 200, description = "Replaced", body = ConnectedCluster),
        (status = 201, description = "Registered", body = ConnectedCluster),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn put_cluster(
    State(state): State<AppState>,
    State(clusters): State<Clusters>,
    caller: Caller,
    version: ApiVersion<ClustersVersion>,
    ArmPath(path): ArmPath<ClusterNamePath>,
    preconditions: Preconditions,
    JsonBody(mut body): JsonBody,
) -> ApiResult<Response> {
    let cluster = path.cluster()?;
    caller.require(Role::Contributor, &cluster.id())?;
    strip_read_only(&mut body, READ_ONLY_FIELDS);
    strip_read_only(&mut body["properties"], READ_ONLY_PROPERTIES);
    strip_read_only(&mut body["identity"], READ_ONLY_IDENTITY);
    version.check_defined(&body)?;
    let request: ClusterRequest = parse(body, "")?;
    let spec = ClusterSpec {
        identity: request.identity,
        kind: request.kind,
        properties: request.properties,
    };
    let draft = ClusterDraft::new(request.location, request.tags.unwrap_or_default(), spec)?;
    let (record, created) = clusters
        .put(&caller.subject, &cluster, &draft, &preconditions, version)
        .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(respond(&state, status, record, version))
}

/// Updates a cluster's tags (replaced as a whole) and patchable properties (merged).
#[utoipa::path(
    patch,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Kubernetes/connectedClusters/{clusterName}",
    tag = "ConnectedClusters",
    operation_id = "ConnectedCluster_Update",
    params(ClusterNamePath, ApiVersionParam),
    request_body = ClusterPatch,
    responses(
        (status = 200, description = "Updated", body = ConnectedCluster),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn patch_cluster(
    State(state): State<AppState>,
    State(clusters): State<Clusters>,
    caller: Caller,
    version: ApiVersion<ClustersVersion>,
    ArmPath(path): ArmPath<ClusterNamePath>,
    preconditions: Preconditions,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let cluster = path.cluster()?;
    caller.require(Role::Contributor, &cluster.id())?;
    version.check_defined(&body)?;
    let patch: ClusterPatch = parse(body.clone(), "")?;
    let changes = ClusterChanges {
        properties: body.get("properties").cloned(),
        tags: patch.tags,
    };
    let record = clusters
        .patch(&caller.subject, &cluster, &changes, &preconditions)
        .await?;
    Ok(respond(&state, StatusCode::OK, record, version))
}

/// The cluster the path names, if the caller may read it.
async fn readable(state: &AppState, caller: &Caller, path: &ClusterNamePath) -> ApiResult<(ClusterRef, ClusterRecord)> {
    let cluster = path.cluster()?;
    caller.require(Role::Reader, &cluster.id())?;
    let record = state
        .store
        .get_cluster(&cluster.key())
        .await?
        .ok_or_else(|| not_found(&cluster))?;
    Ok((cluster, record))
}

/// Reads a cluster.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Kubernetes/connectedClusters/{clusterName}",
    tag = "ConnectedClusters",
    operation_id = "ConnectedCluster_Get",
    params(ClusterNamePath, ApiVersionParam),
    responses(
        (status = 200, description = "The cluster", body = ConnectedCluster),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn get_cluster(
    State(state): State<AppState>,
    caller: Caller,
    version: ApiVersion<ClustersVersion>,
    ArmPath(path): ArmPath<ClusterNamePath>,
) -> ApiResult<Response> {
    let (_, record) = readable(&state, &caller, &path).await?;
    Ok(respond(&state, StatusCode::OK, record, version))
}

/// Deletes a cluster and all its Flux configurations.
#[utoipa::path(
    delete,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Kubernetes/connectedClusters/{clusterName}",
    tag = "ConnectedClusters",
    operation_id = "ConnectedCluster_Delete",
    params(ClusterNamePath, ApiVersionParam),
    responses(
        (status = 200, description = "Deleted"),
        (status = 204, description = "There was no such cluster"),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn delete_cluster(
    State(clusters): State<Clusters>,
    caller: Caller,
    _version: ApiVersion<ClustersVersion>,
    ArmPath(path): ArmPath<ClusterNamePath>,
) -> ApiResult<StatusCode> {
    let cluster = path.cluster()?;
    caller.require(Role::Contributor, &cluster.id())?;
    Ok(if clusters.delete(&cluster).await? {
        StatusCode::OK
    } else {
        StatusCode::NO_CONTENT
    })
}

/// Lists the clusters of a resource group.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Kubernetes/connectedClusters",
    tag = "ConnectedClusters",
    operation_id = "ConnectedCluster_ListByResourceGroup",
    params(ResourceGroupPath, ApiVersionParam, ListParams, FilterParam),
    responses(
        (status = 200, description = "A page of clusters", body = Page<ConnectedCluster>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn list_by_resource_group(
    State(state): State<AppState>,
    caller: Caller,
    version: ApiVersion<ClustersVersion>,
    ArmPath(path): ArmPath<ResourceGroupPath>,
    ArmQuery(params): ArmQuery<ListParams>,
    ArmQuery(filter): ArmQuery<FilterParam>,
    base: BaseUrl,
) -> ApiResult<Json<Page<Rendered<ConnectedCluster>>>> {
    let subscription = SubscriptionId::parse(&path.subscription_id)?;
    let resource_group = ResourceGroupName::parse(&path.resource_group_name)?;
    let scope_path = format!(
        "/subscriptions/{}/resourceGroups/{}",
        subscription.as_str(),
        resource_group.as_str()
    );
    caller.require(Role::Reader, &scope_path)?;
    let scope = crate::arm::scope::ClusterSet::ResourceGroup {
        subscription_key: subscription.key(),
        resource_group_key: resource_group.key(),
    };
    let list_path = format!("{scope_path}/providers/{TYPE}");
    let listing = Listing {
        params: &params,
        filter: &filter,
        base: &base,
        version,
        path: &list_path,
    };
    listing.answer(&state, &Source::Scope(scope)).await
}

/// Lists the clusters of a subscription.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/providers/Microsoft.Kubernetes/connectedClusters",
    tag = "ConnectedClusters",
    operation_id = "ConnectedCluster_ListBySubscription",
    params(SubscriptionPath, ApiVersionParam, ListParams, FilterParam),
    responses(
        (status = 200, description = "A page of clusters", body = Page<ConnectedCluster>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn list_by_subscription(
    State(state): State<AppState>,
    caller: Caller,
    version: ApiVersion<ClustersVersion>,
    ArmPath(path): ArmPath<SubscriptionPath>,
    ArmQuery(params): ArmQuery<ListParams>,
    ArmQuery(filter): ArmQuery<FilterParam>,
    base: BaseUrl,
) -> ApiResult<Json<Page<Rendered<ConnectedCluster>>>> {
    let subscription = SubscriptionId::parse(&path.subscription_id)?;
    let scope_path = format!("/subscriptions/{}", subscription.as_str());
    let list_path = format!("{scope_path}/providers/{TYPE}");
    let listing = Listing {
        params: &params,
        filter: &filter,
        base: &base,
        version,
        path: &list_path,
    };
    if caller.require(Role::Reader, &scope_path).is_ok() {
        let scope = crate::arm::scope::ClusterSet::Subscription {
            subscription_key: subscription.key(),
        };
        return listing.answer(&state, &Source::Scope(scope)).await;
    }
    // as in ARM, a caller who may read only some resource groups sees the clusters of those
    let groups = caller.resource_groups_with(Role::Reader, subscription.as_str());
    if groups.is_empty() {
        caller.require(Role::Reader, &scope_path)?;
    }
    listing
        .answer(&state, &Source::ResourceGroups(subscription.key(), groups))
        .await
}

/// Up to `page.limit + 1` clusters of several resource groups, in key order. Every key of a group starts with
/// `{subscription}/{group}/`, so the groups' key ranges are disjoint and ordered by that prefix, and reading the
/// groups in prefix order continues any page where the last one stopped.
async fn list_resource_groups(
    state: &AppState,
    subscription_key: &str,
    mut groups: Vec<String>,
    page: &PageRequest,
) -> ApiResult<Vec<ClusterRecord>> {
    groups.sort_by_cached_key(|group| format!("{subscription_key}/{group}/"));
    let wanted = page.limit as usize + 1;
    let mut records = Vec::with_capacity(wanted);
    for group in groups {
        let scope = crate::arm::scope::ClusterSet::ResourceGroup {
            subscription_key: subscription_key.to_owned(),
            resource_group_key: group,
        };
        let rest = PageRequest {
            after: page.after.clone(),
            // list_clusters answers up to limit + 1
            limit: (wanted - records.len() - 1) as u32,
        };
        records.extend(state.store.list_clusters(&scope, &rest).await?);
        if records.len() >= wanted {
            break;
        }
    }
    records.truncate(wanted);
    Ok(records)
}

/// Where a cluster list reads from: one scope, or the resource groups of a subscription the caller may read.
enum Source {
    Scope(crate::arm::scope::ClusterSet),
    ResourceGroups(String, Vec<String>),
}

impl Source {
    async fn fetch(&self, state: &AppState, page: &PageRequest) -> ApiResult<Vec<ClusterRecord>> {
        match self {
            Self::Scope(scope) => Ok(state.store.list_clusters(scope, page).await?),
            Self::ResourceGroups(subscription_key, groups) => {
                list_resource_groups(state, subscription_key, groups.clone(), page).await
            }
        }
    }
}

/// What a cluster list call asked for.
struct Listing<'a> {
    params: &'a ListParams,
    filter: &'a FilterParam,
    base: &'a BaseUrl,
    version: ApiVersion<ClustersVersion>,
    path: &'a str,
}

impl Listing<'_> {
    async fn answer(&self, state: &AppState, source: &Source) -> ApiResult<Json<Page<Rendered<ConnectedCluster>>>> {
        let page = self.params.page()?;
        let filter = self.filter.parse(FILTER_FIELDS)?;
        let link = |token: &str| {
            self.base
                .next_link(self.path, self.version.version, self.params.top.as_deref(), token)
                + &self.filter.link_suffix()
        };
        let offline_after = state.config.offline_after;
        let version = self.version;
        let Some(filter) = filter else {
            let records = source.fetch(state, &page).await?;
            return Ok(Json(Page::from_items(
                records,
                &page,
                |c| c.key.clone(),
                link,
                |record| version.render(render(record, offline_after)),
            )));
        };
        Ok(Json(
            scan(
                &page,
                &filter,
                |batch| async move { source.fetch(state, &batch).await },
                |c| c.key.clone(),
                |record| version.render(render(record, offline_after)),
                link,
            )
            .await?,
        ))
    }
}

/// What the cluster lists can be filtered on.
const FILTER_FIELDS: &[Field] = &[
    Field {
        path: "name",
        matching: Matching::IgnoreCase,
    },
    Field {
        path: "location",
        matching: Matching::IgnoreCase,
    },
    Field {
        path: "properties/connectivityStatus",
        matching: Matching::OneOf(&["Connecting", "Connected", "Offline", "Expired"]),
    },
    Field {
        path: "properties/agentVersion",
        matching: Matching::Exact,
    },
    Field {
        path: "properties/kubernetesVersion",
        matching: Matching::Exact,
    },
    Field {
        path: "tags/*",
        matching: Matching::Exact,
    },
];

/// The history of a cluster: the status transitions of its configurations and the writes to it and to them, in
/// time order.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Kubernetes/connectedClusters/{clusterName}/history",
    tag = "History",
    operation_id = "ConnectedCluster_History",
    params(ClusterNamePath, FleetApiVersionParam, HistoryParams),
    responses(
        (status = 200, description = "A page of the history", body = inline(Page<HistoryEntry>)),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn cluster_history(
    State(state): State<AppState>,
    caller: Caller,
    _version: ApiVersion<Fleet>,
    base: BaseUrl,
    ArmPath(path): ArmPath<ClusterNamePath>,
    ArmQuery(query): ArmQuery<HistoryParams>,
) -> ApiResult<Json<Page<HistoryEntry>>> {
    let (cluster, record) = readable(&state, &caller, &path).await?;
    let id = cluster.id();
    let subject = crate::model::HistorySubject::Cluster { cluster_id: record.id };
    let path = format!("{id}/history");
    history::page(state.store.as_ref(), subject, &id, true, &query, &base, &path)
        .await
        .map(Json)
}

/// What a cluster's configurations were at a past time: per configuration, its latest status entry by then (its
/// generation, states and the commit its agent had reported), in name order; those not yet created or already
/// deleted then are left out. Within the history's retention.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Microsoft.Kubernetes/connectedClusters/{clusterName}/asOf",
    tag = "History",
    operation_id = "ConnectedCluster_AsOf",
    params(ClusterNamePath, FleetApiVersionParam, ClusterAsOfParams),
    responses(
        (status = 200, description = "A page of the cluster's configurations as they were", body = inline(Page<StatusEntry>)),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn cluster_as_of(
    State(state): State<AppState>,
    caller: Caller,
    _version: ApiVersion<Fleet>,
    base: BaseUrl,
    ArmPath(path): ArmPath<ClusterNamePath>,
    ArmQuery(query): ArmQuery<ClusterAsOfParams>,
) -> ApiResult<Json<Page<StatusEntry>>> {
    let (cluster, record) = readable(&state, &caller, &path).await?;
    history::cluster_as_of(
        state.store.as_ref(),
        record.id,
        &cluster.id(),
        &query,
        state.config.history_retention,
        &base,
    )
    .await
    .map(Json)
}
