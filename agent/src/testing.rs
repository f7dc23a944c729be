//! Real Git repositories for the agent's tests, made with the git CLI in a temporary directory, and the bare
//! mirror the `dir` target would fetch them into.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::git::Mirror;

pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("running git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A repository with a work tree on branch `main`; its path is the URL the agent fetches from.
pub struct Repository {
    pub work: PathBuf,
    dir: TempDir,
}

impl Repository {
    pub fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let repository = Self { work, dir };
        repository.commit(files, "initial");
        repository
    }

    /// Writes files (path, contents) and commits everything; returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, contents) in files {
            let file = self.work.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, contents).unwrap();
        }
        self.commit_all(message)
    }

    pub fn commit_all(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", message]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// A symbolic link at `path` pointing at `target`, committed.
    #[cfg(unix)]
    pub fn link(&self, path: &str, target: &str) -> String {
        let link = self.work.join(path);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, link).unwrap();
        self.commit_all("link")
    }

    pub fn url(&self) -> String {
        self.work.to_string_lossy().into_owned()
    }

    /// A mirror of the repository, fetched, in the repository's temporary directory.
    pub async fn mirror(&self) -> Mirror {
        let mirror = Mirror::new(self.dir.path().join("mirror.git"), Duration::from_secs(60));
        mirror.fetch(&self.url()).await.unwrap();
        mirror
    }
}

pub const CONFIG_MAP: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  key: value\n";
