//! `GET {assignmentId}/commits`: every commit the configurations of a policy assignment reported, newest first, and
//! how it spread over the clusters the assignment selects: when it was first seen, when half, 95 % and all of them
//! had reported it, how many it failed on, how many hold it now. Read from the status history (what the agents
//! reported, recorded by the triggers), so it reaches as far back as the history's retention.

use std::collections::{HashMap, HashSet};

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::routes::{ResourceGroupAssignmentPath, SubscriptionAssignmentPath, TYPE};
use super::service::TYPE_NAME;
use crate::arm::api_version::Fleet;
use crate::arm::paging::{BaseUrl, Page, decode_token, encode_token};
use crate::arm::params::FleetApiVersionParam;
use crate::arm::params::at_both_scopes;
use crate::arm::scope::FleetScope;
use crate::arm::{ApiVersion, ArmQuery};
use crate::auth::{Caller, Role};
use crate::error::{ApiResult, ErrorResponse, Problems};
use crate::fleet::commits::spread;
use crate::state::AppState;

/// Most distinct commits of one assignment read per request: more than a month of history holds but for a
/// repository committed to by automation hundreds of times a day. Past it, the list holds the first these many in
/// commit id order (and says so in the logs).
pub const MAX_COMMITS: usize = 10_000;
const DEFAULT_TOP: usize = 20;
/// Each commit of a page reads its clusters' entries: a page is bounded by what that costs.
const MAX_TOP: usize = 100;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(commits_at_subscription))
        .routes(routes!(commits_at_resource_group))
}

/// Query parameters of the commits list.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CommitsParams {
    /// Largest number of commits in one page (1-100, default 20).
    #[serde(rename = "$top")]
    #[param(rename = "$top")]
    top: Option<String>,
    /// Continuation token from a previous page's `nextLink`.
    #[serde(rename = "$skipToken")]
    #[param(rename = "$skipToken")]
    skip_token: Option<String>,
}

/// One commit and how it spread over the clusters the assignment selects now (clusters that left the selection
/// do not count).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommitSpread {
    /// The commit as agents report it (`sourceSyncedCommitId`), e.g. `main@sha1:<hash>`.
    pub commit: String,
    /// When a configuration of the assignment first reported it.
    pub first_seen: DateTime<Utc>,
    /// When half of the selected clusters had reported it (each from its first report); null until then.
    pub reached50_percent: Option<DateTime<Utc>>,
    /// When 95 % of them had; null until then.
    pub reached95_percent: Option<DateTime<Utc>>,
    /// When all of them had; null until then.
    pub reached100_percent: Option<DateTime<Utc>>,
    /// Selected clusters that reported it.
    pub clusters: u64,
    /// Of those, the clusters whose agent reported it failed (Failed or Non-Compliant on the generation it applied).
    pub failed_clusters: u64,
    /// Selected clusters whose configuration holds it now.
    pub current_clusters: u64,
    /// Clusters the assignment selects now: what the percentages are of.
    pub selected_clusters: u64,
}

at_both_scopes! {
    get,
    tag = "PolicyAssignments",
    params(FleetApiVersionParam, CommitsParams),
    responses(
        (status = 200, description = "A page of commits, newest first", body = inline(Page<CommitSpread>)),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    /// The commits the configurations of a subscription's policy assignment reported, newest first (by first
    /// sighting), with how each spread over its clusters; from the history, within its retention.
    commits_at_subscription:
        "/subscriptions/{subscriptionId}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/commits",
        "PolicyAssignments_ListCommitsAtSubscription",
        SubscriptionAssignmentPath;
    /// The commits the configurations of a resource group's policy assignment reported, newest first, with how each
    /// spread over its clusters.
    commits_at_resource_group:
        "/subscriptions/{subscriptionId}/resourceGroups/{resourceGroupName}/providers/Fluxplane.Fleet/policyAssignments/{policyAssignmentName}/commits",
        "PolicyAssignments_ListCommits",
        ResourceGroupAssignmentPath;
    |path| (
        State(state): State<AppState>,
        caller: Caller,
        version: ApiVersion<Fleet>,
        base: BaseUrl,
    ) path (
        ArmQuery(params): ArmQuery<CommitsParams>,
    ) -> ApiResult<Json<Page<CommitSpread>>> {
        let (scope, name) = path.target()?;
        commits(&state, &caller, scope, name, &params, &base, version.version).await.map(Json)
    }
}

/// Where a page starts: after this commit in the list's order (first seen, newest first; then commit id).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Cursor {
    first_seen: DateTime<Utc>,
    commit: String,
}

impl Cursor {
    fn encode(&self) -> String {
        encode_token(&format!(
            "{}|{}",
            self.first_seen.to_rfc3339_opts(SecondsFormat::Nanos, true),
            self.commit
        ))
    }

    fn decode(token: &str) -> Option<Self> {
        let text = decode_token(token).ok()?;
        let (time, commit) = text.split_once('|')?;
        Some(Self {
            first_seen: DateTime::parse_from_rfc3339(time).ok()?.with_timezone(&Utc),
            commit: commit.to_owned(),
        })
    }

    /// Whether `commit` comes after the cursor in the list's order.
    fn before(&self, first_seen: DateTime<Utc>, commit: &str) -> bool {
        first_seen < self.first_seen || (first_seen == self.first_seen && commit > self.commit.as_str())
    }
}

fn check(params: &CommitsParams) -> ApiResult<(usize, Option<Cursor>)> {
    let mut problems = Problems::default();
    let top = match &params.top {
        None => DEFAULT_TOP,
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=MAX_TOP).contains(n))
            .unwrap_or_else(|| {
                problems.add("$top", format!("$top must be a whole number from 1 to {MAX_TOP}"));
                DEFAULT_TOP
            }),
    };
    let cursor = params.skip_token.as_deref().and_then(|token| {
        Cursor::decode(token).or_else(|| {
            problems.add("$skipToken", "$skipToken is not a token this server issued");
            None
        })
    });
    problems.into_result("commits request", None)?;
    Ok((top, cursor))
}

async fn commits(
    state: &AppState,
    caller: &Caller,
    scope: FleetScope,
    name: String,
    params: &CommitsParams,
    base: &BaseUrl,
    api_version: &str,
) -> ApiResult<Page<CommitSpread>> {
    let id = scope.resource_id(TYPE_NAME, &name);
    caller.require(Role::Reader, &id)?;
    let (top, cursor) = check(params)?;
    let record = state
        .store
        .get_policy_assignment(&scope.key(&name))
        .await?
        .ok_or_else(|| scope.not_found(TYPE, &name))?;
    let assignment = record.arm_id();
    let mut listed = state
        .store
        .assignment_commits(&assignment, MAX_COMMITS as i64 + 1)
        .await?;
    if listed.len() > MAX_COMMITS {
        tracing::warn!(%assignment, "more than {MAX_COMMITS} commits in the history: listing {MAX_COMMITS} of them");
        listed.truncate(MAX_COMMITS);
    }
    listed.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut page: Vec<(String, DateTime<Utc>)> = listed
        .into_iter()
        .filter(|(commit, first_seen)| cursor.as_ref().is_none_or(|c| c.before(*first_seen, commit)))
        .take(top + 1)
        .collect();
    let next_link = (page.len() > top).then(|| {
        page.truncate(top);
        let (commit, first_seen) = page.last().expect("a page before the next").clone();
        base.next_link(
            &format!("{id}/commits"),
            api_version,
            params.top.as_deref(),
            &Cursor { first_seen, commit }.encode(),
        )
    });
    let selected: HashSet<i64> = state
        .store
        .assignment_matches(&record)
        .await?
        .into_iter()
        .map(|c| c.id)
        .collect();
    let mut current: HashMap<String, u64> = HashMap::new();
    for c in state
        .store
        .configurations_named(&scope.clusters(), &record.configuration_name)
        .await?
    {
        if c.managed_by == Some(record.id)
            && selected.contains(&c.cluster_id)
            && let Some(commit) = c.observed.source_synced_commit_id
        {
            *current.entry(commit).or_default() += 1;
        }
    }
    let mut value = Vec::with_capacity(page.len());
    for (commit, first_seen) in page {
        let sightings = state.store.commit_sightings(&assignment, &commit).await?;
        let spread = spread(&sightings, &selected);
        let [reached50_percent, reached95_percent, reached100_percent] = spread.reached;
        value.push(CommitSpread {
            current_clusters: current.get(&commit).copied().unwrap_or_default(),
            commit,
            first_seen,
            reached50_percent,
            reached95_percent,
            reached100_percent,
            clusters: spread.clusters,
            failed_clusters: spread.failed,
            selected_clusters: selected.len() as u64,
        });
    }
    Ok(Page { value, next_link })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    #[test]
    fn a_cursor_reads_back_what_it_wrote_and_orders_newest_first() {
        let at = DateTime::from_timestamp(1_800_000_000, 123).unwrap();
        let cursor = Cursor {
            first_seen: at,
            commit: "main@sha1:ab|cd".to_owned(),
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor.clone()));
        assert_eq!(Cursor::decode("not a token"), None);
        assert!(
            cursor.before(at - chrono::Duration::seconds(1), "a"),
            "older comes after"
        );
        assert!(cursor.before(at, "main@sha1:ef"), "same time: by commit");
        assert!(!cursor.before(at, "main@sha1:ab"));
        assert!(
            !cursor.before(at + chrono::Duration::seconds(1), "z"),
            "newer came before"
        );
    }

    #[test]
    fn a_page_size_or_token_out_of_range_is_refused_with_both_problems() {
        let params = CommitsParams {
            top: Some("101".into()),
            skip_token: Some("!".into()),
        };
        let Some(ApiError::InvalidParameter { details, .. }) = check(&params).err() else {
            panic!("refused as an invalid parameter");
        };
        let targets: Vec<_> = details.iter().filter_map(|d| d.target.as_deref()).collect();
        assert_eq!(targets, ["$top", "$skipToken"]);
        assert_eq!(check(&CommitsParams::default()).unwrap().0, DEFAULT_TOP);
    }
}
