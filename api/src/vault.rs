//! The control plane's own credentials at rest: what the server itself must present or check later (an alert
//! receiver's webhook URL or signing key, a Git host's webhook secret), as opposed to a configuration's secrets, which
//! are sealed to the agent's key and never readable by the server (`flux::secrets`). Such a value is sealed with
//! XChaCha20-Poly1305 under the server's key (`--secrets-key-file`, generated in the data directory for the embedded
//! store; every replica on a shared PostgreSQL needs the same file), bound to where it is kept (the associated data
//! names the resource and field), so a sealed value copied into another row does not open. The key never leaves the
//! process; a sealed value is never answered or logged.

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Bytes of a nonce: XChaCha's 24, random per value.
const NONCE_BYTES: usize = 24;

/// Seals and opens the server's own credentials.
#[derive(Clone)]
pub struct Vault {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Vault(<key>)")
    }
}

/// A sealed value did not open: another key, another place, or not a sealed value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a sealed value did not open with the server's key (was --secrets-key-file changed?)")]
pub struct Unopened;

impl Vault {
    /// The vault of the key in `path`: 32 bytes in base64, as `fluxplane` generates key files.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let key = STANDARD
            .decode(text.trim())
            .with_context(|| format!("{}: not base64", path.display()))?;
        Self::from_key(&key).with_context(|| format!("{}: not a 32-byte key", path.display()))
    }

    pub fn from_key(key: &[u8]) -> anyhow::Result<Self> {
        let cipher = XChaCha20Poly1305::new_from_slice(key).map_err(|_| anyhow::anyhow!("the key is not 32 bytes"))?;
        Ok(Self { cipher })
    }

    /// Seals `plain` for the place `place` (e.g. `{resource id}#url`); answers base64 of nonce and ciphertext.
    pub fn seal(&self, place: &str, plain: &[u8]) -> String {
        let mut nonce = [0u8; NONCE_BYTES];
        rand::fill(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: plain,
                    aad: place.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 seals any value that fits in memory");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        STANDARD.encode(out)
    }

    /// Opens what `seal` sealed for `place`.
    pub fn open(&self, place: &str, sealed: &str) -> Result<Vec<u8>, Unopened> {
        let bytes = STANDARD.decode(sealed).map_err(|_| Unopened)?;
        if bytes.len() < NONCE_BYTES {
            return Err(Unopened);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        let nonce: [u8; NONCE_BYTES] = nonce.try_into().map_err(|_| Unopened)?;
        self.cipher
            .decrypt(
                &XNonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: place.as_bytes(),
                },
            )
            .map_err(|_| Unopened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vault() -> Vault {
        Vault::from_key(&[7u8; 32]).unwrap()
    }

    #[test]
    fn a_sealed_value_opens_in_its_place_only_and_with_its_key_only() {
        let sealed = vault().seal("receivers/ops#url", b"https://hooks.slack.com/services/T/B/x");
        assert!(!sealed.contains("hooks.slack.com"));
        assert_eq!(
            vault().open("receivers/ops#url", &sealed).unwrap(),
            b"https://hooks.slack.com/services/T/B/x"
        );
        assert_eq!(
            vault().open("receivers/other#url", &sealed),
            Err(Unopened),
            "another place"
        );
        let other = Vault::from_key(&[8u8; 32]).unwrap();
        assert_eq!(other.open("receivers/ops#url", &sealed), Err(Unopened), "another key");
        assert_eq!(vault().open("receivers/ops#url", "not base64!"), Err(Unopened));
        assert_eq!(vault().open("receivers/ops#url", "AAAA"), Err(Unopened), "too short");
        assert_ne!(
            vault().seal("p", b"same"),
            vault().seal("p", b"same"),
            "a fresh nonce every time"
        );
    }

    #[test]
    fn a_key_file_is_read_as_fluxplane_writes_it_and_refused_otherwise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets-key");
        crate::keys::ensure_key_file(&path).unwrap();
        let vault = Vault::load(&path).unwrap();
        assert_eq!(vault.open("p", &vault.seal("p", b"x")).unwrap(), b"x");
        std::fs::write(&path, "c2hvcnQ=\n").unwrap();
        assert!(format!("{:#}", Vault::load(&path).unwrap_err()).contains("32-byte"));
        assert!(format!("{:?}", vault).contains("<key>"), "never prints its key");
    }
}
