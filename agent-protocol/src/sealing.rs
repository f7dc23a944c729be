//! Sealing secret sets to a cluster's agent, and opening them there.
//!
//! HPKE (RFC 9180) in base mode with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and ChaCha20-Poly1305, from the `hpke`
//! crate. The control plane holds only the agent's public key, so what it seals it cannot open again: a copy of
//! its database, or the control plane itself, cannot give the secrets back. The encryption key pair is separate
//! from the agent's Ed25519 signing identity, as one key should not serve both signing and key agreement.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hpke::aead::ChaCha20Poly1305;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem, OpModeR, OpModeS, Serializable};

use crate::agent::{SealedSecrets, SecretsChange, sealed_secrets_aad};

type Suite = X25519HkdfSha256;
type PrivateKey = <Suite as Kem>::PrivateKey;
type PublicKey = <Suite as Kem>::PublicKey;
type EncappedKey = <Suite as Kem>::EncappedKey;

/// Domain separation of fluxplane's HPKE contexts (the `info` of RFC 9180).
const INFO: &[u8] = b"fluxplane sealed secrets v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealingError {
    #[error("an encryption key is 32 bytes in base64")]
    MalformedKey,
    #[error("the sealed secrets are malformed")]
    Malformed,
    #[error("the secrets were sealed to another encryption key (was the agent registered again?)")]
    OtherRecipient,
    #[error("the sealed secrets do not open (tampered, or moved from another configuration)")]
    DoesNotOpen,
    #[error("sealing failed")]
    Seal,
}

/// Which change of which configuration of which cluster a payload is.
#[derive(Debug, Clone, Copy)]
pub struct Envelope<'a> {
    pub cluster_id: &'a str,
    pub configuration: &'a str,
    pub version: i64,
    pub change: SecretsChange,
    pub base_version: Option<i64>,
}

impl Envelope<'_> {
    fn aad(&self) -> Vec<u8> {
        sealed_secrets_aad(
            self.cluster_id,
            self.configuration,
            self.version,
            self.change,
            self.base_version,
        )
    }
}

/// Checks that `text` is an encryption public key, answering it in canonical base64.
pub fn parse_public_key(text: &str) -> Result<String, SealingError> {
    let bytes = STANDARD.decode(text.trim()).map_err(|_| SealingError::MalformedKey)?;
    let key = PublicKey::from_bytes(&bytes).map_err(|_| SealingError::MalformedKey)?;
    Ok(STANDARD.encode(key.to_bytes()))
}

/// Seals `plaintext` to the agent whose encryption public key is `recipient` (base64).
pub fn seal(recipient: &str, envelope: Envelope<'_>, plaintext: &[u8]) -> Result<SealedSecrets, SealingError> {
    let bytes = STANDARD.decode(recipient).map_err(|_| SealingError::MalformedKey)?;
    let public = PublicKey::from_bytes(&bytes).map_err(|_| SealingError::MalformedKey)?;
    let (encapsulated, ciphertext) = hpke::single_shot_seal::<ChaCha20Poly1305, HkdfSha256, Suite>(
        &OpModeS::Base,
        &public,
        INFO,
        plaintext,
        &envelope.aad(),
    )
    .map_err(|_| SealingError::Seal)?;
    Ok(SealedSecrets {
        version: envelope.version,
        change: envelope.change,
        base_version: envelope.base_version,
        recipient: STANDARD.encode(public.to_bytes()),
        encapsulated_key: STANDARD.encode(encapsulated.to_bytes()),
        ciphertext: STANDARD.encode(ciphertext),
    })
}

/// An agent's encryption key pair. Its `Debug` output shows the public half only.
#[derive(Clone)]
pub struct EncryptionKey {
    private: PrivateKey,
    public: PublicKey,
}

impl std::fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "EncryptionKey(public {})", self.public_base64())
    }
}

impl EncryptionKey {
    pub fn generate() -> Self {
        let (private, public) = Suite::gen_keypair();
        Self { private, public }
    }

    /// Loads the private key from its base64 form (what [`EncryptionKey::private_base64`] wrote).
    pub fn from_private_base64(text: &str) -> Result<Self, SealingError> {
        let bytes = STANDARD.decode(text.trim()).map_err(|_| SealingError::MalformedKey)?;
        let private = PrivateKey::from_bytes(&bytes).map_err(|_| SealingError::MalformedKey)?;
        let public = Suite::sk_to_pk(&private);
        Ok(Self { private, public })
    }

    /// The private key in base64; it belongs in the agent's identity file and nowhere else.
    pub fn private_base64(&self) -> String {
        STANDARD.encode(self.private.to_bytes())
    }

    pub fn public_base64(&self) -> String {
        STANDARD.encode(self.public.to_bytes())
    }

    /// Opens a payload sealed to this key for the configuration `configuration` of `cluster_id`.
    pub fn open(&self, cluster_id: &str, configuration: &str, sealed: &SealedSecrets) -> Result<Vec<u8>, SealingError> {
        if sealed.recipient != self.public_base64() {
            return Err(SealingError::OtherRecipient);
        }
        let encapsulated = STANDARD
            .decode(&sealed.encapsulated_key)
            .ok()
            .and_then(|bytes| EncappedKey::from_bytes(&bytes).ok())
            .ok_or(SealingError::Malformed)?;
        let ciphertext = STANDARD
            .decode(&sealed.ciphertext)
            .map_err(|_| SealingError::Malformed)?;
        let envelope = Envelope {
            cluster_id,
            configuration,
            version: sealed.version,
            change: sealed.change,
            base_version: sealed.base_version,
        };
        hpke::single_shot_open::<ChaCha20Poly1305, HkdfSha256, Suite>(
            &OpModeR::Base,
            &self.private,
            &encapsulated,
            INFO,
            &ciphertext,
            &envelope.aad(),
        )
        .map_err(|_| SealingError::DoesNotOpen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c";

    fn envelope(version: i64) -> Envelope<'static> {
        Envelope {
            cluster_id: CLUSTER,
            configuration: "cfg",
            version,
            change: SecretsChange::Replace,
            base_version: None,
        }
    }

    #[test]
    fn only_the_recipient_opens_what_was_sealed_to_it() {
        let agent = EncryptionKey::generate();
        let sealed = seal(&agent.public_base64(), envelope(3), b"{\"k\":\"hunter2\"}").unwrap();
        assert!(!serde_json::to_string(&sealed).unwrap().contains("hunter2"));
        assert_eq!(agent.open(CLUSTER, "cfg", &sealed).unwrap(), b"{\"k\":\"hunter2\"}");
        // the cluster id is compared case-insensitively, as ARM ids are
        assert!(agent.open(&CLUSTER.to_uppercase(), "cfg", &sealed).is_ok());
        let other = EncryptionKey::generate();
        assert_eq!(other.open(CLUSTER, "cfg", &sealed), Err(SealingError::OtherRecipient));
        let mut forged = sealed.clone();
        forged.recipient = other.public_base64();
        assert_eq!(other.open(CLUSTER, "cfg", &forged), Err(SealingError::DoesNotOpen));
    }

    #[test]
    fn a_payload_moved_to_another_configuration_or_version_does_not_open() {
        let agent = EncryptionKey::generate();
        let sealed = seal(&agent.public_base64(), envelope(3), b"{}").unwrap();
        assert_eq!(agent.open(CLUSTER, "other", &sealed), Err(SealingError::DoesNotOpen));
        let mut replayed = sealed.clone();
        replayed.version = 4;
        assert_eq!(agent.open(CLUSTER, "cfg", &replayed), Err(SealingError::DoesNotOpen));
        let mut retyped = sealed.clone();
        retyped.change = SecretsChange::Merge;
        assert_eq!(agent.open(CLUSTER, "cfg", &retyped), Err(SealingError::DoesNotOpen));
        let mut rebased = sealed.clone();
        rebased.base_version = Some(2);
        assert_eq!(agent.open(CLUSTER, "cfg", &rebased), Err(SealingError::DoesNotOpen));
        let mut tampered = sealed;
        tampered.ciphertext = STANDARD.encode(b"garbage that is long enough to be a tag");
        assert_eq!(agent.open(CLUSTER, "cfg", &tampered), Err(SealingError::DoesNotOpen));
    }

    #[test]
    fn keys_round_trip_and_bad_ones_are_refused() {
        let key = EncryptionKey::generate();
        let loaded = EncryptionKey::from_private_base64(&key.private_base64()).unwrap();
        assert_eq!(loaded.public_base64(), key.public_base64());
        assert!(!format!("{key:?}").contains(&key.private_base64()));
        assert_eq!(parse_public_key(&key.public_base64()).unwrap(), key.public_base64());
        assert_eq!(parse_public_key("a2V5"), Err(SealingError::MalformedKey));
        assert_eq!(parse_public_key("not base64!"), Err(SealingError::MalformedKey));
    }
}
