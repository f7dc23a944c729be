//! Validated names of ARM path segments and the resource ids built from them.
//!
//! ARM names are case-insensitive: every name keeps the casing the user gave for display, and `key()` gives the
//! lower-cased form the store looks resources up by.

use serde::Deserialize;
use utoipa::IntoParams;

use crate::error::ApiError;

fn check(target: &str, value: &str, valid: bool, rule: &str) -> Result<(), ApiError> {
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            target,
            format!("'{value}' is not a valid {target}: {rule}"),
        ))
    }
}

/// A DNS-1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric, at most 63 characters.
pub fn is_dns1123_label(value: &str) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

/// A DNS-1123 subdomain: dot-separated labels, at most 253 characters (Kubernetes object names).
pub fn is_dns1123_subdomain(value: &str) -> bool {
    value.len() <= 253 && value.split('.').all(is_dns1123_label)
}

/// A subscription id. Azure issues GUIDs; any short token of letters, digits and '-' is accepted so that
/// self-hosted fleets can name theirs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionId(String);

impl SubscriptionId {
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        let valid = !value.is_empty()
            && value.len() <= 64
            && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !value.starts_with('-');
        check("subscriptionId", value, valid, "use 1-64 letters, digits and '-'")?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// A resource group name: 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceGroupName(String);

impl ResourceGroupName {
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        let valid = !value.is_empty()
            && value.len() <= 90
            && value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'(' | b')'))
            && !value.ends_with('.');
        check(
            "resourceGroupName",
            value,
            valid,
            "use 1-90 letters, digits, '_', '-', '.', '(' or ')', not ending in '.'",
        )?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn key(&self) -> String {
        self.0.to_ascii_lowercase()
    }
}

/// A connected cluster name: 1-63 letters, digits, '-' or '_', starting and ending with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterName(String);

impl ClusterName {
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        let bytes = value.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric();
        check(
            "clusterName",
            value,
            valid,
            "use 1-63 letters, digits, '-' or '_', starting and ending with a letter or digit",
        )?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A Flux configuration name: a DNS-1123 label, because it names Kubernetes objects in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigurationName(String);

impl ConfigurationName {
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        check(
            "fluxConfigurationName",
            value,
            is_dns1123_label(value),
            "use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit",
        )?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A cluster extension's name: a DNS-1123 label, because the agent names what it installs after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtensionName(String);

impl ExtensionName {
    pub fn parse(value: &str) -> Result<Self, ApiError> {
        check(
            "extensionName",
            value,
            is_dns1123_label(value),
            "use at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit",
        )?;
        Ok(Self(value.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The Kubernetes cluster resource types Azure lets Flux configurations hang under, as (provider, type).
pub const CLUSTER_TYPES: &[(&str, &str)] = &[
    ("Microsoft.Kubernetes", "connectedClusters"),
    ("Microsoft.ContainerService", "managedClusters"),
    ("Microsoft.HybridContainerService", "provisionedClusters"),
    ("Microsoft.Kubernetes", "provisionedClusters"),
    ("Microsoft.ResourceConnector", "appliances"),
];

/// A cluster as ARM addresses it. fluxplane registers every cluster as a `Microsoft.Kubernetes/connectedClusters`
/// resource; configuration paths may name it through any cluster type Azure allows, so that scripts written for
/// AKS or provisioned clusters work unchanged, and they all resolve to the registered cluster of that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterRef {
    pub subscription: SubscriptionId,
    pub resource_group: ResourceGroupName,
    pub name: ClusterName,
}

impl ClusterRef {
    pub fn parse(subscription: &str, resource_group: &str, name: &str) -> Result<Self, ApiError> {
        Ok(Self {
            subscription: SubscriptionId::parse(subscription)?,
            resource_group: ResourceGroupName::parse(resource_group)?,
            name: ClusterName::parse(name)?,
        })
    }

    /// The connectedCluster's ARM id.
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/Microsoft.Kubernetes/connectedClusters/{}",
            self.subscription.as_str(),
            self.resource_group.as_str(),
            self.name.as_str()
        )
    }

    /// The ARM id of the Flux configuration `name` of this cluster.
    pub fn configuration_id(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{name}",
            self.id()
        )
    }

    /// The store's case-insensitive key.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.subscription.key(),
            self.resource_group.key(),
            self.name.as_str().to_ascii_lowercase()
        )
    }
}

/// Path parameters addressing a cluster through any allowed cluster type.
#[derive(Debug, Clone, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Path)]
pub struct ClusterPath {
    pub subscription_id: String,
    pub resource_group_name: String,
    /// The cluster's resource provider: Microsoft.Kubernetes, Microsoft.ContainerService,
    /// Microsoft.HybridContainerService or Microsoft.ResourceConnector.
    pub cluster_rp: String,
    /// The cluster's resource type: connectedClusters, managedClusters, provisionedClusters or appliances.
    pub cluster_resource_name: String,
    pub cluster_name: String,
}

/// A cluster reached through a configuration path: the registered cluster plus the (provider, type) the path
/// used, which the ids in the answer echo.
#[derive(Debug, Clone)]
pub struct ClusterScope {
    pub cluster: ClusterRef,
    pub provider: &'static str,
    pub resource_type: &'static str,
}

impl ClusterScope {
    pub fn parse(path: &ClusterPath) -> Result<Self, ApiError> {
        let cluster = ClusterRef::parse(&path.subscription_id, &path.resource_group_name, &path.cluster_name)?;
        let (provider, resource_type) = CLUSTER_TYPES
            .iter()
            .find(|(rp, ty)| {
                rp.eq_ignore_ascii_case(&path.cluster_rp) && ty.eq_ignore_ascii_case(&path.cluster_resource_name)
            })
            .ok_or_else(|| {
                let allowed: Vec<String> = CLUSTER_TYPES.iter().map(|(rp, ty)| format!("{rp}/{ty}")).collect();
                ApiError::invalid(
                    "clusterResourceName",
                    format!(
                        "'{}/{}' is not a Kubernetes cluster type; use one of {}",
                        path.cluster_rp,
                        path.cluster_resource_name,
                        allowed.join(", ")
                    ),
                )
            })?;
        Ok(Self {
            cluster,
            provider,
            resource_type,
        })
    }

    /// The same scope with the cluster's names spelled as they were registered, whatever case the path used: ids
    /// echo the stored case, as ARM's do. (The stored names were valid when registered; were one not, the path's
    /// spelling is kept.)
    pub fn as_registered(mut self, subscription: &str, resource_group: &str, name: &str) -> Self {
        if let Ok(cluster) = ClusterRef::parse(subscription, resource_group, name) {
            self.cluster = cluster;
        }
        self
    }

    /// The cluster's id as this path names it: `/subscriptions/{sub}/resourceGroups/{rg}/providers/{rp}/{type}/{name}`.
    pub fn id(&self) -> String {
        format!(
            "/subscriptions/{}/resourceGroups/{}/providers/{}/{}/{}",
            self.cluster.subscription.as_str(),
            self.cluster.resource_group.as_str(),
            self.provider,
            self.resource_type,
            self.cluster.name.as_str()
        )
    }

    pub fn configuration_id(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{name}",
            self.id()
        )
    }

    pub fn extension_id(&self, name: &str) -> String {
        format!(
            "{}/providers/Microsoft.KubernetesConfiguration/extensions/{name}",
            self.id()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns1123_labels_follow_kubernetes_rules() {
        for ok in ["a", "srs-fluxconfig", "0abc", &"a".repeat(63)] {
            assert!(is_dns1123_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Abc", "a_b", "a.b", &"a".repeat(64)] {
            assert!(!is_dns1123_label(bad), "{bad}");
        }
    }

    #[test]
    fn resource_group_names_follow_arm_rules() {
        assert!(ResourceGroupName::parse("rg_1-(prod).eu").is_ok());
        assert!(ResourceGroupName::parse("ends.").is_err());
        assert!(ResourceGroupName::parse("has space").is_err());
        assert!(ResourceGroupName::parse(&"r".repeat(91)).is_err());
    }

    #[test]
    fn cluster_names_follow_connected_cluster_rules() {
        assert!(ClusterName::parse("Cluster_1-a").is_ok());
        assert!(ClusterName::parse("_x").is_err());
        assert!(ClusterName::parse("x-").is_err());
        assert!(ClusterName::parse(&"c".repeat(64)).is_err());
    }

    #[test]
    fn cluster_keys_ignore_case_but_ids_keep_it() {
        let a = ClusterRef::parse("Sub1", "RG", "Cluster").unwrap();
        let b = ClusterRef::parse("sub1", "rg", "cluster").unwrap();
        assert_eq!(a.key(), b.key());
        assert!(
            a.id()
                .ends_with("/resourceGroups/RG/providers/Microsoft.Kubernetes/connectedClusters/Cluster")
        );
    }

    #[test]
    fn configuration_paths_accept_every_azure_cluster_type_and_nothing_else() {
        let path = |rp: &str, ty: &str| ClusterPath {
            subscription_id: "s".into(),
            resource_group_name: "rg".into(),
            cluster_rp: rp.into(),
            cluster_resource_name: ty.into(),
            cluster_name: "c1".into(),
        };
        let scope = ClusterScope::parse(&path("microsoft.containerservice", "MANAGEDCLUSTERS")).unwrap();
        assert_eq!(
            scope.id(),
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.ContainerService/managedClusters/c1"
        );
        let err = ClusterScope::parse(&path("Microsoft.Compute", "virtualMachines")).unwrap_err();
        assert_eq!(err.code(), "InvalidParameter");
    }

    proptest::proptest! {
        #[test]
        fn any_name_parses_or_is_refused_as_a_bad_parameter(text in "\\PC{0,100}|[a-zA-Z0-9._()-]{0,100}") {
            let results = [
                SubscriptionId::parse(&text).err(),
                ResourceGroupName::parse(&text).err(),
                ClusterName::parse(&text).err(),
                ConfigurationName::parse(&text).err(),
                ClusterRef::parse(&text, &text, &text).err(),
            ];
            for err in results.into_iter().flatten() {
                proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
            }
        }
    }
}
