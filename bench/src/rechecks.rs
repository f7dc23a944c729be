//! Re-checks: what the agent's upkeep costs the control plane. The real agent (`fluxplane_agent::run::Agent`)
//! re-checks each configuration on its sync interval, reading back what it wrote and writing back what drifted;
//! here `agents` of them, each with a cluster held in memory and one configuration synced every second (the
//! shortest interval there is), run side by side for a window. The figure is the requests the control plane answers
//! per second meanwhile; its ceiling is what the agents' long polls alone ask (one poll per agent per poll wait):
//! checks must add nothing to it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use async_trait::async_trait;
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::run::{Agent, Options};
use fluxplane_agent::secrets::Credentials;
use fluxplane_agent::targets::{ClusterFacts, Drifted, Observation, Target as ClusterTarget};
use fluxplane_agent_protocol::agent::DesiredConfiguration;
use fluxplane_agent_protocol::flux::{ComplianceState, ObjectStatus, ObjectStatusCondition};
use tokio::sync::watch;

use crate::fleet::{fleet_cluster, register};
use crate::{Figure, Target, config_body};

/// How long the agents' polls wait for a change, as `fluxplane agent run` waits by default.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// Configurations written at once while seeding.
const SEEDING_WORKERS: usize = 16;

/// A cluster in memory: what the agent wrote, which stays as written (no drift), and observed Compliant with a
/// Ready condition stamped when observed, as the `dir` target stamps its own.
#[derive(Default)]
struct MemoryCluster {
    written: Mutex<BTreeMap<String, i64>>,
    checks: Arc<std::sync::atomic::AtomicU64>,
}

#[async_trait]
impl ClusterTarget for MemoryCluster {
    async fn inventory(&self) -> anyhow::Result<BTreeMap<String, i64>> {
        Ok(self.written.lock().unwrap().clone())
    }
    async fn apply(&self, configuration: &DesiredConfiguration, _: &Credentials) -> anyhow::Result<()> {
        self.written
            .lock()
            .unwrap()
            .insert(configuration.name.clone(), configuration.generation);
        Ok(())
    }
    async fn credentials(&self, _: &DesiredConfiguration) -> anyhow::Result<Credentials> {
        Ok(Credentials::default())
    }
    async fn drift(&self, _: &DesiredConfiguration, _: &Credentials) -> anyhow::Result<Vec<Drifted>> {
        self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Vec::new())
    }
    async fn remove(&self, name: &str) -> anyhow::Result<()> {
        self.written.lock().unwrap().remove(name);
        Ok(())
    }
    async fn observe(&self, configuration: &DesiredConfiguration) -> Observation {
        Observation {
            statuses: vec![ObjectStatus {
                name: Some(configuration.name.clone()),
                namespace: Some("flux-system".into()),
                kind: Some("GitRepository".into()),
                compliance_state: Some(ComplianceState::Compliant),
                status_conditions: Some(vec![ObjectStatusCondition {
                    last_transition_time: Some(chrono::Utc::now().to_rfc3339()),
                    message: Some("stored artifact".into()),
                    reason: Some("Succeeded".into()),
                    status: Some("True".into()),
                    type_: Some("Ready".into()),
                }]),
                ..Default::default()
            }],
            source_synced_commit_id: Some("main@sha1:0000000000000000000000000000000000000000".into()),
            ..Observation::only(ComplianceState::Compliant, None)
        }
    }
    async fn cluster_facts(&self) -> ClusterFacts {
        ClusterFacts::default()
    }
}

/// Every request the server has answered, from its metrics.
async fn requests_answered(target: &Target) -> anyhow::Result<f64> {
    let text = target.metrics().await?;
    Ok(text
        .lines()
        .filter(|line| line.starts_with("fluxplane_http_requests_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// How many configurations the server shows Compliant, of `agents` (one per cluster).
async fn compliant(target: &Target, agents: usize) -> anyhow::Result<usize> {
    let mut count = 0;
    for i in 0..agents {
        let path = Target::config_path(&fleet_cluster(i), "cfg");
        let answer: serde_json::Value = target
            .client
            .get(format!("{}{path}?api-version=2025-04-01", target.server.base))
            .bearer_auth(&target.token)
            .send()
            .await?
            .json()
            .await?;
        count += usize::from(answer["properties"]["complianceState"] == "Compliant");
    }
    Ok(count)
}

pub async fn rechecks(
    target: &Target,
    agents: usize,
    window: Duration,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let identities = register(&target.client, &target.server.base, &target.token, agents, &[]).await?;
    let mut seeding = Vec::new();
    for worker in 0..SEEDING_WORKERS {
        let (http, base, token) = (target.client.clone(), target.server.base.clone(), target.token.clone());
        seeding.push(tokio::spawn(async move {
            for i in (worker..agents).step_by(SEEDING_WORKERS) {
                let mut body = config_body(i);
                body["properties"]["gitRepository"]["syncIntervalInSeconds"] = 1.into();
                let path = Target::config_path(&fleet_cluster(i), "cfg");
                let response = http
                    .put(format!("{base}{path}?api-version=2025-04-01"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("seeding {path}: {}", response.status());
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in seeding {
        task.await??;
    }

    let (stop, stopped) = watch::channel(false);
    let checks = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut running = Vec::with_capacity(agents);
    for identity in identities {
        let cluster = MemoryCluster {
            checks: Arc::clone(&checks),
            ..Default::default()
        };
        let agent = Agent::new(
            ControlPlane::new(identity)?,
            Box::new(cluster),
            Options {
                poll_wait: POLL_WAIT,
                ..Default::default()
            },
        )
        .await?;
        let mut stopped = stopped.clone();
        running.push(tokio::spawn(agent.run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        })));
    }
    // every agent applied, reported, and had its report accepted
    let deadline = Instant::now() + Duration::from_secs(60);
    while compliant(target, agents).await? < agents {
        if Instant::now() > deadline {
            bail!("the agents did not all report Compliant within a minute");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    let before = requests_answered(target).await?;
    let checks_before = checks.load(std::sync::atomic::Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let elapsed = started.elapsed().as_secs_f64();
    // the metrics request itself is one of those counted
    let requests = requests_answered(target).await? - before - 1.0;
    let checked = checks.load(std::sync::atomic::Ordering::Relaxed) - checks_before;
    let _ = stop.send(true);
    for agent in running {
        agent.await??;
    }

    let per_second = requests / elapsed;
    let polls_per_second = agents as f64 / POLL_WAIT.as_secs_f64();
    eprintln!(
        "  {agents} agents: {checked} checks in {elapsed:.1} s, {requests} requests to the control plane \
         ({per_second:.1}/s; long polls alone: {polls_per_second:.1}/s)"
    );
    if checked < agents as u64 {
        bail!("only {checked} checks ran in the window: the agents did not re-check");
    }
    figures.push(Figure {
        backend,
        scenario: format!("requests/s while {agents} agents re-check every second"),
        value: per_second,
        unit: "req/s",
        target: Some(format!("≤ {polls_per_second:.1}/s (their long polls alone)")),
        // a poll answered at the window's edge is counted whole: one per agent of slack
        met: Some(requests <= agents as f64 * (elapsed / POLL_WAIT.as_secs_f64()).ceil()),
        detail: format!("{checked} checks of a cluster in {elapsed:.1} s, {requests} requests"),
        http_ceiling: None,
        db_ceiling: None,
    });
    Ok(())
}
