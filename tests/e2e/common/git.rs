//! Real Git repositories made by the tests, served over real HTTP (Git's "dumb" protocol: static files of a bare
//! repository, which is what `git update-server-info` prepares).

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "test")
        .env("GIT_AUTHOR_EMAIL", "test@example.com")
        .env("GIT_COMMITTER_NAME", "test")
        .env("GIT_COMMITTER_EMAIL", "test@example.com")
        .output()
        .expect("running git");
    assert!(
        output.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A repository with a work tree, published as a bare repository that an HTTP server serves.
pub struct Repository {
    pub work: PathBuf,
    pub bare: PathBuf,
    _dir: TempDir,
}

impl Repository {
    /// A repository on branch `main` with the given files committed.
    pub fn new(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "-q", "-b", "main"]);
        let bare = dir.path().join("served").join("repo.git");
        let repository = Self { work, bare, _dir: dir };
        repository.commit(files, "initial");
        std::fs::create_dir_all(repository.served_root()).unwrap();
        git(
            repository.served_root(),
            &["clone", "-q", "--bare", repository.work.to_str().unwrap(), "repo.git"],
        );
        git(&repository.bare, &["update-server-info"]);
        repository
    }

    /// Commits files (path, contents) on the current branch and publishes; returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (path, contents) in files {
            let file = self.work.join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, contents).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "--allow-empty", "-m", message]);
        if self.bare.exists() {
            self.publish();
        }
        self.head()
    }

    /// Tags the current commit (annotated) and publishes the tag.
    pub fn tag(&self, tag: &str) {
        git(&self.work, &["tag", "-a", tag, "-m", tag]);
        git(
            &self.work,
            &[
                "push",
                "-q",
                "--force",
                self.bare.to_str().unwrap(),
                &format!("refs/tags/{tag}"),
            ],
        );
        git(&self.bare, &["update-server-info"]);
    }

    pub fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn publish(&self) {
        git(
            &self.work,
            &["push", "-q", "--force", self.bare.to_str().unwrap(), "main"],
        );
        git(&self.bare, &["update-server-info"]);
    }

    /// The directory an HTTP server should serve for `url()` to work.
    pub fn served_root(&self) -> &Path {
        self.bare.parent().unwrap()
    }
}

/// An HTTP server of static files on a port of its own, until dropped.
pub struct FileServer {
    pub base: String,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    pub async fn start(root: &Path) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(root));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, task }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub const MANIFEST: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  key: value\n";
