//! `fluxplane`: the one binary, with a subcommand per role. Each subcommand is a thin shell around the libraries.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use fluxplane_api::auth::{self, Role, RoleAssignment};
use fluxplane_api::config::ServeConfig;
use fluxplane_api::{keys, openapi, server, telemetry};

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
    /// Run the control plane on the embedded store with generated keys, and print an Owner token.
    Dev(ServeConfig),
    /// Mint a user token signed with the HS256 key.
    Token(TokenArgs),
    /// Print the OpenAPI document.
    Openapi,
    /// Create key files (32 random bytes, base64, mode 0600) for --secret-key-file and --jwt-secret-file;
    /// existing files are left as they are.
    Keygen {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(config) => {
            telemetry::init(config.log_format);
            let generate = config.uses_default_store();
            server::run(config, generate, |_| {}).await
        }
        Command::Dev(config) => {
            telemetry::init(config.log_format);
            let banner = config.clone();
            server::run(config, true, move |address| print_dev_banner(&banner, address)).await
        }
        Command::Token(args) => {
            println!("{}", mint(&args)?);
            Ok(())
        }
        Command::Openapi => {
            print!("{}", openapi::document_json());
            Ok(())
        }
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
    auth::mint(&secret, &args.jwt_issuer, &args.jwt_audience, &args.subject, roles, ttl)
}

fn print_dev_banner(config: &ServeConfig, address: std::net::SocketAddr) {
    let token = auth::read_secret_file(&config.jwt_secret_path()).and_then(|secret| {
        let owner = RoleAssignment::parse(Role::Owner, "/")?;
        auth::mint(
            &secret,
            &config.jwt_issuer,
            &config.jwt_audience,
            "dev-owner",
            vec![owner],
            chrono::Duration::hours(24),
        )
    });
    let url = config.public_url.clone().unwrap_or_else(|| format!("http://{address}"));
    println!(
        "fluxplane dev is running on the {} store",
        if config.uses_default_store() {
            "embedded SQLite"
        } else {
            "given"
        }
    );
    println!("  API:   {url}");
    println!("  Docs:  {url}/docs");
    match token {
        Ok(token) => {
            println!("  Owner token (every subscription, valid 24 hours):");
            println!("  export TOKEN={token}");
        }
        Err(err) => println!("  (no token: {err:#})"),
    }
    println!("  Stop with Ctrl-C.");
}
