//! The agent's identity: an Ed25519 key pair it generates itself, the public half registered on its cluster, the
//! private half kept in a file only the agent can read, and the short-lived tokens it signs with it.

use std::path::Path;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::Utc;
use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
use fluxplane_agent_protocol::agent::{AGENT_AUDIENCE, AgentClaims};
use fluxplane_agent_protocol::sealing::EncryptionKey;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::{Deserialize, Serialize};

use crate::files::write_atomically;

/// How long the tokens the agent signs live; the control plane accepts at most five minutes.
const TOKEN_LIFETIME_SECONDS: i64 = 120;

/// What the identity file holds.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Identity {
    /// The control plane's base URL.
    pub server: String,
    /// The cluster's ARM id.
    pub cluster_id: String,
    /// The Ed25519 signing key (PKCS#8 PEM) whose public half is the cluster's `agentPublicKeyCertificate`.
    pub private_key: String,
    /// The X25519 key (base64) the control plane seals secrets to; identities written before secrets were sealed
    /// lack it, and get one when loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption_key: Option<String>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("server", &self.server)
            .field("cluster_id", &self.cluster_id)
            .field("private_key", &"<redacted>")
            .field("encryption_key", &"<redacted>")
            .finish()
    }
}

/// A freshly generated key pair: the identity to save and the public key to register (base64 SPKI DER).
pub struct NewIdentity {
    pub identity: Identity,
    pub public_key: String,
}

impl Identity {
    pub fn generate(server: &str, cluster_id: &str) -> anyhow::Result<NewIdentity> {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let key = SigningKey::from_bytes(&seed);
        let private_key = key
            .to_pkcs8_pem(LineEnding::LF)
            .context("encoding the private key")?
            .to_string();
        let public_key = STANDARD.encode(
            key.verifying_key()
                .to_public_key_der()
                .context("encoding the public key")?
                .as_bytes(),
        );
        Ok(NewIdentity {
            identity: Identity {
                server: server.trim_end_matches('/').to_owned(),
                cluster_id: cluster_id.to_owned(),
                private_key,
                encryption_key: Some(EncryptionKey::generate().private_base64()),
            },
            public_key,
        })
    }

    /// Writes the identity readable by its owner only; an existing file is replaced atomically.
    pub fn save(&self, path: &Path) -> anyhow::Result<()> {
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomically(path, serde_json::to_string_pretty(self)?.as_bytes(), true)
    }

    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading the identity {}", path.display()))?;
        let mut identity: Self =
            serde_json::from_str(&text).with_context(|| format!("{} is not an agent identity", path.display()))?;
        if identity.encryption_key.is_none() {
            identity.encryption_key = Some(EncryptionKey::generate().private_base64());
            identity.save(path)?;
            tracing::info!(path = %path.display(), "added an encryption key to the identity");
        }
        Ok(identity)
    }

    /// The key pair secrets are sealed to.
    pub fn encryption_key(&self) -> anyhow::Result<EncryptionKey> {
        let text = self
            .encryption_key
            .as_deref()
            .context("the identity has no encryption key")?;
        EncryptionKey::from_private_base64(text).context("the identity's encryption key")
    }

    /// A token for requests to the control plane, valid for `TOKEN_LIFETIME_SECONDS` from now.
    pub fn token(&self) -> anyhow::Result<AgentToken> {
        let now = Utc::now().timestamp();
        let claims = AgentClaims {
            sub: self.cluster_id.clone(),
            aud: AGENT_AUDIENCE.to_owned(),
            iat: now,
            exp: now + TOKEN_LIFETIME_SECONDS,
        };
        let key = EncodingKey::from_ed_pem(self.private_key.as_bytes()).context("the identity's private key")?;
        Ok(AgentToken {
            value: jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &key)?,
            expires_at: claims.exp,
        })
    }
}

/// A signed agent token and when it expires (Unix seconds).
#[derive(Clone)]
pub struct AgentToken {
    pub value: String,
    pub expires_at: i64,
}

impl AgentToken {
    /// Whether it still has half its life ahead of it, enough for a request begun now, long-polls included.
    pub fn fresh(&self, now: i64) -> bool {
        self.expires_at - now >= TOKEN_LIFETIME_SECONDS / 2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identities_round_trip_privately_and_sign_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        let new = Identity::generate(
            "http://cp:8080/",
            "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c",
        )
        .unwrap();
        assert!(STANDARD.decode(&new.public_key).is_ok());
        new.identity.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let loaded = Identity::load(&path).unwrap();
        assert_eq!(loaded.server, "http://cp:8080");
        assert!(!format!("{loaded:?}").contains("PRIVATE KEY"));
        assert!(!format!("{loaded:?}").contains(loaded.encryption_key.as_deref().unwrap()));
        assert_eq!(
            loaded.encryption_key().unwrap().public_base64(),
            new.identity.encryption_key().unwrap().public_base64()
        );
        let token = loaded.token().unwrap();
        assert!(token.fresh(Utc::now().timestamp()));
        assert!(
            !token.fresh(token.expires_at - TOKEN_LIFETIME_SECONDS / 2 + 1),
            "past half its life"
        );
        let claims: AgentClaims = jsonwebtoken::dangerous::insecure_decode_claims(&token.value).unwrap();
        assert_eq!(claims.aud, AGENT_AUDIENCE);
        assert!(claims.exp - claims.iat <= 300);
    }

    #[test]
    fn an_identity_written_without_an_encryption_key_gets_one_and_keeps_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.json");
        let cluster = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c";
        let mut old = Identity::generate("http://cp", cluster).unwrap().identity;
        old.encryption_key = None;
        old.save(&path).unwrap();
        let upgraded = Identity::load(&path).unwrap();
        let key = upgraded.encryption_key().unwrap().public_base64();
        assert_eq!(
            Identity::load(&path).unwrap().encryption_key().unwrap().public_base64(),
            key
        );
    }
}
