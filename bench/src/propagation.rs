//! Propagation: how fast a configuration write reaches the agents long-polling for it, and how fast its first
//! status comes back. The fleet is simulated by agents that speak the real protocol with their own identities
//! (Ed25519 keys registered on their clusters), long-poll, and apply instantly: on receipt they report the new
//! generation `Applied` and `Compliant` at once.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::identity::Identity;
use fluxplane_agent_protocol::agent::{ApplyOutcome, ConfigurationReport, StatusReport};
use fluxplane_agent_protocol::flux::ComplianceState;
use serde_json::json;
use tokio::sync::mpsc;

use crate::{CLUSTER, Figure, Target, config_body, ms, percentile};

/// What a simulated agent saw of one configuration.
pub(crate) struct Receipt {
    pub(crate) name: String,
    pub(crate) generation: i64,
    pub(crate) received: Instant,
    pub(crate) reported: Instant,
}

/// One simulated agent: polls, and reports every new generation at once.
pub(crate) async fn simulated_agent(
    control_plane: ControlPlane,
    receipts: mpsc::UnboundedSender<Receipt>,
) -> anyhow::Result<()> {
    let mut revision = None;
    let mut seen = std::collections::HashMap::<String, i64>::new();
    loop {
        let desired = match control_plane.desired_state(revision, Duration::from_secs(30)).await {
            Ok(desired) => desired,
            // the benchmark is over once nobody listens
            Err(_) if receipts.is_closed() => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        let received = Instant::now();
        revision = Some(desired.revision);
        let fresh: Vec<_> = desired
            .configurations
            .iter()
            .filter(|c| seen.get(&c.name).is_none_or(|g| *g < c.generation))
            .collect();
        if fresh.is_empty() {
            continue;
        }
        let report = StatusReport {
            agent: Default::default(),
            configurations: fresh
                .iter()
                .map(|c| ConfigurationReport {
                    name: c.name.clone(),
                    generation: c.generation,
                    outcome: ApplyOutcome::Applied,
                    compliance_state: ComplianceState::Compliant,
                    message: None,
                    statuses: Vec::new(),
                    source_synced_commit_id: Some("main@sha1:0000000000000000000000000000000000000000".into()),
                    source_updated_at: None,
                    secrets_version: None,
                })
                .collect(),
        };
        control_plane.report(&report).await?;
        let reported = Instant::now();
        for configuration in fresh {
            seen.insert(configuration.name.clone(), configuration.generation);
            let _ = receipts.send(Receipt {
                name: configuration.name.clone(),
                generation: configuration.generation,
                received,
                reported,
            });
        }
    }
}

/// `agents` simulated agents long-poll; `writes` configurations are written one after another, each to the next
/// cluster in turn, and each write's receipt and first status are timed.
pub async fn propagation(
    target: &Target,
    agents: usize,
    writes: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let (sender, mut receipts) = mpsc::unbounded_channel();
    let mut tasks = Vec::with_capacity(agents);
    for i in 0..agents {
        let cluster = format!("{CLUSTER}/agent-{i:05}");
        let new = Identity::generate(&target.server.base, &cluster)?;
        let body = json!({"location": "westeurope", "properties": {"agentPublicKeyCertificate": new.public_key}});
        target.put(&cluster, "2024-01-01", &body).await?;
        let control_plane = ControlPlane::new(new.identity)?;
        tasks.push(tokio::spawn(simulated_agent(control_plane, sender.clone())));
    }
    drop(sender);
    // every agent is waiting once the server holds a poll for every cluster
    let deadline = Instant::now() + Duration::from_secs(120);
    while target.server.state.notifier.waiting_clusters() < agents {
        if Instant::now() > deadline {
            bail!(
                "only {} of {agents} agents are polling",
                target.server.state.notifier.waiting_clusters()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "  {agents} agents polling after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut receipt = Vec::with_capacity(writes);
    let mut status = Vec::with_capacity(writes);
    for i in 0..writes {
        let cluster = format!("{CLUSTER}/agent-{:05}", i % agents);
        let name = format!("propagation-{i}");
        let written = Instant::now();
        target
            .put(&Target::config_path(&cluster, &name), "2025-04-01", &config_body(i))
            .await?;
        let seen = loop {
            let next = tokio::time::timeout(Duration::from_secs(30), receipts.recv())
                .await
                .with_context(|| format!("{name} never reached its agent"))?
                .context("every agent stopped")?;
            if next.name == name {
                break next;
            }
        };
        receipt.push(seen.received.saturating_duration_since(written));
        status.push(seen.reported.saturating_duration_since(written));
    }
    for task in &tasks {
        task.abort();
    }
    receipt.sort();
    status.sort();
    let is_postgres = backend == "postgres";
    figures.push(Figure {
        backend,
        scenario: format!("write to agent receipt, {agents} agents polling"),
        value: ms(percentile(&receipt, 0.99)),
        unit: "ms p99",
        target: is_postgres.then(|| "p99 < 100 ms".to_owned()),
        met: is_postgres.then(|| ms(percentile(&receipt, 0.99)) < 100.0),
        detail: format!(
            "{writes} writes; p50 {:.2} ms, p95 {:.2} ms, max {:.2} ms",
            ms(percentile(&receipt, 0.5)),
            ms(percentile(&receipt, 0.95)),
            ms(receipt[receipt.len() - 1])
        ),
    });
    let (p50, p99) = (ms(percentile(&status, 0.5)), ms(percentile(&status, 0.99)));
    figures.push(Figure {
        backend,
        scenario: format!("write to first status, instant apply, {agents} agents"),
        value: p99,
        unit: "ms p99",
        target: is_postgres.then(|| "p50 < 50 ms, p99 < 250 ms".to_owned()),
        met: is_postgres.then_some(p50 < 50.0 && p99 < 250.0),
        detail: format!(
            "{writes} writes; p50 {p50:.2} ms, p95 {:.2} ms",
            ms(percentile(&status, 0.95))
        ),
    });
    Ok(())
}
