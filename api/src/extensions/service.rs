//! The write rules of cluster extensions: each write is a new generation with its operation, decided by the same
//! lifecycle as a configuration's (`lifecycle::written`, `deleting`, `secrets`) and written under optimistic
//! concurrency; its protected settings are sealed to the cluster's agent on the way. A cluster holds one extension
//! of a type; a deletion is a generation the agent completes, unless forced.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use fluxplane_agent_protocol::agent::{SecretsChange, extension_sealing_name};
use fluxplane_agent_protocol::flux::ComplianceState;
use fluxplane_agent_protocol::sealing::{self, Envelope};

use super::model::{ExtensionPropertiesRequest, ExtensionSpec, IdentityRequest, normalize};
use crate::arm::conditional::Preconditions;
use crate::arm::ids::{ClusterScope, ExtensionName};
use crate::arm::system_data::SystemData;
use crate::arm::write::{Attempt, contention, new_etag, retry};
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::{self, Lifetimes, OperationState, ProvisioningState, SecretsInput, SecretsStep};
use crate::model::{ClusterRecord, ExtensionRecord, OperationRecord, Write};
use crate::store::Store;
use crate::turns::Turns;

/// An extension a request addresses, with the registered cluster it hangs under.
#[derive(Debug, Clone)]
pub struct Target {
    pub scope: ClusterScope,
    pub name: ExtensionName,
    pub cluster: ClusterRecord,
}

impl Target {
    pub fn id(&self) -> String {
        self.scope.extension_id(self.name.as_str())
    }

    /// The key the extension's operations are filed under: the cluster's, then `extensions/{name}`.
    pub fn resource_key(&self) -> String {
        resource_key(&self.cluster.key, self.name.as_str())
    }
}

/// The key an extension's operations are filed under (configurations' are `{cluster key}/{name}`, and their names
/// hold no `/`).
pub fn resource_key(cluster_key: &str, name: &str) -> String {
    format!("{cluster_key}/extensions/{name}")
}

/// What a write brings: the properties (protected settings apart), the identity if given, and the protected
/// settings if given. Its `Debug` output names the protected settings' keys only.
#[derive(Clone, Default)]
pub struct Draft {
    pub properties: ExtensionPropertiesRequest,
    /// `None`: not given; `Some(None)`: `null`.
    pub identity: Option<Option<IdentityRequest>>,
    pub protected: Option<BTreeMap<String, String>>,
}

impl std::fmt::Debug for Draft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Draft")
            .field("properties", &self.properties)
            .field("identity", &self.identity)
            .field(
                "protected",
                &self
                    .protected
                    .as_ref()
                    .map(|p| p.keys().map(|k| (k, "<redacted>")).collect::<Vec<_>>()),
            )
            .finish()
    }
}

/// What an accepted write answers.
#[derive(Debug, Clone)]
pub struct Written {
    pub record: ExtensionRecord,
    pub operation: OperationRecord,
    pub created: bool,
}

/// What a deletion came to.
#[derive(Debug, Clone)]
pub enum Deletion {
    Deleted,
    Missing,
    Started(Box<OperationRecord>),
}

/// Writes cluster extensions.
#[derive(Clone)]
pub struct Extensions {
    store: Arc<dyn Store>,
    turns: Arc<Turns>,
    lifetimes: Lifetimes,
}

impl Extensions {
    pub fn new(store: Arc<dyn Store>, turns: Arc<Turns>, lifetimes: Lifetimes) -> Self {
        Self {
            store,
            turns,
            lifetimes,
        }
    }

    /// The extension `name` of the cluster `scope` addresses, which must be registered.
    pub async fn target(&self, scope: ClusterScope, name: ExtensionName) -> ApiResult<Target> {
        let cluster = self
            .store
            .get_cluster(&scope.cluster.key())
            .await?
            .ok_or_else(|| crate::flux::service::parent_not_found(&scope))?;
        Ok(Target {
            scope: scope.as_registered(&cluster.subscription, &cluster.resource_group, &cluster.name),
            name,
            cluster,
        })
    }

    /// Creates the extension or replaces its writable properties (and its protected settings: none given, none
    /// kept).
    pub async fn put(
        &self,
        subject: &str,
        target: &Target,
        draft: &Draft,
        preconditions: &Preconditions,
    ) -> ApiResult<Written> {
        let input = if draft.protected.is_some() {
            SecretsInput::Replace
        } else {
            SecretsInput::ReplaceWithNone
        };
        let written = retry(&self.turns, &turn(target), preconditions, move || async move {
            let current = self
                .store
                .get_extension(target.cluster.id, target.name.as_str())
                .await?;
            preconditions.check(current.as_ref().map(|c| c.etag.as_str()))?;
            if current
                .as_ref()
                .is_some_and(|c| c.provisioning_state == ProvisioningState::Deleting)
            {
                return Err(being_deleted(target));
            }
            let spec = normalize(
                draft.properties.clone(),
                draft.identity.clone(),
                current.as_ref().map(|c| &c.spec),
            )?;
            if current.is_none() {
                self.one_of_its_type(target, &spec).await?;
            }
            match self.write(subject, target, current, spec, draft, input).await? {
                // the cluster went between the read and the write
                (Write::ParentMissing, _) => Err(self.store.get_cluster(&target.cluster.key).await?.map_or_else(
                    || crate::flux::service::parent_not_found(&target.scope),
                    |_| contention(),
                )),
                (outcome, written) => Ok(attempt(outcome, written)),
            }
        })
        .await?;
        tracing::info!(extension = %target.id(), generation = written.record.generation, "extension written");
        Ok(written)
    }

    /// Changes the properties a PATCH may change (`draft.properties` is the stored ones with the patch merged in);
    /// protected settings given replace the set, as Azure's `az k8s-extension update` asks for all of them.
    pub async fn patch(
        &self,
        subject: &str,
        target: &Target,
        changes: &serde_json::Value,
        draft: &Draft,
        preconditions: &Preconditions,
    ) -> ApiResult<Written> {
        let input = if draft.protected.is_some() {
            SecretsInput::Replace
        } else {
            SecretsInput::Untouched
        };
        let written = retry(&self.turns, &turn(target), preconditions, move || async move {
            let current = self
                .store
                .get_extension(target.cluster.id, target.name.as_str())
                .await?
                .ok_or_else(|| not_found(target))?;
            preconditions.check(Some(&current.etag))?;
            if current.provisioning_state == ProvisioningState::Deleting {
                return Err(being_deleted(target));
            }
            let mut properties = serde_json::to_value(request_of(&current.spec)).map_err(anyhow::Error::from)?;
            json_patch::merge(&mut properties, changes);
            let request: ExtensionPropertiesRequest = crate::arm::body::parse(properties, "properties")?;
            let spec = normalize(request, draft.identity.clone(), Some(&current.spec))?;
            let (outcome, written) = self.write(subject, target, Some(current), spec, draft, input).await?;
            Ok(attempt(outcome, written))
        })
        .await?;
        tracing::info!(extension = %target.id(), generation = written.record.generation, "extension patched");
        Ok(written)
    }

    /// Deletes the extension: at once when `force`, otherwise by a generation its agent completes. The cluster's
    /// Flux configurations stay (see the README): Azure neither deletes them nor refuses the deletion.
    pub async fn delete(
        &self,
        subject: &str,
        target: &Target,
        force: bool,
        preconditions: &Preconditions,
    ) -> ApiResult<Deletion> {
        retry(&self.turns, &turn(target), preconditions, move || async move {
            let Some(current) = self
                .store
                .get_extension(target.cluster.id, target.name.as_str())
                .await?
            else {
                preconditions.check(None)?;
                return Ok(Attempt::Done(Deletion::Missing));
            };
            preconditions.check(Some(&current.etag))?;
            if force {
                let deleted = self
                    .store
                    .delete_extension(target.cluster.id, target.name.as_str(), &target.resource_key())
                    .await?;
                tracing::info!(extension = %target.id(), "extension force-deleted");
                return Ok(Attempt::Done(if deleted {
                    Deletion::Deleted
                } else {
                    Deletion::Missing
                }));
            }
            // an extension has no compliance: only the generation and state of a deletion apply
            let stage = lifecycle::deleting(current.generation, ComplianceState::Unknown);
            let expected = current.etag.clone();
            let record = ExtensionRecord {
                generation: stage.generation,
                etag: new_etag(),
                provisioning_state: stage.provisioning_state,
                system_data: current.system_data.modified(subject, Utc::now()),
                generation_expires_at: stage.generation_expires_at,
                failure: None,
                // nor are its protected settings delivered any more: the agent uninstalls it with them
                secrets_version: None,
                sealed: Vec::new(),
                secrets_expire_at: None,
                ..current
            };
            let operation = new_operation(target, "Delete", record.generation);
            Ok(
                match self.store.update_extension(&record, &expected, &operation).await? {
                    Write::Written => {
                        tracing::info!(extension = %target.id(), "extension deletion started");
                        Attempt::Done(Deletion::Started(Box::new(operation)))
                    }
                    Write::Conflict | Write::ParentMissing => Attempt::Lost,
                },
            )
        })
        .await
    }

    /// Refuses a second extension of the type `spec` names, under another name.
    async fn one_of_its_type(&self, target: &Target, spec: &ExtensionSpec) -> ApiResult<()> {
        let kind = spec.extension_type.to_ascii_lowercase();
        match self.store.extension_of_type(target.cluster.id, &kind).await? {
            Some(other) if other.name != target.name.as_str() => Err(ApiError::Conflict(format!(
                "The cluster '{}' already has the {kind} extension '{}': a cluster holds one extension of a type. \
                 Update '{}' instead, or delete it first.",
                target.scope.cluster.name.as_str(),
                other.name,
                other.name
            ))),
            _ => Ok(()),
        }
    }

    /// Writes `spec` and the protected settings as the next generation over `current` (`None`: creates it).
    async fn write(
        &self,
        subject: &str,
        target: &Target,
        current: Option<ExtensionRecord>,
        spec: ExtensionSpec,
        draft: &Draft,
        input: SecretsInput,
    ) -> ApiResult<(Write, Written)> {
        let now = Utc::now();
        let stage = lifecycle::written(current.as_ref().map(|c| c.generation), now, &self.lifetimes);
        let held = current.as_ref().map(|c| (c.secrets_version, c.secrets_expire_at));
        let kept = lifecycle::secrets(held, input, stage.generation, now, &self.lifetimes);
        let sealed = match kept.step {
            SecretsStep::Keep => current.as_ref().map(|c| c.sealed.clone()).unwrap_or_default(),
            SecretsStep::Clear => Vec::new(),
            // every write of protected settings replaces the set: there is nothing to merge
            SecretsStep::Replace | SecretsStep::Merge { .. } => {
                let settings = draft.protected.as_ref().cloned().unwrap_or_default();
                vec![seal(target, &settings, stage.generation)?]
            }
        };
        let record = ExtensionRecord {
            id: current.as_ref().map_or(0, |c| c.id),
            cluster_id: target.cluster.id,
            name: target.name.as_str().to_owned(),
            extension_type: spec.extension_type.to_ascii_lowercase(),
            spec,
            generation: stage.generation,
            etag: new_etag(),
            provisioning_state: stage.provisioning_state,
            observed: current.as_ref().map(|c| c.observed.clone()).unwrap_or_default(),
            system_data: match &current {
                Some(current) => current.system_data.modified(subject, now),
                None => SystemData::created(subject, now),
            },
            reported_generation: current.as_ref().and_then(|c| c.reported_generation),
            secrets_version: kept.version,
            sealed,
            secrets_expire_at: kept.expire_at,
            generation_expires_at: stage.generation_expires_at,
            failure: None,
        };
        match current {
            None => {
                let operation = new_operation(target, "Create", record.generation);
                let outcome = self.store.insert_extension(&record, &operation).await?;
                Ok((
                    outcome,
                    Written {
                        record,
                        operation,
                        created: true,
                    },
                ))
            }
            Some(current) => {
                let operation = new_operation(target, "Update", record.generation);
                let outcome = self.store.update_extension(&record, &current.etag, &operation).await?;
                Ok((
                    outcome,
                    Written {
                        record,
                        operation,
                        created: false,
                    },
                ))
            }
        }
    }
}

/// The request that would write `spec` again: what a PATCH merges into.
fn request_of(spec: &ExtensionSpec) -> ExtensionPropertiesRequest {
    ExtensionPropertiesRequest {
        extension_type: Some(spec.extension_type.clone()),
        auto_upgrade_minor_version: Some(spec.auto_upgrade_minor_version),
        release_train: Some(spec.release_train.clone()),
        version: spec.version.clone(),
        scope: Some(super::model::ScopeRequest {
            cluster: Some(super::model::ScopeCluster {
                release_namespace: Some(spec.release_namespace.clone()),
            }),
            namespace: None,
        }),
        configuration_settings: Some(spec.configuration_settings.clone()),
        configuration_protected_settings: None,
    }
}

fn attempt(outcome: Write, written: Written) -> Attempt<Written> {
    match outcome {
        Write::Written => Attempt::Done(written),
        Write::Conflict | Write::ParentMissing => Attempt::Lost,
    }
}

/// The turn writers of the extension take.
fn turn(target: &Target) -> String {
    format!("extensions {}", target.resource_key())
}

fn new_operation(target: &Target, kind: &str, generation: i64) -> OperationRecord {
    OperationRecord {
        id: uuid::Uuid::new_v4().to_string(),
        resource_key: target.resource_key(),
        resource_id: target.id(),
        kind: kind.to_owned(),
        generation,
        status: OperationState::InProgress,
        start_time: Utc::now(),
        end_time: None,
        error: None,
        reconcile_by: None::<DateTime<Utc>>,
    }
}

/// Seals the protected settings to the cluster's agent as the set of `version`.
fn seal(
    target: &Target,
    settings: &BTreeMap<String, String>,
    version: i64,
) -> ApiResult<fluxplane_agent_protocol::agent::SealedSecrets> {
    let Some(key) = target.cluster.agent_encryption_key.as_deref() else {
        return Err(ApiError::AgentEncryptionKeyMissing(format!(
            "protected settings are sealed to the agent of cluster '{}', which has not registered its encryption \
             key yet: register the agent (fluxplane agent register) and write the extension again",
            target.scope.cluster.name.as_str()
        )));
    };
    let name = extension_sealing_name(target.name.as_str());
    let envelope = Envelope {
        cluster_id: &target.scope.cluster.id(),
        configuration: &name,
        version,
        change: SecretsChange::Replace,
        base_version: None,
    };
    let plaintext = serde_json::to_vec(&serde_json::json!({ "configurationProtectedSettings": settings }))
        .map_err(anyhow::Error::from)?;
    Ok(sealing::seal(key, envelope, &plaintext).map_err(anyhow::Error::from)?)
}

/// An extension that does not exist on a registered cluster: a code of its own, because Azure's CLI reads
/// `ResourceNotFound` as a missing cluster (as for configurations).
pub fn not_found(target: &Target) -> ApiError {
    ApiError::ExtensionNotFound(format!(
        "The extension '{}' was not found on cluster '{}'.",
        target.name.as_str(),
        target.scope.cluster.name.as_str()
    ))
}

fn being_deleted(target: &Target) -> ApiError {
    ApiError::Conflict(format!(
        "The extension '{}' is being deleted; wait for the deletion to finish or delete with forceDelete=true.",
        target.name.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::arm::ApiVersion;
    use crate::arm::ids::{ClusterPath, ClusterRef, ConfigurationName};
    use crate::clusters::service::ClusterDraft;
    use crate::flux::secrets::SecretFields;
    use crate::on_both_backends;
    use crate::testing::{Backend, Services, with_database};

    fn scope() -> ClusterScope {
        ClusterScope::parse(&ClusterPath {
            subscription_id: "sub".into(),
            resource_group_name: "rg".into(),
            cluster_rp: "Microsoft.Kubernetes".into(),
            cluster_resource_name: "connectedClusters".into(),
            cluster_name: "c1".into(),
        })
        .unwrap()
    }

    async fn registered(services: &Services, store: &Arc<dyn Store>) -> ClusterRecord {
        let draft = ClusterDraft::new(
            "westeurope".into(),
            BTreeMap::new(),
            serde_json::from_value(json!({"properties": {"agentPublicKeyCertificate": "a2V5"}})).unwrap(),
        )
        .unwrap();
        let cluster = ClusterRef::parse("sub", "rg", "c1").unwrap();
        services
            .clusters
            .put(
                "alice",
                &cluster,
                &draft,
                &Preconditions::default(),
                ApiVersion::newest(),
            )
            .await
            .unwrap();
        store.get_cluster("sub/rg/c1").await.unwrap().unwrap()
    }

    async fn target(services: &Services, name: &str) -> Target {
        let name = ExtensionName::parse(name).unwrap();
        services.extensions.target(scope(), name).await.unwrap()
    }

    fn flux(properties: serde_json::Value) -> Draft {
        Draft {
            properties: serde_json::from_value(properties).unwrap(),
            ..Draft::default()
        }
    }

    fn config_spec() -> fluxplane_agent_protocol::flux::FluxConfigurationSpec {
        serde_json::from_value(json!({
            "sourceKind": "GitRepository",
            "gitRepository": {"url": "https://example.com/fleet.git", "repositoryRef": {"branch": "main"}},
            "kustomizations": {"apps": {"path": "./apps"}}
        }))
        .unwrap()
    }

    on_both_backends!(
        each_extension_write_is_a_generation_and_a_second_flux_extension_is_refused,
        writes_case
    );
    async fn writes_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            registered(&services, &store).await;
            let any = Preconditions::default();
            let flux_target = target(&services, "flux").await;

            let other = services
                .extensions
                .put(
                    "alice",
                    &flux_target,
                    &flux(json!({"extensionType": "microsoft.dapr"})),
                    &any,
                )
                .await
                .unwrap_err();
            assert_eq!(other.status(), axum::http::StatusCode::BAD_REQUEST);
            assert!(
                store
                    .get_extension(flux_target.cluster.id, "flux")
                    .await
                    .unwrap()
                    .is_none()
            );

            let created = services
                .extensions
                .put(
                    "alice",
                    &flux_target,
                    &flux(json!({"extensionType": "Microsoft.Flux"})),
                    &any,
                )
                .await
                .unwrap();
            assert!(created.created);
            assert_eq!(created.record.generation, 1);
            assert_eq!(created.record.extension_type, "microsoft.flux");
            assert_eq!(created.record.provisioning_state, ProvisioningState::Creating);
            let operation = store.get_operation(&created.operation.id).await.unwrap().unwrap();
            assert_eq!(
                (operation.kind.as_str(), operation.status),
                ("Create", OperationState::InProgress)
            );
            assert_eq!(operation.resource_key, "sub/rg/c1/extensions/flux");

            let second = target(&services, "gitops").await;
            let refused = services
                .extensions
                .put("bob", &second, &flux(json!({"extensionType": "microsoft.flux"})), &any)
                .await
                .unwrap_err();
            assert_eq!(refused.code(), "Conflict");
            assert!(refused.to_string().contains("'flux'"), "{refused}");

            let changes = json!({"configurationSettings": {"multiTenancy.enforce": "false"}});
            let patched = services
                .extensions
                .patch("carol", &flux_target, &changes, &Draft::default(), &any)
                .await
                .unwrap();
            assert_eq!(patched.record.generation, 2);
            assert_eq!(patched.record.provisioning_state, ProvisioningState::Updating);
            assert_eq!(
                patched.record.spec.configuration_settings["multiTenancy.enforce"],
                "false"
            );
            assert_eq!(
                patched.record.spec.release_namespace, "flux-system",
                "a patch keeps the rest"
            );
            let removed = json!({"configurationSettings": {"multiTenancy.enforce": null}});
            let patched = services
                .extensions
                .patch("carol", &flux_target, &removed, &Draft::default(), &any)
                .await
                .unwrap();
            assert!(
                patched.record.spec.configuration_settings.is_empty(),
                "null removes a setting"
            );

            let Deletion::Started(deletion) = services
                .extensions
                .delete("dave", &flux_target, false, &any)
                .await
                .unwrap()
            else {
                panic!("a deletion without force waits for the agent");
            };
            assert_eq!(deletion.generation, 4);
            let deleting = store
                .get_extension(flux_target.cluster.id, "flux")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(deleting.provisioning_state, ProvisioningState::Deleting);
            let busy = services
                .extensions
                .patch("erin", &flux_target, &changes, &Draft::default(), &any)
                .await
                .unwrap_err();
            assert_eq!(busy.code(), "Conflict");
            let forced = services
                .extensions
                .delete("dave", &flux_target, true, &any)
                .await
                .unwrap();
            assert!(matches!(forced, Deletion::Deleted), "{forced:?}");
            let again = services
                .extensions
                .delete("dave", &flux_target, true, &any)
                .await
                .unwrap();
            assert!(matches!(again, Deletion::Missing), "{again:?}");
        })
        .await;
    }

    on_both_backends!(
        configurations_bring_the_flux_extension_and_wait_while_it_is_deleted_or_gone,
        gate_case
    );
    async fn gate_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            let cluster = registered(&services, &store).await;
            let any = Preconditions::default();
            let put_config = |name: &'static str| {
                let services = &services;
                let any = &any;
                async move {
                    let name = ConfigurationName::parse(name).unwrap();
                    let target = services.configurations.target(scope(), name).await.unwrap();
                    services
                        .configurations
                        .put(
                            "alice",
                            &target,
                            &config_spec(),
                            &SecretFields::default(),
                            any,
                            ApiVersion::newest(),
                        )
                        .await
                }
            };
            put_config("first").await.unwrap();
            let brought = store
                .extension_of_type(cluster.id, "microsoft.flux")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(brought.name, "flux", "named as Azure names the one it installs");
            assert_eq!(brought.system_data.created_by, "alice");

            let flux_target = target(&services, "flux").await;
            services
                .extensions
                .delete("bob", &flux_target, false, &any)
                .await
                .unwrap();
            let refused = put_config("second").await.unwrap_err();
            assert_eq!(refused.code(), "Conflict");
            assert!(refused.to_string().contains("is being deleted"), "{refused}");
            assert!(store.get_configuration(cluster.id, "second").await.unwrap().is_none());

            services
                .extensions
                .delete("bob", &flux_target, true, &any)
                .await
                .unwrap();
            let refused = put_config("first").await.unwrap_err();
            assert!(refused.to_string().contains("is not installed"), "{refused}");
            assert!(
                store.get_configuration(cluster.id, "first").await.unwrap().is_some(),
                "deleting the extension leaves the configurations"
            );

            services
                .extensions
                .put(
                    "bob",
                    &flux_target,
                    &flux(json!({"extensionType": "microsoft.flux"})),
                    &any,
                )
                .await
                .unwrap();
            put_config("second").await.unwrap();
        })
        .await;
    }

    on_both_backends!(
        protected_settings_are_sealed_to_the_agent_and_replaced_as_a_whole,
        protected_case
    );
    async fn protected_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            let cluster = registered(&services, &store).await;
            let any = Preconditions::default();
            let flux_target = target(&services, "flux").await;
            let secret = Draft {
                protected: Some(BTreeMap::from([("token".to_owned(), "s3cr3t".to_owned())])),
                ..flux(json!({"extensionType": "microsoft.flux"}))
            };
            let refused = services
                .extensions
                .put("alice", &flux_target, &secret, &any)
                .await
                .unwrap_err();
            assert_eq!(refused.code(), "AgentEncryptionKeyMissing");
            assert!(store.get_extension(cluster.id, "flux").await.unwrap().is_none());

            let key = fluxplane_agent_protocol::sealing::EncryptionKey::generate();
            store
                .set_agent_encryption_key(cluster.id, &key.public_base64(), "keys changed")
                .await
                .unwrap();
            let flux_target = target(&services, "flux").await;
            let written = services
                .extensions
                .put("alice", &flux_target, &secret, &any)
                .await
                .unwrap();
            let stored = store.get_extension(cluster.id, "flux").await.unwrap().unwrap();
            assert_eq!(stored.secrets_version, Some(1));
            assert_eq!(stored.sealed.len(), 1);
            assert!(
                stored.secrets_expire_at.is_some(),
                "sealed settings live 48 hours at most"
            );
            let stored_text = format!("{:?}", stored.sealed);
            assert!(!stored_text.contains("s3cr3t"), "only the agent can read them");
            assert!(
                !format!("{secret:?}").contains("s3cr3t"),
                "nor can a log line of the write"
            );
            let opened = key
                .open(&flux_target.scope.cluster.id(), "extensions/flux", &stored.sealed[0])
                .unwrap();
            assert_eq!(
                serde_json::from_slice::<serde_json::Value>(&opened).unwrap(),
                json!({"configurationProtectedSettings": {"token": "s3cr3t"}})
            );
            assert_eq!(written.record.sealed.len(), 1);

            let untouched = services
                .extensions
                .patch(
                    "bob",
                    &flux_target,
                    &json!({"releaseTrain": "Preview"}),
                    &Draft::default(),
                    &any,
                )
                .await
                .unwrap();
            assert_eq!(
                untouched.record.secrets_version,
                Some(1),
                "a patch without them keeps them"
            );
            let cleared = services
                .extensions
                .put(
                    "bob",
                    &flux_target,
                    &flux(json!({"extensionType": "microsoft.flux"})),
                    &any,
                )
                .await
                .unwrap();
            assert_eq!(cleared.record.secrets_version, None, "a PUT without them has none");
            assert!(cleared.record.sealed.is_empty());
        })
        .await;
    }
}
