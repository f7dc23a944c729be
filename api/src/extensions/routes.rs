//! HTTP handlers of `Microsoft.KubernetesConfiguration/extensions` and their operation statuses.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::Value;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{
    Extension, ExtensionIdentity, ExtensionProperties, ExtensionPropertiesRequest, ExtensionScope, IdentityRequest,
    NOT_SERVED, PATCHABLE, READ_ONLY_PROPERTIES, ScopeCluster, TYPE, protected_settings,
};
use super::service::{Deletion, Draft, Extensions, Target, Written, not_found, resource_key};
use crate::arm::api_version::{self, Rendered};
use crate::arm::body::{parse, strip_read_only};
use crate::arm::conditional::{Preconditions, insert_etag};
use crate::arm::ids::{ClusterPath, ClusterScope, ExtensionName};
use crate::arm::paging::{BaseUrl, ListParams, Page};
use crate::arm::{ApiVersion, ArmPath, ArmQuery, JsonBody, async_operation_headers, retry_after};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::flux::model::OperationStatus;
use crate::flux::service::parent_not_found;
use crate::lifecycle::OperationState;
use crate::model::ExtensionRecord;
use crate::state::AppState;

type Versions = api_version::Extensions;

/// Ignored in a body: the read-only envelope, and `location`, which Azure's CLI sets on the extensions it creates for
/// connected clusters (`__add_identity` of `az k8s-configuration`) though an extension lives where its cluster does.
const TOP_LEVEL_READ_ONLY: &[&str] = &["id", "name", "type", "systemData", "location"];

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(get_extension, put_extension, patch_extension, delete_extension))
        .routes(routes!(list_extensions))
        .routes(routes!(get_operation))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ExtensionParams {
    subscription_id: String,
    resource_group_name: String,
    /// The cluster's resource provider.
    cluster_rp: String,
    /// The cluster's resource type.
    cluster_resource_name: String,
    cluster_name: String,
    extension_name: String,
}

impl ExtensionParams {
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
    extension_name: String,
    operation_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApiVersionParam {
    /// The API version: 2021-09-01, 2022-03-01, 2022-07-01, 2022-11-01, 2023-05-01, 2024-11-01 or 2025-03-01. An
    /// older version refuses, and does not answer, the properties it does not define.
    #[serde(rename = "api-version")]
    #[param(rename = "api-version")]
    #[allow(dead_code)]
    api_version: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Delete the extension resource at once instead of waiting for the agent to uninstall it.
    #[serde(rename = "forceDelete")]
    #[param(rename = "forceDelete", value_type = Option<bool>)]
    force_delete: Option<String>,
}

/// The body of an extension PUT besides `properties`: the identity, and nothing else.
#[derive(Debug, serde::Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ExtensionRequest {
    #[serde(default)]
    #[allow(dead_code)]
    properties: Option<ExtensionPropertiesRequest>,
    #[serde(default)]
    #[allow(dead_code)]
    identity: Option<IdentityRequest>,
}

async fn resolve(extensions: &Extensions, caller: &Caller, params: &ExtensionParams, role: Role) -> ApiResult<Target> {
    let scope = ClusterScope::parse(&params.cluster())?;
    let name = ExtensionName::parse(&params.extension_name)?;
    caller.require(role, &scope.extension_id(name.as_str()))?;
    extensions.target(scope, name).await
}

/// The extension as `version` answers it: never its protected settings.
fn render(scope: &ClusterScope, record: ExtensionRecord, version: ApiVersion<Versions>) -> Rendered<Extension> {
    let error_info = match record.failure {
        Some(message) => Some(crate::error::ErrorDetail::new(
            crate::lifecycle::failure::EXTENSION_FAILED,
            message,
        )),
        None => record.observed.error,
    };
    version.render(Extension {
        id: scope.extension_id(&record.name),
        name: record.name,
        type_: TYPE.to_owned(),
        system_data: record.system_data,
        identity: record.spec.identity.map(|type_| ExtensionIdentity { type_ }),
        properties: ExtensionProperties {
            extension_type: record.spec.extension_type,
            auto_upgrade_minor_version: record.spec.auto_upgrade_minor_version,
            release_train: record.spec.release_train,
            version: record.spec.version,
            scope: ExtensionScope {
                cluster: ScopeCluster {
                    release_namespace: Some(record.spec.release_namespace),
                },
            },
            configuration_settings: record.spec.configuration_settings,
            provisioning_state: record.provisioning_state,
            statuses: record.observed.statuses,
            current_version: record.observed.current_version,
            error_info,
            is_system_extension: false,
            custom_location_settings: None,
            package_uri: None,
        },
    })
}

fn operation_url(base: &BaseUrl, id: &str, operation: &str, api_version: &str) -> String {
    format!("{}{id}/operations/{operation}?api-version={api_version}", base.0)
}

fn written(target: &Target, written: Written, base: &BaseUrl, version: ApiVersion<Versions>) -> Response {
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let url = operation_url(base, &target.id(), &written.operation.id, version.version);
    let mut headers = async_operation_headers(&url);
    insert_etag(&mut headers, &written.record.etag);
    (status, headers, Json(render(&target.scope, written.record, version))).into_response()
}

/// Splits a body into its properties (read-only ones dropped), identity and protected settings, refusing anything
/// else; `allowed`, if given, lists the only properties accepted.
fn split(mut body: Value, version: ApiVersion<Versions>, allowed: Option<&[&str]>) -> ApiResult<(Value, Draft)> {
    strip_read_only(&mut body, TOP_LEVEL_READ_ONLY);
    version.check_defined(&body)?;
    let object = body
        .as_object_mut()
        .ok_or_else(|| ApiError::invalid("", "the body must be a JSON object"))?;
    let mut properties = match object.remove("properties") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(properties) if properties.is_object() => properties,
        Some(_) => return Err(ApiError::invalid("properties", "properties must be an object")),
    };
    let identity = match object.remove("identity") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(mut identity) => {
            // what Azure answers of an identity, sent back with the rest
            strip_read_only(&mut identity, &["principalId", "tenantId"]);
            Some(Some(parse::<IdentityRequest>(identity, "identity")?))
        }
    };
    parse::<ExtensionRequest>(body, "")?;
    strip_read_only(&mut properties, READ_ONLY_PROPERTIES);
    let protected = match properties
        .as_object_mut()
        .and_then(|p| p.remove("configurationProtectedSettings"))
    {
        None | Some(Value::Null) => None,
        // Azure's CLI sends an empty set when none are given: it asks for none, and seals nothing
        Some(settings) => Some(protected_settings(settings)?).filter(|settings| !settings.is_empty()),
    };
    for (name, why) in NOT_SERVED {
        if properties.get(*name).is_some_and(|value| !value.is_null()) {
            return Err(ApiError::invalid(
                format!("properties.{name}"),
                format!("properties.{name} is not supported: {why}"),
            ));
        }
        if let Some(map) = properties.as_object_mut() {
            map.remove(*name);
        }
    }
    if let Some(allowed) = allowed
        && let Some(key) = properties
            .as_object()
            .into_iter()
            .flat_map(|p| p.keys())
            .find(|key| !allowed.contains(&key.as_str()))
    {
        return Err(ApiError::invalid(
            format!("properties.{key}"),
            format!(
                "properties.{key} cannot be changed by PATCH (it may change {}); use PUT",
                allowed.join(", ")
            ),
        ));
    }
    Ok((
        properties,
        Draft {
            properties: ExtensionPropertiesRequest::default(),
            identity,
            protected,
        },
    ))
}

/// Creates an extension (only `microsoft.flux`) or replaces it as a whole, protected settings included.
#[utoipa::path(
    put,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/extensions/{extensionName}",
    tag = "Extensions",
    operation_id = "Extensions_Create",
    params(ExtensionParams, ApiVersionParam),
    request_body = ExtensionRequest,
    responses(
        (status = 200, description = "Updated; the agent installs it next", body = Extension,
         headers(("Azure-AsyncOperation" = String, description = "Operation status URL"),
                 ("Retry-After" = u32, description = "Seconds to wait before polling the operation"))),
        (status = 201, description = "Created; the agent installs it next", body = Extension,
         headers(("Azure-AsyncOperation" = String, description = "Operation status URL"),
                 ("Retry-After" = u32, description = "Seconds to wait before polling the operation"))),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn put_extension(
    State(extensions): State<Extensions>,
    caller: Caller,
    version: ApiVersion<Versions>,
    ArmPath(params): ArmPath<ExtensionParams>,
    preconditions: Preconditions,
    base: BaseUrl,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let target = resolve(&extensions, &caller, &params, Role::Contributor).await?;
    let (properties, mut draft) = split(body, version, None)?;
    draft.properties = parse(properties, "properties")?;
    let result = extensions.put(&caller.subject, &target, &draft, &preconditions).await?;
    Ok(written(&target, result, &base, version))
}

/// Changes what Azure's `patchExtension` may change, by JSON merge (`null` removes a setting); protected settings
/// given replace the whole set.
#[utoipa::path(
    patch,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/extensions/{extensionName}",
    tag = "Extensions",
    operation_id = "Extensions_Update",
    params(ExtensionParams, ApiVersionParam),
    request_body = ExtensionRequest,
    responses(
        (status = 202, description = "Accepted, as Azure's specification answers an update: the extension as \
                                      changed; the agent installs it next",
         body = Extension,
         headers(("Azure-AsyncOperation" = String, description = "Operation status URL"),
                 ("Retry-After" = u32, description = "Seconds to wait before polling the operation"))),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn patch_extension(
    State(extensions): State<Extensions>,
    caller: Caller,
    version: ApiVersion<Versions>,
    ArmPath(params): ArmPath<ExtensionParams>,
    preconditions: Preconditions,
    base: BaseUrl,
    JsonBody(body): JsonBody,
) -> ApiResult<Response> {
    let target = resolve(&extensions, &caller, &params, Role::Contributor).await?;
    let (changes, draft) = split(body, version, Some(PATCHABLE))?;
    let result = extensions
        .patch(&caller.subject, &target, &changes, &draft, &preconditions)
        .await?;
    let mut response = written(&target, result, &base, version);
    *response.status_mut() = StatusCode::ACCEPTED;
    Ok(response)
}

/// Reads an extension.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/extensions/{extensionName}",
    tag = "Extensions",
    operation_id = "Extensions_Get",
    params(ExtensionParams, ApiVersionParam),
    responses(
        (status = 200, description = "The extension", body = Extension),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn get_extension(
    State(state): State<AppState>,
    State(extensions): State<Extensions>,
    caller: Caller,
    version: ApiVersion<Versions>,
    ArmPath(params): ArmPath<ExtensionParams>,
) -> ApiResult<Response> {
    let target = resolve(&extensions, &caller, &params, Role::Reader).await?;
    let record = state
        .store
        .get_extension(target.cluster.id, target.name.as_str())
        .await?
        .ok_or_else(|| not_found(&target))?;
    let mut headers = HeaderMap::new();
    insert_etag(&mut headers, &record.etag);
    Ok((headers, Json(render(&target.scope, record, version))).into_response())
}

/// Deletes an extension: at once with `forceDelete=true`, otherwise once the agent has uninstalled it. The
/// cluster's Flux configurations stay; new writes of them wait until the Flux extension is installed again.
#[utoipa::path(
    delete,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/extensions/{extensionName}",
    tag = "Extensions",
    operation_id = "Extensions_Delete",
    params(ExtensionParams, ApiVersionParam, DeleteParams),
    responses(
        (status = 200, description = "Deleted at once (forceDelete=true)"),
        (status = 202, description = "Deletion started; the agent completes it",
         headers(("Azure-AsyncOperation" = String, description = "Operation status URL"),
                 ("Retry-After" = u32, description = "Seconds to wait before polling the operation"))),
        (status = 204, description = "There was no such extension"),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn delete_extension(
    State(extensions): State<Extensions>,
    caller: Caller,
    version: ApiVersion<Versions>,
    ArmPath(params): ArmPath<ExtensionParams>,
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
    let target = resolve(&extensions, &caller, &params, Role::Contributor).await?;
    Ok(
        match extensions
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

/// Lists the extensions of a cluster.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/extensions",
    tag = "Extensions",
    operation_id = "Extensions_List",
    params(ClusterPath, ApiVersionParam, ListParams),
    responses(
        (status = 200, description = "A page of extensions", body = Page<Extension>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn list_extensions(
    State(state): State<AppState>,
    caller: Caller,
    version: ApiVersion<Versions>,
    ArmPath(params): ArmPath<ClusterPath>,
    ArmQuery(list): ArmQuery<ListParams>,
    base: BaseUrl,
) -> ApiResult<Json<Page<Rendered<Extension>>>> {
    let scope = ClusterScope::parse(&params)?;
    let path = format!("{}/providers/{TYPE}", scope.id());
    caller.require(Role::Reader, &path)?;
    let page = list.page()?;
    let cluster = state
        .store
        .get_cluster(&scope.cluster.key())
        .await?
        .ok_or_else(|| parent_not_found(&scope))?;
    let scope = scope.as_registered(&cluster.subscription, &cluster.resource_group, &cluster.name);
    let records = state.store.list_extensions(cluster.id, &page).await?;
    Ok(Json(Page::from_items(
        records,
        &page,
        |e| e.name.clone(),
        |token: &str| base.next_link(&path, version.version, list.top.as_deref(), token),
        |record| render(&scope, record, version),
    )))
}

/// Reads the status of a long-running operation on an extension.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/extensions/{extensionName}/operations/{operationId}",
    tag = "Extensions",
    operation_id = "OperationStatus_Get",
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
    _version: ApiVersion<Versions>,
    ArmPath(params): ArmPath<OperationParams>,
) -> ApiResult<(HeaderMap, Json<OperationStatus>)> {
    let scope = ClusterScope::parse(&ClusterPath {
        subscription_id: params.subscription_id,
        resource_group_name: params.resource_group_name,
        cluster_rp: params.cluster_rp,
        cluster_resource_name: params.cluster_resource_name,
        cluster_name: params.cluster_name,
    })?;
    let name = ExtensionName::parse(&params.extension_name)?;
    let id = scope.extension_id(name.as_str());
    caller.require(Role::Reader, &id)?;
    let key = resource_key(&scope.cluster.key(), name.as_str());
    let operation = state
        .store
        .get_operation(&params.operation_id)
        .await?
        .filter(|op| op.resource_key == key)
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
