//! Deploy keys. A Git source reached over SSH needs a key the repository trusts; when the configuration brings none
//! (no `sshPrivateKey`, no secret of the user's), the agent makes an Ed25519 key pair, keeps it with the
//! configuration's credentials in its cluster, and reports the public half as `repositoryPublicKey`, for the user to
//! add to the repository as a deploy key: what Azure's Flux agent does. The private half never leaves the cluster;
//! a restarted agent reads it back, so the key the user registered stays valid.

use std::fmt;

use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fluxplane_agent_protocol::flux::{FluxConfigurationSpec, GitRepository, SourceKind};
use ssh_key::private::Ed25519Keypair;
use ssh_key::{LineEnding, PrivateKey};

/// The protected setting that holds a user's own SSH key (base64 of the private key file).
pub const SSH_PRIVATE_KEY_SETTING: &str = "sshPrivateKey";

/// A key pair the agent made for a configuration. Its `Debug` output shows the public half only.
#[derive(Clone, PartialEq, Eq)]
pub struct DeployKey {
    private: PrivateKey,
}

impl fmt::Debug for DeployKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeployKey({})", self.public_openssh())
    }
}

impl DeployKey {
    /// A new Ed25519 key pair; `comment` ends the public key's line, which is how a user tells deploy keys apart.
    pub fn generate(comment: &str) -> Self {
        let mut seed = [0u8; 32];
        rand::fill(&mut seed);
        let keypair = Ed25519Keypair::from_seed(&seed);
        let mut private = PrivateKey::from(keypair);
        private.set_comment(comment);
        Self { private }
    }

    /// A key pair as `private_openssh` wrote it.
    pub fn from_openssh(text: &str) -> anyhow::Result<Self> {
        let private = PrivateKey::from_openssh(text).context("the deploy key is not an OpenSSH private key")?;
        Ok(Self { private })
    }

    /// The private key file (OpenSSH format), as `ssh -i` and Flux's `identity` read it.
    pub fn private_openssh(&self) -> String {
        self.private
            .to_openssh(LineEnding::LF)
            .map(|text| text.to_string())
            .expect("an unencrypted Ed25519 key encodes")
    }

    /// The public key as one `authorized_keys` line: `ssh-ed25519 AAAA... comment`.
    pub fn public_openssh(&self) -> String {
        public_line(&self.private)
    }
}

fn public_line(private: &PrivateKey) -> String {
    private.public_key().to_openssh().expect("a parsed public key encodes")
}

/// The public half of a private key file in OpenSSH format (the user's own key included: an OpenSSH file carries its
/// public half even when encrypted); `None` for other formats, such as PEM RSA keys.
pub fn public_key_of(private: &[u8]) -> Option<String> {
    PrivateKey::from_openssh(private).ok().map(|key| public_line(&key))
}

/// The public half of a base64 `sshPrivateKey` protected setting, as Azure's CLI writes it.
pub fn public_key_of_setting(setting: &str) -> Option<String> {
    public_key_of(&STANDARD.decode(setting.trim()).ok()?)
}

/// Whether a configuration (its spec with its secrets filled in) wants a key made for it: a Git source at an
/// `ssh://` URL with neither a private key among its protected settings nor a secret of the user's (`localAuthRef`).
pub fn wanted(spec: &FluxConfigurationSpec) -> bool {
    let own_key = spec
        .configuration_protected_settings
        .as_ref()
        .is_some_and(|settings| settings.contains_key(SSH_PRIVATE_KEY_SETTING));
    ssh_git_source(spec).is_some_and(|git| git.local_auth_ref.is_none()) && !own_key
}

/// The configuration's Git repository, when that is its source and it is reached over SSH (an `ssh://` URL, the
/// scheme in any case).
pub fn ssh_git_source(spec: &FluxConfigurationSpec) -> Option<&GitRepository> {
    if spec.source_kind.unwrap_or(SourceKind::GitRepository) != SourceKind::GitRepository {
        return None;
    }
    spec.git_repository.as_ref().filter(|git| {
        git.url
            .as_deref()
            .and_then(|url| url.get(..6))
            .is_some_and(|scheme| scheme.eq_ignore_ascii_case("ssh://"))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn spec(value: serde_json::Value) -> FluxConfigurationSpec {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_generated_key_reads_back_as_the_same_key_and_shows_only_its_public_half() {
        let key = DeployKey::generate("fluxplane:dev-1/demo");
        let public = key.public_openssh();
        assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
        assert!(public.ends_with(" fluxplane:dev-1/demo"), "{public}");
        let private = key.private_openssh();
        assert!(private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
        let again = DeployKey::from_openssh(&private).unwrap();
        assert_eq!(again, key);
        assert_eq!(again.public_openssh(), public);
        assert_eq!(format!("{key:?}"), format!("DeployKey({public})"));
        assert_ne!(
            DeployKey::generate("x").public_openssh(),
            DeployKey::generate("x").public_openssh()
        );
    }

    #[test]
    fn the_public_half_of_a_users_openssh_key_is_derived_and_other_formats_have_none() {
        let key = DeployKey::generate("user@laptop");
        let setting = STANDARD.encode(key.private_openssh());
        assert_eq!(public_key_of_setting(&setting), Some(key.public_openssh()));
        let rsa_pem = STANDARD.encode("-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----\n");
        assert_eq!(public_key_of_setting(&rsa_pem), None);
        assert_eq!(public_key_of_setting("not base64!"), None);
    }

    #[test]
    fn only_ssh_git_sources_without_a_key_of_their_own_want_one() {
        let git = |url: &str| json!({"sourceKind": "GitRepository", "gitRepository": {"url": url}});
        assert!(wanted(&spec(git("ssh://git@github.com/org/repo"))));
        assert!(wanted(&spec(git("SSH://git@github.com/org/repo"))));
        assert!(!wanted(&spec(git("https://github.com/org/repo"))));
        let mut with_key = git("ssh://git@github.com/org/repo");
        with_key["configurationProtectedSettings"] = json!({"sshPrivateKey": "a2V5"});
        assert!(!wanted(&spec(with_key)));
        let mut own_secret = git("ssh://git@github.com/org/repo");
        own_secret["gitRepository"]["localAuthRef"] = json!("my-secret");
        assert!(!wanted(&spec(own_secret)));
        assert!(!wanted(&spec(json!({"sourceKind": "OCIRepository",
            "ociRepository": {"url": "ssh://registry/x"}}))));
    }
}
