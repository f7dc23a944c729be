//! HTTPS served by the server itself (`--tls-cert`, `--tls-key`): Azure's SDKs and CLI send a bearer token over
//! `https://` only, so fluxplane must be able to terminate TLS without a proxy in front of it.
//!
//! The files are loaded at start-up, where any problem is an error naming the file, and read again every
//! [`RELOAD_INTERVAL`]: a renewed certificate (cert-manager rewriting a secret's files, say) reaches the next
//! handshake without a restart. A rewrite that does not load (half written, a key that does not match the
//! certificate) is logged as an error, once, and the certificate in use stays; open connections keep the
//! certificate they were handshaken with. The files are read rather than watched for events: a Kubernetes secret
//! volume swaps a symbolic link, which file watchers see unreliably, and reading two small files every few seconds
//! costs nothing.
//!
//! rustls with ring's cryptography, as every TLS client of the process (`fluxplane_agent::tls`); TLS 1.2 and 1.3.
//! ALPN offers HTTP/2 and HTTP/1.1 (`server::serve` serves whichever the client picks).

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use anyhow::{Context, anyhow};
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{Error as TlsError, InconsistentKeys, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsFiles;

/// The ALPN name of HTTP/2, offered before HTTP/1.1's.
pub const ALPN_HTTP2: &[u8] = b"h2";
/// HTTP/1.1's ALPN identifier.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// How often the certificate and key files are read again for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);

fn provider() -> CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// The certificate new handshakes are answered with: the one the files held when they last loaded.
pub struct Certificates {
    files: TlsFiles,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Mutex<Seen>,
}

/// What the files held when last read: a digest rather than their contents, which include the private key.
#[derive(Default)]
struct Seen {
    digest: Option<[u8; 32]>,
    /// The last reload's failure, so that files left broken are reported once, not at every reading.
    failure: Option<String>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

/// What one reading of the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The files hold what they held: nothing to do.
    Unchanged,
    /// New contents, loaded: the next handshake gets them.
    Reloaded,
    /// New contents that do not load: the certificate in use stays. The message says why.
    Failed(String),
}

impl Certificates {
    /// Loads the files; an unreadable file, one that holds no PEM certificate or key, or a key that does not match
    /// the certificate is an error naming the file.
    pub fn load(files: TlsFiles) -> anyhow::Result<Arc<Self>> {
        let (cert, key) = read(&files)?;
        let certified = parse(&files, &cert, &key)?;
        Ok(Arc::new(Self {
            seen: Mutex::new(Seen {
                digest: Some(digest(&cert, &key)),
                failure: None,
            }),
            current: RwLock::new(Arc::new(certified)),
            files,
        }))
    }

    /// The certificate chain served now, server certificate first.
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.current().cert.clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Reads the files again and, if they changed and load, serves them from the next handshake on. Logs a
    /// reload, and a failure once for as long as the files stay as they are.
    pub fn reload(&self) -> Reload {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let outcome = match read(&self.files) {
            Ok((cert, key)) => {
                let digest = digest(&cert, &key);
                if seen.digest == Some(digest) {
                    return Reload::Unchanged;
                }
                seen.digest = Some(digest);
                match parse(&self.files, &cert, &key) {
                    Ok(certified) => {
                        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(certified);
                        Reload::Reloaded
                    }
                    Err(err) => Reload::Failed(format!("{err:#}")),
                }
            }
            // read again next time: the files may be in the middle of being replaced
            Err(err) => {
                seen.digest = None;
                Reload::Failed(format!("{err:#}"))
            }
        };
        match &outcome {
            Reload::Reloaded => {
                seen.failure = None;
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded; new connections get it");
            }
            Reload::Failed(message) if seen.failure.as_ref() != Some(message) => {
                tracing::error!(error = %message, "the TLS certificate files changed but do not load; still serving the previous certificate");
                seen.failure = Some(message.clone());
            }
            _ => {}
        }
        outcome
    }

    /// Reads the files again every `interval`, for ever (the server aborts it when it stops).
    pub async fn watch(self: Arc<Self>, interval: Duration) {
        let mut ticks = tokio::time::interval(interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            // reading files blocks: not on the runtime's threads
            let certificates = self.clone();
            if tokio::task::spawn_blocking(move || certificates.reload())
                .await
                .is_err()
            {
                tracing::error!("reloading the TLS certificate panicked");
            }
        }
    }

    /// What accepts TLS connections with the current certificate: HTTP/2 and HTTP/1.1 (offered by ALPN), no
    /// client certificates.
    pub fn acceptor(self: &Arc<Self>) -> anyhow::Result<TlsAcceptor> {
        // HTTP/2 first, as clients that speak both prefer it: an agent's poll is then a stream, not a connection
        self.offering(vec![ALPN_HTTP2.to_vec(), ALPN_HTTP1.to_vec()])
    }

    /// What accepts the TLS connections the server refuses at its connection cap: HTTP/1.1 alone, the protocol the
    /// refusal's 503 is written in (a client that had agreed on HTTP/2 could not read it).
    pub fn refusal_acceptor(self: &Arc<Self>) -> anyhow::Result<TlsAcceptor> {
        self.offering(vec![ALPN_HTTP1.to_vec()])
    }

    fn offering(self: &Arc<Self>, protocols: Vec<Vec<u8>>) -> anyhow::Result<TlsAcceptor> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = protocols;
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn read(files: &TlsFiles) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
    let read = |path: &Path, what: &str| {
        std::fs::read(path).with_context(|| format!("reading the TLS {what} {}", path.display()))
    };
    Ok((read(&files.cert, "certificate")?, read(&files.key, "private key")?))
}

fn digest(cert: &[u8], key: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update((cert.len() as u64).to_be_bytes());
    hasher.update(cert);
    hasher.update(key);
    hasher.finalize().into()
}

/// The certified key the files' contents make. Errors name the file, never quote the key.
fn parse(files: &TlsFiles, cert: &[u8], key: &[u8]) -> anyhow::Result<CertifiedKey> {
    let (cert_path, key_path) = (files.cert.display(), files.key.display());
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| anyhow!("{cert_path} is not a PEM certificate chain: {err}"))?;
    if chain.is_empty() {
        return Err(anyhow!(
            "{cert_path} holds no certificate (PEM: -----BEGIN CERTIFICATE-----)"
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(key)
        .map_err(|err| anyhow!("{key_path} holds no private key (PEM: PKCS#8, PKCS#1 or SEC1): {err}"))?;
    let key = provider()
        .key_provider
        .load_private_key(key)
        .map_err(|err| anyhow!("{key_path}: the private key cannot be used: {err}"))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(TlsError::InconsistentKeys(InconsistentKeys::Unknown)) => Ok(certified),
        Err(TlsError::InconsistentKeys(InconsistentKeys::KeyMismatch)) => Err(anyhow!(
            "the private key {key_path} does not match the certificate {cert_path} (the first certificate of the \
             file must be the server's own)"
        )),
        Err(err) => Err(anyhow!("{cert_path}: the server's certificate cannot be read: {err}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use rustls::pki_types::ServerName;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA and the certificates it signs for `localhost`.
    struct Authority {
        issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
        cert: CertificateDer<'static>,
    }

    impl Authority {
        fn new() -> Self {
            let mut params = rcgen::CertificateParams::default();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, "fluxplane test CA");
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap().der().clone();
            Self {
                issuer: rcgen::Issuer::new(params, key),
                cert,
            }
        }

        /// A server certificate's PEM and its key's PEM.
        fn server(&self) -> (String, String) {
            let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.signed_by(&key, &self.issuer).unwrap();
            (cert.pem(), key.serialize_pem())
        }
    }

    fn files(dir: &Path) -> TlsFiles {
        TlsFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    fn write(files: &TlsFiles, (cert, key): &(String, String)) {
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
    }

    fn der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    /// Handshakes with `acceptor` over a real socket as a client trusting `ca`, and answers the certificate the
    /// server presented.
    async fn served(acceptor: &TlsAcceptor, ca: &CertificateDer<'static>) -> CertificateDer<'static> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let acceptor = acceptor.clone();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let mut tls = acceptor.accept(stream).await.unwrap();
            tls.write_all(b"hello").await.unwrap();
            tls.shutdown().await.unwrap();
        });
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let mut tls = connector
            .connect(ServerName::try_from("localhost").unwrap(), stream)
            .await
            .expect("the handshake succeeds");
        let mut text = String::new();
        tls.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "hello");
        let presented = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        server.await.unwrap();
        presented
    }

    #[tokio::test]
    async fn a_rewritten_certificate_is_served_to_the_next_connection() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let ca = Authority::new();
        let first = ca.server();
        write(&files, &first);
        let certificates = Certificates::load(files.clone()).unwrap();
        let acceptor = certificates.acceptor().unwrap();
        assert_eq!(served(&acceptor, &ca.cert).await, der(&first.0));
        assert_eq!(certificates.reload(), Reload::Unchanged);

        let renewed = ca.server();
        write(&files, &renewed);
        assert_eq!(certificates.reload(), Reload::Reloaded);
        assert_eq!(served(&acceptor, &ca.cert).await, der(&renewed.0));
        assert_eq!(certificates.chain(), vec![der(&renewed.0)]);
    }

    #[tokio::test]
    async fn a_broken_rewrite_keeps_the_certificate_in_use_until_a_good_one_arrives() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let ca = Authority::new();
        let first = ca.server();
        write(&files, &first);
        let certificates = Certificates::load(files.clone()).unwrap();
        let acceptor = certificates.acceptor().unwrap();

        // half a renewal: the new certificate beside the old key
        let renewed = ca.server();
        std::fs::write(&files.cert, &renewed.0).unwrap();
        let Reload::Failed(message) = certificates.reload() else {
            panic!("a certificate with another's key loaded")
        };
        assert!(message.contains("does not match"), "{message}");
        assert_eq!(served(&acceptor, &ca.cert).await, der(&first.0));
        // the same broken files are not read as news again
        assert_eq!(certificates.reload(), Reload::Unchanged);

        std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
        assert!(matches!(certificates.reload(), Reload::Failed(_)));
        std::fs::remove_file(&files.key).unwrap();
        let Reload::Failed(message) = certificates.reload() else {
            panic!("a missing key loaded")
        };
        assert!(message.contains("tls.key"), "{message}");
        assert_eq!(served(&acceptor, &ca.cert).await, der(&first.0));

        write(&files, &renewed);
        assert_eq!(certificates.reload(), Reload::Reloaded);
        assert_eq!(served(&acceptor, &ca.cert).await, der(&renewed.0));
    }

    #[test]
    fn files_that_do_not_load_are_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let ca = Authority::new();
        let (cert, key) = ca.server();
        let (_, other_key) = ca.server();
        let error = |files: &TlsFiles| format!("{:#}", Certificates::load(files.clone()).unwrap_err());

        let missing = error(&files);
        assert!(
            missing.contains("tls.crt") && missing.contains("certificate"),
            "{missing}"
        );

        std::fs::write(&files.cert, &cert).unwrap();
        let missing_key = error(&files);
        assert!(missing_key.contains("tls.key"), "{missing_key}");

        std::fs::write(&files.key, &other_key).unwrap();
        let mismatched = error(&files);
        assert!(
            mismatched.contains("does not match") && mismatched.contains("tls.key") && mismatched.contains("tls.crt"),
            "{mismatched}"
        );

        // the files swapped: the key file holds no key
        std::fs::write(&files.key, &cert).unwrap();
        let not_a_key = error(&files);
        assert!(
            not_a_key.contains("tls.key") && not_a_key.contains("no private key"),
            "{not_a_key}"
        );
        assert!(!not_a_key.contains(&cert[40..80]), "the message quotes the file");

        std::fs::write(&files.cert, &key).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        let no_cert = error(&files);
        assert!(
            no_cert.contains("tls.crt") && no_cert.contains("no certificate"),
            "{no_cert}"
        );
        assert!(!no_cert.contains(&key[40..80]), "a key reached the message");

        write(&files, &(cert, key));
        assert!(Certificates::load(files).is_ok());
    }

    #[tokio::test]
    async fn the_watch_reads_the_files_again_on_its_interval() {
        let dir = tempfile::tempdir().unwrap();
        let files = files(dir.path());
        let ca = Authority::new();
        write(&files, &ca.server());
        let certificates = Certificates::load(files.clone()).unwrap();
        let watching = tokio::spawn(certificates.clone().watch(Duration::from_millis(50)));
        let renewed = ca.server();
        write(&files, &renewed);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while certificates.chain() != vec![der(&renewed.0)] {
            assert!(tokio::time::Instant::now() < deadline, "not reloaded");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        watching.abort();
    }
}
