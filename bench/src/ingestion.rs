//! Status ingestion: how many status reports the control plane records per second. `agents` agents, each with an
//! identity of its own registered on its own cluster with `configurations` configurations, send `reports` reports
//! each back to back over the real agent API, all agents at once. Each report covers every configuration of its
//! cluster and alternates between `Applied`/`Compliant` and `Failed`/`Non-Compliant` with a message, so that every
//! report changes each configuration's state. The design sets no target for it.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use fluxplane_agent::client::{ClientError, ControlPlane};
use fluxplane_agent_protocol::agent::{
    ApplyOutcome, ConfigurationReport, ReportDisposition, StatusAccepted, StatusReport,
};
use fluxplane_agent_protocol::flux::ComplianceState;

use crate::ceiling::{Ceiling, Db, FixedServer, agent_http};
use crate::fleet::{fleet_cluster, register};
use crate::propagation::Exchange;
use crate::{Figure, Target, ms, percentile, seed};

/// Configurations written at once while seeding.
const SEEDING_WORKERS: usize = 16;

/// Who sends the reports: an agent to the control plane, or the same reports to the HTTP ceiling.
pub(crate) enum Reporter {
    Agent(ControlPlane),
    Ceiling {
        http: reqwest::Client,
        url: String,
        token: String,
    },
}

impl Reporter {
    pub(crate) async fn report(&self, report: &StatusReport) -> anyhow::Result<StatusAccepted> {
        match self {
            Reporter::Agent(control_plane) => match control_plane.report(report).await {
                // a kept-alive connection the server closed as the report went out (its header read timeout passed
                // while the other agents got ready): sent again on a new one, as an agent sends its report again
                Err(ClientError::Transport(err)) if err.is_request() || err.is_connect() => {
                    Ok(control_plane.report(report).await?)
                }
                answered => Ok(answered?),
            },
            // as `ControlPlane::report` sends it
            Reporter::Ceiling { http, url, token } => Ok(http
                .post(url)
                .timeout(Duration::from_secs(30))
                .bearer_auth(token)
                .json(report)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?),
        }
    }
}

/// The generations the agent `agent` is to report on, as an agent learns them (its first read also opens its
/// connection); it must hold `configurations` of them.
pub(crate) async fn held(
    control_plane: &ControlPlane,
    configurations: usize,
    agent: usize,
) -> anyhow::Result<Vec<(String, i64)>> {
    let desired = control_plane.desired_state(None, Duration::ZERO).await?;
    let held: Vec<_> = desired
        .configurations
        .iter()
        .map(|c| (c.name.clone(), c.generation))
        .collect();
    if held.len() != configurations {
        bail!(
            "agent {agent} holds {} configurations, expected {configurations}",
            held.len()
        );
    }
    Ok(held)
}

/// A report of every configuration at its generation: compliant, or failed with a message.
pub(crate) fn report(configurations: &[(String, i64)], compliant: bool, agent: usize) -> StatusReport {
    StatusReport {
        agent: Default::default(),
        extensions: Vec::new(),
        configurations: configurations
            .iter()
            .map(|(name, generation)| ConfigurationReport {
                name: name.clone(),
                generation: *generation,
                outcome: if compliant {
                    ApplyOutcome::Applied
                } else {
                    ApplyOutcome::Failed
                },
                compliance_state: if compliant {
                    ComplianceState::Compliant
                } else {
                    ComplianceState::NonCompliant
                },
                message: (!compliant).then(|| format!("simulated failure on agent {agent}: kustomization apps")),
                statuses: Vec::new(),
                source_synced_commit_id: Some("main@sha1:0000000000000000000000000000000000000000".into()),
                source_updated_at: None,
                secrets_version: None,
                repository_public_key: None,
                restored: Vec::new(),
            })
            .collect(),
    }
}

/// What one run of the reporters did.
struct Run {
    elapsed: Duration,
    latencies: Vec<Duration>,
    recorded: usize,
    /// An answer, as the server wrote it.
    answer: Bytes,
}

/// Every reporter sends `reports` reports back to back, alternating between its two, all at once.
async fn drive(reporters: Vec<(Reporter, [StatusReport; 2])>, reports: usize) -> anyhow::Result<Run> {
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(reporters.len());
    for (reporter, pair) in reporters {
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(reports);
            let mut recorded = 0;
            let mut answer = StatusAccepted::default();
            for r in 0..reports {
                let sent = Instant::now();
                answer = reporter.report(&pair[r % 2]).await?;
                latencies.push(sent.elapsed());
                recorded += answer
                    .results
                    .iter()
                    .filter(|result| result.result == ReportDisposition::Recorded)
                    .count();
            }
            Ok::<_, anyhow::Error>((latencies, recorded, answer))
        }));
    }
    let mut run = Run {
        elapsed: Duration::ZERO,
        latencies: Vec::new(),
        recorded: 0,
        answer: Bytes::new(),
    };
    for task in tasks {
        let (latencies, recorded, answer) = task.await??;
        run.latencies.extend(latencies);
        run.recorded += recorded;
        // the server wrote this type with serde_json: written again, it has the size the server sent
        run.answer = serde_json::to_vec(&answer)?.into();
    }
    run.elapsed = started.elapsed();
    run.latencies.sort();
    Ok(run)
}

pub async fn ingestion(
    target: &Target,
    agents: usize,
    configurations: usize,
    reports: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let seeding = Instant::now();
    let identities = register(&target.client, &target.server.base, &target.token, agents, &[]).await?;
    let paths = (0..agents * configurations)
        .map(|i| {
            Target::config_path(
                &fleet_cluster(i / configurations),
                &format!("cfg-{}", i % configurations),
            )
        })
        .collect();
    seed(target, paths, SEEDING_WORKERS).await?;
    let mut agent_reporters = Vec::with_capacity(agents);
    let mut ceiling_reporters = Vec::with_capacity(agents);
    for (agent, identity) in identities.into_iter().enumerate() {
        let token = identity.token()?.value;
        let control_plane = ControlPlane::new(identity)?;
        let held = held(&control_plane, configurations, agent).await?;
        let pair = [report(&held, true, agent), report(&held, false, agent)];
        agent_reporters.push((Reporter::Agent(control_plane), pair.clone()));
        ceiling_reporters.push((token, pair));
    }
    target.maintain(true).await?;
    eprintln!(
        "  {agents} agents with {configurations} configurations each ready after {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let server = drive(agent_reporters, reports).await?;
    let expected = agents * reports * configurations;
    if server.recorded != expected {
        bail!("{} of {expected} configuration statuses were recorded", server.recorded);
    }
    let fixed = FixedServer::start(vec![server.answer.clone()], 0, Exchange::default(), Bytes::new()).await?;
    let ceiling_reporters = ceiling_reporters
        .into_iter()
        .enumerate()
        .map(|(i, (token, pair))| {
            let http = agent_http(&fixed.base, i).context("an HTTP client")?;
            Ok((
                Reporter::Ceiling {
                    http,
                    url: fixed.body_url(0),
                    token,
                },
                pair,
            ))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let http = drive(ceiling_reporters, reports).await?;
    fixed.stop().await;
    let pool = Db::open(target).await?;
    let db = pool.ingestion(agents, configurations, reports).await?;
    pool.close().await;

    let rate = |elapsed: Duration| (agents * reports) as f64 / elapsed.as_secs_f64();
    let value = rate(server.elapsed);
    figures.push(Figure {
        backend,
        scenario: format!("status ingestion, {agents} agents, {configurations} configurations each"),
        value,
        unit: "reports/s",
        target: None,
        met: None,
        detail: format!(
            "{} reports in {:.2} s, {:.0} configuration statuses/s; latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            agents * reports,
            server.elapsed.as_secs_f64(),
            server.recorded as f64 / server.elapsed.as_secs_f64(),
            ms(percentile(&server.latencies, 0.50)),
            ms(percentile(&server.latencies, 0.95)),
            ms(percentile(&server.latencies, 0.99)),
        ),
        http_ceiling: Some(Ceiling::rate(
            value,
            rate(http.elapsed),
            "the same reports POSTed by as many agent-like clients at once, answered with the server's answer",
        )),
        db_ceiling: Some(Ceiling::rate(
            value,
            rate(db),
            "per report, an UPDATE of each configuration's status in a transaction of its own, as many agents at \
             once, scratch table",
        )),
    });
    Ok(())
}
