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
                    (true, Some(signing_key)) => {
                        Some(vault.seal(&AlertReceiverRecord::signing_key_place(key), signing_key.as_bytes()))
                    }
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
            None => return Ok(None),
            Some(Ok(delivery)) => delivery,
            Some(Err(wait)) => {
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
        let attempted = self.sender.attempt(&self.sender.open(&receiver), &delivery).await;
        let mut outcome = self.sender.outcome(&delivery, &attempted, Utc::now());
        if outcome.state == crate::lifecycle::DeliveryState::Pending {
            // a test is sent once: what would be retried is its answer
            outcome.state = crate::lifecycle::DeliveryState::Failed;
            outcome.due_at = Utc::now();
        }
        let at = Utc::now();
        let recorded = outbox::Recorded {
            receiver: Arc::new(receiver),
            delivery: delivery.clone(),
            attempted: Some(attempted),
            outcome: outcome.clone(),
            at,
        };
        outbox::record(&*self.store, &self.metrics, std::slice::from_ref(&recorded)).await;
        Ok(Some(DeliveryRecord {
            last_attempt_at: Some(at),
            state: outcome.state,
            due_at: outcome.due_at,
            last_status_code: outcome.status_code,
            last_error: outcome.error,
            finished_at: Some(outcome.due_at),
            ..delivery
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use axum::http::HeaderMap;

    use super::*;
    use crate::alerts::message::{SIGNATURE_HEADER, TIMESTAMP_HEADER, signature};
    use crate::lifecycle::DeliveryState;
    use crate::on_both_backends;
    use crate::testing::{Backend, test_config, with_database};

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    /// What a test receiver was sent: each request's headers and body.
    type Seen = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

    /// A receiver on port 0 answering `status`, keeping what it was sent.
    async fn listening(status: u16) -> (String, Seen) {
        let seen: Seen = Arc::default();
        let kept = seen.clone();
        let app = axum::Router::new().route(
            "/{*path}",
            axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
                let kept = kept.clone();
                async move {
                    kept.lock().unwrap().push((headers, body.to_vec()));
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        (format!("http://{address}/hooks/T0/SECRET-PATH"), seen)
    }

    fn receivers(store: Arc<dyn Store>, vault: Option<Arc<Vault>>) -> Receivers {
        let dir = tempfile::tempdir().unwrap();
        let config = test_config(dir.path(), "sqlite::memory:");
        let sender = Arc::new(Sender::new(&config, vault.clone()).unwrap());
        Receivers::new(store, Arc::default(), vault, sender, Arc::default())
    }

    fn webhook(url: Option<&str>, key: Option<&str>) -> ReceiverWrite {
        ReceiverWrite {
            kind: ReceiverKind::Webhook,
            url: url.map(|u| ReceiverUrl::parse(u).unwrap()),
            signing_key: key.map(|k| SigningKey::parse(k).unwrap()),
            rate_limit_per_minute: 60,
        }
    }

    on_both_backends!(
        a_receiver_keeps_its_credentials_sealed_and_write_only_and_its_test_message_is_signed,
        receiver_case
    );
    async fn receiver_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let vault = Arc::new(Vault::from_key(&[3u8; 32]).unwrap());
            let service = receivers(store.clone(), Some(vault.clone()));
            let scope = FleetScope::parse("sub", None).unwrap();
            let any = Preconditions::default();
            let (url, seen) = listening(204).await;

            let refused = service
                .put("owner", &scope, "ops", &webhook(None, Some(KEY)), &any)
                .await
                .unwrap_err();
            assert_eq!(refused.code(), "InvalidParameter", "a new receiver needs its URL");
            let refused = service
                .put("owner", &scope, "ops", &webhook(Some(&url), None), &any)
                .await
                .unwrap_err();
            assert!(refused.to_string().contains("signingKey"), "{refused}");
            assert!(
                store.get_alert_receiver("sub/ops").await.unwrap().is_none(),
                "refused writes change nothing"
            );

            let (created, new) = service
                .put("owner", &scope, "ops", &webhook(Some(&url), Some(KEY)), &any)
                .await
                .unwrap();
            assert!(new);
            assert!(created.spec.url_host.starts_with("127.0.0.1:"));
            assert!(!created.sealed_url.contains("SECRET"), "sealed at rest");
            let opened = vault
                .open(&AlertReceiverRecord::url_place("sub/ops"), &created.sealed_url)
                .unwrap();
            assert_eq!(opened, url.as_bytes());
            // a PUT without the write-only fields keeps them
            let (kept, new) = service
                .put("owner", &scope, "ops", &webhook(None, None), &any)
                .await
                .unwrap();
            assert!(!new);
            assert_eq!(
                (kept.sealed_url.clone(), kept.sealed_signing_key.clone()),
                (created.sealed_url, created.sealed_signing_key)
            );
            // another type needs its own URL, and drops the key
            let slack = ReceiverWrite {
                kind: ReceiverKind::Slack,
                ..webhook(None, None)
            };
            let refused = service.put("owner", &scope, "ops", &slack, &any).await.unwrap_err();
            assert!(refused.to_string().contains("type changes"), "{refused}");

            let delivery = service.test(&scope, "ops").await.unwrap().unwrap();
            assert_eq!(
                (delivery.state, delivery.last_status_code),
                (DeliveryState::Delivered, Some(204))
            );
            let (headers, body) = seen.lock().unwrap().pop().unwrap();
            let timestamp: i64 = headers[TIMESTAMP_HEADER].to_str().unwrap().parse().unwrap();
            assert!((Utc::now().timestamp() - timestamp).abs() < 60);
            assert_eq!(
                headers[SIGNATURE_HEADER].to_str().unwrap(),
                signature(KEY.as_bytes(), timestamp, &body),
                "signed with the receiver's key over its timestamp and body"
            );
            let sent: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(sent["type"], "Test");
            let log = store.list_deliveries(kept.id, None, 10).await.unwrap();
            assert_eq!(
                log[0].state,
                DeliveryState::Delivered,
                "the test is in the delivery log"
            );
            assert!(service.test(&scope, "none").await.unwrap().is_none());

            // a refusing receiver: the test answers what happened, and the error never holds the URL
            let (refusing, _) = listening(404).await;
            service
                .put("owner", &scope, "ops", &webhook(Some(&refusing), None), &any)
                .await
                .unwrap();
            let failed = service.test(&scope, "ops").await.unwrap().unwrap();
            assert_eq!(
                (failed.state, failed.last_status_code),
                (DeliveryState::Failed, Some(404))
            );
            assert!(!failed.last_error.unwrap().contains("SECRET"));

            // at most the rate limit's bucket at once
            let tight = ReceiverWrite {
                rate_limit_per_minute: 1,
                ..webhook(None, None)
            };
            service.put("owner", &scope, "ops", &tight, &any).await.unwrap();
            service.test(&scope, "ops").await.unwrap();
            let limited = service.test(&scope, "ops").await.unwrap_err();
            assert_eq!(limited.status(), axum::http::StatusCode::TOO_MANY_REQUESTS);

            assert!(service.delete(&scope, "ops").await.unwrap());
            assert!(!service.delete(&scope, "ops").await.unwrap());

            let keyless = receivers(store.clone(), None);
            let refused = keyless
                .put("owner", &scope, "ops", &webhook(Some(&url), Some(KEY)), &any)
                .await
                .unwrap_err();
            assert_eq!(refused.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        })
        .await;
    }
}
