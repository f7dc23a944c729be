//! A policy assignment reaching a fleet: how long the write that gives every matching cluster its configuration
//! takes, and how long until every simulated agent holds it, for the assignment's creation and for a template
//! change. The template reads the cluster (its name, location and a tag), so the write renders it once per cluster
//! and every configuration differs. The agents run in the fleet simulator's own process (see `fleet`). The HTTP ceiling wakes as many
//! pollers at once with one PUT; the database ceiling writes the configurations in one transaction and has every
//! cluster read its desired state at once.

use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::ceiling::{Ceiling, Db, FixedServer};
use crate::fleet::{Fleet, polls_ended};
use crate::propagation::{Apply, Exchange};
use crate::{Figure, Target, ms};

const ASSIGNMENT: &str = "/subscriptions/bench/providers/Fluxplane.Fleet/policyAssignments/baseline";
pub(crate) const FLEET_API: &str = "2026-01-01";

/// The total time the server has spent applying policy assignments, from its metrics.
pub(crate) async fn apply_seconds(target: &Target) -> anyhow::Result<f64> {
    let metrics = target.metrics().await?;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("fluxplane_policy_assignment_apply_seconds_sum "))
        .and_then(|value| value.trim().parse().ok())
        .context("the server's metrics lack fluxplane_policy_assignment_apply_seconds")
}

/// The requests the server answered with an error since it started, by method, route and status (from its
/// metrics), `none` when there were none.
async fn refusals(target: &Target) -> anyhow::Result<String> {
    let metrics = target.metrics().await?;
    let refused: Vec<String> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("fluxplane_http_requests_total{"))
        .filter_map(|line| {
            let (labels, count) = line.rsplit_once("} ")?;
            let status: u16 = labels.split("status=\"").nth(1)?.split('"').next()?.parse().ok()?;
            (status >= 400).then(|| format!("{labels}: {}", count.trim()))
        })
        .collect();
    Ok(if refused.is_empty() {
        "none".to_owned()
    } else {
        refused.join("; ")
    })
}

/// The assignment: a template with cluster expressions, so that every cluster's configuration is its own (its
/// name in a substitution), rendered per cluster when it is written. The rollout scenario adds its `rollout`.
pub(crate) fn assignment(branch: &str) -> Value {
    json!({"properties": {
        "selector": {"matchLabels": {"fleet": "bench"}},
        "configurationName": "baseline",
        "configurationTemplate": {
            "namespace": "flux-system",
            "gitRepository": {"url": "https://github.com/example/fleet",
                              "repositoryRef": {"branch": "[parameters('branch')]"}},
            "kustomizations": {
                "infra": {"path": "[concat('./infra/', cluster().location)]"},
                "apps": {"path": "./apps", "dependsOn": ["infra"], "postBuild": {"substitute": {
                    "cluster": "[cluster().name]",
                    "region": "[toLower(tag('region', cluster().location))]"
                }}}
            }
        },
        "parameters": {"branch": branch}
    }})
}

/// Waits until `clusters` receipts of `generation` of the configuration `name` have come; answers the last one's
/// time and the sizes of its exchange. A minute without a receipt ends the wait with an error that says, for a
/// fleet of `server`'s, what the server refused meanwhile.
pub(crate) async fn held_by_all(
    fleet: &mut Fleet,
    server: Option<&Target>,
    clusters: usize,
    name: impl Fn(&str) -> bool,
    generation: i64,
    written: SystemTime,
) -> anyhow::Result<(Duration, Exchange)> {
    let (mut holding, mut last, mut exchange) = (0, written, Exchange::default());
    while holding < clusters {
        let Ok(receipt) = tokio::time::timeout(Duration::from_secs(60), fleet.receipts.recv()).await else {
            let refused = match server {
                Some(target) => refusals(target)
                    .await
                    .unwrap_or_else(|err| format!("unknown ({err:#})")),
                None => "-".to_owned(),
            };
            bail!(
                "{holding} of {clusters} agents reported generation {generation}, then none for a minute; the \
                 server's refusals since it started: {refused}"
            );
        };
        let receipt = receipt.context("the fleet simulator stopped")?;
        if name(&receipt.name) && receipt.generation == generation {
            holding += 1;
            last = last.max(receipt.received);
            exchange = receipt.exchange;
        }
    }
    Ok((last.duration_since(written).unwrap_or_default(), exchange))
}

/// `clusters` clusters, each with an agent, and one assignment that matches them all.
pub async fn assignment_reach(
    target: &Target,
    clusters: usize,
    apply: Apply,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut fleet = Fleet::spawn(target, clusters, &[("fleet", "bench")], apply).await?;
    let notifier = &target.server.state.notifier;
    fleet
        .settled(|| notifier.waiting_clusters(), clusters, Duration::from_secs(600))
        .await?;
    eprintln!(
        "  {clusters} clusters, each with an agent polling, after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let steps = [(1, "creation", "main"), (2, "template change", "release")];
    let mut measured = Vec::with_capacity(steps.len());
    let (mut answer, mut exchange) = Default::default();
    for (generation, _, branch) in steps {
        // each step starts from a quiet fleet, as an operator's next change does, not inside the wake-up storm
        // of the last one
        fleet
            .settled(|| notifier.waiting_clusters(), clusters, Duration::from_secs(60))
            .await?;
        let before = apply_seconds(target).await?;
        let written = SystemTime::now();
        answer = target.put(ASSIGNMENT, FLEET_API, &assignment(branch)).await?;
        let answered = written.elapsed().unwrap_or_default();
        let transaction = Duration::from_secs_f64(apply_seconds(target).await? - before);
        // each agent reports every generation it sees once
        let reach;
        (reach, exchange) = held_by_all(
            &mut fleet,
            Some(target),
            clusters,
            |name| name == "baseline",
            generation,
            written,
        )
        .await?;
        measured.push((transaction, answered, reach));
    }
    fleet.stop().await?;

    // the HTTP ceiling: as many pollers, each woken by one PUT
    polls_ended(target).await;
    let fixed = FixedServer::start(Vec::new(), clusters, exchange, answer).await?;
    let mut pollers = Fleet::spawn_ceiling(&fixed, clusters, exchange, apply).await?;
    let mut http = Vec::with_capacity(steps.len());
    for (generation, _, branch) in steps {
        pollers
            .settled(|| fixed.waiting(), clusters, Duration::from_secs(600))
            .await?;
        let written = SystemTime::now();
        target
            .put_url(&fixed.write_range_url(0..clusters), &assignment(branch))
            .await?;
        http.push(
            held_by_all(
                &mut pollers,
                None,
                clusters,
                |name| name.starts_with("poller-"),
                generation,
                written,
            )
            .await?
            .0,
        );
    }
    pollers.stop().await?;
    fixed.stop().await;
    let pool = Db::open(target).await?;
    let db = pool.assignment(clusters).await?;
    // how far below the ceiling the rows alone already are: the bookkeeping's share is the rest (PostgreSQL only)
    let rows = if backend == "postgres" {
        Some(pool.assignment_rows().await?)
    } else {
        None
    };
    pool.close().await;

    for (index, ((((_, step, _), (transaction, answered, reach)), http), db)) in
        steps.into_iter().zip(measured).zip(http).zip(db).enumerate()
    {
        figures.push(Figure {
            backend,
            scenario: format!("assignment {step} writes {clusters} configurations"),
            value: ms(transaction),
            unit: "ms",
            target: Some("< 1000 ms".to_owned()),
            met: Some(ms(transaction) < 1000.0),
            detail: format!(
                "the applying transaction (server metric), the template rendered for each cluster in it; the PUT \
                 answered after {:.0} ms, its status computed while the agents fetched and reported",
                ms(answered)
            ),
            // the transaction runs inside the server: no request to compare it with
            http_ceiling: None,
            db_ceiling: Some(Ceiling::time(
                ms(transaction),
                ms(db.transaction),
                "one configuration per cluster inserted (creation) or all rewritten (change) in one statement \
                 and transaction, scratch table (one document for all, where the server writes each its own)",
            )),
        });
        if let Some(rows) = rows.as_ref().and_then(|rows| rows.get(index)) {
            figures.push(Figure {
                backend,
                scenario: format!("assignment {step}, its rows alone, no triggers or keys (bound)"),
                value: ms(*rows),
                unit: "ms",
                target: None,
                met: None,
                detail: format!(
                    "the {step}'s rows ({}) written into the real tables and indexes in a transaction with every \
                     trigger and foreign key off: what no bookkeeping design goes below",
                    if index == 0 {
                        "each cluster's configuration and Flux extension"
                    } else {
                        "each cluster's configuration rewritten"
                    }
                ),
                http_ceiling: None,
                db_ceiling: Some(Ceiling::time(
                    ms(*rows),
                    ms(db.transaction),
                    "as for the transaction above",
                )),
            });
        }
        figures.push(Figure {
            backend,
            scenario: format!("assignment {step} held by all {clusters} agents"),
            value: ms(reach),
            unit: "ms",
            target: Some("< 5000 ms".to_owned()),
            met: Some(ms(reach) < 5000.0),
            detail: "the agents run in a process of their own (fluxplane-bench simulate)".to_owned(),
            http_ceiling: Some(Ceiling::time(
                ms(reach),
                ms(http),
                "one PUT wakes as many held polls at once, each poller reports; bodies of the same sizes",
            )),
            db_ceiling: Some(Ceiling::time(
                ms(reach),
                ms(db.transaction + db.reach),
                "the transaction, then every cluster at once reads its desired state (the agents' reports left out)",
            )),
        });
    }
    Ok(())
}
