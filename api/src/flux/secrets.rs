//! The secret fields of a Flux configuration: the one list of them, and how they are split from the rest of the
//! properties, to be sealed to the cluster's agent, so that the control plane stores only what it cannot read and
//! no response carries them.

use std::fmt;

use serde_json::{Map, Value};

/// Every secret field, as a JSON pointer into a configuration's `properties`. Everything that reads, writes,
/// stores or renders secrets goes through this list.
pub const SECRET_FIELDS: &[&str] = &[
    "/configurationProtectedSettings",
    "/azureBlob/accountKey",
    "/azureBlob/sasToken",
    "/azureBlob/servicePrincipal/clientSecret",
    "/azureBlob/servicePrincipal/clientCertificate",
    "/azureBlob/servicePrincipal/clientCertificatePassword",
    "/ociRepository/tlsConfig/clientCertificate",
    "/ociRepository/tlsConfig/privateKey",
    "/ociRepository/tlsConfig/caCertificate",
];

/// The secret fields of one configuration, as a sparse copy of its properties that holds nothing else.
/// Its `Debug` output is redacted.
#[derive(Clone, PartialEq, Default)]
pub struct SecretFields(Map<String, Value>);

impl fmt::Debug for SecretFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretFields({} fields, <redacted>)", self.0.len())
    }
}

impl SecretFields {
    /// Moves every secret field out of `properties` (a JSON object) into the returned set. Secret fields set to
    /// `null` are dropped, as absent ones are.
    pub fn split_from(properties: &mut Value) -> Self {
        let mut secrets = Value::Object(Map::new());
        for pointer in SECRET_FIELDS {
            let (parent, field) = pointer.rsplit_once('/').expect("pointers start with '/'");
            let taken = properties
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .and_then(|object| object.remove(field));
            if let Some(value) = taken.filter(|v| !v.is_null()) {
                insert_at(&mut secrets, parent, field, value);
            }
        }
        match secrets {
            Value::Object(map) => Self(map),
            _ => unreachable!("built as an object"),
        }
    }

    /// Moves every secret field out of a JSON merge patch of `properties` into the returned patch of the secret
    /// set. Removals stay: a secret field set to `null`, and an object above secret fields set to `null` (which
    /// removes them with it; that `null` also stays in `patch`, for the other fields of the object).
    pub fn split_patch_from(patch: &mut Value) -> Self {
        let mut secrets = Value::Object(Map::new());
        for pointer in SECRET_FIELDS {
            let (parent, field) = pointer.rsplit_once('/').expect("pointers start with '/'");
            if let Some(removed) = removed_ancestor(patch, parent) {
                let (above, name) = removed.rsplit_once('/').expect("pointers start with '/'");
                insert_at(&mut secrets, above, name, Value::Null);
                continue;
            }
            let taken = patch
                .pointer_mut(parent)
                .and_then(Value::as_object_mut)
                .and_then(|object| object.remove(field));
            if let Some(value) = taken {
                insert_at(&mut secrets, parent, field, value);
            }
        }
        match secrets {
            Value::Object(map) => Self(map),
            _ => unreachable!("built as an object"),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The set without its removals (`null`s), for checking the types of what it sets.
    pub fn without_removals(&self) -> Value {
        fn strip(value: &mut Value) {
            if let Value::Object(map) = value {
                map.retain(|_, v| !v.is_null());
                map.values_mut().for_each(strip);
            }
        }
        let mut value = Value::Object(self.0.clone());
        strip(&mut value);
        value
    }

    /// The JSON the agent receives, sealed.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("a JSON map serialises")
    }
}

/// The first object on the way to `parent` (itself included) that `patch` sets to `null`, as a pointer.
fn removed_ancestor(patch: &Value, parent: &str) -> Option<String> {
    let mut pointer = String::new();
    for segment in parent.split('/').skip(1) {
        pointer.push('/');
        pointer.push_str(segment);
        if patch.pointer(&pointer).is_some_and(Value::is_null) {
            return Some(pointer);
        }
    }
    None
}

fn insert_at(root: &mut Value, parent: &str, field: &str, value: Value) {
    let mut node = root;
    for segment in parent.split('/').skip(1) {
        node = node
            .as_object_mut()
            .expect("only objects are created on the way")
            .entry(segment)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    node.as_object_mut()
        .expect("only objects are created on the way")
        .insert(field.to_owned(), value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_secret_field_is_moved_out_and_nothing_else() {
        let mut props = json!({
            "sourceKind": "AzureBlob",
            "configurationProtectedSettings": {"sshPrivateKey": "c2VjcmV0"},
            "azureBlob": {
                "url": "https://x.blob.core.windows.net",
                "accountKey": "key1",
                "sasToken": null,
                "servicePrincipal": {"clientId": "id", "clientSecret": "s1", "clientCertificate": "c1",
                                     "clientCertificatePassword": "p1"}
            },
            "ociRepository": {"tlsConfig": {"clientCertificate": "a", "privateKey": "b", "caCertificate": "c"}}
        });
        let secrets = SecretFields::split_from(&mut props);
        let text = props.to_string();
        for secret in ["c2VjcmV0", "key1", "s1", "c1", "p1", "\"a\"", "\"b\"", "\"c\""] {
            assert!(!text.contains(secret), "{secret} left in {text}");
        }
        assert_eq!(props["azureBlob"]["servicePrincipal"]["clientId"], "id");
        assert_eq!(props["azureBlob"]["url"], "https://x.blob.core.windows.net");
        let sparse: Value = serde_json::from_slice(&secrets.to_bytes()).unwrap();
        assert_eq!(sparse["azureBlob"]["servicePrincipal"]["clientSecret"], "s1");
        assert_eq!(sparse["configurationProtectedSettings"]["sshPrivateKey"], "c2VjcmV0");
        assert!(sparse["azureBlob"].get("sasToken").is_none());
        assert!(sparse.get("sourceKind").is_none());
    }

    #[test]
    fn debug_output_shows_no_secret() {
        let mut props = json!({"configurationProtectedSettings": {"k": "hunter2"}});
        let secrets = SecretFields::split_from(&mut props);
        assert!(!format!("{secrets:?}").contains("hunter2"));
    }

    #[test]
    fn a_patch_keeps_its_removals_of_secrets() {
        let mut patch = json!({
            "configurationProtectedSettings": {"sshPrivateKey": null, "httpsKey": "bmV3"},
            "azureBlob": null,
            "ociRepository": {"tlsConfig": {"privateKey": null}, "url": "oci://r/x"},
            "suspend": true
        });
        let secrets = SecretFields::split_patch_from(&mut patch);
        let sealed: Value = serde_json::from_slice(&secrets.to_bytes()).unwrap();
        assert_eq!(
            sealed,
            json!({
                "configurationProtectedSettings": {"sshPrivateKey": null, "httpsKey": "bmV3"},
                "azureBlob": null,
                "ociRepository": {"tlsConfig": {"privateKey": null}}
            })
        );
        // what is not secret stays in the patch, the removal of a whole source included
        assert_eq!(
            patch,
            json!({"azureBlob": null, "ociRepository": {"tlsConfig": {}, "url": "oci://r/x"}, "suspend": true})
        );
        assert_eq!(
            secrets.without_removals(),
            json!({"configurationProtectedSettings": {"httpsKey": "bmV3"}, "ociRepository": {"tlsConfig": {}}})
        );
    }

    #[test]
    fn a_patch_without_secrets_leaves_them_untouched() {
        let mut patch = json!({"suspend": true, "gitRepository": {"url": "https://x"}});
        assert!(SecretFields::split_patch_from(&mut patch).is_empty());
        assert_eq!(patch["gitRepository"]["url"], "https://x");
    }
}
