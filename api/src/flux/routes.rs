//! HTTP handlers of `Microsoft.KubernetesConfiguration/fluxConfigurations` and their operation statuses.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fluxplane_agent_protocol::flux::FluxConfigurationSpec;
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{
    FluxConfiguration, FluxConfigurationProperties, OperationStatus, READ_ONLY_PROPERTIES, StatusFreshness,
};
use super::secrets::SecretFields;
use super::service::{Configurations, Deletion, Target, Written, not_found, parent_not_found};
use super::validate::{self};
use crate::arm::api_version::Rendered;
use crate::arm::api_version::{Fleet, FluxConfigurations};
use crate::arm::body::{parse, strip_read_only};
use crate::arm::conditional::{Preconditions, insert_etag};
use crate::arm::filter::{Field, FilterParam, Matching, scan};
use crate::arm::ids::{ClusterPath, ClusterScope, ConfigurationName};
use crate::arm::paging::{BaseUrl, ListParams, Page};
use crate::arm::params::FleetApiVersionParam;
use crate::arm::{ApiVersion, ArmPath, ArmQuery, JsonBody, async_operation_headers, retry_after};
use crate::auth::{Caller, Role};
use crate::dashboards::history::{self, AsOfParams, HistoryEntry, HistoryParams, StatusEntry};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::fleet::receivers::model::ReconcileRequested;
use crate::lifecycle::{self, OperationState, agent_online};
use crate::model::{ConfigurationRecord, HistorySubject};
use crate::state::AppState;

const TYPE: &str = "Microsoft.KubernetesConfiguration/fluxConfigurations";
const TOP_LEVEL_READ_ONLY: &[&str] = &["id", "name", "type", "systemData"];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(
            get_configuration,
            put_configuration,
            patch_configuration,
            delete_configuration
        ))
        .routes(routes!(list_configurations))
        .routes(routes!(get_operation))
        .routes(routes!(reconcile_configuration))
        .routes(routes!(configuration_history))
        .routes(routes!(configuration_as_of))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ConfigurationParams {
    subscription_id: String,
    resource_group_name: String,
    /// The cluster's resource provider.
    cluster_rp: String,
    /// The cluster's resource type.
    cluster_resource_name: String,
    cluster_name: String,
    flux_configuration_name: String,
}

impl ConfigurationParams {
    fn cluster(&self) -> ClusterPath {
        ClusterPath {
            subscription_id: self.subscription_id.clone(),
            resource_group_name: self.resource_group_name.clone(),
            cluster_rp: self.cluster_rp.clone(),
            cluster_resource_name: self.cluster_resource_name.clone(),
            cluster_name: self.cluster_name.clone(),
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct OperationParams {
    subscription_id: String,
    resource_group_name: String,
    /// The cluster's resource provider.
    cluster_rp: String,
    /// The cluster's resource type.
    cluster_resource_name: String,
    cluster_name: String,
    flux_configuration_name: String,
    operation_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApiVersionParam {
    /// The API version: 2022-03-01, 2022-07-01, 2022-11-01, 2023-05-01, 2024-11-01 or 2025-04-01. An older
    /// version refuses, and does not answer, the properties it does not define; its PUT keeps them.
    #[serde(rename = "api-version")]
    #[param(rename = "api-version")]
    #[allow(dead_code)]
    api_version: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Delete at once instead of waiting for the agent to remove the configuration from the cluster.
    #[serde(rename = "forceDelete")]
    #[param(rename = "forceDelete", value_type = Option<bool>)]
    force_delete: Option<String>,
}

/// Parses the path, authorises the caller for it, and finds the registered cluster.
async fn resolve(
    configurations: &Configurations,
    caller: &Caller,
    params: &ConfigurationParams,
    role: Role,
) -> ApiResult<Target> {
    let scope = ClusterScope::parse(&params.cluster())?;
    let name = ConfigurationName::parse(&params.flux_configuration_name)?;
    caller.require(role, &scope.configuration_id(name.as_str()))?;
    configurations.target(scope, name).await
}

/// The configuration as `version` answers it.
fn render(
    scope: &ClusterScope,
    online: bool,
    record: ConfigurationRecord,
    version: ApiVersion<FluxConfigurations>,
) -> Rendered<FluxConfiguration> {
    let status_freshness = match (online, record.reported_generation == Some(record.generation)) {
        (false, _) => StatusFreshness::Offline,
        (true, true) => StatusFreshness::Fresh,
        (true, false) => StatusFreshness::Stale,
    };
    version.render(FluxConfiguration {
        id: scope.configuration_id(&record.name),
        name: record.name,
        type_: TYPE.to_owned(),
        system_data: record.system_data,
        properties: FluxConfigurationProperties {
            spec: record.spec,
            statuses: record.observed.statuses,
            repository_public_key: record.observed.repository_public_key,
            source_synced_commit_id: record.observed.source_synced_commit_id,
            source_updated_at: record.observed.source_updated_at,
            status_updated_at: record.observed.status_updated_at,
            compliance_state: record.compliance_state,
            provisioning_state: record.provisioning_state,
            error_message: record.failure.or(record.observed.error_message),
            status_freshness,
            managed_by: record.managed_by_id,
        },
    })
}

fn operation_url(base: &BaseUrl, id: &str, operation: &str, api_version: &str) -> String {
    format!("{}{id}/operations/{operation}?api-version={api_version}", base.0)
}

/// Checks the split secret fields: their types and the protected settings. A type error names the field but never
/// quotes the value, which serde's message would.
fn check_secrets(secrets: &SecretFields) -> ApiResult<()> {
    let set = match parse::<FluxConfigurationSpec>(secrets.without_removals(), "properties") {
        Ok(set) => set,
        Err(err) => {
            let target = err.detail().target.unwrap_or_else(|| "properties".into());
            return Err(ApiError::invalid(
                target.clone(),
                format!("{target}: secret fields take strings (configurationProtectedSettings: an object of strings)"),
            ));
        }
    };
    match &set.configuration_protected_settings {
        Some(settings) => validate::protected_settings(settings),
        None => Ok(()),
    }
}

/// Answers a write: the resource, its ETag, and where to poll the operation.
fn written(target: &Target, written: Written, base: &BaseUrl, version: ApiVersion<FluxConfigurations>) -> Response {
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let url = operation_url(base, &target.id(), &written.operation.id, version.version);
    let mut headers = async_operation_headers(&url);
    insert_etag(&mut headers, &written.record.etag);
    let body = render(&target.scope, target.online, written.record, version);
    (status, headers, Json(body)).into_response()
}

/// Creates a Flux configuration or replaces it as a whole (secrets included).
#[utoipa::path(
    put,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{fluxConfigurationName}",
    tag = "FluxConfigurations",
    operation_id = "FluxConfigurations_CreateOrUpdate",
    params(ConfigurationParams, ApiVersionParam),
    request_body = FluxConfigurationRequest,
    responses(
        (status = 200, description = "Updated; the agent applies it next", body = FluxConfiguration,
         headers(("Azure-AsyncOperation" = String, description = "Operation status URL"),
                 ("Retry-After" = u32, description = "Seconds to wait before polling the operation"))),
        (status = 201, description = "Created; the agent applies it next", body = FluxConfiguration,
         headers(("Azure-AsyncOperation" = String, description = "Operation status URL"),
                 ("Retry-After" = u32, description = "Seconds to wait before polling the operation"))),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn put_configuration(
    State(configurations): State<Configurations>,
    caller: Caller,
    version: ApiVersion<FluxConfigurations>,
    ArmPath(params): ArmPath<ConfigurationParams>,
    preconditions: Preconditions,
    base: BaseUrl,
    JsonBody(mut body): JsonBody,
) -> ApiResult<Response> {
    let target = resolve(&configurations, &caller, &params, Role::Contributor).await?;
    strip_read_only(&mut body, TOP_LEVEL_READ_ONLY);
    version.check_defined(&body)?;
    let mut properties = match body.as_object_mut().and_then(|b| b.remove("properties")) {
        Some(properties) if properties.is_object() => properties,
        Some(_) => return Err(ApiError::invalid("properties", "properties must be an object")),
        None => return Err(ApiError::invalid("properties", "properties is required")),
    };
    parse::<FluxConfigurationRequest>(body, "")?;
    strip_read_only(&mut properties, READ_ONLY_PROPERTIES);
    let secrets = SecretFields::split_from(&mut properties);
    check_secrets(&secrets)?;
    let spec: FluxConfigurationSpec = parse(properties, "properties")?;
    let result = configurations
        .put(&caller.subject, &target, &spec, &secrets, &preconditions, version)
        .await?;
    Ok(written(&target, result, &base, version))
}

/// The body of a configuration PUT or PATCH besides `properties`: nothing else is accepted.
#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FluxConfigurationRequest {
    #[serde(default)]
    #[allow(dead_code)]
    properties: Option<FluxConfigurationSpec>,
}

/// Changes part of a configuration by JSON merge: fields given replace, `null` removes (a kustomization, say).
#[utoipa::path(
    patch,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{fluxConfigurationName}",
    tag = "FluxConfigurations",
    operation_id = "FluxConfigurations_Update",
    params(ConfigurationParams, ApiVersionParam),
    request_body = FluxConfigurationRequest,
    responses(
        (status = 202, description = "Accepted, as Azure's specification answers an update: the configuration as \
                                      changed; the agent applies it next",
         body = FluxConfiguration,
         headers(("Azure-AsyncOperation" = String, description = "Operation status URL"),
                 ("Retry-After" = u32, description = "Seconds to wait before polling the operation"))),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn patch_configuration(
    State(configurations): State<Configurations>,
    caller: Caller,
    version: ApiVersion<FluxConfigurations>,
    ArmPath(params): ArmPath<ConfigurationParams>,
    preconditions: Preconditions,
    base: BaseUrl,
    JsonBody(mut body): JsonBody,
) -> ApiResult<Response> {
    let target = resolve(&configurations, &caller, &params, Role::Contributor).await?;
    strip_read_only(&mut body, TOP_LEVEL_READ_ONLY);
    version.check_defined(&body)?;
    let mut changes = body
        .as_object_mut()
        .and_then(|b| b.remove("properties"))
        .unwrap_or_else(|| Value::Object(Default::default()));
    if !changes.is_object() {
        return Err(ApiError::invalid("properties", "properties must be an object"));
    }
    parse::<FluxConfigurationRequest>(body, "")?;
    strip_read_only(&mut changes, READ_ONLY_PROPERTIES);
    // the control plane cannot read the secrets it holds: a patch of them travels to the agent as a patch
    let secrets = SecretFields::split_patch_from(&mut changes);
    check_secrets(&secrets)?;
    let result = configurations
        .patch(&caller.subject, &target, &changes, &secrets, &preconditions)
        .await?;
    let mut response = written(&target, result, &base, version);
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

/// Reads a Flux configuration.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{fluxConfigurationName}",
    tag = "FluxConfigurations",
    operation_id = "FluxConfigurations_Get",
    params(ConfigurationParams, ApiVersionParam),
    responses(
        (status = 200, description = "The configuration", body = FluxConfiguration),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn get_configuration(
    State(state): State<AppState>,
    State(configurations): State<Configurations>,
    caller: Caller,
    version: ApiVersion<FluxConfigurations>,
    ArmPath(params): ArmPath<ConfigurationParams>,
) -> ApiResult<Response> {
    let target = resolve(&configurations, &caller, &params, Role::Reader).await?;
    let record = state
        .store
        .get_configuration(target.cluster.id, target.name.as_str())
        .await?
        .ok_or_else(|| not_found(&target))?;
    let mut headers = HeaderMap::new();
    insert_etag(&mut headers, &record.etag);
    Ok((headers, Json(render(&target.scope, target.online, record, version))).into_response())
}

/// Deletes a Flux configuration: at once with `forceDelete=true`, otherwise once the agent has removed it.
#[utoipa::path(
    delete,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{fluxConfigurationName}",
    tag = "FluxConfigurations",
    operation_id = "FluxConfigurations_Delete",
    params(ConfigurationParams, ApiVersionParam, DeleteParams),
    responses(
        (status = 200, description = "Deleted at once (forceDelete=true)"),
        (status = 202, description = "Deletion started; the agent completes it",
         headers(("Azure-AsyncOperation" = String, description = "Operation status URL"),
                 ("Retry-After" = u32, description = "Seconds to wait before polling the operation"))),
        (status = 204, description = "There was no such configuration"),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn delete_configuration(
    State(configurations): State<Configurations>,
    caller: Caller,
    version: ApiVersion<FluxConfigurations>,
    ArmPath(params): ArmPath<ConfigurationParams>,
    ArmQuery(query): ArmQuery<DeleteParams>,
    preconditions: Preconditions,
    base: BaseUrl,
) -> ApiResult<Response> {
    let force = match query.force_delete.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "forceDelete",
                format!("'{other}' is not true or false"),
            ));
        }
    };
    let target = resolve(&configurations, &caller, &params, Role::Contributor).await?;
    Ok(
        match configurations
            .delete(&caller.subject, &target, force, &preconditions)
            .await?
        {
            Deletion::Deleted => StatusCode::OK.into_response(),
            Deletion::Missing => StatusCode::NO_CONTENT.into_response(),
            Deletion::Started(operation) => {
                let url = operation_url(&base, &target.id(), &operation.id, version.version);
                let mut headers = async_operation_headers(&url);
                if let Ok(location) = HeaderValue::from_str(&url) {
                    headers.insert(header::LOCATION, location);
                }
                (StatusCode::ACCEPTED, headers).into_response()
            }
        },
    )
}

/// Lists the Flux configurations of a cluster.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations",
    tag = "FluxConfigurations",
    operation_id = "FluxConfigurations_List",
    params(ClusterPath, ApiVersionParam, ListParams, FilterParam),
    responses(
        (status = 200, description = "A page of configurations", body = Page<FluxConfiguration>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn list_configurations(
    State(state): State<AppState>,
    caller: Caller,
    version: ApiVersion<FluxConfigurations>,
    ArmPath(params): ArmPath<ClusterPath>,
    ArmQuery(list): ArmQuery<ListParams>,
    ArmQuery(filter): ArmQuery<FilterParam>,
    base: BaseUrl,
) -> ApiResult<Json<Page<Rendered<FluxConfiguration>>>> {
    let scope = ClusterScope::parse(&params)?;
    let path = format!("{}/providers/{TYPE}", scope.id());
    caller.require(Role::Reader, &path)?;
    let page = list.page()?;
    let parsed = filter.parse(FILTER_FIELDS)?;
    let cluster = state
        .store
        .get_cluster(&scope.cluster.key())
        .await?
        .ok_or_else(|| parent_not_found(&scope))?;
    let scope = scope.as_registered(&cluster.subscription, &cluster.resource_group, &cluster.name);
    let online = agent_online(cluster.last_connectivity_time, state.config.offline_after);
    let link = |token: &str| base.next_link(&path, version.version, list.top.as_deref(), token) + &filter.link_suffix();
    let Some(parsed) = parsed else {
        let records = state.store.list_configurations(cluster.id, &page).await?;
        return Ok(Json(Page::from_items(
            records,
            &page,
            |c| c.name.clone(),
            link,
            |record| render(&scope, online, record, version),
        )));
    };
    Ok(Json(
        scan(
            &page,
            &parsed,
            |batch| {
                let store = state.store.clone();
                async move { store.list_configurations(cluster.id, &batch).await }
            },
            |c| c.name.clone(),
            |record| render(&scope, online, record, version),
            link,
        )
        .await?,
    ))
}

/// What the configuration list can be filtered on.
const FILTER_FIELDS: &[Field] = &[
    Field {
        path: "name",
        matching: Matching::IgnoreCase,
    },
    Field {
        path: "properties/complianceState",
        matching: Matching::OneOf(&["Compliant", "Non-Compliant", "Pending", "Suspended", "Unknown"]),
    },
    Field {
        path: "properties/provisioningState",
        matching: Matching::OneOf(&["Succeeded", "Failed", "Canceled", "Creating", "Updating", "Deleting"]),
    },
    Field {
        path: "properties/statusFreshness",
        matching: Matching::OneOf(&["Fresh", "Stale", "Offline"]),
    },
    Field {
        path: "properties/sourceKind",
        matching: Matching::OneOf(&["GitRepository", "Bucket", "AzureBlob", "OCIRepository"]),
    },
    Field {
        path: "properties/namespace",
        matching: Matching::Exact,
    },
    Field {
        path: "properties/managedBy",
        matching: Matching::IgnoreCase,
    },
    Field {
        path: "properties/sourceSyncedCommitId",
        matching: Matching::Exact,
    },
];

/// Reads the status of a long-running operation on a configuration.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{fluxConfigurationName}/operations/{operationId}",
    tag = "FluxConfigurations",
    operation_id = "FluxConfigOperationStatus_Get",
    params(OperationParams, ApiVersionParam),
    responses(
        (status = 200, description = "The operation's status", body = OperationStatus,
         headers(("Retry-After" = u32, description = "While the operation is InProgress: seconds to wait before polling again"))),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn get_operation(
    State(state): State<AppState>,
    caller: Caller,
    _version: ApiVersion<FluxConfigurations>,
    ArmPath(params): ArmPath<OperationParams>,
) -> ApiResult<(HeaderMap, Json<OperationStatus>)> {
    let scope = ClusterScope::parse(&ClusterPath {
        subscription_id: params.subscription_id,
        resource_group_name: params.resource_group_name,
        cluster_rp: params.cluster_rp,
        cluster_resource_name: params.cluster_resource_name,
        cluster_name: params.cluster_name,
    })?;
    let name = ConfigurationName::parse(&params.flux_configuration_name)?;
    let id = scope.configuration_id(name.as_str());
    caller.require(Role::Reader, &id)?;
    let resource_key = format!("{}/{}", scope.cluster.key(), name.as_str());
    let operation = state
        .store
        .get_operation(&params.operation_id)
        .await?
        .filter(|op| op.resource_key == resource_key)
        .ok_or_else(|| ApiError::ResourceNotFound(format!("The operation '{}' was not found.", params.operation_id)))?;
    // azure-core's pollers wait as long as Retry-After says, and without it their own default (30 s for ARM)
    let headers = if operation.status == OperationState::InProgress {
        retry_after()
    } else {
        HeaderMap::new()
    };
    Ok((
        headers,
        Json(OperationStatus {
            id: format!("{id}/operations/{}", operation.id),
            name: operation.id,
            status: operation.status.as_str().to_owned(),
            start_time: operation.start_time,
            end_time: operation.end_time,
            error: operation.error,
        }),
    ))
}

/// Asks the configuration's agent to check its source again at once, rather than at its sync interval: fluxplane's
/// own action (Azure has none; `az k8s-configuration flux` cannot call it, `az rest` can). No new generation and no
/// operation: the agent receives the request with its next desired state (at once, if it is waiting) as
/// `reconcileRequestedAt`, fetches, and reports what it finds. Contributor or above; 409 while the configuration is
/// being deleted.
#[utoipa::path(
    post,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{fluxConfigurationName}/reconcile",
    tag = "FluxConfigurations",
    operation_id = "FluxConfigurations_Reconcile",
    params(ConfigurationParams, FleetApiVersionParam),
    responses(
        (status = 200, description = "Asked", body = ReconcileRequested),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn reconcile_configuration(
    State(configurations): State<Configurations>,
    caller: Caller,
    _version: ApiVersion<Fleet>,
    ArmPath(params): ArmPath<ConfigurationParams>,
) -> ApiResult<Json<ReconcileRequested>> {
    let target = resolve(&configurations, &caller, &params, Role::Contributor).await?;
    let at = configurations.request_reconcile(&caller.subject, &target).await?;
    Ok(Json(ReconcileRequested {
        reconcile_requested_at: lifecycle::reconcile_requested_text(at),
        configurations: 1,
    }))
}

/// The history of a configuration: its status transitions (in all its lives, if it was deleted and created again)
/// and the writes to it, in time order.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{fluxConfigurationName}/history",
    tag = "History",
    operation_id = "FluxConfigurations_History",
    params(ConfigurationParams, FleetApiVersionParam, HistoryParams),
    responses(
        (status = 200, description = "A page of the history", body = inline(Page<HistoryEntry>)),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn configuration_history(
    State(state): State<AppState>,
    State(configurations): State<Configurations>,
    caller: Caller,
    _version: ApiVersion<Fleet>,
    base: BaseUrl,
    ArmPath(params): ArmPath<ConfigurationParams>,
    ArmQuery(query): ArmQuery<HistoryParams>,
) -> ApiResult<Json<Page<HistoryEntry>>> {
    let target = resolve(&configurations, &caller, &params, Role::Reader).await?;
    let id = target.id();
    let subject = HistorySubject::Configuration {
        cluster_id: target.cluster.id,
        name: target.name.as_str().to_owned(),
    };
    let path = format!("{id}/history");
    history::page(state.store.as_ref(), subject, &id, false, &query, &base, &path)
        .await
        .map(Json)
}

/// What a configuration was at a past time: its latest status entry by then (its generation, states and the commit
/// its agent had reported), whichever of its lives it was; 404 when it did not exist then. Within the history's
/// retention.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{fluxConfigurationName}/asOf",
    tag = "History",
    operation_id = "FluxConfigurations_AsOf",
    params(ConfigurationParams, FleetApiVersionParam, AsOfParams),
    responses(
        (status = 200, description = "The configuration as it was", body = StatusEntry),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn configuration_as_of(
    State(state): State<AppState>,
    State(configurations): State<Configurations>,
    caller: Caller,
    _version: ApiVersion<Fleet>,
    ArmPath(params): ArmPath<ConfigurationParams>,
    ArmQuery(query): ArmQuery<AsOfParams>,
) -> ApiResult<Json<StatusEntry>> {
    let target = resolve(&configurations, &caller, &params, Role::Reader).await?;
    history::configuration_as_of(
        state.store.as_ref(),
        target.cluster.id,
        &target.id(),
        target.name.as_str(),
        &query,
        state.config.history_retention,
    )
    .await
    .map(Json)
}
