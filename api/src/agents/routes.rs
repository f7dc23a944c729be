//! HTTP handlers of the agent API (`fluxplane_agent_protocol::agent` describes the protocol).

use std::collections::HashMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use fluxplane_agent_protocol::agent::{
    ApplyOutcome, ConfigurationReport, DesiredConfiguration, DesiredExtension, DesiredState, EncryptionKeyRegistration,
    ExtensionReport, MAX_WAIT_SECONDS, ReportDisposition, ReportResult, Restoration, SealedSecrets, StatusAccepted,
    StatusReport,
};
use fluxplane_agent_protocol::sealing;
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{AgentCaller, heartbeat_every};
use super::ingest::Submission;
use crate::arm::body::SanitizedJsonBody;
use crate::arm::body::parse;
use crate::arm::conditional::{Preconditions, insert_etag};
use crate::arm::{ArmQuery, JsonBody};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::extensions::model::ExtensionObserved;
use crate::extensions::service::resource_key as extension_resource_key;
use crate::flux::model::Observed;
use crate::lifecycle::{self, ProvisioningState};
use crate::model::{
    AgentInfo, ConfigurationReportWrite, ExtensionRecord, ExtensionReportWrite, HeartbeatWrite, ReportWrite,
};
use crate::state::AppState;

/// How long a poll waits when the agent does not say.
const DEFAULT_WAIT_SECONDS: u64 = 30;
/// Most configuration reports one request may carry.
const MAX_REPORTS: usize = 1000;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(desired_state))
        .routes(routes!(report_status))
        .routes(routes!(register_encryption_key))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PollParams {
    /// Answer once the cluster's revision is past this one (default: answer at once).
    after: Option<i64>,
    /// Seconds to wait for a change (default 30, at most 60).
    wait: Option<u64>,
}

/// The cluster's desired state, once its revision is past `after` or when `wait` runs out.
#[utoipa::path(
    get,
    path = "/agent/v1/desired-state",
    tag = "Agent",
    operation_id = "Agent_DesiredState",
    params(PollParams),
    responses(
        (status = 200, description = "The full desired state of the agent's cluster", body = DesiredState,
         headers(("ETag" = String, description = "The revision, quoted: what `If-None-Match` names"))),
        (status = 304, description = "The revision is still the one `If-None-Match` names: the agent keeps the \
                                      desired state it holds (no body)",
         headers(("ETag" = String, description = "The revision, quoted"))),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("agent" = []))
)]
async fn desired_state(
    State(state): State<AppState>,
    agent: AgentCaller,
    ArmQuery(params): ArmQuery<PollParams>,
    held: Preconditions,
) -> ApiResult<Response> {
    let wait = Duration::from_secs(params.wait.unwrap_or(DEFAULT_WAIT_SECONDS).min(MAX_WAIT_SECONDS));
    // subscribe before reading the revision: a write in between still wakes this poll
    let mut changes = state.notifier.subscribe(&agent.cluster.key());
    let now = Utc::now();
    // A due heartbeat is written with the reports and the other polls' heartbeats waiting at that moment, one commit
    // for them all: a commit per poll, at 100,000 agents polling every 30 s, was half of what one PostgreSQL primary
    // commits one row at a time (docs/SCALING.md). The poll waits for it only when it makes the cluster Connected
    // (its answer says the agent is heard); otherwise it reads its revision apart and lets the heartbeat follow.
    let due = agent.last_heard.heartbeat_due(quiet_since(&state, now), None);
    let heartbeat = HeartbeatWrite {
        cluster_id: agent.cluster_id,
        info: AgentInfo::default(),
    };
    let revision = if due && !agent.last_heard.connected {
        let submission = Submission {
            reports: Vec::new(),
            heartbeat: Some(heartbeat),
        };
        state.reports.submit(submission, 0).await?.revision.flatten()
    } else {
        if due {
            state.reports.beat(heartbeat)?;
        }
        state.agent_revisions.get(agent.cluster_id).await?
    }
    .ok_or_else(|| ApiError::AuthenticationFailed("the cluster is no longer registered".into()))?;
    let waits = params.after.is_some_and(|after| revision <= after);
    let mut timed_out = false;
    if waits {
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(wait) => timed_out = true,
            () = state.notifier.closed() => {}
        }
    }
    // An agent names the revision it holds in If-None-Match: most polls end with nothing changed, and then the
    // answer is that it holds it, after one read of the revision (a wake-up lost between replicas still shows
    // there) instead of the whole desired state read, encoded, sent and decoded. A woken poll reads it all.
    let unchanged = match (waits, timed_out) {
        (false, _) => Some(revision),
        (true, true) if held.asks_not_modified() => state.agent_revisions.get(agent.cluster_id).await?,
        (true, _) => None,
    };
    if let Some(revision) = unchanged.filter(|r| held.not_modified(&r.to_string())) {
        let mut headers = HeaderMap::new();
        insert_etag(&mut headers, &revision.to_string());
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    // read with the desired states of the other polls answering now (an assignment wakes thousands at once)
    let desired = state
        .agent_desired
        .get(agent.cluster_id)
        .await?
        .ok_or_else(|| ApiError::AuthenticationFailed("the cluster is no longer registered".into()))?;
    // the changes written while this poll waited reach the agent now: their propagation time (changes written
    // between polls are not timed, as nothing tells which of them the agent has already seen)
    if params.after.is_some_and(|after| desired.revision > after) {
        let answered = Utc::now();
        for c in desired
            .configurations
            .iter()
            .filter(|c| c.system_data.last_modified_at >= now)
        {
            let latency = (answered - c.system_data.last_modified_at).to_std().unwrap_or_default();
            state.metrics.propagation.observe(latency.as_secs_f64());
        }
    }
    let mut sealed: HashMap<i64, Vec<SealedSecrets>> = HashMap::new();
    for row in desired.sealed {
        sealed.entry(row.configuration_id).or_default().push(row.into_wire());
    }
    let mut headers = HeaderMap::new();
    insert_etag(&mut headers, &desired.revision.to_string());
    let answer = Json(DesiredState {
        cluster_id: agent.cluster.id(),
        revision: desired.revision,
        configurations: desired
            .configurations
            .into_iter()
            .map(|c| DesiredConfiguration {
                deleting: c.provisioning_state == ProvisioningState::Deleting,
                sealed_secrets: sealed.remove(&c.id).unwrap_or_default(),
                name: c.name,
                generation: c.generation,
                spec: c.spec,
                secrets_version: c.secrets_version,
                reconcile_requested_at: c.reconcile_requested_at.map(lifecycle::reconcile_requested_text),
            })
            .collect(),
        extensions: desired.extensions.into_iter().map(desired_extension).collect(),
    });
    Ok((headers, answer).into_response())
}

/// An extension as its agent reads it.
fn desired_extension(e: ExtensionRecord) -> DesiredExtension {
    DesiredExtension {
        deleting: e.provisioning_state == ProvisioningState::Deleting,
        name: e.name,
        generation: e.generation,
        extension_type: e.extension_type,
        auto_upgrade_minor_version: e.spec.auto_upgrade_minor_version,
        release_train: e.spec.release_train,
        version: e.spec.version,
        release_namespace: e.spec.release_namespace,
        configuration_settings: e.spec.configuration_settings,
        secrets_version: e.secrets_version,
        sealed_secrets: e.sealed,
    }
}

/// The time after which a heartbeat need not be written again (`auth::heartbeat_every`).
fn quiet_since(state: &AppState, now: DateTime<Utc>) -> DateTime<Utc> {
    let every = heartbeat_every(state.config.offline_after);
    now - chrono::Duration::from_std(every).unwrap_or_default()
}

/// Records a batch of status reports; also a heartbeat.
#[utoipa::path(
    post,
    path = "/agent/v1/status",
    tag = "Agent",
    operation_id = "Agent_ReportStatus",
    request_body = StatusReport,
    responses(
        (status = 200, description = "What became of each report", body = StatusAccepted),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("agent" = []))
)]
async fn report_status(
    State(state): State<AppState>,
    agent: AgentCaller,
    headers: HeaderMap,
    SanitizedJsonBody(body): SanitizedJsonBody,
) -> ApiResult<Json<StatusAccepted>> {
    let report: StatusReport = parse(body, "")?;
    if report.configurations.len() + report.extensions.len() > MAX_REPORTS {
        return Err(ApiError::invalid(
            "configurations",
            format!("at most {MAX_REPORTS} reports fit in one request"),
        ));
    }
    let now = Utc::now();
    let reports = report
        .configurations
        .iter()
        .enumerate()
        .map(|(i, entry)| {
            Ok(ConfigurationReportWrite {
                cluster_id: agent.cluster_id,
                name: entry.name.clone(),
                generation: entry.generation,
                resource_key: format!("{}/{}", agent.cluster.key(), entry.name),
                write: report_write(entry, now, i)?,
                secrets_version: entry.secrets_version,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let heartbeat = agent
        .last_heard
        .heartbeat_due(quiet_since(&state, now), Some(&report.agent))
        .then(|| HeartbeatWrite {
            cluster_id: agent.cluster_id,
            info: report.agent.clone(),
        });
    let mut results = Vec::with_capacity(reports.len());
    if !reports.is_empty() || heartbeat.is_some() {
        // its share of the queue: the request's size as sent, or the largest a request may be
        let bytes = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(state.config.max_body_bytes);
        let applied = state.reports.submit(Submission { reports, heartbeat }, bytes).await?;
        if applied.revision == Some(None) {
            return Err(ApiError::AuthenticationFailed(
                "the cluster is no longer registered".into(),
            ));
        }
        for (entry, outcome) in report.configurations.iter().zip(applied.reports) {
            if let Some(written_at) = outcome.written_at {
                let latency = (now - written_at).to_std().unwrap_or_default();
                state.metrics.status_latency.observe(latency.as_secs_f64());
            }
            state.metrics.agent_report(match outcome.disposition {
                ReportDisposition::Recorded => "Recorded",
                ReportDisposition::Stale => "Stale",
                ReportDisposition::Unknown => "Unknown",
            });
            results.push(ReportResult {
                name: entry.name.clone(),
                generation: entry.generation,
                result: outcome.disposition,
            });
        }
    }
    // a batch of a rollout may be done now
    state.rollouts.reported();
    let mut extensions = Vec::with_capacity(report.extensions.len());
    for entry in &report.extensions {
        let result = state
            .store
            .apply_extension_report(
                agent.cluster_id,
                &entry.name,
                entry.generation,
                &extension_resource_key(&agent.cluster.key(), &entry.name),
                &extension_write(entry, now),
                entry.secrets_version,
                now,
            )
            .await?;
        extensions.push(ReportResult {
            name: entry.name.clone(),
            generation: entry.generation,
            result: result.disposition,
        });
    }
    Ok(Json(StatusAccepted { results, extensions }))
}

/// Registers the agent's encryption key, which the control plane seals its cluster's secrets to. Registering
/// another key fails the configurations whose undelivered secrets were sealed to the old one: they must be written
/// again. Registering the same key again changes nothing.
#[utoipa::path(
    put,
    path = "/agent/v1/encryption-key",
    tag = "Agent",
    operation_id = "Agent_RegisterEncryptionKey",
    request_body = EncryptionKeyRegistration,
    responses(
        (status = 204, description = "Registered"),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(("agent" = []))
)]
async fn register_encryption_key(
    State(state): State<AppState>,
    agent: AgentCaller,
    JsonBody(body): JsonBody,
) -> ApiResult<StatusCode> {
    let registration: EncryptionKeyRegistration = parse(body, "")?;
    let key = sealing::parse_public_key(&registration.public_key)
        .map_err(|err| ApiError::invalid("publicKey", err.to_string()))?;
    let failed = state
        .store
        .set_agent_encryption_key(agent.cluster_id, &key, &state.messages.rotated)
        .await?;
    for f in &failed {
        tracing::warn!(
            configuration = %f.name,
            generation = f.generation,
            "undelivered secrets sealed to the agent's previous key dropped; the configuration must be written again"
        );
    }
    tracing::info!(cluster = %agent.cluster.id(), "agent encryption key registered");
    Ok(StatusCode::NO_CONTENT)
}

/// What a report does to its extension.
fn extension_write(entry: &ExtensionReport, now: DateTime<Utc>) -> ExtensionReportWrite {
    if entry.outcome == ApplyOutcome::Removed {
        return ExtensionReportWrite::Removed;
    }
    let (provisioning_state, operation_status, operation_error) =
        lifecycle::extension_reported(entry.outcome, entry.message.as_deref());
    ExtensionReportWrite::Status {
        provisioning_state,
        observed: Box::new(ExtensionObserved {
            current_version: entry.current_version.clone(),
            error: operation_error.clone(),
            status_updated_at: Some(now),
            statuses: entry.statuses.clone(),
        }),
        operation_status,
        operation_error,
    }
}

/// The most restorations one configuration's report may carry: a configuration writes a source, its secret, its
/// FluxConfig and at most 100 kustomizations.
const MAX_RESTORATIONS: usize = 110;
/// The longest kind, name or namespace a restoration may name (Kubernetes' longest name is 253 characters).
const MAX_OBJECT_NAME: usize = 253;

/// The history's message for an object the agent restored: "restored Kustomization flux-system/apps, deleted in the
/// cluster (noticed at ...)".
fn restoration_event(restoration: &Restoration, at: &str) -> ApiResult<String> {
    let field = |name: &str, value: &str| {
        if value.is_empty() || value.len() > MAX_OBJECT_NAME || value.chars().any(char::is_control) {
            Err(ApiError::invalid(
                format!("{at}.{name}"),
                format!("must be 1-{MAX_OBJECT_NAME} characters without control characters"),
            ))
        } else {
            Ok(())
        }
    };
    field("kind", &restoration.kind)?;
    field("name", &restoration.name)?;
    if let Some(namespace) = &restoration.namespace {
        field("namespace", namespace)?;
    }
    let noticed = DateTime::parse_from_rfc3339(&restoration.noticed_at)
        .map_err(|_| ApiError::invalid(format!("{at}.noticedAt"), "must be an RFC 3339 timestamp"))?
        .with_timezone(&Utc);
    let object = match &restoration.namespace {
        Some(namespace) => format!("{namespace}/{}", restoration.name),
        None => restoration.name.clone(),
    };
    Ok(format!(
        "restored {} {object}, {} in the cluster (noticed at {})",
        restoration.kind,
        restoration.drift.as_str(),
        noticed.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
}

/// The longest public key line a report may carry: an RSA key of 16,384 bits takes under 3 KiB.
const MAX_PUBLIC_KEY_LENGTH: usize = 8 * 1024;

/// A reported `repositoryPublicKey`, checked to be what it says (one OpenSSH public key line), since users copy it
/// into their Git host as a deploy key.
fn public_key_line(key: &str, index: usize) -> ApiResult<String> {
    let key = key.trim();
    if key.len() > MAX_PUBLIC_KEY_LENGTH || ssh_key::PublicKey::from_openssh(key).is_err() {
        return Err(ApiError::invalid(
            format!("configurations[{index}].repositoryPublicKey"),
            format!("must be one OpenSSH public key line of at most {MAX_PUBLIC_KEY_LENGTH} bytes"),
        ));
    }
    Ok(key.to_owned())
}

/// What a report does to its configuration.
fn report_write(entry: &ConfigurationReport, now: DateTime<Utc>, index: usize) -> ApiResult<ReportWrite> {
    if entry.outcome == ApplyOutcome::Removed {
        return Ok(ReportWrite::Removed);
    }
    let (provisioning_state, operation_status, operation_error) =
        lifecycle::reported(entry.outcome, entry.message.as_deref());
    let source_updated_at = match &entry.source_updated_at {
        None => None,
        Some(text) => Some(
            DateTime::parse_from_rfc3339(text)
                .map_err(|_| {
                    ApiError::invalid(
                        format!("configurations[{index}].sourceUpdatedAt"),
                        "must be an RFC 3339 timestamp",
                    )
                })?
                .with_timezone(&Utc),
        ),
    };
    if entry.restored.len() > MAX_RESTORATIONS {
        return Err(ApiError::invalid(
            format!("configurations[{index}].restored"),
            format!("at most {MAX_RESTORATIONS} restorations fit in one report"),
        ));
    }
    let restored = entry
        .restored
        .iter()
        .enumerate()
        .map(|(i, restoration)| restoration_event(restoration, &format!("configurations[{index}].restored[{i}]")))
        .collect::<ApiResult<Vec<_>>>()?;
    Ok(ReportWrite::Status {
        restored,
        provisioning_state,
        compliance_state: entry.compliance_state,
        observed: Box::new(Observed {
            statuses: entry.statuses.clone(),
            source_synced_commit_id: entry.source_synced_commit_id.clone(),
            source_updated_at,
            status_updated_at: Some(now),
            repository_public_key: entry
                .repository_public_key
                .as_deref()
                .map(|key| public_key_line(key, index))
                .transpose()?,
            error_message: entry.message.clone(),
        }),
        operation_status,
        operation_error,
    })
}
