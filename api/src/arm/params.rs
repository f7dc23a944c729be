//! Path and query parameters several resources share, as their handlers declare them to the OpenAPI document.

use serde::Deserialize;
use utoipa::IntoParams;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct SubscriptionScopePath {
    pub subscription_id: String,
}

impl SubscriptionScopePath {
    pub fn subscription(&self) -> &str {
        &self.subscription_id
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ResourceGroupScopePath {
    pub subscription_id: String,
    pub resource_group_name: String,
}

impl ResourceGroupScopePath {
    /// The subscription and the resource group.
    pub fn scope(&self) -> (&str, &str) {
        (&self.subscription_id, &self.resource_group_name)
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FleetApiVersionParam {
    /// The API version: 2026-01-01.
    #[serde(rename = "api-version")]
    #[param(rename = "api-version")]
    #[allow(dead_code)]
    api_version: String,
}
