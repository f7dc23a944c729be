//! The `kube` target: each configuration as a `FluxConfig` plus the Flux objects it implies, written with
//! server-side apply (field manager `fluxplane-agent`), and its compliance read back from the Flux objects' `Ready`
//! conditions: True → Compliant, False → Non-Compliant, unknown or not yet reconciled → Pending, suspended →
//! Suspended. Every object carries the label `fluxplane.io/configuration`, which is how stale ones are found. A
//! configuration's secrets become the Secret `{configuration}-auth` in its namespace.
//!
//! - The configuration's namespace is created when missing (labelled managed-by fluxplane), and never deleted: it
//!   may hold what Flux applied and what others put there. A namespace that exists is left as it is.
//! - Under multi-tenancy (`crate::tenancy`) the namespace also gets the `flux-applier` ServiceAccount and its
//!   bindings, and the Kustomizations run as it.
//! - The status also lists the Flux objects the Kustomizations applied (`inventory`): HelmReleases with Azure's
//!   `helmReleaseProperties`, nested Kustomizations, sources, each with its `Ready` condition and `appliedBy`, and
//!   they count towards compliance.
//! - What Flux runs in the extension's namespace becomes the Flux extension's statuses (`flux`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use async_trait::async_trait;
use fluxplane_agent_protocol::agent::{DesiredConfiguration, Drift, ExtensionStatus};
use fluxplane_agent_protocol::flux::{
    ComplianceState, ObjectReference, ObjectStatus, ObjectStatusCondition, ScopeType, SourceKind,
};
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams};
use kube::core::ApiResource;
use serde_json::Value;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Node;

use super::{ClusterFacts, Drifted, Observation, Target};
use crate::deploy_key::ssh_git_source;
use crate::objects::{
    CONFIGURATION_LABEL, FLUXCONFIG_API, GENERATION_ANNOTATION, KUSTOMIZE_API, MANAGED_BY, SOURCE_API,
    auth_secret_name, configuration_objects, credentials_of, repository_public_key_of,
};
use crate::secrets::Credentials;
use crate::tenancy;

mod flux;
mod inventory;

pub use inventory::MAX_OBJECTS_READ;

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

/// The kinds the target writes that no single configuration owns, as (apiVersion, kind, plural): the namespace, and
/// the multi-tenancy applier's account and bindings, shared by a namespace's configurations.
const SHARED_KINDS: [(&str, &str, &str); 4] = [
    ("v1", "Namespace", "namespaces"),
    ("v1", "ServiceAccount", "serviceaccounts"),
    (tenancy::RBAC_API, "RoleBinding", "rolebindings"),
    (tenancy::RBAC_API, "ClusterRoleBinding", "clusterrolebindings"),
];

/// The annotation of a namespace the agent created, naming the configuration it was created for.
pub const CREATED_FOR_ANNOTATION: &str = "fluxplane.io/created-for-configuration";

fn resource(api_version: &str, kind: &str) -> anyhow::Result<ApiResource> {
    let (_, _, plural) = KINDS
        .iter()
        .chain(SHARED_KINDS.iter())
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
    /// Whether configurations are written for multi-tenancy: on until the Flux extension's settings say otherwise.
    multi_tenancy: AtomicBool,
}

fn namespace_of(configuration: &DesiredConfiguration) -> &str {
    configuration.spec.namespace.as_deref().unwrap_or("default")
}

/// Whether an object carries fluxplane's managed-by label: only those are changed or deleted by the agent among the
/// objects it shares between configurations.
fn ours(object: &DynamicObject) -> bool {
    object
        .metadata
        .labels
        .as_ref()
        .and_then(|labels| labels.get(MANAGED_BY.0))
        .is_some_and(|value| value == MANAGED_BY.1)
}

impl KubeTarget {
    pub fn new(client: kube::Client) -> Self {
        Self {
            client,
            multi_tenancy: AtomicBool::new(true),
        }
    }

    fn multi_tenancy(&self) -> bool {
        self.multi_tenancy.load(Ordering::Relaxed)
    }

    /// A target for the cluster the agent runs in, or the one the kubeconfig names. Nothing is asked of the API
    /// server yet: the agent starts while it is unreachable.
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

    /// The API of a shared kind's objects: namespaced, or cluster-wide for namespaces and ClusterRoleBindings.
    fn shared_api(&self, resource: &ApiResource, namespace: Option<&str>) -> Api<DynamicObject> {
        match namespace {
            Some(namespace) => self.namespaced(namespace, resource),
            None => Api::all_with(self.client.clone(), resource),
        }
    }

    /// Creates the configuration's namespace when it is missing: objects in a namespace that does not exist are
    /// refused. One that exists, the agent's or not, is left as it is.
    async fn ensure_namespace(&self, namespace: &str, configuration: &str) -> anyhow::Result<()> {
        let resource = resource("v1", "Namespace")?;
        let api = self.shared_api(&resource, None);
        if api
            .get_opt(namespace)
            .await
            .with_context(|| format!("reading the namespace {namespace}"))?
            .is_some()
        {
            return Ok(());
        }
        let object = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {
                "name": namespace,
                "labels": {MANAGED_BY.0: MANAGED_BY.1},
                "annotations": {CREATED_FOR_ANNOTATION: configuration},
            },
        });
        api.patch(
            namespace,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("creating the namespace {namespace}"))?;
        tracing::info!(namespace, configuration, "created the configuration's namespace");
        Ok(())
    }

    /// Applies a shared object when it is missing or the agent's; one of the same name that someone else made is
    /// left alone (and used as it is).
    async fn ensure_shared(&self, object: &serde_json::Value) -> anyhow::Result<()> {
        let api_version = object["apiVersion"].as_str().unwrap_or_default();
        let kind = object["kind"].as_str().unwrap_or_default();
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        let namespace = object["metadata"]["namespace"].as_str();
        let api = self.shared_api(&resource(api_version, kind)?, namespace);
        let what = format!(
            "{kind} {}{name}",
            namespace.map(|n| format!("{n}/")).unwrap_or_default()
        );
        match api.get_opt(name).await.with_context(|| format!("reading {what}"))? {
            Some(found) if !ours(&found) => {
                tracing::debug!(object = %what, "not the agent's: left as it is");
                Ok(())
            }
            _ => {
                api.patch(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(object))
                    .await
                    .with_context(|| format!("applying {what}"))?;
                Ok(())
            }
        }
    }

    /// Deletes a shared object if it is there and the agent's.
    async fn delete_shared(&self, kind: &str, namespace: Option<&str>, name: &str) -> anyhow::Result<()> {
        let (api_version, _, _) = SHARED_KINDS
            .iter()
            .find(|(_, k, _)| *k == kind)
            .context("not a shared kind")?;
        let api = self.shared_api(&resource(api_version, kind)?, namespace);
        let what = format!(
            "{kind} {}{name}",
            namespace.map(|n| format!("{n}/")).unwrap_or_default()
        );
        if let Some(found) = api.get_opt(name).await.with_context(|| format!("reading {what}"))?
            && ours(&found)
        {
            match api.delete(name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(err) => return Err(err).with_context(|| format!("deleting {what}")),
            }
            tracing::info!(object = %what, "deleted: no longer needed");
        }
        Ok(())
    }

    /// The objects a configuration's Kustomizations need to run as the multi-tenancy applier: none without
    /// multi-tenancy.
    fn applier_objects(&self, configuration: &DesiredConfiguration) -> Vec<serde_json::Value> {
        if !self.multi_tenancy() {
            return Vec::new();
        }
        let namespace = namespace_of(configuration);
        let mut objects = vec![tenancy::service_account(namespace), tenancy::role_binding(namespace)];
        if configuration.spec.scope != Some(ScopeType::Namespace) {
            objects.push(tenancy::cluster_role_binding(namespace));
        }
        objects
    }

    /// The objects `apply` writes for the configuration, in order: under multi-tenancy its Kustomizations run as
    /// the applier.
    fn rendered(&self, configuration: &DesiredConfiguration, credentials: &Credentials) -> Vec<serde_json::Value> {
        let mut objects = configuration_objects(configuration, credentials);
        if self.multi_tenancy() {
            tenancy::impersonate(&mut objects);
        }
        objects
    }

    /// Removes what of `namespace`'s applier its configurations no longer need: all of it without multi-tenancy or
    /// once the namespace holds no configuration, the ClusterRoleBinding once none of them is of cluster scope.
    async fn settle_applier(&self, namespace: &str) -> anyhow::Result<()> {
        let resource = resource(FLUXCONFIG_API, "FluxConfig")?;
        let selector = format!("{}={}", MANAGED_BY.0, MANAGED_BY.1);
        let configs = self
            .namespaced(namespace, &resource)
            .list(&ListParams::default().labels(&selector))
            .await
            .with_context(|| format!("listing the FluxConfigs of {namespace}"))?
            .items;
        let enforced = self.multi_tenancy();
        let any = enforced && !configs.is_empty();
        let cluster_wide = enforced && configs.iter().any(|c| c.data["spec"]["scope"] != "namespace");
        if !any {
            self.delete_shared("RoleBinding", Some(namespace), tenancy::APPLIER_BINDING)
                .await?;
            self.delete_shared("ServiceAccount", Some(namespace), tenancy::APPLIER)
                .await?;
        }
        if !cluster_wide {
            self.delete_shared("ClusterRoleBinding", None, &tenancy::cluster_binding_name(namespace))
                .await?;
        }
        Ok(())
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
        let own_namespace = namespace_of(configuration);
        self.ensure_namespace(own_namespace, &configuration.name).await?;
        // the applier is in place before the Kustomizations that run as it
        for object in &self.applier_objects(configuration) {
            self.ensure_shared(object).await?;
        }
        let objects = self.rendered(configuration, credentials);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        let mut wanted = BTreeSet::new();
        // the namespaces whose applier may have to go: this one, and any the configuration left
        let mut touched = BTreeSet::from([own_namespace.to_owned()]);
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
                    touched.insert(key.1.clone());
                    self.delete(&resource, &object).await?;
                }
            }
        }
        for namespace in &touched {
            self.settle_applier(namespace).await?;
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

    async fn drift(
        &self,
        configuration: &DesiredConfiguration,
        credentials: &Credentials,
    ) -> anyhow::Result<Vec<Drifted>> {
        let mut drifted = Vec::new();
        // the applier (one that someone else made counts as there), and what the configuration implies
        for object in &self.applier_objects(configuration) {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let kind = object["kind"].as_str().unwrap_or_default();
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let namespace = object["metadata"]["namespace"].as_str();
            let found = self
                .shared_api(&resource(api_version, kind)?, namespace)
                .get_opt(name)
                .await
                .with_context(|| format!("reading {kind} {name}"))?;
            match found {
                None => drifted.push(Drifted::new(object, Drift::Deleted)),
                Some(found) if ours(&found) => {
                    drifted.extend(Drifted::of(object, Some(&serde_json::to_value(found)?)));
                }
                Some(_) => {}
            }
        }
        for object in &self.rendered(configuration, credentials) {
            let api_version = object["apiVersion"].as_str().unwrap_or_default();
            let kind = object["kind"].as_str().unwrap_or_default();
            let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default");
            let name = object["metadata"]["name"].as_str().unwrap_or_default();
            let found = self
                .get(&resource(api_version, kind)?, namespace, name)
                .await
                .with_context(|| format!("reading {kind} {namespace}/{name}"))?
                .map(serde_json::to_value)
                .transpose()?;
            drifted.extend(Drifted::of(object, found.as_ref()));
        }
        Ok(drifted)
    }

    async fn remove(&self, name: &str) -> anyhow::Result<()> {
        // the FluxConfig last, so that an interrupted removal is retried from the inventory
        let mut touched = BTreeSet::new();
        for (api_version, kind, _) in KINDS.iter().rev() {
            let resource = resource(api_version, kind)?;
            for object in self.labelled(&resource, name).await? {
                touched.extend(object.metadata.namespace.clone());
                self.delete(&resource, &object).await?;
            }
        }
        // the applier goes with its namespace's last configuration; the namespace itself stays
        for namespace in &touched {
            self.settle_applier(namespace).await?;
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

    async fn reachable(&self) -> anyhow::Result<()> {
        self.client
            .apiserver_version()
            .await
            .context("the Kubernetes API server does not answer")?;
        Ok(())
    }

    fn set_multi_tenancy(&self, enforced: bool) -> bool {
        self.multi_tenancy.store(enforced, Ordering::Relaxed);
        true
    }

    async fn flux_statuses(&self, namespace: &str) -> Vec<ExtensionStatus> {
        let deployments: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        match deployments
            .list(&ListParams::default().labels(flux::PART_OF_FLUX))
            .await
        {
            Ok(list) => flux::statuses(namespace, &list.items, self.multi_tenancy()),
            Err(err) => flux::unreadable(namespace, &err.to_string()),
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
        let namespace = namespace_of(configuration);
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
        // what the Kustomizations applied, read after them: (entry, the Kustomization that applied it)
        let mut applied = Vec::new();
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
            if resource.kind == "Kustomization" {
                let by = ObjectReference {
                    name: Some(name.clone()),
                    namespace: Some(namespace.to_owned()),
                };
                applied.extend(inventory::flux_entries(&value).into_iter().map(|e| (e, by.clone())));
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
        self.read_applied(applied, &objects, namespace, &mut statuses, &mut states, &mut messages)
            .await;
        let compliance = if spec.suspend == Some(true) || states.contains(&ComplianceState::Suspended) {
            ComplianceState::Suspended
        } else if states.contains(&ComplianceState::NonCompliant) {
            ComplianceState::NonCompliant
        } else if states.iter().all(|s| *s == ComplianceState::Compliant) {
            ComplianceState::Compliant
        } else if states.contains(&ComplianceState::Unknown) {
            ComplianceState::Unknown
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

    /// Reads the Flux objects the Kustomizations applied (at most [`MAX_OBJECTS_READ`], those the agent wrote
    /// itself skipped) into the statuses, their states and messages. One that cannot be read is Unknown, saying why.
    async fn read_applied(
        &self,
        applied: Vec<(inventory::Entry, ObjectReference)>,
        own: &[(ApiResource, String)],
        namespace: &str,
        statuses: &mut Vec<ObjectStatus>,
        states: &mut Vec<ComplianceState>,
        messages: &mut Vec<String>,
    ) {
        let multi_tenancy = self.multi_tenancy();
        let mut seen = BTreeSet::new();
        let mut unknown_kinds = BTreeSet::new();
        let (mut listed, mut read) = (0, 0);
        for (entry, by) in applied {
            let written_by_agent = entry.namespace == namespace
                && own
                    .iter()
                    .any(|(r, name)| r.group == entry.group && r.kind == entry.kind && *name == entry.name);
            if written_by_agent || !seen.insert(entry.clone()) {
                continue;
            }
            let Some(resource) = entry.resource() else {
                unknown_kinds.insert(format!("{} ({})", entry.kind, entry.group));
                continue;
            };
            listed += 1;
            if read == MAX_OBJECTS_READ {
                continue;
            }
            read += 1;
            let api = if entry.namespace.is_empty() {
                Api::<DynamicObject>::all_with(self.client.clone(), &resource)
            } else {
                self.namespaced(&entry.namespace, &resource)
            };
            let (status, message) = match api.get_opt(&entry.name).await {
                Ok(found) => {
                    let value = found.map(|o| serde_json::to_value(o).unwrap_or(Value::Null));
                    inventory::object_status(&entry, value.as_ref(), &by, multi_tenancy)
                }
                Err(err) => {
                    let why = format!(
                        "reading {} {}/{} failed: {err}",
                        entry.kind, entry.namespace, entry.name
                    );
                    let (mut status, _) = inventory::object_status(&entry, None, &by, multi_tenancy);
                    status.compliance_state = Some(ComplianceState::Unknown);
                    status.status_conditions = Some(vec![ObjectStatusCondition {
                        message: Some(why.clone()),
                        reason: Some("ReadFailed".to_owned()),
                        status: Some("Unknown".to_owned()),
                        type_: Some("Ready".to_owned()),
                        last_transition_time: None,
                    }]);
                    (status, Some(why))
                }
            };
            states.push(status.compliance_state.unwrap_or(ComplianceState::Unknown));
            messages.extend(message);
            statuses.push(status);
        }
        let unknown_kinds: Vec<String> = unknown_kinds.into_iter().collect();
        messages.extend(inventory::unread_message(read, listed, &unknown_kinds));
    }
}

#[cfg(test)]
mod tests;
