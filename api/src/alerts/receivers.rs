//! `Fluxplane.Fleet/alertReceivers`: where alert messages go (a signed webhook, Slack, Microsoft Teams), at a
//! subscription or a resource group. The URL and the signing key are write-only: a read shows the URL's host and
//! whether a key is set, and the delivery state (backlog, last success and failure). Writing one is the Owner's
//! (it decides where the fleet's events leave the control plane, with credentials of its own); a Contributor may
//! send it a test message; a Reader reads it and its delivery log.

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{
    DEFAULT_RATE, Digest, MAX_RATE, MIN_RATE, ReceiverKind, ReceiverUrl, RuleRef, Severity, SigningKey,
};
use super::receivers_service::{ReceiverWrite, Receivers, TYPE_NAME};
use crate::arm::api_version::Fleet;
use crate::arm::body::{parse, strip_read_only};
use crate::arm::conditional::{Preconditions, insert_etag};
use crate::arm::paging::{BaseUrl, ListParams, Page, list_scopes};
use crate::arm::params::{FleetApiVersionParam, ResourceGroupScopePath, SubscriptionScopePath, at_both_scopes};
use crate::arm::scope::{FleetScope, parse_name};
use crate::arm::system_data::SystemData;
use crate::arm::{ApiVersion, ArmQuery, JsonBody};
use crate::auth::{Caller, Role, readable_scopes};
use crate::error::{ApiError, ApiResult, ErrorResponse, Problems};
use crate::lifecycle::DeliveryState;
use crate::model::{AlertReceiverRecord, DeliveryRecord};
use crate::state::AppState;

const TYPE: &str = "Fluxplane.Fleet/alertReceivers";

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
        .routes(routes!(deliveries_at_subscription))
        .routes(routes!(deliveries_at_resource_group))
        .routes(routes!(test_at_subscription))
        .routes(routes!(test_at_resource_group))
}

/// An alert receiver as the API answers it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertReceiver {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub system_data: SystemData,
    pub properties: AlertReceiverProperties,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AlertReceiverProperties {
    pub receiver_type: ReceiverKind,
    /// The host of the receiver's URL (and its port, if the URL names one); the URL itself is never answered.
    pub url_host: String,
    /// Whether messages are signed (a `Webhook` receiver always is); the key itself is never answered.
    pub has_signing_key: bool,
    pub rate_limit_per_minute: u32,
    pub delivery_state: DeliveryStatus,
    pub provisioning_state: String,
}

/// How the receiver's messages fare.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliveryStatus {
    /// Messages waiting to be sent (or being sent).
    pub backlog: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_delivered_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure_status_code: Option<i32>,
    /// What the latest failed attempt met: the receiver's status, or the connection's error.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// The earliest next attempt of the backlog.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Messages not queued because the backlog was full (`--alert-backlog`), since the receiver was created.
    pub dropped: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_dropped_at: Option<DateTime<Utc>>,
}

/// The body of an alert receiver PUT.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AlertReceiverRequest {
    properties: AlertReceiverRequestProperties,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AlertReceiverRequestProperties {
    receiver_type: ReceiverKind,
    /// Where messages are posted: an `http://` or `https://` URL (a Slack or Teams webhook's URL is its secret).
    /// Write-only; required on creation and when the type changes, kept when left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(write_only)]
    url: Option<String>,
    /// The HMAC-SHA256 key a `Webhook` receiver signs with: 32 to 256 printable ASCII characters. Write-only;
    /// required on a Webhook's creation, kept when left out; refused for Slack and Teams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(write_only)]
    signing_key: Option<String>,
    /// At most this many messages a minute (1 to 600000, default 60), a burst spread over ten seconds' worth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rate_limit_per_minute: Option<u32>,
}

impl AlertReceiverRequestProperties {
    /// Every problem at once, or the write.
    fn parse(self) -> ApiResult<ReceiverWrite> {
        let mut problems = Problems::default();
        let url = self.url.as_deref().and_then(|url| {
            ReceiverUrl::parse(url)
                .map_err(|why| problems.add("properties.url", why))
                .ok()
        });
        let signing_key = match (&self.signing_key, self.receiver_type.signs()) {
            (Some(_), false) => {
                problems.add(
                    "properties.signingKey",
                    format!(
                        "a {:?} receiver does not sign its messages: leave it out",
                        self.receiver_type
                    ),
                );
                None
            }
            (Some(key), true) => SigningKey::parse(key)
                .map_err(|why| problems.add("properties.signingKey", why))
                .ok(),
            (None, _) => None,
        };
        let rate = self.rate_limit_per_minute.unwrap_or(DEFAULT_RATE);
        if !(MIN_RATE..=MAX_RATE).contains(&rate) {
            problems.add(
                "properties.rateLimitPerMinute",
                format!("must be {MIN_RATE} to {MAX_RATE}"),
            );
        }
        problems.into_result("alert receiver", Some("properties"))?;
        Ok(ReceiverWrite {
            kind: self.receiver_type,
            url,
            signing_key,
            rate_limit_per_minute: rate,
        })
    }
}

/// One message to the receiver, as its delivery log shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivery {
    /// The delivery id (`X-Fluxplane-Delivery`).
    pub id: String,
    /// The event type, or `Test`.
    pub event_type: String,
    pub severity: Severity,
    pub subject: String,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<RuleRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    pub state: DeliveryState,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status_code: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When it is tried next (Pending).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<DeliveryRecord> for Delivery {
    fn from(d: DeliveryRecord) -> Self {
        Self {
            id: d.delivery_id,
            event_type: d.message.kind,
            severity: d.message.severity,
            subject: d.message.subject,
            summary: d.message.summary,
            rule: d.message.rule,
            digest: d.message.digest,
            state: d.state,
            attempts: d.attempts,
            created_at: d.created_at,
            last_attempt_at: d.last_attempt_at,
            last_status_code: d.last_status_code,
            last_error: d.last_error,
            next_attempt_at: (d.state == DeliveryState::Pending).then_some(d.due_at),
            finished_at: d.finished_at,
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct SubscriptionReceiverPath {
    subscription_id: String,
    alert_receiver_name: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ResourceGroupReceiverPath {
    subscription_id: String,
    resource_group_name: String,
    alert_receiver_name: String,
}

impl SubscriptionReceiverPath {
    fn target(&self) -> ApiResult<(FleetScope, String)> {
        Ok((
            FleetScope::parse(&self.subscription_id, None)?,
            parse_name("alertReceiverName", &self.alert_receiver_name)?,
        ))
    }
}

impl ResourceGroupReceiverPath {
    fn target(&self) -> ApiResult<(FleetScope, String)> {
        Ok((
            FleetScope::parse(&self.subscription_id, Some(&self.resource_group_name))?,
            parse_name("alertReceiverName", &self.alert_receiver_name)?,
        ))
    }
}

async fn render(state: &AppState, record: AlertReceiverRecord) -> ApiResult<AlertReceiver> {
    let status = state.store.receiver_status(record.id).await?;
    let (last_failure_at, last_failure_status_code, last_failure) = match status.last_failure {
        Some((at, code, error)) => (Some(at), code, error),
        None => (None, None, None),
    };
    Ok(AlertReceiver {
        id: record.arm_id(),
        name: record.name,
        type_: TYPE.to_owned(),
        system_data: record.system_data,
        properties: AlertReceiverProperties {
            receiver_type: record.spec.kind,
            url_host: record.spec.url_host,
            has_signing_key: record.sealed_signing_key.is_some(),
            rate_limit_per_minute: record.spec.rate_limit_per_minute,
            delivery_state: DeliveryStatus {
                backlog: status.backlog,
                last_delivered_at: status.last_delivered_at,
                last_failure_at,
                last_failure_status_code,
                last_failure,
                next_attempt_at: status.next_attempt_at,
                dropped: record.dropped,
                last_dropped_at: record.dropped_at,
            },
            provisioning_state: "Succeeded".to_owned(),
        },
    })
}

async fn respond(state: &AppState, status: StatusCode, record: AlertReceiverRecord) -> ApiResult<Response> {
    let mut headers = HeaderMap::new();
    insert_etag(&mut headers, &record.etag);
    Ok((status, headers, Json(render(state, record).await?)).into_response())
}

async fn read(state: &AppState, scope: &FleetScope, name: &str) -> ApiResult<AlertReceiverRecord> {
    state
        .store
        .get_alert_receiver(&scope.key(name))
        .await?
        .ok_or_else(|| scope.not_found(TYPE, name))
}

async fn get(state: &AppState, caller: &Caller, scope: FleetScope, name: String) -> ApiResult<Response> {
    caller.require(Role::Reader, &scope.resource_id(TYPE_NAME, &name))?;
    let record = read(state, &scope, &name).await?;
    respond(state, StatusCode::OK, record).await
}

async fn put(
    receivers: &Receivers,
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    preconditions: &Preconditions,
    mut body: Value,
) -> ApiResult<Response> {
    caller.require(Role::Owner, &scope.resource_id(TYPE_NAME, &name))?;
    strip_read_only(&mut body, &["id", "name", "type", "systemData"]);
    if let Some(properties) = body.get_mut("properties") {
        strip_read_only(
            properties,
            &["urlHost", "hasSigningKey", "deliveryState", "provisioningState"],
        );
    }
    let request: AlertReceiverRequest = parse(body, "")?;
    let write = request.properties.parse()?;
    let (record, created) = receivers
        .put(&caller.subject, &scope, &name, &write, preconditions)
        .await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    respond(state, status, record).await
}

async fn delete(receivers: &Receivers, caller: &Caller, scope: FleetScope, name: String) -> ApiResult<StatusCode> {
    caller.require(Role::Owner, &scope.resource_id(TYPE_NAME, &name))?;
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
) -> ApiResult<Json<Page<AlertReceiver>>> {
    let scopes = readable_scopes(caller, &scope)?;
    let page = params.page()?;
    let records = list_scopes(scopes, &page, |scope, page| async move {
        state.store.list_alert_receivers(&scope, &page).await
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
        |(_, receiver)| receiver,
    )))
}

/// The receiver's deliveries, newest first, paged.
async fn deliveries(
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    params: &ListParams,
    base: &BaseUrl,
    api_version: &str,
) -> ApiResult<Json<Page<Delivery>>> {
    let id = scope.resource_id(TYPE_NAME, &name);
    caller.require(Role::Reader, &id)?;
    let receiver = read(state, &scope, &name).await?;
    let page = params.page()?;
    let before = match &page.after {
        None => None,
        Some(after) => Some(
            after
                .parse::<i64>()
                .map_err(|_| ApiError::invalid("$skipToken", "$skipToken is not a token of this list"))?,
        ),
    };
    let records = state
        .store
        .list_deliveries(receiver.id, before, i64::from(page.limit) + 1)
        .await?;
    Ok(Json(Page::from_items(
        records,
        &page,
        |d| d.id.to_string(),
        |token| base.next_link(&format!("{id}/deliveries"), api_version, params.top.as_deref(), token),
        Delivery::from,
    )))
}

/// What a test message met.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TestResult {
    /// The test message's delivery, as the receiver's delivery log now shows it: `Delivered` or `Failed`.
    pub delivery: Delivery,
}

async fn test(receivers: &Receivers, caller: &Caller, scope: FleetScope, name: String) -> ApiResult<Json<TestResult>> {
    caller.require(Role::Contributor, &scope.resource_id(TYPE_NAME, &name))?;
    let delivery = receivers
        .test(&scope, &name)
        .await?
        .ok_or_else(|| scope.not_found(TYPE, &name))?;
    Ok(Json(TestResult {
        delivery: delivery.into(),
    }))
}

at_both_scopes! {
    get,
    tag = "AlertReceivers",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "The receiver", body = AlertReceiver),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Reads an alert receiver of a subscription: its type, its URL's host, whether it signs, its delivery state.
    get_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/alertReceivers/{alertReceiverName}",
        "AlertReceivers_GetAtSubscription",
        SubscriptionReceiverPath;
    /// Reads an alert receiver of a resource group: its type, its URL's host, whether it signs, its delivery state.
    get_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/alertReceivers/{alertReceiverName}",
        "AlertReceivers_Get",
        ResourceGroupReceiverPath;
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
    tag = "AlertReceivers",
    params(FleetApiVersionParam),
    request_body = AlertReceiverRequest,
    responses(
        (status = 200, description = "Replaced", body = AlertReceiver),
        (status = 201, description = "Created", body = AlertReceiver),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Creates or replaces an alert receiver of a subscription (Owner). The URL and signing key are write-only.
    put_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/alertReceivers/{alertReceiverName}",
        "AlertReceivers_CreateOrUpdateAtSubscription",
        SubscriptionReceiverPath;
    /// Creates or replaces an alert receiver of a resource group (Owner). The URL and signing key are write-only.
    put_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/alertReceivers/{alertReceiverName}",
        "AlertReceivers_CreateOrUpdate",
        ResourceGroupReceiverPath;
    |path| (
        State(state): State<AppState>,
        State(receivers): State<Receivers>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path (
        preconditions: Preconditions,
        JsonBody(body): JsonBody,
    ) -> ApiResult<Response> {
        let (scope, name) = path.target()?;
        put(&receivers, &state, &caller, scope, name, &preconditions, body).await
    }
}

at_both_scopes! {
    delete,
    tag = "AlertReceivers",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "Deleted, with its delivery log"),
        (status = 204, description = "There was no such receiver"),
        (status = "default", description = "Error (409: alert rules send to it)", body = ErrorResponse),
    ),
    /// Deletes an alert receiver of a subscription (Owner); 409 while alert rules send to it.
    delete_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/alertReceivers/{alertReceiverName}",
        "AlertReceivers_DeleteAtSubscription",
        SubscriptionReceiverPath;
    /// Deletes an alert receiver of a resource group (Owner); 409 while alert rules send to it.
    delete_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/alertReceivers/{alertReceiverName}",
        "AlertReceivers_Delete",
        ResourceGroupReceiverPath;
    |path| (
        State(receivers): State<Receivers>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path () -> ApiResult<StatusCode> {
        let (scope, name) = path.target()?;
        delete(&receivers, &caller, scope, name).await
    }
}

at_both_scopes! {
    get,
    tag = "AlertReceivers",
    params(FleetApiVersionParam, ListParams),
    responses(
        (status = 200, description = "A page of receivers", body = Page<AlertReceiver>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// Lists the alert receivers of a subscription, those of its resource groups included.
    list_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/alertReceivers",
        "AlertReceivers_ListBySubscription",
        SubscriptionScopePath;
    /// Lists the alert receivers of a resource group.
    list_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/alertReceivers",
        "AlertReceivers_ListByResourceGroup",
        ResourceGroupScopePath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        version: ApiVersion<Fleet>,
    ) path (
        ArmQuery(params): ArmQuery<ListParams>,
        base: BaseUrl,
    ) -> ApiResult<Json<Page<AlertReceiver>>> {
        let scope = path.fleet_scope()?;
        list(&state, &caller, scope, &params, &base, version.version).await
    }
}

at_both_scopes! {
    get,
    tag = "AlertReceivers",
    params(FleetApiVersionParam, ListParams),
    responses(
        (status = 200, description = "A page of deliveries, newest first", body = Page<Delivery>),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// The delivery log of a subscription's alert receiver, newest first: each message's attempts, the last status
    /// code or error, the next attempt. Kept a week, the last thousand finished.
    deliveries_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/alertReceivers/{alertReceiverName}/deliveries",
        "AlertReceivers_ListDeliveriesAtSubscription",
        SubscriptionReceiverPath;
    /// The delivery log of a resource group's alert receiver, newest first: each message's attempts, the last status
    /// code or error, the next attempt. Kept a week, the last thousand finished.
    deliveries_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/alertReceivers/{alertReceiverName}/deliveries",
        "AlertReceivers_ListDeliveries",
        ResourceGroupReceiverPath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        version: ApiVersion<Fleet>,
    ) path (
        ArmQuery(params): ArmQuery<ListParams>,
        base: BaseUrl,
    ) -> ApiResult<Json<Page<Delivery>>> {
        let (scope, name) = path.target()?;
        deliveries(&state, &caller, scope, name, &params, &base, version.version).await
    }
}

at_both_scopes! {
    post,
    tag = "AlertReceivers",
    params(FleetApiVersionParam),
    responses(
        (status = 200, description = "What the test message met (Delivered, or Failed with the status or error)", body = TestResult),
        (status = "default", description = "Error (429: the receiver's rate limit has no room now)", body = ErrorResponse),
    ),
    /// Sends a test message to a subscription's alert receiver now, once, and answers what happened (Contributor).
    test_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/alertReceivers/{alertReceiverName}/test",
        "AlertReceivers_TestAtSubscription",
        SubscriptionReceiverPath;
    /// Sends a test message to a resource group's alert receiver now, once, and answers what happened
    /// (Contributor).
    test_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/alertReceivers/{alertReceiverName}/test",
        "AlertReceivers_Test",
        ResourceGroupReceiverPath;
    |path| (
        State(receivers): State<Receivers>,
        caller: Caller,
        _version: ApiVersion<Fleet>,
    ) path () -> ApiResult<Json<TestResult>> {
        let (scope, name) = path.target()?;
        test(&receivers, &caller, scope, name).await
    }
}
