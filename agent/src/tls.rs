//! TLS: rustls with ring's cryptography, for every TLS client of the process (the agent's own HTTP client, kube's,
//! and any other reqwest client of the program embedding the agent). reqwest and kube default to aws-lc-rs, which
//! is built from C and dominated the release build; this workspace builds reqwest without a provider, so that one
//! must be installed before the first client is built: [`http_client`] does it, and so should a program's `main`.
//!
//! The control plane's certificate is checked against the platform's roots and, with `--ca-file`, the CAs of that
//! file too ([`Trust`]): a control plane whose certificate comes from a private CA, such as `fluxplane dev`'s.

use std::path::Path;

use anyhow::{Context, anyhow};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

/// The CAs the agent trusts beside the platform's roots.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    extra: Vec<reqwest::Certificate>,
}

impl Trust {
    /// The CA certificates of a PEM file (one or more). A file that cannot be read, holds no certificate, or holds
    /// one that cannot be a trust anchor is an error naming it.
    pub fn from_ca_file(path: &Path) -> anyhow::Result<Self> {
        let pem = std::fs::read(path).with_context(|| format!("reading the CA file {}", path.display()))?;
        Self::from_pem(&pem).with_context(|| format!("the CA file {}", path.display()))
    }

    /// The CA certificates of PEM text.
    pub fn from_pem(pem: &[u8]) -> anyhow::Result<Self> {
        let certificates = CertificateDer::pem_slice_iter(pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| anyhow!("not PEM certificates: {err}"))?;
        if certificates.is_empty() {
            return Err(anyhow!("holds no certificate (PEM: -----BEGIN CERTIFICATE-----)"));
        }
        let mut extra = Vec::with_capacity(certificates.len());
        for (index, certificate) in certificates.into_iter().enumerate() {
            // the check a trust anchor gets when a connection is verified, made now rather than at the first one
            rustls::RootCertStore::empty()
                .add(certificate.clone())
                .map_err(|err| anyhow!("certificate {} of the file does not parse: {err}", index + 1))?;
            extra.push(reqwest::Certificate::from_der(&certificate)?);
        }
        Ok(Self { extra })
    }

    /// Trusts the CAs of `path` if given, and the platform's roots only otherwise.
    pub fn optional(path: Option<&Path>) -> anyhow::Result<Self> {
        path.map_or_else(|| Ok(Self::default()), Self::from_ca_file)
    }
}

/// Installs ring as the process's default rustls provider, unless one is installed already (then that one stays).
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // losing a race to another thread installing one is fine: a provider is installed either way
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// A reqwest client builder whose TLS has a provider.
pub fn http_client() -> reqwest::ClientBuilder {
    install_crypto_provider();
    reqwest::Client::builder()
}

/// A reqwest client builder whose TLS has a provider and trusts `trust`'s CAs beside the platform's roots.
pub fn http_client_trusting(trust: &Trust) -> reqwest::ClientBuilder {
    http_client().tls_certs_merge(trust.extra.iter().cloned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_a_provider_and_speak_tls_with_ring() {
        http_client().build().expect("a client with TLS");
        let installed = rustls::crypto::CryptoProvider::get_default().expect("a default provider");
        let ring = rustls::crypto::ring::default_provider();
        let suites = |provider: &rustls::crypto::CryptoProvider| {
            provider
                .cipher_suites
                .iter()
                .map(|suite| suite.suite())
                .collect::<Vec<_>>()
        };
        assert_eq!(suites(installed), suites(&ring));
        // a second call keeps what is installed
        install_crypto_provider();
        reqwest::Client::new();
    }

    fn ca_pem(name: &str) -> String {
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.distinguished_name.push(rcgen::DnType::CommonName, name);
        params.self_signed(&rcgen::KeyPair::generate().unwrap()).unwrap().pem()
    }

    #[test]
    fn a_ca_file_of_one_or_more_certificates_is_trusted_and_clients_build_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, format!("{}{}", ca_pem("one"), ca_pem("two"))).unwrap();
        let trust = Trust::from_ca_file(&path).unwrap();
        assert_eq!(trust.extra.len(), 2);
        http_client_trusting(&trust)
            .build()
            .expect("a client trusting the file's CAs");
        assert!(Trust::optional(None).unwrap().extra.is_empty());
    }

    #[test]
    fn a_ca_file_that_does_not_parse_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let error = |contents: &str| {
            std::fs::write(&path, contents).unwrap();
            let message = format!("{:#}", Trust::from_ca_file(&path).unwrap_err());
            assert!(message.contains(&path.display().to_string()), "{message}");
            message
        };
        assert!(error("").contains("no certificate"));
        assert!(error("just text\n").contains("no certificate"));
        let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
        assert!(error(&key).contains("no certificate"), "a key is no CA");
        let garbled = ca_pem("ca").replacen("MII", "M!I", 1);
        assert!(error(&garbled).contains("not PEM"));
        let not_x509 = "-----BEGIN CERTIFICATE-----\naGVsbG8=\n-----END CERTIFICATE-----\n";
        assert!(error(not_x509).contains("certificate 1 of the file does not parse"));
        let missing = format!(
            "{:#}",
            Trust::from_ca_file(&dir.path().join("missing.pem")).unwrap_err()
        );
        assert!(missing.contains("missing.pem"), "{missing}");
    }
}
