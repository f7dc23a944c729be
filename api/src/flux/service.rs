//! The write rules of Flux configurations: each write is a new generation with its operation, decided by the
//! lifecycle (`lifecycle::written`, `deleting`, `secrets`), written under optimistic concurrency, its secrets
//! sealed to the cluster's agent on the way. A deletion is a generation too, completed by the agent, unless forced.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use fluxplane_agent_protocol::agent::{SealedSecrets, SecretsChange};
use fluxplane_agent_protocol::flux::{ComplianceState, FluxConfigurationSpec, SourceKind};
use fluxplane_agent_protocol::sealing::{self, Envelope};
use serde_json::Value;

use super::secrets::SecretFields;
use super::validate::normalize;
use crate::arm::ApiVersion;
use crate::arm::api_version::FluxConfigurations;
use crate::arm::body::parse;
use crate::arm::conditional::Preconditions;
use crate::arm::ids::{ClusterScope, ConfigurationName};
use crate::arm::system_data::SystemData;
use crate::arm::write::{Attempt, contention, new_etag, retry};
use crate::error::{ApiError, ApiResult};
use crate::extensions::model as extensions;
use crate::lifecycle::{
    self, FluxExtensionRefusal, Lifetimes, OperationState, ProvisioningState, SecretsInput, SecretsStep, agent_online,
};
use crate::model::{
    ClusterRecord, ConfigurationForWrite, ConfigurationRecord, FluxGate, OperationRecord, ReconcileTarget,
    SecretsWrite, Write,
};
use crate::store::Store;
use crate::turns::Turns;

/// A configuration a request addresses, with the registered cluster it hangs under.
#[derive(Debug, Clone)]
pub struct Target {
    pub scope: ClusterScope,
    pub name: ConfigurationName,
    pub cluster: ClusterRecord,
    /// Whether the cluster's agent has been heard from lately: what reads show as the status's freshness.
    pub online: bool,
}

impl Target {
    pub fn id(&self) -> String {
        self.scope.configuration_id(self.name.as_str())
    }

    /// The key operations are filed under: the same whichever cluster type the path used.
    pub fn resource_key(&self) -> String {
        format!("{}/{}", self.scope.cluster.key(), self.name.as_str())
    }
}

/// What an accepted write answers: the configuration as written, its operation, and whether it was created.
#[derive(Debug, Clone)]
pub struct Written {
    pub record: ConfigurationRecord,
    pub operation: OperationRecord,
    pub created: bool,
}

/// What a deletion came to.
#[derive(Debug, Clone)]
pub enum Deletion {
    /// Forced: the configuration is gone.
    Deleted,
    /// There was no such configuration.
    Missing,
    /// The agent removes it from its cluster; the operation ends when it has.
    Started(Box<OperationRecord>),
}

/// Writes Flux configurations.
#[derive(Clone)]
pub struct Configurations {
    store: Arc<dyn Store>,
    turns: Arc<Turns>,
    lifetimes: Lifetimes,
    /// How long an agent may be silent before its cluster counts as offline.
    offline_after: Duration,
}

impl Configurations {
    pub fn new(store: Arc<dyn Store>, turns: Arc<Turns>, lifetimes: Lifetimes, offline_after: Duration) -> Self {
        Self {
            store,
            turns,
            lifetimes,
            offline_after,
        }
    }

    /// The configuration `name` of the cluster `scope` addresses, which must be registered.
    pub async fn target(&self, scope: ClusterScope, name: ConfigurationName) -> ApiResult<Target> {
        let cluster = self.cluster(&scope).await?;
        let online = agent_online(cluster.last_connectivity_time, self.offline_after);
        Ok(Target {
            scope: scope.as_registered(&cluster.subscription, &cluster.resource_group, &cluster.name),
            name,
            cluster,
            online,
        })
    }

    /// The cluster `scope` addresses, which must be registered.
    pub async fn cluster(&self, scope: &ClusterScope) -> ApiResult<ClusterRecord> {
        self.store
            .get_cluster(&scope.cluster.key())
            .await?
            .ok_or_else(|| parent_not_found(scope))
    }

    /// Creates the configuration or replaces it as a whole, secrets included (`secrets` empty: it has none); at an
    /// older `version`, as a whole that version can express (see [`kept_newer`]).
    pub async fn put(
        &self,
        subject: &str,
        target: &Target,
        spec: &FluxConfigurationSpec,
        secrets: &SecretFields,
        preconditions: &Preconditions,
        version: ApiVersion<FluxConfigurations>,
    ) -> ApiResult<Written> {
        let input = if secrets.is_empty() {
            SecretsInput::ReplaceWithNone
        } else {
            SecretsInput::Replace
        };
        let written = retry(&self.turns, &turn(target), preconditions, move || async move {
            let ConfigurationForWrite { current, flux } = self.read_for_write(target).await?;
            preconditions.check(current.as_ref().map(|c| c.etag.as_str()))?;
            if current
                .as_ref()
                .is_some_and(|c| c.provisioning_state == ProvisioningState::Deleting)
            {
                return Err(being_deleted(target));
            }
            Self::flux_extension_allows(target, &flux)?;
            let mut spec = match &current {
                Some(current) if !version.is_newest() => kept_newer(spec, &current.spec, version)?,
                _ => spec.clone(),
            };
            normalize(&mut spec, &target.name, current.as_ref().map(|c| &c.spec))?;
            match self.write(subject, target, current, spec, secrets, input).await? {
                // the cluster went between the read and the write
                (Write::ParentMissing, ..) => Err(self.cluster(&target.scope).await.err().unwrap_or_else(contention)),
                (outcome, written) => Ok(attempt(outcome, written)),
            }
        })
        .await?;
        tracing::info!(configuration = %target.id(), generation = written.record.generation, "configuration written");
        Ok(written)
    }

    /// Changes part of the configuration by a JSON merge patch of its properties (`changes`) and of its secrets.
    pub async fn patch(
        &self,
        subject: &str,
        target: &Target,
        changes: &Value,
        secrets: &SecretFields,
        preconditions: &Preconditions,
    ) -> ApiResult<Written> {
        let input = if secrets.is_empty() {
            SecretsInput::Untouched
        } else {
            SecretsInput::Merge
        };
        let written = retry(&self.turns, &turn(target), preconditions, move || async move {
            let ConfigurationForWrite { current, flux } = self.read_for_write(target).await?;
            let current = current.ok_or_else(|| not_found(target))?;
            preconditions.check(Some(&current.etag))?;
            if current.provisioning_state == ProvisioningState::Deleting {
                return Err(being_deleted(target));
            }
            Self::flux_extension_allows(target, &flux)?;
            let mut properties = serde_json::to_value(&current.spec).map_err(anyhow::Error::from)?;
            json_patch::merge(&mut properties, changes);
            let mut spec: FluxConfigurationSpec = parse(properties, "properties")?;
            normalize(&mut spec, &target.name, Some(&current.spec))?;
            let (outcome, written) = self.write(subject, target, Some(current), spec, secrets, input).await?;
            Ok(attempt(outcome, written))
        })
        .await?;
        tracing::info!(configuration = %target.id(), generation = written.record.generation, "configuration patched");
        Ok(written)
    }

    /// Asks the configuration's agent to re-check its source at once (the `reconcile` action): no new generation,
    /// no operation; its cluster's revision moves so that a waiting poll answers now. Answers when it was asked. A
    /// configuration being deleted has nothing left to re-check: a conflict.
    pub async fn request_reconcile(&self, subject: &str, target: &Target) -> ApiResult<DateTime<Utc>> {
        let current = self
            .store
            .get_configuration(target.cluster.id, target.name.as_str())
            .await?
            .ok_or_else(|| not_found(target))?;
        if current.provisioning_state == ProvisioningState::Deleting {
            return Err(ApiError::Conflict(format!(
                "the Flux configuration '{}' is being deleted: there is nothing left to reconcile",
                target.name.as_str()
            )));
        }
        let at = lifecycle::reconcile_requested(Utc::now());
        let asked = self
            .store
            .request_reconcile(ReconcileTarget::Configurations(&[current.id]), at, None)
            .await?;
        if asked == 0 {
            // deleted, or its deletion started, since it was read
            return Err(not_found(target));
        }
        tracing::info!(configuration = %target.id(), by = subject, "reconcile requested");
        Ok(at)
    }

    /// Deletes the configuration: at once when `force`, otherwise by a generation its agent completes.
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
                .get_configuration(target.cluster.id, target.name.as_str())
                .await?
            else {
                preconditions.check(None)?;
                return Ok(Attempt::Done(Deletion::Missing));
            };
            preconditions.check(Some(&current.etag))?;
            if force {
                let deleted = self
                    .store
                    .delete_configuration(target.cluster.id, target.name.as_str(), &target.resource_key())
                    .await?;
                tracing::info!(configuration = %target.id(), "configuration force-deleted");
                return Ok(Attempt::Done(if deleted {
                    Deletion::Deleted
                } else {
                    Deletion::Missing
                }));
            }
            let stage = lifecycle::deleting(current.generation, current.compliance_state);
            let expected = current.etag.clone();
            let record = ConfigurationRecord {
                generation: stage.generation,
                etag: new_etag(),
                provisioning_state: stage.provisioning_state,
                compliance_state: stage.compliance_state,
                system_data: current.system_data.modified(subject, Utc::now()),
                generation_expires_at: stage.generation_expires_at,
                failure: None,
                // nor are its secrets delivered any more: the agent removes the cluster's copy with the rest
                secrets_version: None,
                secrets_expire_at: None,
                ..current
            };
            let operation = new_operation(target, "Delete", record.generation, None);
            Ok(
                match self
                    .store
                    .update_configuration(&record, &SecretsWrite::Clear, &expected, &operation)
                    .await?
                {
                    Write::Written => {
                        tracing::info!(configuration = %target.id(), "configuration deletion started");
                        Attempt::Done(Deletion::Started(Box::new(operation)))
                    }
                    Write::Conflict | Write::ParentMissing => Attempt::Lost,
                },
            )
        })
        .await
    }

    /// The configuration as stored and what its cluster's Flux extension gates its write on (`flux_extension_allows`),
    /// in one statement: a concurrent first configuration, which brings the extension with it, is seen with its
    /// extension or not at all.
    async fn read_for_write(&self, target: &Target) -> ApiResult<ConfigurationForWrite> {
        Ok(self
            .store
            .configuration_for_write(target.cluster.id, target.name.as_str(), extensions::FLUX)
            .await?)
    }

    /// Refuses a write while the cluster's Flux extension is being deleted, or after it was deleted from a cluster
    /// that still holds configurations (`lifecycle::flux_extension_gate`).
    fn flux_extension_allows(target: &Target, flux: &FluxGate) -> ApiResult<()> {
        let extension = flux.extension.as_ref();
        let name = extension.map_or(extensions::FLUX_NAME, |(name, _)| name.as_str());
        let cluster = target.scope.cluster.name.as_str();
        let install = || {
            format!(
                "{}/providers/Microsoft.KubernetesConfiguration/extensions/{name}",
                target.scope.id()
            )
        };
        match lifecycle::flux_extension_gate(extension.map(|(_, state)| *state), flux.has_configurations) {
            Ok(()) => Ok(()),
            Err(FluxExtensionRefusal::BeingDeleted) => Err(ApiError::Conflict(format!(
                "The Flux extension '{name}' of cluster '{cluster}' is being deleted: Flux configurations cannot be \
                 written until it is installed again (PUT {} with extensionType microsoft.flux once the \
                 deletion has finished).",
                install()
            ))),
            Err(FluxExtensionRefusal::NotInstalled) => Err(ApiError::Conflict(format!(
                "The Flux extension (microsoft.flux) is not installed on cluster '{cluster}': it must be installed \
                 before Flux configurations are written (PUT {} with extensionType microsoft.flux).",
                install()
            ))),
        }
    }

    /// Writes `spec` and the secrets as the next generation over `current` (`None`: creates the configuration).
    async fn write(
        &self,
        subject: &str,
        target: &Target,
        current: Option<ConfigurationRecord>,
        spec: FluxConfigurationSpec,
        secrets: &SecretFields,
        input: SecretsInput,
    ) -> ApiResult<(Write, Written)> {
        let now = Utc::now();
        let stage = lifecycle::written(current.as_ref().map(|c| c.generation), now, &self.lifetimes);
        let held = current.as_ref().map(|c| (c.secrets_version, c.secrets_expire_at));
        let kept = lifecycle::secrets(held, input, stage.generation, now, &self.lifetimes);
        let secrets_write = match kept.step {
            SecretsStep::Keep => SecretsWrite::Keep,
            SecretsStep::Clear => SecretsWrite::Clear,
            SecretsStep::Replace => {
                SecretsWrite::Replace(seal(target, secrets, stage.generation, SecretsChange::Replace, None)?)
            }
            SecretsStep::Merge { base } => {
                SecretsWrite::Merge(seal(target, secrets, stage.generation, SecretsChange::Merge, base)?)
            }
        };
        let lived = |record: ConfigurationRecord| ConfigurationRecord {
            spec: spec.clone(),
            secrets_version: kept.version,
            secrets_expire_at: kept.expire_at,
            generation: stage.generation,
            etag: new_etag(),
            provisioning_state: stage.provisioning_state,
            compliance_state: stage.compliance_state,
            generation_expires_at: stage.generation_expires_at,
            failure: None,
            ..record
        };
        match current {
            None => {
                let record = lived(new_record(target, subject, now));
                let operation = new_operation(target, "Create", record.generation, lifecycle::reconcile_by(&spec, now));
                let outcome = self
                    .store
                    .insert_configuration(&record, &secrets_write, &operation)
                    .await?;
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
                let expected = current.etag.clone();
                let system_data = current.system_data.modified(subject, now);
                let record = ConfigurationRecord {
                    system_data,
                    ..lived(current)
                };
                let operation = new_operation(target, "Update", record.generation, lifecycle::reconcile_by(&spec, now));
                let outcome = self
                    .store
                    .update_configuration(&record, &secrets_write, &expected, &operation)
                    .await?;
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

/// `spec`, a PUT at `version`, with what `current` holds that `version` cannot express
/// ([`ApiVersion::keep_newer`]). A source block is the exception: `sourceKind`, which every version expresses,
/// selects the one block in use, so a newer block the request did not select is not kept (an older client that
/// sets a Git source has replaced an OCI one it could not see). Secrets need no such care: the only newer
/// properties that hold any are the newer source blocks.
fn kept_newer(
    spec: &FluxConfigurationSpec,
    current: &FluxConfigurationSpec,
    version: ApiVersion<FluxConfigurations>,
) -> ApiResult<FluxConfigurationSpec> {
    let mut replacement = serde_json::json!({ "properties": spec });
    version.keep_newer(&mut replacement, &serde_json::json!({ "properties": current }));
    let mut kept: FluxConfigurationSpec = parse(replacement["properties"].take(), "properties")?;
    let selected = spec.source_kind.unwrap_or(SourceKind::GitRepository);
    if spec.azure_blob.is_none() && selected != SourceKind::AzureBlob {
        kept.azure_blob = None;
    }
    if spec.oci_repository.is_none() && selected != SourceKind::OciRepository {
        kept.oci_repository = None;
    }
    Ok(kept)
}

/// A write's outcome as an attempt of the retry loop.
fn attempt(outcome: Write, written: Written) -> Attempt<Written> {
    match outcome {
        Write::Written => Attempt::Done(written),
        Write::Conflict | Write::ParentMissing => Attempt::Lost,
    }
}

/// The turn writers of the configuration take.
fn turn(target: &Target) -> String {
    format!("fluxConfigurations {}", target.resource_key())
}

/// A configuration that does not exist yet, before the lifecycle fills in its generation.
fn new_record(target: &Target, subject: &str, now: DateTime<Utc>) -> ConfigurationRecord {
    ConfigurationRecord {
        id: 0,
        cluster_id: target.cluster.id,
        name: target.name.as_str().to_owned(),
        spec: FluxConfigurationSpec::default(),
        secrets_version: None,
        generation: 0,
        etag: String::new(),
        provisioning_state: ProvisioningState::Creating,
        compliance_state: ComplianceState::Pending,
        observed: Default::default(),
        system_data: SystemData::created(subject, now),
        reported_generation: None,
        secrets_expire_at: None,
        generation_expires_at: None,
        failure: None,
        managed_by_id: None,
        drifted_at: None,
        managed_by: None,
        managed_generation: None,
        reconcile_requested_at: None,
    }
}

fn new_operation(target: &Target, kind: &str, generation: i64, reconcile_by: Option<DateTime<Utc>>) -> OperationRecord {
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
        reconcile_by,
    }
}

/// Seals `secrets` to the cluster's agent as the change to `version`.
fn seal(
    target: &Target,
    secrets: &SecretFields,
    version: i64,
    change: SecretsChange,
    base_version: Option<i64>,
) -> ApiResult<SealedSecrets> {
    let Some(key) = target.cluster.agent_encryption_key.as_deref() else {
        return Err(ApiError::AgentEncryptionKeyMissing(format!(
            "secrets are sealed to the agent of cluster '{}', which has not registered its encryption key yet: \
             register the agent (fluxplane agent register) and write the configuration again",
            target.scope.cluster.name.as_str()
        )));
    };
    let envelope = Envelope {
        cluster_id: &target.scope.cluster.id(),
        configuration: target.name.as_str(),
        version,
        change,
        base_version,
    };
    Ok(sealing::seal(key, envelope, &secrets.to_bytes()).map_err(anyhow::Error::from)?)
}

/// A cluster that is not registered, answered as ARM answers a missing resource: `ResourceNotFound`, which Azure's
/// CLI reads as "the cluster (or its --cluster-type) is wrong".
pub fn parent_not_found(scope: &ClusterScope) -> ApiError {
    ApiError::ResourceNotFound(format!(
        "The Resource '{}/{}/{}' under resource group '{}' was not found; register the cluster first.",
        scope.provider,
        scope.resource_type,
        scope.cluster.name.as_str(),
        scope.cluster.resource_group.as_str()
    ))
}

/// A configuration that does not exist on a registered cluster: a code of its own, because Azure's CLI reads
/// `ResourceNotFound` as a missing cluster.
pub fn not_found(target: &Target) -> ApiError {
    ApiError::FluxConfigurationNotFound(format!(
        "The Flux configuration '{}' was not found on cluster '{}'.",
        target.name.as_str(),
        target.scope.cluster.name.as_str()
    ))
}

fn being_deleted(target: &Target) -> ApiError {
    ApiError::Conflict(format!(
        "The Flux configuration '{}' is being deleted; wait for the deletion to finish or delete with forceDelete=true.",
        target.name.as_str()
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use serde_json::json;

    use super::*;
    use crate::arm::ids::ClusterRef;
    use crate::clusters::service::ClusterDraft;
    use crate::on_both_backends;
    use crate::testing::{Backend, Services, with_database};

    fn spec(branch: &str) -> FluxConfigurationSpec {
        serde_json::from_value(json!({
            "sourceKind": "GitRepository",
            "gitRepository": {"url": "https://example.com/fleet.git", "repositoryRef": {"branch": branch}},
            "kustomizations": {"apps": {"path": "./apps"}}
        }))
        .unwrap()
    }

    fn scope() -> ClusterScope {
        ClusterScope::parse(&crate::arm::ids::ClusterPath {
            subscription_id: "sub".into(),
            resource_group_name: "rg".into(),
            cluster_rp: "Microsoft.Kubernetes".into(),
            cluster_resource_name: "connectedClusters".into(),
            cluster_name: "c1".into(),
        })
        .unwrap()
    }

    async fn registered(services: &Services) -> Target {
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
        let name = ConfigurationName::parse("cfg").unwrap();
        services.configurations.target(scope(), name).await.unwrap()
    }

    on_both_backends!(
        each_write_is_a_generation_with_its_operation_and_a_deletion_is_one_too,
        generations_case
    );
    async fn generations_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            let configurations = &services.configurations;
            let target = registered(&services).await;
            let (any, none) = (Preconditions::default(), SecretFields::default());

            let created = configurations
                .put("alice", &target, &spec("main"), &none, &any, ApiVersion::newest())
                .await
                .unwrap();
            assert!(created.created);
            assert_eq!(created.record.generation, 1);
            assert_eq!(created.record.provisioning_state, ProvisioningState::Creating);
            assert_eq!(created.record.compliance_state, ComplianceState::Pending);
            assert!(
                created.record.generation_expires_at.is_some(),
                "a generation waits for its agent so long"
            );
            let operation = store.get_operation(&created.operation.id).await.unwrap().unwrap();
            assert_eq!(
                (operation.kind.as_str(), operation.status),
                ("Create", OperationState::InProgress)
            );

            let replaced = configurations
                .put("bob", &target, &spec("release"), &none, &any, ApiVersion::newest())
                .await
                .unwrap();
            assert!(!replaced.created);
            assert_eq!(replaced.record.generation, 2);
            assert_eq!(replaced.record.provisioning_state, ProvisioningState::Updating);

            let changes = json!({"suspend": true});
            let patched = configurations
                .patch("carol", &target, &changes, &none, &any)
                .await
                .unwrap();
            assert_eq!(patched.record.generation, 3);
            assert!(patched.record.spec.suspend.unwrap_or_default());
            let branch = patched
                .record
                .spec
                .git_repository
                .as_ref()
                .and_then(|g| g.repository_ref.as_ref());
            assert_eq!(
                branch.and_then(|r| r.branch.as_deref()),
                Some("release"),
                "a patch keeps the rest"
            );

            let Deletion::Started(operation) = configurations.delete("dave", &target, false, &any).await.unwrap()
            else {
                panic!("a deletion without force waits for the agent");
            };
            assert_eq!(operation.generation, 4);
            let deleting = store
                .get_configuration(target.cluster.id, "cfg")
                .await
                .unwrap()
                .unwrap();
            assert_eq!(deleting.provisioning_state, ProvisioningState::Deleting);
            assert_eq!(deleting.generation_expires_at, None, "a deletion never expires");
            let refused = configurations
                .put("erin", &target, &spec("main"), &none, &any, ApiVersion::newest())
                .await
                .unwrap_err();
            assert_eq!(refused.code(), "Conflict");

            let forced = configurations.delete("dave", &target, true, &any).await.unwrap();
            assert!(matches!(forced, Deletion::Deleted), "{forced:?}");
            let again = configurations.delete("dave", &target, true, &any).await.unwrap();
            assert!(matches!(again, Deletion::Missing), "{again:?}");
        })
        .await;
    }

    on_both_backends!(
        secrets_need_the_agents_key_and_a_configuration_needs_its_cluster,
        secrets_and_parent_case
    );
    async fn secrets_and_parent_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            let name = ConfigurationName::parse("cfg").unwrap();
            let missing = services.configurations.target(scope(), name).await.unwrap_err();
            assert_eq!(missing.code(), "ResourceNotFound");

            let target = registered(&services).await;
            let mut properties = serde_json::to_value(spec("main")).unwrap();
            properties["configurationProtectedSettings"] = json!({"token": "s3cr3t"});
            let secrets = SecretFields::split_from(&mut properties);
            let refused = services
                .configurations
                .put(
                    "alice",
                    &target,
                    &spec("main"),
                    &secrets,
                    &Preconditions::default(),
                    ApiVersion::newest(),
                )
                .await
                .unwrap_err();
            assert_eq!(refused.code(), "AgentEncryptionKeyMissing");
            assert!(
                store
                    .get_configuration(target.cluster.id, "cfg")
                    .await
                    .unwrap()
                    .is_none()
            );
        })
        .await;
    }
}
