//! What changed when: the status transitions the store's triggers record and the writes the ARM API accepted,
//! answered as one time-ordered list per configuration, cluster or policy assignment (`.../history`); what a
//! cluster's configurations were at a past time (`.../asOf`); and the middleware that records each accepted write.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::write_log::WriteLog;
use crate::arm::ids::ClusterRef;
use crate::arm::paging::{BaseUrl, Page, decode_token, encode_token};
use crate::auth::{CLOCK_SKEW_SECONDS, Caller};
use crate::error::{ApiError, ApiResult, Problems};
use crate::lifecycle::HistoryEvent;
use crate::model::{HistoryQuery, HistoryRows, HistorySubject, RolloutRecord, StatusRecord, WriteRecord};
use crate::store::Store;

/// How far back a history answers by default.
const DEFAULT_SPAN: chrono::Duration = chrono::Duration::hours(24);
const DEFAULT_TOP: i64 = 1000;
const MAX_TOP: i64 = 5000;

/// Query parameters of a history.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Start of the time range (RFC 3339, inclusive); default 24 hours before `to`.
    from: Option<String>,
    /// End of the time range (RFC 3339, exclusive); default now.
    to: Option<String>,
    /// Largest number of entries in one page (1-5000, default 1000).
    #[serde(rename = "$top")]
    #[param(rename = "$top")]
    top: Option<String>,
    /// Continuation token from a previous page's `nextLink`.
    #[serde(rename = "$skipToken")]
    #[param(rename = "$skipToken")]
    skip_token: Option<String>,
}

/// One entry of a history: a status transition, a write, or (of a policy assignment) a rollout transition.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum HistoryEntry {
    Status(StatusEntry),
    Write(WriteEntry),
    Rollout(RolloutEntry),
}

impl HistoryEntry {
    fn time(&self) -> DateTime<Utc> {
        match self {
            Self::Status(s) => s.time,
            Self::Write(w) => w.time,
            Self::Rollout(r) => r.time,
        }
    }
}

/// A policy assignment's rollout moved: it started, a batch started, a batch soaked, it was paused or resumed, it
/// halted, rolled back or completed, or a newer generation superseded it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutEntry {
    pub id: String,
    pub time: DateTime<Utc>,
    /// The policy assignment's ARM id.
    pub resource_id: String,
    /// Started, Superseded, BatchStarted, Soaking, Paused, Resumed, Halted, RolledBack or Completed.
    pub event: String,
    /// The assignment generation rolled out.
    pub generation: i64,
    /// The batch concerned (1-based).
    pub batch: i64,
    /// How many batches the rollout has (0 before its first step counted them).
    pub batches: i64,
    pub message: String,
}

impl From<RolloutRecord> for RolloutEntry {
    fn from(record: RolloutRecord) -> Self {
        Self {
            id: format!("r{}", record.id),
            time: record.at,
            resource_id: record.policy_assignment,
            event: record.event,
            generation: record.generation,
            batch: record.batch + 1,
            batches: record.batches,
            message: record.message,
        }
    }
}

/// A configuration's states changed: it was created, deleted, or its generation, states, commit or message moved;
/// or its agent restored one of its objects in the cluster.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusEntry {
    /// The entry's id: the stream's `Last-Event-ID`.
    pub id: String,
    pub time: DateTime<Utc>,
    /// The configuration's ARM id.
    pub resource_id: String,
    pub cluster_id: String,
    pub configuration_name: String,
    /// Created, Updated, Deleted, or Restored (the agent wrote back an object deleted or changed in its cluster; the
    /// message says which).
    pub event: String,
    pub generation: i64,
    /// The generation the agent last reported on.
    pub reported_generation: Option<i64>,
    pub compliance_state: String,
    pub provisioning_state: String,
    /// The source commit the agent applied.
    pub commit: Option<String>,
    /// The error the agent or the control plane reported.
    pub message: Option<String>,
    /// The policy assignment that manages the configuration.
    pub policy_assignment_id: Option<String>,
}

impl StatusEntry {
    pub fn from_record(record: StatusRecord) -> Self {
        let mut parts = record.cluster_path.splitn(3, '/');
        let (subscription, group, cluster) = (
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
            parts.next().unwrap_or_default(),
        );
        let cluster =
            ClusterRef::parse(subscription, group, cluster).expect("stored names were validated when written");
        Self {
            id: record.id.to_string(),
            time: record.at,
            resource_id: cluster.configuration_id(&record.name),
            cluster_id: cluster.id(),
            configuration_name: record.name,
            event: record.event.as_str().to_owned(),
            generation: record.generation,
            reported_generation: record.reported_generation,
            compliance_state: record.compliance_state,
            provisioning_state: record.provisioning_state,
            commit: record.commit_id,
            message: record.message,
            policy_assignment_id: (!record.policy_assignment.is_empty()).then_some(record.policy_assignment),
        }
    }
}

/// A write the ARM API accepted.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WriteEntry {
    pub id: String,
    pub time: DateTime<Utc>,
    /// The resource written.
    pub resource_id: String,
    /// Who wrote it: the token's subject.
    pub actor: String,
    /// PUT, PATCH or DELETE.
    pub action: String,
    /// The HTTP status it was answered with.
    pub status_code: i32,
}

impl From<WriteRecord> for WriteEntry {
    fn from(record: WriteRecord) -> Self {
        Self {
            id: format!("w{}", record.id),
            time: record.at,
            resource_id: record.resource_id,
            actor: record.actor,
            action: record.action,
            status_code: record.status_code,
        }
    }
}

/// Where a page of history continues: after these ids of each kind.
#[derive(Debug, Default, PartialEq, Eq)]
struct Cursor {
    status: i64,
    write: i64,
    rollout: i64,
}

impl Cursor {
    fn encode(&self) -> String {
        encode_token(&format!("{}.{}.{}", self.status, self.write, self.rollout))
    }

    /// Reads a token, those issued before rollouts were recorded (`status.write`) included.
    fn decode(token: &str) -> Option<Self> {
        let text = decode_token(token).ok()?;
        let mut parts = text.split('.').map(|p| p.parse::<i64>().ok());
        let (status, write) = (parts.next()??, parts.next()??);
        let rollout = match parts.next() {
            None => 0,
            Some(id) => id?,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self { status, write, rollout })
    }
}

/// The checked parameters.
struct Range {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    top: i64,
    cursor: Cursor,
}

fn check(params: &HistoryParams) -> ApiResult<Range> {
    let mut problems = Problems::default();
    let mut time = |name: &str, value: &Option<String>| {
        value
            .as_deref()
            .and_then(|text| match DateTime::parse_from_rfc3339(text) {
                Ok(at) => Some(at.with_timezone(&Utc)),
                Err(_) => {
                    problems.add(name, format!("'{text}' is not an RFC 3339 time"));
                    None
                }
            })
    };
    let to = time("to", &params.to).unwrap_or_else(Utc::now);
    let from = time("from", &params.from).unwrap_or(to - DEFAULT_SPAN);
    if from >= to {
        problems.add("from", "the range is empty: from must be before to");
    }
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
    let cursor = match &params.skip_token {
        None => Cursor::default(),
        Some(token) => Cursor::decode(token).unwrap_or_else(|| {
            problems.add("$skipToken", "$skipToken is not a token this server issued");
            Cursor::default()
        }),
    };
    problems.into_result("history request", None)?;
    Ok(Range { from, to, top, cursor })
}

/// A page of the history of `subject`, whose writes are those to `resource_id` (and, with `below`, to what lies
/// under it). `path` is the request's path, for `nextLink`.
pub async fn page(
    store: &dyn Store,
    subject: HistorySubject,
    resource_id: &str,
    below: bool,
    params: &HistoryParams,
    base: &BaseUrl,
    path: &str,
) -> ApiResult<Page<HistoryEntry>> {
    let range = check(params)?;
    let query = HistoryQuery {
        subject,
        resource_key: resource_id.to_ascii_lowercase(),
        below,
        from: range.from,
        to: range.to,
        after_status: range.cursor.status,
        after_write: range.cursor.write,
        after_rollout: range.cursor.rollout,
        // one more of each than a page holds: whether another page follows
        limit: range.top + 1,
    };
    let HistoryRows {
        status,
        writes,
        rollouts,
    } = store.history(&query).await?;
    let more = status.len() + writes.len() + rollouts.len() > range.top as usize;
    let entries = merge(
        [
            status
                .into_iter()
                .map(|s| (s.id, HistoryEntry::Status(StatusEntry::from_record(s))))
                .collect(),
            writes
                .into_iter()
                .map(|w| (w.id, HistoryEntry::Write(w.into())))
                .collect(),
            rollouts
                .into_iter()
                .map(|r| (r.id, HistoryEntry::Rollout(r.into())))
                .collect(),
        ],
        range.top as usize,
    );
    let mut next = range.cursor;
    for (id, entry) in &entries {
        match entry {
            HistoryEntry::Status(_) => next.status = next.status.max(*id),
            HistoryEntry::Write(_) => next.write = next.write.max(*id),
            HistoryEntry::Rollout(_) => next.rollout = next.rollout.max(*id),
        }
    }
    let next_link = more.then(|| {
        let top = params.top.as_deref();
        format!(
            "{}&from={}&to={}",
            base.next_link(path, "2026-01-01", top, &next.encode()),
            range.from.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            range.to.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        )
    });
    Ok(Page {
        value: entries.into_iter().map(|(_, e)| e).collect(),
        next_link,
    })
}

/// The first `top` entries of the kinds' lists (each in id order, as read) merged by time: each kind's list is
/// taken from its head, so what a page holds of a kind is a prefix in id order and its cursor (the last id taken)
/// skips nothing. Sorting all by time would not do: an entry's time is its transaction's, and a transaction that
/// began earlier may commit later, so a later id can carry an earlier time, and a page that took it but not the
/// entry before it would leave that one behind its cursor.
fn merge(kinds: [Vec<(i64, HistoryEntry)>; 3], top: usize) -> Vec<(i64, HistoryEntry)> {
    let mut heads: Vec<std::iter::Peekable<std::vec::IntoIter<(i64, HistoryEntry)>>> =
        kinds.into_iter().map(|k| k.into_iter().peekable()).collect();
    let mut out = Vec::with_capacity(top);
    while out.len() < top {
        let next = heads
            .iter_mut()
            .enumerate()
            .filter_map(|(i, h)| h.peek().map(|(_, e)| (e.time(), i)))
            .min();
        let Some((_, i)) = next else { break };
        out.extend(heads[i].next());
    }
    out
}

/// A time the history is asked about (`asOf`, `time`), checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PastTime {
    /// Now or a little later (a client's clock may run ahead): the present.
    Now,
    /// A past time within the history's retention.
    At(DateTime<Utc>),
}

impl PastTime {
    /// The instant it names, `Now` being `now`.
    pub fn instant(self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            Self::Now => now,
            Self::At(at) => at,
        }
    }
}

/// Reads the parameter `param` as a time of the history's past: RFC 3339, not in the future (a clock skew
/// allowed), not before the history kept (`retention` back); a problem is recorded under `param`.
pub fn past_time(param: &str, text: &str, retention: std::time::Duration, problems: &mut Problems) -> Option<PastTime> {
    let now = Utc::now();
    let kept_since = chrono::Duration::from_std(retention)
        .ok()
        .and_then(|r| now.checked_sub_signed(r))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    match DateTime::parse_from_rfc3339(text) {
        Err(_) => problems.add(param, format!("'{text}' is not an RFC 3339 time")),
        Ok(at) if at > now + chrono::Duration::seconds(CLOCK_SKEW_SECONDS as i64) => {
            problems.add(param, format!("'{text}' is in the future: the history goes up to now"))
        }
        Ok(at) if at >= now => return Some(PastTime::Now),
        Ok(at) if at < kept_since => problems.add(
            param,
            format!(
                "'{text}' is before the history kept (--history-retention, {} back: from {})",
                humantime::format_duration(retention),
                kept_since.to_rfc3339_opts(SecondsFormat::Secs, true)
            ),
        ),
        Ok(at) => return Some(PastTime::At(at.with_timezone(&Utc))),
    }
    None
}

/// Most configurations a page of a cluster's past answers, and how many by default.
const MAX_AS_OF_TOP: i64 = 1000;
const DEFAULT_AS_OF_TOP: i64 = 100;

/// Query parameters of a cluster's configurations at a past time.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClusterAsOfParams {
    /// The time (RFC 3339), within the history's retention (`--history-retention`, default 30 days); now answers the
    /// present.
    time: Option<String>,
    /// Largest number of configurations in one page (1-1000, default 100).
    #[serde(rename = "$top")]
    #[param(rename = "$top")]
    top: Option<String>,
    /// Continuation token from a previous page's `nextLink`.
    #[serde(rename = "$skipToken")]
    #[param(rename = "$skipToken")]
    skip_token: Option<String>,
}

/// Query parameter of a configuration at a past time.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AsOfParams {
    /// The time (RFC 3339), within the history's retention (`--history-retention`, default 30 days); now answers the
    /// present.
    time: Option<String>,
}

/// The `time` parameter: required.
fn required_time(text: Option<&str>, retention: std::time::Duration, problems: &mut Problems) -> Option<PastTime> {
    match text {
        None => {
            problems.add(
                "time",
                "give the time to answer for (RFC 3339), e.g. time=2026-01-13T14:00:00Z",
            );
            None
        }
        Some(text) => past_time("time", text, retention, problems),
    }
}

/// A page of the configurations of the cluster (its store id, and its ARM id `cluster`) as they were at the time
/// the parameters give: per name, its latest status entry by then (the generation, states and commit it had),
/// in name order; names that did not exist then (not yet created, or deleted) are left out.
pub async fn cluster_as_of(
    store: &dyn Store,
    cluster_id: i64,
    cluster: &str,
    params: &ClusterAsOfParams,
    retention: std::time::Duration,
    base: &BaseUrl,
) -> ApiResult<Page<StatusEntry>> {
    let mut problems = Problems::default();
    let time = required_time(params.time.as_deref(), retention, &mut problems);
    let top = match &params.top {
        None => DEFAULT_AS_OF_TOP,
        Some(text) => text
            .parse()
            .ok()
            .filter(|n| (1..=MAX_AS_OF_TOP).contains(n))
            .unwrap_or_else(|| {
                problems.add("$top", format!("$top must be a whole number from 1 to {MAX_AS_OF_TOP}"));
                DEFAULT_AS_OF_TOP
            }),
    };
    let after = match &params.skip_token {
        None => String::new(),
        Some(token) => decode_token(token).unwrap_or_else(|_| {
            problems.add("$skipToken", "$skipToken is not a token this server issued");
            String::new()
        }),
    };
    problems.into_result("asOf request", None)?;
    let at = time.expect("checked above").instant(Utc::now());
    // one more name than a page holds: whether another page follows
    let (mut names, entries) = store.states_as_of(cluster_id, at, None, &after, top + 1).await?;
    let more = names.len() > top as usize;
    names.truncate(top as usize);
    let last = names.last().cloned();
    let value = entries
        .into_iter()
        .filter(|e| last.as_ref().is_some_and(|l| e.name <= *l))
        .filter(|e| e.event != HistoryEvent::Deleted)
        .map(StatusEntry::from_record)
        .collect();
    let next_link = more.then(|| {
        let link = base.next_link(
            &format!("{cluster}/asOf"),
            "2026-01-01",
            params.top.as_deref(),
            &encode_token(&last.unwrap_or_default()),
        );
        format!("{link}&time={}", at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
    });
    Ok(Page { value, next_link })
}

/// The configuration `name` of the cluster as it was at the time the parameters give: its latest status entry by
/// then. A 404 when it did not exist then.
pub async fn configuration_as_of(
    store: &dyn Store,
    cluster_id: i64,
    configuration: &str,
    name: &str,
    params: &AsOfParams,
    retention: std::time::Duration,
) -> ApiResult<StatusEntry> {
    let mut problems = Problems::default();
    let time = required_time(params.time.as_deref(), retention, &mut problems);
    problems.into_result("asOf request", None)?;
    let at = time.expect("checked above").instant(Utc::now());
    let (_, entries) = store.states_as_of(cluster_id, at, Some(name), "", 1).await?;
    entries
        .into_iter()
        .find(|e| e.event != HistoryEvent::Deleted)
        .map(StatusEntry::from_record)
        .ok_or_else(|| {
            ApiError::ResourceNotFound(format!(
                "The Resource '{configuration}' did not exist at {} (or had no recorded state by then).",
                at.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            ))
        })
}

/// Middleware on the ARM routes: records each write they accept (PUT, PATCH, DELETE answered below 400) with the
/// caller's subject. A failure to record is logged, not answered: the write itself is done.
pub async fn record_writes(State(writes): State<WriteLog>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if !matches!(method.as_str(), "PUT" | "PATCH" | "DELETE") {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    let actor = request
        .extensions()
        .get::<Caller>()
        .map(|caller| caller.subject.clone())
        .unwrap_or_default();
    let request_id = request
        .headers()
        .get("x-ms-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let response = next.run(request).await;
    if response.status().as_u16() < 400 {
        let subscription_key = path.split('/').nth(2).map(str::to_ascii_lowercase).unwrap_or_default();
        let write = WriteRecord {
            id: 0,
            at: Utc::now(),
            subscription_key,
            resource_key: path.to_ascii_lowercase(),
            resource_id: path,
            actor,
            action: method.to_string(),
            status_code: i32::from(response.status().as_u16()),
            request_id,
        };
        let resource = write.resource_id.clone();
        if let Err(err) = writes.record(write).await {
            tracing::warn!(error = %err, %resource, "recording a write in the history failed");
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    fn write_at(id: i64, seconds: i64) -> (i64, HistoryEntry) {
        let time = DateTime::<Utc>::from_timestamp(1_800_000_000 + seconds, 0).unwrap();
        let entry = WriteEntry {
            id: format!("w{id}"),
            time,
            resource_id: "r".into(),
            actor: "a".into(),
            action: "PUT".into(),
            status_code: 200,
        };
        (id, HistoryEntry::Write(entry))
    }

    #[test]
    fn a_page_takes_each_kind_in_id_order_so_its_cursor_leaves_nothing_behind() {
        // id 2's transaction began before id 1's: its time is earlier though its id is later
        let writes = vec![write_at(1, 10), write_at(2, 5), write_at(3, 20)];
        let rollouts = vec![write_at(7, 8)];
        let page = merge([Vec::new(), writes, rollouts], 2);
        let ids: Vec<i64> = page.iter().map(|(id, _)| *id).collect();
        assert_eq!(ids, [7, 1], "by time across kinds, by id within one");
        let all = merge([Vec::new(), vec![write_at(1, 10), write_at(2, 5)], Vec::new()], 10);
        assert_eq!(all.iter().map(|(id, _)| *id).collect::<Vec<_>>(), [1, 2]);
    }

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let cursor = Cursor {
            status: 42,
            write: 7,
            rollout: 3,
        };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not a token"), None);
        assert_eq!(
            Cursor::decode(&encode_token("42.7")),
            Some(Cursor {
                status: 42,
                write: 7,
                rollout: 0
            }),
            "a token issued before rollouts were recorded still reads"
        );
        assert_eq!(Cursor::decode(&encode_token("1.2.3.4")), None);
    }

    #[test]
    fn an_empty_or_malformed_range_is_refused_with_every_problem() {
        let params = HistoryParams {
            from: Some("2026-01-02T00:00:00Z".into()),
            to: Some("2026-01-01T00:00:00Z".into()),
            top: Some("0".into()),
            skip_token: Some("!".into()),
        };
        let Some(ApiError::InvalidParameter { details, .. }) = check(&params).err() else {
            panic!("refused as an invalid parameter");
        };
        let targets: Vec<_> = details.iter().filter_map(|d| d.target.as_deref()).collect();
        assert_eq!(targets, ["from", "$top", "$skipToken"]);
        let params = HistoryParams {
            to: Some("yesterday".into()),
            ..HistoryParams::default()
        };
        assert!(check(&params).err().expect("refused").to_string().contains("RFC 3339"));
    }

    #[test]
    fn the_default_range_is_the_last_day() {
        let range = check(&HistoryParams::default()).expect("valid");
        assert_eq!(range.to - range.from, DEFAULT_SPAN);
        assert_eq!(range.top, DEFAULT_TOP);
    }
}
