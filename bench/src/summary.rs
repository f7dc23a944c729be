//! The fleet compliance summary over many configuration instances: `clusters` clusters with simulated agents (in
//! the simulator's process) and ten policy assignments selecting them all, so that each cluster holds ten
//! configurations; once every agent has reported on all of them, the subscription's summary is read again and
//! again, one request at a time. The web UI's first view of that fleet is measured last (`ui.rs`). In each phase
//! the HTTP ceiling serves the summary's own answer to the same reads, and the database ceiling runs the summary's
//! SELECTs on the real tables, one snapshot per read.

use std::time::{Duration, Instant};

use anyhow::bail;
use axum::body::Bytes;
use serde_json::json;

use crate::ceiling::{Ceiling, Db, FixedServer};
use crate::fleet::{Fleet, polls_ended};
use crate::propagation::{Apply, Exchange};
use crate::{Figure, Target, ms, percentile};

const FLEET_API: &str = "2026-01-01";
/// Configurations per cluster: one assignment each.
const ASSIGNMENTS: usize = 10;
const WARMUP: usize = 5;
const READS: usize = 200;
/// How long the fleet may take to report on every configuration.
const SETTLE: Duration = Duration::from_secs(300);

/// The reads of one phase: the server's, the HTTP ceiling's and the database ceiling's, each sorted.
struct Phase {
    server: Vec<Duration>,
    http: Vec<Duration>,
    db: Vec<Duration>,
}

/// Reads the summary from the server, then its answer from the HTTP ceiling, then its SELECTs from the database.
async fn phase(target: &Target, db: &Db, url: &str, instances: usize) -> anyhow::Result<Phase> {
    let server = reads(target, url, instances).await?;
    let answer = target.get_bytes(url).await?;
    let fixed = FixedServer::start(vec![answer], 0, Exchange::default(), Bytes::new()).await?;
    let http = reads(target, &fixed.body_url(0), instances).await?;
    fixed.stop().await;
    let db = db.summary(WARMUP, READS).await?;
    Ok(Phase { server, http, db })
}

/// How long after the simulator stops the quiet phase starts in full runs. The abandoned polls end as soon as its
/// process exits, but the recorded results (docs/benchmarks/) were all measured 35 s after, with the burst's
/// folding and vacuum done by then: full runs keep that, so that their figures stay comparable; `--quick` only
/// waits for the polls to end.
pub const QUIET_AFTER: Duration = Duration::from_secs(35);

pub async fn summary(
    target: &Target,
    clusters: usize,
    apply: Apply,
    quiet_after: Duration,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let seeding = Instant::now();
    // a connected fleet, as in production: agents in a process of their own, long-polling and reporting
    let mut fleet = Fleet::spawn(target, clusters, &[("fleet", "summary")], apply).await?;
    let notifier = &target.server.state.notifier;
    fleet.settled(|| notifier.waiting_clusters(), clusters, SETTLE).await?;
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
    let url = format!(
        "{}/subscriptions/bench/providers/Fluxplane.Fleet/complianceSummary?api-version={FLEET_API}",
        target.server.base
    );
    // settled: every instance reported on by a connected agent
    let deadline = Instant::now() + SETTLE;
    loop {
        fleet.check()?;
        let body: serde_json::Value = target
            .client
            .get(&url)
            .bearer_auth(&target.token)
            .send()
            .await?
            .json()
            .await?;
        if body["freshness"]["fresh"].as_u64() == Some(instances as u64) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the fleet did not settle within {SETTLE:?}: {}", body["freshness"]);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    target.maintain(false).await?;
    eprintln!(
        "  {clusters} connected clusters, {instances} configuration instances reported in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let db = Db::open(target).await?;
    let polling = phase(target, &db, &url, instances).await?;
    // the web UI's first view of the same fleet
    crate::ui::first_view(target, clusters, figures, backend).await?;
    // the agents gone, the clusters stay connected until --offline-after (5 minutes): the summary's own cost,
    // without the CPU the simulator and the long-polls take from these two cores
    let stopped = Instant::now();
    fleet.stop().await?;
    polls_ended(target).await;
    tokio::time::sleep(quiet_after.saturating_sub(stopped.elapsed())).await;
    let quiet = phase(target, &db, &url, instances).await?;
    db.close().await;
    for (phase, when, target_ms) in [
        (quiet, "connected fleet, agents quiet".to_owned(), Some(10)),
        (
            polling,
            format!("while {clusters} simulated agents poll on the same cores"),
            None,
        ),
    ] {
        let p99 = percentile(&phase.server, 0.99);
        figures.push(Figure {
            backend,
            scenario: format!("compliance summary, {instances} configuration instances, {when}"),
            value: ms(p99),
            unit: "ms p99",
            target: target_ms.map(|t| format!("p99 < {t} ms")),
            met: target_ms.map(|t| p99 < Duration::from_millis(t)),
            detail: format!(
                "{READS} reads one at a time; p50 {:.2} ms, p95 {:.2} ms; {clusters} clusters",
                ms(percentile(&phase.server, 0.50)),
                ms(percentile(&phase.server, 0.95)),
            ),
            http_ceiling: Some(Ceiling::time(
                ms(p99),
                ms(percentile(&phase.http, 0.99)),
                "GET of the summary's own answer, the same reads one at a time, in the same phase",
            )),
            db_ceiling: Some(Ceiling::time(
                ms(p99),
                ms(percentile(&phase.db, 0.99)),
                "the summary's SELECTs (rollups, pending deltas, clusters not connected) in one snapshot per read, \
                 one at a time, in the same phase",
            )),
        });
    }
    Ok(())
}

/// `READS` reads of the summary one at a time, after `WARMUP`, each answer's count checked; sorted.
pub(crate) async fn reads(target: &Target, url: &str, instances: usize) -> anyhow::Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(READS);
    for read in 0..WARMUP + READS {
        let started = Instant::now();
        let response = target.client.get(url).bearer_auth(&target.token).send().await?;
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
    Ok(latencies)
}
