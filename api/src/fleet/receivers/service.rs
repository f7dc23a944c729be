//! The write rules of Git receivers and what a verified push does.
//!
//! A receiver's secret is write-only: sealed by the server's vault for the receiver's key before it is stored, never
//! answered or logged, replaced only by a write that brings one (a write without keeps it, so that reading a receiver
//! and writing it back works). Its webhook's path is random and never changes. A push asks the configurations of the
//! receiver's scope whose Git source is the receiver's repository, and whose reference it moves (`model::concerns`),
//! to re-check their source at once; the store records that and the receiver's last push in one transaction.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

use super::model::{GitReceiverSpec, LastPush, Push, concerns, validate_secret};
use crate::arm::conditional::Preconditions;
use crate::arm::scope::FleetScope;
use crate::arm::system_data::SystemData;
use crate::arm::write::{Attempt, new_etag, retry};
use crate::error::{ApiError, ApiResult, Problems};
use crate::fleet::breaker::repository_key;
use crate::lifecycle::{reconcile_requested, reconcile_requested_text};
use crate::model::{GitReceiverRecord, ReconcileTarget, Write};
use crate::store::Store;
use crate::turns::Turns;
use crate::vault::Vault;

pub const TYPE_NAME: &str = "gitReceivers";
pub const TYPE: &str = "Fluxplane.Fleet/gitReceivers";

/// Random bytes of a webhook's path segment: unguessable, so that the webhooks cannot be listed by trying.
const HOOK_ID_BYTES: usize = 24;
/// Characters of a hook id: its bytes in URL-safe base64 without padding.
pub const HOOK_ID_CHARS: usize = HOOK_ID_BYTES * 4 / 3;

/// Writes Git receivers and acts on their pushes.
#[derive(Clone)]
pub struct GitReceivers {
    store: Arc<dyn Store>,
    turns: Arc<Turns>,
    vault: Option<Arc<Vault>>,
}

/// Where a receiver's secret is sealed: the vault binds it to the receiver's key.
fn secret_place(key: &str) -> String {
    format!("{TYPE}/{key}#secret")
}

impl GitReceivers {
    pub fn new(store: Arc<dyn Store>, turns: Arc<Turns>, vault: Option<Arc<Vault>>) -> Self {
        Self { store, turns, vault }
    }

    fn vault(&self) -> ApiResult<&Vault> {
        self.vault.as_deref().ok_or_else(|| {
            ApiError::Conflict(
                "this server has no key to seal a receiver's secret with: start it with --secrets-key-file (every \
                 replica with the same file)"
                    .into(),
            )
        })
    }

    /// Creates or replaces the receiver `name` of `scope`; `secret` is required to create one and replaces the
    /// kept one when given. True when it was created.
    pub async fn put(
        &self,
        subject: &str,
        scope: &FleetScope,
        name: &str,
        spec: &GitReceiverSpec,
        secret: Option<&str>,
        preconditions: &Preconditions,
    ) -> ApiResult<(GitReceiverRecord, bool)> {
        let mut problems = Problems::default();
        spec.validate(&mut problems);
        if let Some(secret) = secret {
            validate_secret(secret, &mut problems);
        }
        problems.into_result("Git receiver", Some("properties"))?;
        let vault = self.vault()?;
        let key = &scope.key(name);
        let spec = GitReceiverSpec {
            repository_url: spec.repository_url.trim().to_owned(),
            ..spec.clone()
        };
        let spec = &spec;
        let sealed = secret.map(|secret| vault.seal(&secret_place(key), secret.as_bytes()));
        let sealed = &sealed;
        let written = retry(
            &self.turns,
            &format!("{TYPE_NAME} {key}"),
            preconditions,
            move || async move {
                let current = self.store.get_git_receiver(key).await?;
                preconditions.check(current.as_ref().map(|r| r.etag.as_str()))?;
                let now = Utc::now();
                let (record, created, outcome) = match current {
                    None => {
                        let Some(sealed) = sealed.clone() else {
                            return Err(ApiError::invalid(
                                "properties.secret",
                                "a new receiver needs a secret: the one its Git host signs or authenticates with",
                            ));
                        };
                        let mut hook = [0u8; HOOK_ID_BYTES];
                        rand::fill(&mut hook);
                        let record = GitReceiverRecord {
                            id: 0,
                            key: key.to_owned(),
                            subscription_key: scope.subscription.key(),
                            resource_group_key: scope.resource_group.as_ref().map(|g| g.key()).unwrap_or_default(),
                            subscription: scope.subscription.as_str().to_owned(),
                            resource_group: scope.resource_group.as_ref().map(|g| g.as_str().to_owned()),
                            name: name.to_owned(),
                            spec: spec.clone(),
                            hook_id: URL_SAFE_NO_PAD.encode(hook),
                            sealed_secret: sealed,
                            etag: new_etag(),
                            system_data: SystemData::created(subject, now),
                            last_push: None,
                        };
                        let outcome = self.store.insert_git_receiver(&record).await?;
                        (record, true, outcome)
                    }
                    Some(current) => {
                        let expected = current.etag.clone();
                        let record = GitReceiverRecord {
                            spec: spec.clone(),
                            sealed_secret: sealed.clone().unwrap_or_else(|| current.sealed_secret.clone()),
                            etag: new_etag(),
                            system_data: current.system_data.modified(subject, now),
                            ..current
                        };
                        let outcome = self.store.update_git_receiver(&record, &expected).await?;
                        (record, false, outcome)
                    }
                };
                Ok(match outcome {
                    Write::Written => Attempt::Done((record, created)),
                    Write::Conflict | Write::ParentMissing => Attempt::Lost,
                })
            },
        )
        .await?;
        tracing::info!(receiver = %scope.resource_id(TYPE_NAME, name), host = spec.host_type.as_str(), "Git receiver written");
        Ok(written)
    }

    /// Deletes the receiver; false when there was none. Its webhook answers 404 from then on.
    pub async fn delete(&self, scope: &FleetScope, name: &str) -> ApiResult<bool> {
        let deleted = self.store.delete_git_receiver(&scope.key(name)).await?;
        if deleted {
            tracing::info!(receiver = %scope.resource_id(TYPE_NAME, name), "Git receiver deleted");
        }
        Ok(deleted)
    }

    /// The receiver's secret, opened. A server that lost its key (or was given another) cannot check deliveries:
    /// logged, and answered as unavailable rather than as a refusal that would blame the sender.
    pub fn secret(&self, receiver: &GitReceiverRecord) -> ApiResult<Vec<u8>> {
        let unavailable = |why: &str| {
            tracing::error!(receiver = %receiver.key, why, "a Git receiver's secret cannot be opened");
            ApiError::NotReady("this receiver cannot check deliveries now".into())
        };
        let vault = self
            .vault
            .as_deref()
            .ok_or_else(|| unavailable("no --secrets-key-file"))?;
        vault
            .open(&secret_place(&receiver.key), &receiver.sealed_secret)
            .map_err(|err| unavailable(&err.to_string()))
    }

    /// Asks the configurations a verified push concerns to re-check their source at once, and records the push as
    /// the receiver's last. Answers how many were asked.
    pub async fn push(&self, receiver: &GitReceiverRecord, push: &Push, now: DateTime<Utc>) -> ApiResult<u64> {
        let scope = receiver.scope()?;
        let repository = repository_key(&receiver.spec.repository_url);
        let sources = self
            .store
            .git_sources(&scope.clusters(), &receiver.spec.repository_name())
            .await?;
        let ids: Vec<i64> = sources
            .iter()
            .filter(|s| repository_key(&s.url) == repository && concerns(&s.reference, push))
            .map(|s| s.configuration_id)
            .collect();
        let at = reconcile_requested(now);
        let last = LastPush {
            received_at: reconcile_requested_text(at),
            refs: push.ref_names(),
            commit: push.refs.first().and_then(|r| r.commit.clone()),
            configurations: 0,
        };
        let asked = self
            .store
            .request_reconcile(ReconcileTarget::Configurations(&ids), at, Some((receiver.id, &last)))
            .await?;
        tracing::info!(receiver = %receiver.key, refs = ?last.refs, configurations = asked, "push received: sources re-checked at once");
        Ok(asked)
    }
}

impl GitReceiverRecord {
    /// The receiver's scope as stored.
    pub fn scope(&self) -> ApiResult<FleetScope> {
        FleetScope::parse(&self.subscription, self.resource_group.as_deref())
            .map_err(|_| ApiError::Internal(anyhow::anyhow!("a stored Git receiver has an invalid scope")))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::arm::ids::ClusterRef;
    use crate::clusters::service::ClusterDraft;
    use crate::fleet::assignments::model::{PolicyAssignmentRequest, render};
    use crate::fleet::receivers::model::{HostType, PushedRef};
    use crate::on_both_backends;
    use crate::testing::{Backend, Services, with_database};

    async fn cluster(services: &Services, resource_group: &str, name: &str) -> i64 {
        let draft = ClusterDraft::new(
            "westeurope".into(),
            BTreeMap::from([("env".into(), "prod".into())]),
            serde_json::from_value(json!({"properties": {"agentPublicKeyCertificate": "a2V5"}})).unwrap(),
        )
        .unwrap();
        let cluster = ClusterRef::parse("sub", resource_group, name).unwrap();
        services
            .clusters
            .put(
                "alice",
                &cluster,
                &draft,
                &Preconditions::default(),
                crate::arm::ApiVersion::newest(),
            )
            .await
            .unwrap();
        let store = services.git_receivers.store.clone();
        store.get_cluster(&cluster.key()).await.unwrap().unwrap().id
    }

    async fn assign(services: &Services, name: &str, branch: &str) {
        let request: PolicyAssignmentRequest = serde_json::from_value(json!({"properties": {
            "selector": {"matchLabels": {"env": "prod"}},
            "configurationName": name,
            "configurationTemplate": {
                "gitRepository": {"url": "https://example.com/org/fleet.git", "repositoryRef": {"branch": branch}},
                "kustomizations": {"infra": {"path": "./infra"}}
            }
        }}))
        .unwrap();
        let scope = FleetScope::parse("sub", None).unwrap();
        let rendered = render(&request.properties).unwrap();
        services
            .assignments
            .put(
                "owner",
                &scope,
                name,
                &request.properties,
                &rendered,
                &Preconditions::default(),
            )
            .await
            .unwrap();
    }

    on_both_backends!(
        a_receivers_secret_is_sealed_and_kept_and_its_push_asks_the_configurations_of_its_scope_and_ref,
        receiver_case
    );
    async fn receiver_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            let here = cluster(&services, "rg", "here").await;
            let elsewhere = cluster(&services, "other", "elsewhere").await;
            assign(&services, "baseline", "main").await;
            assign(&services, "edge", "edge").await;

            let scope = FleetScope::parse("sub", Some("rg")).unwrap();
            let spec = GitReceiverSpec {
                repository_url: "git@example.com:org/fleet.git".into(),
                host_type: HostType::GitHub,
            };
            let any = Preconditions::default();
            let refused = services
                .git_receivers
                .put("alice", &scope, "fleet", &spec, None, &any)
                .await
                .unwrap_err();
            assert_eq!(
                refused.status(),
                axum::http::StatusCode::BAD_REQUEST,
                "a new receiver needs a secret"
            );
            let secret = "a-long-random-secret-0123456789";
            let (first, created) = services
                .git_receivers
                .put("alice", &scope, "fleet", &spec, Some(secret), &any)
                .await
                .unwrap();
            assert!(created);
            assert!(!first.sealed_secret.contains(secret), "sealed, not kept in the clear");
            assert_eq!(first.hook_id.len(), 32);
            let (second, created) = services
                .git_receivers
                .put("bob", &scope, "fleet", &spec, None, &any)
                .await
                .unwrap();
            assert!(!created);
            assert_eq!(second.hook_id, first.hook_id, "the webhook's URL never changes");
            assert_eq!(
                services.git_receivers.secret(&second).unwrap(),
                secret.as_bytes(),
                "a write without a secret keeps the one it had"
            );

            let push = Push {
                repositories: vec!["https://example.com/org/fleet".into()],
                refs: vec![PushedRef {
                    name: "refs/heads/main".into(),
                    commit: Some("0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".into()),
                }],
            };
            let now = Utc::now();
            let asked = services.git_receivers.push(&second, &push, now).await.unwrap();
            assert_eq!(
                asked, 1,
                "the configuration on main, of the receiver's resource group only"
            );
            let requested = |cluster: i64, name: &'static str| {
                let store = store.clone();
                async move {
                    store
                        .get_configuration(cluster, name)
                        .await
                        .unwrap()
                        .unwrap()
                        .reconcile_requested_at
                }
            };
            assert_eq!(requested(here, "baseline").await, Some(reconcile_requested(now)));
            assert_eq!(requested(here, "edge").await, None, "another branch");
            assert_eq!(requested(elsewhere, "baseline").await, None, "another resource group");
            let last = store
                .get_git_receiver(&second.key)
                .await
                .unwrap()
                .unwrap()
                .last_push
                .unwrap();
            assert_eq!(last.refs, ["refs/heads/main"]);
            assert_eq!(last.configurations, 1);
            assert_eq!(last.commit.as_deref(), Some("0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c"));

            let fleet = FleetScope::parse("sub", None).unwrap();
            let (_, asked) = services
                .assignments
                .request_reconcile("carol", &fleet, "edge")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(asked, 2, "every configuration the assignment manages");
            assert!(requested(elsewhere, "edge").await.is_some());
            assert!(
                services
                    .assignments
                    .request_reconcile("carol", &fleet, "none")
                    .await
                    .unwrap()
                    .is_none()
            );

            assert!(services.git_receivers.delete(&scope, "fleet").await.unwrap());
            assert!(store.git_receiver_by_hook(&first.hook_id).await.unwrap().is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn a_server_without_a_secrets_key_refuses_receivers_clearly() {
        let db = crate::testing::TestDatabase::create(Backend::Sqlite).await.unwrap();
        let store = db.store().await;
        let receivers = GitReceivers::new(store, Arc::default(), None);
        let spec = GitReceiverSpec {
            repository_url: "https://github.com/org/fleet".into(),
            host_type: HostType::Generic,
        };
        let refused = receivers
            .put(
                "alice",
                &FleetScope::parse("sub", None).unwrap(),
                "fleet",
                &spec,
                Some("a-long-random-secret-0123456789"),
                &Preconditions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), "Conflict");
        assert!(refused.to_string().contains("--secrets-key-file"));
    }
}
