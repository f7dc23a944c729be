//! The web UI's first view of a fleet in headless Chromium: from the start of navigation to the page's
//! `fluxplane-first-view` mark, set once the counts and the grid's first page are drawn (the page fetches the
//! summary and that page in parallel). Signed in through session storage, as after the sign-in form; one warm-up
//! load, then `LOADS` measured ones.

use std::time::Duration;

use anyhow::{Context, bail};
use fluxplane_api::testing::Browser;
use serde_json::{Value, json};

use crate::{Figure, Target};

const LOADS: usize = 5;
const TARGET_MS: f64 = 2000.0;

pub async fn first_view(
    target: &Target,
    clusters: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let Some(browser) = Browser::start().await else {
        eprintln!("  web UI first view: not measured (no chromium)");
        return Ok(());
    };
    let client = &browser.client;
    client.goto(&target.server.base).await?;
    client
        .execute(
            "sessionStorage.setItem('fluxplane.token', arguments[0]); \
             sessionStorage.setItem('fluxplane.subscription', 'bench'); return true",
            vec![json!(target.token)],
        )
        .await?;
    let mut times = Vec::with_capacity(LOADS);
    for load in 0..=LOADS {
        client.refresh().await?;
        let mut waited = Duration::ZERO;
        let shown = loop {
            let found = client
                .execute(
                    "const m = performance.getEntriesByName('fluxplane-first-view')[0]; \
                     return document.body.dataset.ready === 'error' ? -1 : (m ? m.startTime : null)",
                    vec![],
                )
                .await?;
            match found {
                Value::Number(ms) => break ms.as_f64().context("a time")?,
                _ if waited > Duration::from_secs(30) => bail!("the UI's first view did not come within 30 s"),
                _ => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    waited += Duration::from_millis(20);
                }
            }
        };
        if shown < 0.0 {
            bail!("the UI showed an error instead of the fleet");
        }
        if load > 0 {
            times.push(shown);
        }
    }
    times.sort_by(f64::total_cmp);
    let worst = times[times.len() - 1];
    figures.push(Figure {
        backend,
        scenario: format!("web UI first view, {clusters} clusters"),
        value: worst,
        unit: "ms max",
        target: Some("< 2 s in headless Chromium".to_owned()),
        met: Some(worst < TARGET_MS),
        detail: format!(
            "{LOADS} loads after a warm-up, navigation start to counts and first grid page drawn; median {:.0} ms",
            times[times.len() / 2]
        ),
        // a browser's work has no HTTP or database equivalent
        http_ceiling: None,
        db_ceiling: None,
    });
    browser.client.clone().close().await?;
    Ok(())
}
