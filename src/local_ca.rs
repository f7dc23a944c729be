//! `fluxplane dev`'s HTTPS: a certificate authority of its own, made on the first start and kept in the data
//! directory, so that a user who trusts it (curl's `--cacert`, `REQUESTS_CA_BUNDLE`, a browser's authorities) does
//! so once; and a server certificate it signs at every start, for the addresses `dev` is reached at (127.0.0.1,
//! ::1, localhost and the listen address), which `dev` then serves like any `--tls-cert`.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use chrono::{Datelike, Duration, Utc};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// How long the CA lasts: as long as anyone keeps a data directory.
const CA_DAYS: i64 = 10 * 365;
/// How long a server certificate lasts (signed anew at every start); Apple's clients refuse more than 825 days.
const SERVER_DAYS: i64 = 365;

/// The files of `dev`'s TLS, all in `<data-dir>/tls/`.
#[derive(Debug, Clone)]
pub struct LocalTls {
    /// The CA's certificate: what clients trust.
    pub ca: PathBuf,
    /// The server's certificate chain and key, for `--tls-cert` and `--tls-key`.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl LocalTls {
    pub fn in_data_dir(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.pem"),
            key: dir.join("server-key.pem"),
        }
    }

    fn ca_key(&self) -> PathBuf {
        self.ca.with_file_name("ca-key.pem")
    }
}

/// Makes the CA unless the data directory has one, and signs a server certificate for `listen` with it.
pub fn prepare(data_dir: &Path, listen: SocketAddr) -> anyhow::Result<LocalTls> {
    let files = LocalTls::in_data_dir(data_dir);
    let ca = authority(&files)?;
    let key = KeyPair::generate().context("generating the server's key")?;
    let certificate = server_params(listen)?
        .signed_by(&key, &ca)
        .context("signing the server's certificate")?;
    write_private(&files.key, key.serialize_pem().as_bytes())?;
    std::fs::write(&files.cert, certificate.pem()).with_context(|| format!("writing {}", files.cert.display()))?;
    Ok(files)
}

/// The CA of the data directory, made and saved if there is none.
fn authority(files: &LocalTls) -> anyhow::Result<Issuer<'static, KeyPair>> {
    let ca_key = files.ca_key();
    match (files.ca.exists(), ca_key.exists()) {
        (true, true) => {
            let read = |path: &Path| {
                std::fs::read_to_string(path).with_context(|| format!("reading dev's CA {}", path.display()))
            };
            let key = KeyPair::from_pem(&read(&ca_key)?)
                .with_context(|| format!("{} holds no key dev can sign with", ca_key.display()))?;
            Issuer::from_ca_cert_pem(&read(&files.ca)?, key)
                .with_context(|| format!("{} is not a CA certificate dev can read", files.ca.display()))
        }
        (false, false) => {
            let dir = files.ca.parent().expect("a folder");
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            let key = KeyPair::generate().context("generating the CA's key")?;
            let params = ca_params();
            let certificate = params.self_signed(&key).context("signing the CA's certificate")?;
            write_private(&ca_key, key.serialize_pem().as_bytes())?;
            std::fs::write(&files.ca, certificate.pem()).with_context(|| format!("writing {}", files.ca.display()))?;
            tracing::info!(path = %files.ca.display(), "made a CA for dev's HTTPS");
            Ok(Issuer::new(params, key))
        }
        // half a CA: making a new one would silently untrust the old one wherever a user trusted it
        _ => bail!(
            "{} and {} belong together and one is missing; remove the other to make a new CA (which clients must \
             then trust again)",
            files.ca.display(),
            ca_key.display()
        ),
    }
}

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // a name of its own, so that two machines' CAs trusted side by side are told apart
    let mut suffix = [0u8; 4];
    rand::fill(&mut suffix);
    let suffix: String = suffix.iter().map(|byte| format!("{byte:02x}")).collect();
    params
        .distinguished_name
        .push(DnType::CommonName, format!("fluxplane dev CA {suffix}"));
    params
        .distinguished_name
        .push(DnType::OrganizationName, "fluxplane dev");
    set_validity(&mut params, CA_DAYS);
    params
}

fn server_params(listen: SocketAddr) -> anyhow::Result<CertificateParams> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let host = listen.ip();
    if !host.is_unspecified() && !host.is_loopback() {
        names.push(host.to_string());
    }
    let mut params = CertificateParams::new(names).context("the server certificate's names")?;
    params.distinguished_name.push(DnType::CommonName, "fluxplane dev");
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    set_validity(&mut params, SERVER_DAYS);
    Ok(params)
}

/// Valid from yesterday (clocks differ) for `days`.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let date = |at: chrono::DateTime<Utc>| rcgen::date_time_ymd(at.year(), at.month() as u8, at.day() as u8);
    let now = Utc::now();
    params.not_before = date(now - Duration::days(1));
    params.not_after = date(now + Duration::days(days));
}

/// Writes a private key readable by its owner only.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        // an existing file keeps its mode when opened: make sure it is private
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    file.write_all(contents)
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use fluxplane_api::config::TlsFiles;
    use fluxplane_api::tls::Certificates;
    use rustls::client::danger::ServerCertVerifier;
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;

    #[test]
    fn the_ca_is_made_once_and_signs_a_server_certificate_at_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let first = prepare(dir.path(), "127.0.0.1:8080".parse().unwrap()).unwrap();
        let ca = std::fs::read(&first.ca).unwrap();
        let first_cert = std::fs::read(&first.cert).unwrap();
        #[cfg(unix)]
        for key in [first.key.clone(), first.ca_key()] {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
                0o600,
                "{key:?}"
            );
        }

        let second = prepare(dir.path(), "127.0.0.1:8080".parse().unwrap()).unwrap();
        assert_eq!(std::fs::read(&second.ca).unwrap(), ca, "the CA is kept");
        assert_ne!(
            std::fs::read(&second.cert).unwrap(),
            first_cert,
            "a new server certificate"
        );
        // what dev serves loads as any --tls-cert does, and chains to the kept CA
        let served = Certificates::load(TlsFiles {
            cert: second.cert.clone(),
            key: second.key.clone(),
        })
        .unwrap();
        let chain = served.chain();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(&ca).unwrap()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        for name in ["localhost", "127.0.0.1", "::1"] {
            verifier
                .verify_server_cert(
                    &chain[0],
                    &[],
                    &rustls_pki_types::ServerName::try_from(name).unwrap(),
                    &[],
                    rustls_pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|err| panic!("{name}: {err}"));
        }
        assert!(
            verifier
                .verify_server_cert(
                    &chain[0],
                    &[],
                    &rustls_pki_types::ServerName::try_from("example.com").unwrap(),
                    &[],
                    rustls_pki_types::UnixTime::now(),
                )
                .is_err(),
            "only dev's own names"
        );
    }

    #[test]
    fn a_listen_address_beyond_loopback_is_among_the_names() {
        let params = server_params("192.0.2.7:8080".parse().unwrap()).unwrap();
        let names = format!("{:?}", params.subject_alt_names);
        assert!(names.contains("192.0.2.7") && names.contains("localhost"), "{names}");
        let params = server_params("0.0.0.0:8080".parse().unwrap()).unwrap();
        assert_eq!(params.subject_alt_names.len(), 3, "no name for every address");
    }

    #[test]
    fn half_a_ca_is_an_error_rather_than_a_new_ca() {
        let dir = tempfile::tempdir().unwrap();
        let files = prepare(dir.path(), "127.0.0.1:0".parse().unwrap()).unwrap();
        std::fs::remove_file(files.ca_key()).unwrap();
        let message = format!("{:#}", prepare(dir.path(), "127.0.0.1:0".parse().unwrap()).unwrap_err());
        assert!(
            message.contains("ca-key.pem") && message.contains("belong together"),
            "{message}"
        );
        std::fs::write(files.ca_key(), "not a key").unwrap();
        let message = format!("{:#}", prepare(dir.path(), "127.0.0.1:0".parse().unwrap()).unwrap_err());
        assert!(message.contains("ca-key.pem"), "{message}");
    }
}
