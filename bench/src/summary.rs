//! The fleet compliance summary over many configuration instances: `clusters` clusters (registered through the API,
//! without agents) and ten policy assignments selecting them all, so that each cluster holds ten configurations;
//! then the subscription's summary is read again and again, one request at a time.

use std::time::{Duration, Instant};

use anyhow::bail;
use serde_json::json;

use crate::{CLUSTER, Figure, Target, ms, percentile};

const FLEET_API: &str = "2026-01-01";
/// Configurations per cluster: one assignment each.
const ASSIGNMENTS: usize = 10;
const WARMUP: usize = 5;
const READS: usize = 200;

pub async fn summary(
    target: &Target,
    clusters: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let seeding = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..8 {
        let (http, base, token) = (target.client.clone(), target.server.base.clone(), target.token.clone());
        workers.push(tokio::spawn(async move {
            for i in (worker..clusters).step_by(8) {
                let path = format!("{CLUSTER}/summary-{i:05}");
                let env = if i % 4 == 0 { "dev" } else { "prod" };
                let body = json!({"location": "westeurope", "tags": {"fleet": "summary", "env": env},
                                  "properties": {"agentPublicKeyCertificate": "a2V5"}});
                let response = http
                    .put(format!("{base}{path}?api-version=2024-01-01"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("registering {path}: {}", response.status());
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    for a in 0..ASSIGNMENTS {
        let body = json!({"properties": {
            "selector": {"matchLabels": {"fleet": "summary"}},
            "configurationName": format!("baseline-{a}"),
            "configurationTemplate": {
                "gitRepository": {"url": "https://github.com/example/fleet", "repositoryRef": {"branch": "main"}},
                "kustomizations": {"apps": {"path": format!("./apps/{a}")}}
            }
        }});
        target
            .put(
                &format!("/subscriptions/bench/providers/Fluxplane.Fleet/policyAssignments/summary-{a}"),
                FLEET_API,
                &body,
            )
            .await?;
    }
    let instances = clusters * ASSIGNMENTS;
    eprintln!(
        "  {clusters} clusters, {instances} configuration instances in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let url = format!(
        "{}/subscriptions/bench/providers/Fluxplane.Fleet/complianceSummary?api-version={FLEET_API}",
        target.server.base
    );
    let mut latencies = Vec::with_capacity(READS);
    for read in 0..WARMUP + READS {
        let started = Instant::now();
        let response = target.client.get(&url).bearer_auth(&target.token).send().await?;
        if !response.status().is_success() {
            bail!("the summary answered {}", response.status());
        }
        let body: serde_json::Value = response.json().await?;
        if body["count"].as_u64() != Some(instances as u64) {
            bail!("the summary counted {} instances, expected {instances}", body["count"]);
        }
        if read >= WARMUP {
            latencies.push(started.elapsed());
        }
    }
    latencies.sort();
    let p99 = percentile(&latencies, 0.99);
    figures.push(Figure {
        backend,
        scenario: format!("compliance summary, {instances} configuration instances"),
        value: ms(p99),
        unit: "ms p99",
        target: Some("p99 < 10 ms".to_owned()),
        met: Some(p99 < Duration::from_millis(10)),
        detail: format!(
            "{READS} reads one at a time; p50 {:.2} ms, p95 {:.2} ms; {clusters} clusters",
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.95)),
        ),
    });
    Ok(())
}
