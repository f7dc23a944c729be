//! Ceilings: what the same machine does in the same run when the control plane's own work is taken away, so that
//! every figure also reads as a fraction of what the machine allows, whatever the machine.
//!
//! - The HTTP ceiling (`FixedServer`): the same HTTP stack as the server (axum and hyper on tokio, on 127.0.0.1
//!   port 0 in this process), answering fixed bodies of the sizes the server answered, driven by the scenario's own
//!   client code with the same request pattern and concurrency. Agents' polls are held and woken by writes as the
//!   server's are, by pollers in a process of their own (`fluxplane-bench ceiling-pollers`).
//! - The database ceiling (`Db`): the same database, through a pool of its own (see `Db::open`), answering
//!   the scenario's query shapes directly through sqlx: writes go to a scratch table with the columns of
//!   `flux_configurations` (no triggers, no foreign keys), reads to the real tables.

use std::ops::Range;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post, put};
use fluxplane_agent::identity::Identity;
use fluxplane_api::testing::Backend;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Row;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::types::Json;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::{JoinHandle, JoinSet};

use crate::Target;
use crate::fleet::{
    ApplyArgs, fleet_cluster, loopback_source, print_receipts, raise_file_limit, run_until_stdin_closes,
};
use crate::propagation::{Exchange, Receipt};

/// A figure's ceiling: its value in the figure's unit, and the figure as a fraction of it.
#[derive(Debug, Serialize)]
pub(crate) struct Ceiling {
    pub(crate) value: f64,
    /// How much of the ceiling the figure reaches: the ceiling's time over the figure's for times, the figure's
    /// rate over the ceiling's for rates. 1 is the ceiling itself.
    pub(crate) fraction: f64,
    pub(crate) method: String,
}

impl Ceiling {
    /// For a time, where less is better.
    pub(crate) fn time(figure: f64, ceiling: f64, method: &str) -> Self {
        Self {
            value: ceiling,
            fraction: ceiling / figure,
            method: method.to_owned(),
        }
    }

    /// For a rate, where more is better.
    pub(crate) fn rate(figure: f64, ceiling: f64, method: &str) -> Self {
        Self {
            value: ceiling,
            fraction: figure / ceiling,
            method: method.to_owned(),
        }
    }
}

/// A JSON document of exactly `bytes` bytes (at least 10): `{"pad":"xx…"}`.
pub(crate) fn padded(bytes: usize) -> Value {
    json!({"pad": "x".repeat(bytes.saturating_sub(10))})
}

/// The name a ceiling poller prints its receipts under.
pub(crate) fn poller_name(i: usize) -> String {
    format!("poller-{i:05}")
}

/// How long the HTTP ceiling holds a poll without a write: as the server's agents ask.
const POLL_WAIT: Duration = Duration::from_secs(30);

struct Fixed {
    /// Answered by `/body/{i}`, whatever the method.
    bodies: Vec<Bytes>,
    /// Each poller's generation: a write bumps it, which answers the poller's held poll.
    polls: Vec<watch::Sender<i64>>,
    waiting: AtomicUsize,
    poll_answer: Bytes,
    report_answer: Bytes,
    write_answer: Bytes,
    closing: watch::Sender<bool>,
}

/// The HTTP ceiling's server: the server's HTTP stack answering fixed bodies.
pub(crate) struct FixedServer {
    pub(crate) base: String,
    fixed: Arc<Fixed>,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl FixedServer {
    /// Serves `bodies` at `/body/{i}`; `pollers` polls at `/poll/{i}`, answered with the desired state's size of
    /// `exchange`, reports at `/report/{i}` with its answer's size, and writes at `/write/{i}` (poller i) and
    /// `/write/{from}/{to}` (pollers `from` to `to - 1`), answered with `write_answer`.
    pub(crate) async fn start(
        bodies: Vec<Bytes>,
        pollers: usize,
        exchange: Exchange,
        write_answer: Bytes,
    ) -> anyhow::Result<Self> {
        let body = |bytes| Bytes::from(serde_json::to_vec(&padded(bytes)).expect("a JSON value"));
        let fixed = Arc::new(Fixed {
            bodies,
            polls: (0..pollers).map(|_| watch::channel(0).0).collect(),
            waiting: AtomicUsize::new(0),
            poll_answer: body(exchange.answer),
            report_answer: body(exchange.accepted),
            write_answer,
            closing: watch::channel(false).0,
        });
        let app = Router::new()
            .route("/body/{i}", any(fixed_body))
            .route("/poll/{i}", get(poll))
            .route("/report/{i}", post(report))
            .route("/write/{i}", put(write))
            .route("/write/{from}/{to}", put(write_range))
            .with_state(fixed.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app.into_make_service())
                .with_graceful_shutdown(async {
                    let _ = signal.await;
                })
                .await
        });
        Ok(Self {
            base,
            fixed,
            shutdown,
            task,
        })
    }

    pub(crate) fn body_url(&self, i: usize) -> String {
        format!("{}/body/{i}", self.base)
    }

    pub(crate) fn write_url(&self, poller: usize) -> String {
        format!("{}/write/{poller}", self.base)
    }

    /// The URL of one write waking the pollers of `pollers` at once.
    pub(crate) fn write_range_url(&self, pollers: Range<usize>) -> String {
        format!("{}/write/{}/{}", self.base, pollers.start, pollers.end)
    }

    /// How many polls it holds.
    pub(crate) fn waiting(&self) -> usize {
        self.fixed.waiting.load(Ordering::Relaxed)
    }

    /// Answers the polls it holds and stops.
    pub(crate) async fn stop(self) {
        self.fixed.closing.send_replace(true);
        let _ = self.shutdown.send(());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

fn json_answer(body: Bytes) -> Response {
    ([(CONTENT_TYPE, "application/json")], body).into_response()
}

// Each handler takes the request body as the server's handlers do: read whole before answering.
async fn fixed_body(State(fixed): State<Arc<Fixed>>, Path(i): Path<usize>, _body: Bytes) -> Response {
    json_answer(fixed.bodies[i].clone())
}

async fn report(State(fixed): State<Arc<Fixed>>, Path(_): Path<usize>, _body: Bytes) -> Response {
    json_answer(fixed.report_answer.clone())
}

async fn write(State(fixed): State<Arc<Fixed>>, Path(i): Path<usize>, _body: Bytes) -> Response {
    fixed.polls[i].send_modify(|generation| *generation += 1);
    json_answer(fixed.write_answer.clone())
}

async fn write_range(
    State(fixed): State<Arc<Fixed>>,
    Path((from, to)): Path<(usize, usize)>,
    _body: Bytes,
) -> Response {
    let Some(polls) = fixed.polls.get(from..to) else {
        return axum::http::StatusCode::NOT_FOUND.into_response();
    };
    for poll in polls {
        poll.send_modify(|generation| *generation += 1);
    }
    json_answer(fixed.write_answer.clone())
}

#[derive(Deserialize)]
struct After {
    after: i64,
}

/// Counts a held poll while it lives.
struct Held(Arc<Fixed>);

impl Drop for Held {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn poll(State(fixed): State<Arc<Fixed>>, Path(i): Path<usize>, Query(query): Query<After>) -> Response {
    let mut changes = fixed.polls[i].subscribe();
    let mut closing = fixed.closing.subscribe();
    if *changes.borrow_and_update() <= query.after {
        fixed.waiting.fetch_add(1, Ordering::Relaxed);
        let _held = Held(fixed.clone());
        tokio::select! {
            _ = changes.changed() => {}
            () = tokio::time::sleep(POLL_WAIT) => {}
            _ = closing.wait_for(|closing| *closing) => {}
        }
    }
    let generation = *changes.borrow();
    (
        [("x-generation", generation.to_string())],
        json_answer(fixed.poll_answer.clone()),
    )
        .into_response()
}

/// Source addresses the ceiling's agent-like clients connect from, one after the other: 127.0.1.2 and up.
const CEILING_ADDRESSES: usize = 250;

/// An HTTP client as `fluxplane_agent::client::ControlPlane::new` builds its own, for the `agent`th agent-like
/// client of a ceiling, to the server at `base`. Without TLS roots, as the simulator's agents' (the ceiling's server
/// speaks plain HTTP). To a loopback server it connects from an address of its own (127.0.1.2 and up, in turn):
/// from 127.0.0.1, where the system chose each connection's port, 10,000 pollers ran out of ports after the
/// simulator's 10,000 agents, whose connections, bound to 127.0.0.2 (`fleet::source_address`) and then in TIME_WAIT
/// for a minute, held ports the system no longer chose for any connection (`Cannot assign requested address`).
pub(crate) fn agent_http(base: &str, agent: usize) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .tls_certs_only([])
        .local_address(loopback_source(base, 1, agent, CEILING_ADDRESSES))
        .connect_timeout(Duration::from_secs(10))
        .user_agent(concat!("fluxplane-agent/", env!("CARGO_PKG_VERSION")))
        .build()
}

#[derive(Debug, clap::Args)]
pub struct PollersArgs {
    /// Base URL of the HTTP ceiling's server.
    #[arg(long)]
    base: String,
    /// Pollers to run, one per poll slot of the server.
    #[arg(long)]
    pollers: usize,
    /// Size of each report's body.
    #[arg(long)]
    report_bytes: usize,
    #[command(flatten)]
    apply: ApplyArgs,
}

/// `fluxplane-bench ceiling-pollers`: the simulated agents' request pattern against the HTTP ceiling's server, until
/// standard input closes: each poller long-polls, and on a new generation reports, after the apply delay.
pub async fn pollers(args: PollersArgs) -> anyhow::Result<()> {
    raise_file_limit(args.pollers)?;
    let report = Arc::new(padded(args.report_bytes));
    // signed as an agent's for a cluster id as long as the simulator's, so that the header is an agent's size;
    // one for all, since the ceiling's server checks none
    let token: Arc<str> = Identity::generate(&args.base, &fleet_cluster(0))?
        .identity
        .token()?
        .value
        .into();
    let (sender, receipts) = mpsc::unbounded_channel();
    let mut pollers = JoinSet::new();
    for i in 0..args.pollers {
        let (base, report, token, sender) = (args.base.clone(), report.clone(), token.clone(), sender.clone());
        pollers.spawn(poller(i, base, report, token, args.apply.apply().delay, sender));
    }
    drop(sender);
    run_until_stdin_closes(pollers, print_receipts(receipts)).await
}

async fn poller(
    i: usize,
    base: String,
    report: Arc<Value>,
    token: Arc<str>,
    delay: Duration,
    receipts: mpsc::UnboundedSender<Receipt>,
) -> anyhow::Result<()> {
    let http = agent_http(&base, i)?;
    let mut generation = 0;
    loop {
        let polled = http
            .get(format!("{base}/poll/{i}?after={generation}"))
            .timeout(POLL_WAIT + Duration::from_secs(15))
            .bearer_auth(&*token)
            .send()
            .await;
        let response = match polled {
            Ok(response) => response,
            Err(_) if receipts.is_closed() => return Ok(()),
            Err(err) => return Err(err.into()),
        };
        let current: i64 = response
            .headers()
            .get("x-generation")
            .and_then(|value| value.to_str().ok()?.parse().ok())
            .context("a poll's answer without its generation")?;
        response.json::<IgnoredAny>().await?;
        let received = Instant::now();
        if current <= generation {
            continue;
        }
        generation = current;
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let answer = http
            .post(format!("{base}/report/{i}"))
            .timeout(Duration::from_secs(30))
            .bearer_auth(&*token)
            .json(&*report)
            .send()
            .await?;
        answer.error_for_status()?.json::<IgnoredAny>().await?;
        let _ = receipts.send(Receipt {
            name: poller_name(i),
            generation,
            received,
            reported: Instant::now(),
            failed: false,
            exchange: Exchange::default(),
            reconcile_requested_at: None,
        });
    }
}

#[derive(Clone)]
enum Pool {
    Postgres(PgPool),
    Sqlite(SqlitePool),
}

/// Runs `$body` with `$pool` bound to the engine's own pool: one text of each query for both engines, as the
/// server's `sql_store!` does.
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match &$db.pool {
            Pool::Postgres($pool) => $body,
            Pool::Sqlite($pool) => $body,
        }
    };
}

const SCRATCH_POSTGRES: &str = "CREATE TABLE bench_ceiling_configurations (\
     id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY, cluster_id BIGINT NOT NULL, name TEXT COLLATE \"C\" NOT NULL, \
     spec JSONB NOT NULL, secrets_version BIGINT, generation BIGINT NOT NULL, etag TEXT NOT NULL, \
     provisioning_state TEXT NOT NULL, compliance_state TEXT NOT NULL, observed JSONB NOT NULL, \
     system_data JSONB NOT NULL, reported_generation BIGINT, failure TEXT, UNIQUE (cluster_id, name))";
const SCRATCH_SQLITE: &str = "CREATE TABLE bench_ceiling_configurations (\
     id INTEGER PRIMARY KEY AUTOINCREMENT, cluster_id INTEGER NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL, \
     secrets_version INTEGER, generation INTEGER NOT NULL, etag TEXT NOT NULL, provisioning_state TEXT NOT NULL, \
     compliance_state TEXT NOT NULL, observed TEXT NOT NULL, system_data TEXT NOT NULL, reported_generation INTEGER, \
     failure TEXT, UNIQUE (cluster_id, name))";
const DROP_SCRATCH: &str = "DROP TABLE IF EXISTS bench_ceiling_configurations";
/// A configuration PUT's write: create, or update what is there.
const UPSERT: &str = "INSERT INTO bench_ceiling_configurations (cluster_id, name, spec, generation, etag, \
     provisioning_state, compliance_state, observed, system_data) \
     VALUES ($1, $2, $3, 1, $4, 'Creating', 'Pending', $5, $6) \
     ON CONFLICT (cluster_id, name) DO UPDATE SET spec = excluded.spec, \
     generation = bench_ceiling_configurations.generation + 1, etag = excluded.etag, \
     provisioning_state = excluded.provisioning_state, compliance_state = excluded.compliance_state, \
     observed = excluded.observed, system_data = excluded.system_data";
/// An agent's status report of one configuration.
const REPORT: &str = "UPDATE bench_ceiling_configurations SET provisioning_state = $1, compliance_state = $2, \
     observed = $3, reported_generation = generation WHERE cluster_id = $4 AND name = $5";
/// A cluster's desired state.
const DESIRED: &str = "SELECT * FROM bench_ceiling_configurations WHERE cluster_id = $1 ORDER BY name";
/// The configuration `$5` on each of the clusters `$6` to `$4 - 1`, in one statement: a policy assignment's
/// creation (all of them), or one batch of its rollout.
const ASSIGN: &str = "WITH RECURSIVE n(i) AS (SELECT CAST($6 AS BIGINT) UNION ALL SELECT i + 1 FROM n WHERE i + 1 < $4) \
     INSERT INTO bench_ceiling_configurations (cluster_id, name, spec, generation, etag, provisioning_state, \
     compliance_state, observed, system_data) \
     SELECT i, $5, $1, 1, 'e', 'Creating', 'Pending', $2, $3 FROM n";
/// A policy assignment's template change: every configuration it manages rewritten.
const REASSIGN: &str = "UPDATE bench_ceiling_configurations SET spec = $1, generation = generation + 1, etag = $2 \
     WHERE name = 'baseline'";
/// A transaction's writes without triggers or foreign-key checks (PostgreSQL, superuser).
const UNTRIGGERED: &str = "SET LOCAL session_replication_role = replica";
/// An assignment's creation as rows: each `baseline` configuration again under another name, as the server inserts
/// one (generation 1, due in 48 hours, managed), and a Flux extension for each cluster.
const ROWS_CREATED: [&str; 2] = [
    "INSERT INTO flux_configurations (cluster_id, name, spec, generation, etag, provisioning_state, \
     compliance_state, observed, system_data, generation_expires_at, managed_by, managed_by_id, managed_generation) \
     SELECT cluster_id, 'bench-rows', spec, 1, 'e', 'Creating', 'Pending', '{}', system_data, \
     now() + interval '48 hours', managed_by, managed_by_id, 1 FROM flux_configurations WHERE name = 'baseline'",
    "INSERT INTO extensions (cluster_id, name, extension_type, spec, generation, etag, provisioning_state, observed, \
     system_data, generation_expires_at) \
     SELECT cluster_id, 'bench-rows', 'bench.rows', spec, 1, 'e', 'Creating', observed, system_data, \
     now() + interval '48 hours' FROM extensions WHERE extension_type = 'microsoft.flux'",
];
/// An assignment's template change as rows: every copy rewritten as the server rewrites a managed configuration.
const ROWS_REWRITTEN: [&str; 1] = [
    "UPDATE flux_configurations SET spec = spec || '{\"namespace\": \"bench-rows\"}', generation = generation + 1, \
     etag = 'e2', provisioning_state = 'Updating', compliance_state = 'Pending', failure = NULL, \
     generation_expires_at = now() + interval '48 hours', managed_generation = 2 WHERE name = 'bench-rows'",
];
/// The copies gone again, as untracked as they came.
const ROWS_REMOVED: [&str; 2] = [
    "DELETE FROM flux_configurations WHERE name = 'bench-rows'",
    "DELETE FROM extensions WHERE extension_type = 'bench.rows'",
];
/// A push's request to re-check: the touched configurations (those of the first `$2` clusters) marked at once.
const MARK: &str = "UPDATE bench_ceiling_configurations SET etag = $1 WHERE cluster_id < $2";
/// One batch of a rollout of a template change: the configurations of the clusters `$3` to `$4 - 1` rewritten.
const REASSIGN_BATCH: &str = "UPDATE bench_ceiling_configurations SET spec = $1, generation = generation + 1, \
     etag = $2 WHERE name = 'baseline' AND cluster_id >= $3 AND cluster_id < $4";
/// Whether a batch of a rollout is done: how many of its configurations are reported Compliant at their generation.
const BATCH_COMPLIANT: &str = "SELECT COUNT(*) FROM bench_ceiling_configurations WHERE name = 'baseline' \
     AND cluster_id >= $1 AND cluster_id < $2 AND compliance_state = 'Compliant' AND reported_generation = generation";
/// A listing page, as the server reads it: one more row than the page, to know whether another follows.
const PAGE: &str = "SELECT * FROM flux_configurations WHERE cluster_id = $1 AND name > $2 ORDER BY name LIMIT $3";

/// A configuration's documents as the server stored them: the scratch rows carry the same, so that they weigh
/// what the real rows weigh.
#[derive(Clone)]
struct Documents {
    spec: Value,
    observed: Value,
    system_data: Value,
}

/// The propagation's database ceiling: per write, until the desired state is read (receipt) and until the
/// status is written (first status); both sorted.
pub(crate) struct DbPropagation {
    pub(crate) receipt: Vec<Duration>,
    pub(crate) status: Vec<Duration>,
}

/// The assignment's database ceiling, per step: the writing transaction, and the fleet's reads of it.
pub(crate) struct DbAssignmentStep {
    pub(crate) transaction: Duration,
    pub(crate) reach: Duration,
}

/// The database ceiling: the server's database, through a pool of its own.
#[derive(Clone)]
pub(crate) struct Db {
    pool: Pool,
}

impl Db {
    /// A pool on the target's database with the server's settings (`api/src/store/postgres.rs`, `sqlite.rs`),
    /// except that SQLite gets one connection: it lets one transaction write at a time, and writers queued in the
    /// pool wait only as long as the writer before them, where writers queued in SQLite's busy handler sleep in
    /// growing steps. One connection is what lets SQLite reach its ceiling.
    pub(crate) async fn open(target: &Target) -> anyhow::Result<Self> {
        let database = &target.server.database;
        let pool = match database.backend {
            Backend::Postgres => Pool::Postgres(
                PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect(&database.url)
                    .await?,
            ),
            Backend::Sqlite => {
                let options = SqliteConnectOptions::from_str(&database.url)?
                    .journal_mode(SqliteJournalMode::Wal)
                    .foreign_keys(true)
                    .busy_timeout(Duration::from_secs(10));
                Pool::Sqlite(
                    SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(options)
                        .await?,
                )
            }
        };
        Ok(Self { pool })
    }

    /// Does what autovacuum does after a scenario's seeding: every table analyzed and, with `vacuum`, PostgreSQL's
    /// vacuumed (SQLite keeps no dead row versions to clear).
    pub(crate) async fn maintain(&self, vacuum: bool) -> anyhow::Result<()> {
        match &self.pool {
            Pool::Postgres(pool) => {
                let sql = if vacuum { "VACUUM ANALYZE" } else { "ANALYZE" };
                sqlx::query(sql).execute(pool).await.map(drop)?;
            }
            Pool::Sqlite(pool) => sqlx::query("ANALYZE").execute(pool).await.map(drop)?,
        }
        Ok(())
    }

    /// Turns PostgreSQL's user triggers on the configurations table (the revision bump, the rollups, the history)
    /// off or back on; PostgreSQL only: SQLite cannot disable a trigger.
    pub(crate) async fn configuration_triggers(&self, enabled: bool) -> anyhow::Result<()> {
        let Pool::Postgres(pool) = &self.pool else {
            anyhow::bail!("only PostgreSQL can disable triggers");
        };
        let sql = if enabled {
            "ALTER TABLE flux_configurations ENABLE TRIGGER USER"
        } else {
            "ALTER TABLE flux_configurations DISABLE TRIGGER USER"
        };
        sqlx::query(sql).execute(pool).await?;
        Ok(())
    }

    /// The assignment's two writes (`baseline`'s configurations copied under another name with the Flux extension
    /// each brings, then rewritten) into the real tables with their indexes, each in a transaction of its own with
    /// every trigger and foreign key off, so that no bookkeeping runs: what the rows themselves cost, which no
    /// design of the bookkeeping can go below. The copies are deleted the same way after, so that the rollups
    /// and the history, which never saw them, stay exact. PostgreSQL only (`session_replication_role`, a
    /// superuser's setting); SQLite cannot turn its triggers off.
    pub(crate) async fn assignment_rows(&self) -> anyhow::Result<[Duration; 2]> {
        let Pool::Postgres(pool) = &self.pool else {
            anyhow::bail!("only PostgreSQL can write without its triggers");
        };
        let mut steps = [Duration::ZERO; 2];
        for (step, statements) in [&ROWS_CREATED[..], &ROWS_REWRITTEN[..], &ROWS_REMOVED[..]]
            .into_iter()
            .enumerate()
        {
            let started = Instant::now();
            let mut tx = pool.begin().await?;
            sqlx::query(UNTRIGGERED).execute(&mut *tx).await.context(
                "writing without triggers needs a superuser's session_replication_role: run the benchmark as one",
            )?;
            for statement in statements.iter().copied() {
                sqlx::query(statement).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            // the removal, last, is not timed
            if let Some(time) = steps.get_mut(step) {
                *time = started.elapsed();
            }
        }
        Ok(steps)
    }

    /// Closes the pool's connections before the scenario's database goes.
    pub(crate) async fn close(self) {
        on_pool!(self, pool => pool.close().await);
    }

    /// A fresh scratch table, and the documents of a real configuration to fill it with.
    async fn scratch(&self) -> anyhow::Result<Documents> {
        let (spec, observed, system_data): (String, String, String) = on_pool!(self, pool => {
            sqlx::query(DROP_SCRATCH).execute(pool).await?;
            let create = if matches!(self.pool, Pool::Postgres(_)) { SCRATCH_POSTGRES } else { SCRATCH_SQLITE };
            sqlx::query(create).execute(pool).await?;
            sqlx::query_as(
                "SELECT CAST(spec AS TEXT), CAST(observed AS TEXT), CAST(system_data AS TEXT) \
                 FROM flux_configurations LIMIT 1",
            )
            .fetch_optional(pool)
            .await?
            .context("no configuration to copy into the scratch table")?
        });
        Ok(Documents {
            spec: serde_json::from_str(&spec)?,
            observed: serde_json::from_str(&observed)?,
            system_data: serde_json::from_str(&system_data)?,
        })
    }

    async fn drop_scratch(&self) -> anyhow::Result<()> {
        on_pool!(self, pool => {
            sqlx::query(DROP_SCRATCH).execute(pool).await?;
        });
        Ok(())
    }

    /// `puts` upserts, each in a transaction, by `clients` concurrent clients each on clusters of its own, half
    /// creating and half updating: the throughput scenario's pattern. Answers the time they took.
    pub(crate) async fn puts(&self, clients: usize, puts: usize) -> anyhow::Result<Duration> {
        let documents = self.scratch().await?;
        let elapsed = concurrently(clients, |client| {
            let share = puts / clients + usize::from(client < puts % clients);
            let (db, documents) = (self.clone(), documents.clone());
            async move {
                for i in 0..share {
                    let name = format!("c{client}-{}", i % share.div_ceil(2).max(1));
                    db.upsert(client as i64, &name, &format!("{client}-{i}"), &documents)
                        .await?;
                }
                Ok(())
            }
        })
        .await?;
        self.drop_scratch().await?;
        Ok(elapsed)
    }

    async fn upsert(&self, cluster: i64, name: &str, etag: &str, documents: &Documents) -> anyhow::Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(UPSERT)
                .bind(cluster)
                .bind(name)
                .bind(Json(&documents.spec))
                .bind(etag)
                .bind(Json(&documents.observed))
                .bind(Json(&documents.system_data))
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn report(&self, cluster: i64, name: &str, compliant: bool, observed: &Value) -> anyhow::Result<()> {
        let (provisioning, compliance) = if compliant {
            ("Succeeded", "Compliant")
        } else {
            ("Failed", "Non-Compliant")
        };
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(REPORT)
                .bind(provisioning)
                .bind(compliance)
                .bind(Json(observed))
                .bind(cluster)
                .bind(name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    async fn desired(&self, cluster: i64) -> anyhow::Result<usize> {
        Ok(on_pool!(self, pool => sqlx::query(DESIRED).bind(cluster).fetch_all(pool).await?.len()))
    }

    /// The alert outbox's ceiling: `count` rows of `bytes` each inserted into a scratch table in one transaction,
    /// then leased and marked delivered in the outbox's batches, one after another: per `lease` rows, one
    /// transaction updating them all (the lease) and one updating each (their ends). Answers the time it took.
    pub(crate) async fn outbox(&self, count: usize, bytes: usize, lease: usize) -> anyhow::Result<Duration> {
        let message = "x".repeat(bytes);
        let ids: Vec<i64> = (0..count as i64).collect();
        let started = Instant::now();
        on_pool!(self, pool => {
            sqlx::query("DROP TABLE IF EXISTS bench_ceiling_outbox").execute(pool).await?;
            let create = if matches!(self.pool, Pool::Postgres(_)) {
                "CREATE TABLE bench_ceiling_outbox (id BIGINT PRIMARY KEY, state TEXT NOT NULL, message TEXT NOT NULL)"
            } else {
                "CREATE TABLE bench_ceiling_outbox (id INTEGER PRIMARY KEY, state TEXT NOT NULL, message TEXT NOT NULL)"
            };
            sqlx::query(create).execute(pool).await?;
            let mut tx = pool.begin().await?;
            for chunk in ids.chunks(500) {
                let mut insert = sqlx::QueryBuilder::new("INSERT INTO bench_ceiling_outbox (id, state, message) ");
                insert.push_values(chunk, |mut row, id| {
                    row.push_bind(*id).push_bind("Pending").push_bind(&message);
                });
                insert.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            for chunk in ids.chunks(lease) {
                let (first, last) = (chunk[0], chunk[chunk.len() - 1]);
                sqlx::query("UPDATE bench_ceiling_outbox SET state = 'Sending' WHERE id BETWEEN $1 AND $2")
                    .bind(first)
                    .bind(last)
                    .execute(pool)
                    .await?;
                let mut tx = pool.begin().await?;
                for id in chunk {
                    sqlx::query("UPDATE bench_ceiling_outbox SET state = 'Delivered' WHERE id = $1")
                        .bind(*id)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            sqlx::query("DROP TABLE bench_ceiling_outbox").execute(pool).await?;
        });
        Ok(started.elapsed())
    }

    /// Lists the configurations of the cluster named `cluster` page by page (`top` rows each, keyset by name, as
    /// the server pages), `repeat` times; answers the runs' times, sorted. The rows are fetched, not decoded.
    pub(crate) async fn listing(
        &self,
        cluster: &str,
        top: usize,
        count: usize,
        repeat: usize,
    ) -> anyhow::Result<Vec<Duration>> {
        let mut runs = Vec::with_capacity(repeat);
        for _ in 0..repeat {
            let started = Instant::now();
            let listed = on_pool!(self, pool => {
                let id: i64 = sqlx::query_scalar("SELECT id FROM clusters WHERE name = $1")
                    .bind(cluster)
                    .fetch_one(pool)
                    .await?;
                let (mut after, mut listed) = (String::new(), 0);
                loop {
                    let rows = sqlx::query(PAGE)
                        .bind(id)
                        .bind(&after)
                        .bind(top as i64 + 1)
                        .fetch_all(pool)
                        .await?;
                    let page = rows.len().min(top);
                    listed += page;
                    if rows.len() <= top {
                        break listed;
                    }
                    after = rows[page - 1].try_get("name")?;
                }
            });
            if listed != count {
                bail!("the database ceiling listed {listed} configurations, expected {count}");
            }
            runs.push(started.elapsed());
        }
        runs.sort();
        Ok(runs)
    }

    /// The summary's reads of the subscription `bench`, one snapshot each, `reads` times one at a time after
    /// `warmup`; answers their times, sorted.
    pub(crate) async fn summary(&self, warmup: usize, reads: usize) -> anyhow::Result<Vec<Duration>> {
        let mut latencies = Vec::with_capacity(reads);
        for read in 0..warmup + reads {
            let started = Instant::now();
            match &self.pool {
                Pool::Postgres(pool) => {
                    let mut tx = pool
                        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                        .await?;
                    let q = fluxplane_api::store::POSTGRES_SUMMARY;
                    for sql in [q.instances, q.clusters, q.unheard] {
                        sqlx::query(sql).bind("bench").bind("").fetch_all(&mut *tx).await?;
                    }
                    tx.commit().await?;
                }
                Pool::Sqlite(pool) => {
                    let mut tx = pool.begin().await?;
                    let q = fluxplane_api::store::SQLITE_SUMMARY;
                    for sql in [q.instances, q.clusters, q.unheard] {
                        sqlx::query(sql).bind("bench").bind("").fetch_all(&mut *tx).await?;
                    }
                    tx.commit().await?;
                }
            }
            if read >= warmup {
                latencies.push(started.elapsed());
            }
        }
        latencies.sort();
        Ok(latencies)
    }

    /// `writes` writes one at a time, each to the next of `clusters` clusters: the upsert, the desired state's read,
    /// the apply's `delay` as the agents wait it, the status report.
    pub(crate) async fn propagation(
        &self,
        clusters: usize,
        writes: usize,
        delay: Duration,
    ) -> anyhow::Result<DbPropagation> {
        let documents = self.scratch().await?;
        let mut timed = DbPropagation {
            receipt: Vec::with_capacity(writes),
            status: Vec::with_capacity(writes),
        };
        for i in 0..writes {
            let (cluster, name) = ((i % clusters) as i64, format!("propagation-{i}"));
            let started = Instant::now();
            self.upsert(cluster, &name, &i.to_string(), &documents).await?;
            self.desired(cluster).await?;
            timed.receipt.push(started.elapsed());
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            self.report(cluster, &name, true, &documents.observed).await?;
            timed.status.push(started.elapsed());
        }
        self.drop_scratch().await?;
        timed.receipt.sort();
        timed.status.sort();
        Ok(timed)
    }

    /// `agents` concurrent agents, each with `configurations` configurations, each sending `reports` reports of all
    /// of them back to back, one transaction per configuration as the server records them, alternating
    /// between compliant and not. Answers the time they took.
    pub(crate) async fn ingestion(
        &self,
        agents: usize,
        configurations: usize,
        reports: usize,
    ) -> anyhow::Result<Duration> {
        let documents = self.scratch().await?;
        for c in 0..configurations {
            self.assign(0..agents, &format!("cfg-{c}"), &documents).await?;
        }
        let elapsed = concurrently(agents, |agent| {
            let (db, observed) = (self.clone(), documents.observed.clone());
            async move {
                for report in 0..reports {
                    for c in 0..configurations {
                        db.report(agent as i64, &format!("cfg-{c}"), report % 2 == 0, &observed)
                            .await?;
                    }
                }
                Ok(())
            }
        })
        .await?;
        self.drop_scratch().await?;
        Ok(elapsed)
    }

    /// The burst's ceiling: `agents` agents' reports at once, each an UPDATE of each of its `configurations`
    /// configurations' status in a transaction of its own, as `ingestion` writes one report each. The agents go
    /// through as many workers as the pool has connections (16, the server's; SQLite's one): `ingestion`'s task per
    /// agent, each waiting for a connection, outlasts the pool's 10 s acquire timeout at 10,000 agents, and more
    /// waiters than connections write no faster. Answers the time until the last commits.
    pub(crate) async fn burst(&self, agents: usize, configurations: usize) -> anyhow::Result<Duration> {
        let documents = self.scratch().await?;
        for c in 0..configurations {
            self.assign(0..agents, &format!("cfg-{c}"), &documents).await?;
        }
        let workers = match self.pool {
            Pool::Postgres(ref pool) => pool.options().get_max_connections() as usize,
            Pool::Sqlite(ref pool) => pool.options().get_max_connections() as usize,
        };
        let next = Arc::new(AtomicUsize::new(0));
        let elapsed = concurrently(workers, |_| {
            let (db, observed, next) = (self.clone(), documents.observed.clone(), next.clone());
            async move {
                loop {
                    let agent = next.fetch_add(1, Ordering::Relaxed);
                    if agent >= agents {
                        return Ok(());
                    }
                    for c in 0..configurations {
                        db.report(agent as i64, &format!("cfg-{c}"), true, &observed).await?;
                    }
                }
            }
        })
        .await?;
        self.drop_scratch().await?;
        Ok(elapsed)
    }

    /// A policy assignment over `clusters` clusters: its creation (one configuration per cluster, in one
    /// transaction) and its template change (all of them rewritten, in one transaction), each followed by every
    /// cluster's agent at once reading its desired state. The agents' reports are left out: they follow the
    /// receipts the figure times, so the ceiling stays below what the figure needs of the database.
    pub(crate) async fn assignment(&self, clusters: usize) -> anyhow::Result<[DbAssignmentStep; 2]> {
        let documents = self.scratch().await?;
        let started = Instant::now();
        self.assign(0..clusters, "baseline", &documents).await?;
        let creation = started.elapsed();
        let creation_reach = self.wake(clusters).await?;
        let started = Instant::now();
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(REASSIGN)
                .bind(Json(&documents.spec))
                .bind("e2")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        let change = started.elapsed();
        let change_reach = self.wake(clusters).await?;
        self.drop_scratch().await?;
        Ok([
            DbAssignmentStep {
                transaction: creation,
                reach: creation_reach,
            },
            DbAssignmentStep {
                transaction: change,
                reach: change_reach,
            },
        ])
    }

    /// A push to the configurations of `touched` clusters among `clusters`, `pushes` times: the touched rows marked in
    /// one transaction, then each touched cluster at once reads its desired state and writes its status in a
    /// transaction of its own. Answers each cluster's time from the push's start to its status written, sorted.
    pub(crate) async fn push(&self, clusters: usize, touched: usize, pushes: usize) -> anyhow::Result<Vec<Duration>> {
        let documents = self.scratch().await?;
        self.assign(0..clusters, "app", &documents).await?;
        let mut times = Vec::with_capacity(pushes * touched);
        for push in 0..pushes {
            let started = Instant::now();
            on_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                sqlx::query(MARK)
                    .bind(format!("push-{push}"))
                    .bind(touched as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
            });
            let tasks: Vec<_> = (0..touched as i64)
                .map(|cluster| {
                    let (db, observed) = (self.clone(), documents.observed.clone());
                    tokio::spawn(async move {
                        db.desired(cluster).await?;
                        db.report(cluster, "app", true, &observed).await?;
                        Ok::<_, anyhow::Error>(started.elapsed())
                    })
                })
                .collect();
            for task in tasks {
                times.push(task.await??);
            }
        }
        self.drop_scratch().await?;
        times.sort();
        Ok(times)
    }

    /// The configuration `name` on each of the clusters `clusters`, in one transaction.
    async fn assign(&self, clusters: Range<usize>, name: &str, documents: &Documents) -> anyhow::Result<()> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(ASSIGN)
                .bind(Json(&documents.spec))
                .bind(Json(&documents.observed))
                .bind(Json(&documents.system_data))
                .bind(clusters.end as i64)
                .bind(name)
                .bind(clusters.start as i64)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        });
        Ok(())
    }

    /// A rollout over `clusters` clusters in batches of `batch`, one batch after another: its first deployment
    /// (each batch's configurations inserted in one transaction) and a template change (each batch's rewritten in
    /// one transaction). After each batch's write, every agent of the batch at once reads its desired state and
    /// reports it Compliant (a transaction per report, as the server records them), and one query counts the
    /// batch's Compliant configurations, the decision to start the next. Answers each rollout's total time.
    pub(crate) async fn rollout(&self, clusters: usize, batch: usize) -> anyhow::Result<[Duration; 2]> {
        let documents = self.scratch().await?;
        let mut totals = [Duration::ZERO; 2];
        for (step, total) in totals.iter_mut().enumerate() {
            for first in (0..clusters).step_by(batch) {
                let members = first..(first + batch).min(clusters);
                let started = Instant::now();
                if step == 0 {
                    self.assign(members.clone(), "baseline", &documents).await?;
                } else {
                    on_pool!(self, pool => {
                        let mut tx = pool.begin().await?;
                        sqlx::query(REASSIGN_BATCH)
                            .bind(Json(&documents.spec))
                            .bind(format!("e{step}"))
                            .bind(members.start as i64)
                            .bind(members.end as i64)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                    });
                }
                let observed = Arc::new(documents.observed.clone());
                concurrently(members.len(), |i| {
                    let (db, observed, cluster) = (self.clone(), observed.clone(), (first + i) as i64);
                    async move {
                        db.desired(cluster).await?;
                        db.report(cluster, "baseline", true, &observed).await
                    }
                })
                .await?;
                let compliant: i64 = on_pool!(self, pool => sqlx::query_scalar(BATCH_COMPLIANT)
                    .bind(members.start as i64)
                    .bind(members.end as i64)
                    .fetch_one(pool)
                    .await?);
                if compliant != members.len() as i64 {
                    bail!("the database ceiling's batch {members:?} has {compliant} Compliant configurations");
                }
                *total += started.elapsed();
            }
        }
        self.drop_scratch().await?;
        Ok(totals)
    }

    /// Every cluster's agent at once reading its desired state.
    async fn wake(&self, clusters: usize) -> anyhow::Result<Duration> {
        concurrently(clusters, |cluster| {
            let db = self.clone();
            async move { db.desired(cluster as i64).await.map(drop) }
        })
        .await
    }
}

/// Runs `work(0)` to `work(n - 1)` as tasks at once; answers how long they took together, or the first error.
async fn concurrently<F, Fut>(n: usize, work: F) -> anyhow::Result<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let started = Instant::now();
    let tasks: Vec<_> = (0..n).map(|i| tokio::spawn(work(i))).collect();
    for task in tasks {
        task.await??;
    }
    Ok(started.elapsed())
}
