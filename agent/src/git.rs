//! A real check of a Git source, for targets where no Flux runs: fetch the repository with the git CLI into a bare
//! mirror, resolve the configuration's reference (commit > semver > tag > branch, as Flux does), and check what a
//! `kustomize build` of every kustomization path would read (`kustomize.rs`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use fluxplane_agent_protocol::flux::RepositoryRef;
use fluxplane_agent_protocol::semver::Constraint;
use tokio::process::Command;

use crate::kustomize::{self, Blobs, Limits, Outcome, Snapshot};

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
    /// What git runs to reach an `ssh://` remote (`GIT_SSH_COMMAND`); git's default when absent.
    ssh_command: Option<String>,
}

impl Mirror {
    pub fn new(path: PathBuf, timeout: Duration) -> Self {
        Self {
            path,
            timeout,
            ssh_command: None,
        }
    }

    /// The mirror, fetching over SSH with `command` (see [`ssh_command`]).
    pub fn with_ssh_command(mut self, command: String) -> Self {
        self.ssh_command = Some(command);
        self
    }

    /// Runs git on the mirror; its output as bytes (paths and blobs need not be UTF-8).
    async fn git_bytes(&self, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let mut command = Command::new("git");
        command
            .arg("--git-dir")
            .arg(&self.path)
            .args(args)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "true")
            .kill_on_drop(true);
        if let Some(ssh) = &self.ssh_command {
            command.env("GIT_SSH_COMMAND", ssh);
        }
        let output = tokio::time::timeout(self.timeout, command.output())
            .await
            .with_context(|| format!("git {} timed out after {:?}", args.first().unwrap_or(&""), self.timeout))?
            .context("running git")?;
        if !output.status.success() {
            bail!("{}", String::from_utf8_lossy(&output.stderr).trim());
        }
        Ok(output.stdout)
    }

    async fn git(&self, args: &[&str]) -> anyhow::Result<String> {
        Ok(String::from_utf8_lossy(&self.git_bytes(args).await?).into_owned())
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
        .map_err(|err| {
            if err.to_string().contains("Host key verification failed") {
                err.context(
                    "the server's host key is not known: set gitRepository.sshKnownHosts to its known_hosts lines",
                )
            } else {
                err
            }
        })
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

    /// Checks what a `kustomize build` of each path at `commit` would read (`kustomize.rs`), in the order given.
    /// The commit's tree is listed once, and its files read through one `git cat-file --batch`.
    pub async fn check_kustomizations(&self, commit: &str, paths: Vec<String>) -> anyhow::Result<Vec<Outcome>> {
        if paths.is_empty() {
            return Ok(Vec::new());
        }
        let listing = self
            .git_bytes(&["ls-tree", "-r", "-t", "-l", "-z", "--full-tree", commit])
            .await?;
        let snapshot = Snapshot::from_ls_tree(&listing)?;
        if snapshot.len() > MAX_TREE_ENTRIES {
            let reason = format!(
                "the commit holds {} files and directories; the dir target checks at most {MAX_TREE_ENTRIES}",
                snapshot.len()
            );
            return Ok(paths.iter().map(|_| Outcome::Unverified(reason.clone())).collect());
        }
        let git_dir = self.path.clone();
        let timeout = self.timeout;
        // the walk is synchronous (each reference read decides the next), so it runs off the async workers; its
        // work is bounded by `Limits`, and the observation stops waiting for it after the source's timeout
        let work = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<Outcome>> {
            let mut blobs = CatFile::start(&git_dir)?;
            Ok(paths
                .iter()
                .map(|path| kustomize::check(&snapshot, &mut blobs, path, Limits::default()))
                .collect())
        });
        tokio::time::timeout(timeout, work)
            .await
            .with_context(|| format!("checking the kustomizations timed out after {timeout:?}"))?
            .context("the kustomization check panicked")?
    }
}

/// Most entries (files and directories) a commit may hold for the dir target to check it: a bound on the memory
/// and time a hostile repository can cost each sync.
const MAX_TREE_ENTRIES: usize = 200_000;

/// Blobs read from a bare repository by one long-lived `git cat-file --batch` (one process for a whole check,
/// rather than one per file).
struct CatFile {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl CatFile {
    fn start(git_dir: &Path) -> anyhow::Result<Self> {
        let mut child = std::process::Command::new("git")
            .arg("--git-dir")
            .arg(git_dir)
            .args(["cat-file", "--batch"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("running git cat-file")?;
        let input = child.stdin.take().context("git cat-file's input")?;
        let output = std::io::BufReader::new(child.stdout.take().context("git cat-file's output")?);
        Ok(Self { child, input, output })
    }
}

impl Blobs for CatFile {
    fn read(&mut self, oid: &str) -> anyhow::Result<Vec<u8>> {
        use std::io::{BufRead, Read, Write};
        writeln!(self.input, "{oid}")?;
        self.input.flush()?;
        let mut header = String::new();
        self.output.read_line(&mut header)?;
        // `<oid> <type> <size>`, or `<oid> missing`
        let size: usize = header
            .split_whitespace()
            .nth(2)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("git cat-file: {}", header.trim()))?;
        let mut contents = vec![0; size + 1];
        self.output.read_exact(&mut contents)?;
        contents.pop();
        Ok(contents)
    }
}

impl Drop for CatFile {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The command git reaches `ssh://` remotes with: only the given key (never an agent's or the user's own), host keys
/// checked strictly against `known_hosts` (else the system's files), nothing asked of a terminal, no user config.
pub fn ssh_command(identity: Option<&Path>, known_hosts: Option<&Path>) -> anyhow::Result<String> {
    let mut words = vec![
        "ssh",
        "-F",
        "/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
    ];
    let identity_option;
    if let Some(identity) = identity {
        identity_option = format!("IdentityFile={}", identity.display());
        words.extend([
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "IdentityAgent=none",
            "-o",
            &identity_option,
        ]);
    }
    let known_hosts_option;
    if let Some(known_hosts) = known_hosts {
        known_hosts_option = format!("UserKnownHostsFile={}", known_hosts.display());
        words.extend(["-o", &known_hosts_option, "-o", "GlobalKnownHostsFile=/dev/null"]);
    }
    shlex::try_join(words).context("a path of the agent's target cannot be passed to ssh")
}

/// The mirror directory of a configuration under `root`.
pub fn mirror_path(root: &Path, configuration: &str) -> PathBuf {
    root.join(".fluxplane").join("git").join(format!("{configuration}.git"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ssh_command_uses_only_the_given_key_and_quotes_its_paths() {
        let command = ssh_command(Some(Path::new("/t/my dir/identity")), Some(Path::new("/t/kh"))).unwrap();
        let words = shlex::split(&command).unwrap();
        assert!(
            words.contains(&"IdentityFile=/t/my dir/identity".to_owned()),
            "{command}"
        );
        assert!(words.contains(&"IdentitiesOnly=yes".to_owned()));
        assert!(words.contains(&"UserKnownHostsFile=/t/kh".to_owned()));
        assert!(words.contains(&"StrictHostKeyChecking=yes".to_owned()));
        let bare = shlex::split(&ssh_command(None, None).unwrap()).unwrap();
        assert!(!bare.iter().any(|w| w.starts_with("IdentityFile")));
    }
}
