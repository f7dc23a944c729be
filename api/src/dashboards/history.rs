//! What changed when: the status transitions the store's triggers record and the writes the ARM API accepted,
//! answered as one time-ordered list per configuration, cluster or policy assignment (`.../history`), and the
//! middleware that records each accepted write.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::write_log::WriteLog;
use crate::arm::ids::ClusterRef;
use crate::arm::paging::{BaseUrl, Page, decode_token, encode_token};
use crate::auth::Caller;
use crate::error::{ApiResult, Problems};
use crate::model::{HistoryQuery, HistorySubject, StatusRecord, WriteRecord};
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

/// One entry of a history: a status transition or a write.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "camelCase")]
pub enum HistoryEntry {
    Status(StatusEntry),
    Write(WriteEntry),
}

impl HistoryEntry {
    fn time(&self) -> DateTime<Utc> {
        match self {
            Self::Status(s) => s.time,
            Self::Write(w) => w.time,
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
}

impl Cursor {
    fn encode(&self) -> String {
        encode_token(&format!("{}.{}", self.status, self.write))
    }

    fn decode(token: &str) -> Option<Self> {
        let text = decode_token(token).ok()?;
        let (status, write) = text.split_once('.')?;
        Some(Self {
            status: status.parse().ok()?,
            write: write.parse().ok()?,
        })
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
        // one more of each than a page holds: whether another page follows
        limit: range.top + 1,
    };
    let (status, writes) = store.history(&query).await?;
    let more = status.len() + writes.len() > range.top as usize;
    let mut entries: Vec<(i64, HistoryEntry)> = status
        .into_iter()
        .map(|s| (s.id, HistoryEntry::Status(StatusEntry::from_record(s))))
        .chain(writes.into_iter().map(|w| (w.id, HistoryEntry::Write(w.into()))))
        .collect();
    entries.sort_by_key(|(_, e)| e.time());
    entries.truncate(range.top as usize);
    let mut next = Cursor {
        status: range.cursor.status,
        write: range.cursor.write,
    };
    for (id, entry) in &entries {
        match entry {
            HistoryEntry::Status(_) => next.status = next.status.max(*id),
            HistoryEntry::Write(_) => next.write = next.write.max(*id),
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

    #[test]
    fn a_cursor_reads_back_what_it_wrote() {
        let cursor = Cursor { status: 42, write: 7 };
        assert_eq!(Cursor::decode(&cursor.encode()), Some(cursor));
        assert_eq!(Cursor::decode("not a token"), None);
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
