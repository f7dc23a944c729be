//! Authenticated encryption of secrets at rest, under a 32-byte key the operator provides.
//!
//! XChaCha20-Poly1305 with a random 192-bit nonce per message (random nonces of that size never collide in
//! practice). The associated data binds each ciphertext to the resource it belongs to, so a ciphertext copied onto
//! another row fails to decrypt instead of delivering one configuration's secrets to another.

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Leading byte of every ciphertext: the format, so that a later scheme can sit beside this one.
const FORMAT_V1: u8 = 1;
const NONCE_LEN: usize = 24;

pub struct SecretCipher {
    cipher: XChaCha20Poly1305,
}

impl SecretCipher {
    pub fn new(key: &[u8]) -> anyhow::Result<Self> {
        anyhow::ensure!(
            key.len() == 32,
            "the secret key must be exactly 32 bytes, not {}",
            key.len()
        );
        Ok(Self {
            cipher: XChaCha20Poly1305::new_from_slice(key).map_err(|_| anyhow::anyhow!("invalid secret key"))?,
        })
    }

    /// Reads a key file holding 32 bytes in base64.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let key = STANDARD
            .decode(text.trim())
            .with_context(|| format!("{} must hold 32 bytes in base64", path.display()))?;
        Self::new(&key).with_context(|| format!("loading {}", path.display()))
    }

    pub fn seal(&self, plaintext: &[u8], resource: &str) -> anyhow::Result<Vec<u8>> {
        let nonce = XNonce::generate();
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: resource.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("encrypting a secret failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    pub fn open(&self, sealed: &[u8], resource: &str) -> anyhow::Result<Vec<u8>> {
        anyhow::ensure!(
            sealed.len() > 1 + NONCE_LEN && sealed[0] == FORMAT_V1,
            "stored secret has an unknown format"
        );
        let nonce = XNonce::try_from(&sealed[1..1 + NONCE_LEN]).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        self.cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: &sealed[1 + NONCE_LEN..],
                    aad: resource.as_bytes(),
                },
            )
            .map_err(|_| anyhow::anyhow!("stored secret failed authentication (wrong key or tampered row)"))
    }
}

/// A fresh random 32-byte key in base64, the format `--secret-key-file` and the JWT secret file hold.
pub fn generate_key_text() -> String {
    let key = chacha20poly1305::Key::generate();
    STANDARD.encode(key.as_slice())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cipher() -> SecretCipher {
        SecretCipher::new(&[9u8; 32]).unwrap()
    }

    #[test]
    fn sealed_secrets_open_for_their_resource_only() {
        let sealed = cipher().seal(b"hunter2", "s/rg/c/cfg").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(cipher().open(&sealed, "s/rg/c/cfg").unwrap(), b"hunter2");
        assert!(cipher().open(&sealed, "s/rg/c/other").is_err());
    }

    #[test]
    fn tampered_or_foreign_ciphertexts_fail() {
        let mut sealed = cipher().seal(b"hunter2", "r").unwrap();
        let last = sealed.len() - 1;
        sealed[last] ^= 1;
        assert!(cipher().open(&sealed, "r").is_err());
        let other = SecretCipher::new(&[1u8; 32]).unwrap().seal(b"hunter2", "r").unwrap();
        assert!(cipher().open(&other, "r").is_err());
    }

    #[test]
    fn generated_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        std::fs::write(&path, generate_key_text()).unwrap();
        assert!(SecretCipher::from_file(&path).is_ok());
        std::fs::write(&path, "not base64!").unwrap();
        assert!(SecretCipher::from_file(&path).is_err());
    }
}
