//! The alert outbox's throughput. A fleet-wide change: every configuration of the fleet (`events` of them, a hundred
//! per cluster, none with an agent) fails at once as its change expires, in one transaction (the store call the
//! sweeper makes, as of two days later), and so does each cluster's Flux extension. Each failure is an event queued
//! in that transaction; a rule sends them all to one `Webhook` receiver in this process, which answers 200 at once.
//! Timed from the change's commit, when every event is in the outbox, to the receiver holding the last message:
//! the dispatch (events to messages), the leases, the signing and the posts, one receiver's messages one after
//! another as the outbox sends them. The change's own transaction is in the detail.
//!
//! HTTP ceiling: as many POSTs of a real message's bytes and headers to the same receiver, one after another, by a
//! client built as the outbox's. Database ceiling: as many rows inserted into a scratch table in one transaction,
//! then leased and marked delivered in the outbox's batches (a transaction leasing 50, a transaction recording
//! their ends), one batch after another: the durable writes a delivery log cannot do without.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use axum::http::HeaderMap;
use fluxplane_api::store::Store;
use serde_json::json;
use tokio::sync::Mutex;

use crate::ceiling::{Ceiling, Db};
use crate::{Figure, Target, ms, seed};

const FLEET: &str = "/subscriptions/bench/providers/Fluxplane.Fleet";
const PER_CLUSTER: usize = 100;
/// Deliveries a sender leases at a time (`alerts::outbox`).
const LEASE: usize = 100;
const KEY: &str = "bench-signing-key-0123456789abcdef0123456789";

/// A receiver that counts what it is sent and keeps the first message, to replay it for the ceiling.
#[derive(Default)]
struct Counting {
    received: AtomicUsize,
    first: Mutex<Option<(HeaderMap, Bytes)>>,
}

async fn receiver(counting: Arc<Counting>) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: Bytes| {
            let counting = counting.clone();
            async move {
                if counting.received.fetch_add(1, Ordering::SeqCst) == 0 {
                    *counting.first.lock().await = Some((headers, body));
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/hook", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((url, task))
}

/// Waits until `done` holds, polling every 10 ms, for at most `within`.
async fn until(what: &str, within: Duration, done: impl Fn() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !done() {
        if Instant::now() > deadline {
            bail!("waited {within:?} for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

pub async fn outbox(
    target: &Target,
    events: usize,
    figures: &mut Vec<Figure>,
    backend: &'static str,
) -> anyhow::Result<()> {
    let counting = Arc::new(Counting::default());
    let (url, receiver_task) = receiver(counting.clone()).await?;
    let api = "2026-01-01";
    target
        .put(
            &format!("{FLEET}/alertReceivers/bench"),
            api,
            &json!({"properties": {"receiverType": "Webhook", "url": url, "signingKey": KEY,
                                   "rateLimitPerMinute": 600_000}}),
        )
        .await?;
    target
        .put(
            &format!("{FLEET}/alertRules/expiries"),
            api,
            &json!({"properties": {"events": ["ChangeExpired"], "minimumIntervalInSeconds": 0,
                                   "receiverIds": [format!("{FLEET}/alertReceivers/bench")]}}),
        )
        .await?;
    let seeding = Instant::now();
    let mut paths = Vec::with_capacity(events);
    for c in 0..events.div_ceil(PER_CLUSTER) {
        let cluster = target.register(&format!("alerts-{c:04}")).await?;
        for i in 0..PER_CLUSTER.min(events - c * PER_CLUSTER) {
            paths.push(Target::config_path(&cluster, &format!("cfg-{i:03}")));
        }
    }
    seed(target, paths, 8).await?;
    target.maintain(true).await?;
    eprintln!(
        "  seeded {events} configurations in {:.1} s",
        seeding.elapsed().as_secs_f64()
    );

    let store: &Arc<dyn Store> = &target.server.state.store;
    let later = chrono::Utc::now() + chrono::Duration::hours(49);
    let changing = Instant::now();
    let expired = store.expire(later, &target.server.state.messages).await?.len();
    let change = changing.elapsed();
    // the events are in the outbox once the change has committed: from here on it is the outbox's work
    let started = Instant::now();
    if expired < events {
        bail!("{expired} expired, expected at least {events}");
    }
    let dispatched = {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let (waiting, _) = store.alert_queues().await?;
            if waiting == 0 {
                break started.elapsed();
            }
            if Instant::now() > deadline {
                bail!("{waiting} alert events still waiting after 10 minutes");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    until("every message", Duration::from_secs(600), || {
        counting.received.load(Ordering::SeqCst) >= expired
    })
    .await?;
    let elapsed = started.elapsed();
    let rate = expired as f64 / elapsed.as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = counting.received.load(Ordering::SeqCst);
    if received != expired {
        bail!("the receiver got {received} messages for {expired} events");
    }

    // the same client as the outbox's, the same receiver, a real message's bytes and headers
    let (headers, body) = counting.first.lock().await.clone().context("no message kept")?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let post = || async {
        let response = client
            .post(&url)
            .headers(headers.clone())
            .body(body.clone())
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("the HTTP ceiling's post: {}", response.status());
        }
        response.bytes().await?;
        Ok(())
    };
    // warmed up, then the better of two passes: a ceiling, on a machine whose other work comes and goes
    for _ in 0..100 {
        post().await?;
    }
    let mut http_rate: f64 = 0.0;
    for _ in 0..2 {
        let posting = Instant::now();
        for _ in 0..expired {
            post().await?;
        }
        http_rate = http_rate.max(expired as f64 / posting.elapsed().as_secs_f64());
    }
    receiver_task.abort();

    let db = Db::open(target).await?;
    let db_rate = expired as f64 / db.outbox(expired, body.len(), LEASE).await?.as_secs_f64();
    db.close().await;

    figures.push(Figure {
        backend,
        scenario: format!("alert outbox, {expired} events from one change"),
        value: rate,
        unit: "msg/s",
        target: None,
        met: None,
        detail: format!(
            "the change's transaction {:.0} ms; after its commit, all events dispatched at {:.0} ms, the last \
             message delivered at {:.0} ms; {} B each, signed",
            ms(change),
            ms(dispatched),
            ms(elapsed),
            body.len()
        ),
        http_ceiling: Some(Ceiling::rate(
            rate,
            http_rate,
            "as many POSTs of a real message (bytes and headers) to the same receiver, one after another, by a \
             client built as the outbox's; after 100 to warm up, the better of two passes",
        )),
        db_ceiling: Some(Ceiling::rate(
            rate,
            db_rate,
            "as many rows of the message's size inserted in one transaction, then per 100 one transaction leasing \
             them and one recording each one's end, one batch after another",
        )),
    });
    Ok(())
}
