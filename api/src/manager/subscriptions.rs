//! Subscriptions, as `GET /subscriptions` answers them to Azure's tools. fluxplane keeps no list of them: a
//! subscription is a name its resources live under. A caller sees the subscriptions its roles name, and a caller
//! whose role covers every scope (`/`) also sees every subscription that holds a resource; such a caller may use any
//! subscription, so reading one by its id always answers.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::arm::api_version::AnyApiVersion;
use crate::arm::paging::{BaseUrl, ListParams, Page, PageRequest};
use crate::arm::params::AnyApiVersionParam;
use crate::arm::{ArmPath, ArmQuery};
use crate::auth::visible_subscription;
use crate::auth::{Caller, covers_everything, subscription_of};
use crate::config::ServeConfig;
use crate::error::{ApiResult, ErrorResponse};
use crate::state::AppState;
use crate::store::Store;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_subscriptions))
        .routes(routes!(get_subscription))
}

/// A subscription as ARM's Subscriptions API describes it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub id: String,
    pub subscription_id: String,
    /// The server's tenant (`--tenant-id`), the `tid` of the tokens it signs.
    pub tenant_id: String,
    pub display_name: String,
    /// Always `Enabled`.
    pub state: String,
    pub authorization_source: String,
    pub managed_by_tenants: Vec<String>,
    pub subscription_policies: SubscriptionPolicies,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionPolicies {
    pub location_placement_id: String,
    pub quota_id: String,
    pub spending_limit: String,
}

impl Subscription {
    fn new(subscription: &str, tenant: &str) -> Self {
        Self {
            id: format!("/subscriptions/{subscription}"),
            subscription_id: subscription.to_owned(),
            tenant_id: tenant.to_owned(),
            display_name: subscription.to_owned(),
            state: "Enabled".into(),
            authorization_source: "RoleBased".into(),
            managed_by_tenants: Vec::new(),
            subscription_policies: SubscriptionPolicies {
                location_placement_id: "Public_2014-09-01".into(),
                quota_id: "fluxplane".into(),
                spending_limit: "Off".into(),
            },
        }
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
struct SubscriptionPath {
    subscription_id: String,
}

/// Lists the subscriptions the caller may use.
#[utoipa::path(
    get,
    path = "/subscriptions",
    tag = "ResourceManager",
    operation_id = "Subscriptions_List",
    params(AnyApiVersionParam, ListParams),
    responses(
        (status = 200, description = "The caller's subscriptions", body = inline(Page<Subscription>)),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn list_subscriptions(
    State(store): State<Arc<dyn Store>>,
    State(config): State<Arc<ServeConfig>>,
    caller: Caller,
    version: AnyApiVersion,
    ArmQuery(list): ArmQuery<ListParams>,
    base: BaseUrl,
) -> ApiResult<Json<Page<Subscription>>> {
    let page = list.page()?;
    let mut found = named(&caller, &page);
    if covers_everything(&caller) {
        for (key, subscription) in store.subscriptions(&page).await? {
            found.entry(key).or_insert(subscription);
        }
    }
    // both sources answer from `page.after` on in key order; their first `limit + 1` together are the page's
    let items: Vec<(String, String)> = found.into_iter().take(page.limit as usize + 1).collect();
    let tenant = config.tenant().to_string();
    Ok(Json(Page::from_items(
        items,
        &page,
        |(key, _)| key.clone(),
        |token| base.next_link("/subscriptions", &version.0, list.top.as_deref(), token),
        |(_, subscription)| Subscription::new(&subscription, &tenant),
    )))
}

/// The subscriptions the caller's roles name, by key, after the page's start.
fn named(caller: &Caller, page: &PageRequest) -> BTreeMap<String, String> {
    caller
        .roles
        .iter()
        .filter_map(|a| subscription_of(&a.scope))
        .map(|s| (s.to_ascii_lowercase(), s.to_owned()))
        .filter(|(key, _)| page.after.as_ref().is_none_or(|after| key > after))
        .collect()
}

/// Reads a subscription the caller may use.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}",
    tag = "ResourceManager",
    operation_id = "Subscriptions_Get",
    params(SubscriptionPath, AnyApiVersionParam),
    responses(
        (status = 200, description = "The subscription", body = Subscription),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn get_subscription(
    State(config): State<Arc<ServeConfig>>,
    caller: Caller,
    _version: AnyApiVersion,
    ArmPath(path): ArmPath<SubscriptionPath>,
) -> ApiResult<Json<Subscription>> {
    let subscription = visible_subscription(&caller, &path.subscription_id)?;
    Ok(Json(Subscription::new(&subscription, &config.tenant().to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{Role, RoleAssignment};

    fn caller(scopes: &[&str]) -> Caller {
        Caller {
            subject: "t".into(),
            roles: scopes
                .iter()
                .map(|s| RoleAssignment::parse(Role::Reader, s).unwrap())
                .collect(),
        }
    }

    #[test]
    fn named_subscriptions_come_once_in_key_order_after_the_page_start() {
        let reader = caller(&[
            "/subscriptions/b",
            "/subscriptions/A/resourceGroups/x",
            "/subscriptions/a",
            "/subscriptions/c",
        ]);
        let page = PageRequest {
            after: Some("a".into()),
            limit: 10,
        };
        assert_eq!(named(&reader, &page).into_keys().collect::<Vec<_>>(), ["b", "c"]);
    }
}
