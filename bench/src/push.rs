//! A Git push to Compliant: `agents` simulated agents poll (see `fleet`), each cluster with one configuration;
//! `touched` of them read the pushed repository, the others another one. A GitHub receiver of the pushed repository
//! is sent a signed push, as GitHub sends it; the server asks the touched configurations to re-check at once
//! (`reconcileRequestedAt`), their agents receive it with their next desired state and report the new commit
//! Compliant. Timed from just before the delivery to each agent holding the answer to its report. The HTTP ceiling
//! wakes as many held polls with one request; the database ceiling marks the touched rows in one transaction and
//! has each cluster read its desired state and write its status at once.

use std::collections::HashSet;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::ceiling::{Ceiling, Db, FixedServer};
use crate::fleet::{Fleet, fleet_cluster, polls_ended};
use crate::propagation::{Apply, Exchange};
use crate::{Figure, Target, ms, percentile};

const FLEET_API: &str = "2026-01-01";
const RECEIVER: &str = "/subscriptions/bench/providers/Fluxplane.Fleet/gitReceivers/fleet";
const PUSHED: &str = "https://github.com/example/fleet";
const ELSEWHERE: &str = "https://github.com/example/elsewhere";
const SECRET: &str = "bench-webhook-secret-0123456789";
/// Configurations written at once while seeding.
const SEED_WORKERS: usize = 8;

fn configuration(url: &str) -> Value {
    json!({"properties": {
        "namespace": "flux-system",
        "gitRepository": {"url": url, "repositoryRef": {"branch": "main"}, "syncIntervalInSeconds": 3600},
        "kustomizations": {"apps": {"path": "./apps"}}
    }})
}

/// A push of `main` to the pushed repository, as GitHub delivers it: the body and its signature.
fn delivery(push: usize) -> (Vec<u8>, String) {
    let body = serde_json::to_vec(&json!({
        "ref": "refs/heads/main",
        "after": format!("{push:040x}"),
        "repository": {"clone_url": format!("{PUSHED}.git"), "html_url": PUSHED,
                       "ssh_url": "git@github.com:example/fleet.git"}
    }))
    .expect("a JSON value");
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("HMAC takes any key");
    mac.update(&body);
    let signature = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
    (body, signature)
}

/// Writes the configuration `app` on every cluster, the first `touched` reading the pushed repository, and waits
/// until every agent has reported it.
async fn seed(target: &Target, fleet: &mut Fleet, agents: usize, touched: usize) -> anyhow::Result<()> {
    let mut tasks = Vec::with_capacity(SEED_WORKERS);
    for worker in 0..SEED_WORKERS {
        let (http, base, token) = (target.client.clone(), target.server.base.clone(), target.token.clone());
        tasks.push(tokio::spawn(async move {
            for i in (worker..agents).step_by(SEED_WORKERS) {
                let path = Target::config_path(&fleet_cluster(i), "app");
                let url = if i < touched { PUSHED } else { ELSEWHERE };
                let response = http
                    .put(format!("{base}{path}?api-version=2025-04-01"))
                    .bearer_auth(&token)
                    .json(&configuration(url))
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
    let mut reported = 0;
    while reported < agents {
        let receipt = tokio::time::timeout(Duration::from_secs(60), fleet.receipts.recv())
            .await
            .with_context(|| format!("{reported} of {agents} agents reported their configuration"))?
            .context("the fleet simulator stopped")?;
        reported += usize::from(receipt.name == "app" && receipt.generation == 1);
    }
    Ok(())
}

/// The times of one push: from just before its delivery to each touched agent's receipt, and to its report's
/// answer; the delivery's own answer; and the sizes of an agent's exchange.
struct Pushed {
    receipt: Vec<Duration>,
    compliant: Vec<Duration>,
    answered: Duration,
    exchange: Exchange,
}

/// Waits until `touched` receipts answer one request to re-check, one not seen before (each push makes one).
async fn rechecked(
    fleet: &mut Fleet,
    touched: usize,
    sent: SystemTime,
    seen: &mut HashSet<String>,
) -> anyhow::Result<(Vec<Duration>, Vec<Duration>, Exchange)> {
    let (mut receipt, mut compliant, mut exchange) = (Vec::new(), Vec::new(), Exchange::default());
    let mut this: Option<String> = None;
    while compliant.len() < touched {
        let next = tokio::time::timeout(Duration::from_secs(60), fleet.receipts.recv())
            .await
            .with_context(|| format!("{} of {touched} agents re-checked", compliant.len()))?
            .context("the fleet simulator stopped")?;
        let Some(requested) = next.reconcile_requested_at else {
            continue;
        };
        if seen.contains(&requested) && this.as_deref() != Some(requested.as_str()) {
            continue;
        }
        if this.is_none() {
            seen.insert(requested.clone());
            this = Some(requested.clone());
        }
        if this.as_deref() == Some(requested.as_str()) {
            receipt.push(next.received.duration_since(sent).unwrap_or_default());
            compliant.push(next.reported.duration_since(sent).unwrap_or_default());
            exchange = next.exchange;
        }
    }
    receipt.sort();
    compliant.sort();
    Ok((receipt, compliant, exchange))
}

pub async fn push(
    target: &Target,
    agents: usize,
    touched: usize,
    pushes: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let touched = touched.min(agents);
    let started = Instant::now();
    let mut fleet = Fleet::spawn(target, agents, &[], Apply::default()).await?;
    let notifier = &target.server.state.notifier;
    fleet
        .settled(|| notifier.waiting_clusters(), agents, Duration::from_secs(600))
        .await?;
    seed(target, &mut fleet, agents, touched).await?;
    let receiver = target
        .put(
            RECEIVER,
            FLEET_API,
            &json!({"properties": {"repositoryUrl": PUSHED, "hostType": "GitHub", "secret": SECRET}}),
        )
        .await?;
    let receiver: Value = serde_json::from_slice(&receiver)?;
    let webhook = receiver["properties"]["webhookUrl"]
        .as_str()
        .context("the receiver's webhook URL")?
        .to_owned();
    eprintln!(
        "  {agents} agents polling, {touched} reading the pushed repository, after {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let mut measured = Vec::with_capacity(pushes);
    let mut seen = HashSet::new();
    for push in 0..pushes {
        // each push starts from a quiet fleet, every agent polling again
        fleet
            .settled(|| notifier.waiting_clusters(), agents, Duration::from_secs(60))
            .await?;
        let (body, signature) = delivery(push);
        let sent = SystemTime::now();
        let answer = target
            .client
            .post(&webhook)
            .header("content-type", "application/json")
            .header("X-GitHub-Event", "push")
            .header("X-Hub-Signature-256", signature)
            .body(body)
            .send()
            .await?;
        let answered = sent.elapsed().unwrap_or_default();
        let status = answer.status();
        let answer: Value = answer.json().await?;
        if status != reqwest::StatusCode::ACCEPTED || answer["configurations"] != touched {
            bail!("the push was answered {status}: {answer}");
        }
        let (receipt, compliant, exchange) = rechecked(&mut fleet, touched, sent, &mut seen).await?;
        measured.push(Pushed {
            receipt,
            compliant,
            answered,
            exchange,
        });
    }
    fleet.stop().await?;
    let mut receipt: Vec<Duration> = measured.iter().flat_map(|p| p.receipt.clone()).collect();
    let mut compliant: Vec<Duration> = measured.iter().flat_map(|p| p.compliant.clone()).collect();
    let mut answered: Vec<Duration> = measured.iter().map(|p| p.answered).collect();
    receipt.sort();
    compliant.sort();
    answered.sort();
    let exchange = measured.last().map(|p| p.exchange).unwrap_or_default();

    // the HTTP ceiling: as many pollers as the push touches, all woken by one request, each reporting
    polls_ended(target).await;
    let fixed = FixedServer::start(Vec::new(), touched, exchange, serde_json::to_vec(&json!({}))?.into()).await?;
    let mut pollers = Fleet::spawn_ceiling(&fixed, touched, exchange, Apply::default()).await?;
    let mut http = Vec::with_capacity(pushes * touched);
    for push in 0..pushes {
        pollers
            .settled(|| fixed.waiting(), touched, Duration::from_secs(600))
            .await?;
        let sent = SystemTime::now();
        target.put_url(&fixed.write_range_url(0..touched), &json!({})).await?;
        let mut reported = 0;
        while reported < touched {
            let next = tokio::time::timeout(Duration::from_secs(60), pollers.receipts.recv())
                .await
                .context("a ceiling poller never reported")?
                .context("the ceiling's pollers stopped")?;
            if next.generation == push as i64 + 1 {
                reported += 1;
                http.push(next.reported.duration_since(sent).unwrap_or_default());
            }
        }
    }
    pollers.stop().await?;
    fixed.stop().await;
    http.sort();
    let pool = Db::open(target).await?;
    let db = pool.push(agents, touched, pushes).await?;
    pool.close().await;

    let detail = format!(
        "{pushes} signed GitHub pushes, each to {touched} configurations (of {agents}, the rest reading another \
         repository): p50 {:.1} ms, p95 {:.1} ms, p99 {:.1} ms, max {:.1} ms; to the agents' receipt p50 {:.1} ms, \
         p99 {:.1} ms; the webhook answered in {:.1} ms (median)",
        ms(percentile(&compliant, 0.5)),
        ms(percentile(&compliant, 0.95)),
        ms(percentile(&compliant, 0.99)),
        ms(compliant[compliant.len() - 1]),
        ms(percentile(&receipt, 0.5)),
        ms(percentile(&receipt, 0.99)),
        ms(percentile(&answered, 0.5)),
    );
    for (p, unit) in [(0.5, "ms p50"), (0.99, "ms p99")] {
        let value = ms(percentile(&compliant, p));
        figures.push(Figure {
            backend,
            scenario: format!("push to Compliant, {touched} of {agents} agents"),
            value,
            unit,
            target: None,
            met: None,
            detail: detail.clone(),
            http_ceiling: Some(Ceiling::time(
                value,
                ms(percentile(&http, p)),
                &format!(
                    "one request wakes {touched} held polls at once, each poller reports; bodies of the same sizes"
                ),
            )),
            db_ceiling: Some(Ceiling::time(
                value,
                ms(percentile(&db, p)),
                &format!(
                    "the {touched} touched rows of {agents} marked in one transaction, then each cluster at once \
                     reads its desired state and writes its status in a transaction; scratch table"
                ),
            )),
        });
    }
    Ok(())
}
