//! A real check of a Git source, for targets where no Flux runs: fetch the repository with the git CLI into a bare
//! mirror, resolve the configuration's reference (commit > semver > tag > branch, as Flux does), and check that
//! every kustomization path exists and holds valid YAML.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use fluxplane_agent_protocol::flux::RepositoryRef;
use fluxplane_agent_protocol::semver::Constraint;
use serde::Deserialize;
use tokio::process::Command;

/// A resolved reference: the commit and the label Flux reports it with (`main@sha1:...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub commit: String,
    pub synced_id: String,
    /// The commit's committer date, RFC 3339.
    pub committed_at: String,
}

/// A bare mirror of one repository.
pub struct Mirror {
    path: PathBuf,
    timeout: Duration,
}

impl Mirror {
    pub fn new(path: PathBuf, timeout: Duration) -> Self {
        Self { path, timeout }
    }

    async fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut command = Command::new("git");
        command
            .arg("--git-dir")
            .arg(&self.path)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .kill_on_drop(true);
        let output = tokio::time::timeout(self.timeout, command.output())
            .await
            .with_context(|| format!("git {} timed out after {:?}", args.first().unwrap_or(&""), self.timeout))?
            .context("running git")?;
        if !output.status.success() {
            bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Brings the mirror up to date with `url`: every branch and tag.
    pub async fn fetch(&self, url: &str) -> anyhow::Result<()> {
        if !self.path.join("HEAD").exists() {
            tokio::fs::create_dir_all(&self.path).await?;
            self.git(&["init", "--quiet", "--bare"]).await?;
        }
        self.git(&[
            "fetch",
            "--quiet",
            "--prune",
            "--force",
            url,
            "+refs/heads/*:refs/heads/*",
            "+refs/tags/*:refs/tags/*",
        ])
        .await
        .with_context(|| format!("fetching {url}"))?;
        Ok(())
    }

    async fn commit_of(&self, reference: &str) -> Option<String> {
        self.git(&["rev-parse", "--verify", "--quiet", &format!("{reference}^{{commit}}")])
            .await
            .ok()
            .map(|s| s.trim().to_owned())
    }

    /// Resolves the reference the way Flux does: commit, then semver, then tag, then branch.
    pub async fn resolve(&self, reference: &RepositoryRef) -> anyhow::Result<Resolved> {
        let (commit, label) = if let Some(commit) = &reference.commit {
            let found = self
                .commit_of(commit)
                .await
                .with_context(|| format!("commit '{commit}' does not exist"))?;
            let label = reference.branch.as_ref().map(|b| format!("{b}@")).unwrap_or_default();
            (found, label)
        } else if let Some(range) = &reference.semver {
            let tag = self.latest_matching_tag(range).await?;
            let found = self
                .commit_of(&format!("refs/tags/{tag}"))
                .await
                .context("the tag vanished")?;
            (found, format!("{tag}@"))
        } else if let Some(tag) = &reference.tag {
            let found = self
                .commit_of(&format!("refs/tags/{tag}"))
                .await
                .with_context(|| format!("tag '{tag}' does not exist"))?;
            (found, format!("{tag}@"))
        } else if let Some(branch) = &reference.branch {
            let found = self
                .commit_of(&format!("refs/heads/{branch}"))
                .await
                .with_context(|| format!("branch '{branch}' does not exist"))?;
            (found, format!("{branch}@"))
        } else {
            bail!("the repository reference names no branch, tag, semver range or commit");
        };
        let committed_at = self
            .git(&["show", "-s", "--format=%cI", &commit])
            .await?
            .trim()
            .to_owned();
        Ok(Resolved {
            synced_id: format!("{label}sha1:{commit}"),
            commit,
            committed_at,
        })
    }

    /// The tag Flux would check out for `range`: the highest version among the tags (strict semver, an optional
    /// `v`) that satisfies it, read as Flux reads it (`agent_protocol::semver`); equal versions go to the tag whose
    /// commit is the latest, as in Flux.
    async fn latest_matching_tag(&self, range: &str) -> anyhow::Result<String> {
        let constraint = Constraint::parse(range).map_err(|err| anyhow::anyhow!("semver parse error: {err}"))?;
        // an annotated tag's commit date is its target's (`*committerdate`), a lightweight tag's its own
        let listing = self
            .git(&[
                "for-each-ref",
                "--format=%(refname:strip=2)%00%(*committerdate:unix)%00%(committerdate:unix)",
                "refs/tags",
            ])
            .await?;
        let tags: Vec<(&str, i64)> = listing
            .lines()
            .filter_map(|line| {
                let mut fields = line.split('\0');
                let tag = fields.next()?;
                let time = fields.find_map(|f| f.parse().ok()).unwrap_or(0);
                Some((tag, time))
            })
            .collect();
        constraint
            .latest(tags)
            .map(str::to_owned)
            .with_context(|| format!("no match found for semver: {range}"))
    }

    /// Checks that `path` is a directory at `commit` holding at least one YAML file, all of them valid.
    pub async fn check_path(&self, commit: &str, path: &str) -> anyhow::Result<usize> {
        let relative = normalise(path);
        let tree = if relative.is_empty() {
            format!("{commit}^{{tree}}")
        } else {
            format!("{commit}:{relative}")
        };
        let kind = self
            .git(&["cat-file", "-t", &tree])
            .await
            .map_err(|_| anyhow::anyhow!("path '{path}' does not exist"))?;
        if kind.trim() != "tree" {
            bail!("path '{path}' is not a directory");
        }
        let mut args = vec!["ls-tree", "-r", "--name-only", commit];
        if !relative.is_empty() {
            args.extend(["--", relative.as_str()]);
        }
        let files: Vec<String> = self
            .git(&args)
            .await?
            .lines()
            .filter(|f| f.ends_with(".yaml") || f.ends_with(".yml"))
            .map(str::to_owned)
            .collect();
        if files.is_empty() {
            bail!("path '{path}' holds no YAML");
        }
        for file in &files {
            let text = self.git(&["show", &format!("{commit}:{file}")]).await?;
            for document in serde_yaml_ng::Deserializer::from_str(&text) {
                serde_yaml_ng::Value::deserialize(document)
                    .map_err(|err| anyhow::anyhow!("{file}: invalid YAML: {err}"))?;
            }
        }
        Ok(files.len())
    }
}

/// A kustomization path relative to the repository root, without `./` or surrounding slashes.
fn normalise(path: &str) -> String {
    path.split('/')
        .filter(|segment| !segment.is_empty() && *segment != ".")
        .collect::<Vec<_>>()
        .join("/")
}

/// The mirror directory of a configuration under `root`.
pub fn mirror_path(root: &Path, configuration: &str) -> PathBuf {
    root.join(".fluxplane").join("git").join(format!("{configuration}.git"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kustomization_paths_are_normalised() {
        assert_eq!(normalise("./apps/staging/"), "apps/staging");
        assert_eq!(normalise("./"), "");
        assert_eq!(normalise(""), "");
    }
}
