//! The write rules of alert receivers: settings checked, the URL and signing key sealed with the server's key
//! (`vault`) in their row's place, written under optimistic concurrency. Both are write-only: a PUT that leaves them
//! out keeps the stored ones, unless the receiver's type changes (a Slack URL is no Teams webhook). A receiver that
//! rules send to cannot be deleted. The test action sends a message at once, within the receiver's rate limit, and
//! logs it with the receiver's deliveries.

use std::sync::Arc;

use chrono::Utc;

use super::model::{Message, RateLimit, ReceiverKind, ReceiverSpec, ReceiverUrl, SigningKey};
use super::outbox::{self, Sender};
use crate::arm::conditional::Preconditions;
use crate::arm::scope::FleetScope;
use crate::arm::system_data::SystemData;
use crate::arm::write::{Attempt, new_etag, retry};
use crate::error::{ApiError, ApiResult};
use crate::metrics::Metrics;
use crate::model::{AlertReceiverRecord, DeliveryRecord, GroupDelete, Write};
use crate::store::Store;
use crate::turns::Turns;
use crate::vault::Vault;

pub const TYPE_NAME: &str = "alertReceivers";

/// A receiver as a PUT asks for it, parsed: the URL and key only when given.
#[derive(Debug, Clone)]
pub struct ReceiverWrite {
    pub kind: ReceiverKind,
    pub url: Option<ReceiverUrl>,
    pub signing_key: Option<SigningKey>,
    pub rate_limit_per_minute: u32,
}

/// Writes alert receivers and sends their test messages.
#[derive(Clone)]
pub struct Receivers {
    store: Arc<dyn Store>,
    turns: Arc<Turns>,
    vault: Option<Arc<Vault>>,
    sender: Arc<Sender>,
    metrics: Arc<Metrics>,
}

impl Receivers {
    pub fn new(
        store: Arc<dyn Store>,
        turns: Arc<Turns>,
        vault: Option<Arc<Vault>>,
        sender: Arc<Sender>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            turns,
            vault,
            sender,
            metrics,
        }
    }

    /// Creates or replaces the receiver `name` of `scope`; true when it was created.
    pub async fn put(
        &self,
        subject: &str,
        scope: &FleetScope,
        name: &str,
        write: &ReceiverWrite,
        preconditions: &Preconditions,
    ) -> ApiResult<(AlertReceiverRecord, bool)> {
        let vault = self.vault.as_deref().ok_or_else(|| {
            ApiError::NotReady(
                "this server has no --secrets-key-file, which seals alert receivers' URLs and signing keys: give \
                 every replica the same key file to store receivers"
                    .to_owned(),
            )
        })?;
        let key = &scope.key(name);
        let capacity = RateLimit {
            per_minute: write.rate_limit_per_minute,
        }
        .capacity();
        let written = retry(
            &self.turns,
            &format!("{TYPE_NAME} {key}"),
            preconditions,
            move || async move {
                let current = self.store.get_alert_receiver(key).await?;
                preconditions.check(current.as_ref().map(|r| r.etag.as_str()))?;
                let kept = current.as_ref().filter(|c| c.spec.kind == write.kind);
                let (sealed_url, url_host) = match (&write.url, kept) {
                    (Some(url), _) => (
                        vault.seal(&AlertReceiverRecord::url_place(key), url.as_str().as_bytes()),
                        url.host(),
                    ),
                    (None, Some(kept)) => (kept.sealed_url.clone(), kept.spec.url_host.clone()),
                    (None, None) => {
                        let why = if current.is_some() {
                            "the receiver's type changes: give the URL of the new type's webhook"
                        } else {
                            "required: where the receiver's messages go (write-only, never answered)"
                        };
                        return Err(ApiError::invalid("properties.url", format!("properties.url: {why}")));
                    }
                };
                let sealed_signing_key = match (write.kind.signs(), &write.signing_key) {
                    (false, _) => None,
                    (true, Some(signing_key)) => Some(vault.seal(
                        &AlertReceiverRecord::signing_key_place(key),
                        signing_key.as_bytes(),
                    )),
                    (true, None) => match kept.and_then(|k| k.sealed_signing_key.clone()) {
                        Some(sealed) => Some(sealed),
                        None => {
                            return Err(ApiError::invalid(
                                "properties.signingKey",
                                "properties.signingKey: required for a Webhook receiver, which signs every message \
                                 with it (HMAC-SHA256): 32 to 256 printable characters, write-only",
                            ));
                        }
                    },
                };
                let spec = ReceiverSpec {
                    kind: write.kind,
                    url_host,
                    rate_limit_per_minute: write.rate_limit_per_minute,
                };
                let now = Utc::now();
                let (record, created, outcome) = match current {
                    None => {
                        let record = AlertReceiverRecord {
                            id: 0,
                            key: key.to_owned(),
                            subscription_key: scope.subscription.key(),
                            resource_group_key: scope.resource_group.as_ref().map(|g| g.key()).unwrap_or_default(),
                            subscription: scope.subscription.as_str().to_owned(),
                            resource_group: scope.resource_group.as_ref().map(|g| g.as_str().to_owned()),
                            name: name.to_owned(),
                            spec,
                            sealed_url,
                            sealed_signing_key,
                            etag: new_etag(),
                            system_data: SystemData::created(subject, now),
                            tokens: capacity,
                            tokens_at: now,
                            dropped: 0,
                            dropped_at: None,
                        };
                        let outcome = self.store.insert_alert_receiver(&record).await?;
                        (record, true, outcome)
                    }
                    Some(current) => {
                        let expected = current.etag.clone();
                        let record = AlertReceiverRecord {
                            spec,
                            sealed_url,
                            sealed_signing_key,
                            etag: new_etag(),
                            system_data: current.system_data.modified(subject, now),
                            tokens: capacity,
                            ..current
                        };
                        let outcome = self.store.update_alert_receiver(&record, &expected).await?;
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
        // the host only: the URL's path and query are a webhook's secret
        tracing::info!(
            receiver = %scope.resource_id(TYPE_NAME, name),
            kind = ?write.kind,
            host = %written.0.spec.url_host,
            "alert receiver written"
        );
        Ok(written)
    }

    /// Deletes the receiver and its delivery log; false when there was none, 409 while rules send to it.
    pub async fn delete(&self, scope: &FleetScope, name: &str) -> ApiResult<bool> {
        match self.store.delete_alert_receiver(&scope.key(name)).await? {
            GroupDelete::Deleted => {
                tracing::info!(receiver = %scope.resource_id(TYPE_NAME, name), "alert receiver deleted");
                Ok(true)
            }
            GroupDelete::Missing => Ok(false),
            GroupDelete::InUse => Err(ApiError::Conflict(format!(
                "alert rules send to the receiver '{name}': delete them or point them elsewhere first"
            ))),
        }
    }

    /// Sends a test message to the receiver now, once (no retry), within its rate limit (429 past it); answers
    /// the delivery as recorded, `None` when there is no such receiver.
    pub async fn test(&self, scope: &FleetScope, name: &str) -> ApiResult<Option<DeliveryRecord>> {
        let Some(receiver) = self.store.get_alert_receiver(&scope.key(name)).await? else {
            return Ok(None);
        };
        let now = Utc::now();
        let message = Message::test(&receiver.arm_id(), now);
        let delivery = match self
            .store
            .claim_test_delivery(receiver.id, &message, now, self.sender.lease_until(now))
            .await?
        {
            Ok(delivery) => delivery,
            Err(wait) => {
                let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
                return Err(ApiError::TooManyRequests {
                    message: format!(
                        "the receiver '{name}' is at its rate limit ({} messages a minute): try again in {seconds} s",
                        receiver.spec.rate_limit_per_minute
                    ),
                    retry_after: seconds,
                });
            }
        };
        let attempted = self.sender.attempt(&receiver, &delivery).await;
        let mut outcome = self.sender.outcome(&delivery, &attempted, Utc::now());
        if outcome.state == crate::lifecycle::DeliveryState::Pending {
            // a test is sent once: what would be retried is its answer
            outcome.state = crate::lifecycle::DeliveryState::Failed;
            outcome.due_at = Utc::now();
        }
        outbox::record(&*self.store, &self.metrics, &receiver, &delivery, &attempted, &outcome).await;
        Ok(Some(DeliveryRecord {
            state: outcome.state,
            due_at: outcome.due_at,
            last_status_code: outcome.status_code,
            last_error: outcome.error,
            finished_at: Some(outcome.due_at),
            ..delivery
        }))
    }
}
