//! How cost grows with the fleet: the same measurements at each size of `--scale-agents` (1,000, 10,000, 100,000),
//! each on a server and database of its own, one row per size in the scaling table.
//!
//! At each size the simulated agents (in the simulator's process, see `fleet`) register and long-poll; then:
//! - memory: this process's resident set (it runs the server) before the fleet connected and with every poll held,
//!   each read 15 s after what came before (when jemalloc has returned the pages earlier scenarios and the fleet's
//!   arrival freed), per poll held;
//! - polls' CPU: this process's CPU time over a window of `POLL_WINDOW` in which every agent renews its 30 s poll
//!   once and nothing else happens, per 1,000 polls answered (counted by the server's metrics);
//! - propagation: `--scale-writes` configuration writes one at a time, spread over the fleet, each timed to its
//!   agent's receipt and to its first status (instant apply);
//! - a policy assignment selecting every cluster: its applying transaction (the server's metric) and the time until
//!   every agent holds its configuration;
//! - the compliance summary over ten configurations per cluster (a million at 100,000 agents): the fleet stops,
//!   nine more assignments each write a configuration to every cluster (one transaction each, as an operator's
//!   assignment does; their instances stay Pending, since no agent reports them: the seeding bypasses only the
//!   reports), and the summary is read one request at a time, beside its database ceiling. The server counts a
//!   cluster offline only after `SUMMARY_ONLINE`, so the summary reads the fleet connected, as it was.
//!
//! Agents reach the server over HTTP/1.1, a connection each, where the open-file limits of both processes allow
//! it, and over HTTP/2 otherwise (`--scale-transport`), many agents' polls on one connection as behind an HTTP/2
//! ingress; the table says which. The connections are spread over loopback source addresses (`fleet`).

use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::ValueEnum;
use serde::Serialize;
use serde_json::json;

use crate::assignment::{FLEET_API, apply_seconds, assignment, held_by_all};
use crate::ceiling::{Ceiling, Db};
use crate::fleet::{Fleet, SPARE_FILES, TransportArgs, cpu_seconds, fleet_cluster, polls_ended};
use crate::memory::{ALLOCATOR_DECAY, resident_mib};
use crate::propagation::{Apply, timed_writes};
use crate::summary::{QUIET_AFTER, reads};
use crate::{Figure, Target, config_body, ms, percentile};

/// Descriptors the server keeps for itself beyond one per connection (`api/src/connections.rs`).
const SERVER_RESERVED_FILES: u64 = 512;
/// Agents sharing an HTTP/2 connection: below the server's default `--http2-max-streams` (256).
const AGENTS_PER_CONNECTION: usize = 250;
/// Configurations per cluster in the summary: the measured assignment's, and nine more.
const ASSIGNMENTS: usize = 10;
/// Longer than the agents' 30 s wait: every agent renews its poll once within it.
const POLL_WINDOW: Duration = Duration::from_secs(31);
/// The server's `--offline-after` here: longer than the summary's seeding takes at 100,000 agents (nine
/// assignments of up to a minute each, after the fleet stopped), so the summary reads a connected fleet.
pub const SUMMARY_ONLINE: Duration = Duration::from_secs(3600);
/// How long the longest steps may take at 100,000 agents: registering the fleet and bringing it to poll.
const SETTLE: Duration = Duration::from_secs(1800);

/// How the agents reach the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Transport {
    /// HTTP/1.1 where the open-file limits allow a connection per agent, else HTTP/2.
    Auto,
    Http1,
    Http2,
}

/// The options of the scenario.
pub struct Options {
    pub sizes: Vec<usize>,
    pub transport: Transport,
    pub writes: usize,
    /// Whether to wait the full windows (`--quick` does not).
    pub full: bool,
}

/// One row of the scaling table; `None` where the size was not measured.
#[derive(Debug, Serialize)]
pub struct Row {
    pub agents: usize,
    pub transport: String,
    /// Why the size was not measured, if it was not.
    pub skipped: Option<String>,
    /// With every poll held, once the allocator has returned what the fleet's arrival freed.
    pub rss_mib: Option<f64>,
    /// With every poll held, as the memory scenario reads it (half a second after).
    pub rss_settled_mib: Option<f64>,
    pub rss_per_poll_kib: Option<f64>,
    pub propagation_p99_ms: Option<f64>,
    pub first_status_p99_ms: Option<f64>,
    pub assignment_write_ms: Option<f64>,
    pub assignment_delivery_ms: Option<f64>,
    pub summary_instances: Option<usize>,
    pub summary_p99_ms: Option<f64>,
    pub summary_db_ceiling_p99_ms: Option<f64>,
    pub server_cpu_s_per_1000_polls: Option<f64>,
    pub simulator_cpu_s_per_1000_polls: Option<f64>,
    /// The load average when the size's measurements ended (`/proc/loadavg`): the machine is shared.
    pub load: Option<String>,
}

impl Row {
    fn skipped(agents: usize, transport: &str, reason: String) -> Self {
        Self {
            agents,
            transport: transport.to_owned(),
            skipped: Some(reason),
            rss_mib: None,
            rss_settled_mib: None,
            rss_per_poll_kib: None,
            propagation_p99_ms: None,
            first_status_p99_ms: None,
            assignment_write_ms: None,
            assignment_delivery_ms: None,
            summary_instances: None,
            summary_p99_ms: None,
            summary_db_ceiling_p99_ms: None,
            server_cpu_s_per_1000_polls: None,
            simulator_cpu_s_per_1000_polls: None,
            load: load(),
        }
    }
}

fn load() -> Option<String> {
    let line = std::fs::read_to_string("/proc/loadavg").ok()?;
    Some(line.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
}

/// The open-file hard limit of this process (the simulator's inherits it).
fn hard_file_limit() -> u64 {
    rlimit::Resource::NOFILE.get().map_or(0, |(_, hard)| hard)
}

/// The transport `agents` agents use, or why they cannot be measured.
fn transport(agents: usize, wanted: Transport) -> Result<TransportArgs, String> {
    let http2 = TransportArgs {
        http2: true,
        agents_per_connection: AGENTS_PER_CONNECTION,
        source_addresses: None,
    };
    let http1 = TransportArgs {
        http2: false,
        agents_per_connection: 1,
        source_addresses: None,
    };
    let hard = hard_file_limit();
    // the server holds a descriptor per connection, and so does the simulator
    let needed = agents as u64 + SERVER_RESERVED_FILES.max(SPARE_FILES);
    let why = || {
        format!(
            "{agents} HTTP/1.1 connections need {needed} open files in the server's process and in the simulator's; \
             the hard limit is {hard} (`ulimit -Hn`; raising it takes CAP_SYS_RESOURCE)"
        )
    };
    match wanted {
        Transport::Http2 => Ok(http2),
        Transport::Http1 if needed <= hard => Ok(http1),
        Transport::Http1 => Err(why()),
        Transport::Auto if needed <= hard => Ok(http1),
        Transport::Auto => {
            eprintln!("  {}: measured over HTTP/2 instead", why());
            Ok(http2)
        }
    }
}

/// The agents' polls the server has answered so far (`fluxplane_http_requests_total` of the desired-state route).
async fn polls_answered(target: &Target) -> anyhow::Result<f64> {
    let metrics = target.metrics().await?;
    let route = format!("route=\"{}\"", fluxplane_agent_protocol::agent::DESIRED_STATE_PATH);
    Ok(metrics
        .lines()
        .filter(|line| line.starts_with("fluxplane_http_requests_total{") && line.contains(&route))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum())
}

/// The assignments that give every cluster its nine other configurations.
fn other_assignment(a: usize) -> serde_json::Value {
    json!({"properties": {
        "selector": {"matchLabels": {"fleet": "bench"}},
        "configurationName": format!("other-{a}"),
        "configurationTemplate": {
            "gitRepository": {"url": "https://github.com/example/fleet", "repositoryRef": {"branch": "main"}},
            "kustomizations": {"apps": {"path": format!("./apps/{a}")}}
        }
    }})
}

/// Every size of `options`, each on a target of its own started by `start`.
pub async fn scale<S, F>(
    start: S,
    options: &Options,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<Vec<Row>>
where
    S: Fn() -> F,
    F: Future<Output = anyhow::Result<Target>>,
{
    let mut rows = Vec::new();
    for &agents in &options.sizes {
        let transport = match transport(agents, options.transport) {
            Ok(transport) => transport,
            Err(reason) => {
                eprintln!("  {agents} agents over HTTP/1.1 not measured: {reason}");
                rows.push(Row::skipped(agents, "HTTP/1.1", reason));
                continue;
            }
        };
        eprintln!("{backend}: scale, {agents} agents, {}", transport.describe(agents));
        let target = start().await?;
        let row = size(&target, agents, transport, options, figures, backend).await;
        target.server.stop().await;
        rows.push(row?);
    }
    Ok(rows)
}

async fn size(
    target: &Target,
    agents: usize,
    transport: TransportArgs,
    options: &Options,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<Row> {
    let described = transport.describe(agents);
    // what earlier scenarios of this process freed is returned first (jemalloc purges it over 10 s): returned during
    // the fleet's arrival, it was subtracted from the polls' cost (one run measured -3.6 KiB per poll at 1,000)
    if options.full {
        tokio::time::sleep(ALLOCATOR_DECAY).await;
    }
    let before = resident_mib()?;
    let started = Instant::now();
    let mut fleet = Fleet::spawn_over(target, agents, &[("fleet", "bench")], Apply::default(), transport).await?;
    let notifier = &target.server.state.notifier;
    fleet.settled(|| notifier.waiting_clusters(), agents, SETTLE).await?;
    let held = notifier.waiting_clusters();
    // as the memory scenario reads it, and again once jemalloc has returned the pages the fleet's arrival freed
    // (it purges them over 10 s): a loaded machine makes that arrival a storm of requests waiting for the database
    let settled = resident_mib()?;
    if options.full {
        tokio::time::sleep(ALLOCATOR_DECAY).await;
    }
    let rss = resident_mib()?;
    let per_poll = (rss - before) * 1024.0 / held.max(1) as f64;
    eprintln!(
        "  {held} polls held after {:.1} s: {rss:.1} MiB RSS ({settled:.1} as they settled, {before:.1} before), \
         {per_poll:.2} KiB per poll",
        started.elapsed().as_secs_f64()
    );

    // the polls' own cost: every agent renews its poll once in the window, and nothing else happens
    let window = if options.full {
        POLL_WINDOW
    } else {
        Duration::from_secs(3)
    };
    let own = format!("/proc/{}/stat", std::process::id());
    let (polls, cpu, simulator) = (polls_answered(target).await?, cpu_seconds(&own)?, fleet.cpu_seconds()?);
    tokio::time::sleep(window).await;
    let polls = polls_answered(target).await? - polls;
    let (cpu, simulator) = (cpu_seconds(&own)? - cpu, fleet.cpu_seconds()? - simulator);
    let per_thousand = |seconds: f64| (polls > 0.0).then(|| seconds * 1000.0 / polls);
    eprintln!("  {polls} polls answered in {window:?}: {cpu:.2} s CPU in the server's process");

    // propagation, spread over the fleet
    let writes = options.writes;
    let timed = timed_writes(
        &mut fleet,
        writes,
        |i| {
            let path = Target::config_path(&fleet_cluster(i * agents / writes), &format!("scale-{i}"));
            async move { target.put(&path, "2025-04-01", &config_body(i)).await }
        },
        |i| (format!("scale-{i}"), 1),
    )
    .await?;
    let (receipt_p99, status_p99) = (
        ms(percentile(&timed.receipt, 0.99)),
        ms(percentile(&timed.status, 0.99)),
    );

    // a policy assignment reaching every cluster
    fleet
        .settled(|| notifier.waiting_clusters(), agents, Duration::from_secs(600))
        .await?;
    let applied = apply_seconds(target).await?;
    let written = SystemTime::now();
    target
        .put(
            "/subscriptions/bench/providers/Fluxplane.Fleet/policyAssignments/baseline",
            FLEET_API,
            &assignment("main"),
        )
        .await?;
    let transaction = (apply_seconds(target).await? - applied) * 1000.0;
    let (delivery, _) = held_by_all(&mut fleet, Some(target), agents, |name| name == "baseline", 1, written).await?;
    let delivery = ms(delivery);
    eprintln!("  assignment: {transaction:.0} ms transaction, held by all {agents} agents in {delivery:.0} ms");
    fleet.stop().await?;
    polls_ended(target).await;

    // the summary over ten configurations per cluster
    let seeding = Instant::now();
    for a in 1..ASSIGNMENTS {
        target
            .put(
                &format!("/subscriptions/bench/providers/Fluxplane.Fleet/policyAssignments/other-{a}"),
                FLEET_API,
                &other_assignment(a),
            )
            .await
            .with_context(|| format!("seeding the summary's assignment {a}"))?;
    }
    // with the propagation's configurations, one on each of `writes` clusters
    let instances = agents * ASSIGNMENTS + writes;
    eprintln!(
        "  {instances} configuration instances after {:.1} s of assignments",
        seeding.elapsed().as_secs_f64()
    );
    target.maintain(false).await?;
    if options.full {
        // the rollups' deltas folded, as in the summary scenario's quiet phase
        tokio::time::sleep(QUIET_AFTER).await;
    }
    let url = format!(
        "{}/subscriptions/bench/providers/Fluxplane.Fleet/complianceSummary?api-version={FLEET_API}",
        target.server.base
    );
    let summary = reads(target, &url, instances).await?;
    let db = Db::open(target).await?;
    let ceiling = db.summary(5, summary.len()).await?;
    db.close().await;
    let (summary_p99, ceiling_p99) = (ms(percentile(&summary, 0.99)), ms(percentile(&ceiling, 0.99)));

    let row = Row {
        agents,
        transport: described.clone(),
        skipped: None,
        rss_mib: Some(rss),
        rss_settled_mib: Some(settled),
        rss_per_poll_kib: Some(per_poll),
        propagation_p99_ms: Some(receipt_p99),
        first_status_p99_ms: Some(status_p99),
        assignment_write_ms: Some(transaction),
        assignment_delivery_ms: Some(delivery),
        summary_instances: Some(instances),
        summary_p99_ms: Some(summary_p99),
        summary_db_ceiling_p99_ms: Some(ceiling_p99),
        server_cpu_s_per_1000_polls: per_thousand(cpu),
        simulator_cpu_s_per_1000_polls: per_thousand(simulator),
        load: load(),
    };
    let figure =
        |scenario: String, value: f64, unit: &'static str, target: Option<(String, bool)>, detail: String| Figure {
            backend,
            scenario,
            value,
            unit,
            met: target.as_ref().map(|(_, met)| *met),
            target: target.map(|(t, _)| t),
            detail,
            http_ceiling: None,
            db_ceiling: None,
        };
    figures.push(figure(
        format!("scale {agents}: server memory per idle long-poll"),
        per_poll,
        "KiB RSS",
        Some(("< 10 KiB (1 GiB at 100,000)".to_owned(), per_poll < 10.0)),
        format!(
            "{described}; VmRSS of the process running the server {before:.1} MiB before the fleet, {settled:.1} MiB \
             as the polls settled, {rss:.1} MiB {} later; no ceiling",
            if options.full { "15 s" } else { "at once" }
        ),
    ));
    figures.push(figure(
        format!("scale {agents}: write to agent receipt"),
        receipt_p99,
        "ms p99",
        Some(("p99 < 100 ms".to_owned(), receipt_p99 < 100.0)),
        format!(
            "{described}; {writes} writes spread over the fleet; p50 {:.2} ms",
            ms(percentile(&timed.receipt, 0.5))
        ),
    ));
    figures.push(figure(
        format!("scale {agents}: write to first status"),
        status_p99,
        "ms p99",
        Some(("p99 < 250 ms".to_owned(), status_p99 < 250.0)),
        format!(
            "{described}; instant apply; p50 {:.2} ms",
            ms(percentile(&timed.status, 0.5))
        ),
    ));
    figures.push(figure(
        format!("scale {agents}: assignment writes {agents} configurations"),
        transaction,
        "ms",
        None,
        "the applying transaction (server metric)".to_owned(),
    ));
    figures.push(figure(
        format!("scale {agents}: assignment held by all agents"),
        delivery,
        "ms",
        None,
        format!("{described}; from the PUT to the last agent's receipt"),
    ));
    let mut summary_figure = figure(
        format!("scale {agents}: compliance summary, {instances} configuration instances"),
        summary_p99,
        "ms p99",
        Some(("p99 < 10 ms".to_owned(), summary_p99 < 10.0)),
        format!(
            "agents stopped, their clusters connected (offline after {:?}); {} reads one at a time, p50 {:.2} ms; {} instances reported (the propagation's and the \
             measured assignment's), the other {} Pending (written by nine assignments while no agent polled)",
            SUMMARY_ONLINE,
            summary.len(),
            ms(percentile(&summary, 0.5)),
            agents + writes,
            instances - agents - writes
        ),
    );
    summary_figure.db_ceiling = Some(Ceiling::time(
        summary_p99,
        ceiling_p99,
        "the summary's SELECTs in one snapshot per read, one at a time",
    ));
    figures.push(summary_figure);
    if let Some(cpu) = per_thousand(cpu) {
        figures.push(figure(
            format!("scale {agents}: CPU per 1,000 polls"),
            cpu,
            "CPU s",
            None,
            format!(
                "{described}; {polls} polls renewed in {window:?} with nothing else happening, CPU of the server's \
                 process; the simulator's: {:.3} s per 1,000",
                per_thousand(simulator).unwrap_or_default()
            ),
        ));
    }
    Ok(row)
}

/// The scaling table: one row per size.
pub fn table(rows: &[&Row]) {
    if rows.is_empty() {
        return;
    }
    let cell = |value: Option<f64>, decimals: usize| value.map_or("-".to_owned(), |v| format!("{v:.decimals$}"));
    println!();
    println!(
        "{:>8}  {:<38} {:>10} {:>9} {:>10} {:>12} {:>10} {:>12} {:>10} {:>9} {:>10}  load",
        "agents",
        "transport",
        "RSS MiB",
        "KiB/poll",
        "prop. p99",
        "1st status",
        "assign ms",
        "delivery ms",
        "instances",
        "summ. p99",
        "CPU s/1k"
    );
    for row in rows {
        if let Some(reason) = &row.skipped {
            println!("{:>8}  {:<38} not measured: {reason}", row.agents, row.transport);
            continue;
        }
        println!(
            "{:>8}  {:<38} {:>10} {:>9} {:>10} {:>12} {:>10} {:>12} {:>10} {:>9} {:>10}  {}",
            row.agents,
            row.transport,
            cell(row.rss_mib, 1),
            cell(row.rss_per_poll_kib, 2),
            cell(row.propagation_p99_ms, 1),
            cell(row.first_status_p99_ms, 1),
            cell(row.assignment_write_ms, 0),
            cell(row.assignment_delivery_ms, 0),
            row.summary_instances.map_or("-".to_owned(), |n| n.to_string()),
            cell(row.summary_p99_ms, 2),
            cell(row.server_cpu_s_per_1000_polls, 3),
            row.load.as_deref().unwrap_or("-"),
        );
    }
}
