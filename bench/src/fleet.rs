//! A simulated fleet in a process of its own. `fluxplane-bench simulate` registers clusters through the API, runs a
//! simulated agent on each (the propagation scenario's: own identity, long-poll, instant apply) and prints what each
//! agent receives as JSON lines. The scenarios that need thousands of agents spawn it, so that agents and server
//! each have a whole open-file limit (an agent's connection costs a descriptor on each side) and the simulator's
//! CPU shows as a process of its own.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::identity::Identity;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use crate::propagation::{Receipt, simulated_agent};
use crate::{CLUSTER, Target};

/// Descriptors the simulator keeps for itself beyond one per agent.
const SPARE_FILES: u64 = 256;
/// Clusters registered at once.
const REGISTRATION_WORKERS: usize = 16;

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
}

fn parse_tag(tag: &str) -> Result<(String, String), String> {
    tag.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("'{tag}' is not key=value"))
}

/// One line of the simulator's output: an agent received this generation of this configuration.
#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceiptLine {
    name: String,
    generation: i64,
    /// Wall-clock time, microseconds since the Unix epoch: the one clock both processes read.
    received_micros: u64,
}

/// What an agent of the fleet received, and when.
pub struct FleetReceipt {
    pub name: String,
    pub generation: i64,
    pub received: SystemTime,
}

/// `fluxplane-bench simulate`: registers the clusters, runs their agents until standard input closes.
pub async fn simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising the open-file limit")?;
    if limit < args.clusters as u64 + SPARE_FILES {
        bail!(
            "the open-file limit is {limit}: too low for {} agents (raise the hard limit, `ulimit -Hn`)",
            args.clusters
        );
    }
    let http = reqwest::Client::new();
    let tags: serde_json::Map<String, serde_json::Value> =
        args.tags.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
    let mut registrations = Vec::new();
    for worker in 0..REGISTRATION_WORKERS {
        let (http, base, token, tags) = (http.clone(), args.base.clone(), args.token.clone(), tags.clone());
        let clusters = args.clusters;
        registrations.push(tokio::spawn(async move {
            let mut identities = Vec::new();
            for i in (worker..clusters).step_by(REGISTRATION_WORKERS) {
                let cluster = format!("{CLUSTER}/fleet-{i:05}");
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
                identities.push(new.identity);
            }
            Ok::<_, anyhow::Error>(identities)
        }));
    }
    let (sender, mut receipts) = mpsc::unbounded_channel::<Receipt>();
    let mut agents = Vec::with_capacity(args.clusters);
    for registration in registrations {
        for identity in registration.await?? {
            agents.push(tokio::spawn(simulated_agent(
                ControlPlane::new(identity)?,
                sender.clone(),
            )));
        }
    }
    drop(sender);
    // Instants cannot cross processes: receipts leave as wall-clock times, taken against one pair of readings
    let (anchor, anchor_wall) = (std::time::Instant::now(), SystemTime::now());
    let printer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        let mut batch = Vec::new();
        while receipts.recv_many(&mut batch, 1024).await > 0 {
            let mut out = Vec::new();
            for receipt in batch.drain(..) {
                let received = match receipt.received.checked_duration_since(anchor) {
                    Some(after) => anchor_wall + after,
                    None => anchor_wall - anchor.duration_since(receipt.received),
                };
                let line = ReceiptLine {
                    name: receipt.name,
                    generation: receipt.generation,
                    received_micros: received.duration_since(UNIX_EPOCH)?.as_micros() as u64,
                };
                serde_json::to_writer(&mut out, &line)?;
                out.push(b'\n');
            }
            stdout.write_all(&out).await?;
            stdout.flush().await?;
        }
        Ok::<_, anyhow::Error>(())
    });
    // the parent closes standard input when it is done, or by dying
    let mut stdin = tokio::io::stdin();
    let mut buffer = [0u8; 64];
    while stdin.read(&mut buffer).await? > 0 {}
    for agent in &agents {
        agent.abort();
    }
    printer.abort();
    Ok(())
}

/// A running simulator process and the receipts of its agents.
pub struct Fleet {
    child: Child,
    pub receipts: mpsc::UnboundedReceiver<FleetReceipt>,
}

impl Fleet {
    /// Starts `fluxplane-bench simulate` against the target with `clusters` clusters tagged `tags`.
    pub async fn spawn(target: &Target, clusters: usize, tags: &[(&str, &str)]) -> anyhow::Result<Self> {
        let mut command = Command::new(std::env::current_exe().context("finding the benchmark's own binary")?);
        command
            .arg("simulate")
            .args(["--base", &target.server.base, "--clusters", &clusters.to_string()])
            .env("FLUXPLANE_BENCH_TOKEN", &target.token)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        for (key, value) in tags {
            command.args(["--tag", &format!("{key}={value}")]);
        }
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
                };
                if sender.send(receipt).is_err() {
                    return;
                }
            }
        });
        Ok(Self { child, receipts })
    }

    /// Waits until `agents` agents are polling the target (up to `within`), then a moment more for the polls
    /// already answered to come back.
    pub async fn settled(&mut self, target: &Target, agents: usize, within: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + within;
        while target.server.state.notifier.waiting_clusters() < agents {
            self.check()?;
            if std::time::Instant::now() > deadline {
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
