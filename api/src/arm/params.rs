//! Path and query parameters several resources share, as their handlers declare them to the OpenAPI document.

use serde::Deserialize;
use utoipa::IntoParams;

use crate::arm::scope::FleetScope;
use crate::error::ApiResult;

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct SubscriptionScopePath {
    pub subscription_id: String,
}

impl SubscriptionScopePath {
    pub fn fleet_scope(&self) -> ApiResult<FleetScope> {
        FleetScope::parse(&self.subscription_id, None)
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
    pub fn fleet_scope(&self) -> ApiResult<FleetScope> {
        FleetScope::parse(&self.subscription_id, Some(&self.resource_group_name))
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

/// `api-version` of Resource Manager's own endpoints: any version of the form `YYYY-MM-DD`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AnyApiVersionParam {
    #[serde(rename = "api-version")]
    #[param(rename = "api-version")]
    #[allow(dead_code)]
    api_version: String,
}

/// Declares a handler of a fleet resource once for both of its scopes: at a subscription (`$sub`) and at a resource
/// group (`$rg`). Each gets its own path, operation id, path parameters and doc comment in the OpenAPI document;
/// both run the one body, with the scope's path parameters extracted as `$path` at the place `path` marks among the
/// extractors (their order is the order errors are found in). The two path types offer the same methods (`target()` and the like).
macro_rules! at_both_scopes {
    (
        $method:ident,
        tag = $tag:literal,
        params($($param:tt)*),
        $(request_body = $request:ty,)?
        responses($($response:tt)*),
        $(#[doc = $sub_doc:literal])+
        $sub:ident: $sub_path:literal, $sub_op:literal, $sub_params:ty;
        $(#[doc = $rg_doc:literal])+
        $rg:ident: $rg_path:literal, $rg_op:literal, $rg_params:ty;
        |$path:ident| ($($before:tt)*) path ($($after:tt)*) -> $ret:ty $body:block
    ) => {
        $(#[doc = $sub_doc])+
        #[utoipa::path(
            $method,
            path = $sub_path,
            tag = $tag,
            operation_id = $sub_op,
            params($sub_params, $($param)*),
            $(request_body = $request,)?
            responses($($response)*),
            security(("bearer" = []))
        )]
        async fn $sub(
            $($before)*
            $crate::arm::ArmPath($path): $crate::arm::ArmPath<$sub_params>,
            $($after)*
        ) -> $ret $body

        $(#[doc = $rg_doc])+
        #[utoipa::path(
            $method,
            path = $rg_path,
            tag = $tag,
            operation_id = $rg_op,
            params($rg_params, $($param)*),
            $(request_body = $request,)?
            responses($($response)*),
            security(("bearer" = []))
        )]
        async fn $rg(
            $($before)*
            $crate::arm::ArmPath($path): $crate::arm::ArmPath<$rg_params>,
            $($after)*
        ) -> $ret $body
    };
}

pub(crate) use at_both_scopes;
