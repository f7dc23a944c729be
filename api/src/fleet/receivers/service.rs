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
