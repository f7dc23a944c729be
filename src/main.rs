//! `fluxplane`: the one binary, with a subcommand per role. Each subcommand is a thin shell around the libraries.

mod dev;
mod local_ca;
mod logging;

/// jemalloc rather than glibc's allocator: with 10,000 agents long-polling, glibc's arenas kept about 31 KiB
/// resident per poll where jemalloc keeps 22 KiB (docs/benchmarks/latest.md, server memory), and the server stays
/// under its 256 MiB target.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::identity::Identity;
use fluxplane_agent::register::{Registration, register};
use fluxplane_agent::run;
use fluxplane_agent::targets::Target;
use fluxplane_agent::targets::dir::DirTarget;
use fluxplane_agent::targets::kube::KubeTarget;
use fluxplane_agent::tls::Trust;
use fluxplane_api::auth::{self, Role, RoleAssignment};
use fluxplane_api::config::{LogFormat, ServeConfig};
use fluxplane_api::{keys, openapi, server};

#[derive(Debug, Parser)]
#[command(
    name = "fluxplane",
    version,
    about = "GitOps control plane for fleets of Kubernetes clusters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane.
    Serve(ServeConfig),
    /// Run the control plane on the embedded store with generated keys, a demo Git repository and local agents,
    /// and print an Owner token.
    Dev(DevArgs),
    /// Mint a user token signed with the HS256 key.
    Token(TokenArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// The per-cluster agent.
    Agent {
        #[command(subcommand)]
        command: AgentCommand,
    },
    /// Create key files (32 random bytes, base64, mode 0600), such as the --jwt-secret-file every replica
    /// shares; existing files are left as they are.
    Keygen {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct DevArgs {
    #[command(flatten)]
    serve: ServeConfig,
    /// Local agents to start, each for its own cluster with a `dir` target in the data directory.
    #[arg(long, env = "FLUXPLANE_DEV_AGENTS", default_value_t = 3)]
    agents: usize,
    /// Address of the demo Git repository's HTTP server. The demo configurations point at it, so it stays the same
    /// from one start to the next.
    #[arg(long, env = "FLUXPLANE_DEV_GIT_LISTEN", default_value = "127.0.0.1:8081")]
    git_listen: SocketAddr,
    /// Listen on an address other machines can reach although the web UI hands an Owner token for every
    /// subscription to whoever loads it (`dev` refuses such an address without this flag).
    #[arg(long)]
    allow_remote: bool,
    /// Serve plain HTTP rather than HTTPS with a certificate from dev's own CA (`<data-dir>/tls/ca.pem`).
    #[arg(long, env = "FLUXPLANE_DEV_PLAIN_HTTP", conflicts_with_all = ["tls_cert", "tls_key"])]
    plain_http: bool,
}

#[derive(Debug, Subcommand)]
enum AgentCommand {
    /// Generate the agent's key pair, register its public key on the cluster (creating the cluster if needed)
    /// and write the identity file. Registering again rotates the key.
    Register(RegisterArgs),
    /// Run the agent: long-poll the cluster's desired state, materialise it in the target, report status.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RegisterArgs {
    /// The control plane's base URL.
    #[arg(long, env = "FLUXPLANE_SERVER")]
    server: String,
    /// A user token allowed to write the cluster (Contributor).
    #[arg(long, env = "FLUXPLANE_TOKEN")]
    token: String,
    /// The cluster's ARM id: /subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Kubernetes/connectedClusters/{name}.
    #[arg(long, env = "FLUXPLANE_CLUSTER")]
    cluster: String,
    /// A tag `key=value` to set on the cluster; repeat for several.
    #[arg(long = "tag", env = "FLUXPLANE_TAGS", value_delimiter = ',', value_parser = parse_tag)]
    tags: Vec<(String, String)>,
    /// The cluster's location (used when the cluster is created; default `local`).
    #[arg(long, env = "FLUXPLANE_LOCATION")]
    location: Option<String>,
    /// Where to write the identity (mode 0600).
    #[arg(long, env = "FLUXPLANE_AGENT_IDENTITY")]
    identity: PathBuf,
    #[command(flatten)]
    ca: CaFile,
}

/// The CA the control plane's certificate comes from, when the platform's roots do not know it.
#[derive(Debug, Args)]
struct CaFile {
    /// CA certificates (PEM) to trust for the control plane's certificate beside the platform's roots, such as
    /// `fluxplane dev`'s `data/tls/ca.pem`.
    #[arg(long = "ca-file", env = "FLUXPLANE_CA_FILE", value_name = "PEM")]
    path: Option<PathBuf>,
}

impl CaFile {
    fn trust(&self) -> anyhow::Result<Trust> {
        Trust::optional(self.path.as_deref())
    }
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The identity file written by `agent register`.
    #[arg(long, env = "FLUXPLANE_AGENT_IDENTITY")]
    identity: PathBuf,
    /// Where to materialise the configurations: `kube` applies them to the cluster the agent runs in (or the one the
    /// kubeconfig names); `dir:PATH` writes their objects as YAML files under PATH.
    #[arg(long, env = "FLUXPLANE_AGENT_TARGET", value_parser = parse_target)]
    target: TargetArg,
    /// Longest wait of one desired-state poll.
    #[arg(long, env = "FLUXPLANE_POLL_WAIT", default_value = "30s", value_parser = humantime::parse_duration)]
    poll_wait: Duration,
    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "FLUXPLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(flatten)]
    ca: CaFile,
}

fn parse_tag(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("'{text}' is not key=value"))
}

#[derive(Debug, Clone)]
enum TargetArg {
    Kube,
    Dir(PathBuf),
}

fn parse_target(text: &str) -> Result<TargetArg, String> {
    match text.split_once(':') {
        None if text == "kube" => Ok(TargetArg::Kube),
        Some(("dir", path)) if !path.is_empty() => Ok(TargetArg::Dir(PathBuf::from(path))),
        _ => Err(format!("'{text}' is not a target: use kube or dir:PATH")),
    }
}

#[derive(Debug, Args)]
struct TokenArgs {
    /// Who the token names (`sub`); recorded as createdBy/lastModifiedBy.
    #[arg(long, env = "FLUXPLANE_TOKEN_SUBJECT")]
    subject: String,
    /// Role granted; repeat together with --scope for several assignments (comma-separated in the variable).
    #[arg(
        long,
        env = "FLUXPLANE_TOKEN_ROLE",
        value_delimiter = ',',
        value_enum,
        ignore_case = true,
        required = true
    )]
    role: Vec<Role>,
    /// Scope of the matching --role: `/`, `/subscriptions/{sub}` or `/subscriptions/{sub}/resourceGroups/{rg}`.
    #[arg(long, env = "FLUXPLANE_TOKEN_SCOPE", value_delimiter = ',', required = true)]
    scope: Vec<String>,
    /// How long the token is valid, e.g. `1h`, `30m`, `7d`.
    #[arg(long, env = "FLUXPLANE_TOKEN_TTL", default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// The HS256 secret file. Default: `<data-dir>/jwt-secret`.
    #[arg(long, env = "FLUXPLANE_JWT_SECRET_FILE")]
    jwt_secret_file: Option<PathBuf>,
    #[arg(long, env = "FLUXPLANE_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    #[arg(long, env = "FLUXPLANE_JWT_ISSUER", default_value = "fluxplane")]
    jwt_issuer: String,
    #[arg(long, env = "FLUXPLANE_JWT_AUDIENCE", default_value = "fluxplane")]
    jwt_audience: String,
    /// The server's tenant (`tid`), when it was given one with its own --tenant-id.
    #[arg(long, env = "FLUXPLANE_TENANT_ID")]
    tenant_id: Option<uuid::Uuid>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // every TLS client of the process (the agents', reqwest's) uses rustls with ring
    fluxplane_agent::tls::install_crypto_provider();
    match Cli::parse().command {
        Command::Serve(config) => {
            logging::init(config.log_format, None)?;
            let generate = config.uses_default_store();
            server::run(config, generate, |_| {}).await
        }
        Command::Dev(DevArgs {
            serve: mut config,
            agents,
            git_listen,
            allow_remote,
            plain_http,
        }) => {
            dev::check_listen(config.listen, allow_remote)?;
            logging::init(
                config.log_format,
                (agents > 0).then(|| dev::agents_log(&config)).as_deref(),
            )?;
            // the keys first: the web UI's sign-in is filled with a token they sign
            fluxplane_api::keys::prepare(&config, true)?;
            config.ui_sign_in = Some(dev::ui_sign_in(&config)?);
            config.managed_identity = Some(dev::managed_identity(&config)?);
            // HTTPS unless told otherwise or given a certificate: Azure's clients send tokens over nothing else
            let ca = if plain_http || config.tls_cert.is_some() {
                None
            } else {
                let tls = local_ca::prepare(&config.data_dir, config.listen)?;
                config.tls_cert = Some(tls.cert);
                config.tls_key = Some(tls.key);
                Some(tls.ca)
            };
            let demo = config.clone();
            let options = dev::Demo {
                agents,
                git_listen,
                trust: Trust::optional(ca.as_deref())?,
                ca,
            };
            server::run(config, true, move |address| {
                tokio::spawn(dev::start(demo, address, options));
            })
            .await
        }
        Command::Token(args) => {
            println!("{}", mint(&args)?);
            Ok(())
        }
        Command::Openapi => {
            print!("{}", openapi::document_json());
            Ok(())
        }
        Command::Agent { command } => agent(command).await,
        Command::Keygen { files } => {
            for file in files {
                let created = keys::ensure_key_file(&file)?;
                println!(
                    "{} {}",
                    if created { "created" } else { "kept existing" },
                    file.display()
                );
            }
            Ok(())
        }
    }
}

async fn agent(command: AgentCommand) -> anyhow::Result<()> {
    match command {
        AgentCommand::Register(args) => {
            let registration = Registration {
                trust: args.ca.trust()?,
                server: args.server,
                user_token: args.token,
                cluster_id: args.cluster,
                tags: args.tags.into_iter().collect(),
                location: args.location,
            };
            let identity = register(&registration, &args.identity).await?;
            println!(
                "registered {} with a new key; identity written to {}",
                identity.cluster_id,
                args.identity.display()
            );
            Ok(())
        }
        AgentCommand::Run(args) => {
            logging::init(args.log_format, None)?;
            let trust = args.ca.trust()?;
            let identity = Identity::load(&args.identity)?;
            let control_plane = ControlPlane::trusting(identity, &trust)?;
            let target: Box<dyn Target> = match &args.target {
                TargetArg::Kube => Box::new(KubeTarget::from_environment().await?),
                TargetArg::Dir(path) => Box::new(DirTarget::new(path)?),
            };
            let options = run::Options {
                poll_wait: args.poll_wait,
                ..Default::default()
            };
            let agent = run::Agent::new(control_plane, target, options).await?;
            agent.run(server::shutdown_signal()).await
        }
    }
}

fn mint(args: &TokenArgs) -> anyhow::Result<String> {
    anyhow::ensure!(
        args.role.len() == args.scope.len(),
        "give one --scope for each --role ({} roles, {} scopes)",
        args.role.len(),
        args.scope.len()
    );
    let roles = args
        .role
        .iter()
        .zip(&args.scope)
        .map(|(role, scope)| RoleAssignment::parse(*role, scope))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let path = args
        .jwt_secret_file
        .clone()
        .unwrap_or_else(|| args.data_dir.join("jwt-secret"));
    let secret = auth::read_secret_file(&path).context("the token is signed with the server's HS256 secret")?;
    let ttl = chrono::Duration::from_std(args.ttl).context("--ttl is too long")?;
    let tenant = args
        .tenant_id
        .unwrap_or_else(|| fluxplane_api::config::default_tenant(&args.jwt_issuer));
    auth::mint(
        &secret,
        &args.jwt_issuer,
        &args.jwt_audience,
        &args.subject,
        roles,
        ttl,
        tenant,
    )
}
