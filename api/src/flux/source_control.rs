//! `sourceControlConfigurations`, the Flux v1 configurations Azure retired in favour of fluxConfigurations. Azure's
//! tools still look for them (`az k8s-configuration flux create` lists them first, to refuse a cluster that holds
//! both kinds), so a registered cluster answers that it has none: an empty list, a 404 per name, and any write
//! refused with a pointer to fluxConfigurations.

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::service::Configurations;
use crate::arm::api_version::SourceControlConfigurations;
use crate::arm::ids::{ClusterPath, ClusterScope};
use crate::arm::{ApiVersion, ArmPath};
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::state::AppState;
use axum::extract::State;

const TYPE: &str = "Microsoft.KubernetesConfiguration/sourceControlConfigurations";

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_source_control_configurations))
        .routes(routes!(
            get_source_control_configuration,
            put_source_control_configuration,
            delete_source_control_configuration
        ))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
struct ItemParams {
    subscription_id: String,
    resource_group_name: String,
    cluster_rp: String,
    cluster_resource_name: String,
    cluster_name: String,
    source_control_configuration_name: String,
}

impl ItemParams {
    fn cluster(&self) -> ApiResult<ClusterScope> {
        ClusterScope::parse(&ClusterPath {
            subscription_id: self.subscription_id.clone(),
            resource_group_name: self.resource_group_name.clone(),
            cluster_rp: self.cluster_rp.clone(),
            cluster_resource_name: self.cluster_resource_name.clone(),
            cluster_name: self.cluster_name.clone(),
        })
    }

    /// The cluster, registered, once the caller holds `role` on the item.
    async fn resolve(&self, configurations: &Configurations, caller: &Caller, role: Role) -> ApiResult<ClusterScope> {
        let scope = self.cluster()?;
        let id = format!(
            "{}/providers/{TYPE}/{}",
            scope.id(),
            self.source_control_configuration_name
        );
        caller.require(role, &id)?;
        configurations.cluster(&scope).await?;
        Ok(scope)
    }
}

/// The api-version of a Flux v1 call.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct SourceControlApiVersionParam {
    /// One of 2021-03-01, 2022-03-01, 2022-07-01, 2022-11-01, 2023-05-01.
    #[serde(rename = "api-version")]
    #[param(rename = "api-version")]
    #[allow(dead_code)]
    api_version: String,
}

/// An empty list: Flux v1 configurations are retired.
#[derive(Debug, Serialize, ToSchema)]
struct SourceControlConfigurationList {
    /// Always empty.
    value: Vec<serde_json::Value>,
}

fn retired(what: &str) -> ApiError {
    ApiError::Retired(format!(
        "{what}: sourceControlConfigurations (Flux v1) are retired; use \
         Microsoft.KubernetesConfiguration/fluxConfigurations (Flux v2) instead"
    ))
}

/// Lists a cluster's Flux v1 configurations: there are none.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/sourceControlConfigurations",
    tag = "SourceControlConfigurations",
    operation_id = "SourceControlConfigurations_List",
    params(ClusterPath, SourceControlApiVersionParam),
    responses(
        (status = 200, description = "No configurations", body = SourceControlConfigurationList),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn list_source_control_configurations(
    State(configurations): State<Configurations>,
    caller: Caller,
    _version: ApiVersion<SourceControlConfigurations>,
    ArmPath(params): ArmPath<ClusterPath>,
) -> ApiResult<Json<SourceControlConfigurationList>> {
    let scope = ClusterScope::parse(&params)?;
    caller.require(Role::Reader, &format!("{}/providers/{TYPE}", scope.id()))?;
    configurations.cluster(&scope).await?;
    Ok(Json(SourceControlConfigurationList { value: Vec::new() }))
}

/// Reads a Flux v1 configuration: there is none.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/sourceControlConfigurations/{sourceControlConfigurationName}",
    tag = "SourceControlConfigurations",
    operation_id = "SourceControlConfigurations_Get",
    params(ItemParams, SourceControlApiVersionParam),
    responses(
        (status = "default", description = "Always ResourceNotFound (404), or another error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn get_source_control_configuration(
    State(configurations): State<Configurations>,
    caller: Caller,
    _version: ApiVersion<SourceControlConfigurations>,
    ArmPath(params): ArmPath<ItemParams>,
) -> ApiResult<Json<()>> {
    let scope = params.resolve(&configurations, &caller, Role::Reader).await?;
    Err(ApiError::ResourceNotFound(format!(
        "The sourceControlConfiguration '{}' was not found on cluster '{}': Flux v1 configurations are retired; \
         see its fluxConfigurations.",
        params.source_control_configuration_name,
        scope.id()
    )))
}

/// Refuses to create a Flux v1 configuration.
#[utoipa::path(
    put,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/sourceControlConfigurations/{sourceControlConfigurationName}",
    tag = "SourceControlConfigurations",
    operation_id = "SourceControlConfigurations_CreateOrUpdate",
    params(ItemParams, SourceControlApiVersionParam),
    responses(
        (status = "default", description = "Always FluxV1Retired (400), or another error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn put_source_control_configuration(
    State(configurations): State<Configurations>,
    caller: Caller,
    _version: ApiVersion<SourceControlConfigurations>,
    ArmPath(params): ArmPath<ItemParams>,
) -> ApiResult<Json<()>> {
    params.resolve(&configurations, &caller, Role::Contributor).await?;
    Err(retired("cannot create or update it"))
}

/// Refuses to delete a Flux v1 configuration (there is none to delete).
#[utoipa::path(
    delete,
    path = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/sourceControlConfigurations/{sourceControlConfigurationName}",
    tag = "SourceControlConfigurations",
    operation_id = "SourceControlConfigurations_Delete",
    params(ItemParams, SourceControlApiVersionParam),
    responses(
        (status = "default", description = "Always FluxV1Retired (400), or another error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn delete_source_control_configuration(
    State(configurations): State<Configurations>,
    caller: Caller,
    _version: ApiVersion<SourceControlConfigurations>,
    ArmPath(params): ArmPath<ItemParams>,
) -> ApiResult<Json<()>> {
    params.resolve(&configurations, &caller, Role::Contributor).await?;
    Err(retired("there is none to delete"))
}
