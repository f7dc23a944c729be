//! `Fluxplane.Fleet/alertRules`: which events are sent to which receivers, narrowed by cluster group, tags, policy
//! assignment or configuration name, with a severity and a minimum interval per subject. A Contributor writes one
//! (it routes events only to receivers an Owner set up, which the writer must be able to read); a Reader reads it.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::RuleSpec;
use super::rules_service::{Rules, TYPE_NAME};
use crate::arm::api_version::Fleet;
use crate::arm::body::{parse, strip_read_only};
use crate::arm::conditional::{Preconditions, insert_etag};
use crate::arm::paging::{BaseUrl, ListParams, Page, list_scopes};
use crate::arm::params::{FleetApiVersionParam, ResourceGroupScopePath, SubscriptionScopePath, at_both_scopes};
use crate::arm::scope::{FleetScope, parse_name};
use crate::arm::system_data::SystemData;
use crate::arm::{ApiVersion, ArmQuery, JsonBody};
use crate::auth::{Caller, Role, readable_scopes};
use crate::error::{ApiResult, ErrorResponse};
use crate::model::AlertRuleRecord;
use crate::state::AppState;

const TYPE: &str = "Fluxplane.Fleet/alertRules";

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

/// An alert rule as the API answers it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertRule {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub system_data: SystemData,
    pub properties: AlertRuleProperties,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertRuleProperties {
    #[serde(flatten)]
    #[schema(schema_with = crate::arm::schema::open_schema::<RuleSpec>)]
    pub spec: RuleSpec,
    pub provisioning_state: String,
}

/// The body of an alert rule PUT.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertRuleRequest {
    properties: RuleSpec,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct SubscriptionRulePath {
    subscription_id: String,
    alert_rule_name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ResourceGroupRulePath {
    subscription_id: String,
    resource_group_name: String,
    alert_rule_name: String,
}

impl SubscriptionRulePath {
    fn target(&self) -> ApiResult<(FleetScope, String)> {
        Ok((
            FleetScope::parse(&self.subscription_id, None)?,
            parse_name("alertRuleName", &self.alert_rule_name)?,
        ))
    }
}

impl ResourceGroupRulePath {
    fn target(&self) -> ApiResult<(FleetScope, String)> {
        Ok((
            FleetScope::parse(&self.subscription_id, Some(&self.resource_group_name))?,
            parse_name("alertRuleName", &self.alert_rule_name)?,
        ))
    }
}

fn render(record: AlertRuleRecord) -> AlertRule {
    AlertRule {
        id: record.arm_id(),
        name: record.name,
        type_: TYPE.to_owned(),
        system_data: record.system_data,
        properties: AlertRuleProperties {
            spec: record.spec,
            provisioning_state: "Succeeded".to_owned(),
        },
    }
}

fn respond(status: StatusCode, record: AlertRuleRecord) -> Response {
    let mut headers = HeaderMap::new();
    insert_etag(&mut headers, &record.etag);
    (status, headers, Json(render(record))).into_response()
}

async fn get(state: &AppState, caller: &Caller, scope: FleetScope, name: String) -> ApiResult<Response> {
    caller.require(Role::Reader, &scope.resource_id(TYPE_NAME, &name))?;
    let record = state
        .store
        .get_alert_rule(&scope.key(&name))
        .await?
        .ok_or_else(|| scope.not_found(TYPE, &name))?;
    Ok(respond(StatusCode::OK, record))
}

async fn put(
    rules: &Rules,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    preconditions: &Preconditions,
    mut body: Value,
) -> ApiResult<Response> {
    caller.require(Role::Contributor, &scope.resource_id(TYPE_NAME, &name))?;
    strip_read_only(&mut body, &["id", "name", "type", "systemData"]);
    if let Some(properties) = body.get_mut("properties") {
        strip_read_only(properties, &["provisioningState"]);
    }
    let request: AlertRuleRequest = parse(body, "")?;
    // a rule sends only to receivers its writer may see (an id that is none is the service's 400)
    for id in &request.properties.receiver_ids {
        if let Some(Ok(_)) = FleetScope::parse_resource_id(id, super::receivers_service::TYPE_NAME) {
            caller.require(Role::Reader, id)?;
        }
    }
    let (record, created) = rules
        .put(&caller.subject, &scope, &name, &request.properties, preconditions)
        .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok(respond(status, record))
}

async fn delete(rules: &Rules, caller: &Caller, scope: FleetScope, name: String) -> ApiResult<StatusCode> {
    caller.require(Role::Contributor, &scope.resource_id(TYPE_NAME, &name))?;
    Ok(if rules.delete(&scope, &name).await? {
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
) -> ApiResult<Json<Page<AlertRule>>> {
    let scopes = readable_scopes(caller, &scope)?;
    let page = params.page()?;
    let records = list_scopes(scopes, &page, |scope, page| async move {
        state.store.list_alert_rules(&scope, &page).await
    })
    .await?;
    let path = format!("{}/providers/{TYPE}", scope.id());
    Ok(Json(Page::from_items(
        records,
        &page,
        |r| r.key.clone(),
        |token| base.next_link(&path, api_version, params.top.as_deref(), token),
        render,
    )))
}

at_both_scopes! {
    get,
    tag = "AlertRules",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "The rule", body = AlertRule),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Reads an alert rule of a subscription.
    get_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/alertRules/{alertRuleName}",
        "AlertRules_GetAtSubscription",
        SubscriptionRulePath;
    /// Reads an alert rule of a resource group.
    get_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/alertRules/{alertRuleName}",
        "AlertRules_Get",
        ResourceGroupRulePath;
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
    tag = "AlertRules",
    params(FleetApiVersionParam),
    request_body = AlertRuleRequest,
    responses(
        (status = 200, description = "Replaced", body = AlertRule),
        (status = 201, description = "Created", body = AlertRule),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Creates or replaces an alert rule of a subscription: it sees the events of the whole subscription.
    put_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/alertRules/{alertRuleName}",
        "AlertRules_CreateOrUpdateAtSubscription",
        SubscriptionRulePath;
    /// Creates or replaces an alert rule of a resource group: it sees the events of that group's clusters and
    /// assignments only.
    put_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/alertRules/{alertRuleName}",
        "AlertRules_CreateOrUpdate",
        ResourceGroupRulePath;
    |path| (
        State(rules): State<Rules>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path (
        preconditions: Preconditions,
        JsonBody(body): JsonBody,
    ) -> ApiResult<Response> {
        let (scope, name) = path.target()?;
        put(&rules, &caller, scope, name, &preconditions, body).await
    }
}

at_both_scopes! {
    delete,
    tag = "AlertRules",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "Deleted"),
        (status = 204, description = "There was no such rule"),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Deletes an alert rule of a subscription, and what its minimum interval held back.
    delete_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/alertRules/{alertRuleName}",
        "AlertRules_DeleteAtSubscription",
        SubscriptionRulePath;
    /// Deletes an alert rule of a resource group, and what its minimum interval held back.
    delete_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/alertRules/{alertRuleName}",
        "AlertRules_Delete",
        ResourceGroupRulePath;
    |path| (
        State(rules): State<Rules>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path () -> ApiResult<StatusCode> {
        let (scope, name) = path.target()?;
        delete(&rules, &caller, scope, name).await
    }
}

at_both_scopes! {
    get,
    tag = "AlertRules",
    params(FleetApiVersionParam, ListParams),
    responses(
        (status = 200, description = "A page of rules", body = Page<AlertRule>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Lists the alert rules of a subscription, those of its resource groups included.
    list_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/alertRules",
        "AlertRules_ListBySubscription",
        SubscriptionScopePath;
    /// Lists the alert rules of a resource group.
    list_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/alertRules",
        "AlertRules_ListByResourceGroup",
        ResourceGroupScopePath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        version: ApiVersion<Fleet>,
    ) path (
        ArmQuery(params): ArmQuery<ListParams>,
        base: BaseUrl,
    ) -> ApiResult<Json<Page<AlertRule>>> {
        let scope = path.fleet_scope()?;
        list(&state, &caller, scope, &params, &base, version.version).await
    }
}
