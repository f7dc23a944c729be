//! Listing a cluster's configurations through paging: `count` configurations seeded through the API, read by
//! following `nextLink` from the first page to the last. The HTTP ceiling serves the same pages' bytes and the
//! client reads them the same way; the database ceiling reads the same pages' rows by keyset.

use std::time::{Duration, Instant};

use anyhow::bail;
use axum::body::Bytes;
use serde::Deserialize;
use serde::de::IgnoredAny;

use crate::ceiling::{Ceiling, Db, FixedServer};
use crate::propagation::Exchange;
use crate::{Figure, Target, ms, seed};

/// A list page as the benchmark reads it: items are counted, not built, so that the load generator, which shares
/// the machine with the server, spends as little as it can.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListPage {
    value: Vec<IgnoredAny>,
    next_link: Option<String>,
}

/// Reads one page: its items counted, its body kept.
async fn page(target: &Target, url: &str) -> anyhow::Result<(ListPage, Bytes)> {
    let body = target.get_bytes(url).await?;
    Ok((serde_json::from_slice(&body)?, body))
}

/// Seeds `count` configurations on one cluster, then times reading them all through `nextLink`.
pub async fn listing(
    target: &Target,
    count: usize,
    repeat: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let cluster = target.register("listing").await?;
    let seeding = Instant::now();
    let paths = (0..count)
        .map(|i| Target::config_path(&cluster, &format!("cfg-{i:05}")))
        .collect();
    seed(target, paths, 8).await?;
    target.maintain(true).await?;
    eprintln!(
        "  seeded {count} configurations in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let db = Db::open(target).await?;
    for top in [1000, 100] {
        let mut runs = Vec::with_capacity(repeat);
        let mut bodies = Vec::new();
        for _ in 0..repeat {
            let started = Instant::now();
            let mut next = Some(format!(
                "{}{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations?api-version=2025-04-01&$top={top}",
                target.server.base
            ));
            let mut items = 0;
            bodies.clear();
            while let Some(link) = next {
                let (page, body) = page(target, &link).await?;
                items += page.value.len();
                bodies.push(body);
                next = page.next_link;
            }
            if items != count {
                bail!("listed {items} configurations, expected {count}");
            }
            runs.push(started.elapsed());
        }
        runs.sort();
        let pages = bodies.len();
        let bytes: usize = bodies.iter().map(Bytes::len).sum();

        let fixed = FixedServer::start(bodies, 0, Exchange::default(), Bytes::new()).await?;
        let mut http_runs = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            let started = Instant::now();
            let mut items = 0;
            for i in 0..pages {
                items += page(target, &fixed.body_url(i)).await?.0.value.len();
            }
            if items != count {
                bail!("the HTTP ceiling listed {items} configurations, expected {count}");
            }
            http_runs.push(started.elapsed());
        }
        fixed.stop().await;
        http_runs.sort();
        let db_runs = db.listing("listing", top, count, repeat).await?;

        let median = |runs: &[Duration]| ms(runs[runs.len() / 2]);
        // SQLite is held to the design's target too (docs/benchmarks/targets.md)
        let is_target = top == 1000;
        figures.push(Figure {
            backend,
            scenario: format!("list {count} configurations, $top={top}"),
            value: median(&runs),
            unit: "ms",
            target: is_target.then(|| "< 200 ms".to_owned()),
            met: is_target.then_some(median(&runs) < 200.0),
            detail: format!(
                "{pages} pages, {} KiB; median of {repeat}, fastest {:.1} ms",
                bytes / 1024,
                ms(runs[0])
            ),
            http_ceiling: Some(Ceiling::time(
                median(&runs),
                median(&http_runs),
                "GET of the same pages' bytes one after another, read the same way; median",
            )),
            db_ceiling: Some(Ceiling::time(
                median(&runs),
                median(&db_runs),
                "SELECT * of each page's rows from flux_configurations, keyset by name, LIMIT top + 1; median",
            )),
        });
    }
    db.close().await;
    Ok(())
}
