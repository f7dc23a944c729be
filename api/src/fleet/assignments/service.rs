//! The write rules of policy assignments: an assignment and every configuration it gives, changes or takes are
//! one transaction in the store; here it is decided what record is proposed (a new generation only when the
//! rendered configuration changes, a new rollout with it), which cluster group it follows, and what an overlap with
//! another assignment answers.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use fluxplane_agent_protocol::flux::ComplianceState;

use super::model::{AssignmentSpec, ClusterCompliance, Rendering};
use super::pace::Pace;
use super::rollout;
use crate::arm::conditional::Preconditions;
use crate::arm::scope::FleetScope;
use crate::arm::system_data::SystemData;
use crate::arm::write::{Attempt, new_etag, retry};
use crate::error::{ApiError, ApiResult};
use crate::fleet::template::Unresolvable;
use crate::lifecycle::{Lifetimes, ProvisioningState};
use crate::metrics::Metrics;
use crate::model::{AssignmentWrite, ConfigurationRecord, PolicyAssignmentRecord, ReconcileTarget};
use crate::store::Store;
use crate::turns::Turns;

pub const TYPE_NAME: &str = "policyAssignments";

/// Writes policy assignments.
#[derive(Clone)]
pub struct Assignments {
    store: Arc<dyn Store>,
    turns: Arc<Turns>,
    lifetimes: Lifetimes,
    metrics: Arc<Metrics>,
    rollouts: Arc<Pace>,
}

impl Assignments {
    pub fn new(
        store: Arc<dyn Store>,
        turns: Arc<Turns>,
        lifetimes: Lifetimes,
        metrics: Arc<Metrics>,
        rollouts: Arc<Pace>,
    ) -> Self {
        Self {
            store,
            turns,
            lifetimes,
            metrics,
            rollouts,
        }
    }

    /// The store id of the group a `clusterGroupId` names, which must exist in the assignment's subscription and
    /// share clusters with its scope.
    pub async fn resolve_group(&self, scope: &FleetScope, id: &str) -> ApiResult<i64> {
        const TARGET: &str = "properties.clusterGroupId";
        let invalid = |message: &str| ApiError::invalid(TARGET, format!("'{id}': {message}"));
        let (group_scope, name) = FleetScope::parse_resource_id(id, "clusterGroups")
            .ok_or_else(|| invalid("not the ARM id of a cluster group"))?
            .map_err(|_| invalid("not a valid ARM id"))?;
        if group_scope.subscription.key() != scope.subscription.key() {
            return Err(invalid("the group must be in the assignment's subscription"));
        }
        if let (Some(a), Some(g)) = (&scope.resource_group, &group_scope.resource_group)
            && a.key() != g.key()
        {
            return Err(invalid(
                "the group's resource group and the assignment's share no cluster",
            ));
        }
        let group = self
            .store
            .get_cluster_group(&group_scope.key(name))
            .await?
            .ok_or_else(|| invalid("no such cluster group"))?;
        Ok(group.id)
    }

    /// Creates or replaces the assignment `name` of `scope`, with every configuration it manages; true when it was
    /// created. `rendering` is `spec`'s template, checked and compiled.
    pub async fn put(
        &self,
        subject: &str,
        scope: &FleetScope,
        name: &str,
        spec: &AssignmentSpec,
        rendering: &Rendering,
        preconditions: &Preconditions,
    ) -> ApiResult<(PolicyAssignmentRecord, bool)> {
        let group = match &spec.cluster_group_id {
            Some(id) => Some(self.resolve_group(scope, id).await?),
            None => None,
        };
        let key = &scope.key(name);
        let (record, created) = retry(
            &self.turns,
            &format!("{TYPE_NAME} {key}"),
            preconditions,
            move || async move {
                let current = self.store.get_policy_assignment(key).await?;
                preconditions.check(current.as_ref().map(|a| a.etag.as_str()))?;
                let expected = current.as_ref().map(|a| a.etag.clone());
                let record = proposed(scope, name, spec, rendering, group, current, subject);
                let started = std::time::Instant::now();
                let outcome = self
                    .store
                    .write_policy_assignment(&record, expected.as_deref(), &self.lifetimes.managed_write(Utc::now()))
                    .await?;
                self.metrics.assignment_apply.observe(started.elapsed().as_secs_f64());
                match outcome {
                    AssignmentWrite::Written => Ok(Attempt::Done((record, expected.is_none()))),
                    AssignmentWrite::Overlap(others) => Err(ApiError::Conflict(format!(
                        "the assignment would write the configuration '{}' on clusters that the assignments {} already \
                     write it on: narrow one of the selectors or use another configuration name",
                        spec.configuration_name,
                        others.iter().map(|o| format!("'{o}'")).collect::<Vec<_>>().join(", ")
                    ))),
                    AssignmentWrite::Conflict => Ok(Attempt::Lost),
                }
            },
        )
        .await?;
        tracing::info!(assignment = %record.arm_id(), generation = record.generation, "policy assignment written");
        // the store may have moved its rollout on in the same transaction
        let record = self.store.get_policy_assignment(key).await?.unwrap_or(record);
        if record.rollout_state.as_ref().is_some_and(|s| s.state.moving()) {
            self.rollouts.started();
        }
        Ok((record, created))
    }

    /// Pauses or resumes the assignment's rollout, as `subject` asks; answers the assignment as it stands after. A
    /// rollout in no state to be so steered (none under way, completed, halted) is a conflict.
    pub async fn steer(
        &self,
        subject: &str,
        scope: &FleetScope,
        name: &str,
        steer: rollout::Steer,
    ) -> ApiResult<Option<PolicyAssignmentRecord>> {
        let managed = self.lifetimes.managed_write(Utc::now());
        match self
            .store
            .steer_rollout(&scope.key(name), steer, subject, &managed)
            .await?
        {
            None => Ok(None),
            Some(Err(refused)) => Err(ApiError::Conflict(refused.0)),
            Some(Ok(record)) => {
                tracing::info!(assignment = %record.arm_id(), ?steer, by = subject, "rollout steered");
                if steer == rollout::Steer::Resume {
                    self.rollouts.started();
                }
                Ok(Some(record))
            }
        }
    }

    /// Asks the agents of every configuration the assignment manages to re-check their source at once (the
    /// `reconcile` action); `None` when there is no such assignment. Answers when it was asked and how many were.
    pub async fn request_reconcile(
        &self,
        subject: &str,
        scope: &FleetScope,
        name: &str,
    ) -> ApiResult<Option<(DateTime<Utc>, u64)>> {
        let Some(assignment) = self.store.get_policy_assignment(&scope.key(name)).await? else {
            return Ok(None);
        };
        let at = crate::lifecycle::reconcile_requested(Utc::now());
        let asked = self
            .store
            .request_reconcile(ReconcileTarget::ManagedBy(assignment.id), at, None)
            .await?;
        tracing::info!(assignment = %assignment.arm_id(), by = subject, configurations = asked, "reconcile requested");
        Ok(Some((at, asked)))
    }

    /// Deletes the assignment with what it decided for its configurations; false when there was none.
    pub async fn delete(&self, scope: &FleetScope, name: &str) -> ApiResult<bool> {
        let deleted = self.store.delete_policy_assignment(&scope.key(name)).await?;
        if deleted {
            tracing::info!(assignment = %scope.resource_id(TYPE_NAME, name), "policy assignment deleted");
        }
        Ok(deleted)
    }
}

/// The record a PUT of `spec` writes over `current` (a plan evaluates the same record without writing it).
pub fn proposed(
    scope: &FleetScope,
    name: &str,
    spec: &AssignmentSpec,
    rendering: &Rendering,
    group: Option<i64>,
    current: Option<PolicyAssignmentRecord>,
    subject: &str,
) -> PolicyAssignmentRecord {
    let now = Utc::now();
    let rendered = rendering.fingerprint(spec);
    match current {
        None => PolicyAssignmentRecord {
            id: 0,
            key: scope.key(name),
            subscription_key: scope.subscription.key(),
            resource_group_key: scope.resource_group.as_ref().map(|g| g.key()).unwrap_or_default(),
            subscription: scope.subscription.as_str().to_owned(),
            resource_group: scope.resource_group.as_ref().map(|g| g.as_str().to_owned()),
            name: name.to_owned(),
            cluster_group_id: group,
            configuration_name: spec.configuration_name.clone(),
            spec: spec.clone(),
            rendered,
            generation: 1,
            etag: new_etag(),
            system_data: SystemData::created(subject, now),
            // its first deployment is staged as any change is
            rollout_state: spec.rollout.as_ref().map(|_| rollout::start(1, now)),
            last_compliant: None,
        },
        Some(current) => {
            // managed configurations get a new generation only when what they hold changes (a template that reads
            // the cluster: when the template or its parameters change)
            let changed = current.rendered != rendered;
            let generation = current.generation + i64::from(changed);
            PolicyAssignmentRecord {
                cluster_group_id: group,
                configuration_name: spec.configuration_name.clone(),
                spec: spec.clone(),
                // a new generation starts a new rollout, from the first batch
                rollout_state: match (&spec.rollout, changed) {
                    (None, _) => None,
                    (Some(_), true) => Some(rollout::start(generation, now)),
                    (Some(_), false) => current.rollout_state.clone(),
                },
                generation,
                rendered,
                etag: new_etag(),
                system_data: current.system_data.modified(subject, now),
                ..current
            }
        }
    }
}

/// Where a selected cluster stands with the assignment `id` at `generation`, and why. `online` says whether its
/// agent was heard from recently; `unresolvable`, why the template cannot be rendered for it, if it cannot.
pub fn assess(
    id: i64,
    generation: i64,
    configuration: Option<&ConfigurationRecord>,
    online: bool,
    unresolvable: Option<&Unresolvable>,
) -> (ClusterCompliance, String) {
    if let Some(c) = configuration
        && c.managed_by != Some(id)
    {
        return (
            ClusterCompliance::Conflict,
            "a configuration of that name that the assignment does not manage is there; it is left as it is".into(),
        );
    }
    if let Some(why) = unresolvable {
        let consequence = match configuration {
            Some(_) => "the configuration it has is kept as it was",
            None => "it gets the configuration once the template can be rendered for it",
        };
        return (
            ClusterCompliance::Unresolvable,
            format!("{} (at {}); {consequence}", why.message, why.target),
        );
    }
    let Some(c) = configuration else {
        return (
            ClusterCompliance::Missing,
            "the cluster has no configuration of that name".into(),
        );
    };
    if c.managed_generation.is_none() {
        let when = c
            .drifted_at
            .map(|t| format!(" at {}", t.to_rfc3339()))
            .unwrap_or_default();
        return (
            ClusterCompliance::Drifted,
            format!("written by hand{when}; the assignment restores it at its next reconciliation"),
        );
    }
    if !online {
        return (
            ClusterCompliance::Offline,
            "the cluster's agent is silent: its last report may be stale".into(),
        );
    }
    if c.managed_generation != Some(generation) || c.reported_generation != Some(c.generation) {
        return (
            ClusterCompliance::Pending,
            format!("the agent has not reported generation {} yet", c.generation),
        );
    }
    let message = c.failure.clone().or_else(|| c.observed.error_message.clone());
    match (c.provisioning_state, c.compliance_state) {
        (ProvisioningState::Failed, _) => (
            ClusterCompliance::NonCompliant,
            message.unwrap_or_else(|| "the agent could not apply it".into()),
        ),
        (_, ComplianceState::Compliant) => (ClusterCompliance::Compliant, "compliant".into()),
        (_, ComplianceState::NonCompliant) => (
            ClusterCompliance::NonCompliant,
            message.unwrap_or_else(|| "the agent reports it non-compliant".into()),
        ),
        (_, state) => (
            ClusterCompliance::Pending,
            format!("the agent reports it {}", state.as_str()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::arm::ids::{ClusterPath, ClusterRef, ClusterScope, ConfigurationName};
    use crate::arm::scope::ClusterSet;
    use crate::clusters::service::ClusterDraft;
    use crate::fleet::assignments::model::{PolicyAssignmentRequest, render};
    use crate::flux::secrets::SecretFields;
    use crate::notify::Notifier;
    use crate::on_both_backends;
    use crate::testing::{Backend, Services, with_database};

    async fn cluster(services: &Services, name: &str, env: &str) -> ClusterRef {
        let draft = ClusterDraft::new(
            "westeurope".into(),
            BTreeMap::from([("env".into(), env.into())]),
            serde_json::from_value(json!({"properties": {"agentPublicKeyCertificate": "a2V5"}})).unwrap(),
        )
        .unwrap();
        let cluster = ClusterRef::parse("sub", "rg", name).unwrap();
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
        cluster
    }

    fn spec(name: &str, branch: &str) -> AssignmentSpec {
        let request: PolicyAssignmentRequest = serde_json::from_value(json!({"properties": {
            "selector": {"matchLabels": {"env": "prod"}},
            "configurationName": name,
            "configurationTemplate": {
                "gitRepository": {"url": "https://example.com/fleet.git", "repositoryRef": {"branch": branch}},
                "kustomizations": {"infra": {"path": "./infra"}}
            }
        }}))
        .unwrap();
        request.properties
    }

    async fn assign(
        services: &Services,
        name: &str,
        spec: &AssignmentSpec,
    ) -> ApiResult<(PolicyAssignmentRecord, bool)> {
        let scope = FleetScope::parse("sub", None).unwrap();
        let rendered = render(spec)?;
        services
            .assignments
            .put("owner", &scope, name, spec, &rendered, &Preconditions::default())
            .await
    }

    on_both_backends!(
        an_assignment_writes_the_configuration_of_every_cluster_it_selects_and_overlaps_are_refused,
        assignment_case
    );
    async fn assignment_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            let prod = cluster(&services, "prod-1", "prod").await;
            cluster(&services, "dev-1", "dev").await;
            let (record, created) = assign(&services, "baseline", &spec("baseline", "main")).await.unwrap();
            assert!(created);
            let everywhere = ClusterSet::Subscription {
                subscription_key: "sub".into(),
            };
            let written = store.configurations_named(&everywhere, "baseline").await.unwrap();
            assert_eq!(written.len(), 1, "the prod cluster only: {written:?}");
            let prod_id = store.get_cluster(&prod.key()).await.unwrap().unwrap().id;
            assert_eq!(
                (written[0].cluster_id, written[0].managed_by),
                (prod_id, Some(record.id))
            );

            let (_, created) = assign(&services, "baseline", &spec("baseline", "main")).await.unwrap();
            assert!(!created);
            let overlap = assign(&services, "rival", &spec("baseline", "dev")).await.unwrap_err();
            assert_eq!(overlap.code(), "Conflict");
            assert!(overlap.to_string().contains("'baseline'"), "{overlap}");
            assert!(
                store.get_policy_assignment("sub/rival").await.unwrap().is_none(),
                "nothing of it stays"
            );

            let scope = FleetScope::parse("sub", None).unwrap();
            assert!(services.assignments.delete(&scope, "baseline").await.unwrap());
            assert!(!services.assignments.delete(&scope, "baseline").await.unwrap());
        })
        .await;
    }

    async fn tagged(services: &Services, name: &str, tags: &[(&str, &str)]) {
        let draft = ClusterDraft::new(
            "westeurope".into(),
            tags.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            serde_json::from_value(json!({"properties": {"agentPublicKeyCertificate": "a2V5"}})).unwrap(),
        )
        .unwrap();
        let cluster = ClusterRef::parse("sub", "rg", name).unwrap();
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
    }

    /// An assignment of `name` to every `env=prod` cluster whose kustomization `k` renders `path` per cluster.
    fn per_cluster(name: &str, path: &str, substitute: Value) -> AssignmentSpec {
        let request: PolicyAssignmentRequest = serde_json::from_value(json!({"properties": {
            "selector": {"matchLabels": {"env": "prod"}},
            "configurationName": name,
            "configurationTemplate": {
                "gitRepository": {"url": "https://example.com/fleet.git", "repositoryRef": {"branch": "[parameters('branch')]"}},
                "kustomizations": {"k": {"path": path, "postBuild": {"substitute": substitute}}}
            },
            "parameters": {"branch": "main"}
        }}))
        .unwrap();
        request.properties
    }

    on_both_backends!(
        a_template_that_reads_tags_gives_each_cluster_its_own_configuration_and_follows_their_changes,
        per_cluster_case
    );
    async fn per_cluster_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            for (name, region) in [
                ("eu-1", Some("eu")),
                ("eu-2", Some("eu")),
                ("us-1", Some("us")),
                ("bare", None),
            ] {
                let mut tags = vec![("env", "prod")];
                tags.extend(region.map(|r| ("region", r)));
                tagged(&services, name, &tags).await;
            }
            // each cluster its own configuration (one statement row each), and one that clusters share by region
            let mut apps = per_cluster(
                "apps",
                "[concat('./apps/', cluster().tags.region)]",
                json!({"cluster": "[cluster().name]"}),
            );
            let infra = per_cluster("infra", "[concat('./infra/', cluster().tags.region)]", json!({}));
            assign(&services, "apps", &apps).await.unwrap();
            assign(&services, "infra", &infra).await.unwrap();
            let held = |name: &'static str| {
                let store = store.clone();
                async move {
                    let everywhere = ClusterSet::Subscription {
                        subscription_key: "sub".into(),
                    };
                    let mut held = std::collections::BTreeMap::new();
                    for c in store.configurations_named(&everywhere, name).await.unwrap() {
                        let cluster = store.cluster_tags(&everywhere).await.unwrap();
                        let cluster = cluster.into_iter().find(|t| t.id == c.cluster_id).unwrap().name;
                        let k = &c.spec.kustomizations.as_ref().unwrap()["k"];
                        let substitute = k
                            .post_build
                            .as_ref()
                            .and_then(|p| p.substitute.clone())
                            .unwrap_or_default();
                        let path = k.path.clone().unwrap();
                        held.insert(cluster, (path, substitute.get("cluster").cloned(), c.generation));
                    }
                    held
                }
            };
            let before = held("apps").await;
            assert_eq!(
                before
                    .iter()
                    .map(|(c, (path, name, _))| (c.as_str(), path.as_str(), name.as_deref()))
                    .collect::<Vec<_>>(),
                [
                    ("eu-1", "./apps/eu", Some("eu-1")),
                    ("eu-2", "./apps/eu", Some("eu-2")),
                    ("us-1", "./apps/us", Some("us-1"))
                ],
                "bare has no region tag: nothing for it"
            );
            let paths = |held: &std::collections::BTreeMap<String, (String, Option<String>, i64)>| {
                held.iter()
                    .map(|(c, (path, ..))| format!("{c}:{path}"))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                paths(&held("infra").await),
                ["eu-1:./infra/eu", "eu-2:./infra/eu", "us-1:./infra/us"]
            );

            // a tag change re-renders that cluster's configurations in the cluster's write; a tag they do not read,
            // nothing; a tag gone leaves what the cluster has as it was; a tag that comes brings the configuration
            tagged(&services, "us-1", &[("env", "prod"), ("region", "eu")]).await;
            tagged(&services, "eu-1", &[("env", "prod"), ("region", "eu"), ("team", "x")]).await;
            tagged(&services, "eu-2", &[("env", "prod")]).await;
            tagged(&services, "bare", &[("env", "prod"), ("region", "ap")]).await;
            let after = held("apps").await;
            assert_eq!(after["us-1"].0, "./apps/eu");
            assert_eq!(after["us-1"].2, before["us-1"].2 + 1, "a new generation");
            assert_eq!(after["eu-1"], before["eu-1"], "a tag it does not read");
            assert_eq!(after["eu-2"], before["eu-2"], "kept as it was");
            assert_eq!((after["bare"].0.as_str(), after["bare"].2), ("./apps/ap", 1));
            assert_eq!(
                paths(&held("infra").await),
                [
                    "bare:./infra/ap",
                    "eu-1:./infra/eu",
                    "eu-2:./infra/eu",
                    "us-1:./infra/eu"
                ]
            );

            // the same assignment written again changes nothing; a new parameter rewrites every cluster it can
            assign(&services, "apps", &apps).await.unwrap();
            assert_eq!(held("apps").await, after);
            apps.parameters.insert("branch".into(), json!("release"));
            let (record, _) = assign(&services, "apps", &apps).await.unwrap();
            assert_eq!(record.generation, 2);
            let rewritten = held("apps").await;
            for cluster in ["bare", "eu-1", "us-1"] {
                assert_eq!(rewritten[cluster].2, after[cluster].2 + 1, "{cluster}");
            }
            assert_eq!(rewritten["eu-2"], after["eu-2"], "unresolvable: kept as it was");
            let eu_2 = store.get_cluster("sub/rg/eu-2").await.unwrap().unwrap().id;
            let kept = store.get_configuration(eu_2, "apps").await.unwrap().unwrap();
            assert_eq!(
                kept.managed_generation,
                Some(1),
                "still of the generation it was written at"
            );
        })
        .await;
    }

    on_both_backends!(
        the_sweepers_drift_restoration_wakes_the_clusters_waiting_polls_at_once,
        drift_wakes_case
    );
    async fn drift_wakes_case(backend: Backend) {
        with_database(backend, |db| async move {
            let store = db.store().await;
            let services = Services::new(store.clone());
            let prod = cluster(&services, "prod-1", "prod").await;
            assign(&services, "baseline", &spec("baseline", "main")).await.unwrap();

            // an agent waits on its cluster, as a long-poll does
            let notifier = Arc::new(Notifier::default());
            let follower = tokio::spawn({
                let (store, notifier) = (store.clone(), notifier.clone());
                async move { store.follow_changes(notifier).await }
            });
            let mut waiting = notifier.subscribe(&prod.key());
            let scope = ClusterScope::parse(&ClusterPath {
                subscription_id: "sub".into(),
                resource_group_name: "rg".into(),
                cluster_rp: "Microsoft.Kubernetes".into(),
                cluster_resource_name: "connectedClusters".into(),
                cluster_name: "prod-1".into(),
            })
            .unwrap();
            let target = services
                .configurations
                .target(scope, ConfigurationName::parse("baseline").unwrap())
                .await
                .unwrap();
            // someone edits the managed configuration by hand: drift (retried until the follower listens)
            let mut hand: fluxplane_agent_protocol::flux::FluxConfigurationSpec = serde_json::from_value(json!({
                "gitRepository": {"url": "https://example.com/fleet.git", "repositoryRef": {"branch": "hotfix"}},
                "kustomizations": {"infra": {"path": "./infra"}}
            }))
            .unwrap();
            let mut heard = false;
            for _ in 0..20 {
                hand.suspend = Some(!hand.suspend.unwrap_or_default());
                services
                    .configurations
                    .put(
                        "mallory",
                        &target,
                        &hand,
                        &SecretFields::default(),
                        &Preconditions::default(),
                        crate::arm::ApiVersion::newest(),
                    )
                    .await
                    .unwrap();
                if tokio::time::timeout(Duration::from_millis(500), waiting.changed())
                    .await
                    .is_ok()
                {
                    heard = true;
                    break;
                }
            }
            assert!(heard, "a write by hand wakes the cluster's polls");
            waiting.borrow_and_update();

            let restored = store
                .reconcile_assignments(&crate::lifecycle::ManagedWrite::default())
                .await
                .unwrap();
            assert_eq!(restored, 1);
            tokio::time::timeout(Duration::from_secs(1), waiting.changed())
                .await
                .expect("the restoration wakes the waiting poll within a second")
                .unwrap();
            let stored = store
                .get_configuration(target.cluster.id, "baseline")
                .await
                .unwrap()
                .unwrap();
            let spec = serde_json::to_value(&stored.spec).unwrap();
            assert_eq!(
                spec["gitRepository"]["repositoryRef"]["branch"],
                Value::from("main"),
                "restored"
            );
            follower.abort();
        })
        .await;
    }
}
