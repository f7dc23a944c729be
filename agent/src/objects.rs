//! The Flux objects a Flux configuration implies, named as Azure's Flux extension names them: the source object
//! takes the configuration's name, each kustomization becomes `{configuration}-{kustomization}`, and credentials
//! live in the secret `localAuthRef` names or, when the configuration carries its own, `{configuration}-auth`.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fluxplane_agent_protocol::agent::DesiredConfiguration;
use fluxplane_agent_protocol::flux::{
    FluxConfigurationSpec, Kustomization, OciRepository, ProviderType, ScopeType, SourceKind,
};
use serde_json::{Map, Value, json};

use crate::deploy_key::{DeployKey, public_key_of};
use crate::secrets::{Credentials, SecretSet, flux_secret_data, spec_with};

pub const SOURCE_API: &str = "source.toolkit.fluxcd.io/v1";
pub const KUSTOMIZE_API: &str = "kustomize.toolkit.fluxcd.io/v1";
/// Our own resource: the configuration as received (deploy/crds/fluxconfigs.fluxplane.io.yaml).
pub const FLUXCONFIG_API: &str = "fluxplane.io/v1alpha1";
/// The annotation of a FluxConfig that records the generation its objects were written at.
pub const GENERATION_ANNOTATION: &str = "fluxplane.io/generation";
/// The label every object of a configuration carries, naming the configuration.
pub const CONFIGURATION_LABEL: &str = "fluxplane.io/configuration";
/// The label every object fluxplane writes carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "fluxplane");

/// Flux's annotation that asks its controllers to reconcile an object at once: a new value is a new request.
pub const RECONCILE_REQUESTED_AT: &str = "reconcile.fluxcd.io/requestedAt";

/// The annotation of a configuration's secret that records the version of the secret set it holds.
pub const SECRETS_VERSION_ANNOTATION: &str = "fluxplane.io/secrets-version";
/// The key of a configuration's secret that holds the secret set as delivered (JSON), which later patches of the
/// set apply to; Flux reads the other keys.
pub const SECRET_SET_KEY: &str = "fluxplane.json";

/// The annotation of a configuration's secret that marks its `identity` as a deploy key the agent made.
pub const DEPLOY_KEY_ANNOTATION: &str = "fluxplane.io/deploy-key";
/// The keys of a Flux secret that hold an SSH private key and its public half.
const IDENTITY_KEY: &str = "identity";
const IDENTITY_PUB_KEY: &str = "identity.pub";

/// The name of the secret holding the credentials a configuration brings along.
pub fn auth_secret_name(configuration: &str) -> String {
    format!("{configuration}-auth")
}

/// Every object a configuration's generation puts in the cluster, the FluxConfig last (its generation annotation
/// says the rest is in place): the Flux objects, and the secret when the configuration has credentials.
pub fn configuration_objects(configuration: &DesiredConfiguration, credentials: &Credentials) -> Vec<Value> {
    let spec = spec_with(&configuration.spec, credentials.secrets.as_ref());
    let mut objects = flux_objects(&configuration.name, &spec);
    if let Some(requested) = &configuration.reconcile_requested_at {
        // Flux reconciles an object whose annotation changes at once: the source fetches, the Kustomizations apply
        for object in &mut objects {
            object["metadata"]["annotations"][RECONCILE_REQUESTED_AT] = Value::String(requested.clone());
        }
    }
    let auth = json!({ "name": auth_secret_name(&configuration.name) });
    if credentials.deploy_key.is_some() {
        // the key the agent made is what the source authenticates with (only made where nothing else would be)
        objects[0]["spec"]["secretRef"] = auth.clone();
    }
    // the secret exists whenever the source names it: credentials that are not secret (an HTTPS user, a managed
    // identity's client id, known hosts) live there too
    let named = objects[0]["spec"]["secretRef"] == auth || objects[0]["spec"]["certSecretRef"] == auth;
    // the keys go in before the OCIRepository that verifies with them (after the source is addressed as `objects[0]`)
    objects.splice(0..0, verification_secret_object(&configuration.name, &spec));
    if named || credentials.secrets.is_some() {
        objects.push(auth_secret_object(configuration, &spec, credentials));
    }
    objects.push(flux_config_object(configuration));
    objects
}

/// The configuration's secret: what Flux reads under its own key names, the secret set itself, and the deploy key
/// the agent made (marked as such, so that a key of the user's is never taken for one).
fn auth_secret_object(
    configuration: &DesiredConfiguration,
    spec: &FluxConfigurationSpec,
    credentials: &Credentials,
) -> Value {
    let namespace = spec.namespace.as_deref().unwrap_or("default");
    let name = auth_secret_name(&configuration.name);
    let mut metadata = metadata(&name, namespace, &configuration.name);
    let mut annotations = Map::new();
    let mut data = flux_secret_data(spec, credentials.secrets.as_ref());
    if let Some(secrets) = &credentials.secrets {
        annotations.insert(SECRETS_VERSION_ANNOTATION.into(), secrets.version.to_string().into());
        let set = serde_json::to_vec(&secrets.settings).expect("a JSON map serialises");
        data.insert(SECRET_SET_KEY.to_owned(), STANDARD.encode(set));
    }
    if let Some(key) = &credentials.deploy_key {
        annotations.insert(DEPLOY_KEY_ANNOTATION.into(), "true".into());
        data.insert(IDENTITY_KEY.to_owned(), STANDARD.encode(key.private_openssh()));
        data.insert(IDENTITY_PUB_KEY.to_owned(), STANDARD.encode(key.public_openssh()));
    }
    metadata["annotations"] = Value::Object(annotations);
    json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata,
        "type": "Opaque",
        "data": data,
    })
}

/// What a configuration's secret (as read back from the cluster) holds; nothing for anything else.
pub fn credentials_of(object: &Value) -> Credentials {
    let data = |key: &str| object["data"][key].as_str().and_then(|text| STANDARD.decode(text).ok());
    let secrets = (|| {
        let version = object["metadata"]["annotations"][SECRETS_VERSION_ANNOTATION]
            .as_str()?
            .parse()
            .ok()?;
        Some(SecretSet {
            version,
            settings: serde_json::from_slice(&data(SECRET_SET_KEY)?).ok()?,
        })
    })();
    let deploy_key = (object["metadata"]["annotations"][DEPLOY_KEY_ANNOTATION] == "true")
        .then(|| data(IDENTITY_KEY))
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| DeployKey::from_openssh(&text).ok());
    Credentials { secrets, deploy_key }
}

/// The public key the configuration's source authenticates with, from its secret as read back: the deploy key the
/// agent made, or the public half of the user's own key where its format carries one (`repositoryPublicKey`).
pub fn repository_public_key_of(object: &Value) -> Option<String> {
    let key = STANDARD.decode(object["data"][IDENTITY_KEY].as_str()?).ok()?;
    public_key_of(&key)
}

/// The Flux objects of a configuration whose spec the control plane has normalised (defaults filled in):
/// first the source, then one `Kustomization` per kustomization in name order.
pub fn flux_objects(configuration: &str, spec: &FluxConfigurationSpec) -> Vec<Value> {
    let namespace = spec.namespace.as_deref().unwrap_or("default");
    let mut objects = vec![source_object(configuration, namespace, spec)];
    let kind = spec.source_kind.unwrap_or(SourceKind::GitRepository);
    for (name, kustomization) in spec.kustomizations.iter().flatten() {
        objects.push(kustomization_object(
            configuration,
            namespace,
            kind,
            name,
            kustomization,
            spec,
        ));
    }
    objects
}

fn metadata(name: &str, namespace: &str, configuration: &str) -> Value {
    json!({
        "name": name,
        "namespace": namespace,
        "labels": {
            MANAGED_BY.0: MANAGED_BY.1,
            CONFIGURATION_LABEL: configuration,
        }
    })
}

/// The FluxConfig object of a configuration, annotated with the generation it describes.
pub fn flux_config_object(configuration: &DesiredConfiguration) -> Value {
    let namespace = configuration.spec.namespace.as_deref().unwrap_or("default");
    let mut metadata = metadata(&configuration.name, namespace, &configuration.name);
    metadata["annotations"] = json!({GENERATION_ANNOTATION: configuration.generation.to_string()});
    json!({
        "apiVersion": FLUXCONFIG_API,
        "kind": "FluxConfig",
        "metadata": metadata,
        "spec": configuration.spec,
    })
}

fn seconds(value: Option<i64>) -> Option<Value> {
    value.map(|s| Value::String(format!("{s}s")))
}

/// Inserts `value` under `key` unless it is absent.
fn put(map: &mut Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(value) = value {
        map.insert(key.to_owned(), value);
    }
}

fn secret_ref(name: Option<String>) -> Option<Value> {
    name.map(|name| json!({ "name": name }))
}

/// The secret the source authenticates with: the user's own (`localAuthRef`) or the one built from what the
/// configuration carries.
fn auth_secret(configuration: &str, local_auth_ref: Option<&String>, carries_credentials: bool) -> Option<String> {
    local_auth_ref
        .cloned()
        .or_else(|| carries_credentials.then(|| auth_secret_name(configuration)))
}

fn source_object(configuration: &str, namespace: &str, spec: &FluxConfigurationSpec) -> Value {
    let protected = spec
        .configuration_protected_settings
        .as_ref()
        .is_some_and(|s| !s.is_empty());
    let mut s = Map::new();
    let kind = match spec.source_kind.unwrap_or(SourceKind::GitRepository) {
        SourceKind::GitRepository => {
            let git = spec.git_repository.clone().unwrap_or_default();
            put(&mut s, "url", git.url.clone().map(Value::String));
            put(&mut s, "interval", seconds(git.sync_interval_in_seconds));
            put(&mut s, "timeout", seconds(git.timeout_in_seconds));
            if let Some(r) = &git.repository_ref {
                let mut reference = Map::new();
                put(&mut reference, "branch", r.branch.clone().map(Value::String));
                put(&mut reference, "tag", r.tag.clone().map(Value::String));
                put(&mut reference, "semver", r.semver.clone().map(Value::String));
                put(&mut reference, "commit", r.commit.clone().map(Value::String));
                s.insert("ref".into(), Value::Object(reference));
            }
            let carries =
                protected || git.https_user.is_some() || git.https_ca_cert.is_some() || git.ssh_known_hosts.is_some();
            put(
                &mut s,
                "secretRef",
                secret_ref(auth_secret(configuration, git.local_auth_ref.as_ref(), carries)),
            );
            let provider = git.provider.map(|p| match p {
                ProviderType::Azure => "azure",
                ProviderType::GitHub => "github",
                ProviderType::Generic => "generic",
            });
            put(&mut s, "provider", provider.map(|p| Value::String(p.into())));
            "GitRepository"
        }
        SourceKind::Bucket => {
            let bucket = spec.bucket.clone().unwrap_or_default();
            s.insert("provider".into(), json!("generic"));
            put(&mut s, "bucketName", bucket.bucket_name.clone().map(Value::String));
            put(
                &mut s,
                "endpoint",
                bucket.url.as_deref().map(endpoint).map(Value::String),
            );
            put(&mut s, "insecure", bucket.insecure.map(Value::Bool));
            put(&mut s, "interval", seconds(bucket.sync_interval_in_seconds));
            put(&mut s, "timeout", seconds(bucket.timeout_in_seconds));
            let carries = protected || bucket.access_key.is_some();
            put(
                &mut s,
                "secretRef",
                secret_ref(auth_secret(configuration, bucket.local_auth_ref.as_ref(), carries)),
            );
            "Bucket"
        }
        SourceKind::AzureBlob => {
            let blob = spec.azure_blob.clone().unwrap_or_default();
            s.insert("provider".into(), json!("azure"));
            put(&mut s, "bucketName", blob.container_name.clone().map(Value::String));
            put(&mut s, "endpoint", blob.url.clone().map(Value::String));
            put(&mut s, "interval", seconds(blob.sync_interval_in_seconds));
            put(&mut s, "timeout", seconds(blob.timeout_in_seconds));
            let carries = protected
                || blob.account_key.is_some()
                || blob.sas_token.is_some()
                || blob.service_principal.is_some()
                || blob.managed_identity.is_some();
            put(
                &mut s,
                "secretRef",
                secret_ref(auth_secret(configuration, blob.local_auth_ref.as_ref(), carries)),
            );
            "Bucket"
        }
        SourceKind::OciRepository => {
            oci_spec(&mut s, configuration, spec.oci_repository.as_ref(), protected);
            "OCIRepository"
        }
    };
    json!({
        "apiVersion": SOURCE_API,
        "kind": kind,
        "metadata": metadata(configuration, namespace, configuration),
        "spec": Value::Object(s),
    })
}

fn oci_spec(s: &mut Map<String, Value>, configuration: &str, oci: Option<&OciRepository>, protected: bool) {
    let oci = oci.cloned().unwrap_or_default();
    put(s, "url", oci.url.clone().map(Value::String));
    put(s, "interval", seconds(oci.sync_interval_in_seconds));
    put(s, "timeout", seconds(oci.timeout_in_seconds));
    if let Some(r) = &oci.repository_ref {
        let mut reference = Map::new();
        put(&mut reference, "tag", r.tag.clone().map(Value::String));
        put(&mut reference, "semver", r.semver.clone().map(Value::String));
        put(&mut reference, "digest", r.digest.clone().map(Value::String));
        s.insert("ref".into(), Value::Object(reference));
    }
    if let Some(selector) = &oci.layer_selector {
        let mut layer = Map::new();
        put(&mut layer, "mediaType", selector.media_type.clone().map(Value::String));
        put(
            &mut layer,
            "operation",
            selector.operation.map(|o| serde_json::to_value(o).expect("an enum")),
        );
        s.insert("layerSelector".into(), Value::Object(layer));
    }
    if let Some(verify) = &oci.verify {
        let mut v = Map::new();
        put(&mut v, "provider", verify.provider.clone().map(Value::String));
        let identities: Option<Vec<Value>> = verify.match_oidc_identity.as_ref().map(|ids| {
            ids.iter()
                .map(|id| json!({"issuer": id.issuer, "subject": id.subject}))
                .collect()
        });
        put(&mut v, "matchOIDCIdentity", identities.map(Value::Array));
        if verify.verification_config.as_ref().is_some_and(|keys| !keys.is_empty()) {
            v.insert(
                "secretRef".into(),
                json!({ "name": verification_secret_name(configuration) }),
            );
        }
        s.insert("verify".into(), Value::Object(v));
    }
    put(s, "insecure", oci.insecure.map(Value::Bool));
    put(
        s,
        "serviceAccountName",
        oci.service_account_name.clone().map(Value::String),
    );
    if oci.use_workload_identity == Some(true) {
        s.insert("provider".into(), json!("azure"));
    }
    let carries_tls = oci.tls_config.is_some();
    if carries_tls {
        s.insert(
            "certSecretRef".into(),
            json!({ "name": auth_secret_name(configuration) }),
        );
    }
    put(
        s,
        "secretRef",
        secret_ref(auth_secret(configuration, oci.local_auth_ref.as_ref(), protected)),
    );
}

/// The secret holding an OCI source's trusted public keys (`verify.verificationConfig`), which Flux reads through
/// `verify.secretRef`.
pub fn verification_secret_name(configuration: &str) -> String {
    format!("{configuration}-verify")
}

/// The secret of an OCI source's `verify.verificationConfig`, if it has keys. Flux only reads keys ending in `.pub`,
/// so a name without it gets it; a value that is base64 already (as Azure documents) is kept, PEM text is encoded.
/// The keys are public: the secret is no secret set, and exists whether or not the configuration has secrets.
fn verification_secret_object(configuration: &str, spec: &FluxConfigurationSpec) -> Option<Value> {
    if spec.source_kind != Some(SourceKind::OciRepository) {
        return None;
    }
    let keys = spec
        .oci_repository
        .as_ref()?
        .verify
        .as_ref()?
        .verification_config
        .as_ref()?;
    if keys.is_empty() {
        return None;
    }
    let data: Map<String, Value> = keys
        .iter()
        .map(|(name, key)| {
            let name = if name.ends_with(".pub") {
                name.clone()
            } else {
                format!("{name}.pub")
            };
            let value = match STANDARD.decode(key.trim()) {
                Ok(_) => key.trim().to_owned(),
                Err(_) => STANDARD.encode(key),
            };
            (name, Value::String(value))
        })
        .collect();
    let namespace = spec.namespace.as_deref().unwrap_or("default");
    Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": metadata(&verification_secret_name(configuration), namespace, configuration),
        "type": "Opaque",
        "data": data,
    }))
}

/// A bucket endpoint is a host (and port) without a scheme.
fn endpoint(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    rest.trim_end_matches('/').to_owned()
}

fn kustomization_object(
    configuration: &str,
    namespace: &str,
    source_kind: SourceKind,
    name: &str,
    k: &Kustomization,
    spec: &FluxConfigurationSpec,
) -> Value {
    let mut s = Map::new();
    let source = match source_kind {
        SourceKind::GitRepository => "GitRepository",
        SourceKind::Bucket | SourceKind::AzureBlob => "Bucket",
        SourceKind::OciRepository => "OCIRepository",
    };
    s.insert(
        "sourceRef".into(),
        json!({"kind": source, "name": configuration, "namespace": namespace}),
    );
    s.insert("path".into(), json!(k.path.clone().unwrap_or_default()));
    put(&mut s, "interval", seconds(k.sync_interval_in_seconds));
    put(&mut s, "timeout", seconds(k.timeout_in_seconds));
    put(&mut s, "retryInterval", seconds(k.retry_interval_in_seconds));
    put(&mut s, "prune", k.prune.map(Value::Bool));
    put(&mut s, "force", k.force.map(Value::Bool));
    put(&mut s, "wait", k.wait.map(Value::Bool));
    put(&mut s, "suspend", spec.suspend.map(Value::Bool));
    let depends: Vec<Value> = k
        .depends_on
        .iter()
        .flatten()
        .map(|d| json!({ "name": format!("{configuration}-{d}") }))
        .collect();
    if !depends.is_empty() {
        s.insert("dependsOn".into(), Value::Array(depends));
    }
    if spec.scope == Some(ScopeType::Namespace) {
        s.insert("targetNamespace".into(), json!(namespace));
    }
    if let Some(post) = &k.post_build {
        let mut p = Map::new();
        put(&mut p, "substitute", post.substitute.as_ref().map(|m| json!(m)));
        let from: Option<Vec<Value>> = post.substitute_from.as_ref().map(|list| {
            list.iter()
                .map(|f| json!({"kind": f.kind, "name": f.name, "optional": f.optional.unwrap_or(false)}))
                .collect()
        });
        put(&mut p, "substituteFrom", from.map(Value::Array));
        s.insert("postBuild".into(), Value::Object(p));
    }
    let mut metadata = metadata(&format!("{configuration}-{name}"), namespace, configuration);
    metadata["labels"]["fluxplane.io/kustomization"] = json!(name);
    json!({
        "apiVersion": KUSTOMIZE_API,
        "kind": "Kustomization",
        "metadata": metadata,
        "spec": Value::Object(s),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(value: Value) -> FluxConfigurationSpec {
        serde_json::from_value(value).unwrap()
    }

    fn desired(url: &str) -> DesiredConfiguration {
        DesiredConfiguration {
            name: "cfg".into(),
            generation: 1,
            spec: spec(json!({"namespace": "ns", "sourceKind": "GitRepository", "gitRepository": {"url": url}})),
            ..Default::default()
        }
    }

    fn secret_of(objects: &[Value]) -> &Value {
        objects.iter().find(|o| o["kind"] == "Secret").expect("a secret")
    }

    #[test]
    fn a_deploy_key_alone_makes_the_auth_secret_and_reads_back_as_the_agents_own() {
        let key = DeployKey::generate("fluxplane:c/cfg");
        let credentials = Credentials {
            secrets: None,
            deploy_key: Some(key.clone()),
        };
        let objects = configuration_objects(&desired("ssh://git@host/repo"), &credentials);
        assert_eq!(objects[0]["spec"]["secretRef"], json!({"name": "cfg-auth"}));
        let secret = secret_of(&objects);
        assert_eq!(secret["metadata"]["annotations"][DEPLOY_KEY_ANNOTATION], "true");
        assert!(
            secret["data"].get(SECRET_SET_KEY).is_none(),
            "no secret set was delivered"
        );
        assert_eq!(credentials_of(secret), credentials);
        assert_eq!(repository_public_key_of(secret), Some(key.public_openssh()));
    }

    #[test]
    fn a_source_that_names_the_auth_secret_gets_it_even_without_secrets() {
        let mut configuration = desired("https://github.com/org/repo");
        configuration.spec.git_repository.as_mut().unwrap().https_user = Some("bot".into());
        let objects = configuration_objects(&configuration, &Credentials::default());
        assert_eq!(objects[0]["spec"]["secretRef"], json!({"name": "cfg-auth"}));
        assert_eq!(secret_of(&objects)["data"]["username"], STANDARD.encode("bot"));
        let plain = configuration_objects(&desired("https://github.com/org/repo"), &Credentials::default());
        assert!(!plain.iter().any(|o| o["kind"] == "Secret"), "nothing to hold");
    }

    #[test]
    fn a_users_own_key_is_never_taken_for_a_deploy_key_but_shows_its_public_half() {
        let users = DeployKey::generate("me@laptop");
        let secrets = SecretSet {
            version: 3,
            settings: json!({"configurationProtectedSettings":
                {"sshPrivateKey": STANDARD.encode(users.private_openssh())}})
            .as_object()
            .unwrap()
            .clone(),
        };
        let credentials = Credentials {
            secrets: Some(secrets),
            deploy_key: None,
        };
        let objects = configuration_objects(&desired("ssh://git@host/repo"), &credentials);
        let secret = secret_of(&objects);
        assert_eq!(credentials_of(secret), credentials);
        assert_eq!(credentials_of(secret).deploy_key, None);
        assert_eq!(repository_public_key_of(secret), Some(users.public_openssh()));
    }

    #[test]
    fn a_git_configuration_becomes_a_git_repository_and_its_kustomizations() {
        let objects = flux_objects(
            "cfg",
            &spec(json!({
                "namespace": "flux-system", "sourceKind": "GitRepository", "suspend": false,
                "gitRepository": {"url": "https://github.com/org/repo", "syncIntervalInSeconds": 600,
                                  "timeoutInSeconds": 120, "repositoryRef": {"branch": "main"}},
                "kustomizations": {
                    "infra": {"path": "./infra", "syncIntervalInSeconds": 600, "prune": false, "wait": true},
                    "apps": {"path": "./apps", "dependsOn": ["infra"], "prune": true,
                             "postBuild": {"substitute": {"env": "prod"},
                                           "substituteFrom": [{"kind": "ConfigMap", "name": "vars"}]}}
                }
            })),
        );
        assert_eq!(objects.len(), 3);
        let source = &objects[0];
        assert_eq!(source["apiVersion"], SOURCE_API);
        assert_eq!(source["kind"], "GitRepository");
        assert_eq!(source["metadata"]["name"], "cfg");
        assert_eq!(source["metadata"]["namespace"], "flux-system");
        assert_eq!(source["spec"]["ref"], json!({"branch": "main"}));
        assert_eq!(source["spec"]["interval"], "600s");
        assert_eq!(source["spec"]["timeout"], "120s");
        assert!(
            source["spec"].get("secretRef").is_none(),
            "nothing to authenticate with"
        );

        let apps = objects.iter().find(|o| o["metadata"]["name"] == "cfg-apps").unwrap();
        assert_eq!(apps["kind"], "Kustomization");
        assert_eq!(
            apps["spec"]["sourceRef"],
            json!({"kind": "GitRepository", "name": "cfg", "namespace": "flux-system"})
        );
        assert_eq!(apps["spec"]["dependsOn"], json!([{"name": "cfg-infra"}]));
        assert_eq!(apps["spec"]["prune"], true);
        assert_eq!(apps["spec"]["postBuild"]["substitute"], json!({"env": "prod"}));
        assert_eq!(apps["spec"]["postBuild"]["substituteFrom"][0]["optional"], false);
        assert_eq!(apps["spec"]["suspend"], false);
    }

    #[test]
    fn a_reconcile_request_annotates_what_flux_reconciles_and_nothing_else() {
        let mut configuration = DesiredConfiguration {
            name: "cfg".into(),
            generation: 2,
            spec: spec(json!({"namespace": "ns", "sourceKind": "GitRepository",
                "gitRepository": {"url": "https://x.io/r", "repositoryRef": {"branch": "main"}, "httpsUser": "bot"},
                "kustomizations": {"apps": {"path": "./apps"}, "infra": {"path": "./infra"}}})),
            ..Default::default()
        };
        let plain = configuration_objects(&configuration, &Credentials::default());
        assert!(
            plain
                .iter()
                .all(|o| o["metadata"]["annotations"].get(RECONCILE_REQUESTED_AT).is_none()),
            "no request, no annotation"
        );
        configuration.reconcile_requested_at = Some("2026-11-21T18:20:05.123Z".into());
        let objects = configuration_objects(&configuration, &Credentials::default());
        let annotated: Vec<&str> = objects
            .iter()
            .filter(|o| o["metadata"]["annotations"][RECONCILE_REQUESTED_AT] == "2026-11-21T18:20:05.123Z")
            .map(|o| o["metadata"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            annotated,
            ["cfg", "cfg-apps", "cfg-infra"],
            "the source and every Kustomization"
        );
        let flux_config = objects.iter().find(|o| o["kind"] == "FluxConfig").unwrap();
        assert_eq!(
            flux_config["metadata"]["annotations"][GENERATION_ANNOTATION], "2",
            "the generation stays what it was"
        );
    }

    #[test]
    fn credentials_point_at_the_auth_secret_or_the_users_own() {
        let with_key = spec(json!({
            "gitRepository": {"url": "ssh://git@github.com/org/repo", "repositoryRef": {"tag": "v1"}},
            "configurationProtectedSettings": {"sshPrivateKey": "a2V5"}
        }));
        assert_eq!(
            flux_objects("cfg", &with_key)[0]["spec"]["secretRef"],
            json!({"name": "cfg-auth"})
        );
        let own = spec(json!({
            "gitRepository": {"url": "https://x.io/r", "repositoryRef": {"branch": "m"}, "localAuthRef": "mine"}
        }));
        assert_eq!(
            flux_objects("cfg", &own)[0]["spec"]["secretRef"],
            json!({"name": "mine"})
        );
    }

    #[test]
    fn buckets_blobs_and_oci_repositories_map_to_their_flux_kinds() {
        let bucket = flux_objects(
            "b",
            &spec(
                json!({"sourceKind": "Bucket", "bucket": {"url": "https://minio.local:9000/", "bucketName": "gitops",
                                                             "insecure": true, "accessKey": "id"}}),
            ),
        );
        assert_eq!(bucket[0]["kind"], "Bucket");
        assert_eq!(bucket[0]["spec"]["endpoint"], "minio.local:9000");
        assert_eq!(bucket[0]["spec"]["secretRef"], json!({"name": "b-auth"}));
        let blob = flux_objects(
            "z",
            &spec(
                json!({"sourceKind": "AzureBlob", "azureBlob": {"url": "https://acct.blob.core.windows.net",
                                                                    "containerName": "c"}}),
            ),
        );
        assert_eq!(
            (blob[0]["kind"].clone(), blob[0]["spec"]["provider"].clone()),
            (json!("Bucket"), json!("azure"))
        );
        let oci = flux_objects(
            "o",
            &spec(
                json!({"sourceKind": "OCIRepository", "scope": "namespace", "namespace": "team",
                         "ociRepository": {"url": "oci://ghcr.io/org/manifests", "repositoryRef": {"semver": ">=1.0"},
                                           "useWorkloadIdentity": true},
                         "kustomizations": {"k": {"path": "./"}}}),
            ),
        );
        assert_eq!(oci[0]["kind"], "OCIRepository");
        assert_eq!(oci[0]["spec"]["provider"], "azure");
        assert_eq!(oci[1]["spec"]["sourceRef"]["kind"], "OCIRepository");
        assert_eq!(oci[1]["spec"]["targetNamespace"], "team");
    }

    #[test]
    fn oci_cosign_keys_become_the_secret_verify_names() {
        let configuration = DesiredConfiguration {
            name: "o".into(),
            generation: 1,
            deleting: false,
            spec: spec(json!({"sourceKind": "OCIRepository", "namespace": "team",
                "ociRepository": {"url": "oci://ghcr.io/org/manifests", "repositoryRef": {"tag": "v1"},
                    "verify": {"provider": "cosign",
                               "verificationConfig": {"cosign.pub": "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0K",
                                                      "team": "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n"},
                               "matchOidcIdentity": [{"issuer": "^https://token.actions.githubusercontent.com$",
                                                      "subject": "^https://github.com/org/.*$"}]}}})),
            secrets_version: None,
            sealed_secrets: Vec::new(),
            reconcile_requested_at: None,
        };
        let objects = configuration_objects(&configuration, &Credentials::default());
        let secret = &objects[0];
        assert_eq!(secret["kind"], "Secret");
        assert_eq!(secret["metadata"]["name"], "o-verify");
        assert_eq!(secret["metadata"]["namespace"], "team");
        assert_eq!(secret["data"]["cosign.pub"], "LS0tLS1CRUdJTiBQVUJMSUMgS0VZLS0tLS0K");
        assert_eq!(
            STANDARD.decode(secret["data"]["team.pub"].as_str().unwrap()).unwrap(),
            b"-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----\n"
        );
        let source = objects.iter().find(|o| o["kind"] == "OCIRepository").unwrap();
        assert_eq!(source["spec"]["verify"]["provider"], "cosign");
        assert_eq!(source["spec"]["verify"]["secretRef"], json!({"name": "o-verify"}));
        assert_eq!(
            source["spec"]["verify"]["matchOIDCIdentity"][0]["subject"],
            "^https://github.com/org/.*$"
        );

        let mut keyless = configuration.clone();
        keyless
            .spec
            .oci_repository
            .as_mut()
            .unwrap()
            .verify
            .as_mut()
            .unwrap()
            .verification_config = None;
        let objects = configuration_objects(&keyless, &Credentials::default());
        assert!(objects.iter().all(|o| o["kind"] != "Secret"), "no keys, no secret");
        let source = objects.iter().find(|o| o["kind"] == "OCIRepository").unwrap();
        assert!(source["spec"]["verify"].get("secretRef").is_none());
    }
}
