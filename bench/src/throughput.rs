//! Configuration PUT throughput: concurrent clients, each writing to clusters of its own, send PUTs back to back,
//! half creating a configuration and half updating one the same client created. The HTTP ceiling sends the same
//! PUTs to a server answering the server's answer; the database ceiling runs the same upserts on a scratch table.

use std::time::{Duration, Instant};

use anyhow::bail;

use crate::ceiling::{Ceiling, Db, FixedServer};
use crate::propagation::Exchange;
use crate::{Figure, Target, config_body, ms, percentile};

/// Sends `urls[c]` in order from client `c`, all clients at once, each PUT carrying its client's configuration.
/// Answers the elapsed time and the sorted latencies.
async fn drive(target: &Target, urls: Vec<Vec<String>>) -> anyhow::Result<(Duration, Vec<Duration>)> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (client, urls) in urls.into_iter().enumerate() {
        let http = target.client.clone();
        let token = target.token.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(urls.len());
            let body = serde_json::to_vec(&config_body(client))?;
            for url in urls {
                let sent = Instant::now();
                let response = http
                    .put(&url)
                    .bearer_auth(&token)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await?;
                if !response.status().is_success() {
                    bail!("PUT {url}: {}", response.status());
                }
                latencies.push(sent.elapsed());
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed();
    latencies.sort();
    Ok((elapsed, latencies))
}

/// The configuration names client `client` writes: `share` of them, each name twice (create, then update).
fn names(client: usize, share: usize) -> impl Iterator<Item = String> {
    (0..share).map(move |i| format!("c{client}-{}", i % share.div_ceil(2).max(1)))
}

/// `puts` PUTs spread over `clients` concurrent clients, each creating then updating its own configurations.
pub async fn throughput(
    target: &Target,
    puts: usize,
    clients: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let share = |client: usize| puts / clients + usize::from(client < puts % clients);
    let (elapsed, latencies) = drive(target, urls(target, "throughput", clients, share).await?).await?;
    // an update's answer, as most of the run's were, for the HTTP ceiling to answer with
    let cluster = format!("{}/throughput-0", crate::CLUSTER);
    let answer = target
        .put(&Target::config_path(&cluster, "c0-0"), "2025-04-01", &config_body(0))
        .await?;

    let fixed = FixedServer::start(vec![answer], 0, Exchange::default(), Default::default()).await?;
    let ceiling_urls = (0..clients)
        .map(|client| (0..share(client)).map(|_| fixed.body_url(0)).collect())
        .collect();
    let (http_elapsed, _) = drive(target, ceiling_urls).await?;
    fixed.stop().await;
    let db = Db::open(target).await?;
    let db_elapsed = db.puts(clients, puts).await?;
    let is_postgres = backend == "postgres";
    // A bound, not a way to run fluxplane: the same PUTs to clusters of their own with the configuration
    // triggers off (no revision bump, so no agent would hear of them; no rollups, no history). What the rest of a
    // PUT's path, server and statements, allows on this machine.
    let untriggered = if is_postgres {
        let urls = urls(target, "untriggered", clients, share).await?;
        db.configuration_triggers(false).await?;
        let run = drive(target, urls).await;
        db.configuration_triggers(true).await?;
        Some(run?)
    } else {
        None
    };
    db.close().await;

    let rate = |elapsed: Duration| puts as f64 / elapsed.as_secs_f64();
    // SQLite lets one transaction write at a time: its own target is a quarter of the design's
    // (docs/benchmarks/targets.md)
    let target = if is_postgres { 2000.0 } else { 500.0 };
    figures.push(Figure {
        backend,
        scenario: format!("configuration PUTs, {clients} clients"),
        value: rate(elapsed),
        unit: "PUT/s",
        target: Some(format!("> {target} PUT/s")),
        met: Some(rate(elapsed) > target),
        detail: format!(
            "{puts} PUTs in {:.2} s; latency p50 {:.2} ms, p95 {:.2} ms, p99 {:.2} ms",
            elapsed.as_secs_f64(),
            ms(percentile(&latencies, 0.50)),
            ms(percentile(&latencies, 0.95)),
            ms(percentile(&latencies, 0.99)),
        ),
        http_ceiling: Some(Ceiling::rate(
            rate(elapsed),
            rate(http_elapsed),
            "the same PUTs by the same clients, answered with the server's answer",
        )),
        db_ceiling: Some(Ceiling::rate(
            rate(elapsed),
            rate(db_elapsed),
            "INSERT ... ON CONFLICT DO UPDATE per PUT in a transaction, same clients and names, scratch table",
        )),
    });
    if let Some((elapsed, latencies)) = untriggered {
        figures.push(Figure {
            backend,
            scenario: format!("configuration PUTs, {clients} clients, triggers off (bound)"),
            value: rate(elapsed),
            unit: "PUT/s",
            target: None,
            met: None,
            detail: format!(
                "{puts} PUTs in {:.2} s, latency p99 {:.2} ms, with the configurations table's triggers disabled: \
                 what the server and its statements allow without the bookkeeping",
                elapsed.as_secs_f64(),
                ms(percentile(&latencies, 0.99)),
            ),
            http_ceiling: Some(Ceiling::rate(
                rate(elapsed),
                rate(http_elapsed),
                "as for the PUTs above",
            )),
            db_ceiling: Some(Ceiling::rate(rate(elapsed), rate(db_elapsed), "as for the PUTs above")),
        });
    }
    Ok(())
}

/// The PUT URLs of each of `clients` clients, on a cluster of its own named after `prefix`: `share(client)` of
/// them, each name twice (create, then update).
async fn urls(
    target: &Target,
    prefix: &str,
    clients: usize,
    share: impl Fn(usize) -> usize,
) -> anyhow::Result<Vec<Vec<String>>> {
    let mut urls = Vec::with_capacity(clients);
    for client in 0..clients {
        // each client writes to clusters of its own, as operators of different clusters do
        let cluster = target.register(&format!("{prefix}-{client}")).await?;
        urls.push(
            names(client, share(client))
                .map(|name| {
                    format!(
                        "{}{}?api-version=2025-04-01",
                        target.server.base,
                        Target::config_path(&cluster, &name)
                    )
                })
                .collect(),
        );
    }
    Ok(urls)
}
