//! Where resources live and which clusters a read covers: the scope of a fleet resource (a subscription or one of
//! its resource groups) and the set of clusters inside a scope.

use crate::arm::ids::{ResourceGroupName, SubscriptionId};
use crate::error::ApiError;

/// The resource provider namespace of fleet resources.
pub const PROVIDER: &str = "Fluxplane.Fleet";

/// Where a fleet resource lives: a subscription, or one of its resource groups. It only ever sees the clusters
/// inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetScope {
    pub subscription: SubscriptionId,
    pub resource_group: Option<ResourceGroupName>,
}

impl FleetScope {
    /// ARM's 404 for the resource `name` of the type `type_` (`Fluxplane.Fleet/clusterGroups`) in this scope.
    pub fn not_found(&self, type_: &str, name: &str) -> ApiError {
        ApiError::ResourceNotFound(format!(
            "The Resource '{type_}/{name}' under '{}' was not found.",
            self.id()
        ))
    }

    pub fn parse(subscription: &str, resource_group: Option<&str>) -> Result<Self, ApiError> {
        Ok(Self {
            subscription: SubscriptionId::parse(subscription)?,
            resource_group: resource_group.map(ResourceGroupName::parse).transpose()?,
        })
    }

    /// The scope's ARM id: `/subscriptions/{s}` or `/subscriptions/{s}/resourceGroups/{rg}`.
    pub fn id(&self) -> String {
        match &self.resource_group {
            None => format!("/subscriptions/{}", self.subscription.as_str()),
            Some(group) => format!(
                "/subscriptions/{}/resourceGroups/{}",
                self.subscription.as_str(),
                group.as_str()
            ),
        }
    }

    /// The ARM id of the resource `name` of `type_` (e.g. `clusterGroups`) in this scope.
    pub fn resource_id(&self, type_: &str, name: &str) -> String {
        format!("{}/providers/{PROVIDER}/{type_}/{name}", self.id())
    }

    /// The store key of the resource `name` in this scope: lower-cased, as ARM names are case-insensitive.
    pub fn key(&self, name: &str) -> String {
        match &self.resource_group {
            None => format!("{}/{}", self.subscription.key(), name.to_ascii_lowercase()),
            Some(group) => format!(
                "{}/{}/{}",
                self.subscription.key(),
                group.key(),
                name.to_ascii_lowercase()
            ),
        }
    }

    /// Reads the ARM id of a fleet resource of type `type_` (e.g. `clusterGroups`): its scope and name. `None` if it
    /// is not one; a scope that is not valid is the parse error of its part.
    pub fn parse_resource_id<'a>(id: &'a str, type_: &str) -> Option<Result<(Self, &'a str), ApiError>> {
        let segments: Vec<&str> = id.trim_matches('/').split('/').collect();
        let (subscription, resource_group, rest) = match segments.as_slice() {
            ["subscriptions", s, "resourceGroups" | "resourcegroups", rg, rest @ ..] => (*s, Some(*rg), rest),
            ["subscriptions", s, rest @ ..] => (*s, None, rest),
            _ => return None,
        };
        match rest {
            ["providers", provider, kind, name]
                if provider.eq_ignore_ascii_case(PROVIDER) && kind.eq_ignore_ascii_case(type_) =>
            {
                Some(Self::parse(subscription, resource_group).map(|scope| (scope, *name)))
            }
            _ => None,
        }
    }

    /// The clusters the scope holds.
    pub fn clusters(&self) -> ClusterSet {
        match &self.resource_group {
            None => ClusterSet::Subscription {
                subscription_key: self.subscription.key(),
            },
            Some(group) => ClusterSet::ResourceGroup {
                subscription_key: self.subscription.key(),
                resource_group_key: group.key(),
            },
        }
    }
}

/// Which clusters a list covers.
#[derive(Debug, Clone)]
pub enum ClusterSet {
    Subscription {
        subscription_key: String,
    },
    ResourceGroup {
        subscription_key: String,
        resource_group_key: String,
    },
}

impl ClusterSet {
    /// The subscription key and the resource group key, empty at subscription scope.
    pub fn keys(&self) -> (&str, &str) {
        match self {
            Self::Subscription { subscription_key } => (subscription_key, ""),
            Self::ResourceGroup {
                subscription_key,
                resource_group_key,
            } => (subscription_key, resource_group_key),
        }
    }
}

/// The name of a fleet resource: 1-63 letters, digits, '-', '_' or '.', starting and ending with a letter or
/// digit.
pub fn parse_name(target: &str, value: &str) -> Result<String, ApiError> {
    let bytes = value.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if valid {
        Ok(value.to_owned())
    } else {
        Err(ApiError::invalid(
            target,
            format!(
                "'{value}' is not a valid {target}: use 1-63 letters, digits, '-', '_' or '.', starting and ending \
                 with a letter or digit"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_name_their_resources_and_clusters() {
        let subscription = FleetScope::parse("Sub1", None).unwrap();
        assert_eq!(
            subscription.resource_id("clusterGroups", "Prod"),
            "/subscriptions/Sub1/providers/Fluxplane.Fleet/clusterGroups/Prod"
        );
        assert_eq!(subscription.key("Prod"), "sub1/prod");
        let group = FleetScope::parse("Sub1", Some("RG")).unwrap();
        assert_eq!(
            group.resource_id("clusterGroups", "prod"),
            "/subscriptions/Sub1/resourceGroups/RG/providers/Fluxplane.Fleet/clusterGroups/prod"
        );
        assert_eq!(group.key("prod"), "sub1/rg/prod");
        assert_eq!(group.clusters().keys(), ("sub1", "rg"));
        assert!(FleetScope::parse("Sub1", Some("bad/")).is_err());
        assert!(parse_name("clusterGroupName", "-x").is_err());
        assert!(parse_name("clusterGroupName", "eu.prod_1").is_ok());
    }
}
