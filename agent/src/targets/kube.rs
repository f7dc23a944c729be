//! The `kube` target: each configuration as a `FluxConfig` plus the Flux objects it implies, written with
//! server-side apply (field manager `fluxplane-agent`), and its compliance read back from the Flux objects' `Ready`
//! conditions: True → Compliant, False → Non-Compliant, unknown or not yet reconciled → Pending, suspended →
//! Suspended. Every object carries the label `fluxplane.io/configuration`, which is how stale ones are found. A
//! configuration's secrets become the Secret `{configuration}-auth` in its namespace.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context;
use async_trait::async_trait;
use fluxplane_agent_protocol::agent::DesiredConfiguration;
use fluxplane_agent_protocol::flux::{ComplianceState, ObjectStatus, ObjectStatusCondition, SourceKind};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::Value;

use k8s_openapi::api::core::v1::Node;

use super::{ClusterFacts, Observation, Target};
use crate::deploy_key::ssh_git_source;
use crate::objects::{
    CONFIGURATION_LABEL, FLUXCONFIG_API, GENERATION_ANNOTATION, KUSTOMIZE_API, MANAGED_BY, SOURCE_API,
    auth_secret_name, configuration_objects, credentials_of, repository_public_key_of,
};
use crate::secrets::Credentials;

pub const FIELD_MANAGER: &str = "fluxplane-agent";

/// Every kind this target writes, as (apiVersion, kind, plural).
const KINDS: [(&str, &str, &str); 6] = [
    (FLUXCONFIG_API, "FluxConfig", "fluxconfigs"),
    (SOURCE_API, "GitRepository", "gitrepositories"),
    (SOURCE_API, "Bucket", "buckets"),
    (SOURCE_API, "OCIRepository", "ocirepositories"),
    (KUSTOMIZE_API, "Kustomization", "kustomizations"),
    ("v1", "Secret", "secrets"),
];

fn resource(api_version: &str, kind: &str) -> anyhow::Result<ApiResource> {
    let (_, _, plural) = KINDS
        .iter()
        .find(|(v, k, _)| *v == api_version && *k == kind)
        .with_context(|| format!("{api_version} {kind} is not a kind this target writes"))?;
    // the core group ("v1") has no group name
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    Ok(ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: api_version.to_owned(),
        kind: kind.to_owned(),
        plural: (*plural).to_owned(),
    })
}

pub struct KubeTarget {
    client: kube::Client,
}

impl KubeTarget {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }

    /// A target for the cluster the agent runs in, or the one the kubeconfig names.
    pub async fn from_environment() -> anyhow::Result<Self> {
        crate::tls::install_crypto_provider();
        Ok(Self::new(kube::Client::try_default().await.context(
            "connecting to the Kubernetes API (in-cluster or kubeconfig)",
        )?))
    }

    fn namespaced(&self, namespace: &str, resource: &ApiResource) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, resource)
    }

    /// Every object of `kind` carrying the configuration's label, in any namespace.
    async fn labelled(&self, resource: &ApiResource, configuration: &str) -> anyhow::Result<Vec<DynamicObject>> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), resource);
        let selector = format!("{CONFIGURATION_LABEL}={configuration}");
        Ok(api.list(&ListParams::default().labels(&selector)).await?.items)
    }

    async fn delete(&self, resource: &ApiResource, object: &DynamicObject) -> anyhow::Result<()> {
        let namespace = object.metadata.namespace.as_deref().unwrap_or("default");
        let name = object.metadata.name.as_deref().context("an object without a name")?;
        match self
            .namespaced(namespace, resource)
            .delete(name, &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            Err(err) => Err(err).with_context(|| format!("deleting {} {namespace}/{name}", resource.kind)),
        }
    }

    async fn get(&self, resource: &ApiResource, namespace: &str, name: &str) -> anyhow::Result<Option<DynamicObject>> {
        match self.namespaced(namespace, resource).get(name).await {
            Ok(object) => Ok(Some(object)),
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
            Err(err) => Err(err.into()),
        }
    }
}

/// The compliance a Flux object's status shows.
pub fn compliance_of(object: &Value) -> (ComplianceState, Option<ObjectStatusCondition>) {
    if object["spec"]["suspend"] == Value::Bool(true) {
        return (ComplianceState::Suspended, None);
    }
    let ready = object["status"]["conditions"]
        .as_array()
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready"));
    let Some(ready) = ready else {
        return (ComplianceState::Pending, None);
    };
    let text = |field: &str| ready[field].as_str().map(str::to_owned);
    let condition = ObjectStatusCondition {
        last_transition_time: text("lastTransitionTime"),
        message: text("message"),
        reason: text("reason"),
        status: text("status"),
        type_: Some("Ready".to_owned()),
    };
    let state = match ready["status"].as_str() {
        Some("True") => ComplianceState::Compliant,
        Some("False") => ComplianceState::NonCompliant,
        _ => ComplianceState::Pending,
    };
    (state, Some(condition))
}

#[async_trait]
impl Target for KubeTarget {
    async fn inventory(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        let resource = resource(FLUXCONFIG_API, "FluxConfig")?;
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let configs = api
            .list(&ListParams::default().labels(&selector))
            .await
            .context("listing FluxConfigs")?;
        Ok(configs
            .items
            .into_iter()
            .filter_map(|c| {
                let generation = c
                    .metadata
                    .annotations
                    .as_ref()?
                    .get(GENERATION_ANNOTATION)?
                    .parse()
                    .ok()?;
                Some((c.metadata.name?, generation))
            })
            .collect())
    }

    async fn apply(&self, configuration: &DesiredConfiguration, credentials: &Credentials) -> anyhow::Result<()> {
        let objects = configuration_objects(configuration, credentials);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut wanted = BTreeSet::new();
        for object in &objects {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let kind = object["kind"].as_str().unwrap_or_default();
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let resource = resource(api_version, kind)?;
            self.namespaced(namespace, &resource)
                .patch(name, &params, &Patch::Apply(object))
                .await
                .with_context(|| format!("applying {kind} {namespace}/{name}"))?;
            wanted.insert((kind.to_owned(), namespace.to_owned(), name.to_owned()));
        }
        // what the configuration no longer implies: removed kustomizations, a source of another kind
        for (api_version, kind, _) in KINDS.iter().skip(1) {
            let resource = resource(api_version, kind)?;
            for object in self.labelled(&resource, &configuration.name).await? {
                let key = (
                    (*kind).to_owned(),
                    object.metadata.namespace.clone().unwrap_or_default(),
                    object.metadata.name.clone().unwrap_or_default(),
                );
                if !wanted.contains(&key) {
                    self.delete(&resource, &object).await?;
                }
            }
        }
        Ok(())
    }

    async fn credentials(&self, configuration: &DesiredConfiguration) -> anyhow::Result<Credentials> {
        Ok(self
            .auth_secret(configuration)
            .await?
            .map(|secret| credentials_of(&secret))
            .unwrap_or_default())
    }

    async fn remove(&self, name: &str) -> anyhow::Result<()> {
        // the FluxConfig last, so that an interrupted removal is retried from the inventory
        for (api_version, kind, _) in KINDS.iter().rev() {
            let resource = resource(api_version, kind)?;
            for object in self.labelled(&resource, name).await? {
                self.delete(&resource, &object).await?;
            }
        }
        Ok(())
    }

    async fn cluster_facts(&self) -> ClusterFacts {
        let kubernetes_version = match self.client.apiserver_version().await {
            Ok(info) => Some(info.git_version),
            Err(err) => {
                tracing::warn!(error = %err, "reading the Kubernetes version failed");
                None
            }
        };
        let nodes: Api<Node> = Api::all(self.client.clone());
        let total_node_count = match nodes.list_metadata(&ListParams::default()).await {
            Ok(list) => i64::try_from(list.items.len()).ok(),
            Err(err) => {
                tracing::warn!(error = %err, "counting the nodes failed");
                None
            }
        };
        ClusterFacts {
            kubernetes_version,
            total_node_count,
        }
    }

    async fn observe(&self, configuration: &DesiredConfiguration) -> Observation {
        match self.read_status(configuration).await {
            Ok(observation) => observation,
            Err(err) => Observation::only(
                ComplianceState::Unknown,
                Some(format!("reading the Flux objects failed: {err:#}")),
            ),
        }
    }
}

impl KubeTarget {
    /// The configuration's secret (`{configuration}-auth`) as the cluster holds it, if it does.
    async fn auth_secret(&self, configuration: &DesiredConfiguration) -> anyhow::Result<Option<Value>> {
        let namespace = configuration.spec.namespace.as_deref().unwrap_or("default");
        let found = self
            .get(
                &resource("v1", "Secret")?,
                namespace,
                &auth_secret_name(&configuration.name),
            )
            .await
            .context("reading the configuration's secret")?;
        Ok(found.map(serde_json::to_value).transpose()?)
    }

    async fn read_status(&self, configuration: &DesiredConfiguration) -> anyhow::Result<Observation> {
        let spec = &configuration.spec;
        let namespace = spec.namespace.as_deref().unwrap_or("default");
        let source_kind = match spec.source_kind.unwrap_or(SourceKind::GitRepository) {
            SourceKind::GitRepository => "GitRepository",
            SourceKind::Bucket | SourceKind::AzureBlob => "Bucket",
            SourceKind::OciRepository => "OCIRepository",
        };
        let mut objects = vec![(resource(SOURCE_API, source_kind)?, configuration.name.clone())];
        for name in spec.kustomizations.iter().flat_map(|k| k.keys()) {
            objects.push((
                resource(KUSTOMIZE_API, "Kustomization")?,
                format!("{}-{name}", configuration.name),
            ));
        }
        let mut statuses = Vec::new();
        let mut messages = Vec::new();
        let mut states = Vec::new();
        let mut source = None;
        for (resource, name) in &objects {
            let found = self.get(resource, namespace, name).await?;
            let value = found
                .as_ref()
                .map(serde_json::to_value)
                .transpose()?
                .unwrap_or(Value::Null);
            let (state, condition) = if found.is_some() {
                compliance_of(&value)
            } else {
                (ComplianceState::Pending, None)
            };
            if state == ComplianceState::NonCompliant
                && let Some(message) = condition.as_ref().and_then(|c| c.message.clone())
            {
                messages.push(format!("{} {name}: {message}", resource.kind));
            }
            if source.is_none() {
                source = Some(value.clone());
            }
            states.push(state);
            statuses.push(ObjectStatus {
                name: Some(name.clone()),
                namespace: Some(namespace.to_owned()),
                kind: Some(resource.kind.clone()),
                compliance_state: Some(state),
                applied_by: None,
                status_conditions: condition.map(|c| vec![c]),
                helm_release_properties: None,
            });
        }
        let compliance = if spec.suspend == Some(true) || states.contains(&ComplianceState::Suspended) {
            ComplianceState::Suspended
        } else if states.contains(&ComplianceState::NonCompliant) {
            ComplianceState::NonCompliant
        } else if states.iter().all(|s| *s == ComplianceState::Compliant) {
            ComplianceState::Compliant
        } else {
            ComplianceState::Pending
        };
        let artifact = source.map(|s| s["status"]["artifact"].clone()).unwrap_or(Value::Null);
        // only an SSH source authenticates with a key whose public half means something to the user
        let repository_public_key = if ssh_git_source(spec).is_some() {
            self.auth_secret(configuration)
                .await?
                .as_ref()
                .and_then(repository_public_key_of)
        } else {
            None
        };
        Ok(Observation {
            repository_public_key,
            compliance,
            message: (!messages.is_empty()).then(|| messages.join("; ")),
            statuses,
            source_synced_commit_id: artifact["revision"].as_str().map(str::to_owned),
            source_updated_at: artifact["lastUpdateTime"].as_str().map(str::to_owned),
        })
    }
}

#[cfg(test)]
mod tests;
