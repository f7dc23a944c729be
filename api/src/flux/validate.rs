//! Validation and server-side defaults of a Flux configuration's desired state.
//!
//! `normalize` turns what a client sent into the complete desired state an agent can act on, or reports every
//! problem at once, each with the path of the offending field as its target.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fluxplane_agent_protocol::flux::{
    FluxConfigurationSpec, Kustomization, PostBuild, ScopeType, Secret, SourceKind, SubstituteFrom,
};
use fluxplane_agent_protocol::semver::Constraint;

use crate::arm::ids::{ConfigurationName, is_dns1123_label, is_dns1123_subdomain};
use crate::error::{ApiError, ApiResult, Problems};

/// The interval and timeout Flux uses when none is given (Azure's documented default).
pub const DEFAULT_INTERVAL_SECONDS: i64 = 600;
const MAX_INTERVAL_SECONDS: i64 = 365 * 24 * 3600;
/// Flux names each Kustomization `{configuration}-{kustomization}`, which must fit a 63-character label.
const MAX_COMBINED_NAME: usize = 62;
/// Most kustomizations one configuration may hold (Azure documents none; each is a Flux object the agent applies
/// and reports on, so a bound keeps one request's work and every report's size in proportion).
pub const MAX_KUSTOMIZATIONS: usize = 100;

/// Validates `spec`, fills in defaults, and checks that immutable properties match `previous` (on update).
pub fn normalize(
    spec: &mut FluxConfigurationSpec,
    name: &ConfigurationName,
    previous: Option<&FluxConfigurationSpec>,
) -> Result<(), ApiError> {
    let mut p = Problems::default();

    let scope = *spec.scope.get_or_insert(ScopeType::Cluster);
    let namespace = spec.namespace.get_or_insert_with(|| "default".to_owned()).clone();
    if !is_dns1123_label(&namespace) {
        p.add(
            "properties.namespace",
            "must be a DNS-1123 label (lower-case letters, digits and '-', at most 63)",
        );
    }
    if let Some(previous) = previous {
        if previous.scope != Some(scope) {
            p.add(
                "properties.scope",
                "cannot be changed after the configuration is created",
            );
        }
        if previous.namespace.as_deref() != Some(namespace.as_str()) {
            p.add(
                "properties.namespace",
                "cannot be changed after the configuration is created",
            );
        }
    }
    spec.suspend.get_or_insert(false);

    let kind = *spec.source_kind.get_or_insert(SourceKind::GitRepository);
    let present = [
        (
            SourceKind::GitRepository,
            "gitRepository",
            spec.git_repository.is_some(),
        ),
        (SourceKind::Bucket, "bucket", spec.bucket.is_some()),
        (SourceKind::AzureBlob, "azureBlob", spec.azure_blob.is_some()),
        (
            SourceKind::OciRepository,
            "ociRepository",
            spec.oci_repository.is_some(),
        ),
    ];
    for (block_kind, field, is_present) in present {
        if block_kind == kind && !is_present {
            p.add(
                format!("properties.{field}"),
                format!("is required when sourceKind is {}", kind.as_str()),
            );
        }
        if block_kind != kind && is_present {
            p.add(
                format!("properties.{field}"),
                format!("must not be set when sourceKind is {}", kind.as_str()),
            );
        }
    }

    if let Some(git) = spec.git_repository.as_mut() {
        let t = "properties.gitRepository";
        check_url(
            &mut p,
            &format!("{t}.url"),
            git.url.as_deref(),
            &["http", "https", "ssh"],
        );
        intervals(
            &mut p,
            t,
            &mut git.timeout_in_seconds,
            &mut git.sync_interval_in_seconds,
        );
        match &git.repository_ref {
            None => p.add(
                format!("{t}.repositoryRef"),
                "is required: give a branch, tag, semver or commit",
            ),
            Some(r) if r.branch.is_none() && r.tag.is_none() && r.semver.is_none() && r.commit.is_none() => p.add(
                format!("{t}.repositoryRef"),
                "needs at least one of branch, tag, semver or commit",
            ),
            Some(r) => {
                for (field, value) in [
                    ("branch", &r.branch),
                    ("tag", &r.tag),
                    ("semver", &r.semver),
                    ("commit", &r.commit),
                ] {
                    if value.as_deref().is_some_and(str::is_empty) {
                        p.add(format!("{t}.repositoryRef.{field}"), "must not be empty");
                    }
                }
                semver_constraint(&mut p, &format!("{t}.repositoryRef.semver"), r.semver.as_deref());
                if let Some(commit) = &r.commit
                    && !commit.is_empty()
                    && !(commit.len() >= 7 && commit.len() <= 64 && commit.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    p.add(
                        format!("{t}.repositoryRef.commit"),
                        "must be a hexadecimal commit id of 7 to 64 digits",
                    );
                }
            }
        }
        base64_field(&mut p, &format!("{t}.httpsCACert"), git.https_ca_cert.as_deref());
        base64_field(&mut p, &format!("{t}.sshKnownHosts"), git.ssh_known_hosts.as_deref());
        object_name(&mut p, &format!("{t}.localAuthRef"), git.local_auth_ref.as_deref());
    }

    if let Some(bucket) = spec.bucket.as_mut() {
        let t = "properties.bucket";
        check_url(&mut p, &format!("{t}.url"), bucket.url.as_deref(), &["http", "https"]);
        match bucket.bucket_name.as_deref() {
            None => p.add(format!("{t}.bucketName"), "is required"),
            Some(name) if !is_bucket_name(name) => p.add(
                format!("{t}.bucketName"),
                "must be 3-63 lower-case letters, digits, '.' or '-', starting and ending with a letter or digit",
            ),
            Some(_) => {}
        }
        bucket.insecure.get_or_insert(true);
        intervals(
            &mut p,
            t,
            &mut bucket.timeout_in_seconds,
            &mut bucket.sync_interval_in_seconds,
        );
        object_name(&mut p, &format!("{t}.localAuthRef"), bucket.local_auth_ref.as_deref());
    }

    if let Some(blob) = spec.azure_blob.as_mut() {
        let t = "properties.azureBlob";
        check_url(&mut p, &format!("{t}.url"), blob.url.as_deref(), &["http", "https"]);
        match blob.container_name.as_deref() {
            None => p.add(format!("{t}.containerName"), "is required"),
            Some(name) if !is_container_name(name) => p.add(
                format!("{t}.containerName"),
                "must be 3-63 lower-case letters, digits or single '-', starting with a letter or digit",
            ),
            Some(_) => {}
        }
        intervals(
            &mut p,
            t,
            &mut blob.timeout_in_seconds,
            &mut blob.sync_interval_in_seconds,
        );
        if let Some(sp) = blob.service_principal.as_mut() {
            sp.client_certificate_send_chain.get_or_insert(false);
        }
        object_name(&mut p, &format!("{t}.localAuthRef"), blob.local_auth_ref.as_deref());
    }

    if let Some(oci) = spec.oci_repository.as_mut() {
        let t = "properties.ociRepository";
        check_url(&mut p, &format!("{t}.url"), oci.url.as_deref(), &["oci"]);
        intervals(
            &mut p,
            t,
            &mut oci.timeout_in_seconds,
            &mut oci.sync_interval_in_seconds,
        );
        if let Some(r) = &oci.repository_ref {
            semver_constraint(&mut p, &format!("{t}.repositoryRef.semver"), r.semver.as_deref());
        }
        oci.insecure.get_or_insert(false);
        oci.use_workload_identity.get_or_insert(false);
        object_name(
            &mut p,
            &format!("{t}.serviceAccountName"),
            oci.service_account_name.as_deref(),
        );
        object_name(&mut p, &format!("{t}.localAuthRef"), oci.local_auth_ref.as_deref());
    }

    if let Some(kustomizations) = spec.kustomizations.as_mut() {
        kustomizations_valid(&mut p, name, kustomizations);
    }

    if let Some(duration) = spec.reconciliation_wait_duration.as_deref()
        && iso8601::duration(duration).is_err()
    {
        p.add(
            "properties.reconciliationWaitDuration",
            format!("'{duration}' is not an ISO 8601 duration such as PT30M"),
        );
    }

    p.into_result("Flux configuration", Some("properties"))
}

/// Checks the protected settings a write sets: they become the keys and values of a Kubernetes Secret's `data`,
/// so keys must be Secret keys and values base64 (as Azure's CLI sends them). Messages never quote a value.
pub fn protected_settings(settings: &BTreeMap<String, Secret>) -> ApiResult<()> {
    let mut p = Problems::default();
    for (key, value) in settings {
        let target = format!("properties.configurationProtectedSettings.{key}");
        let valid = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !valid {
            p.add(
                &target,
                "keys must be 1-253 letters, digits, '-', '_' or '.' (Kubernetes secret keys)",
            );
        }
        if STANDARD.decode(value.expose()).is_err() {
            p.add(&target, "values must be base64-encoded");
        }
    }
    p.into_result("Flux configuration", Some("properties"))
}

fn kustomizations_valid(p: &mut Problems, config: &ConfigurationName, ks: &mut BTreeMap<String, Kustomization>) {
    if ks.len() > MAX_KUSTOMIZATIONS {
        p.add(
            "properties.kustomizations",
            format!(
                "holds {} kustomizations; at most {MAX_KUSTOMIZATIONS} are allowed",
                ks.len()
            ),
        );
        return;
    }
    let names: BTreeSet<String> = ks.keys().cloned().collect();
    for (key, k) in ks.iter_mut() {
        let t = format!("properties.kustomizations.{key}");
        if !is_dns1123_label(key) {
            p.add(&t, "the kustomization name must be a DNS-1123 label");
        } else if config.as_str().len() + key.len() > MAX_COMBINED_NAME {
            p.add(
                &t,
                format!(
                    "the configuration name and kustomization name together must not exceed {MAX_COMBINED_NAME} characters"
                ),
            );
        }
        k.name = Some(key.clone());
        let path = k.path.get_or_insert_with(String::new);
        if path.split('/').any(|segment| segment == "..") {
            p.add(format!("{t}.path"), "must stay inside the source: '..' is not allowed");
        }
        for dependency in k.depends_on.get_or_insert_with(Vec::new).iter() {
            if dependency == key {
                p.add(format!("{t}.dependsOn"), "a kustomization cannot depend on itself");
            } else if !names.contains(dependency) {
                p.add(
                    format!("{t}.dependsOn"),
                    format!("'{dependency}' is not a kustomization of this configuration"),
                );
            }
        }
        intervals(p, &t, &mut k.timeout_in_seconds, &mut k.sync_interval_in_seconds);
        if let Some(retry) = k.retry_interval_in_seconds {
            interval_value(p, &format!("{t}.retryIntervalInSeconds"), retry);
        }
        k.prune.get_or_insert(false);
        k.force.get_or_insert(false);
        k.wait.get_or_insert(true);
        if let Some(post_build) = k.post_build.as_mut() {
            post_build_valid(p, &t, post_build);
        }
    }
    if let Some(cycle) = find_cycle(ks) {
        p.add(
            "properties.kustomizations",
            format!("dependsOn forms a cycle: {}", cycle.join(" -> ")),
        );
    }
}

fn post_build_valid(p: &mut Problems, t: &str, post_build: &mut PostBuild) {
    for key in post_build.substitute.iter().flat_map(|m| m.keys()) {
        let mut chars = key.chars();
        let valid = chars.next().is_some_and(|c| c == '_' || c.is_ascii_alphabetic())
            && chars.all(|c| c == '_' || c.is_ascii_alphanumeric());
        if !valid {
            p.add(
                format!("{t}.postBuild.substitute.{key}"),
                "variable names must start with a letter or '_' and hold only letters, digits and '_'",
            );
        }
    }
    for (i, from) in post_build.substitute_from.iter_mut().flatten().enumerate() {
        substitute_from_valid(p, &format!("{t}.postBuild.substituteFrom[{i}]"), from);
    }
}

fn substitute_from_valid(p: &mut Problems, t: &str, from: &mut SubstituteFrom) {
    match from.kind.as_deref() {
        Some("ConfigMap" | "Secret") => {}
        _ => p.add(format!("{t}.kind"), "must be ConfigMap or Secret"),
    }
    match from.name.as_deref() {
        Some(name) if is_dns1123_subdomain(name) => {}
        _ => p.add(format!("{t}.name"), "is required and must be a Kubernetes object name"),
    }
    from.optional.get_or_insert(false);
}

/// A dependency cycle among kustomizations, if any, as the names along it. A depth-first search with a stack of its
/// own rather than recursion: a client chooses how long a dependsOn chain is, and must not choose the depth of the
/// server's call stack.
fn find_cycle(ks: &BTreeMap<String, Kustomization>) -> Option<Vec<String>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Visiting,
        Done,
    }
    let dependencies = |name: &str| -> &[String] { ks.get(name).and_then(|k| k.depends_on.as_deref()).unwrap_or(&[]) };
    let mut marks: BTreeMap<&str, Mark> = BTreeMap::new();
    for root in ks.keys() {
        if marks.contains_key(root.as_str()) {
            continue;
        }
        // the path from the root, each name with the index of the next dependency to follow
        let mut path: Vec<(&str, usize)> = vec![(root.as_str(), 0)];
        marks.insert(root, Mark::Visiting);
        while let Some((name, next)) = path.last_mut() {
            let Some(dependency) = dependencies(name).get(*next) else {
                marks.insert(*name, Mark::Done);
                path.pop();
                continue;
            };
            *next += 1;
            let Some((dependency, _)) = ks.get_key_value(dependency) else {
                continue;
            };
            match marks.get(dependency.as_str()) {
                Some(Mark::Done) => {}
                Some(Mark::Visiting) => {
                    let start = path.iter().position(|(n, _)| *n == dependency).unwrap_or(0);
                    let mut cycle: Vec<String> = path[start..].iter().map(|(n, _)| (*n).to_owned()).collect();
                    cycle.push(dependency.clone());
                    return Some(cycle);
                }
                None => {
                    marks.insert(dependency, Mark::Visiting);
                    path.push((dependency, 0));
                }
            }
        }
    }
    None
}

fn intervals(p: &mut Problems, t: &str, timeout: &mut Option<i64>, sync: &mut Option<i64>) {
    interval_value(
        p,
        &format!("{t}.timeoutInSeconds"),
        *timeout.get_or_insert(DEFAULT_INTERVAL_SECONDS),
    );
    interval_value(
        p,
        &format!("{t}.syncIntervalInSeconds"),
        *sync.get_or_insert(DEFAULT_INTERVAL_SECONDS),
    );
}

fn interval_value(p: &mut Problems, target: &str, seconds: i64) {
    if !(1..=MAX_INTERVAL_SECONDS).contains(&seconds) {
        p.add(target, format!("must be between 1 and {MAX_INTERVAL_SECONDS} seconds"));
    }
}

fn check_url(p: &mut Problems, target: &str, value: Option<&str>, schemes: &[&str]) {
    let Some(value) = value else {
        p.add(target, "is required");
        return;
    };
    match url::Url::parse(value) {
        // every read would show it: credentials belong in the sealed protected settings
        Ok(url) if url.password().is_some() => p.add(
            target,
            "must not carry a password: give the user in httpsUser (Git) and the password or token as \
             configurationProtectedSettings (httpsKey), which are sealed to the cluster's agent and never shown",
        ),
        Ok(url) if schemes.contains(&url.scheme()) && url.host_str().is_some_and(|h| !h.is_empty()) => {}
        Ok(url) if !schemes.contains(&url.scheme()) => p.add(
            target,
            format!(
                "scheme '{}' is not supported here; use {}",
                url.scheme(),
                schemes.join(", ")
            ),
        ),
        _ => p.add(target, "is not a valid URL with a host"),
    }
}

fn base64_field(p: &mut Problems, target: &str, value: Option<&str>) {
    if let Some(value) = value
        && STANDARD.decode(value.trim()).is_err()
    {
        p.add(target, "must be base64-encoded");
    }
}

/// A semver range must be one Flux parses (Masterminds' syntax), read by the same function the agent resolves tags
/// with, so that what is accepted here is what the agent can follow. Empty ones are refused above.
fn semver_constraint(p: &mut Problems, target: &str, value: Option<&str>) {
    if let Some(value) = value.filter(|v| !v.is_empty())
        && let Err(err) = Constraint::parse(value)
    {
        p.add(
            target,
            format!(
                "{err}; Flux's forms are e.g. '>=1.1.0 <2.0.0', '>= 1.2, < 3.0', '~1.2', '^1', '1.2.x', \
                 '1.0.0 - 2.0.0', '^1 || ^2'"
            ),
        );
    }
}

fn object_name(p: &mut Problems, target: &str, value: Option<&str>) {
    if let Some(value) = value
        && !is_dns1123_subdomain(value)
    {
        p.add(target, "must be a Kubernetes object name (DNS-1123 subdomain)");
    }
}

fn is_bucket_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

fn is_container_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && !name.contains("--")
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: serde_json::Value) -> FluxConfigurationSpec {
        serde_json::from_value(value).unwrap()
    }

    fn name(n: &str) -> ConfigurationName {
        ConfigurationName::parse(n).unwrap()
    }

    fn targets(err: ApiError) -> Vec<String> {
        err.detail().details.into_iter().filter_map(|d| d.target).collect()
    }

    fn git() -> serde_json::Value {
        json!({"gitRepository": {"url": "https://github.com/Azure/arc-k8s-demo", "repositoryRef": {"branch": "main"}}})
    }

    #[test]
    fn defaults_are_filled_in_server_side() {
        let mut s = spec(json!({
            "gitRepository": {"url": "https://github.com/Azure/arc-k8s-demo", "repositoryRef": {"branch": "main"}},
            "kustomizations": {"infra": {}, "apps": {"dependsOn": ["infra"]}}
        }));
        normalize(&mut s, &name("cfg"), None).unwrap();
        assert_eq!(s.scope, Some(ScopeType::Cluster));
        assert_eq!(s.namespace.as_deref(), Some("default"));
        assert_eq!(s.source_kind, Some(SourceKind::GitRepository));
        assert_eq!(s.suspend, Some(false));
        let git = s.git_repository.as_ref().unwrap();
        assert_eq!(git.timeout_in_seconds, Some(600));
        assert_eq!(git.sync_interval_in_seconds, Some(600));
        let infra = &s.kustomizations.as_ref().unwrap()["infra"];
        assert_eq!(infra.name.as_deref(), Some("infra"));
        assert_eq!(infra.path.as_deref(), Some(""));
        assert_eq!(
            (infra.prune, infra.force, infra.wait),
            (Some(false), Some(false), Some(true))
        );
        assert_eq!(infra.sync_interval_in_seconds, Some(600));
    }

    #[test]
    fn semver_ranges_as_flux_writes_them_are_accepted_and_others_refused_with_the_field_named() {
        for range in [
            ">=1.1.0 <2.0.0",
            "1.2.x",
            "~1.2",
            "^1",
            ">= 1.2, < 3.0",
            "1.0.0 - 2.0.0",
            "^1 || ^2",
            "=>1.0.0, !=1.2.3",
        ] {
            let mut s = spec(json!({"gitRepository": {"url": "https://x.io/r", "repositoryRef": {"semver": range}}}));
            normalize(&mut s, &name("c"), None).unwrap_or_else(|e| panic!("{range}: {:?}", e.detail()));
            let mut s = spec(json!({"sourceKind": "OCIRepository",
                                    "ociRepository": {"url": "oci://ghcr.io/x/y", "repositoryRef": {"semver": range}}}));
            normalize(&mut s, &name("c"), None).unwrap_or_else(|e| panic!("{range}: {:?}", e.detail()));
        }
        let mut s = spec(json!({"gitRepository": {"url": "https://x.io/r", "repositoryRef": {"semver": "latest"}}}));
        let detail = normalize(&mut s, &name("c"), None).unwrap_err().detail();
        let problems: Vec<_> = detail
            .details
            .iter()
            .map(|d| (d.target.clone(), d.message.clone()))
            .collect();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].0.as_deref(),
            Some("properties.gitRepository.repositoryRef.semver")
        );
        assert!(problems[0].1.contains("'latest' is not a semver range"), "{problems:?}");
        let mut s = spec(json!({"sourceKind": "OCIRepository",
                                "ociRepository": {"url": "oci://ghcr.io/x/y", "repositoryRef": {"semver": "^1 ||"}}}));
        assert_eq!(
            targets(normalize(&mut s, &name("c"), None).unwrap_err()),
            ["properties.ociRepository.repositoryRef.semver"]
        );
    }

    #[test]
    fn the_source_block_must_match_source_kind() {
        let mut s = spec(json!({"sourceKind": "Bucket", "gitRepository": git()["gitRepository"]}));
        let t = targets(normalize(&mut s, &name("cfg"), None).unwrap_err());
        assert!(t.contains(&"properties.bucket".to_owned()), "{t:?}");
        assert!(t.contains(&"properties.gitRepository".to_owned()), "{t:?}");
    }

    #[test]
    fn url_schemes_are_checked_per_source() {
        let mut s = spec(json!({"gitRepository": {"url": "ftp://example.com/repo", "repositoryRef": {"branch": "m"}}}));
        assert_eq!(
            targets(normalize(&mut s, &name("c"), None).unwrap_err()),
            ["properties.gitRepository.url"]
        );
        let mut s = spec(json!({"sourceKind": "OCIRepository", "ociRepository": {"url": "https://ghcr.io/x"}}));
        assert_eq!(
            targets(normalize(&mut s, &name("c"), None).unwrap_err()),
            ["properties.ociRepository.url"]
        );
        let mut s = spec(json!({"sourceKind": "OCIRepository", "ociRepository": {"url": "oci://ghcr.io/x/y"}}));
        assert!(normalize(&mut s, &name("c"), None).is_ok());
    }

    #[test]
    fn a_source_url_may_name_a_user_but_never_carry_a_password() {
        let with = |url: &str| spec(json!({"gitRepository": {"url": url, "repositoryRef": {"branch": "m"}}}));
        let err = normalize(&mut with("https://alice:hunter2@example.com/r.git"), &name("c"), None).unwrap_err();
        let detail = err.detail();
        assert_eq!(detail.target.as_deref(), Some("properties.gitRepository.url"));
        assert!(detail.message.contains("httpsUser"), "{detail:?}");
        assert!(
            !format!("{detail:?}").contains("hunter2"),
            "the password is never echoed"
        );
        assert!(normalize(&mut with("ssh://git@example.com/r.git"), &name("c"), None).is_ok());
        assert!(normalize(&mut with("https://example.com/r.git"), &name("c"), None).is_ok());
    }

    #[test]
    fn a_long_dependency_chain_is_checked_without_deep_recursion() {
        // a chain as long as a client may send: recursion this deep overflows a 2 MiB thread stack
        let chain: BTreeMap<String, Kustomization> = (0..200_000)
            .map(|i| {
                let k = Kustomization {
                    depends_on: Some(if i == 0 { vec![] } else { vec![format!("k{}", i - 1)] }),
                    ..Default::default()
                };
                (format!("k{i}"), k)
            })
            .collect();
        assert_eq!(find_cycle(&chain), None);
        let mut cyclic = chain;
        cyclic.get_mut("k0").unwrap().depends_on = Some(vec!["k199999".into()]);
        let cycle = find_cycle(&cyclic).expect("the chain closes on itself");
        assert_eq!(cycle.len(), 200_001);
        assert_eq!(cycle.first(), cycle.last());
    }

    #[test]
    fn a_configuration_holds_a_bounded_number_of_kustomizations() {
        let mut s = git();
        s["kustomizations"] = (0..=MAX_KUSTOMIZATIONS).map(|i| (format!("k{i}"), json!({}))).collect();
        let err = normalize(&mut spec(s.clone()), &name("c"), None).unwrap_err();
        assert_eq!(targets(err), ["properties.kustomizations"]);
        s["kustomizations"] = (0..MAX_KUSTOMIZATIONS).map(|i| (format!("k{i}"), json!({}))).collect();
        assert!(normalize(&mut spec(s), &name("c"), None).is_ok());
    }

    #[test]
    fn a_git_source_needs_a_reference() {
        let mut s = spec(json!({"gitRepository": {"url": "https://example.com/r", "repositoryRef": {}}}));
        assert_eq!(
            targets(normalize(&mut s, &name("c"), None).unwrap_err()),
            ["properties.gitRepository.repositoryRef"]
        );
    }

    #[test]
    fn depends_on_must_name_kustomizations_without_cycles() {
        let mut s = git();
        s["kustomizations"] = json!({"a": {"dependsOn": ["b"]}, "b": {"dependsOn": ["c"]}, "c": {"dependsOn": ["a"]}});
        let err = normalize(&mut spec(s.clone()), &name("c"), None).unwrap_err();
        assert!(err.detail().message.contains("a -> b -> c -> a"), "{:?}", err.detail());
        s["kustomizations"] = json!({"a": {"dependsOn": ["missing"]}});
        assert_eq!(
            targets(normalize(&mut spec(s.clone()), &name("c"), None).unwrap_err()),
            ["properties.kustomizations.a.dependsOn"]
        );
        s["kustomizations"] = json!({"a": {"dependsOn": ["a"]}});
        assert!(normalize(&mut spec(s), &name("c"), None).is_err());
    }

    #[test]
    fn configuration_and_kustomization_names_fit_together() {
        let mut s = git();
        s["kustomizations"] = json!({ "k".repeat(32): {} });
        assert!(normalize(&mut spec(s.clone()), &name(&"c".repeat(30)), None).is_ok());
        assert!(normalize(&mut spec(s), &name(&"c".repeat(31)), None).is_err());
    }

    #[test]
    fn scope_and_namespace_are_immutable() {
        let mut first = spec(git());
        normalize(&mut first, &name("c"), None).unwrap();
        let mut second = git();
        second["namespace"] = json!("other");
        assert_eq!(
            targets(normalize(&mut spec(second), &name("c"), Some(&first)).unwrap_err()),
            ["properties.namespace"]
        );
    }

    #[test]
    fn durations_intervals_and_base64_are_checked() {
        let mut s = git();
        s["reconciliationWaitDuration"] = json!("30 minutes");
        s["gitRepository"]["syncIntervalInSeconds"] = json!(0);
        s["gitRepository"]["httpsCACert"] = json!("not base64!");
        let t = targets(normalize(&mut spec(s), &name("c"), None).unwrap_err());
        assert_eq!(t.len(), 3, "{t:?}");
        let mut ok = git();
        ok["reconciliationWaitDuration"] = json!("PT30M");
        assert!(normalize(&mut spec(ok), &name("c"), None).is_ok());
    }

    /// Properties in the shape of a configuration, with any values: what a client might send.
    fn configuration_like() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        let text = "\\PC{0,16}|PT[0-9]{1,3}[HMS]|P[0-9DTHMSW]{0,8}|[0-9]{1,4}";
        (
            prop_oneof![
                Just(json!("GitRepository")),
                Just(json!("Bucket")),
                "\\PC{0,8}".prop_map(|s| json!(s))
            ],
            text,
            text,
            crate::testing::arbitrary_json(),
            proptest::collection::btree_map("[a-z0-9-]{1,8}", crate::testing::arbitrary_json(), 0..4),
        )
            .prop_map(|(kind, url, wait, reference, kustomizations)| {
                json!({
                    "sourceKind": kind,
                    "gitRepository": {"url": url, "repositoryRef": reference},
                    "reconciliationWaitDuration": wait,
                    "kustomizations": kustomizations.into_iter().collect::<serde_json::Map<_, _>>(),
                })
            })
    }

    proptest::proptest! {
        #[test]
        fn any_semver_range_is_accepted_or_refused_as_a_bad_request(
            range in "[0-9xX*v.<>=!~^|, +-]{0,40}|\\PC{0,40}",
        ) {
            let mut s = spec(json!({"gitRepository": {"url": "https://x.io/r", "repositoryRef": {"semver": range}}}));
            if let Err(err) = normalize(&mut s, &name("c"), None) {
                proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
            }
        }

        #[test]
        fn any_configuration_is_read_and_normalised_or_refused_as_a_bad_request(value in configuration_like()) {
            match crate::arm::body::parse::<FluxConfigurationSpec>(value, "properties") {
                Ok(mut spec) => {
                    if let Err(err) = normalize(&mut spec, &name("c"), None) {
                        proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
                    }
                }
                Err(err) => proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST),
            }
        }
    }
}
