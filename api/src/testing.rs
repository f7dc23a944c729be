//! Test support shared by this crate's tests and the end-to-end tests: a fresh database per test on either
//! backend, and a real server on port 0.
//!
//! PostgreSQL comes from `FLUXPLANE_TEST_POSTGRES_URL` (default `postgres://postgres@127.0.0.1:5432/postgres`).
//! When it cannot be reached the PostgreSQL half of a test is skipped with a message, except under `CI=true`,
//! where it fails: CI must never pass without exercising the production backend.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sqlx::Connection;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::auth::{self, Role, RoleAssignment};
use crate::clusters::service::Clusters;
use crate::config::{LogFormat, ServeConfig};
use crate::extensions::service::Extensions;
use crate::fleet::assignments::service::Assignments;
use crate::fleet::groups_service::Groups;
use crate::fleet::receivers::service::GitReceivers;
use crate::flux::service::Configurations;
use crate::lifecycle::Lifetimes;
use crate::state::AppState;
use crate::store::{self, Store};
use crate::turns::Turns;
use crate::vault::Vault;

/// The two store backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Runs the test body once per backend, as `sqlite` and `postgres` tests in a module named after the test.
#[macro_export]
macro_rules! on_both_backends {
    ($(#[$meta:meta])* $name:ident, $body:ident) => {
        $(#[$meta])*
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$body($crate::testing::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$body($crate::testing::Backend::Postgres).await
            }
        }
    };
}

fn admin_url() -> String {
    std::env::var("FLUXPLANE_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A database made for one test, removed when dropped.
pub struct TestDatabase {
    pub url: String,
    pub backend: Backend,
    /// Holds the SQLite file, the key files and anything else the test writes.
    pub dir: TempDir,
    postgres_name: Option<String>,
}

impl TestDatabase {
    /// A fresh, empty database, or `None` when PostgreSQL is unreachable outside CI (the test is then skipped).
    pub async fn create(backend: Backend) -> Option<Self> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        match backend {
            Backend::Sqlite => Some(Self {
                url: format!("sqlite://{}?mode=rwc", dir.path().join("fluxplane.db").display()),
                backend,
                dir,
                postgres_name: None,
            }),
            Backend::Postgres => {
                let admin = admin_url();
                let connected = tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin)).await;
                let mut conn = match connected {
                    Ok(Ok(conn)) => conn,
                    failure => {
                        let why = match failure {
                            Ok(Err(err)) => err.to_string(),
                            _ => "timed out".to_owned(),
                        };
                        assert!(
                            !in_ci(),
                            "CI=true: the PostgreSQL tests must run, but PostgreSQL is unreachable: {why}"
                        );
                        eprintln!("skipping the PostgreSQL half of this test: {why}");
                        return None;
                    }
                };
                let name = format!("fluxplane_test_{}", uuid::Uuid::new_v4().simple());
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .expect("creating a test database");
                let url = match admin.rsplit_once('/') {
                    Some((server, _)) => format!("{server}/{name}"),
                    None => panic!("FLUXPLANE_TEST_POSTGRES_URL must name a database"),
                };
                Some(Self {
                    url,
                    backend,
                    dir,
                    postgres_name: Some(name),
                })
            }
        }
    }

    /// The same database for another server; only the original drops it.
    fn shared(&self) -> TestDatabase {
        TestDatabase {
            url: self.url.clone(),
            backend: self.backend,
            dir: tempfile::tempdir().expect("a temporary directory"),
            postgres_name: None,
        }
    }

    pub async fn store(&self) -> Arc<dyn Store> {
        store::connect(&self.url).await.expect("opening the test store")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let Some(name) = self.postgres_name.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot block on async work: use a thread of our own.
        let admin = admin_url();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut conn)
                .await?;
                Ok::<_, sqlx::Error>(())
            })?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(())
        })
        .join();
    }
}

/// A server configuration for tests: keys in `dir`, the given database, port 0.
pub fn test_config(dir: &std::path::Path, database_url: &str) -> ServeConfig {
    ServeConfig {
        listen: "127.0.0.1:0".parse().expect("an address"),
        database_url: Some(database_url.to_owned()),
        data_dir: dir.to_path_buf(),
        tls_cert: None,
        tls_key: None,
        public_url: None,
        jwt_secret_file: Some(dir.join("jwt-secret")),
        secrets_key_file: None,
        jwks_file: None,
        jwt_algorithm: None,
        jwt_issuer: "fluxplane".to_owned(),
        jwt_audience: "fluxplane".to_owned(),
        tenant_id: None,
        offline_after: std::time::Duration::from_secs(300),
        secret_ttl: std::time::Duration::from_secs(48 * 3600),
        pending_ttl: std::time::Duration::from_secs(48 * 3600),
        sweep_interval: std::time::Duration::from_millis(200),
        history_retention: std::time::Duration::from_secs(30 * 24 * 3600),
        alert_retry_delay: std::time::Duration::from_millis(200),
        alert_give_up_after: std::time::Duration::from_secs(24 * 3600),
        alert_request_timeout: std::time::Duration::from_secs(5),
        alert_backlog: 10_000,
        ui_sign_in: None,
        managed_identity: None,
        max_body_bytes: 1024 * 1024,
        max_connections: 50_000,
        header_read_timeout: std::time::Duration::from_secs(30),
        request_timeout: std::time::Duration::from_secs(60),
        http2_max_streams: 256,
        log_format: LogFormat::Text,
    }
}

/// The real app, serving on a port of its own until dropped.
pub struct TestServer {
    pub address: SocketAddr,
    pub base: String,
    pub state: AppState,
    pub database: TestDatabase,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Starts a server on a fresh database, or `None` when the backend is unavailable (see `TestDatabase`).
    pub async fn start(backend: Backend) -> Option<Self> {
        Self::start_with(backend, |_| {}).await
    }

    /// Like `start`, letting the test adjust the configuration first.
    pub async fn start_with(backend: Backend, adjust: impl FnOnce(&mut ServeConfig)) -> Option<Self> {
        let database = TestDatabase::create(backend).await?;
        let mut config = test_config(database.dir.path(), &database.url);
        adjust(&mut config);
        crate::keys::prepare(&config, true).expect("preparing keys");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding port 0");
        Some(Self::serve(database, config, listener).await)
    }

    /// Another server on the same database and keys: a second replica.
    pub async fn replica(&self) -> TestServer {
        let config = (*self.state.config).clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding port 0");
        Self::serve(self.database.shared(), config, listener).await
    }

    /// Stops the server and starts it again on the same address, database and keys (a restart).
    pub async fn restart(&mut self) {
        self.shutdown_now().await;
        let config = (*self.state.config).clone();
        let listener = tokio::net::TcpListener::bind(self.address)
            .await
            .expect("binding the same address again");
        let restarted = Self::serve(self.database.shared(), config, listener).await;
        self.state = restarted.state.clone();
        let mut restarted = restarted;
        self.shutdown = restarted.shutdown.take();
        self.task = restarted.task.take();
    }

    async fn serve(database: TestDatabase, config: ServeConfig, listener: tokio::net::TcpListener) -> TestServer {
        let store = database.store().await;
        let state = AppState::new(config, store).expect("building the app state");
        let address = listener.local_addr().expect("a bound address");
        let (shutdown, signal) = oneshot::channel::<()>();
        let task = tokio::spawn(crate::server::serve(listener, state.clone(), async {
            let _ = signal.await;
        }));
        TestServer {
            address,
            base: format!(
                "{}://{address}",
                if state.config.serves_tls() { "https" } else { "http" }
            ),
            state,
            database,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// A token for `subject` with the given role assignments, valid for an hour.
    pub fn token(&self, subject: &str, roles: &[(Role, &str)]) -> String {
        let secret = auth::read_secret_file(&self.state.config.jwt_secret_path()).expect("reading the JWT secret");
        let roles = roles
            .iter()
            .map(|(role, scope)| RoleAssignment::parse(*role, scope).expect("a valid scope"))
            .collect();
        auth::mint(
            &secret,
            "fluxplane",
            "fluxplane",
            subject,
            roles,
            chrono::Duration::hours(1),
            self.state.config.tenant(),
        )
        .expect("minting")
    }

    /// A token that may do anything anywhere.
    pub fn owner_token(&self) -> String {
        self.token("test-owner", &[(Role::Owner, "/")])
    }

    pub fn data_dir(&self) -> PathBuf {
        self.database.dir.path().to_path_buf()
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(mut self) {
        self.shutdown_now().await;
    }

    async fn shutdown_now(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

/// Runs `body` only when the backend is available.
pub async fn with_database<F, Fut>(backend: Backend, body: F)
where
    F: FnOnce(TestDatabase) -> Fut,
    Fut: Future<Output = ()>,
{
    if let Some(database) = TestDatabase::create(backend).await {
        body(database).await;
    }
}

/// The write services over one store, as the app builds them, for tests without HTTP.
#[derive(Clone)]
pub struct Services {
    pub clusters: Clusters,
    pub configurations: Configurations,
    pub extensions: Extensions,
    pub groups: Groups,
    pub assignments: Assignments,
    pub git_receivers: GitReceivers,
}

impl Services {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let lifetimes = Lifetimes {
            secrets: Duration::from_secs(48 * 3600),
            pending: Duration::from_secs(3600),
        };
        let turns = Arc::new(Turns::default());
        Self {
            clusters: Clusters::new(store.clone(), turns.clone(), lifetimes, Arc::new(lifetimes.messages())),
            configurations: Configurations::new(store.clone(), turns.clone(), lifetimes, Duration::from_secs(300)),
            extensions: Extensions::new(store.clone(), turns.clone(), lifetimes),
            groups: Groups::new(store.clone(), turns.clone(), lifetimes),
            assignments: Assignments::new(store.clone(), turns.clone(), lifetimes, Arc::default(), Arc::default()),
            git_receivers: GitReceivers::new(
                store,
                turns,
                Some(Arc::new(Vault::from_key(&[7u8; 32]).expect("a 32-byte key"))),
            ),
        }
    }
}

/// chromedriver and the headless Chromium it drives (Debian's `chromium` and `chromium-driver`), stopped when
/// dropped: for the web UI's end-to-end test and first-view benchmark (the `testing` feature's only).
#[cfg(feature = "testing")]
pub struct Browser {
    pub client: fantoccini::Client,
    driver: std::process::Child,
}

#[cfg(feature = "testing")]
impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

#[cfg(feature = "testing")]
impl Browser {
    /// Starts a session with a 1400×1000 window; `None` where chromium or chromedriver is not installed, which
    /// `CI=true` does not allow (CI installs them).
    pub async fn start() -> Option<Self> {
        let find = |candidates: &[&str]| candidates.iter().map(PathBuf::from).find(|p| p.exists());
        let driver = find(&["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]);
        let chromium = find(&["/usr/bin/chromium", "/usr/bin/chromium-browser"]);
        let (Some(driver), Some(chromium)) = (driver, chromium) else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true needs Debian's chromium and chromium-driver (scripts/test installs them)"
            );
            eprintln!("no chromium or chromedriver (apt-get install chromium chromium-driver): browser skipped");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let driver = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1000", "--force-device-scale-factor=1"]
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object literal")
        };
        let mut last_error = None;
        // chromedriver takes a moment to listen
        for _ in 0..50 {
            match fantoccini::ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
                .capabilities(capabilities.clone())
                .connect(&format!("http://127.0.0.1:{port}"))
                .await
            {
                Ok(client) => return Some(Self { client, driver }),
                Err(err) => last_error = Some(err),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        panic!("chromedriver did not start a session: {last_error:?}");
    }
}

/// Any JSON document up to a few levels deep, for property tests of what parses client input.
#[cfg(test)]
pub fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
    use proptest::prelude::*;
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from("[parameters('a')]")),
        Just(serde_json::Value::from("[[x")),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..6)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    })
}
