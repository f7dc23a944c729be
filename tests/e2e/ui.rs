//! End-to-end: the web UI in a real headless Chromium (Debian's `chromium`, driven through `chromedriver`) against a
//! real server with real agents applying a real Git repository. Signs in, checks the overview's numbers against
//! the API, drills down to a failing configuration and to an applied one's objects, watches a live update arrive,
//! and checks the empty state. It writes its screenshots to `<target>/tmp/screenshots/`, never into the source
//! tree; `scripts/screenshots` runs it and copies them over the README's (`docs/screenshots/`), on purpose.
//!
//! Without chromedriver the test is skipped, except under `CI=true`, where `scripts/test` installs it.

use std::path::Path;
use std::time::Duration;

use crate::common::agents::{RunningAgent, config_body, registered, served_repository, until};
use crate::common::reports::{agent_cluster, report};
use crate::common::*;
use fantoccini::{Client, Locator};
use fluxplane_api::testing::{Backend, Browser};
use serde_json::Value;

const SUBSCRIPTION: &str = "s";

/// Waits up to 20 s for the script to return true.
async fn wait_for(client: &Client, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let holds = client.execute(script, vec![]).await.unwrap();
        if holds == Value::Bool(true) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "waiting for {what} ({script})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn text(client: &Client, css: &str) -> String {
    client.find(Locator::Css(css)).await.unwrap().text().await.unwrap()
}

/// The number a count card shows.
async fn count(client: &Client, test_id: &str) -> i64 {
    let shown = text(client, &format!("[data-testid='{test_id}']")).await;
    shown
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no number on the card {test_id}: {shown:?}"))
}

/// Clicks the cell and waits for the drill-down panel to show `expected`.
async fn drill_down(client: &Client, cell: &str, expected: &str) {
    client.find(Locator::Css(cell)).await.unwrap().click().await.unwrap();
    wait_for(
        client,
        &format!("the drill-down of {cell} showing '{expected}'"),
        &format!(
            "const p = document.querySelector(\"[data-testid='drilldown']\"); \
             return !!p && p.getClientRects().length > 0 && p.textContent.includes('{expected}')"
        ),
    )
    .await;
}

/// Presses Escape where the focus is and waits for the drill-down panel to close.
async fn close_with_escape(client: &Client) {
    let focused = client.active_element().await.unwrap();
    focused
        .send_keys(&fantoccini::key::Key::Escape.to_string())
        .await
        .unwrap();
    wait_for(
        client,
        "Escape to close the drill-down",
        "const p = document.querySelector(\"[data-testid='drilldown']\"); return !p || p.getClientRects().length === 0",
    )
    .await;
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(name), png).unwrap();
}

async fn sign_in(client: &Client, token: &str, subscription: &str) {
    wait_for(
        client,
        "the sign-in form",
        "return !!document.querySelector(\"[data-testid='signin']\")",
    )
    .await;
    let form = client.find(Locator::Css("[data-testid='signin']")).await.unwrap();
    let token_field = form.find(Locator::Css("input[type='password']")).await.unwrap();
    token_field.clear().await.unwrap();
    token_field.send_keys(token).await.unwrap();
    let subscription_field = form.find(Locator::Css("input:not([type='password'])")).await.unwrap();
    subscription_field.clear().await.unwrap();
    subscription_field.send_keys(subscription).await.unwrap();
    form.find(Locator::Css("button[type='submit']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_web_ui_shows_the_fleet_drills_down_and_updates_live() {
    let Some(browser) = Browser::start().await else { return };
    let client = &browser.client;
    let api = Api::start(Backend::Sqlite).await.expect("the embedded store");
    let dir = tempfile::tempdir().unwrap();

    // two clusters with real agents applying a real repository, one whose reports the test writes (failing)
    let (_repository, _git, url) = served_repository().await;
    let mut agents = Vec::new();
    for name in ["edge-1", "edge-2"] {
        let identity = registered(&api, name, dir.path()).await;
        let cluster = cluster_path(SUBSCRIPTION, "rg", name);
        assert!(
            api.put_config(&cluster, "platform", config_body(&url))
                .await
                .status
                .is_success()
        );
        agents.push(RunningAgent::start(identity).await);
        until(
            &api,
            &with_version(&config_path(&cluster, "platform"), FLUX_API),
            "the agent to apply it",
            |p| p["complianceState"] == "Compliant",
        )
        .await;
    }
    let failing = agent_cluster(&api, "store-1", "prod", dir.path()).await;
    let failing_cluster = cluster_path(SUBSCRIPTION, "rg-a", "store-1");
    assert!(
        api.put_config(&failing_cluster, "payments", git_config_body())
            .await
            .status
            .is_success()
    );
    report(&failing, &["payments"], &[]).await;

    let summary = api
        .get(&format!(
            "/subscriptions/{SUBSCRIPTION}/providers/Fluxplane.Fleet/complianceSummary?api-version=2026-01-01"
        ))
        .await;
    assert_eq!(summary.body["count"], 3, "{summary:?}");

    client.goto(&api.server.base).await.unwrap();
    sign_in(client, &api.token, SUBSCRIPTION).await;
    wait_for(
        client,
        "the first view",
        "return document.body.dataset.ready === 'true'",
    )
    .await;

    // the numbers are the API's
    assert_eq!(count(client, "count-total").await, 3);
    assert_eq!(count(client, "count-Compliant").await, 2);
    assert_eq!(count(client, "count-Non-Compliant").await, 1);
    assert_eq!(count(client, "count-clusters").await, 3);
    let cells = client.find_all(Locator::Css("[data-configuration]")).await.unwrap();
    assert_eq!(cells.len(), 3);
    let failing_cell = "[data-cluster='store-1'][data-configuration='payments']";
    assert_eq!(
        client
            .find(Locator::Css(failing_cell))
            .await
            .unwrap()
            .attr("data-state")
            .await
            .unwrap()
            .as_deref(),
        Some("Non-Compliant")
    );
    screenshot(client, "overview.png").await;

    // drill-down: the failing configuration's error, then an applied one's objects and conditions
    drill_down(client, failing_cell, "the branch is missing").await;
    screenshot(client, "drilldown.png").await;
    close_with_escape(client).await;
    drill_down(
        client,
        "[data-cluster='edge-1'][data-configuration='platform']",
        "Kustomization",
    )
    .await;
    screenshot(client, "objects.png").await;
    // an Owner may ask for a reconcile: the button says when it asked
    client
        .find(Locator::Css("[data-testid='reconcile']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        client,
        "the reconcile to be asked",
        "const s = document.querySelector(\"[data-testid='reconcile-status']\"); return !!s && /Asked at/.test(s.textContent)",
    )
    .await;
    let asked = api
        .get(&with_version(
            &config_path(&cluster_path(SUBSCRIPTION, "rg", "edge-1"), "platform"),
            FLUX_API,
        ))
        .await;
    assert_eq!(asked.body["properties"]["complianceState"], "Compliant", "{asked:?}");
    close_with_escape(client).await;

    // a live update: the failing cluster recovers; the cell and the counts follow without a reload
    wait_for(
        client,
        "the live stream to connect",
        "const l = document.querySelector(\"[data-testid='live']\"); return !!l && /live/i.test(l.textContent)",
    )
    .await;
    report(&failing, &[], &[]).await;
    wait_for(
        client,
        "the cell to turn Compliant",
        &format!("const c = document.querySelector(\"{failing_cell}\"); return !!c && c.dataset.state === 'Compliant'"),
    )
    .await;
    wait_for(
        client,
        "the counts to follow",
        "const c = document.querySelector(\"[data-testid='count-Compliant']\"); return /\\b3\\b/.test(c.textContent)",
    )
    .await;

    // filtered by the commit the agents applied (a hash prefix): the reports without one leave the grid
    let platform = api
        .get(&with_version(
            &config_path(&cluster_path(SUBSCRIPTION, "rg", "edge-1"), "platform"),
            FLUX_API,
        ))
        .await;
    let commit = platform.body["properties"]["sourceSyncedCommitId"]
        .as_str()
        .unwrap()
        .to_owned();
    let hash = &commit[commit.rfind(':').unwrap() + 1..][..8];
    let field = client.find(Locator::Css("#f-commit")).await.unwrap();
    field.send_keys(hash).await.unwrap();
    client
        .find(Locator::Css("#filters button[type='submit']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        client,
        "the grid narrowed to the commit",
        "const cells = [...document.querySelectorAll('[data-configuration]')]; \
         return cells.length === 2 && cells.every((c) => c.dataset.configuration === 'platform') \
         && location.hash.includes('commit=')",
    )
    .await;
    let label = client
        .find(Locator::Css("[data-cluster='edge-1'][data-configuration='platform']"))
        .await
        .unwrap()
        .attr("aria-label")
        .await
        .unwrap()
        .unwrap_or_default();
    assert!(label.contains(&hash[..7]), "the cell names its commit: {label}");
    client
        .find(Locator::Css("#clear-filters"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    wait_for(
        client,
        "the grid back to every configuration",
        "return document.querySelectorAll('[data-configuration]').length === 3",
    )
    .await;

    // a Reader sees the configuration but is offered no reconcile
    client.goto(&format!("{}/#", api.server.base)).await.unwrap();
    client
        .execute("sessionStorage.clear(); location.reload(); return true", vec![])
        .await
        .unwrap();
    let reader = api
        .server
        .token("reader", &[(fluxplane_api::auth::Role::Reader, "/subscriptions/s")]);
    sign_in(client, &reader, SUBSCRIPTION).await;
    wait_for(
        client,
        "the first view, as a Reader",
        "return document.body.dataset.ready === 'true'",
    )
    .await;
    drill_down(
        client,
        "[data-cluster='edge-1'][data-configuration='platform']",
        "Kustomization",
    )
    .await;
    assert!(
        client
            .find_all(Locator::Css("[data-testid='reconcile']"))
            .await
            .unwrap()
            .is_empty(),
        "no reconcile for a Reader"
    );
    close_with_escape(client).await;

    // a subscription with nothing in it shows the empty state
    client.goto(&format!("{}/#", api.server.base)).await.unwrap();
    client
        .execute("sessionStorage.clear(); location.reload(); return true", vec![])
        .await
        .unwrap();
    sign_in(client, &api.token, "empty-subscription").await;
    wait_for(
        client,
        "the empty state",
        "const e = document.querySelector(\"[data-testid='empty']\"); return !!e && e.getClientRects().length > 0",
    )
    .await;
    screenshot(client, "empty.png").await;

    for agent in agents {
        agent.stop().await;
    }
    browser.client.clone().close().await.unwrap();
}
