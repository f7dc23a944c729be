//! `fluxplane dev`: everything on one machine for trying fluxplane out. Beside the control plane on the embedded
//! store it makes a small demo Git repository (served over HTTP on an address of its own, the same on every start:
//! `--git-listen`), registers a few local agents with `dir` targets in the data directory, and gives each cluster a
//! demo configuration, so that a newcomer sees configurations turn Compliant within seconds. It serves HTTPS with a
//! certificate from a CA of its own (`local_ca`; `--plain-http` for HTTP), which the banner names and its agents
//! trust. The agents log to `<data-dir>/logs/agents.log`; the banner with the token comes last, once the demo has
//! settled.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::identity::Identity;
use fluxplane_agent::register::{Registration, register};
use fluxplane_agent::run::{Agent, Options};
use fluxplane_agent::targets::dir::DirTarget;
use fluxplane_agent::tls::Trust;
use fluxplane_api::auth::{self, Role, RoleAssignment};
use fluxplane_api::config::ServeConfig;
use fluxplane_api::config::{ManagedIdentity, SignIn};
use fluxplane_api::managed_identity;
use fluxplane_api::server;
use serde_json::json;
use tracing::Instrument;

pub const SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000000";
const RESOURCE_GROUP: &str = "dev";

fn cluster_id(index: usize) -> String {
    format!(
        "/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Kubernetes/connectedClusters/dev-{index}"
    )
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "fluxplane dev")
        .env("GIT_AUTHOR_EMAIL", "dev@fluxplane.invalid")
        .env("GIT_COMMITTER_NAME", "fluxplane dev")
        .env("GIT_COMMITTER_EMAIL", "dev@fluxplane.invalid")
        .output()
        .context("running git (is it installed?)")?;
    if !output.status.success() {
        bail!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The demo repository: `infrastructure/` and `apps/`, published as a bare repository under `served/`.
fn demo_repository(root: &Path) -> anyhow::Result<()> {
    let bare = root.join("served").join("fleet.git");
    if bare.join("HEAD").exists() {
        return Ok(());
    }
    let work = root.join("work");
    if !work.join(".git").exists() {
        let files = [
            (
                "infrastructure/namespace.yaml",
                "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: demo\n",
            ),
            (
                "apps/hello.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hello\n  namespace: demo\ndata:\n  greeting: hello from fluxplane\n",
            ),
        ];
        for (path, contents) in files {
            let file = work.join(path);
            std::fs::create_dir_all(file.parent().expect("a parent"))?;
            std::fs::write(file, contents)?;
        }
        git(&work, &["init", "-q", "-b", "main"])?;
        git(&work, &["add", "-A"])?;
        git(&work, &["commit", "-q", "-m", "A demo fleet repository"])?;
    }
    let work = std::fs::canonicalize(&work)?;
    std::fs::create_dir_all(root.join("served"))?;
    git(
        &root.join("served"),
        &[
            "clone",
            "-q",
            "--bare",
            work.to_str().context("a UTF-8 path")?,
            "fleet.git",
        ],
    )?;
    git(&bare, &["update-server-info"])?;
    Ok(())
}

/// Serves `root` as static files (Git's dumb HTTP protocol) on `listen`; answers the base URL.
async fn serve_files(root: &Path, listen: SocketAddr) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| {
        format!("serving the demo Git repository on {listen} (choose another address with --git-listen)")
    })?;
    let base = format!("http://{}", listener.local_addr()?);
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(root));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(base)
}

/// Where `dev` puts the demo.
#[derive(Debug, Clone)]
pub struct Demo {
    /// Local agents to start, each for a cluster `dev-{n}`.
    pub agents: usize,
    /// The demo Git repository's HTTP address.
    pub git_listen: SocketAddr,
    /// The CA file of dev's own certificate authority, when it serves HTTPS with it.
    pub ca: Option<PathBuf>,
    /// What the demo's clients (its setup, the agents) trust: dev's CA when it serves HTTPS with it.
    pub trust: Trust,
}

/// The file the local agents log to.
pub fn agents_log(config: &ServeConfig) -> std::path::PathBuf {
    config.data_dir.join("logs").join("agents.log")
}

/// How long the banner waits for the demo configurations to settle.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);

/// Sets up the demo against the control plane listening on `address`, then prints how to use it: last, so that
/// the token stays on screen.
pub async fn start(config: ServeConfig, address: SocketAddr, options: Demo) {
    let scheme = if config.serves_tls() { "https" } else { "http" };
    let url = config
        .public_url
        .clone()
        .unwrap_or_else(|| format!("{scheme}://{address}"));
    let token = match owner_token(&config) {
        Ok(token) => token,
        Err(err) => {
            eprintln!("fluxplane dev: no token: {err:#}");
            return;
        }
    };
    let agents = options.agents;
    // the demo's own requests carry a token of their own, so that the log can tell them from the user's
    let demo = if agents == 0 {
        Ok(None)
    } else {
        match self::token(&config, crate::logging::DEMO_CALLER) {
            Ok(demo_token) => demo(&config, &url, &demo_token, &options).await.map(Some),
            Err(err) => Err(err),
        }
    };
    let mut banner = vec![
        format!(
            "fluxplane dev is running on the {} store",
            if config.uses_default_store() {
                "embedded SQLite"
            } else {
                "given"
            }
        ),
        format!("  API:   {url}"),
        format!("  UI:    {url}/ (signed in as the owner)"),
        format!("  Docs:  {url}/docs"),
    ];
    let cacert = match &options.ca {
        Some(ca) => {
            let ca = ca.display();
            banner.push(format!(
                "  TLS:   the API's certificate is signed by dev's own CA, {ca}, kept across restarts: trust it once"
            ));
            banner.push(format!(
                "         (curl --cacert {ca}; Python, az: REQUESTS_CA_BUNDLE; Node: NODE_EXTRA_CA_CERTS; or a browser)"
            ));
            format!(" --cacert {ca}")
        }
        None => String::new(),
    };
    match demo {
        Ok(Some((repository, compliant))) => {
            banner.push(format!(
                "  Demo:  {agents} agents (clusters dev-1..dev-{agents}, files under {}, log in {}),",
                config.data_dir.join("clusters").display(),
                agents_log(&config).display()
            ));
            banner.push(format!(
                "         each with the configuration 'demo' of {repository} ({compliant} of {agents} Compliant)"
            ));
        }
        Ok(None) => {}
        Err(err) => banner.push(format!("  Demo:  not started: {err:#}")),
    }
    banner.push("  Owner token (every subscription, valid 24 hours):".to_owned());
    banner.push(format!("  export TOKEN={token}"));
    banner.push(format!(
        "  Try:   curl -s{cacert} -H \"Authorization: Bearer $TOKEN\" \"{url}/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/Microsoft.Kubernetes/connectedClusters/dev-1/providers/Microsoft.KubernetesConfiguration/fluxConfigurations?api-version=2025-04-01\""
    ));
    if let Some(identity) = &config.managed_identity {
        banner.push("  Azure CLI, azure-identity: dev's managed identity, Owner too (az login --identity):".to_owned());
        banner.push(format!(
            "  export IDENTITY_ENDPOINT={url}{} IDENTITY_HEADER={}",
            managed_identity::PATH,
            identity.header
        ));
    }
    banner.push("  Stop with Ctrl-C.".to_owned());
    // one write, so that no log line lands inside the banner
    println!("{}", banner.join("\n"));
}

/// What the web UI's sign-in is filled with: an Owner token and the demo's subscription.
/// Refuses an address reachable from other machines unless `allow_remote`: `dev` signs its web UI in as Owner of
/// every subscription, so whoever can load the page could do anything.
pub fn check_listen(listen: SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    if listen.ip().is_loopback() || allow_remote {
        return Ok(());
    }
    bail!(
        "fluxplane dev gives an Owner token for every subscription to anyone who loads its web UI, so it listens on \
         loopback addresses only; {listen} is reachable from other machines. Use 127.0.0.1, run `fluxplane serve` \
         (which hands out no token), or pass --allow-remote if every machine that can reach {listen} is trusted."
    )
}

pub fn ui_sign_in(config: &ServeConfig) -> anyhow::Result<SignIn> {
    Ok(SignIn {
        token: owner_token(config)?,
        subscription: SUBSCRIPTION.to_owned(),
    })
}

/// The managed identity whose token endpoint dev serves: its secret is made once in the data directory and kept, so
/// that the `export IDENTITY_ENDPOINT=... IDENTITY_HEADER=...` line of an earlier start keeps working, as the token
/// of an earlier banner does.
pub fn managed_identity(config: &ServeConfig) -> anyhow::Result<ManagedIdentity> {
    let path = config.data_dir.join("managed-identity-secret");
    fluxplane_api::keys::ensure_key_file(&path)?;
    // it travels in a header and an `export` line: printable text only (an edited file is refused, not mangled)
    let header = String::from_utf8(auth::read_secret_file(&path)?)
        .ok()
        .filter(|text| !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic()))
        .with_context(|| {
            format!(
                "{} must hold one word of printable ASCII, such as the base64 dev writes there (delete the file \
                 for a new one)",
                path.display()
            )
        })?;
    Ok(ManagedIdentity {
        header,
        signing_key: auth::read_secret_file(&config.jwt_secret_path())?,
    })
}

/// The Owner token the banner and the web UI hand out.
fn owner_token(config: &ServeConfig) -> anyhow::Result<String> {
    token(config, "dev-owner")
}

/// An Owner token of every subscription, valid 24 hours, naming `subject`.
fn token(config: &ServeConfig, subject: &str) -> anyhow::Result<String> {
    let secret = auth::read_secret_file(&config.jwt_secret_path())?;
    let owner = RoleAssignment::parse(Role::Owner, "/")?;
    auth::mint(
        &secret,
        &config.jwt_issuer,
        &config.jwt_audience,
        subject,
        vec![owner],
        chrono::Duration::hours(24),
        config.tenant(),
    )
}

/// The demo repository, the agents and their configurations; answers the repository's URL and how many of the
/// demo configurations were Compliant once they settled (or `SETTLE_TIMEOUT` passed).
async fn demo(config: &ServeConfig, url: &str, token: &str, options: &Demo) -> anyhow::Result<(String, usize)> {
    let root = config.data_dir.join("demo");
    demo_repository(&root)?;
    let repository = format!(
        "{}/fleet.git",
        serve_files(&root.join("served"), options.git_listen).await?
    );
    let http = fluxplane_agent::tls::http_client_trusting(&options.trust).build()?;
    let mut configurations = Vec::with_capacity(options.agents);
    for index in 1..=options.agents {
        let cluster = cluster_id(index);
        let span = tracing::info_span!(crate::logging::AGENT_SPAN, cluster = %format!("dev-{index}"));
        let agent = start_agent(config, url, token, index, &cluster, &options.trust)
            .instrument(span.clone())
            .await?;
        tokio::spawn(agent.run(server::shutdown_signal()).instrument(span));
        let body = json!({"properties": {
            "namespace": "demo",
            "gitRepository": {"url": repository, "repositoryRef": {"branch": "main"}, "syncIntervalInSeconds": 60},
            "kustomizations": {
                "infrastructure": {"path": "./infrastructure"},
                "apps": {"path": "./apps", "dependsOn": ["infrastructure"], "prune": true}
            }
        }});
        let configuration = format!(
            "{url}{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations/demo?api-version=2025-04-01"
        );
        let written = http.put(&configuration).bearer_auth(token).json(&body).send().await?;
        if !written.status().is_success() {
            bail!(
                "writing the demo configuration failed: {}",
                written.text().await.unwrap_or_default()
            );
        }
        configurations.push(configuration);
    }
    let compliant = settle(&http, token, &configurations).await;
    Ok((repository, compliant))
}

/// Registers the agent of `dev-{index}` (once: its identity is kept in the data directory) and makes it.
async fn start_agent(
    config: &ServeConfig,
    url: &str,
    token: &str,
    index: usize,
    cluster: &str,
    trust: &Trust,
) -> anyhow::Result<Agent> {
    let identity_path = config.data_dir.join("agents").join(format!("dev-{index}.json"));
    let identity = match Identity::load(&identity_path) {
        Ok(mut identity) => {
            // the address changes between runs when the port does
            identity.server = url.to_owned();
            identity
        }
        Err(_) => {
            let registration = Registration {
                server: url.to_owned(),
                user_token: token.to_owned(),
                cluster_id: cluster.to_owned(),
                tags: [
                    ("env".to_owned(), "dev".to_owned()),
                    ("agent".to_owned(), index.to_string()),
                ]
                .into(),
                location: Some("local".to_owned()),
                trust: trust.clone(),
            };
            register(&registration, &identity_path).await?
        }
    };
    let target = DirTarget::new(config.data_dir.join("clusters").join(format!("dev-{index}")))?;
    let options = Options {
        poll_wait: Duration::from_secs(30),
        ..Default::default()
    };
    Agent::new(ControlPlane::trusting(identity, trust)?, Box::new(target), options).await
}

/// Waits until the agents have answered on every configuration written (its provisioning state left `Creating` and
/// `Updating`), or `SETTLE_TIMEOUT` passed; answers how many are Compliant.
async fn settle(http: &reqwest::Client, token: &str, configurations: &[String]) -> usize {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let mut settled = 0;
        let mut compliant = 0;
        for configuration in configurations {
            let read = http.get(configuration).bearer_auth(token).send().await;
            let Ok(body) = async { read?.error_for_status()?.json::<serde_json::Value>().await }.await else {
                continue;
            };
            let properties = &body["properties"];
            if !matches!(properties["provisioningState"].as_str(), Some("Creating" | "Updating")) {
                settled += 1;
            }
            if properties["complianceState"] == "Compliant" {
                compliant += 1;
            }
        }
        if settled == configurations.len() || tokio::time::Instant::now() >= deadline {
            return compliant;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_managed_identitys_secret_is_made_once_and_kept_and_an_unprintable_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let config = fluxplane_api::testing::test_config(dir.path(), "sqlite::memory:");
        fluxplane_api::keys::prepare(&config, true).unwrap();
        let first = managed_identity(&config).unwrap();
        assert!(first.header.len() >= 40, "a 32-byte random secret");
        assert_eq!(managed_identity(&config).unwrap().header, first.header);
        assert_eq!(
            first.signing_key,
            auth::read_secret_file(&config.jwt_secret_path()).unwrap()
        );
        std::fs::write(dir.path().join("managed-identity-secret"), "two words\n").unwrap();
        let err = managed_identity(&config).unwrap_err();
        assert!(err.to_string().contains("printable"), "{err}");
    }

    #[test]
    fn dev_listens_beyond_loopback_only_when_allowed() {
        for local in ["127.0.0.1:8080", "[::1]:8080", "127.0.0.2:0"] {
            assert!(check_listen(local.parse().unwrap(), false).is_ok(), "{local}");
        }
        for remote in ["0.0.0.0:8080", "[::]:8080", "10.1.2.3:8080"] {
            let err = check_listen(remote.parse().unwrap(), false).unwrap_err();
            assert!(err.to_string().contains("--allow-remote"), "{err}");
            assert!(check_listen(remote.parse().unwrap(), true).is_ok(), "{remote}");
        }
    }
}
