//! The OpenAPI document. Handlers register their paths once, through utoipa-axum, so the router and the document
//! cannot drift; this module adds the parts no handler owns.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fluxplane",
        description = "ARM-compatible control plane for Flux GitOps across fleets of Kubernetes clusters: \
                       Microsoft.Kubernetes/connectedClusters and Microsoft.KubernetesConfiguration/fluxConfigurations.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "ConnectedClusters", description = "Clusters registered with the control plane"),
        (name = "FluxConfigurations", description = "Flux configurations of a cluster"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The whole document as served at `/openapi.json` and committed in `openapi/openapi.json`.
pub fn document() -> utoipa::openapi::OpenApi {
    crate::server::api_router().split_for_parts().1
}

/// The document as pretty JSON with a trailing newline.
pub fn document_json() -> String {
    let mut text = document().to_pretty_json().expect("the OpenAPI document serialises");
    text.push('\n');
    text
}
