//! The policyAssignments resource: what users write, how a write is checked and rendered into the configuration
//! every matching cluster gets, and what the API answers.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use std::collections::HashMap;

use super::rollout::{BatchMember, Members, Rollout, RolloutState};
use crate::arm::body::parse;
use crate::arm::ids::ConfigurationName;
use crate::arm::system_data::SystemData;
use crate::error::{ApiError, ApiResult, ErrorDetail, Problems};
use crate::fleet::breaker::CircuitBreaker;
use crate::fleet::selector::LabelSelector;
use crate::fleet::template::{ClusterFacts, Template, Unresolvable};
use crate::flux::secrets::SecretFields;
use crate::flux::validate::normalize;
use fluxplane_agent_protocol::flux::FluxConfigurationSpec;

/// Most parameters of one assignment: ARM's limit for a template.
pub const MAX_PARAMETERS: usize = 256;
/// Most bytes of JSON a template and its parameters take together.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;

/// Whether an assignment writes configurations or only reports what it would write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum EnforcementMode {
    #[default]
    Default,
    DoNotEnforce,
}

/// What becomes of a managed configuration whose cluster no longer matches (or whose assignment is deleted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum OnUnmatch {
    /// It is deleted from the cluster (through its agent).
    #[default]
    Delete,
    /// It stays, no longer managed: an ordinary configuration from then on.
    Orphan,
}

/// The writable properties of a policy assignment, stored as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssignmentSpec {
    /// The ARM id of the cluster group whose members get the configuration (or give `selector`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_group_id: Option<String>,
    /// An inline selector over the tags of the clusters in the assignment's scope (or give `clusterGroupId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// The name of the fluxConfiguration each cluster gets.
    pub configuration_name: String,
    /// The properties of that fluxConfiguration. A string that is an ARM template expression (`"[...]"`) takes its
    /// value, per cluster: `"[parameters('branch')]"`, `"[cluster().tags.region]"`,
    /// `"[concat('./apps/', tag('env', 'dev'))]"`; `"[[..."` is a literal `[`.
    #[schema(value_type = Object)]
    pub configuration_template: Value,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub enforcement_mode: EnforcementMode,
    #[serde(default)]
    pub on_unmatch: OnUnmatch,
    /// Roll each new generation out in batches (the first deployment included), ring by ring, instead of to every
    /// cluster at once (`fleet::assignments::rollout`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<Rollout>,
    /// Halt every assignment of the subscription reading the template's Git repository once a commit of it fails
    /// on too many of the clusters that applied it (`fleet::breaker`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit_breaker: Option<CircuitBreaker>,
}

/// The last generation whose template was Compliant on every cluster it was applied to: what an automatic
/// rollback goes back to. Kept with the assignment, never answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompliantTemplate {
    pub generation: i64,
    pub spec: AssignmentSpec,
    pub at: chrono::DateTime<chrono::Utc>,
}

/// The body of a policy assignment PUT.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyAssignmentRequest {
    pub properties: AssignmentSpec,
}

/// A policy assignment as the API answers it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAssignment {
    pub id: String,
    pub name: String,
    #[serde(rename = "type")]
    pub type_: String,
    pub system_data: SystemData,
    pub properties: PolicyAssignmentProperties,
}

#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicyAssignmentProperties {
    #[serde(flatten)]
    #[schema(schema_with = crate::arm::schema::open_schema::<AssignmentSpec>)]
    pub spec: AssignmentSpec,
    pub provisioning_state: String,
    /// Read-only: where the assignment stands now.
    pub status: AssignmentStatus,
}

/// Where one selected cluster stands with the assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ClusterCompliance {
    /// The configuration is in line with the assignment and its agent reports it compliant.
    Compliant,
    /// Its agent reports it non-compliant or failed.
    NonCompliant,
    /// Its agent has not reported the current generation yet, or reports it pending or suspended.
    Pending,
    /// The cluster has no configuration of that name (audit only, or not written yet).
    Missing,
    /// It was written by hand; the assignment restores it.
    Drifted,
    /// A configuration of that name the assignment does not manage is there: left alone.
    Conflict,
    /// The template cannot be rendered for the cluster (a tag it reads without a default is not set, or what it
    /// renders is not a valid configuration): the cluster keeps the configuration it has, if any, until it can.
    Unresolvable,
    /// The cluster's agent is silent: what it last reported may be stale.
    Offline,
}

/// How many selected clusters stand where.
#[derive(Debug, Default, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComplianceCounts {
    pub compliant: u64,
    pub non_compliant: u64,
    pub pending: u64,
    pub missing: u64,
    pub drifted: u64,
    pub conflict: u64,
    pub unresolvable: u64,
    pub offline: u64,
}

impl ComplianceCounts {
    pub fn add(&mut self, state: ClusterCompliance) {
        let count = match state {
            ClusterCompliance::Compliant => &mut self.compliant,
            ClusterCompliance::NonCompliant => &mut self.non_compliant,
            ClusterCompliance::Pending => &mut self.pending,
            ClusterCompliance::Missing => &mut self.missing,
            ClusterCompliance::Drifted => &mut self.drifted,
            ClusterCompliance::Conflict => &mut self.conflict,
            ClusterCompliance::Unresolvable => &mut self.unresolvable,
            ClusterCompliance::Offline => &mut self.offline,
        };
        *count += 1;
    }
}

/// One selected cluster in an assignment's compliance list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterComplianceEntry {
    pub cluster_id: String,
    pub configuration_id: String,
    pub state: ClusterCompliance,
    pub reason: String,
}

/// Where an assignment stands, computed when read.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentStatus {
    /// How many selected clusters stand where (`GET {assignmentId}/compliance` lists them with the reason).
    pub compliance: ComplianceCounts,
    /// Clusters of the scope its selector matches now.
    pub matched_clusters: u64,
    /// Configurations it manages.
    pub managed_configurations: u64,
    /// Matched clusters holding a configuration of that name that the assignment does not manage (never
    /// overwritten), in cluster order; `conflictCount` counts them all.
    pub conflicts: Vec<ErrorDetail>,
    pub conflict_count: u64,
    /// Where the last template change's rollout stands, when the assignment has `rollout`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutState>,
}

/// What applying a proposed assignment would do: the answer of `POST {assignmentId}/plan`, which writes nothing.
/// Clusters and configurations are named by ARM id, in cluster key order.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AssignmentPlan {
    /// Clusters the proposal selects that the assignment does not select now.
    pub entering_clusters: Vec<String>,
    /// Clusters the assignment selects now that the proposal does not.
    pub leaving_clusters: Vec<String>,
    /// Configurations it would create.
    pub create: Vec<String>,
    /// Configurations it would rewrite as a new generation.
    pub update: Vec<String>,
    /// Configurations it would delete from their clusters (`onUnmatch: Delete`).
    pub delete: Vec<String>,
    /// Configurations it would stop managing and leave in place (`onUnmatch: Orphan`).
    pub orphan: Vec<String>,
    /// Configurations of that name on selected clusters that it does not manage: left alone.
    pub conflicts: Vec<String>,
    /// Other assignments writing the same configuration on some of the same clusters: applying would be refused.
    pub overlapping_assignments: Vec<String>,
    /// Each configuration it would create or rewrite, as rendered for its cluster, with what changes (the first
    /// 100, in the order of `create` then `update`; `changeCount` counts them all).
    pub changes: Vec<PlannedChange>,
    pub change_count: u64,
    /// Selected clusters the template cannot be rendered for: nothing is written for them (each keeps the
    /// configuration it has, if any), and the assignment's compliance reports them `Unresolvable`.
    pub unresolvable: Vec<UnresolvableCluster>,
}

/// Whether a planned configuration is new or rewritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub enum PlannedChangeKind {
    Create,
    Update,
}

/// One configuration a plan would write.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedChange {
    pub configuration_id: String,
    pub change: PlannedChangeKind,
    /// The properties it would hold: the template rendered for its cluster, defaults filled in.
    #[schema(value_type = Object)]
    pub properties: Value,
    /// For a rewrite: the JSON Patch (RFC 6902) from the properties it holds now to `properties` (`[]`: the same,
    /// written again as a new generation).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub patch: Option<Value>,
}

/// A selected cluster the template cannot be rendered for, and why.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UnresolvableCluster {
    pub cluster_id: String,
    /// Where in the assignment, e.g. `properties.configurationTemplate.kustomizations.apps.path`.
    pub target: String,
    /// e.g. `tag 'region' is not set on cluster 'prod-3'`.
    pub reason: String,
}

/// A configuration of the assignment's name on a cluster, as the decision about it needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Existing {
    pub managed_by: Option<i64>,
    pub managed_generation: Option<i64>,
    pub deleting: bool,
}

/// What applying an assignment does, by cluster id (each list in the order of `matched`, `release` ascending).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Matched clusters without a configuration of that name: it is created.
    pub create: Vec<i64>,
    /// Matched clusters whose managed configuration is of another generation, or being deleted: it is rewritten.
    pub update: Vec<i64>,
    /// Clusters it no longer matches whose configuration it manages: deleted or orphaned (`onUnmatch`).
    pub release: Vec<i64>,
    /// Matched clusters whose configuration of that name it does not manage: left alone.
    pub conflicts: Vec<i64>,
}

/// Decides what the assignment `id` at `generation` does to the configurations of its name (`existing`, by
/// cluster), given the clusters it matches. The store applies exactly this; a plan answers it.
pub fn decide(
    id: i64,
    generation: i64,
    matched: &[i64],
    existing: &std::collections::HashMap<i64, Existing>,
) -> Decision {
    let mut decision = Decision::default();
    for cluster in matched {
        match existing.get(cluster) {
            None => decision.create.push(*cluster),
            Some(e) if e.managed_by == Some(id) => {
                if e.managed_generation != Some(generation) || e.deleting {
                    decision.update.push(*cluster);
                }
            }
            Some(_) => decision.conflicts.push(*cluster),
        }
    }
    let wanted: std::collections::HashSet<&i64> = matched.iter().collect();
    decision.release = existing
        .iter()
        .filter(|(cluster, e)| e.managed_by == Some(id) && !e.deleting && !wanted.contains(cluster))
        .map(|(cluster, _)| *cluster)
        .collect();
    decision.release.sort_unstable();
    decision
}

/// Where a template is, in an assignment.
pub const TEMPLATE: &str = "properties.configurationTemplate";
/// Most bytes of JSON one cluster's rendered configuration may take: it is stored once per cluster.
pub const MAX_RENDERED_BYTES: usize = 128 * 1024;

/// An assignment's template, ready to render the configuration of any cluster it selects.
#[derive(Debug, Clone)]
pub struct Rendering {
    name: ConfigurationName,
    template: Template,
    /// The configuration every cluster gets, when the template does not read the cluster.
    fixed: Option<FluxConfigurationSpec>,
}

/// The configurations of some clusters, rendered: those that render grouped by the configuration they get (in
/// the order the clusters came), and those that do not with the reason.
#[derive(Debug, Default)]
pub struct Renders {
    pub groups: Vec<Group>,
    pub unresolvable: Vec<(i64, Unresolvable)>,
}

/// A configuration and the clusters that get it.
#[derive(Debug)]
pub struct Group {
    pub spec: FluxConfigurationSpec,
    /// `spec` as JSON, as the store writes it.
    pub json: Box<serde_json::value::RawValue>,
    pub clusters: Vec<i64>,
}

impl Renders {
    /// The configurations several clusters get, each with its clusters.
    pub fn shared(&self) -> impl Iterator<Item = (&serde_json::value::RawValue, &[i64])> {
        self.groups
            .iter()
            .filter(|g| g.clusters.len() > 1)
            .map(|g| (&*g.json, g.clusters.as_slice()))
    }

    /// The configurations one cluster gets, with the cluster.
    pub fn single(&self) -> Vec<(i64, &serde_json::value::RawValue)> {
        self.groups
            .iter()
            .filter(|g| g.clusters.len() == 1)
            .map(|g| (g.clusters[0], &*g.json))
            .collect()
    }

    /// Every cluster that renders.
    pub fn clusters(&self) -> Vec<i64> {
        self.groups.iter().flat_map(|g| g.clusters.iter().copied()).collect()
    }

    /// Moves to `unresolvable` the clusters whose configuration (its namespace and scope, `placed`, as stored)
    /// would be rewritten in another namespace or scope: those never change once a configuration exists.
    pub fn keep_placement(&mut self, placed: &HashMap<i64, Placement>) {
        for group in &mut self.groups {
            let spec = &group.spec;
            let (kept, moved): (Vec<i64>, Vec<i64>) = group
                .clusters
                .iter()
                .partition(|c| placed.get(c).is_none_or(|p| p.moved_by(spec).is_none()));
            for cluster in moved {
                if let Some(why) = placed.get(&cluster).and_then(|p| p.moved_by(spec)) {
                    self.unresolvable.push((cluster, why));
                }
            }
            group.clusters = kept;
        }
        self.groups.retain(|g| !g.clusters.is_empty());
    }
}

/// Where a configuration lives: its namespace and scope, which never change once it exists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    pub namespace: Option<String>,
    /// As stored: `cluster` or `namespace`.
    pub scope: Option<String>,
}

impl Placement {
    pub fn of(spec: &FluxConfigurationSpec) -> Self {
        Self {
            namespace: spec.namespace.clone(),
            scope: spec
                .scope
                .and_then(|s| serde_json::to_value(s).ok())
                .and_then(|v| v.as_str().map(str::to_owned)),
        }
    }

    /// Why `rendered` cannot replace a configuration placed here, if it cannot.
    pub fn moved_by(&self, rendered: &FluxConfigurationSpec) -> Option<Unresolvable> {
        let new = Self::of(rendered);
        let field = if new.namespace != self.namespace {
            ("namespace", &self.namespace, &new.namespace)
        } else if new.scope != self.scope {
            ("scope", &self.scope, &new.scope)
        } else {
            return None;
        };
        let (name, was, now) = field;
        Some(Unresolvable {
            target: format!("{TEMPLATE}.{name}"),
            message: format!(
                "renders {name} '{}' where the cluster's configuration has '{}': a configuration's namespace and \
                 scope cannot change once it exists (delete it, or assign another configurationName)",
                now.as_deref().unwrap_or_default(),
                was.as_deref().unwrap_or_default()
            ),
        })
    }
}

fn raw(json: String) -> Box<serde_json::value::RawValue> {
    serde_json::value::RawValue::from_string(json).expect("serialised JSON is JSON")
}

impl Rendering {
    /// Compiles what an assignment stores again, for the store and the read paths. A template that no longer
    /// compiles (it was written under other rules) renders for no cluster, and says why.
    pub fn of(spec: &AssignmentSpec) -> Result<Self, Unresolvable> {
        let mut p = Problems::default();
        let name = ConfigurationName::parse(&spec.configuration_name).map_err(|err| Unresolvable {
            target: "properties.configurationName".into(),
            message: err.to_string(),
        })?;
        let template = Template::compile(&spec.configuration_template, &spec.parameters, TEMPLATE, &mut p);
        p.into_result("policy assignment", Some("properties"))
            .map_err(unresolvable)?;
        let fixed = if template.per_cluster() {
            None
        } else {
            Some(finish(template.shared(), &name, true)?.0)
        };
        Ok(Self { name, template, fixed })
    }

    /// Whether the configuration differs from cluster to cluster.
    pub fn per_cluster(&self) -> bool {
        self.fixed.is_none()
    }

    /// What decides the assignment's generation: the configuration every cluster gets, or the template and its
    /// parameters when it differs per cluster (a tag change re-renders the cluster's configuration by itself).
    pub fn fingerprint(&self, spec: &AssignmentSpec) -> Value {
        match &self.fixed {
            Some(fixed) => serde_json::to_value(fixed).expect("a configuration serialises"),
            None => serde_json::json!({
                "perCluster": {"template": spec.configuration_template, "parameters": spec.parameters}
            }),
        }
    }

    /// The configuration `cluster` gets.
    pub fn for_cluster(&self, cluster: &ClusterFacts) -> Result<FluxConfigurationSpec, Unresolvable> {
        match &self.fixed {
            Some(fixed) => Ok(fixed.clone()),
            None => Ok(self.finish(self.template.render(cluster)?)?.0),
        }
    }

    /// The configurations of `clusters`, grouped by what they get: one group when the template does not read the
    /// cluster.
    pub fn for_clusters<'a>(&self, clusters: impl IntoIterator<Item = (i64, ClusterFacts<'a>)>) -> Renders {
        let mut renders = Renders::default();
        if let Some(fixed) = &self.fixed {
            let ids: Vec<i64> = clusters.into_iter().map(|(id, _)| id).collect();
            if !ids.is_empty() {
                let json = serde_json::to_string(fixed).expect("a configuration serialises");
                renders.groups.push(Group {
                    spec: fixed.clone(),
                    json: raw(json),
                    clusters: ids,
                });
            }
            return renders;
        }
        let mut seen: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for (id, cluster) in clusters {
            match self.template.render(&cluster).and_then(|value| self.finish(value)) {
                Ok((spec, json)) => match seen.get(&json) {
                    Some(at) => renders.groups[*at].clusters.push(id),
                    None => {
                        seen.insert(json.clone(), renders.groups.len());
                        renders.groups.push(Group {
                            spec,
                            json: raw(json),
                            clusters: vec![id],
                        });
                    }
                },
                Err(why) => renders.unresolvable.push((id, why)),
            }
        }
        renders
    }

    fn finish(&self, value: Value) -> Result<(FluxConfigurationSpec, String), Unresolvable> {
        let structure = self.template.renders_structure(&value);
        finish(value, &self.name, structure)
    }

    /// Why the configuration `cluster` holds now (`current`) cannot take what the template renders for it, if it
    /// cannot: the rendering fails, or it would move the configuration to another namespace or scope.
    pub fn blocked(&self, cluster: &ClusterFacts, current: Option<&FluxConfigurationSpec>) -> Option<Unresolvable> {
        let rendered;
        let spec = match &self.fixed {
            Some(fixed) => fixed,
            None => match self.for_cluster(cluster) {
                Ok(spec) => {
                    rendered = spec;
                    &rendered
                }
                Err(why) => return Some(why),
            },
        };
        current.and_then(|current| Placement::of(current).moved_by(spec))
    }

    /// Whether a tag change (or any change of what the template reads of `cluster`) leaves its configuration,
    /// written at the assignment's current generation as `current`, out of date: it is rewritten then, in the
    /// same transaction. A cluster whose configuration cannot be rendered keeps the one it has.
    pub fn stale(&self, cluster: &ClusterFacts, current: &FluxConfigurationSpec) -> bool {
        self.per_cluster() && self.for_cluster(cluster).is_ok_and(|rendered| rendered != *current)
    }
}

/// The rollout's view of an assignment's selected clusters: each one's configuration, and whether the template
/// renders for it (`None`: the template renders for no cluster).
pub struct Selected<'a> {
    pub members: &'a HashMap<i64, BatchMember>,
    pub rendering: Option<&'a Rendering>,
    pub facts: HashMap<i64, ClusterFacts<'a>>,
}

impl Members for Selected<'_> {
    fn member(&self, cluster: i64) -> Option<BatchMember> {
        self.members.get(&cluster).copied()
    }

    fn resolvable(&self, cluster: i64) -> bool {
        match self.rendering {
            None => false,
            Some(rendering) if rendering.per_cluster() => self
                .facts
                .get(&cluster)
                .is_some_and(|facts| rendering.for_cluster(facts).is_ok()),
            Some(_) => true,
        }
    }
}

/// A rendered template, checked and completed as a configuration (as a configuration PUT is), and its JSON.
/// `structure` says whether the rendering may hold an array where an object belongs, which only the body parser
/// (`parse`) refuses; without, the configuration is read directly, parsed again only to name what fails.
fn finish(
    mut value: Value,
    name: &ConfigurationName,
    structure: bool,
) -> Result<(FluxConfigurationSpec, String), Unresolvable> {
    // a template's secret fields are refused when it is written; a cluster's values can bring one only inside an
    // array or object
    if structure && !SecretFields::split_from(&mut value).is_empty() {
        return Err(Unresolvable {
            target: TEMPLATE.into(),
            message: SECRETS.into(),
        });
    }
    let read = if structure {
        None
    } else {
        FluxConfigurationSpec::deserialize(&value).ok()
    };
    let mut config = match read {
        Some(config) => config,
        None => parse::<FluxConfigurationSpec>(value, TEMPLATE).map_err(unresolvable)?,
    };
    normalize(&mut config, name, None).map_err(|err| unresolvable(retarget(err, TEMPLATE)))?;
    let json = serde_json::to_string(&config).expect("a configuration serialises");
    if json.len() > MAX_RENDERED_BYTES {
        return Err(Unresolvable {
            target: TEMPLATE.into(),
            message: format!(
                "the rendered configuration takes {} bytes of JSON; at most {MAX_RENDERED_BYTES} are allowed",
                json.len()
            ),
        });
    }
    Ok((config, json))
}

const SECRETS: &str = "a template cannot carry secrets (they are sealed to each cluster's agent): point the source \
                       at a secret each cluster has with localAuthRef";

/// A validation error as the reason a cluster's configuration cannot be rendered.
fn unresolvable(err: ApiError) -> Unresolvable {
    let detail = err.detail();
    let reasons: Vec<(String, String)> = if detail.details.is_empty() {
        vec![(detail.target.clone().unwrap_or_default(), detail.message.clone())]
    } else {
        detail
            .details
            .iter()
            .map(|d| (d.target.clone().unwrap_or_default(), d.message.clone()))
            .collect()
    };
    let target = reasons.first().map(|(t, _)| t.clone()).unwrap_or_default();
    let message = reasons
        .iter()
        .map(|(t, m)| m.strip_prefix(&format!("{t}: ")).unwrap_or(m).to_owned())
        .collect::<Vec<_>>()
        .join("; ");
    Unresolvable { target, message }
}

/// Checks what a PUT gives and compiles its template: everything that does not depend on the cluster is checked
/// here (syntax, functions, parameters, and the configuration as far as every cluster shares it), so that its
/// problems are the write's, every one named at once. What depends on the cluster is rendered per cluster.
pub fn render(spec: &AssignmentSpec) -> ApiResult<Rendering> {
    let mut p = Problems::default();
    match (&spec.cluster_group_id, &spec.selector) {
        (Some(_), Some(_)) => p.add("properties.selector", "give clusterGroupId or selector, not both"),
        (None, None) => p.add("properties.selector", "give clusterGroupId or selector"),
        (None, Some(selector)) => selector.validate("properties.selector", &mut p),
        (Some(_), None) => {}
    }
    if let Some(rollout) = &spec.rollout {
        rollout.validate(&mut p);
    }
    if let Some(breaker) = &spec.circuit_breaker {
        breaker.validate(&mut p);
    }
    let name = ConfigurationName::parse(&spec.configuration_name)
        .map_err(|err| p.add("properties.configurationName", err.to_string()))
        .ok();
    if !spec.configuration_template.is_object() {
        p.add(
            TEMPLATE,
            "the template must be an object: the properties of a fluxConfiguration",
        );
    }
    if spec.parameters.len() > MAX_PARAMETERS {
        p.add(
            "properties.parameters",
            format!("at most {MAX_PARAMETERS} parameters are allowed (as in ARM templates)"),
        );
    }
    let size = serde_json::to_vec(&spec.configuration_template).map_or(usize::MAX, |bytes| bytes.len())
        + serde_json::to_vec(&spec.parameters).map_or(usize::MAX, |bytes| bytes.len());
    let too_large = size > MAX_TEMPLATE_BYTES;
    if too_large {
        p.add(
            TEMPLATE,
            format!(
                "the template and its parameters take {size} bytes of JSON; at most {MAX_TEMPLATE_BYTES} are allowed, \
                 since every selected cluster stores its own rendering"
            ),
        );
    }
    let template = if too_large {
        Template::compile(&Value::Null, &Map::new(), TEMPLATE, &mut p)
    } else {
        Template::compile(&spec.configuration_template, &spec.parameters, TEMPLATE, &mut p)
    };
    // a secret field anywhere in the template, whatever its value (an expression too), or in what parameters give
    let mut shared = template.shared();
    let mut written = spec.configuration_template.clone();
    if !SecretFields::split_from(&mut written).is_empty() || !SecretFields::split_from(&mut shared).is_empty() {
        p.add(TEMPLATE, SECRETS);
    }
    p.into_result("policy assignment", Some("properties"))?;
    let name = name.expect("checked above");
    if template.per_cluster() {
        check_shared(shared, &name, template.places())?;
        return Ok(Rendering {
            name,
            template,
            fixed: None,
        });
    }
    let mut config: FluxConfigurationSpec = parse(shared, TEMPLATE)?;
    normalize(&mut config, &name, None).map_err(|err| retarget(err, TEMPLATE))?;
    let bytes = serde_json::to_vec(&config).map_or(usize::MAX, |json| json.len());
    if bytes > MAX_RENDERED_BYTES {
        return Err(ApiError::invalid(
            TEMPLATE,
            format!(
                "{TEMPLATE}: the rendered configuration takes {bytes} bytes of JSON; at most {MAX_RENDERED_BYTES} are \
                 allowed"
            ),
        ));
    }
    Ok(Rendering {
        name,
        template,
        fixed: Some(config),
    })
}

/// Checks a template that differs per cluster as far as its clusters share it: `shared` is the template with
/// `null` at each of `places` (what depends on the cluster). Problems at those places or within them, or at the
/// object or array that holds one, are each cluster's (reported per cluster); every other problem, a misspelt
/// field among them, is the template's.
fn check_shared(mut shared: Value, name: &ConfigurationName, places: &[String]) -> ApiResult<()> {
    // `inner` is `outer` or within it
    let within = |outer: &str, inner: &str| {
        inner == outer
            || inner
                .strip_prefix(outer)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    // the object or array that holds a place is checked with it (a `repositoryRef` needs one of its references)
    let parent = |place: &str| {
        let cut = place.rfind(['.', '[']).unwrap_or(0);
        place[..cut].to_owned()
    };
    let related = |target: &str| {
        places
            .iter()
            .any(|place| within(place, target) || target == parent(place))
    };
    // a value a cluster gives may be of a type `null` cannot stand for: leave out what holds one, and check the rest
    for _ in 0..=places.len() {
        match parse::<FluxConfigurationSpec>(shared.clone(), TEMPLATE) {
            Ok(mut config) => {
                let Err(err) = normalize(&mut config, name, None).map_err(|err| retarget(err, TEMPLATE)) else {
                    return Ok(());
                };
                let kept: Vec<ErrorDetail> = err
                    .detail()
                    .details
                    .into_iter()
                    .filter(|d| !related(d.target.as_deref().unwrap_or_default()))
                    .collect();
                return match kept.len() {
                    0 => Ok(()),
                    1 => Err(ApiError::InvalidParameter {
                        message: kept[0].message.clone(),
                        target: kept[0].target.clone(),
                        details: kept,
                    }),
                    n => Err(ApiError::InvalidParameter {
                        message: format!("the configuration template has {n} invalid fields; see details"),
                        target: Some(TEMPLATE.into()),
                        details: kept,
                    }),
                };
            }
            Err(err) => {
                let detail = err.detail();
                let target = detail.target.unwrap_or_default();
                // a misspelt field is the template's, whatever its value
                if detail.message.contains("unknown field") {
                    return Err(err);
                }
                if !related(&target) || !leave_out(&mut shared, &target) {
                    return if related(&target) { Ok(()) } else { Err(err) };
                }
            }
        }
    }
    Ok(())
}

/// Removes the object member that holds the place `target` (an index names the array's member); false when there
/// is none (the template itself).
fn leave_out(template: &mut Value, target: &str) -> bool {
    let Some(path) = target.strip_prefix(TEMPLATE).and_then(|p| p.strip_prefix('.')) else {
        return false;
    };
    // the member: the path up to its first index
    let member = path.split('[').next().unwrap_or(path);
    let Some((parent, key)) = member.rsplit_once('.').or(Some(("", member))) else {
        return false;
    };
    let mut at = template;
    if !parent.is_empty() {
        for segment in parent.split('.') {
            match at.get_mut(segment) {
                Some(next) => at = next,
                None => return false,
            }
        }
    }
    at.as_object_mut().and_then(|object| object.remove(key)).is_some()
}

/// Moves a configuration's validation errors from `properties.*` to where they are in the template.
fn retarget(err: ApiError, template: &str) -> ApiError {
    let moved = |target: Option<String>| target.map(|t| t.replacen("properties", template, 1));
    match err {
        ApiError::InvalidParameter {
            message,
            target,
            details,
        } => ApiError::InvalidParameter {
            message: message.replacen("properties", template, 1),
            target: moved(target),
            details: details
                .into_iter()
                .map(|d| ErrorDetail {
                    message: d.message.replacen("properties", template, 1),
                    target: moved(d.target),
                    ..d
                })
                .collect(),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: Value) -> AssignmentSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_template_renders_into_a_complete_configuration() {
        let rendered = render(&spec(json!({
            "selector": {"matchLabels": {"env": "prod"}},
            "configurationName": "baseline",
            "configurationTemplate": {
                "gitRepository": {"url": "https://github.com/org/fleet", "repositoryRef": {"branch": "[parameters('branch')]"}},
                "kustomizations": {"infra": {"path": "./infra"}}
            },
            "parameters": {"branch": "release"}
        })))
        .unwrap();
        assert!(!rendered.per_cluster());
        let none = tags(&[]);
        let rendered = rendered.for_cluster(&facts("any", &none)).unwrap();
        let git = rendered.git_repository.unwrap();
        assert_eq!(git.repository_ref.unwrap().branch.as_deref(), Some("release"));
        assert_eq!(git.sync_interval_in_seconds, Some(600), "defaults filled in");
        assert_eq!(rendered.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn a_rewrite_keeps_each_configuration_in_its_namespace_and_scope() {
        let spec = |namespace: &str| -> FluxConfigurationSpec {
            serde_json::from_value(json!({"namespace": namespace, "scope": "cluster"})).unwrap()
        };
        let here = Placement::of(&spec("apps"));
        assert_eq!(here.scope.as_deref(), Some("cluster"));
        assert_eq!(here.moved_by(&spec("apps")), None);
        let why = here.moved_by(&spec("other")).unwrap();
        assert_eq!(why.target, "properties.configurationTemplate.namespace");
        assert!(
            why.message
                .contains("renders namespace 'other' where the cluster's configuration has 'apps'")
        );
        let mut namespaced = spec("apps");
        namespaced.scope = Some(fluxplane_agent_protocol::flux::ScopeType::Namespace);
        assert_eq!(
            here.moved_by(&namespaced).unwrap().target,
            "properties.configurationTemplate.scope"
        );

        let json = raw(serde_json::to_string(&spec("other")).unwrap());
        let mut renders = Renders {
            groups: vec![Group {
                spec: spec("other"),
                json,
                clusters: vec![1, 2, 3],
            }],
            unresolvable: Vec::new(),
        };
        let placed = HashMap::from([(1, here.clone()), (2, Placement::of(&spec("other")))]);
        renders.keep_placement(&placed);
        assert_eq!(renders.clusters(), [2, 3], "2 is there already, 3 is new");
        assert_eq!(renders.unresolvable.len(), 1);
        assert_eq!(renders.unresolvable[0].0, 1);
    }

    fn tags(pairs: &[(&str, &str)]) -> std::collections::BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn facts<'a>(name: &'a str, tags: &'a std::collections::BTreeMap<String, String>) -> ClusterFacts<'a> {
        ClusterFacts {
            subscription: "sub",
            resource_group: "rg",
            name,
            location: "westeurope",
            tags,
        }
    }

    trait Tap: Sized {
        fn tap(mut self, change: impl FnOnce(&mut Self)) -> Self {
            change(&mut self);
            self
        }
    }
    impl Tap for AssignmentSpec {}

    fn per_cluster(template: Value) -> AssignmentSpec {
        spec(json!({
            "selector": {},
            "configurationName": "apps",
            "configurationTemplate": template,
            "parameters": {"base": "./apps"}
        }))
    }

    fn regional() -> Value {
        json!({
            "gitRepository": {"url": "https://github.com/org/fleet",
                              "repositoryRef": {"branch": "[tag('ring', 'main')]"}},
            "kustomizations": {"apps": {
                "path": "[concat(parameters('base'), '/', cluster().tags.region)]",
                "postBuild": {"substitute": {"cluster": "[cluster().name]"}}
            }}
        })
    }

    #[test]
    fn a_template_that_reads_the_cluster_renders_for_each_and_names_those_it_cannot_render_for() {
        let rendering = render(&per_cluster(json!({
            "gitRepository": {"url": "https://github.com/org/fleet",
                              "repositoryRef": {"branch": "[tag('ring', 'main')]"}},
            "kustomizations": {"apps": {"path": "[concat(parameters('base'), '/', cluster().tags.region)]"}}
        })))
        .unwrap();
        assert!(rendering.per_cluster());
        let (eu, us, canary, bare) = (
            tags(&[("region", "eu")]),
            tags(&[("region", "us")]),
            tags(&[("region", "eu"), ("ring", "canary")]),
            tags(&[]),
        );
        let renders = rendering.for_clusters([
            (1, facts("eu-1", &eu)),
            (2, facts("us-1", &us)),
            (3, facts("eu-2", &eu)),
            (4, facts("eu-3", &canary)),
            (5, facts("bare", &bare)),
        ]);
        let grouped: Vec<(String, String, Vec<i64>)> = renders
            .groups
            .iter()
            .map(
                |Group {
                     spec, clusters: ids, ..
                 }| {
                    let git = spec.git_repository.as_ref().unwrap();
                    let branch = git.repository_ref.as_ref().unwrap().branch.clone().unwrap();
                    (
                        branch,
                        spec.kustomizations.as_ref().unwrap()["apps"].path.clone().unwrap(),
                        ids.clone(),
                    )
                },
            )
            .collect();
        assert_eq!(
            grouped,
            [
                ("main".into(), "./apps/eu".into(), vec![1, 3]),
                ("main".into(), "./apps/us".into(), vec![2]),
                ("canary".into(), "./apps/eu".into(), vec![4]),
            ],
            "clusters that render alike share one configuration"
        );
        assert_eq!(renders.clusters(), [1, 3, 2, 4]);
        assert_eq!(renders.single().iter().map(|(id, _)| *id).collect::<Vec<_>>(), [2, 4]);
        let [(5, why)] = renders.unresolvable.as_slice() else {
            panic!("{:?}", renders.unresolvable)
        };
        assert_eq!(why.target, "properties.configurationTemplate.kustomizations.apps.path");
        assert_eq!(why.message, "tag 'region' is not set on cluster 'bare'");
    }

    #[test]
    fn a_cluster_whose_rendering_is_no_valid_configuration_is_unresolvable_with_the_configurations_reason() {
        let rendering = render(&per_cluster(regional())).unwrap();
        let escaping = tags(&[("region", "../../etc")]);
        let why = rendering.for_cluster(&facts("x", &escaping)).unwrap_err();
        assert_eq!(why.target, "properties.configurationTemplate.kustomizations.apps.path");
        assert!(why.message.contains("'..' is not allowed"), "{why}");
        // a secret a parameter brings to some clusters only is refused for those
        let mut spec = per_cluster(json!({
            "gitRepository": {"url": "https://github.com/org/fleet", "repositoryRef": {"branch": "main"}},
            "azureBlob": "[if(equals(cluster().name, 'x'), parameters('blob'), null())]"
        }));
        spec.parameters.insert(
            "blob".into(),
            json!({"url": "https://x.blob.core.windows.net", "accountKey": "c2VjcmV0"}),
        );
        let rendering = render(&spec).unwrap();
        let none = tags(&[]);
        assert!(rendering.for_cluster(&facts("y", &none)).is_ok());
        let why = rendering.for_cluster(&facts("x", &none)).unwrap_err();
        assert!(why.message.contains("cannot carry secrets"), "{why}");
        // a secret field whose value an expression gives is refused when written
        let err = render(&per_cluster(json!({
            "gitRepository": {"url": "https://github.com/org/fleet", "repositoryRef": {"branch": "main"}},
            "configurationProtectedSettings": {"sshPrivateKey": "[cluster().tags.key]"}
        })))
        .unwrap_err();
        assert!(err.to_string().contains("cannot carry secrets"), "{err}");
    }

    #[test]
    fn problems_a_template_has_whatever_the_cluster_are_the_writes_and_the_rest_each_clusters() {
        // the URL is wrong for every cluster: the write's; the path and branch depend on the cluster: not checked
        let mut template = regional();
        template["gitRepository"]["url"] = json!("ftp://fleet");
        template["gitRepository"]["repositoryRef"]["branch"] = json!("[cluster().tags.branch]");
        template["kustomizations"]["apps"]["dependsOn"] = json!(["[cluster().tags.dependency]"]);
        template["gitRepository"]["syncIntervalInSeconds"] = json!("[int(cluster().tags.interval)]");
        let err = render(&per_cluster(template.clone())).unwrap_err();
        let targets: Vec<String> = err.detail().details.iter().filter_map(|d| d.target.clone()).collect();
        assert_eq!(targets, ["properties.configurationTemplate.gitRepository.url"], "{err}");
        template["gitRepository"]["url"] = json!("https://github.com/org/fleet");
        let rendering = render(&per_cluster(template)).unwrap();
        let good = tags(&[
            ("region", "eu"),
            ("branch", "main"),
            ("dependency", "apps-2"),
            ("interval", "60"),
        ]);
        let why = rendering.for_cluster(&facts("c", &good)).unwrap_err();
        assert!(
            why.target.ends_with("kustomizations.apps.dependsOn") && why.message.contains("apps-2"),
            "checked per cluster: {why}"
        );
        // and errors in what no cluster changes are the write's, even inside an expression that reads the cluster
        let err = render(&per_cluster(json!({
            "gitRepository": {"url": "https://github.com/org/fleet", "repositoryRef": {"branch": "main"}},
            "kustomizations": {"apps": {"path": "[concat(cluster().name, substring('ab', 5))]"}}
        })))
        .unwrap_err();
        assert_eq!(
            err.detail().target.as_deref(),
            Some("properties.configurationTemplate.kustomizations.apps.path")
        );
        assert!(err.to_string().contains("substring"), "{err}");
    }

    #[test]
    fn a_value_of_the_wrong_shape_from_a_cluster_is_refused_for_that_cluster_and_named() {
        let rendering = render(&per_cluster(json!({
            "gitRepository": {"url": "https://github.com/org/fleet",
                              "repositoryRef": "[if(equals(cluster().name, 'x-y-z-w'), split(cluster().name, '-'), parameters('ref'))]",
                              "syncIntervalInSeconds": "[if(equals(cluster().name, 'text'), cluster().name, 60)]"}
        }))
        .tap(|s| {
            s.parameters.insert("ref".into(), json!({"branch": "main"}));
        }))
        .unwrap();
        let none = tags(&[]);
        assert!(rendering.for_cluster(&facts("even", &none)).is_ok());
        let why = rendering.for_cluster(&facts("x-y-z-w", &none)).unwrap_err();
        assert_eq!(
            why.target,
            "properties.configurationTemplate.gitRepository.repositoryRef"
        );
        assert!(why.message.contains("expected an object, found an array"), "{why}");
        let why = rendering.for_cluster(&facts("text", &none)).unwrap_err();
        assert_eq!(
            why.target,
            "properties.configurationTemplate.gitRepository.syncIntervalInSeconds"
        );
        assert!(why.message.contains("invalid type: string \"text\""), "{why}");
    }

    #[test]
    fn the_readmes_example_renders_as_the_readme_says() {
        let rendering = render(&spec(json!({
            "selector": {}, "configurationName": "baseline", "parameters": {"stable": "release"},
            "configurationTemplate":
                {"gitRepository": {"url": "https://github.com/org/fleet",
                                   "repositoryRef": {"branch": "[if(equals(tag('ring', 'broad'), 'canary'), 'main', parameters('stable'))]"}},
                 "kustomizations": {
                   "infra": {"path": "[format('./clusters/{0}/infra', toLower(cluster().location))]"},
                   "apps": {"path": "[concat('./apps/', cluster().tags.env)]", "dependsOn": ["infra"],
                            "postBuild": {"substitute": {"cluster": "[cluster().name]", "region": "[tag('region', 'eu')]"}}}}}
        })))
        .unwrap();
        let summary = |spec: FluxConfigurationSpec| {
            let git = spec.git_repository.unwrap();
            let ks = spec.kustomizations.unwrap();
            let substitute = ks["apps"].post_build.clone().unwrap().substitute.unwrap();
            (
                git.repository_ref.unwrap().branch.unwrap(),
                ks["infra"].path.clone().unwrap(),
                ks["apps"].path.clone().unwrap(),
                substitute.into_iter().collect::<Vec<_>>(),
            )
        };
        let canary = tags(&[("env", "prod"), ("ring", "canary")]);
        assert_eq!(
            summary(rendering.for_cluster(&facts("prod-eu-3", &canary)).unwrap()),
            (
                "main".to_owned(),
                "./clusters/westeurope/infra".to_owned(),
                "./apps/prod".to_owned(),
                vec![
                    ("cluster".to_owned(), "prod-eu-3".to_owned()),
                    ("region".to_owned(), "eu".to_owned())
                ]
            )
        );
        let dev = tags(&[("env", "dev")]);
        let (branch, _, apps, _) = summary(rendering.for_cluster(&facts("dev-1", &dev)).unwrap());
        assert_eq!((branch.as_str(), apps.as_str()), ("release", "./apps/dev"));
    }

    #[test]
    fn a_tag_change_makes_a_configuration_stale_only_when_what_it_renders_changes() {
        let rendering = render(&per_cluster(regional())).unwrap();
        let (eu, eu_again, us, none) = (
            tags(&[("region", "eu")]),
            tags(&[("region", "eu"), ("team", "x")]),
            tags(&[("region", "us")]),
            tags(&[]),
        );
        let held = rendering.for_cluster(&facts("c", &eu)).unwrap();
        assert!(
            !rendering.stale(&facts("c", &eu_again), &held),
            "a tag it does not read"
        );
        assert!(rendering.stale(&facts("c", &us), &held));
        assert!(
            !rendering.stale(&facts("c", &none), &held),
            "unresolvable: the configuration it has is kept"
        );
        let fixed = render(&per_cluster(json!({
            "gitRepository": {"url": "https://github.com/org/fleet", "repositoryRef": {"branch": "main"}}
        })))
        .unwrap();
        assert!(
            !fixed.stale(&facts("c", &us), &held),
            "a template that reads no cluster re-renders nothing"
        );
    }

    #[test]
    fn the_generation_follows_what_clusters_get_and_for_a_template_that_reads_them_the_template() {
        let fixed = |branch: &str| {
            let spec =
                per_cluster(json!({"gitRepository": {"url": "https://x/r", "repositoryRef": {"branch": branch}}}));
            render(&spec).unwrap().fingerprint(&spec)
        };
        assert_eq!(fixed("main"), fixed("main"));
        assert_ne!(fixed("main"), fixed("release"));
        let mut spec = per_cluster(regional());
        let first = render(&spec).unwrap().fingerprint(&spec);
        spec.parameters.insert("base".into(), json!("./services"));
        assert_ne!(
            render(&spec).unwrap().fingerprint(&spec),
            first,
            "a parameter only an expression over the cluster reads"
        );
        let mut swapped = per_cluster(regional());
        swapped.configuration_template["gitRepository"]["repositoryRef"]["branch"] = json!("[tag('stage', 'main')]");
        assert_ne!(
            render(&swapped).unwrap().fingerprint(&swapped),
            first,
            "the same value for clusters without either tag, other values for others"
        );
    }

    #[test]
    fn a_template_and_its_parameters_are_bounded() {
        let many: Map<String, Value> = (0..=MAX_PARAMETERS).map(|i| (format!("p{i}"), json!("v"))).collect();
        let err = render(&spec(json!({
            "selector": {}, "configurationName": "c", "parameters": many,
            "configurationTemplate": {"gitRepository": {"url": "https://x/r", "repositoryRef": {"branch": "main"}}}
        })))
        .unwrap_err();
        assert_eq!(err.detail().target.as_deref(), Some("properties.parameters"));
        let err = render(&spec(json!({
            "selector": {}, "configurationName": "c",
            "configurationTemplate": {"gitRepository": {"url": "https://x/r", "repositoryRef": {"branch": "main"}},
                                      "kustomizations": {"k": {"path": "p".repeat(MAX_TEMPLATE_BYTES)}}}
        })))
        .unwrap_err();
        assert_eq!(err.detail().target.as_deref(), Some("properties.configurationTemplate"));
        assert!(err.to_string().contains("at most"), "{err}");
    }

    #[test]
    fn every_problem_of_an_assignment_is_named_where_it_is() {
        let err = render(&spec(json!({
            "configurationName": "Not_A_Label",
            "configurationTemplate": {"gitRepository": {"url": "[parameters('url')]"},
                                      "configurationProtectedSettings": {"k": "dg=="}}
        })))
        .unwrap_err();
        let targets: Vec<String> = err.detail().details.iter().filter_map(|d| d.target.clone()).collect();
        assert_eq!(
            targets,
            [
                "properties.selector",
                "properties.configurationName",
                "properties.configurationTemplate.gitRepository.url",
                "properties.configurationTemplate"
            ]
        );
        let invalid = render(&spec(json!({
            "selector": {},
            "configurationName": "ok",
            "configurationTemplate": {"gitRepository": {"url": "ftp://x"}}
        })))
        .unwrap_err();
        assert!(
            invalid.detail().details.iter().all(|d| d
                .target
                .as_deref()
                .unwrap_or_default()
                .starts_with("properties.configurationTemplate")),
            "{:?}",
            invalid.detail()
        );
    }

    proptest::proptest! {
        #[test]
        fn any_rollout_is_read_or_refused_as_a_bad_request(
            batch_size in crate::testing::arbitrary_json(),
            timeout in "\\PC{0,12}|P[0-9DTHMSW.]{0,10}|[0-9]{1,3}%",
        ) {
            let value = json!({"batchSize": batch_size, "batchTimeout": timeout});
            if let Ok(rollout) = crate::arm::body::parse::<Rollout>(value, "properties.rollout") {
                let mut p = Problems::default();
                rollout.validate(&mut p);
                match p.into_result("rollout", None) {
                    Err(err) => proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST),
                    Ok(()) => {
                        proptest::prop_assert!(rollout.batch_count(10).is_some_and(|n| n >= 1));
                        proptest::prop_assert!(rollout.timeout().is_some());
                    }
                }
            }
        }
    }
}
