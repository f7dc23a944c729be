//! A simulated fleet in a process of its own. `fluxplane-bench simulate` registers clusters through the API, runs a
//! simulated agent on each (the propagation scenario's: own identity, long-poll, instant or delayed apply, a share
//! of failures) and prints what each agent receives as JSON lines. The scenarios that need thousands of agents
//! spawn it, so that agents and server each have a whole open-file limit (an agent's connection costs a descriptor
//! on each side) and the simulator's CPU shows as a process of its own. The HTTP ceiling's pollers run the same
//! way (`fluxplane-bench ceiling-pollers`, see `ceiling`) and print the same lines.

use std::net::{IpAddr, Ipv4Addr};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::identity::Identity;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};

use crate::ceiling::FixedServer;
use crate::propagation::{Apply, Exchange, Receipt, Setbacks, simulated_agent};
use crate::{CLUSTER, Target};

/// Descriptors the simulator keeps for itself beyond one per connection.
pub(crate) const SPARE_FILES: u64 = 256;
/// Connections from one source address: well below the 28,000 or so ephemeral ports one address has towards one
/// server (Linux's `ip_local_port_range`, 32768-60999 by default), leaving room for connections in TIME_WAIT.
const CONNECTIONS_PER_ADDRESS: usize = 20_000;
/// Clusters registered at once.
const REGISTRATION_WORKERS: usize = 16;
/// How often the simulator prints the requests its agents had to retry (see `Setbacks`).
const SETBACKS_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// Base URL of the control plane, e.g. `http://127.0.0.1:8080`.
    #[arg(long)]
    base: String,
    /// Clusters to register, each with an agent of its own (named `fleet-00000` and up).
    #[arg(long)]
    clusters: usize,
    /// Tag every cluster with `key=value` (repeatable).
    #[arg(long = "tag", value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// Token of a user allowed to register clusters (Contributor or Owner).
    #[arg(long, env = "FLUXPLANE_BENCH_TOKEN", hide_env_values = true)]
    token: String,
    #[command(flatten)]
    apply: ApplyArgs,
    #[command(flatten)]
    transport: TransportArgs,
}

/// How the simulated agents reach the control plane: each on a connection of its own (HTTP/1.1, as real agents),
/// or many on one HTTP/2 connection (as behind an HTTP/2 ingress or load balancer), each with its own identity.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct TransportArgs {
    /// Carry the agents' requests over HTTP/2 with prior knowledge (h2c), `--agents-per-connection` on each.
    #[arg(long)]
    pub http2: bool,
    /// Agents sharing one HTTP/2 connection (at most the server's `--http2-max-streams`, 256 by default).
    #[arg(long, default_value_t = 250)]
    pub agents_per_connection: usize,
    /// Loopback source addresses the connections are spread over, 127.0.0.2 and up (one address runs out of
    /// ephemeral ports near 28,000 connections to one server); by default one per 20,000 connections. Only when the
    /// control plane is on a loopback address.
    #[arg(long)]
    pub source_addresses: Option<usize>,
}

impl TransportArgs {
    /// The connections `agents` agents open.
    pub(crate) fn connections(&self, agents: usize) -> usize {
        if self.http2 {
            agents.div_ceil(self.agents_per_connection.max(1))
        } else {
            agents
        }
    }

    /// The source addresses the connections are spread over.
    fn addresses(&self, connections: usize) -> usize {
        self.source_addresses
            .unwrap_or_else(|| connections.div_ceil(CONNECTIONS_PER_ADDRESS))
            .max(1)
    }

    fn args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.http2 {
            args.extend([
                "--http2".to_owned(),
                "--agents-per-connection".to_owned(),
                self.agents_per_connection.to_string(),
            ]);
        }
        if let Some(addresses) = self.source_addresses {
            args.extend(["--source-addresses".to_owned(), addresses.to_string()]);
        }
        args
    }

    /// The transport as the tables name it.
    pub(crate) fn describe(&self, agents: usize) -> String {
        if self.http2 {
            format!(
                "HTTP/2, {} connections of {} agents",
                self.connections(agents),
                self.agents_per_connection.min(agents)
            )
        } else {
            format!("HTTP/1.1, {agents} connections")
        }
    }
}

/// How the simulated agents apply: shared by `simulate`, `ceiling-pollers` and the benchmark itself.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct ApplyArgs {
    /// Milliseconds from receiving a configuration to reporting it (0: instant apply).
    #[arg(long, default_value_t = 0)]
    pub apply_delay: u64,
    /// The fraction of applies reported as failed (`Failed`, `Non-Compliant`, with a message), from 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = parse_rate)]
    pub failure_rate: f64,
}

impl ApplyArgs {
    pub(crate) fn apply(&self) -> Apply {
        Apply {
            delay: Duration::from_millis(self.apply_delay),
            failure_rate: self.failure_rate,
        }
    }

    fn args(apply: Apply) -> [String; 4] {
        [
            "--apply-delay".to_owned(),
            apply.delay.as_millis().to_string(),
            "--failure-rate".to_owned(),
            apply.failure_rate.to_string(),
        ]
    }
}

fn parse_tag(tag: &str) -> Result<(String, String), String> {
    tag.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{tag}' is not key=value"))
}

fn parse_rate(rate: &str) -> Result<f64, String> {
    match rate.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        _ => Err(format!("'{rate}' is not a fraction from 0 to 1")),
    }
}

/// The path of the `i`th cluster of a simulated fleet.
pub(crate) fn fleet_cluster(i: usize) -> String {
    format!("{CLUSTER}/fleet-{i:05}")
}

/// One line of the simulator's output: an agent received this generation of this configuration.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiptLine {
    name: String,
    generation: i64,
    /// Wall-clock times, microseconds since the Unix epoch: the one clock both processes read.
    received_micros: u64,
    /// When the answer to the agent's report of this generation arrived.
    reported_micros: u64,
    failed: bool,
    exchange: Exchange,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reconcile_requested_at: Option<String>,
}

/// What an agent of the fleet received, and when.
pub struct FleetReceipt {
    pub name: String,
    pub generation: i64,
    pub received: SystemTime,
    pub reported: SystemTime,
    pub failed: bool,
    pub exchange: Exchange,
    /// The request to re-check at once the agent answered, if that is what it received.
    pub reconcile_requested_at: Option<String>,
}

/// Registers `clusters` clusters (`fleet-00000` and up) through the API, each with an identity of its own.
pub(crate) async fn register(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    clusters: usize,
    tags: &[(String, String)],
) -> anyhow::Result<Vec<Identity>> {
    let tags: serde_json::Map<String, serde_json::Value> = tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let mut registrations = Vec::new();
    for worker in 0..REGISTRATION_WORKERS {
        let (http, base, token, tags) = (http.clone(), base.to_owned(), token.to_owned(), tags.clone());
        registrations.push(tokio::spawn(async move {
            let mut identities = Vec::new();
            for i in (worker..clusters).step_by(REGISTRATION_WORKERS) {
                let cluster = fleet_cluster(i);
                let new = Identity::generate(&base, &cluster)?;
                let body = json!({"location": "westeurope", "tags": tags,
                                  "properties": {"agentPublicKeyCertificate": new.public_key}});
                let response = http
                    .put(format!("{base}{cluster}?api-version=2024-01-01"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("registering {cluster}: {}", response.status());
                }
                identities.push((i, new.identity));
            }
            Ok::<_, anyhow::Error>(identities)
        }));
    }
    let mut identities = Vec::with_capacity(clusters);
    for registration in registrations {
        identities.extend(registration.await??);
    }
    identities.sort_by_key(|(i, _)| *i);
    Ok(identities.into_iter().map(|(_, identity)| identity).collect())
}

/// The open-file limit raised as far as it goes, checked against `connections` connections.
pub(crate) fn raise_file_limit(connections: usize) -> anyhow::Result<()> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    if limit < connections as u64 + SPARE_FILES {
        bail!(
            "the open-file limit is {limit}: too low for {connections} connections and {SPARE_FILES} spare \
             (raise the hard limit, `ulimit -Hn`, or carry the agents over HTTP/2 with --http2)"
        );
    }
    Ok(())
}

/// The source address of the `connection`th of `connections` connections to `base`: 127.0.0.2 and up, each
/// address taking its share in turn; none (the system's choice) when `base` is not on a loopback address.
fn source_address(base: &str, transport: &TransportArgs, connection: usize, connections: usize) -> Option<IpAddr> {
    loopback_source(base, 0, connection, transport.addresses(connections))
}

/// The `i`th connection's source address among `addresses` (at most 250) of the loopback block `block`:
/// 127.0.`block`.2 and up, in turn; none (the system's choice) when `base` is not on a loopback address.
pub(crate) fn loopback_source(base: &str, block: u8, i: usize, addresses: usize) -> Option<IpAddr> {
    let host = reqwest::Url::parse(base).ok()?.host_str()?.to_owned();
    let loopback = host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()) || host == "localhost";
    if !loopback {
        return None;
    }
    let last = u8::try_from(2 + i % addresses.clamp(1, 250)).expect("at most 250 addresses");
    Some(IpAddr::V4(Ipv4Addr::new(127, 0, block, last)))
}

/// The HTTP clients of `agents` agents: one each over HTTP/1.1 (a connection each), or one per
/// `agents_per_connection` over HTTP/2 (one connection each: a client multiplexes its requests on one connection
/// per host); each connection from its source address.
fn agent_clients(base: &str, transport: &TransportArgs, agents: usize) -> anyhow::Result<Vec<reqwest::Client>> {
    let connections = transport.connections(agents);
    let clients = (0..connections)
        .map(|connection| {
            // the benchmark's server speaks plain HTTP: no TLS roots loaded. Loading the platform's took about 2 ms a
            // client, 20 s of CPU before 10,000 agents polled; an agent loads them once.
            let builder = reqwest::Client::builder()
                .tls_certs_only([])
                .connect_timeout(Duration::from_secs(10))
                .local_address(source_address(base, transport, connection, connections));
            let builder = if transport.http2 {
                builder.http2_prior_knowledge()
            } else {
                builder.http1_only()
            };
            builder.build().context("building an agent's HTTP client")
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((0..agents)
        .map(|agent| {
            let connection = if transport.http2 {
                agent / transport.agents_per_connection.max(1)
            } else {
                agent
            };
            clients[connection].clone()
        })
        .collect())
}

/// `fluxplane-bench simulate`: registers the clusters, runs their agents until standard input closes.
pub async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let connections = args.transport.connections(args.clusters);
    raise_file_limit(connections)?;
    eprintln!(
        "  simulator: {} agents, {}, from {} source address(es)",
        args.clusters,
        args.transport.describe(args.clusters),
        source_address(&args.base, &args.transport, 0, connections)
            .map_or(0, |_| args.transport.addresses(connections).min(250))
    );
    let http = reqwest::Client::new();
    let started = Instant::now();
    let identities = register(&http, &args.base, &args.token, args.clusters, &args.tags).await?;
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "  simulator: {} clusters registered in {took:.1} s ({:.0}/s, {REGISTRATION_WORKERS} at a time)",
        args.clusters,
        args.clusters as f64 / took
    );
    let clients = agent_clients(&args.base, &args.transport, args.clusters)?;
    let (sender, receipts) = mpsc::unbounded_channel::<Receipt>();
    let setbacks = Arc::new(Setbacks::default());
    let mut agents = JoinSet::new();
    for (identity, client) in identities.into_iter().zip(clients) {
        agents.spawn(simulated_agent(
            ControlPlane::with_client(identity, client)?,
            args.apply.apply(),
            sender.clone(),
            setbacks.clone(),
        ));
    }
    drop(sender);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SETBACKS_EVERY);
        every.tick().await;
        loop {
            every.tick().await;
            if let Some(setbacks) = setbacks.take() {
                eprintln!("  simulator, last {} s: {setbacks}", SETBACKS_EVERY.as_secs());
            }
        }
    });
    run_until_stdin_closes(agents, print_receipts(receipts)).await
}

/// Prints receipts as JSON lines on standard output, in batches.
pub(crate) fn print_receipts(mut receipts: mpsc::UnboundedReceiver<Receipt>) -> JoinHandle<anyhow::Result<()>> {
    // Instants cannot cross processes: receipts leave as wall-clock times, taken against one pair of readings
    let (anchor, anchor_wall) = (Instant::now(), SystemTime::now());
    let wall = move |at: Instant| -> anyhow::Result<u64> {
        let wall = match at.checked_duration_since(anchor) {
            Some(after) => anchor_wall + after,
            None => anchor_wall - anchor.duration_since(at),
        };
        Ok(wall.duration_since(UNIX_EPOCH)?.as_micros() as u64)
    };
    tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut batch = Vec::new();
        while receipts.recv_many(&mut batch, 1024).await > 0 {
            let mut out = Vec::new();
            for receipt in batch.drain(..) {
                let line = ReceiptLine {
                    name: receipt.name,
                    generation: receipt.generation,
                    received_micros: wall(receipt.received)?,
                    reported_micros: wall(receipt.reported)?,
                    failed: receipt.failed,
                    exchange: receipt.exchange,
                    reconcile_requested_at: receipt.reconcile_requested_at,
                };
                serde_json::to_writer(&mut out, &line)?;
                out.push(b'\n');
            }
            stdout.write_all(&out).await?;
            stdout.flush().await?;
        }
        Ok(())
    })
}

/// Runs `agents` until standard input closes: the parent closes it when it is done, or by dying. The first agent
/// to fail ends the process with its error, so that the parent sees the simulator stop rather than waiting for
/// an agent that is gone.
pub(crate) async fn run_until_stdin_closes(
    mut agents: JoinSet<anyhow::Result<()>>,
    printer: JoinHandle<anyhow::Result<()>>,
) -> anyhow::Result<()> {
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    loop {
        tokio::select! {
            read = stdin.read(&mut buffer) => if read? == 0 {
                break;
            },
            Some(ended) = agents.join_next() => ended??,
        }
    }
    agents.abort_all();
    printer.abort();
    Ok(())
}

/// Waits until the target holds no poll (at most 35 s: a poll whose agent is gone ends at the latest when its
/// 30 s wait does), so that the next phase neither shares the CPU with them nor runs out of descriptors.
pub(crate) async fn polls_ended(target: &Target) {
    let deadline = Instant::now() + Duration::from_secs(35);
    while target.server.state.notifier.waiting_clusters() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A running simulator process and the receipts of its agents.
pub struct Fleet {
    child: Child,
    pub receipts: mpsc::UnboundedReceiver<FleetReceipt>,
}

impl Fleet {
    /// Starts `fluxplane-bench simulate` against the target with `clusters` clusters tagged `tags`.
    pub async fn spawn(target: &Target, clusters: usize, tags: &[(&str, &str)], apply: Apply) -> anyhow::Result<Self> {
        let transport = TransportArgs {
            http2: false,
            agents_per_connection: 1,
            source_addresses: None,
        };
        Self::spawn_over(target, clusters, tags, apply, transport).await
    }

    /// Like `spawn`, the agents reaching the target as `transport` says.
    pub async fn spawn_over(
        target: &Target,
        clusters: usize,
        tags: &[(&str, &str)],
        apply: Apply,
        transport: TransportArgs,
    ) -> anyhow::Result<Self> {
        let mut args = vec![
            "simulate".to_owned(),
            "--base".to_owned(),
            target.server.base.clone(),
            "--clusters".to_owned(),
            clusters.to_string(),
        ];
        for (key, value) in tags {
            args.extend(["--tag".to_owned(), format!("{key}={value}")]);
        }
        args.extend(ApplyArgs::args(apply));
        args.extend(transport.args());
        Self::start(args, &target.token)
    }

    /// Starts `fluxplane-bench ceiling-pollers` against the HTTP ceiling's server: `pollers` pollers exchanging
    /// bodies of the sizes of `exchange`.
    pub async fn spawn_ceiling(
        fixed: &FixedServer,
        pollers: usize,
        exchange: Exchange,
        apply: Apply,
    ) -> anyhow::Result<Self> {
        let mut args = vec![
            "ceiling-pollers".to_owned(),
            "--base".to_owned(),
            fixed.base.clone(),
            "--pollers".to_owned(),
            pollers.to_string(),
            "--report-bytes".to_owned(),
            exchange.report.to_string(),
        ];
        args.extend(ApplyArgs::args(apply));
        Self::start(args, "")
    }

    fn start(args: Vec<String>, token: &str) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe().context("finding the benchmark's own binary")?);
        command
            .args(args)
            .env("FLUXPLANE_BENCH_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        let mut child = command.spawn().context("starting the fleet simulator")?;
        let stdout = child.stdout.take().context("the simulator's output")?;
        let (sender, receipts) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(line) = serde_json::from_str::<ReceiptLine>(&line) else {
                    continue;
                };
                let receipt = FleetReceipt {
                    name: line.name,
                    generation: line.generation,
                    received: UNIX_EPOCH + Duration::from_micros(line.received_micros),
                    reported: UNIX_EPOCH + Duration::from_micros(line.reported_micros),
                    failed: line.failed,
                    exchange: line.exchange,
                    reconcile_requested_at: line.reconcile_requested_at,
                };
                if sender.send(receipt).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, receipts })
    }

    /// Waits until `waiting()` (the polls the server holds) reaches `agents` (up to `within`), then a moment more
    /// for the polls already answered to come back.
    pub async fn settled(
        &mut self,
        waiting: impl Fn() -> usize,
        agents: usize,
        within: Duration,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + within;
        while waiting() < agents {
            self.check()?;
            if Instant::now() > deadline {
                bail!("only {} of {agents} agents are polling", waiting());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        Ok(())
    }

    /// The CPU time the simulator's process has used so far, in seconds.
    pub fn cpu_seconds(&self) -> anyhow::Result<f64> {
        let pid = self.child.id().context("the fleet simulator has stopped")?;
        cpu_seconds(&format!("/proc/{pid}/stat"))
    }

    /// Fails if the simulator has stopped (its own error is on standard error).
    pub fn check(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait()? {
            Some(status) => bail!("the fleet simulator stopped: {status}"),
            None => Ok(()),
        }
    }

    /// Closes the simulator's input, which ends it, and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .context("the fleet simulator did not stop")??;
        Ok(())
    }
}

/// The CPU time (user and system, every thread) of the process whose `/proc/{pid}/stat` is `path`, in seconds.
pub(crate) fn cpu_seconds(path: &str) -> anyhow::Result<f64> {
    // Linux reports these in USER_HZ ticks, which its ABI fixes at 100 a second
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    // the command name, in parentheses, may hold spaces: the fields are counted after it
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("a stat line without a command name")?
        .1
        .split_whitespace()
        .collect();
    // utime and stime are the 14th and 15th fields of the line, the 12th and 13th after the command name
    let ticks =
        |i: usize| -> anyhow::Result<f64> { Ok(fields.get(i).context("a short stat line")?.parse::<u64>()? as f64) };
    Ok((ticks(11)? + ticks(12)?) / TICKS_PER_SECOND)
}
