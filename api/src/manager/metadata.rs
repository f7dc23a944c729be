//! The cloud's metadata (`/metadata/endpoints`), which `az cloud register --endpoint-resource-manager` and Azure's
//! SDKs read to learn a cloud's endpoints and the audience its tokens are for. It is public, as ARM's is: a
//! client reads it before it can sign in.
//!
//! Its shape changed with the api-version: from `2022-09-01` one cloud, from `2019-05-01` a list of clouds, before
//! that the flat form of `2015-01-01`. Each version gets its own.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::arm::api_version::AnyApiVersion;
use crate::arm::paging::BaseUrl;
use crate::arm::params::AnyApiVersionParam;
use crate::config::ServeConfig;
use crate::error::{ApiResult, ErrorResponse};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(endpoints))
}

/// The name the metadata gives this cloud (`az cloud register` names it as the user says).
const CLOUD_NAME: &str = "fluxplane";

/// One cloud, as `2019-05-01` and later describe it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cloud {
    pub name: String,
    /// This server, where Resource Manager requests go.
    pub resource_manager: String,
    /// The web UI.
    pub portal: String,
    pub authentication: Authentication,
    /// No storage, vault or other suffixes: fluxplane serves none of those services.
    pub suffixes: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Authentication {
    /// Where a client would sign in: this server, which signs its own tokens (`fluxplane token`, `dev`).
    pub login_endpoint: String,
    /// The audience (`aud`) of the tokens the server accepts (`--jwt-audience`): what a client asks a token for.
    pub audiences: Vec<String>,
    /// The server's tenant (`--tenant-id`).
    pub tenant: String,
    pub identity_provider: String,
}

/// The flat form of `2015-01-01`.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegacyCloud {
    pub portal_endpoint: String,
    pub authentication: LegacyAuthentication,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LegacyAuthentication {
    pub login_endpoint: String,
    pub audiences: Vec<String>,
}

/// The metadata in the shape of the requested api-version.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum CloudMetadata {
    /// `2022-09-01` and later.
    Cloud(Cloud),
    /// `2019-05-01` up to `2022-09-01`.
    Clouds(Vec<Cloud>),
    /// Before `2019-05-01`.
    Legacy(LegacyCloud),
}

impl CloudMetadata {
    fn of(version: &str, base: &str, audience: &str, tenant: &str) -> Self {
        let cloud = || Cloud {
            name: CLOUD_NAME.into(),
            resource_manager: format!("{base}/"),
            portal: format!("{base}/"),
            authentication: Authentication {
                login_endpoint: format!("{base}/"),
                audiences: vec![audience.to_owned()],
                tenant: tenant.to_owned(),
                identity_provider: "AAD".into(),
            },
            suffixes: serde_json::Map::new(),
        };
        // api-versions are dates: they compare as strings
        if version >= "2022-09-01" {
            Self::Cloud(cloud())
        } else if version >= "2019-05-01" {
            Self::Clouds(vec![cloud()])
        } else {
            Self::Legacy(LegacyCloud {
                portal_endpoint: format!("{base}/"),
                authentication: LegacyAuthentication {
                    login_endpoint: format!("{base}/"),
                    audiences: vec![audience.to_owned()],
                },
            })
        }
    }
}

/// The cloud's endpoints and token audience.
#[utoipa::path(
    get,
    path = "/metadata/endpoints",
    tag = "ResourceManager",
    operation_id = "Metadata_Endpoints",
    params(AnyApiVersionParam),
    responses(
        (status = 200, description = "The cloud's metadata, in the shape of the api-version", body = CloudMetadata),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
)]
async fn endpoints(
    State(config): State<Arc<ServeConfig>>,
    version: AnyApiVersion,
    base: BaseUrl,
) -> ApiResult<Json<CloudMetadata>> {
    Ok(Json(CloudMetadata::of(
        &version.0,
        &base.0,
        &config.jwt_audience,
        &config.tenant().to_string(),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(version: &str) -> serde_json::Value {
        serde_json::to_value(CloudMetadata::of(version, "https://fp.example", "fluxplane", "t")).unwrap()
    }

    #[test]
    fn each_api_version_gets_the_shape_it_was_published_with() {
        let current = shape("2022-09-01");
        assert_eq!(current["resourceManager"], "https://fp.example/");
        assert_eq!(current["authentication"]["audiences"][0], "fluxplane");
        assert!(
            current["suffixes"].is_object(),
            "the Azure CLI reads suffixes unconditionally"
        );
        assert_eq!(shape("2020-06-01")[0]["name"], "fluxplane");
        assert_eq!(shape("2015-01-01")["portalEndpoint"], "https://fp.example/");
        assert!(shape("2015-01-01").get("resourceManager").is_none());
    }
}
