//! The write rules of policy assignments: an assignment and every configuration it gives, changes or takes are
//! one transaction in the store; here it is decided what record is proposed (a new generation only when the
//! rendered configuration changes, a new rollout with it), which cluster group it follows, and what an overlap with
//! another assignment answers.

use std::sync::Arc;

use chrono::Utc;
use fluxplane_agent_protocol::flux::{ComplianceState, FluxConfigurationSpec};

use super::model::{AssignmentSpec, ClusterCompliance, RolloutPhase, RolloutState};
use crate::arm::conditional::Preconditions;
use crate::arm::scope::FleetScope;
use crate::arm::system_data::SystemData;
use crate::arm::write::{Attempt, new_etag, retry};
use crate::error::{ApiError, ApiResult};
use crate::lifecycle::{Lifetimes, ProvisioningState};
use crate::metrics::Metrics;
use crate::model::{AssignmentWrite, ConfigurationRecord, PolicyAssignmentRecord};
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
}

impl Assignments {
    pub fn new(store: Arc<dyn Store>, turns: Arc<Turns>, lifetimes: Lifetimes, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            turns,
            lifetimes,
            metrics,
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
    /// created. `rendered` is the configuration `spec`'s template renders to.
    pub async fn put(
        &self,
        subject: &str,
        scope: &FleetScope,
        name: &str,
        spec: &AssignmentSpec,
        rendered: &FluxConfigurationSpec,
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
                let record = proposed(scope, name, spec, rendered, group, current, subject);
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
        Ok((record, created))
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
    rendered: &FluxConfigurationSpec,
    group: Option<i64>,
    current: Option<PolicyAssignmentRecord>,
    subject: &str,
) -> PolicyAssignmentRecord {
    let now = Utc::now();
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
            rendered: rendered.clone(),
            generation: 1,
            etag: new_etag(),
            system_data: SystemData::created(subject, now),
            // a new assignment creates every configuration at once: there is nothing to roll out
            rollout_state: None,
        },
        Some(current) => {
            // managed configurations get a new generation only when what they hold changes
            let changed = current.rendered != *rendered;
            let generation = current.generation + i64::from(changed);
            PolicyAssignmentRecord {
                cluster_group_id: group,
                configuration_name: spec.configuration_name.clone(),
                spec: spec.clone(),
                // a new generation starts a new rollout, from the first batch
                rollout_state: match (&spec.rollout, changed) {
                    (None, _) => None,
                    (Some(_), true) => Some(RolloutState {
                        generation,
                        state: RolloutPhase::Progressing,
                        batch: 0,
                        batch_started_at: now,
                        failures: 0,
                        message: None,
                    }),
                    (Some(_), false) => current.rollout_state.clone(),
                },
                generation,
                rendered: rendered.clone(),
                etag: new_etag(),
                system_data: current.system_data.modified(subject, now),
                ..current
            }
        }
    }
}

/// Where a selected cluster stands with the assignment `id` at `generation`, and why. `online` says whether its
/// agent was heard from recently.
pub fn assess(
    id: i64,
    generation: i64,
    configuration: Option<&ConfigurationRecord>,
    online: bool,
) -> (ClusterCompliance, String) {
    let Some(c) = configuration else {
        return (
            ClusterCompliance::Missing,
            "the cluster has no configuration of that name".into(),
        );
    };
    if c.managed_by != Some(id) {
        return (
            ClusterCompliance::Conflict,
            "a configuration of that name that the assignment does not manage is there; it is left as it is".into(),
        );
    }
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
