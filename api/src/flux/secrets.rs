//! The secret fields of a Flux configuration: the one list of them, and how they are split from the rest of the
//! properties so that only ciphertext of them is ever stored and no response carries them.

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

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The sparse properties document, for merging back into the full properties (PATCH) or for validation.
    pub fn as_value(&self) -> Value {
        Value::Object(self.0.clone())
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(&self.0).expect("a JSON map serialises")
    }

    pub fn from_bytes(bytes: &[u8]) -> anyhow::Result<Self> {
        Ok(Self(serde_json::from_slice(bytes)?))
    }
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
        let sparse = secrets.as_value();
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
        assert_eq!(SecretFields::from_bytes(&secrets.to_bytes()).unwrap(), secrets);
    }
}
