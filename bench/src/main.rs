//! `fluxplane-bench`: measures the control plane over real HTTP against a server it starts itself, on each backend.
//!
//! Scenarios: server memory with idle long-polls, configuration PUT throughput with concurrent clients, listing a
//! cluster's configurations through paging, status ingestion from many agents, a burst of reports from every agent
//! at once, propagation (write to agent
//! receipt, write to first status) with simulated agents long-polling, a policy assignment reaching a fleet, a
//! staged rollout of one across the fleet in ten batches, the fleet compliance summary, what real agents re-checking
//! their clusters cost the control plane, a Git push reaching the agents of the configurations it concerns (to
//! Compliant), and the alert outbox's throughput when one change fails a fleet's configurations. Each figure comes
//! with its ceilings measured in the same run (see `ceiling`).
//! Results print as a table and, with `--json`, as a JSON file.

mod alerts;
mod assignment;
mod burst;
mod ceiling;
mod fleet;
mod ingestion;
mod listing;
mod memory;
mod propagation;
mod push;
mod rechecks;
mod report;
mod rollout;
mod scale;
mod summary;
mod throughput;
mod ui;

/// The server runs in this process: it gets the allocator the `fluxplane` binary uses, so that the memory figure
/// is the server's.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::time::Duration;

use anyhow::{Context, bail};
use axum::body::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use fluxplane_api::testing::{Backend, TestServer};
use serde::Serialize;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(
    name = "fluxplane-bench",
    about = "Benchmarks of the fluxplane control plane",
    args_conflicts_with_subcommands = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Which backends to measure.
    #[arg(long, value_enum, default_value_t = Backends::Both)]
    backend: Backends,
    /// Configuration PUTs in the throughput scenario.
    #[arg(long, default_value_t = 8000)]
    puts: usize,
    /// Concurrent clients in the throughput scenario.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Configurations listed in the paging scenario.
    #[arg(long, default_value_t = 10_000)]
    configurations: usize,
    /// Times each list is repeated; the median is reported.
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Agents sending status reports in the ingestion scenario.
    #[arg(long, default_value_t = 1000)]
    ingestion_agents: usize,
    /// Configurations of each agent's cluster in the ingestion scenario (each report covers them all).
    #[arg(long, default_value_t = 5)]
    ingestion_configurations: usize,
    /// Reports each agent sends in the ingestion scenario.
    #[arg(long, default_value_t = 10)]
    ingestion_reports: usize,
    /// Agents reporting at once in the burst scenario (in a process of their own), one report each.
    #[arg(long, default_value_t = 10_000)]
    burst_agents: usize,
    /// Configurations of each agent's cluster in the burst scenario (each report covers them all).
    #[arg(long, default_value_t = 1)]
    burst_configurations: usize,
    /// Simulated agents long-polling in the memory scenario (in the simulator's process).
    #[arg(long, default_value_t = 10_000)]
    memory_agents: usize,
    /// Simulated agents long-polling in the propagation scenario (in the simulator's process).
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Configuration writes timed in the propagation scenario.
    #[arg(long, default_value_t = 500)]
    writes: usize,
    /// Clusters a policy assignment matches in the assignment and rollout scenarios.
    #[arg(long, default_value_t = 10_000)]
    fleet: usize,
    /// Clusters in the summary scenario, each with ten configurations.
    #[arg(long, default_value_t = 10_000)]
    summary_clusters: usize,
    /// Real agents re-checking their clusters in the re-check scenario, in this process (each holds a connection
    /// at both ends, so the process's open-file limit, 20,000 here, caps them below 10,000).
    #[arg(long, default_value_t = 5000)]
    recheck_agents: usize,
    /// Seconds the re-check scenario counts the control plane's requests.
    #[arg(long, default_value_t = 30)]
    recheck_window: u64,
    /// Simulated agents polling in the push scenario (in the simulator's process), each with one configuration.
    #[arg(long, default_value_t = 10_000)]
    push_agents: usize,
    /// Configurations of the push scenario that read the pushed repository (the others read another).
    #[arg(long, default_value_t = 1000)]
    push_touched: usize,
    /// Pushes timed in the push scenario.
    #[arg(long, default_value_t = 5)]
    pushes: usize,
    /// Configurations (a hundred per cluster) one change fails at once in the alerts scenario: each an event the
    /// outbox delivers (their clusters' Flux extensions add one each).
    #[arg(long, default_value_t = 10_000)]
    alert_events: usize,
    /// Fleet sizes of the scale scenario, one row of its table each (100,000 is the documented option: it takes
    /// about half an hour, see docs/benchmarks/method.md).
    #[arg(long, value_delimiter = ',', default_values_t = [1000, 10_000])]
    scale_agents: Vec<usize>,
    /// How the scale scenario's agents reach the server: `auto` is HTTP/1.1, a connection each, where the
    /// open-file limits allow it, else HTTP/2 with many agents' polls on a connection.
    #[arg(long, value_enum, default_value_t = scale::Transport::Auto)]
    scale_transport: scale::Transport,
    /// Configuration writes timed at each size of the scale scenario.
    #[arg(long, default_value_t = 200)]
    scale_writes: usize,
    /// How the simulated agents of the propagation, assignment, rollout and summary scenarios apply.
    #[command(flatten)]
    apply: fleet::ApplyArgs,
    /// Run only these scenarios (default: all).
    #[arg(long = "scenario", value_enum)]
    scenarios: Vec<Scenario>,
    /// Small sizes that finish in seconds (for CI, so the benchmark never rots).
    #[arg(long)]
    quick: bool,
    /// Also write the results to this JSON file.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run a simulated fleet against a running control plane: register clusters, run an agent on each, print what
    /// they receive as JSON lines, until standard input closes. The scenarios with thousands of agents run their
    /// fleet this way.
    Simulate(fleet::SimulateArgs),
    /// Run the HTTP ceiling's pollers against its server (started by the benchmark itself), printing what they
    /// receive as `simulate` does, until standard input closes.
    CeilingPollers(ceiling::PollersArgs),
    /// Run the burst scenario's agents against a running control plane (or, with `--ceiling`, its HTTP ceiling):
    /// get them ready, say `ready`, send every report at once on the next input line, print the outcome as JSON.
    BurstReporters(burst::BurstArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Memory,
    Throughput,
    Listing,
    Ingestion,
    Burst,
    Propagation,
    Assignment,
    Rollout,
    Summary,
    Rechecks,
    Push,
    Alerts,
    Scale,
}

impl Scenario {
    /// The order scenarios run in: memory first, while the process has allocated the least.
    const IN_ORDER: [Scenario; 13] = [
        Scenario::Memory,
        Scenario::Throughput,
        Scenario::Listing,
        Scenario::Ingestion,
        Scenario::Burst,
        Scenario::Propagation,
        Scenario::Assignment,
        Scenario::Rollout,
        Scenario::Rechecks,
        Scenario::Push,
        Scenario::Summary,
        Scenario::Alerts,
        Scenario::Scale,
    ];
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Backends {
    Sqlite,
    Postgres,
    Both,
}

#[derive(Debug, Serialize)]
pub(crate) struct Figure {
    pub(crate) backend: &'static str,
    pub(crate) scenario: String,
    pub(crate) value: f64,
    pub(crate) unit: &'static str,
    pub(crate) target: Option<String>,
    pub(crate) met: Option<bool>,
    pub(crate) detail: String,
    /// None where no HTTP equivalent exists (a transaction inside the server, memory, a browser).
    pub(crate) http_ceiling: Option<ceiling::Ceiling>,
    /// None where no query shape stands for the figure (memory, a browser).
    pub(crate) db_ceiling: Option<ceiling::Ceiling>,
}

pub(crate) const CLUSTER: &str =
    "/subscriptions/bench/resourceGroups/bench/providers/Microsoft.Kubernetes/connectedClusters";

pub(crate) fn config_body(i: usize) -> Value {
    json!({"properties": {
        "namespace": "flux-system",
        "gitRepository": {"url": "https://github.com/example/fleet", "repositoryRef": {"branch": "main"}},
        "kustomizations": {
            "infra": {"path": format!("./clusters/{i}/infra")},
            "apps": {"path": format!("./clusters/{i}/apps"), "dependsOn": ["infra"], "prune": true}
        }
    }})
}

pub(crate) struct Target {
    pub(crate) server: TestServer,
    pub(crate) client: reqwest::Client,
    pub(crate) token: String,
}

impl Target {
    /// Does to the database what autovacuum does within a minute of a scenario's seeding (see `Db::maintain`).
    /// Where autovacuum is off, as on this project's CI machines (`autovacuum = off`), the figures would otherwise
    /// measure what no deployment runs: plans made on no statistics (the listing's page read sorted all of a
    /// cluster's rows for every page) and rows read past thousands of dead versions (every configuration write
    /// leaves one of its cluster's row, which each listing page's cluster lookup walked). Only once what is read has
    /// been written: statistics taken while the configurations table was still empty (before an assignment
    /// wrote 10,000 rows) had 10,000 woken agents read their desired state by sequential scans until the pool
    /// timed out, where autovacuum would have analyzed again within a minute. `vacuum` only where no fleet is
    /// polling: unthrottled, as autovacuum is not, it stalls agents' requests.
    pub(crate) async fn maintain(&self, vacuum: bool) -> anyhow::Result<()> {
        let db = ceiling::Db::open(self).await?;
        db.maintain(vacuum).await?;
        db.close().await;
        Ok(())
    }

    /// The server's metrics, as Prometheus scrapes them.
    pub(crate) async fn metrics(&self) -> anyhow::Result<String> {
        let url = format!("{}/metrics", self.server.base);
        Ok(self.client.get(url).send().await?.error_for_status()?.text().await?)
    }

    /// The body of a GET as the owner reads it, failing on an error status.
    pub(crate) async fn get_bytes(&self, url: &str) -> anyhow::Result<Bytes> {
        Ok(self
            .client
            .get(url)
            .bearer_auth(&self.token)
            .send()
            .await?
            .error_for_status()?
            .bytes()
            .await?)
    }

    async fn start(backend: Backend) -> anyhow::Result<Self> {
        Self::start_with(backend, |_| {}).await
    }

    /// Like `start`, with the server's configuration adjusted by `adjust` after the benchmark's own settings.
    async fn start_with(
        backend: Backend,
        adjust: impl FnOnce(&mut fluxplane_api::config::ServeConfig),
    ) -> anyhow::Result<Self> {
        // the sweep of `fluxplane serve` by default, not the tests' 200 ms: each sweep reconciles every policy
        // assignment under the fleet lock, which at 10,000 clusters would contend with the writes being measured
        let server = TestServer::start_with(backend, |config| {
            config.sweep_interval = Duration::from_secs(30);
            adjust(config);
        })
        .await
        .context("PostgreSQL is unreachable (set FLUXPLANE_TEST_POSTGRES_URL)")?;
        let token = server.owner_token();
        Ok(Self {
            server,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                // the server closes a connection idle for its header read timeout (30 s): one pooled for as long is
                // reused just as it closes, and the request fails (the rechecks scenario's metrics read after its
                // 30 s window did)
                .pool_idle_timeout(std::time::Duration::from_secs(10))
                .build()?,
            token,
        })
    }

    /// PUTs `body` to the API path `path`; answers the response's body.
    pub(crate) async fn put(&self, path: &str, version: &str, body: &Value) -> anyhow::Result<Bytes> {
        self.put_url(&format!("{}{path}?api-version={version}", self.server.base), body)
            .await
    }

    /// PUTs `body` to `url` as the owner, as every write of the benchmark goes: to the server or its HTTP ceiling.
    pub(crate) async fn put_url(&self, url: &str, body: &Value) -> anyhow::Result<Bytes> {
        let response = self.client.put(url).bearer_auth(&self.token).json(body).send().await?;
        if !response.status().is_success() {
            bail!(
                "PUT {url}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(response.bytes().await?)
    }

    async fn register(&self, cluster: &str) -> anyhow::Result<String> {
        let path = format!("{CLUSTER}/{cluster}");
        let body = json!({"location": "westeurope", "properties": {"agentPublicKeyCertificate": "a2V5"}});
        self.put(&path, "2024-01-01", &body).await?;
        Ok(path)
    }

    pub(crate) fn config_path(cluster: &str, name: &str) -> String {
        format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/{name}")
    }
}

/// Writes a configuration (`config_body` of its index) at each of `paths` through the API, `workers` at a time.
pub(crate) async fn seed(target: &Target, paths: Vec<String>, workers: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::with_capacity(workers);
    for worker in 0..workers {
        let (http, base, token) = (target.client.clone(), target.server.base.clone(), target.token.clone());
        let mine: Vec<(usize, String)> = paths
            .iter()
            .enumerate()
            .skip(worker)
            .step_by(workers)
            .map(|(i, path)| (i, path.clone()))
            .collect();
        tasks.push(tokio::spawn(async move {
            for (i, path) in mine {
                let response = http
                    .put(format!("{base}{path}?api-version=2025-04-01"))
                    .bearer_auth(&token)
                    .json(&config_body(i))
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("seeding {path}: {}", response.status());
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    let result = runtime.block_on(run());
    // the subcommands read their standard input on a blocking thread, which nothing interrupts: dropping the runtime
    // would wait for that read, so that a subcommand that failed would neither exit nor print why until its parent
    // closed the pipe (the parent waited for its pollers for 10 minutes instead)
    runtime.shutdown_background();
    result
}

async fn run() -> anyhow::Result<()> {
    // every reqwest client of the process speaks TLS through rustls with ring (fluxplane_agent::tls)
    fluxplane_agent::tls::install_crypto_provider();
    let mut args = Args::parse();
    match args.command {
        Some(Command::Simulate(simulate)) => return fleet::simulate(simulate).await,
        Some(Command::CeilingPollers(pollers)) => return ceiling::pollers(pollers).await,
        Some(Command::BurstReporters(reporters)) => return burst::reporters(reporters).await,
        None => {}
    }
    // the server's own log (RUST_LOG; its errors explain a failed run)
    fluxplane_api::telemetry::init(fluxplane_api::config::LogFormat::Text);
    // the server started here holds a connection per simulated agent
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    if args.quick {
        args.puts = 400;
        args.configurations = 300;
        args.repeat = 2;
        args.ingestion_agents = 20;
        args.burst_agents = 20;
        args.memory_agents = 50;
        args.agents = 20;
        args.writes = 40;
        args.fleet = 50;
        args.summary_clusters = 30;
        args.recheck_agents = 20;
        args.recheck_window = 3;
        args.push_agents = 20;
        args.push_touched = 5;
        args.pushes = 2;
        args.alert_events = 50;
        args.scale_agents = vec![20, 60];
        args.scale_writes = 10;
    }
    let apply = args.apply.apply();
    let backends: &[(Backend, &'static str)] = match args.backend {
        Backends::Sqlite => &[(Backend::Sqlite, "sqlite")],
        Backends::Postgres => &[(Backend::Postgres, "postgres")],
        Backends::Both => &[(Backend::Sqlite, "sqlite"), (Backend::Postgres, "postgres")],
    };
    let results = match &args.json {
        Some(path) => Some(report::Results::new(path, args.quick, options(&args)).await),
        None => None,
    };
    let mut figures = Vec::new();
    let mut scaling = Vec::new();
    let wanted = |scenario| args.scenarios.is_empty() || args.scenarios.contains(&scenario);
    let mut run = async || -> anyhow::Result<()> {
        for (backend, name) in backends {
            for scenario in Scenario::IN_ORDER.into_iter().filter(|s| wanted(*s)) {
                match scenario {
                    Scenario::Memory => {
                        eprintln!("{name}: server memory with {} idle long-polls", args.memory_agents);
                        let target = Target::start(*backend).await?;
                        let decay = if args.quick {
                            Duration::ZERO
                        } else {
                            memory::ALLOCATOR_DECAY
                        };
                        memory::memory(&target, args.memory_agents, decay, &mut figures, name).await?;
                        target.server.stop().await;
                    }
                    Scenario::Throughput => {
                        eprintln!(
                            "{name}: configuration PUT throughput ({} PUTs, {} clients)",
                            args.puts, args.clients
                        );
                        let target = Target::start(*backend).await?;
                        throughput::throughput(&target, args.puts, args.clients, &mut figures, name).await?;
                        target.server.stop().await;
                    }
                    Scenario::Listing => {
                        eprintln!("{name}: listing {} configurations", args.configurations);
                        let target = Target::start(*backend).await?;
                        listing::listing(&target, args.configurations, args.repeat, &mut figures, name).await?;
                        target.server.stop().await;
                    }
                    Scenario::Ingestion => {
                        eprintln!(
                            "{name}: status ingestion ({} agents, {} configurations each, {} reports each)",
                            args.ingestion_agents, args.ingestion_configurations, args.ingestion_reports
                        );
                        let target = Target::start(*backend).await?;
                        ingestion::ingestion(
                            &target,
                            args.ingestion_agents,
                            args.ingestion_configurations,
                            args.ingestion_reports,
                            &mut figures,
                            name,
                        )
                        .await?;
                        target.server.stop().await;
                    }
                    Scenario::Burst => {
                        eprintln!(
                            "{name}: {} agents reporting at once ({} configurations each)",
                            args.burst_agents, args.burst_configurations
                        );
                        let target = Target::start(*backend).await?;
                        burst::burst(
                            &target,
                            args.burst_agents,
                            args.burst_configurations,
                            &mut figures,
                            name,
                        )
                        .await?;
                        target.server.stop().await;
                    }
                    Scenario::Propagation => {
                        eprintln!(
                            "{name}: propagation ({} agents, {} writes, {})",
                            args.agents,
                            args.writes,
                            apply.describe()
                        );
                        let target = Target::start(*backend).await?;
                        propagation::propagation(&target, args.agents, args.writes, apply, &mut figures, name).await?;
                        target.server.stop().await;
                    }
                    Scenario::Assignment => {
                        eprintln!("{name}: a policy assignment reaching {} clusters", args.fleet);
                        let target = Target::start(*backend).await?;
                        assignment::assignment_reach(&target, args.fleet, apply, &mut figures, name).await?;
                        target.server.stop().await;
                    }
                    Scenario::Rollout => {
                        eprintln!(
                            "{name}: a policy assignment rolled out to {} clusters in ten batches ({})",
                            args.fleet,
                            apply.describe()
                        );
                        let target = Target::start(*backend).await?;
                        rollout::rollout(&target, args.fleet, apply, &mut figures, name).await?;
                        target.server.stop().await;
                    }
                    Scenario::Rechecks => {
                        eprintln!(
                            "{name}: {} real agents re-checking their clusters every second, for {} s",
                            args.recheck_agents, args.recheck_window
                        );
                        let target = Target::start(*backend).await?;
                        rechecks::rechecks(
                            &target,
                            args.recheck_agents,
                            Duration::from_secs(args.recheck_window),
                            &mut figures,
                            name,
                        )
                        .await?;
                        target.server.stop().await;
                    }
                    Scenario::Push => {
                        eprintln!(
                            "{name}: {} pushes to {} of {} agents' configurations",
                            args.pushes, args.push_touched, args.push_agents
                        );
                        let target = Target::start(*backend).await?;
                        push::push(
                            &target,
                            args.push_agents,
                            args.push_touched,
                            args.pushes,
                            &mut figures,
                            name,
                        )
                        .await?;
                        target.server.stop().await;
                    }
                    Scenario::Summary => {
                        eprintln!(
                            "{name}: the compliance summary of {} clusters with ten configurations each",
                            args.summary_clusters
                        );
                        let target = Target::start(*backend).await?;
                        let quiet_after = if args.quick {
                            Duration::ZERO
                        } else {
                            summary::QUIET_AFTER
                        };
                        summary::summary(&target, args.summary_clusters, apply, quiet_after, &mut figures, name)
                            .await?;
                        target.server.stop().await;
                    }
                    Scenario::Alerts => {
                        eprintln!(
                            "{name}: the alert outbox delivering {} events from one change",
                            args.alert_events
                        );
                        // the change raises an event per configuration and per cluster's Flux extension, all for
                        // one receiver: the default backlog (10,000) held them only while its sender kept up with
                        // the dispatcher, and on a slower host the last ones were dropped and never came
                        let backlog = u32::try_from(args.alert_events.saturating_mul(2)).unwrap_or(u32::MAX);
                        let target = Target::start_with(*backend, |config| {
                            config.alert_backlog = config.alert_backlog.max(backlog);
                        })
                        .await?;
                        alerts::outbox(&target, args.alert_events, &mut figures, name).await?;
                        target.server.stop().await;
                    }
                    Scenario::Scale => {
                        eprintln!(
                            "{name}: scale, {} agents",
                            args.scale_agents
                                .iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                        let options = scale::Options {
                            sizes: args.scale_agents.clone(),
                            transport: args.scale_transport,
                            writes: args.scale_writes,
                            full: !args.quick,
                        };
                        // an assignment over 100,000 clusters answers after its transaction, which takes longer than the
                        // default request timeout of 60 s on this kind of machine; and the summary is read once nine such
                        // assignments are written after the fleet stopped (minutes at that size): its clusters are to count as
                        // connected then, as they would with their agents polling (heartbeats stay every 75 s)
                        let start = || {
                            Target::start_with(*backend, |config| {
                                config.request_timeout = Duration::from_secs(900);
                                config.offline_after = scale::SUMMARY_ONLINE;
                            })
                        };
                        for row in scale::scale(start, &options, &mut figures, name).await? {
                            scaling.push((*name, row));
                        }
                    }
                }
                if let Some(results) = &results {
                    results.write(&figures, &json_rows(&scaling), false)?;
                }
            }
        }
        Ok(())
    };
    let outcome = run().await;
    report::table(&figures);
    for backend in ["sqlite", "postgres"] {
        let rows: Vec<&scale::Row> = scaling
            .iter()
            .filter(|(b, _)| *b == backend)
            .map(|(_, row)| row)
            .collect();
        if !rows.is_empty() {
            println!("\nscaling, {backend}:");
            scale::table(&rows);
        }
    }
    if let Some(results) = &results {
        results.write(&figures, &json_rows(&scaling), outcome.is_ok())?;
    }
    outcome
}

/// The scale scenario's rows as the results file holds them.
fn json_rows(scaling: &[(&'static str, scale::Row)]) -> Vec<Value> {
    scaling
        .iter()
        .map(|(backend, row)| json!({"backend": backend, "row": row}))
        .collect()
}

/// The options of a run, as the results file records them.
fn options(args: &Args) -> Value {
    json!({
        "backend": format!("{:?}", args.backend).to_lowercase(),
        "scenarios": args.scenarios.iter().map(|s| format!("{s:?}").to_lowercase()).collect::<Vec<_>>(),
        "puts": args.puts,
        "clients": args.clients,
        "configurations": args.configurations,
        "repeat": args.repeat,
        "ingestion_agents": args.ingestion_agents,
        "ingestion_configurations": args.ingestion_configurations,
        "ingestion_reports": args.ingestion_reports,
        "burst_agents": args.burst_agents,
        "burst_configurations": args.burst_configurations,
        "memory_agents": args.memory_agents,
        "agents": args.agents,
        "writes": args.writes,
        "fleet": args.fleet,
        "summary_clusters": args.summary_clusters,
        "push_agents": args.push_agents,
        "push_touched": args.push_touched,
        "pushes": args.pushes,
        "alert_events": args.alert_events,
        "scale_agents": args.scale_agents,
        "scale_transport": format!("{:?}", args.scale_transport).to_lowercase(),
        "scale_writes": args.scale_writes,
        "apply_delay_ms": args.apply.apply_delay,
        "failure_rate": args.apply.failure_rate,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_its_place_in_the_order_they_run_in() {
        let listed: Vec<Scenario> = Scenario::value_variants().to_vec();
        assert_eq!(
            Scenario::IN_ORDER.len(),
            listed.len(),
            "a scenario missing from IN_ORDER never runs"
        );
        for scenario in listed {
            assert!(Scenario::IN_ORDER.contains(&scenario), "{scenario:?} never runs");
        }
    }
}
