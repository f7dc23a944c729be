//! The resource providers fluxplane serves, as ARM describes them: their registration in a subscription (always
//! `Registered`: nothing needs enabling, so `register` changes nothing and answers the same) and the operations each
//! offers. One table below is the source of both, and its api-versions are those the routes accept.

use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::arm::ArmPath;
use crate::arm::api_version::{
    AnyApiVersion, Clusters, Extensions, Fleet, FluxConfigurations, SourceControlConfigurations, Versioned,
};
use crate::arm::params::AnyApiVersionParam;
use crate::auth::{Caller, Role, visible_subscription};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_providers))
        .routes(routes!(get_provider))
        .routes(routes!(register_provider))
        .routes(routes!(list_operations))
}

/// A resource type of a provider: its name, the api-versions it serves and what callers may do with it.
#[derive(Debug)]
pub struct ResourceType {
    pub name: &'static str,
    /// Oldest first, as `arm::api_version` lists them.
    pub api_versions: &'static [&'static str],
    /// `(operation, description)`: `read`, `write`, `delete` or an action such as `plan/action`.
    pub operations: &'static [(&'static str, &'static str)],
}

#[derive(Debug)]
pub struct Provider {
    pub namespace: &'static str,
    pub display_name: &'static str,
    pub resource_types: &'static [ResourceType],
}

const CRUD: &[(&str, &str)] = &[
    ("read", "Reads"),
    ("write", "Creates or updates"),
    ("delete", "Deletes"),
];
const READ: &[(&str, &str)] = &[("read", "Reads")];

/// Every provider and resource type the routes serve.
pub const PROVIDERS: &[Provider] = &[
    Provider {
        namespace: "Microsoft.Kubernetes",
        display_name: "Kubernetes clusters",
        resource_types: &[ResourceType {
            name: "connectedClusters",
            api_versions: Clusters::SUPPORTED,
            operations: CRUD,
        }],
    },
    Provider {
        namespace: "Microsoft.KubernetesConfiguration",
        display_name: "Kubernetes configuration",
        resource_types: &[
            ResourceType {
                name: "fluxConfigurations",
                api_versions: FluxConfigurations::SUPPORTED,
                operations: CRUD,
            },
            ResourceType {
                // only the microsoft.flux extension is served
                name: "extensions",
                api_versions: Extensions::SUPPORTED,
                operations: CRUD,
            },
            ResourceType {
                // retired by Azure with Flux v1: listed empty, so that tools which look for old ones find none
                name: "sourceControlConfigurations",
                api_versions: SourceControlConfigurations::SUPPORTED,
                operations: READ,
            },
        ],
    },
    Provider {
        namespace: "Fluxplane.Fleet",
        display_name: "fluxplane fleet management",
        resource_types: &[
            ResourceType {
                name: "clusterGroups",
                api_versions: Fleet::SUPPORTED,
                operations: CRUD,
            },
            ResourceType {
                name: "policyAssignments",
                api_versions: Fleet::SUPPORTED,
                operations: &[
                    ("read", "Reads"),
                    ("write", "Creates or updates"),
                    ("delete", "Deletes"),
                    ("plan/action", "Plans a change of"),
                    ("reconcile/action", "Asks the agents to re-check the sources of"),
                    ("pauseRollout/action", "Pauses the rollout of"),
                    ("resumeRollout/action", "Resumes the rollout of"),
                ],
            },
            ResourceType {
                name: "gitReceivers",
                api_versions: Fleet::SUPPORTED,
                operations: CRUD,
            },
            ResourceType {
                name: "alertReceivers",
                api_versions: Fleet::SUPPORTED,
                operations: &[
                    ("read", "Reads"),
                    ("write", "Creates or updates"),
                    ("delete", "Deletes"),
                    ("test/action", "Sends a test message to"),
                ],
            },
            ResourceType {
                name: "alertRules",
                api_versions: Fleet::SUPPORTED,
                operations: CRUD,
            },
            ResourceType {
                name: "complianceSummary",
                api_versions: Fleet::SUPPORTED,
                operations: READ,
            },
            ResourceType {
                name: "clusterCompliance",
                api_versions: Fleet::SUPPORTED,
                operations: READ,
            },
        ],
    },
];

/// The provider of `namespace`, matched as ARM matches namespaces: in any case.
pub fn find(namespace: &str) -> ApiResult<&'static Provider> {
    PROVIDERS
        .iter()
        .find(|p| p.namespace.eq_ignore_ascii_case(namespace))
        .ok_or_else(|| {
            ApiError::InvalidResourceNamespace(format!(
                "The resource namespace '{namespace}' is invalid; this server serves {}.",
                PROVIDERS.iter().map(|p| p.namespace).collect::<Vec<_>>().join(", ")
            ))
        })
}

/// A provider's registration in a subscription.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRegistration {
    pub id: String,
    pub namespace: String,
    /// Always `Registered`.
    pub registration_state: String,
    pub registration_policy: String,
    pub resource_types: Vec<ProviderResourceType>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderResourceType {
    pub resource_type: String,
    /// fluxplane has no regions: a resource may name any location.
    pub locations: Vec<String>,
    /// Newest first.
    pub api_versions: Vec<String>,
    pub capabilities: String,
}

impl Provider {
    fn registration(&self, subscription: &str) -> ProviderRegistration {
        ProviderRegistration {
            id: format!("/subscriptions/{subscription}/providers/{}", self.namespace),
            namespace: self.namespace.into(),
            registration_state: "Registered".into(),
            registration_policy: "RegistrationRequired".into(),
            resource_types: self
                .resource_types
                .iter()
                .map(|t| ProviderResourceType {
                    resource_type: t.name.into(),
                    locations: Vec::new(),
                    api_versions: t.api_versions.iter().rev().map(|v| (*v).to_owned()).collect(),
                    capabilities: "None".into(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProviderList {
    pub value: Vec<ProviderRegistration>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
struct ProviderPath {
    subscription_id: String,
    resource_provider_namespace: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
struct SubscriptionPath {
    subscription_id: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
struct NamespacePath {
    resource_provider_namespace: String,
}

/// Lists the providers fluxplane serves, as registered in the subscription.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/providers",
    tag = "ResourceManager",
    operation_id = "Providers_List",
    params(SubscriptionPath, AnyApiVersionParam),
    responses(
        (status = 200, description = "The providers", body = ProviderList),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn list_providers(
    caller: Caller,
    _version: AnyApiVersion,
    ArmPath(path): ArmPath<SubscriptionPath>,
) -> ApiResult<Json<ProviderList>> {
    let subscription = visible_subscription(&caller, &path.subscription_id)?;
    Ok(Json(ProviderList {
        value: PROVIDERS.iter().map(|p| p.registration(&subscription)).collect(),
    }))
}

/// Reads a provider's registration in the subscription.
#[utoipa::path(
    get,
    path = "/subscriptions/{subscriptionId}/providers/{resourceProviderNamespace}",
    tag = "ResourceManager",
    operation_id = "Providers_Get",
    params(ProviderPath, AnyApiVersionParam),
    responses(
        (status = 200, description = "The provider's registration", body = ProviderRegistration),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn get_provider(
    caller: Caller,
    _version: AnyApiVersion,
    ArmPath(path): ArmPath<ProviderPath>,
) -> ApiResult<Json<ProviderRegistration>> {
    let subscription = visible_subscription(&caller, &path.subscription_id)?;
    Ok(Json(
        find(&path.resource_provider_namespace)?.registration(&subscription),
    ))
}

/// Registers a provider in the subscription: they always are, so this changes nothing (Contributor, as in Azure).
#[utoipa::path(
    post,
    path = "/subscriptions/{subscriptionId}/providers/{resourceProviderNamespace}/register",
    tag = "ResourceManager",
    operation_id = "Providers_Register",
    params(ProviderPath, AnyApiVersionParam),
    responses(
        (status = 200, description = "The provider's registration", body = ProviderRegistration),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn register_provider(
    caller: Caller,
    _version: AnyApiVersion,
    ArmPath(path): ArmPath<ProviderPath>,
) -> ApiResult<Json<ProviderRegistration>> {
    let subscription = visible_subscription(&caller, &path.subscription_id)?;
    let provider = find(&path.resource_provider_namespace)?;
    caller.require(Role::Contributor, &format!("/subscriptions/{subscription}"))?;
    Ok(Json(provider.registration(&subscription)))
}

/// An operation of a provider, as ARM's operations lists describe them.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    /// `{namespace}/{resourceType}/{operation}`, e.g. `Microsoft.KubernetesConfiguration/fluxConfigurations/read`.
    pub name: String,
    pub display: OperationDisplay,
    pub is_data_action: bool,
    pub origin: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OperationDisplay {
    pub provider: String,
    pub resource: String,
    pub operation: String,
    pub description: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OperationList {
    pub value: Vec<Operation>,
}

impl Provider {
    fn operations(&self) -> Vec<Operation> {
        let register = Operation {
            name: format!("{}/register/action", self.namespace),
            display: OperationDisplay {
                provider: self.namespace.into(),
                resource: "Resource provider".into(),
                operation: "register/action".into(),
                description: "Registers the provider in a subscription (it always is).".into(),
            },
            is_data_action: false,
            origin: "user,system".into(),
        };
        let per_type = self.resource_types.iter().flat_map(|t| {
            t.operations.iter().map(move |(operation, verb)| Operation {
                name: format!("{}/{}/{operation}", self.namespace, t.name),
                display: OperationDisplay {
                    provider: self.display_name.into(),
                    resource: t.name.into(),
                    operation: (*operation).into(),
                    description: format!("{verb} {}.", t.name),
                },
                is_data_action: false,
                origin: "user,system".into(),
            })
        });
        std::iter::once(register).chain(per_type).collect()
    }
}

/// Lists the operations of a provider.
#[utoipa::path(
    get,
    path = "/providers/{resourceProviderNamespace}/operations",
    tag = "ResourceManager",
    operation_id = "Operations_List",
    params(NamespacePath, AnyApiVersionParam),
    responses(
        (status = 200, description = "The provider's operations", body = OperationList),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("bearer" = []))
)]
async fn list_operations(
    _caller: Caller,
    _version: AnyApiVersion,
    ArmPath(path): ArmPath<NamespacePath>,
) -> ApiResult<Json<OperationList>> {
    Ok(Json(OperationList {
        value: find(&path.resource_provider_namespace)?.operations(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_are_found_in_any_case_and_unknown_ones_are_refused() {
        assert_eq!(
            find("microsoft.kubernetesconfiguration").unwrap().namespace,
            "Microsoft.KubernetesConfiguration"
        );
        let err = find("Microsoft.Compute").unwrap_err();
        assert_eq!(err.code(), "InvalidResourceNamespace");
        assert_eq!(err.status(), axum::http::StatusCode::NOT_FOUND);
    }

    #[test]
    fn a_registration_lists_the_versions_the_routes_accept_newest_first() {
        let registration = find("Microsoft.KubernetesConfiguration").unwrap().registration("s");
        let flux = &registration.resource_types[0];
        assert_eq!(flux.resource_type, "fluxConfigurations");
        assert_eq!(
            flux.api_versions.first().map(String::as_str),
            FluxConfigurations::SUPPORTED.last().copied()
        );
        assert_eq!(flux.api_versions.len(), FluxConfigurations::SUPPORTED.len());
        assert_eq!(
            registration.id,
            "/subscriptions/s/providers/Microsoft.KubernetesConfiguration"
        );
    }

    #[test]
    fn operations_name_their_provider_type_and_verb() {
        let names: Vec<String> = find("Fluxplane.Fleet")
            .unwrap()
            .operations()
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert!(names.contains(&"Fluxplane.Fleet/register/action".to_owned()));
        assert!(names.contains(&"Fluxplane.Fleet/policyAssignments/plan/action".to_owned()));
        assert!(names.contains(&"Fluxplane.Fleet/clusterGroups/delete".to_owned()));
    }
}
