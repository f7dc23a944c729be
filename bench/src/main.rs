//! `fluxplane-bench`: measures the control plane over real HTTP against a server it starts itself, on each backend.
//!
//! Scenarios: configuration PUT throughput with concurrent clients, listing a cluster's configurations through
//! paging, propagation (write to agent receipt, write to first status) with simulated agents long-polling, a
//! policy assignment reaching a fleet, and the fleet compliance summary.
//! Results print as a table and, with `--json`, as a JSON file.

mod assignment;
mod fleet;
mod propagation;
mod summary;
mod ui;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use fluxplane_api::testing::{Backend, TestServer};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
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
    /// Simulated agents long-polling in the propagation scenario.
    #[arg(long, default_value_t = 1000)]
    agents: usize,
    /// Configuration writes timed in the propagation scenario.
    #[arg(long, default_value_t = 500)]
    writes: usize,
    /// Clusters a policy assignment matches in the assignment scenario.
    #[arg(long, default_value_t = 10_000)]
    fleet: usize,
    /// Clusters in the summary scenario, each with ten configurations.
    #[arg(long, default_value_t = 10_000)]
    summary_clusters: usize,
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
    /// they receive as JSON lines, until standard input closes. The assignment scenario runs its fleet this way.
    Simulate(fleet::SimulateArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Throughput,
    Listing,
    Propagation,
    Assignment,
    Summary,
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
}

/// A list page as the benchmark reads it: items are counted, not built, so that the load generator, which shares
/// the machine with the server, spends as little as it can.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    value: Vec<IgnoredAny>,
    next_link: Option<String>,
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
    async fn start(backend: Backend) -> anyhow::Result<Self> {
        // the sweep of `fluxplane serve` by default, not the tests' 200 ms: each sweep reconciles every policy
        // assignment under the fleet lock, which at 10,000 clusters would contend with the writes being measured
        let server = TestServer::start_with(backend, |config| config.sweep_interval = Duration::from_secs(30))
            .await
            .context("PostgreSQL is unreachable (set FLUXPLANE_TEST_POSTGRES_URL)")?;
        let token = server.owner_token();
        Ok(Self {
            server,
            client: reqwest::Client::builder().pool_max_idle_per_host(64).build()?,
            token,
        })
    }

    pub(crate) async fn put(&self, path: &str, version: &str, body: &Value) -> anyhow::Result<()> {
        let response = self
            .client
            .put(format!("{}{path}?api-version={version}", self.server.base))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await?;
        if !response.status().is_success() {
            bail!(
                "PUT {path}: {} {}",
                response.status(),
                response.text().await.unwrap_or_default()
            );
        }
        Ok(())
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

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `puts` PUTs spread over `clients` concurrent clients, each creating then updating its own configurations.
async fn put_throughput(
    target: &Target,
    puts: usize,
    clients: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    // each client writes to clusters of its own, as operators of different clusters do
    let mut clusters = Vec::with_capacity(clients);
    for client in 0..clients {
        clusters.push(target.register(&format!("throughput-{client}")).await?);
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (client, cluster) in clusters.into_iter().enumerate() {
        let share = puts / clients + usize::from(client < puts % clients);
        let http = target.client.clone();
        let base = target.server.base.clone();
        let token = target.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(share);
            let body = serde_json::to_vec(&config_body(client))?;
            for i in 0..share {
                // half creates, half updates of what this client created
                let name = format!("c{client}-{}", i % share.div_ceil(2).max(1));
                let path = Target::config_path(&cluster, &name);
                let sent = Instant::now();
                let response = http
                    .put(format!("{base}{path}?api-version=2025-04-01"))
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("PUT {path}: {}", response.status());
                }
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(puts);
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let rate = puts as f64 / elapsed.as_secs_f64();
    let target_met = (backend == "postgres").then_some(rate > 2000.0);
    figures.push(Figure {
        backend,
        scenario: format!("configuration PUTs, {clients} clients"),
        value: rate,
        unit: "PUT/s",
        target: (backend == "postgres").then(|| "> 2000 PUT/s".to_owned()),
        met: target_met,
        detail: format!(
            "{puts} PUTs in {:.2} s; latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            elapsed.as_secs_f64(),
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.95)),
            ms(percentile(&latencies, 0.99)),
        ),
    });
    Ok(())
}

/// Seeds `count` configurations on one cluster, then times reading them all through `nextLink`.
async fn list_paging(
    target: &Target,
    count: usize,
    repeat: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let cluster = target.register("listing").await?;
    let seeding = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let http = target.client.clone();
        let base = target.server.base.clone();
        let token = target.token.clone();
        let cluster = cluster.clone();
        tasks.push(tokio::spawn(async move {
            for i in (worker..count).step_by(8) {
                let path = Target::config_path(&cluster, &format!("cfg-{i:05}"));
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
    eprintln!(
        "  seeded {count} configurations in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    for top in [1000, 100] {
        let mut runs = Vec::with_capacity(repeat);
        let mut pages = 0;
        for _ in 0..repeat {
            let started = Instant::now();
            let mut next = Some(format!(
                "{}{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations?api-version=2025-04-01&$top={top}",
                target.server.base
            ));
            let (mut items, mut page_count) = (0, 0);
            while let Some(link) = next {
                let page: ListPage = target
                    .client
                    .get(&link)
                    .bearer_auth(&target.token)
                    .send()
                    .await?
                    .json()
                    .await?;
                items += page.value.len();
                page_count += 1;
                next = page.next_link;
            }
            if items != count {
                bail!("listed {items} configurations, expected {count}");
            }
            runs.push(started.elapsed());
            pages = page_count;
        }
        runs.sort();
        let median = runs[runs.len() / 2];
        let is_target = top == 1000 && backend == "postgres";
        figures.push(Figure {
            backend,
            scenario: format!("list {count} configurations, $top={top}"),
            value: ms(median),
            unit: "ms",
            target: is_target.then(|| "< 200 ms".to_owned()),
            met: is_target.then_some(ms(median) < 200.0),
            detail: format!("{pages} pages; median of {repeat}, fastest {:.1} ms", ms(runs[0])),
        });
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(Command::Simulate(simulate)) = args.command {
        return fleet::simulate(simulate).await;
    }
    // the server's own log (RUST_LOG; its errors explain a failed run)
    fluxplane_api::telemetry::init(fluxplane_api::config::LogFormat::Text);
    // the server started here holds a connection per simulated agent
    rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    if args.quick {
        args.puts = 400;
        args.configurations = 300;
        args.repeat = 2;
        args.agents = 20;
        args.writes = 40;
        args.fleet = 50;
        args.summary_clusters = 30;
    }
    let backends: &[(Backend, &'static str)] = match args.backend {
        Backends::Sqlite => &[(Backend::Sqlite, "sqlite")],
        Backends::Postgres => &[(Backend::Postgres, "postgres")],
        Backends::Both => &[(Backend::Sqlite, "sqlite"), (Backend::Postgres, "postgres")],
    };
    let mut figures = Vec::new();
    let wanted = |scenario| args.scenarios.is_empty() || args.scenarios.contains(&scenario);
    for (backend, name) in backends {
        if wanted(Scenario::Throughput) {
            eprintln!(
                "{name}: configuration PUT throughput ({} PUTs, {} clients)",
                args.puts, args.clients
            );
            let target = Target::start(*backend).await?;
            put_throughput(&target, args.puts, args.clients, &mut figures, name).await?;
            target.server.stop().await;
        }
        if wanted(Scenario::Listing) {
            eprintln!("{name}: listing {} configurations", args.configurations);
            let target = Target::start(*backend).await?;
            list_paging(&target, args.configurations, args.repeat, &mut figures, name).await?;
            target.server.stop().await;
        }
        if wanted(Scenario::Propagation) {
            eprintln!("{name}: propagation ({} agents, {} writes)", args.agents, args.writes);
            let target = Target::start(*backend).await?;
            propagation::propagation(&target, args.agents, args.writes, &mut figures, name).await?;
            target.server.stop().await;
        }
        if wanted(Scenario::Assignment) {
            eprintln!("{name}: a policy assignment reaching {} clusters", args.fleet);
            let target = Target::start(*backend).await?;
            assignment::assignment_reach(&target, args.fleet, &mut figures, name).await?;
            target.server.stop().await;
        }
        if wanted(Scenario::Summary) {
            eprintln!(
                "{name}: the compliance summary of {} clusters with ten configurations each",
                args.summary_clusters
            );
            let target = Target::start(*backend).await?;
            summary::summary(&target, args.summary_clusters, &mut figures, name).await?;
            target.server.stop().await;
        }
    }

    println!(
        "{:<9} {:<54} {:>10} {:<7} {:<30} detail",
        "backend", "scenario", "value", "unit", "target"
    );
    for f in &figures {
        let target = match (&f.target, f.met) {
            (Some(t), Some(true)) => format!("{t} met"),
            (Some(t), Some(false)) => format!("{t} MISSED"),
            _ => "-".to_owned(),
        };
        println!(
            "{:<9} {:<54} {:>10.1} {:<7} {:<30} {}",
            f.backend, f.scenario, f.value, f.unit, target, f.detail
        );
    }
    if let Some(path) = &args.json {
        let machine = json!({
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "os": std::env::consts::OS,
            "arch": std::env::consts::ARCH,
            "quick": args.quick,
        });
        std::fs::write(
            path,
            serde_json::to_string_pretty(&json!({"machine": machine, "figures": figures}))?,
        )?;
    }
    Ok(())
}
