//! A policy assignment reaching a fleet: how long the write that gives every matching cluster its configuration
//! takes, and how long until every simulated agent holds it, for the assignment's creation and for a template
//! change. Agents are the propagation scenario's (real protocol, own identities, instant apply).
//!
//! The simulator shares its process, and so its open-file limit, with the server: each agent holds a connection
//! on both sides. Clusters beyond what the limit leaves room for are registered without an agent; the figures say
//! how many agents there were.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::identity::Identity;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::propagation::{Receipt, simulated_agent};
use crate::{CLUSTER, Figure, Target, ms};

const ASSIGNMENT: &str = "/subscriptions/bench/providers/Fluxplane.Fleet/policyAssignments/baseline";
const FLEET_API: &str = "2026-01-01";
/// File descriptors kept free for the database, the listener and everything else.
const SPARE_FILES: u64 = 2000;

/// How many agents fit beside the server: two descriptors each (client and server side of its connection).
fn agent_room() -> usize {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|limits| {
            limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        })
        .and_then(|soft| soft.parse::<u64>().ok())
        .unwrap_or(1024);
    (limit.saturating_sub(SPARE_FILES) / 2) as usize
}

/// The total time the server has spent applying policy assignments, from its metrics.
async fn apply_seconds(target: &Target) -> anyhow::Result<f64> {
    let metrics = target
        .client
        .get(format!("{}/metrics", target.server.base))
        .send()
        .await?
        .text()
        .await?;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("fluxplane_policy_assignment_apply_seconds_sum "))
        .and_then(|value| value.trim().parse().ok())
        .context("the server's metrics lack fluxplane_policy_assignment_apply_seconds")
}

/// Waits until every agent is long-polling again, and a moment more for their last requests to land: each step
/// starts from a quiet fleet, as an operator's next change does, not inside the wake-up storm of the last one.
async fn settled(target: &Target, agents: usize, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while target.server.state.notifier.waiting_clusters() < agents {
        if Instant::now() > deadline {
            bail!(
                "only {} of {agents} agents are polling",
                target.server.state.notifier.waiting_clusters()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    Ok(())
}

fn assignment(branch: &str) -> Value {
    json!({"properties": {
        "selector": {"matchLabels": {"fleet": "bench"}},
        "configurationName": "baseline",
        "configurationTemplate": {
            "namespace": "flux-system",
            "gitRepository": {"url": "https://github.com/example/fleet",
                              "repositoryRef": {"branch": "[parameters('branch')]"}},
            "kustomizations": {"infra": {"path": "./infra"}, "apps": {"path": "./apps", "dependsOn": ["infra"]}}
        },
        "parameters": {"branch": branch}
    }})
}

/// `clusters` clusters (an agent on up to `agent_room()` of them) and one assignment that matches them all.
pub async fn assignment_reach(
    target: &Target,
    clusters: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let agents = clusters.min(agent_room());
    let started = Instant::now();
    let (sender, mut receipts) = mpsc::unbounded_channel::<Receipt>();
    let mut tasks = Vec::with_capacity(agents);
    let mut registrations = Vec::new();
    for worker in 0..16 {
        let (http, base) = (target.client.clone(), target.server.base.clone());
        let token = target.token.clone();
        registrations.push(tokio::spawn(async move {
            let mut identities = Vec::new();
            for i in (worker..clusters).step_by(16) {
                let cluster = format!("{CLUSTER}/fleet-{i:05}");
                let (key, identity) = if i < agents {
                    let new = Identity::generate(&base, &cluster)?;
                    (new.public_key, Some(new.identity))
                } else {
                    ("a2V5".to_owned(), None)
                };
                let body = json!({"location": "westeurope", "tags": {"fleet": "bench"},
                                  "properties": {"agentPublicKeyCertificate": key}});
                let response = http
                    .put(format!("{base}{cluster}?api-version=2024-01-01"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("registering {cluster}: {}", response.status());
                }
                identities.extend(identity);
            }
            Ok::<_, anyhow::Error>(identities)
        }));
    }
    for registration in registrations {
        for identity in registration.await?? {
            tasks.push(tokio::spawn(simulated_agent(
                ControlPlane::new(identity)?,
                sender.clone(),
            )));
        }
    }
    drop(sender);
    settled(target, agents, Duration::from_secs(300)).await?;
    eprintln!(
        "  {clusters} clusters, {agents} agents polling after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    for (generation, step, branch) in [(1, "creation", "main"), (2, "template change", "release")] {
        settled(target, agents, Duration::from_secs(60)).await?;
        let before = apply_seconds(target).await?;
        let written = Instant::now();
        target.put(ASSIGNMENT, FLEET_API, &assignment(branch)).await?;
        let answered = written.elapsed();
        let transaction = Duration::from_secs_f64(apply_seconds(target).await? - before);
        // each agent reports every generation it sees once
        let mut holding = 0;
        let mut last = written;
        while holding < agents {
            let receipt = tokio::time::timeout(Duration::from_secs(60), receipts.recv())
                .await
                .with_context(|| format!("{holding} of {agents} agents hold generation {generation}"))?
                .context("every agent stopped")?;
            if receipt.name == "baseline" && receipt.generation == generation {
                holding += 1;
                last = last.max(receipt.received);
            }
        }
        let reach = last.saturating_duration_since(written);
        figures.push(Figure {
            backend,
            scenario: format!("assignment {step} writes {clusters} configurations"),
            value: ms(transaction),
            unit: "ms",
            target: Some("< 1000 ms".to_owned()),
            met: Some(ms(transaction) < 1000.0),
            detail: format!(
                "the applying transaction (server metric); the PUT answered after {:.0} ms, its status computed \
                 while the agents fetched and reported",
                ms(answered)
            ),
        });
        figures.push(Figure {
            backend,
            scenario: format!("assignment {step} held by all {agents} agents"),
            value: ms(reach),
            unit: "ms",
            target: Some("< 5000 ms".to_owned()),
            met: Some(ms(reach) < 5000.0),
            detail: format!("{agents} of {clusters} clusters have a simulated agent (open-file limit)"),
        });
    }
    for task in &tasks {
        task.abort();
    }
    Ok(())
}
