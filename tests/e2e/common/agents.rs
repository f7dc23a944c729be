//! Agents for the end-to-end tests: registered with real identities, running with `dir` targets, and served Git
//! repositories for them to check.

use std::path::Path;
use std::time::{Duration, Instant};

use fluxplane_agent::client::ControlPlane;
use fluxplane_agent::identity::Identity;
use fluxplane_agent::register::{Registration, register};
use fluxplane_agent::run::{Agent, Options};
use fluxplane_agent::targets::dir::DirTarget;
use reqwest::StatusCode;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::oneshot;

use super::git::{FileServer, MANIFEST, Repository};
use super::{Api, cluster_path};

pub async fn registered(api: &Api, name: &str, dir: &Path) -> Identity {
    let registration = Registration {
        server: api.server.base.clone(),
        user_token: api.token.clone(),
        cluster_id: cluster_path("s", "rg", name),
        tags: [("env".to_owned(), "test".to_owned())].into(),
        location: Some("westeurope".into()),
        trust: Default::default(),
    };
    register(&registration, &dir.join(format!("{name}.json")))
        .await
        .expect("registering the agent")
}

/// A running agent with a `dir` target, stopped when dropped.
pub struct RunningAgent {
    pub target: TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl RunningAgent {
    pub async fn start(identity: Identity) -> Self {
        Self::start_in(identity, tempfile::tempdir().unwrap()).await
    }

    /// An agent with the target directory an earlier one left (see [`RunningAgent::stop_keeping_target`]).
    pub async fn start_in(identity: Identity, target: TempDir) -> Self {
        let agent = Agent::new(
            ControlPlane::new(identity).unwrap(),
            Box::new(DirTarget::new(target.path()).unwrap()),
            Options {
                poll_wait: Duration::from_secs(5),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(agent.run(async {
            let _ = stopped.await;
        }));
        Self {
            target,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub async fn stop(self) {
        self.stop_keeping_target().await;
    }

    /// Stops the agent and hands over its target directory, for a restarted agent to find.
    pub async fn stop_keeping_target(mut self) -> TempDir {
        let _ = self.stop.take().unwrap().send(());
        self.task.take().unwrap().await.unwrap().unwrap();
        let empty = tempfile::tempdir().unwrap();
        std::mem::replace(&mut self.target, empty)
    }

    pub fn file(&self, configuration: &str, file: &str) -> std::path::PathBuf {
        self.target.path().join(configuration).join(file)
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Reads the configuration until `done` holds of its properties (or fails after 20 s).
pub async fn until(api: &Api, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answer = api.get(path).await;
        if answer.status == StatusCode::OK && done(&answer.body["properties"]) {
            return answer.body;
        }
        assert!(Instant::now() < deadline, "waiting for {what}; last answer: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A repository with `infra/` and `apps/`, served over HTTP, and its URL.
pub async fn served_repository() -> (Repository, FileServer, String) {
    let repository = Repository::new(&[("infra/ns.yaml", MANIFEST), ("apps/app.yaml", MANIFEST)]);
    let git = FileServer::start(repository.served_root()).await;
    let url = format!("{}/repo.git", git.base);
    (repository, git, url)
}

pub fn config_body(url: &str) -> Value {
    json!({"properties": {
        "namespace": "flux-system",
        "gitRepository": {"url": url, "repositoryRef": {"branch": "main"}, "syncIntervalInSeconds": 1},
        "kustomizations": {
            "infra": {"path": "./infra"},
            "apps": {"path": "./apps", "dependsOn": ["infra"]}
        }
    }})
}
