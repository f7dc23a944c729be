//! `Fluxplane.Fleet`: resources over many clusters at once, at subscription or resource-group scope. Cluster
//! groups select clusters by their tags (`selector`, served by `groups`); policy assignments give every cluster
//! they select a Flux configuration rendered from a template (`template`, served by `assignments`); the compliance
//! summary counts their configurations' states (`summary`).

pub mod assignments;
pub mod cluster_compliance;
pub mod groups;
pub mod selector;
pub mod summary;
pub mod template;

use crate::arm::ids::{ClusterRef, ResourceGroupName, SubscriptionId};
use crate::arm::paging::PageRequest;
use crate::auth::{Caller, Role};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{ClusterScope, ClusterTags, ManagedWrite};

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
    pub fn clusters(&self) -> ClusterScope {
        match &self.resource_group {
            None => ClusterScope::Subscription {
                subscription_key: self.subscription.key(),
            },
            Some(group) => ClusterScope::ResourceGroup {
                subscription_key: self.subscription.key(),
                resource_group_key: group.key(),
            },
        }
    }
}

/// The cluster a fleet query found, as ARM addresses it (`subscription` as the caller spelled it).
pub fn cluster_ref(subscription: &str, cluster: &ClusterTags) -> ClusterRef {
    ClusterRef::parse(subscription, &cluster.resource_group, &cluster.name)
        .expect("stored names were validated when written")
}

/// What fleet writes tell the store: when the generations they write expire unless picked up.
pub fn managed_write(state: &AppState) -> ManagedWrite {
    ManagedWrite {
        generation_expires_at: chrono::Duration::from_std(state.config.pending_ttl)
            .ok()
            .map(|ttl| chrono::Utc::now() + ttl),
    }
}

/// Wakes the long-polls of every cluster of the scope: a fleet write may have changed any of their configurations
/// (PostgreSQL also wakes them through its notifications; the embedded store relies on this).
pub async fn wake(state: &AppState, scope: &ClusterScope) -> Result<(), ApiError> {
    for cluster in state.store.cluster_tags(scope).await? {
        state.notifier.notify(&cluster.key);
    }
    Ok(())
}

/// The scopes a list at `scope` reads for the caller, in key order: the scope itself, or, at a subscription the
/// caller may read only parts of, the resource groups it may read (as ARM lists them).
pub fn readable_scopes(caller: &Caller, scope: &FleetScope) -> Result<Vec<ClusterScope>, ApiError> {
    let whole = caller.require(Role::Reader, &scope.id());
    if whole.is_ok() {
        return Ok(vec![scope.clusters()]);
    }
    let subscription_key = scope.subscription.key();
    let mut groups = match scope.resource_group {
        None => caller.resource_groups_with(Role::Reader, scope.subscription.as_str()),
        Some(_) => Vec::new(),
    };
    if groups.is_empty() {
        return Err(whole.expect_err("checked above"));
    }
    // a group's keys all start with "{subscription}/{group}/": read in that order, pages continue across groups
    groups.sort_by_cached_key(|group| format!("{subscription_key}/{group}/"));
    Ok(groups
        .into_iter()
        .map(|resource_group_key| ClusterScope::ResourceGroup {
            subscription_key: subscription_key.clone(),
            resource_group_key,
        })
        .collect())
}

/// Up to `page.limit + 1` items of `scopes` in key order, after `page.after`: `fetch` reads one scope.
pub async fn list_scopes<T, F, Fut>(scopes: Vec<ClusterScope>, page: &PageRequest, fetch: F) -> Result<Vec<T>, ApiError>
where
    F: Fn(ClusterScope, PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, crate::store::StoreError>>,
{
    let wanted = page.limit as usize + 1;
    let mut items = Vec::with_capacity(wanted);
    for scope in scopes {
        let rest = PageRequest {
            after: page.after.clone(),
            // each read answers up to limit + 1
            limit: (wanted - items.len() - 1) as u32,
        };
        items.extend(fetch(scope, rest).await?);
        if items.len() >= wanted {
            break;
        }
    }
    items.truncate(wanted);
    Ok(items)
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
