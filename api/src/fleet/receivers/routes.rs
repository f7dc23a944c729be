//! HTTP handlers of `Fluxplane.Fleet/gitReceivers`, at subscription and resource-group scope. Reading one needs the
//! Reader role, writing one Contributor (what it does, a Contributor may do by hand: ask for a reconcile). Its
//! secret is write-only: split off the body before anything is parsed, so that no error message quotes it, and
//! never answered.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{GitReceiverSpec, HostType, LastPush};
use super::service::{GitReceivers, TYPE, TYPE_NAME};
use crate::arm::api_version::Fleet;
use crate::arm::body::{parse, strip_read_only};
use crate::arm::conditional::{Preconditions, insert_etag};
use crate::arm::paging::list_scopes;
use crate::arm::paging::{BaseUrl, ListParams, Page};
use crate::arm::params::at_both_scopes;
use crate::arm::params::{FleetApiVersionParam, ResourceGroupScopePath, SubscriptionScopePath};
use crate::arm::scope::{FleetScope, parse_name};
use crate::arm::system_data::SystemData;
use crate::arm::{ApiVersion, ArmQuery, JsonBody};
use crate::auth::readable_scopes;
use crate::auth::{Caller, Role};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::model::GitReceiverRecord;
use crate::state::AppState;

/// Where the webhooks are served: the receiver's random hook id follows.
pub const WEBHOOK_PATH: &str = "/webhooks/git";

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
}

/// A Git receiver as the API answers it: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitReceiver {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub system_data: SystemData,
    pub properties: GitReceiverProperties,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitReceiverProperties {
    #[serde(flatten)]
    pub spec: GitReceiverSpec,
    /// The URL to give the Git host as its webhook's payload URL. Its last segment is random; each delivery is
    /// authenticated with the receiver's secret.
    pub webhook_url: String,
    /// What the last verified push did; absent until one came.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_push: Option<LastPush>,
    pub provisioning_state: String,
}

/// The body of a Git receiver PUT.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GitReceiverRequest {
    properties: GitReceiverRequestProperties,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GitReceiverRequestProperties {
    /// The repository whose pushes the receiver hears of: any of its URLs.
    repository_url: String,
    host_type: HostType,
    /// Write-only, never answered: what the Git host signs its deliveries with (GitHub, Bitbucket, Generic), sends
    /// as its token (GitLab) or as its basic authentication password (Azure DevOps); 16 to 256 printable
    /// characters. Required to create a receiver; a PUT without it keeps the one it has.
    #[serde(default, skip_serializing)]
    #[schema(write_only)]
    // split off the body before it is parsed (`split_secret`): here for the schema only
    #[allow(dead_code)]
    secret: Option<String>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct SubscriptionReceiverPath {
    subscription_id: String,
    git_receiver_name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ResourceGroupReceiverPath {
    subscription_id: String,
    resource_group_name: String,
    git_receiver_name: String,
}

impl SubscriptionReceiverPath {
    fn target(&self) -> ApiResult<(FleetScope, String)> {
        Ok((
            FleetScope::parse(&self.subscription_id, None)?,
            parse_name("gitReceiverName", &self.git_receiver_name)?,
        ))
    }
}

impl ResourceGroupReceiverPath {
    fn target(&self) -> ApiResult<(FleetScope, String)> {
        Ok((
            FleetScope::parse(&self.subscription_id, Some(&self.resource_group_name))?,
            parse_name("gitReceiverName", &self.git_receiver_name)?,
        ))
    }
}

fn render(base: &BaseUrl, record: GitReceiverRecord) -> ApiResult<GitReceiver> {
    let scope = record.scope()?;
    Ok(GitReceiver {
        id: scope.resource_id(TYPE_NAME, &record.name),
        name: record.name,
        type_: TYPE.to_owned(),
        system_data: record.system_data,
        properties: GitReceiverProperties {
            spec: record.spec,
            webhook_url: format!("{}{WEBHOOK_PATH}/{}", base.0, record.hook_id),
            last_push: record.last_push,
            provisioning_state: "Succeeded".to_owned(),
        },
    })
}

fn respond(base: &BaseUrl, status: StatusCode, record: GitReceiverRecord) -> ApiResult<Response> {
    let mut headers = HeaderMap::new();
    insert_etag(&mut headers, &record.etag);
    Ok((status, headers, Json(render(base, record)?)).into_response())
}

async fn get(
    state: &AppState,
    caller: &Caller,
    base: &BaseUrl,
    scope: FleetScope,
    name: String,
) -> ApiResult<Response> {
    caller.require(Role::Reader, &scope.resource_id(TYPE_NAME, &name))?;
    let record = state
        .store
        .get_git_receiver(&scope.key(&name))
        .await?
        .ok_or_else(|| scope.not_found(TYPE, &name))?;
    respond(base, StatusCode::OK, record)
}

/// Takes the secret out of a PUT's body before anything else reads it: a string or nothing, and an error that
/// names the field without quoting it.
fn split_secret(body: &mut Value) -> ApiResult<Option<String>> {
    let Some(properties) = body.get_mut("properties").and_then(Value::as_object_mut) else {
        return Ok(None);
    };
    match properties.remove("secret") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(secret)) => Ok(Some(secret)),
        Some(_) => Err(ApiError::invalid(
            "properties.secret",
            "properties.secret must be a string",
        )),
    }
}

async fn put(
    receivers: &GitReceivers,
    caller: &Caller,
    base: &BaseUrl,
    scope: FleetScope,
    name: String,
    preconditions: &Preconditions,
    mut body: Value,
) -> ApiResult<Response> {
    caller.require(Role::Contributor, &scope.resource_id(TYPE_NAME, &name))?;
    strip_read_only(&mut body, &["id", "name", "type", "systemData"]);
    let secret = split_secret(&mut body)?;
    if let Some(properties) = body.get_mut("properties") {
        strip_read_only(properties, &["webhookUrl", "lastPush", "provisioningState"]);
    }
    let request: GitReceiverRequest = parse(body, "")?;
    let spec = GitReceiverSpec {
        repository_url: request.properties.repository_url,
        host_type: request.properties.host_type,
    };
    let (record, created) = receivers
        .put(&caller.subject, &scope, &name, &spec, secret.as_deref(), preconditions)
        .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    respond(base, status, record)
}

async fn delete(receivers: &GitReceivers, caller: &Caller, scope: FleetScope, name: String) -> ApiResult<StatusCode> {
    caller.require(Role::Contributor, &scope.resource_id(TYPE_NAME, &name))?;
    Ok(if receivers.delete(&scope, &name).await? {
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
) -> ApiResult<Json<Page<GitReceiver>>> {
    let scopes = readable_scopes(caller, &scope)?;
    let page = params.page()?;
    let records = list_scopes(scopes, &page, |scope, page| async move {
        state.store.list_git_receivers(&scope, &page).await
    })
    .await?;
    let path = format!("{}/providers/{TYPE}", scope.id());
    let rendered = records
        .into_iter()
        .map(|record| Ok((record.key.clone(), render(base, record)?)))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(Json(Page::from_items(
        rendered,
        &page,
        |(key, _)| key.clone(),
        |token| base.next_link(&path, api_version, params.top.as_deref(), token),
        |(_, receiver)| receiver,
    )))
}

at_both_scopes! {
    get,
    tag = "GitReceivers",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "The receiver (never its secret)", body = GitReceiver),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Reads a Git receiver of a subscription.
    get_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/gitReceivers/{gitReceiverName}",
        "GitReceivers_GetAtSubscription",
        SubscriptionReceiverPath;
    /// Reads a Git receiver of a resource group.
    get_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/gitReceivers/{gitReceiverName}",
        "GitReceivers_Get",
        ResourceGroupReceiverPath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
        base: BaseUrl,
    ) path () -> ApiResult<Response> {
        let (scope, name) = path.target()?;
        get(&state, &caller, &base, scope, name).await
    }
}

at_both_scopes! {
    put,
    tag = "GitReceivers",
    params(FleetApiVersionParam),
    request_body = GitReceiverRequest,
    responses(
        (status = 200, description = "Replaced", body = GitReceiver),
        (status = 201, description = "Created", body = GitReceiver),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Creates or replaces a Git receiver of a subscription: its pushes concern the configurations of every cluster
    /// of the subscription.
    put_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/gitReceivers/{gitReceiverName}",
        "GitReceivers_CreateOrUpdateAtSubscription",
        SubscriptionReceiverPath;
    /// Creates or replaces a Git receiver of a resource group: its pushes concern the configurations of the
    /// clusters of that group only.
    put_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/gitReceivers/{gitReceiverName}",
        "GitReceivers_CreateOrUpdate",
        ResourceGroupReceiverPath;
    |path| (
        State(receivers): State<GitReceivers>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
        base: BaseUrl,
    ) path (
        preconditions: Preconditions,
        JsonBody(body): JsonBody,
    ) -> ApiResult<Response> {
        let (scope, name) = path.target()?;
        put(&receivers, &caller, &base, scope, name, &preconditions, body).await
    }
}

at_both_scopes! {
    delete,
    tag = "GitReceivers",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "Deleted"),
        (status = 204, description = "There was no such receiver"),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Deletes a Git receiver of a subscription (200), or finds nothing to delete (204); its webhook answers 404
    /// from then on.
    delete_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/gitReceivers/{gitReceiverName}",
        "GitReceivers_DeleteAtSubscription",
        SubscriptionReceiverPath;
    /// Deletes a Git receiver of a resource group (200), or finds nothing to delete (204); its webhook answers 404
    /// from then on.
    delete_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/gitReceivers/{gitReceiverName}",
        "GitReceivers_Delete",
        ResourceGroupReceiverPath;
    |path| (
        State(receivers): State<GitReceivers>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path () -> ApiResult<StatusCode> {
        let (scope, name) = path.target()?;
        delete(&receivers, &caller, scope, name).await
    }
}

at_both_scopes! {
    get,
    tag = "GitReceivers",
    params(FleetApiVersionParam, ListParams),
    responses(
        (status = 200, description = "A page of receivers", body = Page<GitReceiver>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Lists the Git receivers of a subscription, those of its resource groups included (a caller who may read only
    /// some resource groups sees theirs, as ARM lists).
    list_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/gitReceivers",
        "GitReceivers_ListBySubscription",
        SubscriptionScopePath;
    /// Lists the Git receivers of a resource group.
    list_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/gitReceivers",
        "GitReceivers_ListByResourceGroup",
        ResourceGroupScopePath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        version: ApiVersion<Fleet>,
    ) path (
        ArmQuery(params): ArmQuery<ListParams>,
        base: BaseUrl,
    ) -> ApiResult<Json<Page<GitReceiver>>> {
        let scope = path.fleet_scope()?;
        list(&state, &caller, scope, &params, &base, version.version).await
    }
}
