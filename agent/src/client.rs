//! The control plane as the agent sees it: the agent API over HTTP(S), each request with a freshly signed token.

use std::time::Duration;

use fluxplane_agent_protocol::agent::{DesiredState, PREFIX, StatusAccepted, StatusReport};
use reqwest::StatusCode;

use crate::identity::Identity;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control plane refused the agent's token: the cluster was deleted or registered again with a new key.
    #[error("the control plane refused this agent's identity: {0}")]
    Unauthorized(String),
    #[error("the control plane answered {status}: {body}")]
    Status { status: StatusCode, body: String },
    #[error("the control plane could not be reached: {0}")]
    Transport(#[from] reqwest::Error),
    #[error(transparent)]
    Identity(#[from] anyhow::Error),
}

pub struct ControlPlane {
    http: reqwest::Client,
    identity: Identity,
}

impl ControlPlane {
    pub fn new(identity: Identity) -> Result<Self, ClientError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("fluxplane-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, identity })
    }

    pub fn cluster_id(&self) -> &str {
        &self.identity.cluster_id
    }

    /// The desired state once its revision is past `after` (at once without one), waiting up to `wait`.
    pub async fn desired_state(&self, after: Option<i64>, wait: Duration) -> Result<DesiredState, ClientError> {
        let mut url = format!("{}{PREFIX}/desired-state?wait={}", self.identity.server, wait.as_secs());
        if let Some(after) = after {
            url.push_str(&format!("&after={after}"));
        }
        let request = self
            .http
            .get(url)
            // the server answers within `wait`; allow for the network on top
            .timeout(wait + Duration::from_secs(15))
            .bearer_auth(self.identity.token()?);
        answer(request.send().await?).await
    }

    pub async fn report(&self, report: &StatusReport) -> Result<StatusAccepted, ClientError> {
        let request = self
            .http
            .post(format!("{}{PREFIX}/status", self.identity.server))
            .timeout(Duration::from_secs(30))
            .bearer_auth(self.identity.token()?)
            .json(report);
        answer(request.send().await?).await
    }
}

async fn answer<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response.json().await?);
    }
    let body = response.text().await.unwrap_or_default();
    if status == StatusCode::UNAUTHORIZED {
        Err(ClientError::Unauthorized(body))
    } else {
        Err(ClientError::Status { status, body })
    }
}
