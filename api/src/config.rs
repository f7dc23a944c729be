//! Server configuration: one clap struct whose every flag also reads a `FLUXPLANE_*` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Options of `fluxplane serve` (and of `dev`, which adds its own on top).
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address to listen on.
    #[arg(long, env = "FLUXPLANE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Database URL: `postgres://...` or `sqlite://...`. Default: a SQLite file in the data directory.
    #[arg(long, env = "FLUXPLANE_DATABASE_URL")]
    pub database_url: Option<String>,

    /// Directory for the embedded store and generated keys; created if missing.
    #[arg(long, env = "FLUXPLANE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Certificate chain (PEM, the server's own certificate first) to serve HTTPS with; without it the server
    /// speaks plain HTTP (behind a proxy that terminates TLS). Read again when it changes.
    #[arg(long, env = "FLUXPLANE_TLS_CERT", requires = "tls_key", value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1) of the --tls-cert certificate. Read again when it changes.
    #[arg(long, env = "FLUXPLANE_TLS_KEY", requires = "tls_cert", value_name = "PEM")]
    pub tls_key: Option<PathBuf>,

    /// Externally visible base URL for `nextLink` and `Azure-AsyncOperation` (default: from the request's Host).
    #[arg(long, env = "FLUXPLANE_PUBLIC_URL")]
    pub public_url: Option<String>,

    /// File holding the HS256 secret that signs user tokens. Default: `<data-dir>/jwt-secret` unless
    /// `--jwks-file` is given.
    #[arg(long, env = "FLUXPLANE_JWT_SECRET_FILE", conflicts_with = "jwks_file")]
    pub jwt_secret_file: Option<PathBuf>,

    /// File holding the key that seals the server's own credentials at rest (alert receivers' webhook URLs and
    /// signing keys, Git hosts' webhook secrets): 32 random bytes in base64. Default: `<data-dir>/secrets-key`,
    /// generated for the embedded store; every replica on a shared PostgreSQL needs the same file.
    #[arg(long, env = "FLUXPLANE_SECRETS_KEY_FILE")]
    pub secrets_key_file: Option<PathBuf>,

    /// JSON Web Key Set of the identity provider that signs user tokens (RS256 or ES256).
    #[arg(long, env = "FLUXPLANE_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// Algorithm user tokens must be signed with; never taken from the token itself.
    #[arg(long, env = "FLUXPLANE_JWT_ALGORITHM", value_enum)]
    pub jwt_algorithm: Option<JwtAlgorithm>,

    /// Required `iss` claim of user tokens.
    #[arg(long, env = "FLUXPLANE_JWT_ISSUER", default_value = "fluxplane")]
    pub jwt_issuer: String,

    /// Required `aud` claim of user tokens.
    #[arg(long, env = "FLUXPLANE_JWT_AUDIENCE", default_value = "fluxplane")]
    pub jwt_audience: String,

    /// The tenant this server answers for: the `tenantId` of its subscriptions and the `tid` claim of the tokens
    /// `fluxplane token` signs; a token with a `tid` naming another tenant is refused. Default: a GUID derived from
    /// the issuer, the same on every start.
    #[arg(long, env = "FLUXPLANE_TENANT_ID")]
    pub tenant_id: Option<uuid::Uuid>,

    /// A cluster whose agent has not been heard from for this long shows as Offline.
    #[arg(long, env = "FLUXPLANE_OFFLINE_AFTER", default_value = "5m", value_parser = humantime::parse_duration)]
    pub offline_after: std::time::Duration,

    /// Longest time any secret stays in the store, delivered or not.
    #[arg(long, env = "FLUXPLANE_SECRET_TTL", default_value = "48h", value_parser = humantime::parse_duration)]
    pub secret_ttl: std::time::Duration,

    /// A change its cluster's agent has not picked up within this long fails and must be applied again.
    #[arg(long, env = "FLUXPLANE_PENDING_TTL", default_value = "48h", value_parser = humantime::parse_duration)]
    pub pending_ttl: std::time::Duration,

    /// How often each replica enforces the time limits above.
    #[arg(long, env = "FLUXPLANE_SWEEP_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub sweep_interval: std::time::Duration,

    /// How long status transitions, writes and the summary's past (`asOf`) are kept.
    #[arg(long, env = "FLUXPLANE_HISTORY_RETENTION", default_value = "30d", value_parser = humantime::parse_duration)]
    pub history_retention: std::time::Duration,

    /// How long after an alert's failed delivery it is first tried again; each further wait doubles, up to an hour,
    /// less a random part of up to half.
    #[arg(long, env = "FLUXPLANE_ALERT_RETRY_DELAY", default_value = "10s", value_parser = humantime::parse_duration)]
    pub alert_retry_delay: std::time::Duration,

    /// An alert not delivered within this long of being queued is given up (its delivery shows Failed).
    #[arg(long, env = "FLUXPLANE_ALERT_GIVE_UP_AFTER", default_value = "24h", value_parser = humantime::parse_duration)]
    pub alert_give_up_after: std::time::Duration,

    /// How long a receiver may take to answer an alert before the attempt counts as failed.
    #[arg(long, env = "FLUXPLANE_ALERT_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub alert_request_timeout: std::time::Duration,

    /// Most alerts waiting for one receiver; past it new ones are dropped, counted on the receiver and in
    /// `fluxplane_alert_messages_dropped_total`.
    #[arg(long, env = "FLUXPLANE_ALERT_BACKLOG", default_value_t = 10_000)]
    pub alert_backlog: u32,

    /// What the web UI's sign-in is filled with (set by `fluxplane dev`, never from the command line).
    #[arg(skip)]
    pub ui_sign_in: Option<SignIn>,

    /// The managed identity whose token endpoint `fluxplane dev` serves (never from the command line: `serve`
    /// hands out no token, so it has no such endpoint).
    #[arg(skip)]
    pub managed_identity: Option<ManagedIdentity>,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "FLUXPLANE_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Most connections held open at once. Past it, a new connection takes the place of the one that has waited
    /// longest for a request, or, if every connection is busy, is answered 503. Lowered to fit the open-file
    /// limit.
    #[arg(long, env = "FLUXPLANE_MAX_CONNECTIONS", default_value_t = 50_000)]
    pub max_connections: usize,

    /// How long a connection may take to finish its TLS handshake, to send a request's headers, and stay idle
    /// between requests.
    #[arg(long, env = "FLUXPLANE_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: std::time::Duration,

    /// How long a request may take, body included, before it is answered 408 (agents' long-polls get their
    /// longest wait on top).
    #[arg(long, env = "FLUXPLANE_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: std::time::Duration,

    /// Most requests one HTTP/2 connection may have in progress at once (its concurrent streams). A load balancer
    /// or ingress speaking HTTP/2 to the server carries many agents' long-polls on one connection, one stream each.
    #[arg(long, env = "FLUXPLANE_HTTP2_MAX_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub http2_max_streams: u32,

    /// Log format; the level comes from RUST_LOG (default info).
    #[arg(long, env = "FLUXPLANE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The tenant of a server that names none: derived from its token issuer, so that `fluxplane token` and the server
/// agree without configuration.
pub fn default_tenant(issuer: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("fluxplane:tenant:{issuer}").as_bytes(),
    )
}

impl ServeConfig {
    pub fn tenant(&self) -> uuid::Uuid {
        self.tenant_id.unwrap_or_else(|| default_tenant(&self.jwt_issuer))
    }

    pub fn database_url(&self) -> String {
        self.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", self.data_dir.join("fluxplane.db").display()))
    }

    /// Whether the store is the embedded default, where generating missing keys into the data directory is safe
    /// (a shared PostgreSQL needs every replica to use the same keys, so there they must be given).
    pub fn uses_default_store(&self) -> bool {
        self.database_url.is_none()
    }

    /// The certificate and key to serve HTTPS with, or none for plain HTTP; one without the other is an error.
    pub fn tls_files(&self) -> anyhow::Result<Option<TlsFiles>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })),
            (None, None) => Ok(None),
            (Some(_), None) => anyhow::bail!("--tls-cert needs --tls-key, the certificate's private key"),
            (None, Some(_)) => anyhow::bail!("--tls-key needs --tls-cert, the certificate chain it belongs to"),
        }
    }

    /// Whether the server terminates TLS itself: then the URLs it writes say `https://` unless a proxy says
    /// otherwise (`X-Forwarded-Proto`).
    pub fn serves_tls(&self) -> bool {
        self.tls_cert.is_some()
    }

    pub fn secrets_key_path(&self) -> PathBuf {
        self.secrets_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("secrets-key"))
    }

    pub fn jwt_secret_path(&self) -> PathBuf {
        self.jwt_secret_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("jwt-secret"))
    }
}

/// The PEM files the server's TLS is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JwtAlgorithm {
    #[value(name = "HS256")]
    Hs256,
    #[value(name = "RS256")]
    Rs256,
    #[value(name = "ES256")]
    Es256,
}

/// What `fluxplane dev` fills the sign-in form with.
#[derive(Clone)]
pub struct SignIn {
    pub token: String,
    pub subscription: String,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("token", &"<redacted>")
            .field("subscription", &self.subscription)
            .finish()
    }
}

/// What `fluxplane dev`'s managed-identity endpoint needs (`managed_identity`): the secret its callers send as
/// `X-IDENTITY-HEADER`, and the HS256 key of the server's user tokens, which it signs with.
#[derive(Clone)]
pub struct ManagedIdentity {
    pub header: String,
    pub signing_key: Vec<u8>,
}

impl std::fmt::Debug for ManagedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedIdentity")
            .field("header", &"<redacted>")
            .field("signing_key", &"<redacted>")
            .finish()
    }
}
