//! HTTP handlers of `Microsoft.Kubernetes/connectedClusters`.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{
    ClusterPatch, ClusterProperties, ClusterRequest, ClusterSpec, ConnectedCluster, ConnectedClusterProperties,
    ConnectivityStatus, READ_ONLY_FIELDS, READ_ONLY_IDENTITY, READ_ONLY_PROPERTIES, validate,
};
use crate::arm::api_version::{Clusters, Fleet};
use crate::arm::body::{parse, strip_read_only};
use crate::arm::conditional::{Preconditions, insert_etag};
use crate::arm::filter::{Field, FilterParam, Matching, scan};
use crate::arm::ids::{ClusterRef, ResourceGroupName, SubscriptionId};
use crate::arm::paging::{BaseUrl, ListParams, Page, PageRequest};
use crate::arm::system_data::SystemData;
use crate::arm::{ApiVersion, ArmPath, ArmQuery, JsonBody};
use crate::auth::{Caller, Role};
use crate::dashboards::history::{self, HistoryEntry, HistoryParams};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::fleet::groups::FleetApiVersionParam;
use crate::fleet::managed_write;
use crate::state::AppState;
use crate::store::{self, ClusterRecord, Write};

const TYPE: &str = "Microsoft.Kubernetes/connectedClusters";
/// How often an unconditional write re-reads and retries after losing a race before giving up.
pub(crate) const WRITE_ATTEMPTS: usize = 8;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_cluster, put_cluster, patch_cluster, delete_cluster))
        .routes(routes!(list_by_resource_group))
        .routes(routes!(list_by_subscription))
        .routes(routes!(cluster_history))
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
    /// The API version: 2024-01-01 or 2026-05-01.
    #[serde(rename = "api-version")]
    #[param(rename = "api-version")]
    #[allow(dead_code)]
    api_version: String,
}

/// A connected cluster whose agent has been silent for `offline_after` is Offline: derived when read, so that no
/// sweeper has to run for it.
pub(crate) fn connectivity(
    status: &str,
    last_connectivity_time: Option<DateTime<Utc>>,
    offline_after: std::time::Duration,
) -> String {
    if status == ConnectivityStatus::Connected.as_str() && !agent_online(last_connectivity_time, offline_after) {
        ConnectivityStatus::Offline.as_str().to_owned()
    } else {
        status.to_owned()
    }
}

/// Whether the cluster's agent has been heard from within `offline_after`.
pub(crate) fn agent_online(last: Option<DateTime<Utc>>, offline_after: std::time::Duration) -> bool {
    last.is_some_and(|last| chrono::Duration::from_std(offline_after).is_ok_and(|limit| Utc::now() - last <= limit))
}

pub(crate) fn render(record: ClusterRecord, offline_after: std::time::Duration) -> ConnectedCluster {
    let connectivity_status = connectivity(
        &record.connectivity_status,
        record.last_connectivity_time,
        offline_after,
    );
    let cluster = ClusterRef::parse(&record.subscription, &record.resource_group, &record.name)
        .expect("stored names were validated when written");
    ConnectedCluster {
        id: cluster.id(),
        name: record.name,
        type_: TYPE.to_owned(),
        location: record.location,
        tags: record.tags,
        identity: record.spec.identity,
        kind: record.spec.kind,
        system_data: record.system_data,
        properties: ConnectedClusterProperties {
            spec: record.spec.properties,
            provisioning_state: "Succeeded".to_owned(),
            connectivity_status,
            last_connectivity_time: record.last_connectivity_time,
            agent_version: record.agent_version,
            kubernetes_version: record.kubernetes_version,
            total_node_count: record.total_node_count,
        },
    }
}

fn respond(state: &AppState, status: StatusCode, record: ClusterRecord) -> Response {
    let mut headers = HeaderMap::new();
    insert_etag(&mut headers, &record.etag);
    (status, headers, Json(render(record, state.config.offline_after))).into_response()
}

fn not_found(cluster: &ClusterRef) -> ApiError {
    ApiError::ResourceNotFound(format!(
        "The Resource '{TYPE}/{}' under resource group '{}' was not found.",
        cluster.name.as_str(),
        cluster.resource_group.as_str()
    ))
}

pub(crate) fn new_etag() -> String {
    uuid::Uuid::new_v4().to_string()
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
    caller: Caller,
    _version: ApiVersion<Clusters>,
    ArmPath(path): ArmPath<ClusterNamePath>,
    preconditions: Preconditions,
    JsonBody(mut body): JsonBody,
) -> ApiResult<Response> {
    let cluster = path.cluster()?;
    caller.require(Role::Contributor, &cluster.id())?;
    strip_read_only(&mut body, READ_ONLY_FIELDS);
    strip_read_only(&mut body["properties"], READ_ONLY_PROPERTIES);
    strip_read_only(&mut body["identity"], READ_ONLY_IDENTITY);
    let request: ClusterRequest = parse(body, "")?;
    let tags = request.tags.unwrap_or_default();
    validate(&request.location, &tags, &request.properties)?;
    let spec = ClusterSpec {
        identity: request.identity,
        kind: request.kind,
        properties: request.properties,
    };
    let key = cluster.key();
    let _turn = state.turns.take(&format!("cluster {key}")).await;
    for _ in 0..WRITE_ATTEMPTS {
        let current = state.store.get_cluster(&key).await?;
        preconditions.check(current.as_ref().map(|c| c.etag.as_str()))?;
        let now = Utc::now();
        let (record, outcome) = match current {
            None => {
                let record = ClusterRecord {
                    id: 0,
                    key: key.clone(),
                    subscription_key: cluster.subscription.key(),
                    resource_group_key: cluster.resource_group.key(),
                    subscription: cluster.subscription.as_str().to_owned(),
                    resource_group: cluster.resource_group.as_str().to_owned(),
                    name: cluster.name.as_str().to_owned(),
                    location: request.location.clone(),
                    tags: tags.clone(),
                    spec: spec.clone(),
                    connectivity_status: ConnectivityStatus::Connecting.as_str().to_owned(),
                    last_connectivity_time: None,
                    agent_version: None,
                    kubernetes_version: None,
                    total_node_count: None,
                    etag: new_etag(),
                    system_data: SystemData::created(&caller.subject, now),
                    revision: 0,
                    agent_encryption_key: None,
                };
                let outcome = state.store.insert_cluster(&record, &managed_write(&state)).await?;
                ((record, StatusCode::CREATED), outcome)
            }
            Some(current) => {
                if !same_location(&current.location, &request.location) {
                    return Err(ApiError::invalid(
                        "location",
                        format!(
                            "the cluster is registered in '{}'; its location cannot change to '{}'",
                            current.location, request.location
                        ),
                    ));
                }
                let expected = current.etag.clone();
                let identity_changed = identity_changed(&state, &current.spec.properties, &spec.properties);
                let record = ClusterRecord {
                    tags: tags.clone(),
                    spec: spec.clone(),
                    etag: new_etag(),
                    system_data: current.system_data.modified(&caller.subject, now),
                    ..current
                };
                let outcome = state
                    .store
                    .update_cluster(&record, &expected, identity_changed, &managed_write(&state))
                    .await?;
                ((record, StatusCode::OK), outcome)
            }
        };
        match outcome {
            Write::Written => {
                let (record, status) = record;
                // policy assignments may have given or taken configurations with the new tags
                state.notifier.notify(&key);
                tracing::info!(cluster = %cluster.id(), created = status == StatusCode::CREATED, "cluster written");
                return Ok(respond(&state, status, record));
            }
            Write::Conflict if preconditions.is_conditional() => return Err(Preconditions::lost_race()),
            Write::Conflict | Write::ParentMissing => continue,
        }
    }
    Err(contention())
}

/// When a write replaces the agent's key, the message that configurations with secrets sealed to the old agent
/// fail with: a new key means a new agent, which registers a new encryption key.
fn identity_changed<'a>(state: &'a AppState, old: &ClusterProperties, new: &ClusterProperties) -> Option<&'a str> {
    (old.agent_public_key_certificate.trim() != new.agent_public_key_certificate.trim())
        .then_some(state.messages.rotated.as_str())
}

pub(crate) fn contention() -> ApiError {
    ApiError::Conflict("the resource is being changed by other requests; retry".into())
}

/// ARM treats "West Europe" and "westeurope" as one location.
fn same_location(a: &str, b: &str) -> bool {
    let normal = |s: &str| {
        s.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_lowercase()
    };
    normal(a) == normal(b)
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
    caller: Caller,
    _version: ApiVersion<Clusters>,
    ArmPath(path): ArmPath<ClusterNamePath>,
    preconditions: Preconditions,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let cluster = path.cluster()?;
    caller.require(Role::Contributor, &cluster.id())?;
    let patch: ClusterPatch = parse(body.clone(), "")?;
    let key = cluster.key();
    let _turn = state.turns.take(&format!("cluster {key}")).await;
    for _ in 0..WRITE_ATTEMPTS {
        let current = state
            .store
            .get_cluster(&key)
            .await?
            .ok_or_else(|| not_found(&cluster))?;
        preconditions.check(Some(&current.etag))?;
        let mut properties = serde_json::to_value(&current.spec.properties).map_err(anyhow::Error::from)?;
        if let Some(changes) = body.get("properties") {
            json_patch::merge(&mut properties, changes);
        }
        let properties: ClusterProperties = parse(properties, "properties")?;
        let tags: BTreeMap<String, String> = patch.tags.clone().unwrap_or_else(|| current.tags.clone());
        validate(&current.location, &tags, &properties)?;
        let expected = current.etag.clone();
        let identity_changed = identity_changed(&state, &current.spec.properties, &properties);
        let record = ClusterRecord {
            tags,
            spec: ClusterSpec {
                properties,
                ..current.spec.clone()
            },
            etag: new_etag(),
            system_data: current.system_data.modified(&caller.subject, Utc::now()),
            ..current
        };
        match state
            .store
            .update_cluster(&record, &expected, identity_changed, &managed_write(&state))
            .await?
        {
            Write::Written => {
                // policy assignments may have given or taken configurations with the new tags
                state.notifier.notify(&key);
                return Ok(respond(&state, StatusCode::OK, record));
            }
            Write::Conflict if preconditions.is_conditional() => return Err(Preconditions::lost_race()),
            Write::Conflict | Write::ParentMissing => continue,
        }
    }
    Err(contention())
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
    _version: ApiVersion<Clusters>,
    ArmPath(path): ArmPath<ClusterNamePath>,
) -> ApiResult<Response> {
    let (_, record) = readable(&state, &caller, &path).await?;
    Ok(respond(&state, StatusCode::OK, record))
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
    State(state): State<AppState>,
    caller: Caller,
    _version: ApiVersion<Clusters>,
    ArmPath(path): ArmPath<ClusterNamePath>,
) -> ApiResult<StatusCode> {
    let cluster = path.cluster()?;
    caller.require(Role::Contributor, &cluster.id())?;
    if state.store.delete_cluster(&cluster.key()).await? {
        state.notifier.notify(&cluster.key());
        tracing::info!(cluster = %cluster.id(), "cluster deleted with its configurations");
        Ok(StatusCode::OK)
    } else {
        Ok(StatusCode::NO_CONTENT)
    }
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
    version: ApiVersion<Clusters>,
    ArmPath(path): ArmPath<ResourceGroupPath>,
    ArmQuery(params): ArmQuery<ListParams>,
    ArmQuery(filter): ArmQuery<FilterParam>,
    base: BaseUrl,
) -> ApiResult<Json<Page<ConnectedCluster>>> {
    let subscription = SubscriptionId::parse(&path.subscription_id)?;
    let resource_group = ResourceGroupName::parse(&path.resource_group_name)?;
    let scope_path = format!(
        "/subscriptions/{}/resourceGroups/{}",
        subscription.as_str(),
        resource_group.as_str()
    );
    caller.require(Role::Reader, &scope_path)?;
    let scope = store::ClusterScope::ResourceGroup {
        subscription_key: subscription.key(),
        resource_group_key: resource_group.key(),
    };
    let list_path = format!("{scope_path}/providers/{TYPE}");
    let listing = Listing {
        params: &params,
        filter: &filter,
        base: &base,
        api_version: version.version,
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
    version: ApiVersion<Clusters>,
    ArmPath(path): ArmPath<SubscriptionPath>,
    ArmQuery(params): ArmQuery<ListParams>,
    ArmQuery(filter): ArmQuery<FilterParam>,
    base: BaseUrl,
) -> ApiResult<Json<Page<ConnectedCluster>>> {
    let subscription = SubscriptionId::parse(&path.subscription_id)?;
    let scope_path = format!("/subscriptions/{}", subscription.as_str());
    let list_path = format!("{scope_path}/providers/{TYPE}");
    let listing = Listing {
        params: &params,
        filter: &filter,
        base: &base,
        api_version: version.version,
        path: &list_path,
    };
    if caller.require(Role::Reader, &scope_path).is_ok() {
        let scope = store::ClusterScope::Subscription {
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
        let scope = store::ClusterScope::ResourceGroup {
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
    Scope(store::ClusterScope),
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
    api_version: &'a str,
    path: &'a str,
}

impl Listing<'_> {
    async fn answer(&self, state: &AppState, source: &Source) -> ApiResult<Json<Page<ConnectedCluster>>> {
        let page = self.params.page()?;
        let filter = self.filter.parse(FILTER_FIELDS)?;
        let link = |token: &str| {
            self.base
                .next_link(self.path, self.api_version, self.params.top.as_deref(), token)
                + &self.filter.link_suffix()
        };
        let offline_after = state.config.offline_after;
        let Some(filter) = filter else {
            let records = source.fetch(state, &page).await?;
            return Ok(Json(Page::from_items(
                records,
                &page,
                |c| c.key.clone(),
                link,
                |record| render(record, offline_after),
            )));
        };
        Ok(Json(
            scan(
                &page,
                &filter,
                |batch| async move { source.fetch(state, &batch).await },
                |c| c.key.clone(),
                |record| render(record, offline_after),
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
    let subject = store::HistorySubject::Cluster { cluster_id: record.id };
    let path = format!("{id}/history");
    history::page(&state, subject, &id, true, &query, &base, &path)
        .await
        .map(Json)
}
