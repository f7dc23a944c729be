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
        (name = "Extensions", description = "Cluster extensions: the microsoft.flux extension, which Flux configurations need"),
        (name = "Agent", description = "The agent API (v1): desired state by long-poll, status back"),
        (name = "ClusterGroups", description = "Groups of clusters selected by their tags (Fluxplane.Fleet)"),
        (name = "PolicyAssignments", description = "A Flux configuration for every cluster a selector matches (Fluxplane.Fleet)"),
        (name = "GitReceivers", description = "Webhooks Git hosts call on push, which ask the configurations reading the pushed ref to re-check their source at once (Fluxplane.Fleet)"),
        (name = "AlertReceivers", description = "Where alerts go: signed webhooks, Slack and Microsoft Teams (Fluxplane.Fleet)"),
        (name = "AlertRules", description = "Which events are sent to which receivers, how bad and how often (Fluxplane.Fleet)"),
        (name = "ComplianceSummary", description = "Counts of configuration instances by state across a fleet (Fluxplane.Fleet)"),
        (name = "ResourceManager", description = "What Azure Resource Manager itself answers: subscriptions, provider registrations and operations, the cloud's metadata"),
        (name = "SourceControlConfigurations", description = "Flux v1 configurations, retired by Azure: every cluster has none"),
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
        components.add_security_scheme(
            "agent",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "A token the cluster's agent signs with its own Ed25519 key (`alg: EdDSA`): `sub` the \
                         cluster's ARM id, `aud` `fluxplane-agent`, at most 300 s of life",
                    ))
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

#[cfg(test)]
mod tests {
    use super::*;

    const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../openapi/openapi.json");

    #[test]
    fn the_committed_document_matches_the_code() {
        let committed = std::fs::read_to_string(COMMITTED).unwrap_or_default();
        assert!(
            committed == document_json(),
            "openapi/openapi.json is stale: run `cargo run -q -- openapi > openapi/openapi.json` and commit it"
        );
    }

    #[test]
    fn secret_fields_are_write_only_in_the_document() {
        let doc: serde_json::Value = serde_json::from_str(&document_json()).unwrap();
        let schemas = &doc["components"]["schemas"];
        for (schema, field) in [
            ("FluxConfigurationSpec", "configurationProtectedSettings"),
            ("AzureBlob", "accountKey"),
            ("AzureBlob", "sasToken"),
            ("ServicePrincipal", "clientSecret"),
            ("ServicePrincipal", "clientCertificate"),
            ("ServicePrincipal", "clientCertificatePassword"),
            ("TlsConfig", "clientCertificate"),
            ("TlsConfig", "privateKey"),
            ("TlsConfig", "caCertificate"),
            ("AlertReceiverRequestProperties", "url"),
            ("AlertReceiverRequestProperties", "signingKey"),
        ] {
            let property = &schemas[schema]["properties"][field];
            assert_eq!(property["writeOnly"], true, "{schema}.{field}: {property}");
        }
    }

    #[test]
    fn the_long_poll_the_connections_time_is_served_where_the_protocol_says() {
        let path = fluxplane_agent_protocol::agent::DESIRED_STATE_PATH;
        assert!(document().paths.paths.contains_key(path), "{path}");
    }

    #[test]
    fn answers_validate_against_their_own_schemas() {
        let doc: serde_json::Value = serde_json::from_str(&document_json()).unwrap();
        let schemas = &doc["components"]["schemas"];
        // an answer flattening a request's properties keeps its read-only ones valid
        for (schema, read_only) in [
            ("ConnectedClusterProperties", "connectivityStatus"),
            ("FluxConfigurationProperties", "complianceState"),
            ("PolicyAssignmentProperties", "status"),
            ("AlertRuleProperties", "provisioningState"),
        ] {
            let items = schemas[schema]["allOf"].as_array().unwrap();
            assert!(
                items.iter().all(|item| item.get("additionalProperties").is_none()),
                "{schema}"
            );
            assert!(
                items.iter().any(|item| item["properties"].get(read_only).is_some()),
                "{schema}"
            );
        }
        // every security requirement names a scheme the document defines
        let defined = doc["components"]["securitySchemes"].as_object().unwrap();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, operation) in item.as_object().unwrap() {
                for requirement in operation["security"].as_array().into_iter().flatten() {
                    for scheme in requirement.as_object().unwrap().keys() {
                        assert!(defined.contains_key(scheme), "{method} {path}: {scheme}");
                    }
                }
            }
        }
    }

    #[test]
    fn every_route_is_documented() {
        let doc: serde_json::Value = serde_json::from_str(&document_json()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        let flux = "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/{clusterRp}/{clusterResourceName}/{clusterName}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations";
        for (path, methods) in [
            (
                format!("{flux}/{{fluxConfigurationName}}"),
                &["get", "put", "patch", "delete"][..],
            ),
            (flux.to_owned(), &["get"][..]),
            (
                format!("{flux}/{{fluxConfigurationName}}/operations/{{operationId}}"),
                &["get"][..],
            ),
            (
                "/subscriptions/{subscriptionId}/providers/Microsoft.Kubernetes/connectedClusters".to_owned(),
                &["get"][..],
            ),
        ] {
            for method in methods {
                assert!(paths[&path].get(*method).is_some(), "{method} {path}");
            }
        }
    }
}
