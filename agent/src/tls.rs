//! TLS: rustls with ring's cryptography, for every TLS client of the process (the agent's own HTTP client, kube's,
//! and any other reqwest client of the program embedding the agent). reqwest and kube default to aws-lc-rs, which
//! is built from C and dominated the release build; this workspace builds reqwest without a provider, so that one
//! must be installed before the first client is built: [`http_client`] does it, and so should a program's `main`.

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
}
