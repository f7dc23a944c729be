//! `fluxplane agent register`: a new key pair for the agent, its public half registered on the cluster with a
//! user token (creating the cluster if needed), its private half saved in the identity file with a new encryption
//! key, whose public half is then registered over the agent API. Registering again rotates both keys: the old
//! signing key stops working at once, and secrets sealed to the old encryption key that were not delivered yet
//! must be written again.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::client::ControlPlane;
use crate::identity::Identity;
use crate::tls::Trust;

const CLUSTER_API_VERSION: &str = "2024-01-01";

/// What a registration says about the cluster.
#[derive(Debug, Clone)]
pub struct Registration {
    pub server: String,
    /// A user token with the Contributor role on the cluster.
    pub user_token: String,
    /// `/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.Kubernetes/connectedClusters/{name}`.
    pub cluster_id: String,
    /// Tags to set (merged over the cluster's existing ones).
    pub tags: BTreeMap<String, String>,
    /// Where the cluster is; needed only when it is created.
    pub location: Option<String>,
    /// The CAs the control plane's certificate may come from, beside the platform's roots.
    pub trust: Trust,
}

/// Registers the agent and writes its identity to `identity_path`.
pub async fn register(registration: &Registration, identity_path: &Path) -> anyhow::Result<Identity> {
    let id = registration.cluster_id.trim_end_matches('/');
    if !id.starts_with("/subscriptions/")
        || !id
            .to_ascii_lowercase()
            .contains("/providers/microsoft.kubernetes/connectedclusters/")
    {
        bail!(
            "--cluster must be a connected cluster's ARM id: /subscriptions/{{sub}}/resourceGroups/{{rg}}/providers/Microsoft.Kubernetes/connectedClusters/{{name}}"
        );
    }
    let server = registration.server.trim_end_matches('/');
    let new = Identity::generate(server, id)?;
    let url = format!("{server}{id}?api-version={CLUSTER_API_VERSION}");
    let http = crate::tls::http_client_trusting(&registration.trust).build()?;
    let existing = http
        .get(&url)
        .bearer_auth(&registration.user_token)
        .send()
        .await
        .with_context(|| {
            let hint = if server.starts_with("https://") {
                " (a certificate from a private CA, such as fluxplane dev's, needs --ca-file)"
            } else {
                ""
            };
            format!("reaching the control plane at {server}{hint}")
        })?;
    let mut body = match existing.status().as_u16() {
        200 => existing.json::<Value>().await?,
        404 => json!({
            "location": registration.location.clone().unwrap_or_else(|| "local".to_owned()),
            "properties": {},
        }),
        status => bail!(
            "reading the cluster failed ({status}): {}",
            existing.text().await.unwrap_or_default()
        ),
    };
    if let Some(location) = &registration.location {
        body["location"] = json!(location);
    }
    let tags = body["tags"].as_object().cloned().unwrap_or_default();
    let mut merged: BTreeMap<String, Value> = tags.into_iter().collect();
    merged.extend(registration.tags.iter().map(|(k, v)| (k.clone(), json!(v))));
    body["tags"] = json!(merged);
    body["properties"]["agentPublicKeyCertificate"] = json!(new.public_key);
    let written = http
        .put(&url)
        .bearer_auth(&registration.user_token)
        .json(&body)
        .send()
        .await?;
    if !written.status().is_success() {
        bail!(
            "registering the cluster failed ({}): {}",
            written.status(),
            written.text().await.unwrap_or_default()
        );
    }
    new.identity.save(identity_path)?;
    // secrets can be written for the cluster from here on (`agent run` registers it again at every start)
    ControlPlane::trusting(new.identity.clone(), &registration.trust)?
        .register_encryption_key()
        .await
        .context("registering the agent's encryption key")?;
    Ok(new.identity)
}
