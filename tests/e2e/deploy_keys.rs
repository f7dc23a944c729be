//! End-to-end: a Git source reached over SSH through a real OpenSSH server. Without a key of the user's, the agent
//! makes a deploy key and the configuration shows its public half (`repositoryPublicKey`); once the repository
//! trusts that key, the source syncs; the key outlives a restart of the agent; a key of the user's replaces it.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fluxplane_agent::deploy_key::DeployKey;
use fluxplane_api::on_both_backends;
use fluxplane_api::testing::Backend;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::agents::*;
use crate::common::git::{MANIFEST, Repository};
use crate::common::sshd::SshServer;
use crate::common::*;

on_both_backends!(
    an_ssh_source_without_a_key_gets_a_deploy_key_whose_public_half_the_user_adds,
    deploy_key_case
);
async fn deploy_key_case(backend: Backend) {
    let Some(api) = Api::start(backend).await else { return };
    let Some(sshd) = SshServer::start() else { return };
    let repository = Repository::new(&[("infra/ns.yaml", MANIFEST), ("apps/app.yaml", MANIFEST)]);
    let url = sshd.url(&repository.bare);
    let identity_dir = tempfile::tempdir().unwrap();
    let identity = registered(&api, "c1", identity_dir.path()).await;
    let agent = RunningAgent::start(identity.clone()).await;
    let cluster = cluster_path("s", "rg", "c1");
    let path = with_version(&config_path(&cluster, "demo"), FLUX_API);

    let mut body = config_body(&url);
    body["properties"]["gitRepository"]["sshKnownHosts"] = json!(sshd.known_hosts);
    let created = api.put_config(&cluster, "demo", body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{created:?}");

    // the repository does not trust the new key yet: the fetch is refused, and the key is shown to add
    let refused = until(&api, &path, "a public key and a refused fetch", |p| {
        p["repositoryPublicKey"].is_string() && p["complianceState"] == "Non-Compliant"
    })
    .await;
    let public = refused["properties"]["repositoryPublicKey"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(public.starts_with("ssh-ed25519 AAAA"), "{public}");
    assert!(public.ends_with(" fluxplane:c1/demo"), "{public}");
    let message = refused["properties"]["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("Permission denied"), "{message}");
    // the private half stays in the cluster, readable by the agent alone
    let key_file = agent.target.path().join(".fluxplane/ssh/demo/identity");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key_file).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    let listed = api
        .get(&with_version(
            &format!("{cluster}/providers/Microsoft.KubernetesConfiguration/fluxConfigurations"),
            FLUX_API,
        ))
        .await;
    assert!(!listed.body.to_string().contains("PRIVATE KEY"), "{listed:?}");

    // the user adds it as a deploy key: the next sync succeeds
    sshd.authorize(&[&public]);
    let head = repository.head();
    until(&api, &path, "Compliant over SSH", |p| {
        p["complianceState"] == "Compliant" && p["sourceSyncedCommitId"] == format!("main@sha1:{head}")
    })
    .await;

    // a restarted agent keeps the key the repository trusts
    let target = agent.stop_keeping_target().await;
    let agent = RunningAgent::start_in(identity, target).await;
    let next = repository.commit(&[("apps/more.yaml", MANIFEST)], "more");
    let synced = until(&api, &path, "the next commit after a restart", |p| {
        p["sourceSyncedCommitId"] == format!("main@sha1:{next}")
    })
    .await;
    assert_eq!(synced["properties"]["repositoryPublicKey"], public.as_str());

    // a key of the user's replaces the deploy key, and its public half is shown instead
    let users = DeployKey::generate("me@laptop");
    sshd.authorize(&[&users.public_openssh()]);
    let patched = api
        .call(
            Method::PATCH,
            &path,
            Some(json!({"properties": {"configurationProtectedSettings": {
                "sshPrivateKey": STANDARD.encode(users.private_openssh())
            }}})),
        )
        .await;
    assert_eq!(patched.status, StatusCode::ACCEPTED, "{patched:?}");
    let last = repository.commit(&[("apps/last.yaml", MANIFEST)], "last");
    let own = until(&api, &path, "the user's key in use", |p| {
        p["repositoryPublicKey"] == users.public_openssh().as_str()
            && p["complianceState"] == "Compliant"
            && p["sourceSyncedCommitId"] == format!("main@sha1:{last}")
    })
    .await;
    assert!(!own.to_string().contains("PRIVATE KEY"));
    agent.stop().await;
}
