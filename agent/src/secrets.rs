//! A configuration's secrets on the agent's side: opening the sealed changes the control plane delivers, bringing
//! the cluster's copy up to the version the desired state names, and the Flux secret built from them.
//!
//! The control plane cannot read secrets (they are sealed to this agent's encryption key), so it cannot merge a
//! PATCH of them either: it delivers the patch, and the agent applies it on top of the copy its cluster holds. A
//! chain that does not fit that copy (the copy was lost, or a change is missing) fails with a message that asks
//! for the protected settings again, rather than guessing.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fluxplane_agent_protocol::agent::{DesiredConfiguration, SealedSecrets, SecretsChange};
use fluxplane_agent_protocol::flux::{FluxConfigurationSpec, SourceKind};
use fluxplane_agent_protocol::sealing::EncryptionKey;

use crate::deploy_key::{DeployKey, SSH_PRIVATE_KEY_SETTING};
use serde_json::{Map, Value};

/// A configuration's secret set as the cluster holds it: shaped like the configuration's `properties`, holding
/// secret fields only. Its `Debug` output is redacted.
#[derive(Clone, PartialEq)]
pub struct SecretSet {
    pub version: i64,
    pub settings: Map<String, Value>,
}

impl fmt::Debug for SecretSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretSet(version {}, <redacted>)", self.version)
    }
}

const REAPPLY: &str = "apply the protected settings again (PUT the configuration with them)";

/// The secret set the cluster should hold for `configuration`, from what it holds (`held`) and the sealed changes
/// delivered with it; `None` when the configuration has no secrets. The error says what the user must do.
pub fn resolve(
    cluster_id: &str,
    configuration: &DesiredConfiguration,
    held: Option<SecretSet>,
    key: &EncryptionKey,
) -> Result<Option<SecretSet>, String> {
    resolve_sealed(
        cluster_id,
        &configuration.name,
        configuration.secrets_version,
        &configuration.sealed_secrets,
        held,
        key,
    )
}

/// The secret set of version `wanted` (`None`: no secrets) from `held` and the sealed changes delivered for the
/// sealed name `name` (a configuration's, or an extension's `extensions/{name}`).
pub fn resolve_sealed(
    cluster_id: &str,
    name: &str,
    wanted: Option<i64>,
    delivered: &[SealedSecrets],
    held: Option<SecretSet>,
    key: &EncryptionKey,
) -> Result<Option<SecretSet>, String> {
    let Some(wanted) = wanted else {
        return Ok(None);
    };
    let mut current = held;
    for sealed in delivered {
        if current.as_ref().is_some_and(|c| c.version >= sealed.version) {
            continue; // applied before; its acknowledgement has not reached the control plane yet
        }
        let plaintext = key.open(cluster_id, name, sealed).map_err(|err| {
            format!(
                "the secrets (version {}) cannot be opened: {err}; {REAPPLY}",
                sealed.version
            )
        })?;
        let value: Value = serde_json::from_slice(&plaintext).map_err(|_| {
            format!(
                "the secrets (version {}) are not a JSON object; {REAPPLY}",
                sealed.version
            )
        })?;
        let Value::Object(change) = value else {
            return Err(format!(
                "the secrets (version {}) are not a JSON object; {REAPPLY}",
                sealed.version
            ));
        };
        let settings = match sealed.change {
            SecretsChange::Replace => change,
            SecretsChange::Merge => {
                let base = current.as_ref().map(|c| c.version);
                if base != sealed.base_version {
                    return Err(format!(
                        "the change to the secrets (version {}) applies to version {}, but the cluster holds {}; \
                         {REAPPLY}",
                        sealed.version,
                        version_text(sealed.base_version),
                        version_text(base)
                    ));
                }
                let mut merged = Value::Object(current.map(|c| c.settings).unwrap_or_default());
                json_patch::merge(&mut merged, &Value::Object(change));
                match merged {
                    Value::Object(settings) => settings,
                    _ => Map::new(),
                }
            }
        };
        current = Some(SecretSet {
            version: sealed.version,
            settings,
        });
    }
    match current {
        Some(set) if set.version == wanted => Ok(Some(set)),
        held => Err(format!(
            "the cluster holds version {} of the secrets and version {wanted} is no longer available to bring it up \
             to date; {REAPPLY}",
            version_text(held.map(|h| h.version))
        )),
    }
}

fn version_text(version: Option<i64>) -> String {
    version.map_or_else(|| "none".to_owned(), |v| v.to_string())
}

/// The spec with its secret fields filled in from `secrets`, for building the Flux objects that refer to them.
pub fn spec_with(spec: &FluxConfigurationSpec, secrets: Option<&SecretSet>) -> FluxConfigurationSpec {
    let Some(secrets) = secrets else {
        return spec.clone();
    };
    let mut value = serde_json::to_value(spec).expect("a spec without secrets serialises");
    json_patch::merge(&mut value, &Value::Object(secrets.settings.clone()));
    // the control plane checked the types of every secret field, so this only fails on a forged payload
    serde_json::from_value(value).unwrap_or_else(|_| spec.clone())
}

/// What a configuration's secret holds: the secret set the control plane delivered, and the deploy key the agent
/// made for it (`deploy_key.rs`). Either may be absent; with neither, there is no secret.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Credentials {
    pub secrets: Option<SecretSet>,
    pub deploy_key: Option<DeployKey>,
}

/// The `data` of the Flux secret (`{configuration}-auth`), under the keys Flux's source controller reads for the
/// configuration's source kind; every value is base64, as a Kubernetes Secret's `data` holds it.
pub fn flux_secret_data(spec: &FluxConfigurationSpec, secrets: Option<&SecretSet>) -> BTreeMap<String, String> {
    let encode = |text: &str| STANDARD.encode(text.as_bytes());
    let mut data = BTreeMap::new();
    let no_settings = Map::new();
    let settings = secrets.map_or(&no_settings, |s| &s.settings);
    // protected settings are base64 already (as Azure's CLI writes them); the well-known ones get Flux's names
    if let Some(settings) = settings
        .get("configurationProtectedSettings")
        .and_then(Value::as_object)
    {
        for (key, value) in settings {
            let Some(value) = value.as_str() else { continue };
            let name = match key.as_str() {
                SSH_PRIVATE_KEY_SETTING => "identity",
                "httpsKey" => "password",
                "bucketSecretKey" => "secretkey",
                other => other,
            };
            data.insert(name.to_owned(), value.to_owned());
        }
    }
    let secret = |pointer: &str| {
        Value::Object(settings.clone())
            .pointer(pointer)
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    match spec.source_kind.unwrap_or(SourceKind::GitRepository) {
        SourceKind::GitRepository => {
            if let Some(git) = &spec.git_repository {
                if let Some(user) = &git.https_user {
                    data.insert("username".into(), encode(user));
                }
                if let Some(hosts) = &git.ssh_known_hosts {
                    data.insert("known_hosts".into(), hosts.clone());
                }
                if let Some(ca) = &git.https_ca_cert {
                    data.insert("ca.crt".into(), ca.clone());
                }
            }
        }
        SourceKind::Bucket => {
            if let Some(access_key) = spec.bucket.as_ref().and_then(|b| b.access_key.as_ref()) {
                data.insert("accesskey".into(), encode(access_key));
            }
        }
        SourceKind::AzureBlob => {
            let principal = spec.azure_blob.as_ref().and_then(|b| b.service_principal.as_ref());
            let plain = [
                ("accountKey", secret("/azureBlob/accountKey")),
                ("sasKey", secret("/azureBlob/sasToken")),
                // a service principal's client, else the user-assigned managed identity's (Flux reads `clientId` alone
                // as a managed identity)
                (
                    "clientId",
                    principal.and_then(|p| p.client_id.clone()).or_else(|| {
                        let identity = spec.azure_blob.as_ref().and_then(|b| b.managed_identity.as_ref());
                        identity.and_then(|m| m.client_id.clone())
                    }),
                ),
                ("tenantId", principal.and_then(|p| p.tenant_id.clone())),
                ("clientSecret", secret("/azureBlob/servicePrincipal/clientSecret")),
                (
                    "clientCertificatePassword",
                    secret("/azureBlob/servicePrincipal/clientCertificatePassword"),
                ),
            ];
            for (name, value) in plain {
                if let Some(value) = value {
                    data.insert(name.into(), encode(&value));
                }
            }
            if principal.and_then(|p| p.client_certificate_send_chain) == Some(true) {
                data.insert("clientCertificateSendChain".into(), encode("true"));
            }
            // a certificate is base64 already
            if let Some(certificate) = secret("/azureBlob/servicePrincipal/clientCertificate") {
                data.insert("clientCertificate".into(), certificate);
            }
        }
        SourceKind::OciRepository => {
            for (name, pointer) in [
                ("tls.crt", "/ociRepository/tlsConfig/clientCertificate"),
                ("tls.key", "/ociRepository/tlsConfig/privateKey"),
                ("ca.crt", "/ociRepository/tlsConfig/caCertificate"),
            ] {
                if let Some(value) = secret(pointer) {
                    data.insert(name.into(), value);
                }
            }
        }
    }
    data
}

#[cfg(test)]
mod tests {
    use fluxplane_agent_protocol::agent::SealedSecrets;
    use fluxplane_agent_protocol::sealing::{Envelope, seal};
    use serde_json::json;

    use super::*;

    const CLUSTER: &str = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Kubernetes/connectedClusters/c";

    fn sealed(key: &EncryptionKey, version: i64, change: SecretsChange, base: Option<i64>, v: Value) -> SealedSecrets {
        let envelope = Envelope {
            cluster_id: CLUSTER,
            configuration: "cfg",
            version,
            change,
            base_version: base,
        };
        seal(&key.public_base64(), envelope, v.to_string().as_bytes()).unwrap()
    }

    fn desired(version: Option<i64>, sealed_secrets: Vec<SealedSecrets>) -> DesiredConfiguration {
        DesiredConfiguration {
            name: "cfg".into(),
            generation: version.unwrap_or(1),
            deleting: false,
            spec: Default::default(),
            secrets_version: version,
            sealed_secrets,
            reconcile_requested_at: None,
        }
    }

    fn settings(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn a_replacement_then_patches_build_the_set_in_order() {
        let key = EncryptionKey::generate();
        let chain = vec![
            sealed(
                &key,
                1,
                SecretsChange::Replace,
                None,
                json!({"configurationProtectedSettings": {"a": "QQ=="}}),
            ),
            sealed(
                &key,
                3,
                SecretsChange::Merge,
                Some(1),
                json!({"configurationProtectedSettings": {"b": "Qg=="}}),
            ),
            sealed(
                &key,
                4,
                SecretsChange::Merge,
                Some(3),
                json!({"configurationProtectedSettings": {"a": null}}),
            ),
        ];
        let set = resolve(CLUSTER, &desired(Some(4), chain.clone()), None, &key)
            .unwrap()
            .unwrap();
        assert_eq!(set.version, 4);
        assert_eq!(
            set.settings,
            settings(json!({"configurationProtectedSettings": {"b": "Qg=="}}))
        );
        // a cluster that applied version 3 already skips what it has
        let held = SecretSet {
            version: 3,
            settings: settings(json!({"configurationProtectedSettings": {"a": "QQ==", "b": "Qg=="}})),
        };
        assert_eq!(
            resolve(CLUSTER, &desired(Some(4), chain), Some(held), &key)
                .unwrap()
                .unwrap(),
            set
        );
    }

    #[test]
    fn what_the_cluster_holds_is_kept_while_secrets_are_untouched_and_dropped_when_removed() {
        let key = EncryptionKey::generate();
        let held = SecretSet {
            version: 2,
            settings: settings(json!({"configurationProtectedSettings": {"a": "QQ=="}})),
        };
        assert_eq!(
            resolve(CLUSTER, &desired(Some(2), vec![]), Some(held.clone()), &key).unwrap(),
            Some(held.clone())
        );
        assert_eq!(
            resolve(CLUSTER, &desired(None, vec![]), Some(held), &key).unwrap(),
            None
        );
    }

    #[test]
    fn a_patch_that_does_not_fit_the_clusters_copy_asks_for_the_settings_again() {
        let key = EncryptionKey::generate();
        let patch = sealed(
            &key,
            5,
            SecretsChange::Merge,
            Some(4),
            json!({"configurationProtectedSettings": {}}),
        );
        let err = resolve(CLUSTER, &desired(Some(5), vec![patch]), None, &key).unwrap_err();
        assert!(
            err.contains("applies to version 4, but the cluster holds none"),
            "{err}"
        );
        assert!(err.contains("apply the protected settings again"), "{err}");
        let err = resolve(CLUSTER, &desired(Some(5), vec![]), None, &key).unwrap_err();
        assert!(err.contains("no longer available"), "{err}");
    }

    #[test]
    fn secrets_sealed_to_an_earlier_key_ask_for_the_settings_again() {
        let old = EncryptionKey::generate();
        let replaced = sealed(&old, 1, SecretsChange::Replace, None, json!({}));
        let err = resolve(
            CLUSTER,
            &desired(Some(1), vec![replaced]),
            None,
            &EncryptionKey::generate(),
        )
        .unwrap_err();
        assert!(err.contains("sealed to another encryption key"), "{err}");
    }

    #[test]
    fn the_flux_secret_uses_the_names_flux_reads() {
        let spec: FluxConfigurationSpec = serde_json::from_value(json!({
            "sourceKind": "GitRepository",
            "gitRepository": {"url": "https://x", "httpsUser": "bot", "sshKnownHosts": "aG9zdHM="}
        }))
        .unwrap();
        let set = SecretSet {
            version: 1,
            settings: settings(json!({"configurationProtectedSettings": {"httpsKey": "cGF0", "extra": "eA=="}})),
        };
        let data = flux_secret_data(&spec, Some(&set));
        assert_eq!(data["password"], "cGF0");
        assert_eq!(data["username"], STANDARD.encode("bot"));
        assert_eq!(data["known_hosts"], "aG9zdHM=");
        assert_eq!(data["extra"], "eA==");
        let blob: FluxConfigurationSpec = serde_json::from_value(json!({
            "sourceKind": "AzureBlob",
            "azureBlob": {"url": "https://a.blob.core.windows.net", "servicePrincipal": {"clientId": "id"}}
        }))
        .unwrap();
        let set = SecretSet {
            version: 1,
            settings: settings(json!({"azureBlob": {"accountKey": "k3y", "servicePrincipal": {"clientSecret": "s"}}})),
        };
        let data = flux_secret_data(&blob, Some(&set));
        assert_eq!(data["accountKey"], STANDARD.encode("k3y"));
        assert_eq!(data["clientSecret"], STANDARD.encode("s"));
        assert_eq!(data["clientId"], STANDARD.encode("id"));
    }

    #[test]
    fn a_managed_identitys_client_and_a_certificates_chain_flag_reach_flux() {
        let set = SecretSet {
            version: 1,
            settings: settings(json!({"azureBlob": {"servicePrincipal": {"clientCertificate": "Y2VydA=="}}})),
        };
        let chained: FluxConfigurationSpec = serde_json::from_value(json!({
            "sourceKind": "AzureBlob",
            "azureBlob": {"url": "https://a.blob.core.windows.net", "containerName": "c",
                          "servicePrincipal": {"clientId": "sp", "tenantId": "t", "clientCertificateSendChain": true}}
        }))
        .unwrap();
        let data = flux_secret_data(&chained, Some(&set));
        assert_eq!(data["clientCertificateSendChain"], STANDARD.encode("true"));
        assert_eq!(data["clientId"], STANDARD.encode("sp"));
        let unchained: FluxConfigurationSpec = serde_json::from_value(json!({
            "sourceKind": "AzureBlob",
            "azureBlob": {"url": "https://a.blob.core.windows.net", "containerName": "c",
                          "servicePrincipal": {"clientId": "sp", "clientCertificateSendChain": false}}
        }))
        .unwrap();
        assert!(!flux_secret_data(&unchained, Some(&set)).contains_key("clientCertificateSendChain"));
        let identity: FluxConfigurationSpec = serde_json::from_value(json!({
            "sourceKind": "AzureBlob",
            "azureBlob": {"url": "https://a.blob.core.windows.net", "containerName": "c",
                          "managedIdentity": {"clientId": "mi"}}
        }))
        .unwrap();
        let empty = SecretSet {
            version: 1,
            settings: settings(json!({})),
        };
        assert_eq!(
            flux_secret_data(&identity, Some(&empty))["clientId"],
            STANDARD.encode("mi")
        );
    }
}
