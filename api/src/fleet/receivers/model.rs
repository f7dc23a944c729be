//! What a Git receiver is and the pure decisions of a delivery: how each host authenticates what it sends, what its
//! push payload says, and which configurations a push concerns.
//!
//! Every host signs or authenticates the raw body it sends with the receiver's secret; nothing of a delivery is read
//! before that holds, and every comparison with the secret takes the same time whatever the input:
//!
//! | host | authenticated by | a push is |
//! | --- | --- | --- |
//! | GitHub | `X-Hub-Signature-256: sha256=<hex HMAC-SHA256 of the body>` | `X-GitHub-Event: push` (`ping` answers) |
//! | GitLab | `X-Gitlab-Token: <the secret>` | `X-Gitlab-Event: Push Hook` or `Tag Push Hook` |
//! | Bitbucket Cloud | `X-Hub-Signature: sha256=<hex HMAC-SHA256 of the body>` | `X-Event-Key: repo:push` |
//! | Azure DevOps | HTTP basic authentication, the secret as password (any user name) | `eventType: git.push` |
//! | Generic | `X-Signature: sha256=<hex HMAC-SHA256 of the body>` (Flux's `generic-hmac`) | every delivery |

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fluxplane_agent_protocol::semver::{Constraint, parse_tag};

use crate::error::Problems;
use crate::fleet::breaker::repository_key;

/// Shortest secret a receiver accepts: as long as the signatures it keys.
pub const MIN_SECRET_CHARS: usize = 16;
/// Longest secret a receiver accepts.
pub const MAX_SECRET_CHARS: usize = 256;
/// Most pushed refs a delivery is read for, and kept of in `lastPush`: a push of more (a mirror's, say) concerns
/// every configuration of the repository.
pub const MAX_REFS: usize = 100;

/// The Git host that calls a receiver, which says how a delivery is authenticated and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum HostType {
    GitHub,
    GitLab,
    /// Bitbucket Cloud.
    Bitbucket,
    AzureDevOps,
    /// Anything else that signs its body as Flux's `generic-hmac` receivers expect.
    Generic,
}

impl HostType {
    pub fn as_str(self) -> &'static str {
        match self {
            HostType::GitHub => "GitHub",
            HostType::GitLab => "GitLab",
            HostType::Bitbucket => "Bitbucket",
            HostType::AzureDevOps => "AzureDevOps",
            HostType::Generic => "Generic",
        }
    }
}

/// What a receiver is, as stored (its secret apart, sealed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GitReceiverSpec {
    /// The repository whose pushes it hears of: any of its URLs (`https://`, `ssh://`, `git@host:path`), compared
    /// with the configurations' `gitRepository.url` whatever the scheme, user, host case, default port, trailing
    /// `/` or `.git`.
    pub repository_url: String,
    pub host_type: HostType,
}

impl GitReceiverSpec {
    /// Records the problems of the spec.
    pub fn validate(&self, p: &mut Problems) {
        let url = self.repository_url.trim();
        let key = repository_key(url);
        let path = key.split_once('/').map(|(_, path)| path).unwrap_or_default();
        if url.is_empty() || url.len() > 2048 || url.chars().any(char::is_control) || key.starts_with('/') {
            p.add(
                "properties.repositoryUrl",
                "must be the URL of a Git repository (https://, ssh:// or git@host:path)",
            );
        } else if path.is_empty() {
            p.add("properties.repositoryUrl", "must name a repository, not only a host");
        }
    }

    /// The last segment of the repository's path: what every URL of it holds, whatever its form (the store looks
    /// configurations up by it, and each is then compared in full).
    pub fn repository_name(&self) -> String {
        repository_key(&self.repository_url)
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Checks a secret as written; never quotes it.
pub fn validate_secret(secret: &str, p: &mut Problems) {
    let chars = secret.chars().count();
    if !(MIN_SECRET_CHARS..=MAX_SECRET_CHARS).contains(&chars) || secret.chars().any(char::is_control) {
        p.add(
            "properties.secret",
            format!(
                "must be {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} printable characters (a random string: it keys the \
                 webhook's signatures)"
            ),
        );
    }
}

/// What the last verified push did, kept with the receiver so that its user sees that deliveries arrive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastPush {
    /// When it was received (RFC 3339).
    pub received_at: String,
    /// The refs it pushed (`refs/heads/main`, `refs/tags/v1.2.0`), at most 100; none when the payload named none.
    pub refs: Vec<String>,
    /// The commit the first ref moved to, if the payload says (absent for a deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// How many configurations were asked to re-check their source at once.
    pub configurations: u64,
}

/// What a `reconcile` action answers: when the sources were asked to be checked again at once, and how many
/// configurations were (those being deleted are not).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReconcileRequested {
    /// RFC 3339, as the agents receive it (`reconcileRequestedAt` of the desired state).
    pub reconcile_requested_at: String,
    pub configurations: u64,
}

/// A request's headers, by case-insensitive name (the route hands them over; this module reads no HTTP types).
pub trait Headers {
    fn get(&self, name: &str) -> Option<&str>;
}

/// What an authenticated delivery is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Push(Push),
    /// A delivery that is not a push (GitHub's `ping`, another event the hook was set up for): nothing to do.
    Other(String),
}

/// A push as the host describes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Push {
    /// The repository's URLs the payload names (none: the generic host may name none).
    pub repositories: Vec<String>,
    /// The refs pushed, with the commit each moved to (`None`: deleted, or not said). Empty: the payload named
    /// none, and the push concerns every configuration of the repository.
    pub refs: Vec<PushedRef>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedRef {
    /// The full ref: `refs/heads/main`, `refs/tags/v1.2.0`.
    pub name: String,
    pub commit: Option<String>,
}

impl PushedRef {
    fn branch(&self) -> Option<&str> {
        self.name.strip_prefix("refs/heads/")
    }

    fn tag(&self) -> Option<&str> {
        self.name.strip_prefix("refs/tags/")
    }
}

/// Why a delivery was not taken: it does not authenticate (answered without saying more), or it does but cannot
/// be read (answered with why: only the host that holds the secret sees it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    Unauthenticated,
    Unreadable(String),
}

/// Authenticates a delivery of `host` with the receiver's `secret`, then reads what it is.
pub fn read(host: HostType, secret: &[u8], headers: &dyn Headers, body: &[u8]) -> Result<Event, Refused> {
    if !authenticated(host, secret, headers, body) {
        return Err(Refused::Unauthenticated);
    }
    let event = match host {
        HostType::GitHub => headers.get("x-github-event").unwrap_or_default(),
        HostType::GitLab => headers.get("x-gitlab-event").unwrap_or_default(),
        HostType::Bitbucket => headers.get("x-event-key").unwrap_or_default(),
        // Azure DevOps says what happened in the body; the generic host sends pushes only
        HostType::AzureDevOps | HostType::Generic => "",
    };
    let is_push = match host {
        HostType::GitHub => event == "push",
        HostType::GitLab => event == "Push Hook" || event == "Tag Push Hook",
        HostType::Bitbucket => event == "repo:push",
        HostType::AzureDevOps | HostType::Generic => true,
    };
    if !is_push {
        return Ok(Event::Other(printable(event)));
    }
    let unreadable = |err: serde_json::Error| Refused::Unreadable(format!("the payload does not read as JSON: {err}"));
    let push = match host {
        HostType::GitHub => github(serde_json::from_slice(body).map_err(unreadable)?),
        HostType::GitLab => gitlab(serde_json::from_slice(body).map_err(unreadable)?),
        HostType::Bitbucket => bitbucket(serde_json::from_slice(body).map_err(unreadable)?),
        HostType::AzureDevOps => {
            let payload: AzureDevOpsPayload = serde_json::from_slice(body).map_err(unreadable)?;
            if payload.event_type.as_deref() != Some("git.push") {
                return Ok(Event::Other(printable(
                    payload.event_type.as_deref().unwrap_or_default(),
                )));
            }
            azure_devops(payload)
        }
        HostType::Generic => generic(serde_json::from_slice(body).map_err(unreadable)?),
    };
    Ok(Event::Push(push))
}

/// An event name as it may be answered and logged: short, printable.
fn printable(event: &str) -> String {
    event.chars().filter(|c| !c.is_control()).take(64).collect()
}

fn authenticated(host: HostType, secret: &[u8], headers: &dyn Headers, body: &[u8]) -> bool {
    match host {
        HostType::GitHub => signed(secret, headers.get("x-hub-signature-256"), body),
        HostType::Bitbucket => signed(secret, headers.get("x-hub-signature"), body),
        HostType::Generic => signed(secret, headers.get("x-signature"), body),
        HostType::GitLab => headers
            .get("x-gitlab-token")
            .is_some_and(|token| same(token.as_bytes(), secret)),
        HostType::AzureDevOps => basic_password(headers.get("authorization")).is_some_and(|p| same(&p, secret)),
    }
}

/// Whether `header` is `sha256=` and the hex HMAC-SHA256 of `body` under `secret` (compared in constant time by
/// `verify_slice`).
fn signed(secret: &[u8], header: Option<&str>, body: &[u8]) -> bool {
    let Some(signature) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Ok(signature) = hex::decode(signature) else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    mac.verify_slice(&signature).is_ok()
}

/// Whether two secrets are the same, in a time that says nothing of either (their digests are compared, so not
/// even their lengths show).
fn same(given: &[u8], secret: &[u8]) -> bool {
    let (given, secret): ([u8; 32], [u8; 32]) = (Sha256::digest(given).into(), Sha256::digest(secret).into());
    given.ct_eq(&secret).into()
}

/// The password of an HTTP basic `Authorization` header.
fn basic_password(header: Option<&str>) -> Option<Vec<u8>> {
    let encoded = header?.trim().strip_prefix("Basic ")?;
    let decoded = STANDARD.decode(encoded.trim()).ok()?;
    let colon = decoded.iter().position(|b| *b == b':')?;
    Some(decoded[colon + 1..].to_vec())
}

/// The refs of a push, at most [`MAX_REFS`]: more says "everything" (no refs).
fn refs(pushed: impl Iterator<Item = PushedRef>) -> Vec<PushedRef> {
    let refs: Vec<PushedRef> = pushed.take(MAX_REFS + 1).collect();
    if refs.len() > MAX_REFS { Vec::new() } else { refs }
}

/// A commit id as a payload gives it: none for the all-zero id that stands for a deleted ref.
fn commit(id: Option<String>) -> Option<String> {
    id.filter(|c| !c.is_empty() && !c.bytes().all(|b| b == b'0'))
}

fn urls(candidates: impl IntoIterator<Item = Option<String>>) -> Vec<String> {
    candidates.into_iter().flatten().filter(|u| !u.is_empty()).collect()
}

#[derive(Deserialize)]
struct GitHubPayload {
    #[serde(rename = "ref")]
    reference: Option<String>,
    after: Option<String>,
    repository: Option<GitHubRepository>,
}

#[derive(Deserialize)]
struct GitHubRepository {
    clone_url: Option<String>,
    ssh_url: Option<String>,
    html_url: Option<String>,
}

fn github(payload: GitHubPayload) -> Push {
    let repository = payload.repository;
    Push {
        repositories: urls(
            repository
                .into_iter()
                .flat_map(|r| [r.clone_url, r.ssh_url, r.html_url]),
        ),
        refs: refs(payload.reference.into_iter().map(|name| PushedRef {
            name,
            commit: commit(payload.after.clone()),
        })),
    }
}

#[derive(Deserialize)]
struct GitLabPayload {
    #[serde(rename = "ref")]
    reference: Option<String>,
    checkout_sha: Option<String>,
    project: Option<GitLabProject>,
}

#[derive(Deserialize)]
struct GitLabProject {
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    web_url: Option<String>,
}

fn gitlab(payload: GitLabPayload) -> Push {
    Push {
        repositories: urls(
            payload
                .project
                .into_iter()
                .flat_map(|p| [p.git_http_url, p.git_ssh_url, p.web_url]),
        ),
        refs: refs(payload.reference.into_iter().map(|name| PushedRef {
            name,
            commit: commit(payload.checkout_sha.clone()),
        })),
    }
}

#[derive(Deserialize)]
struct BitbucketPayload {
    repository: Option<BitbucketRepository>,
    push: Option<BitbucketPush>,
}

#[derive(Deserialize)]
struct BitbucketRepository {
    links: Option<BitbucketLinks>,
}

#[derive(Deserialize)]
struct BitbucketLinks {
    html: Option<BitbucketLink>,
}

#[derive(Deserialize)]
struct BitbucketLink {
    href: Option<String>,
}

#[derive(Deserialize)]
struct BitbucketPush {
    #[serde(default)]
    changes: Vec<BitbucketChange>,
}

#[derive(Deserialize)]
struct BitbucketChange {
    new: Option<BitbucketRef>,
    old: Option<BitbucketRef>,
}

#[derive(Deserialize)]
struct BitbucketRef {
    #[serde(rename = "type")]
    kind: Option<String>,
    name: Option<String>,
    target: Option<BitbucketTarget>,
}

#[derive(Deserialize)]
struct BitbucketTarget {
    hash: Option<String>,
}

fn bitbucket(payload: BitbucketPayload) -> Push {
    let changes = payload.push.map(|p| p.changes).unwrap_or_default();
    let pushed = changes.into_iter().filter_map(|change| {
        // a deleted branch or tag has no `new`: its `old` names it
        let (reference, deleted) = match (change.new, change.old) {
            (Some(new), _) => (new, false),
            (None, Some(old)) => (old, true),
            (None, None) => return None,
        };
        let prefix = match reference.kind.as_deref() {
            Some("tag") => "refs/tags/",
            _ => "refs/heads/",
        };
        Some(PushedRef {
            name: format!("{prefix}{}", reference.name?),
            commit: if deleted {
                None
            } else {
                commit(reference.target.and_then(|t| t.hash))
            },
        })
    });
    Push {
        repositories: urls([payload
            .repository
            .and_then(|r| r.links)
            .and_then(|l| l.html)
            .and_then(|h| h.href)]),
        refs: refs(pushed),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzureDevOpsPayload {
    event_type: Option<String>,
    resource: Option<AzureDevOpsResource>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzureDevOpsResource {
    #[serde(default)]
    ref_updates: Vec<AzureDevOpsRefUpdate>,
    repository: Option<AzureDevOpsRepository>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzureDevOpsRefUpdate {
    name: Option<String>,
    new_object_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AzureDevOpsRepository {
    remote_url: Option<String>,
    ssh_url: Option<String>,
}

fn azure_devops(payload: AzureDevOpsPayload) -> Push {
    let resource = payload.resource;
    let (updates, repository) = match resource {
        Some(r) => (r.ref_updates, r.repository),
        None => (Vec::new(), None),
    };
    Push {
        repositories: urls(repository.into_iter().flat_map(|r| [r.remote_url, r.ssh_url])),
        refs: refs(updates.into_iter().filter_map(|u| {
            Some(PushedRef {
                name: u.name?,
                commit: commit(u.new_object_id),
            })
        })),
    }
}

/// The generic host's payload: what a CI job or a script sends; every field optional.
#[derive(Deserialize)]
struct GenericPayload {
    /// The full ref pushed; absent: every configuration of the repository.
    #[serde(rename = "ref")]
    reference: Option<String>,
    commit: Option<String>,
    /// The repository's URL; absent: the receiver's.
    repository: Option<String>,
}

fn generic(payload: GenericPayload) -> Push {
    Push {
        repositories: urls([payload.repository]),
        refs: refs(payload.reference.into_iter().map(|name| PushedRef {
            name,
            commit: commit(payload.commit.clone()),
        })),
    }
}

impl Push {
    /// Whether the push is to the repository of `key` (`repository_key`): it names none, or one of its URLs is it.
    pub fn is_to(&self, key: &str) -> bool {
        self.repositories.is_empty() || self.repositories.iter().any(|url| repository_key(url) == key)
    }

    /// The refs as `lastPush` keeps them.
    pub fn ref_names(&self) -> Vec<String> {
        self.refs.iter().map(|r| r.name.clone()).collect()
    }
}

/// A configuration's Git reference, as the store reads it from the spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceRef {
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub semver: Option<String>,
    pub commit: Option<String>,
}

/// Whether a push concerns a configuration reading `reference`, the way Flux picks what it checks out (`commit`
/// before `semver` before `tag` before `branch`):
///
/// - a pinned `commit`: when a ref moved to that commit (the pin arrived; the hash or a prefix of it);
/// - `semver`: when a tag satisfying the range was pushed or deleted (the latest matching tag may be another now);
/// - `tag`: when that tag was pushed or deleted;
/// - `branch`: when that branch was pushed or deleted;
/// - every configuration of the repository when the push names no ref.
pub fn concerns(reference: &SourceRef, push: &Push) -> bool {
    if push.refs.is_empty() {
        return true;
    }
    let range = reference.semver.as_deref().map(Constraint::parse);
    push.refs.iter().any(|pushed| {
        if let Some(pin) = &reference.commit {
            let pin = pin.to_ascii_lowercase();
            return pushed
                .commit
                .as_deref()
                .is_some_and(|c| c.to_ascii_lowercase().starts_with(&pin));
        }
        if let Some(range) = &range {
            return match range {
                Ok(range) => pushed.tag().and_then(parse_tag).is_some_and(|v| range.matches(&v)),
                // a stored range that no longer parses: any tag may be the one it meant
                Err(_) => pushed.tag().is_some(),
            };
        }
        if let Some(tag) = &reference.tag {
            return pushed.tag() == Some(tag.as_str());
        }
        reference.branch.as_deref().is_some_and(|b| pushed.branch() == Some(b))
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::json;

    use super::*;

    const SECRET: &[u8] = b"a-long-random-secret-0123456789";

    struct Given(HashMap<String, String>);

    impl Headers for Given {
        fn get(&self, name: &str) -> Option<&str> {
            self.0.get(name).map(String::as_str)
        }
    }

    fn headers(pairs: &[(&str, &str)]) -> Given {
        Given(
            pairs
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
                .collect(),
        )
    }

    fn signature(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    }

    fn push_of(event: Result<Event, Refused>) -> Push {
        match event {
            Ok(Event::Push(push)) => push,
            other => panic!("not a push: {other:?}"),
        }
    }

    #[test]
    fn a_github_push_is_read_once_its_signature_holds() {
        let body = serde_json::to_vec(&json!({
            "ref": "refs/heads/main", "before": "9049f1265b7d61be4a8904a9a27120d2064dab3b",
            "after": "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c",
            "repository": {"full_name": "org/fleet", "clone_url": "https://github.com/org/fleet.git",
                           "ssh_url": "git@github.com:org/fleet.git", "html_url": "https://github.com/org/fleet"}
        }))
        .unwrap();
        let good = signature(SECRET, &body);
        let push = push_of(read(
            HostType::GitHub,
            SECRET,
            &headers(&[("X-Hub-Signature-256", &good), ("X-GitHub-Event", "push")]),
            &body,
        ));
        assert_eq!(
            push.refs,
            [PushedRef {
                name: "refs/heads/main".into(),
                commit: Some("0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c".into())
            }]
        );
        assert!(push.is_to("github.com/org/fleet"));
        assert!(!push.is_to("github.com/org/other"));

        let other_secret = signature(b"another-secret-of-some-length", &body);
        for refused in [
            vec![
                ("X-Hub-Signature-256", other_secret.as_str()),
                ("X-GitHub-Event", "push"),
            ],
            vec![("X-GitHub-Event", "push")],
            vec![("X-Hub-Signature-256", "sha256=zz"), ("X-GitHub-Event", "push")],
            vec![("X-Hub-Signature", good.as_str()), ("X-GitHub-Event", "push")],
        ] {
            assert_eq!(
                read(HostType::GitHub, SECRET, &headers(&refused), &body),
                Err(Refused::Unauthenticated),
                "{refused:?}"
            );
        }
        let mut tampered = body.clone();
        tampered[10] ^= 1;
        assert_eq!(
            read(
                HostType::GitHub,
                SECRET,
                &headers(&[("X-Hub-Signature-256", &good), ("X-GitHub-Event", "push")]),
                &tampered
            ),
            Err(Refused::Unauthenticated)
        );
        let ping = br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#;
        assert_eq!(
            read(
                HostType::GitHub,
                SECRET,
                &headers(&[
                    ("X-Hub-Signature-256", &signature(SECRET, ping)),
                    ("X-GitHub-Event", "ping")
                ]),
                ping
            ),
            Ok(Event::Other("ping".into()))
        );
    }

    #[test]
    fn a_gitlab_push_is_read_when_its_token_is_the_secret() {
        let body = serde_json::to_vec(&json!({
            "object_kind": "tag_push", "ref": "refs/tags/v1.4.0",
            "checkout_sha": "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7",
            "project": {"git_http_url": "https://gitlab.example.com/group/fleet.git",
                        "git_ssh_url": "git@gitlab.example.com:group/fleet.git",
                        "web_url": "https://gitlab.example.com/group/fleet"}
        }))
        .unwrap();
        let secret = std::str::from_utf8(SECRET).unwrap();
        let push = push_of(read(
            HostType::GitLab,
            SECRET,
            &headers(&[("X-Gitlab-Token", secret), ("X-Gitlab-Event", "Tag Push Hook")]),
            &body,
        ));
        assert_eq!(push.ref_names(), ["refs/tags/v1.4.0"]);
        assert!(push.is_to("gitlab.example.com/group/fleet"));
        assert_eq!(
            read(
                HostType::GitLab,
                SECRET,
                &headers(&[
                    ("X-Gitlab-Token", "a-long-random-secret-012345678"),
                    ("X-Gitlab-Event", "Push Hook")
                ]),
                &body
            ),
            Err(Refused::Unauthenticated),
            "a prefix of the secret is not the secret"
        );
        assert_eq!(
            read(
                HostType::GitLab,
                SECRET,
                &headers(&[("X-Gitlab-Token", secret), ("X-Gitlab-Event", "Issue Hook")]),
                &body
            ),
            Ok(Event::Other("Issue Hook".into()))
        );
    }

    #[test]
    fn a_bitbucket_push_lists_each_change_and_a_deletion_by_its_old_name() {
        let body = serde_json::to_vec(&json!({
            "repository": {"full_name": "team/fleet", "links": {"html": {"href": "https://bitbucket.org/team/fleet"}}},
            "push": {"changes": [
                {"new": {"type": "branch", "name": "main", "target": {"hash": "709d658dc5b6d6afcd46049c2f332ee3f515a67d"}},
                 "old": {"type": "branch", "name": "main", "target": {"hash": "1e65c05c1d5171631d92438a13901ca7dae9618c"}}},
                {"new": {"type": "tag", "name": "v2.0.0", "target": {"hash": "709d658dc5b6d6afcd46049c2f332ee3f515a67d"}},
                 "old": null},
                {"new": null, "old": {"type": "branch", "name": "feature", "target": {"hash": "abc1234"}}}
            ]}
        }))
        .unwrap();
        let push = push_of(read(
            HostType::Bitbucket,
            SECRET,
            &headers(&[
                ("X-Hub-Signature", &signature(SECRET, &body)),
                ("X-Event-Key", "repo:push"),
            ]),
            &body,
        ));
        assert_eq!(
            push.ref_names(),
            ["refs/heads/main", "refs/tags/v2.0.0", "refs/heads/feature"]
        );
        assert_eq!(push.refs[2].commit, None, "deleted");
        assert!(push.is_to(&repository_key("git@bitbucket.org:team/fleet.git")));
        assert_eq!(
            read(
                HostType::Bitbucket,
                SECRET,
                &headers(&[
                    ("X-Hub-Signature-256", &signature(SECRET, &body)),
                    ("X-Event-Key", "repo:push")
                ]),
                &body
            ),
            Err(Refused::Unauthenticated),
            "Bitbucket signs in X-Hub-Signature"
        );
    }

    #[test]
    fn an_azure_devops_push_authenticates_with_the_secret_as_basic_password() {
        let body = serde_json::to_vec(&json!({
            "eventType": "git.push", "publisherId": "tfs",
            "resource": {
                "refUpdates": [{"name": "refs/heads/main", "oldObjectId": "fa51eeb1e50b98293ce281e6d5492b9decae613b",
                                "newObjectId": "298a79aa1552799a70718a0ee914d153d5a1a76b"}],
                "repository": {"name": "fleet", "remoteUrl": "https://dev.azure.com/org/project/_git/fleet"}
            }
        }))
        .unwrap();
        let basic = |user: &str, password: &[u8]| {
            let mut pair = format!("{user}:").into_bytes();
            pair.extend_from_slice(password);
            format!("Basic {}", STANDARD.encode(pair))
        };
        let push = push_of(read(
            HostType::AzureDevOps,
            SECRET,
            &headers(&[("Authorization", &basic("fluxplane", SECRET))]),
            &body,
        ));
        assert_eq!(push.ref_names(), ["refs/heads/main"]);
        assert!(push.is_to(&repository_key("git@ssh.dev.azure.com:v3/org/project/fleet")));
        assert_eq!(
            read(
                HostType::AzureDevOps,
                SECRET,
                &headers(&[("Authorization", &basic("fluxplane", b"wrong-password-of-length"))]),
                &body
            ),
            Err(Refused::Unauthenticated)
        );
        let build = br#"{"eventType": "build.complete"}"#;
        assert_eq!(
            read(
                HostType::AzureDevOps,
                SECRET,
                &headers(&[("Authorization", &basic("", SECRET))]),
                build
            ),
            Ok(Event::Other("build.complete".into()))
        );
    }

    #[test]
    fn a_generic_push_may_name_no_ref_and_then_concerns_the_whole_repository() {
        let body = br#"{"repository": "https://git.example.com/fleet"}"#;
        let push = push_of(read(
            HostType::Generic,
            SECRET,
            &headers(&[("X-Signature", &signature(SECRET, body))]),
            body,
        ));
        assert!(push.refs.is_empty());
        assert!(concerns(
            &SourceRef {
                tag: Some("v1".into()),
                ..Default::default()
            },
            &push
        ));
        assert_eq!(
            read(
                HostType::Generic,
                SECRET,
                &headers(&[("X-Signature", &signature(SECRET, body))]),
                b"{"
            ),
            Err(Refused::Unauthenticated),
            "the signature covers the body as sent"
        );
        assert!(matches!(
            read(
                HostType::Generic,
                SECRET,
                &headers(&[("X-Signature", &signature(SECRET, b"{"))]),
                b"{"
            ),
            Err(Refused::Unreadable(_))
        ));
    }

    fn pushed(refs: &[(&str, &str)]) -> Push {
        Push {
            repositories: Vec::new(),
            refs: refs
                .iter()
                .map(|(name, id)| PushedRef {
                    name: (*name).to_owned(),
                    commit: commit(Some((*id).to_owned())),
                })
                .collect(),
        }
    }

    fn reference(field: &str, value: &str) -> SourceRef {
        let value = Some(value.to_owned());
        match field {
            "branch" => SourceRef {
                branch: value,
                ..Default::default()
            },
            "tag" => SourceRef {
                tag: value,
                ..Default::default()
            },
            "semver" => SourceRef {
                semver: value,
                ..Default::default()
            },
            _ => SourceRef {
                commit: value,
                ..Default::default()
            },
        }
    }

    #[test]
    fn a_push_concerns_the_configurations_whose_reference_it_moves() {
        let main = pushed(&[("refs/heads/main", "0d1a26e67d8f5eaf1f6ba5c57fc3c7d91ac0fd1c")]);
        assert!(concerns(&reference("branch", "main"), &main));
        assert!(!concerns(&reference("branch", "dev"), &main));
        assert!(!concerns(&reference("tag", "main"), &main), "a branch is no tag");
        assert!(concerns(&reference("commit", "0D1A26E"), &main), "the pin arrived");
        assert!(!concerns(&reference("commit", "1234567"), &main));
        let pinned_on_main = SourceRef {
            branch: Some("main".into()),
            commit: Some("1234567".into()),
            ..Default::default()
        };
        assert!(
            !concerns(&pinned_on_main, &main),
            "a pinned commit wins over its branch"
        );

        let tag = pushed(&[("refs/tags/v1.4.0", "82b3d5ae55f7080f1e6022629cdb57bfae7cccc7")]);
        assert!(concerns(&reference("tag", "v1.4.0"), &tag));
        assert!(!concerns(&reference("tag", "v1.4"), &tag));
        assert!(concerns(&reference("semver", ">=1.0.0 <2.0.0"), &tag));
        assert!(!concerns(&reference("semver", "^2"), &tag));
        assert!(
            !concerns(&reference("semver", "^1"), &main),
            "a branch push moves no version"
        );
        let deleted = pushed(&[("refs/tags/v1.5.0", "0000000000000000000000000000000000000000")]);
        assert!(
            concerns(&reference("semver", "^1"), &deleted),
            "the latest matching tag may be another now"
        );
        assert!(!concerns(&SourceRef::default(), &main), "no reference: nothing to move");
    }

    #[test]
    fn more_refs_than_are_read_concern_everything() {
        let many = refs((0..=MAX_REFS).map(|i| PushedRef {
            name: format!("refs/heads/b{i}"),
            commit: None,
        }));
        assert!(many.is_empty());
        assert_eq!(
            refs((0..3).map(|i| PushedRef {
                name: format!("refs/heads/b{i}"),
                commit: None
            }))
            .len(),
            3
        );
    }

    #[test]
    fn a_receiver_names_a_repository_and_a_secret_long_enough_to_key_signatures() {
        let spec = |url: &str| GitReceiverSpec {
            repository_url: url.to_owned(),
            host_type: HostType::GitHub,
        };
        let problems = |spec: &GitReceiverSpec| {
            let mut p = Problems::default();
            spec.validate(&mut p);
            p.into_result("receiver", None).is_err()
        };
        assert!(!problems(&spec("https://github.com/org/fleet.git")));
        assert!(!problems(&spec("git@github.com:org/fleet.git")));
        assert!(problems(&spec("https://github.com/")));
        assert!(problems(&spec("")));
        assert!(problems(&spec("https://github.com/org/\u{1}fleet")));
        assert_eq!(spec("ssh://git@github.com/org/Fleet.git").repository_name(), "Fleet");
        let secret = |s: &str| {
            let mut p = Problems::default();
            validate_secret(s, &mut p);
            p.into_result("receiver", None).is_err()
        };
        assert!(secret("short"));
        assert!(!secret("0123456789abcdef"));
        assert!(secret("0123456789abcdef\u{7}"));
    }
}
