//! A policy assignment reaching a fleet: how long the write that gives every matching cluster its configuration
//! takes, and how long until every simulated agent holds it, for the assignment's creation and for a template
//! change. The agents run in the fleet simulator's own process (see `fleet`).

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde_json::{Value, json};

use crate::fleet::Fleet;
use crate::{Figure, Target, ms};

const ASSIGNMENT: &str = "/subscriptions/bench/providers/Fluxplane.Fleet/policyAssignments/baseline";
const FLEET_API: &str = "2026-01-01";

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

/// `clusters` clusters, each with an agent, and one assignment that matches them all.
pub async fn assignment_reach(
    target: &Target,
    clusters: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut fleet = Fleet::spawn(target, clusters, &[("fleet", "bench")]).await?;
    fleet.settled(target, clusters, Duration::from_secs(600)).await?;
    eprintln!(
        "  {clusters} clusters, each with an agent polling, after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    for (generation, step, branch) in [(1, "creation", "main"), (2, "template change", "release")] {
        // each step starts from a quiet fleet, as an operator's next change does, not inside the wake-up storm
        // of the last one
        fleet.settled(target, clusters, Duration::from_secs(60)).await?;
        let before = apply_seconds(target).await?;
        let written = SystemTime::now();
        target.put(ASSIGNMENT, FLEET_API, &assignment(branch)).await?;
        let answered = written.elapsed().unwrap_or_default();
        let transaction = Duration::from_secs_f64(apply_seconds(target).await? - before);
        // each agent reports every generation it sees once
        let mut holding = 0;
        let mut last = written;
        while holding < clusters {
            let receipt = tokio::time::timeout(Duration::from_secs(60), fleet.receipts.recv())
                .await
                .with_context(|| format!("{holding} of {clusters} agents hold generation {generation}"))?
                .context("the fleet simulator stopped")?;
            if receipt.name == "baseline" && receipt.generation == generation {
                holding += 1;
                last = last.max(receipt.received);
            }
        }
        let reach = last.duration_since(written).unwrap_or_default();
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
            scenario: format!("assignment {step} held by all {clusters} agents"),
            value: ms(reach),
            unit: "ms",
            target: Some("< 5000 ms".to_owned()),
            met: Some(ms(reach) < 5000.0),
            detail: "the agents run in a process of their own (fluxplane-bench simulate)".to_owned(),
        });
    }
    fleet.stop().await
}
