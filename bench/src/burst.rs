//! A burst of reports: `agents` agents, each registered with an identity of its own on its own cluster with
//! `configurations` configurations, all send one status report at the same moment. The figure is the time from the
//! send until every report is recorded, each answered `Recorded` (an answer comes only once its report is
//! committed); the design's target is under 2 s for 10,000 agents.
//!
//! The agents run in a process of their own (`fluxplane-bench burst-reporters`), so that 10,000 connections fit
//! each process's open-file limit and the agents' CPU shows as a process of its own, as the fleet's do (`fleet`).
//! The process registers the clusters, writes their configurations through the API, lets every agent read its
//! desired state (which opens its connection and tells it the generations to report on, as a real agent learns
//! them), says `ready`, and on `go` sends every report at once. The HTTP ceiling is the same process posting the
//! same reports to the HTTP ceiling's server; the database ceiling is `Db::burst`, `Db::ingestion`'s statements with one
//! report per agent.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::identity::Identity;
use fluxplane_agent_protocol::agent::{ReportDisposition, ReportResult, StatusAccepted, StatusReport};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::Semaphore;

use crate::ceiling::{Ceiling, Db, FixedServer, agent_http};
use crate::fleet::{fleet_cluster, raise_file_limit, register};
use crate::ingestion::{Reporter, held, report};
use crate::propagation::Exchange;
use crate::{Figure, Target, config_body, ms};

/// The design's target for 10,000 agents reporting at once.
const TARGET: Duration = Duration::from_secs(2);
/// Configurations written, and desired states read, at once while preparing.
const PREPARING_WORKERS: usize = 32;
/// How long the reporters may take to get ready (registering and seeding 10,000 clusters takes about a minute).
const READY_WITHIN: Duration = Duration::from_secs(600);

#[derive(Debug, clap::Args)]
pub struct BurstArgs {
    /// Base URL of the control plane; with `--ceiling`, the URL of the HTTP ceiling every report is posted to.
    #[arg(long)]
    base: String,
    /// Agents, each on a cluster of its own (named `fleet-00000` and up).
    #[arg(long)]
    agents: usize,
    /// Configurations of each cluster (each report covers them all).
    #[arg(long)]
    configurations: usize,
    /// Post to the HTTP ceiling instead: no registration, every configuration at generation 1.
    #[arg(long)]
    ceiling: bool,
    /// Token of a user allowed to register clusters and write configurations (not needed with `--ceiling`).
    #[arg(long, env = "FLUXPLANE_BENCH_TOKEN", hide_env_values = true, default_value = "")]
    token: String,
}

/// What the reporters print once every report is answered.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Outcome {
    /// From the send to the last answer.
    elapsed_micros: u64,
    /// Configuration statuses answered `Recorded`.
    recorded: usize,
    /// Each report's time to its answer, sorted.
    latencies_micros: Vec<u64>,
    /// One answer, as the server wrote it (its size is the ceiling's answer's).
    answer: StatusAccepted,
}

/// `fluxplane-bench burst-reporters`: gets every agent ready, says `ready`, sends every report at once on the next
/// line of standard input, prints the outcome as one JSON line and waits for standard input to close.
pub async fn reporters(args: BurstArgs) -> anyhow::Result<()> {
    raise_file_limit(args.agents)?;
    let reporters = if args.ceiling {
        ceiling_reporters(&args).await?
    } else {
        agents(&args).await?
    };
    let mut stdout = tokio::io::stdout();
    stdout.write_all(b"ready\n").await?;
    stdout.flush().await?;
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    if stdin.next_line().await?.is_none() {
        return Ok(());
    }
    let outcome = fire(reporters).await?;
    let mut line = serde_json::to_vec(&outcome)?;
    line.push(b'\n');
    stdout.write_all(&line).await?;
    stdout.flush().await?;
    // the parent closes standard input when it is done with the connections
    let mut rest = Vec::new();
    stdin.into_inner().read_to_end(&mut rest).await?;
    Ok(())
}

/// The clusters registered, their configurations written, and each agent holding its report of them all.
async fn agents(args: &BurstArgs) -> anyhow::Result<Vec<(Reporter, StatusReport)>> {
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build()?;
    let identities = register(&http, &args.base, &args.token, args.agents, &[]).await?;
    let gate = Arc::new(Semaphore::new(PREPARING_WORKERS));
    let mut writes = Vec::with_capacity(args.agents * args.configurations);
    for i in 0..args.agents * args.configurations {
        let path = Target::config_path(
            &fleet_cluster(i / args.configurations),
            &format!("cfg-{}", i % args.configurations),
        );
        let (http, base, token, gate) = (http.clone(), args.base.clone(), args.token.clone(), gate.clone());
        writes.push(tokio::spawn(async move {
            let _turn = gate.acquire().await?;
            let response = http
                .put(format!("{base}{path}?api-version=2025-04-01"))
                .bearer_auth(&token)
                .json(&config_body(i))
                .send()
                .await?;
            if !response.status().is_success() {
                bail!("writing {path}: {}", response.status());
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for write in writes {
        write.await??;
    }
    let configurations = args.configurations;
    let mut reads = Vec::with_capacity(args.agents);
    for (agent, identity) in identities.into_iter().enumerate() {
        let gate = gate.clone();
        reads.push(tokio::spawn(async move {
            let _turn = gate.acquire().await?;
            let control_plane = ControlPlane::new(identity)?;
            let held = held(&control_plane, configurations, agent).await?;
            Ok::<_, anyhow::Error>((Reporter::Agent(control_plane), report(&held, true, agent)))
        }));
    }
    let mut reporters = Vec::with_capacity(args.agents);
    for read in reads {
        reporters.push(read.await??);
    }
    Ok(reporters)
}

/// As many agent-like clients with tokens of the same kind, each holding the same report at generation 1, each
/// with its connection open, as the agents opened theirs reading their desired state.
async fn ceiling_reporters(args: &BurstArgs) -> anyhow::Result<Vec<(Reporter, StatusReport)>> {
    let held: Vec<_> = (0..args.configurations).map(|c| (format!("cfg-{c}"), 1)).collect();
    let gate = Arc::new(Semaphore::new(PREPARING_WORKERS));
    let mut opening = Vec::with_capacity(args.agents);
    for agent in 0..args.agents {
        let identity = Identity::generate(&args.base, &fleet_cluster(agent))?.identity;
        let (http, url, token) = (
            agent_http(&args.base, agent)?,
            args.base.clone(),
            identity.token()?.value,
        );
        let (gate, report) = (gate.clone(), report(&held, true, agent));
        opening.push(tokio::spawn(async move {
            let _turn = gate.acquire().await?;
            http.get(url.as_str()).send().await?.error_for_status()?.bytes().await?;
            Ok::<_, anyhow::Error>((Reporter::Ceiling { http, url, token }, report))
        }));
    }
    let mut reporters = Vec::with_capacity(args.agents);
    for open in opening {
        reporters.push(open.await??);
    }
    Ok(reporters)
}

/// Sends every report at once; answers when the last is answered.
async fn fire(reporters: Vec<(Reporter, StatusReport)>) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let tasks: Vec<_> = reporters
        .into_iter()
        .map(|(reporter, report)| {
            tokio::spawn(async move {
                let answer = reporter.report(&report).await?;
                Ok::<_, anyhow::Error>((started.elapsed(), answer))
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut recorded = 0;
    let mut last = StatusAccepted::default();
    for task in tasks {
        let (latency, answer) = task.await??;
        latencies.push(latency);
        recorded += answer
            .results
            .iter()
            .filter(|r| r.result == ReportDisposition::Recorded)
            .count();
        last = answer;
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok(Outcome {
        elapsed_micros: elapsed.as_micros() as u64,
        recorded,
        latencies_micros: latencies.iter().map(|l| l.as_micros() as u64).collect(),
        answer: last,
    })
}

/// A running `burst-reporters` process.
struct Reporters {
    child: Child,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Reporters {
    fn spawn(args: Vec<String>, token: &str) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe().context("finding the benchmark's own binary")?)
            .arg("burst-reporters")
            .args(args)
            .env("FLUXPLANE_BENCH_TOKEN", token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the burst's reporters")?;
        let stdout = child.stdout.take().context("the reporters' output")?;
        Ok(Self {
            child,
            lines: BufReader::new(stdout).lines(),
        })
    }

    async fn line(&mut self, within: Duration) -> anyhow::Result<String> {
        tokio::time::timeout(within, self.lines.next_line())
            .await
            .context("the burst's reporters did not answer in time")??
            .context("the burst's reporters stopped (their error is above)")
    }

    async fn ready(&mut self) -> anyhow::Result<()> {
        let line = self.line(READY_WITHIN).await?;
        if line != "ready" {
            bail!("the burst's reporters said {line:?} instead of ready");
        }
        Ok(())
    }

    /// Says `go`, and reads what came of it.
    async fn fire(&mut self) -> anyhow::Result<Outcome> {
        let stdin = self.child.stdin.as_mut().context("the reporters' input")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(serde_json::from_str(&self.line(Duration::from_secs(120)).await?)?)
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        drop(self.child.stdin.take());
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .context("the burst's reporters did not stop")??;
        Ok(())
    }
}

fn micros(outcome: &Outcome, p: f64) -> Duration {
    let sorted = &outcome.latencies_micros;
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Duration::from_micros(
        sorted
            .get(index.min(sorted.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0),
    )
}

pub async fn burst(
    target: &Target,
    agents: usize,
    configurations: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let seeding = Instant::now();
    let common = |base: String| {
        vec![
            "--base".to_owned(),
            base,
            "--agents".to_owned(),
            agents.to_string(),
            "--configurations".to_owned(),
            configurations.to_string(),
        ]
    };
    let mut reporters = Reporters::spawn(common(target.server.base.clone()), &target.token)?;
    reporters.ready().await?;
    target.maintain(true).await?;
    eprintln!(
        "  {agents} agents with {configurations} configurations each ready after {:.1} s",
        seeding.elapsed().as_secs_f64()
    );
    let server = reporters.fire().await?;
    reporters.stop().await?;
    let expected = agents * configurations;
    if server.recorded != expected {
        bail!(
            "{} of {expected} configuration statuses were answered Recorded",
            server.recorded
        );
    }

    // the answer the server gave, at generation 1 (the ceiling's reports name generation 1)
    let answer = StatusAccepted {
        results: (0..configurations)
            .map(|c| ReportResult {
                name: format!("cfg-{c}"),
                generation: 1,
                result: ReportDisposition::Recorded,
            })
            .collect(),
        extensions: Vec::new(),
    };
    if serde_json::to_vec(&answer)?.len() != serde_json::to_vec(&server.answer)?.len() {
        bail!(
            "the server's answer is not the size the ceiling answers: {:?}",
            server.answer
        );
    }
    let fixed = FixedServer::start(
        vec![Bytes::from(serde_json::to_vec(&answer)?)],
        0,
        Exchange::default(),
        Bytes::new(),
    )
    .await?;
    let mut args = common(fixed.body_url(0));
    args.push("--ceiling".to_owned());
    let mut ceiling = Reporters::spawn(args, "")?;
    ceiling.ready().await?;
    let http = ceiling.fire().await?;
    ceiling.stop().await?;
    fixed.stop().await;
    let pool = Db::open(target).await?;
    let db = pool.burst(agents, configurations).await?;
    pool.close().await;

    let elapsed = Duration::from_micros(server.elapsed_micros);
    let value = ms(elapsed);
    figures.push(Figure {
        backend,
        scenario: format!("{agents} agents reporting at once, {configurations} configurations each"),
        value,
        unit: "ms",
        target: Some(format!("< {} ms", TARGET.as_millis())),
        met: Some(elapsed < TARGET),
        detail: format!(
            "{agents} reports ({expected} configuration statuses) all answered Recorded; each report's answer p50 \
             {:.0} ms, p99 {:.0} ms",
            ms(micros(&server, 0.50)),
            ms(micros(&server, 0.99)),
        ),
        http_ceiling: Some(Ceiling::time(
            value,
            ms(Duration::from_micros(http.elapsed_micros)),
            "the same reports POSTed at once by as many agent-like clients in a process of their own, answered \
             with the server's answer",
        )),
        db_ceiling: Some(Ceiling::time(
            value,
            ms(db),
            "per report, an UPDATE of each configuration's status in a transaction of its own, every agent's at \
             once through the pool's connections, scratch table",
        )),
    });
    Ok(())
}
