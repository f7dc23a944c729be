//! The control plane as the agent sees it: the agent API over HTTP(S), each request with a freshly signed token.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;

use fluxplane_agent_protocol::agent::{
    DESIRED_STATE_PATH, DesiredState, EncryptionKeyRegistration, PREFIX, StatusAccepted, StatusReport,
};
use fluxplane_agent_protocol::sealing::EncryptionKey;
use reqwest::StatusCode;

use crate::identity::{AgentToken, Identity};
use crate::tls::Trust;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The control plane refused the agent's token: the cluster was deleted or registered again with a new key.
    #[error("the control plane refused this agent's identity: {0}")]
    Unauthorized(String),
    #[error("the control plane answered {status}: {body}")]
    Status {
        status: StatusCode,
        body: String,
        /// How long the control plane asked the agent to wait before trying again (`Retry-After`), if it did.
        retry_after: Option<Duration>,
    },
    #[error("the control plane could not be reached: {0}")]
    Transport(#[from] reqwest::Error),
    #[error(transparent)]
    Identity(#[from] anyhow::Error),
}

/// What a poll by an agent holding a desired state answers.
#[derive(Debug)]
pub enum Polled {
    /// The desired state, changed since the one held (or the first).
    Changed(DesiredState),
    /// The revision is still the one held.
    Unchanged,
}

pub struct ControlPlane {
    http: reqwest::Client,
    identity: Identity,
    encryption_key: EncryptionKey,
    /// The token requests carry until half its life is gone: signing one per request cost CPU on both sides for
    /// nothing (the control plane skips checking a signature it has checked before).
    token: Mutex<Option<AgentToken>>,
}

impl ControlPlane {
    /// A client that checks the control plane's certificate against the platform's roots.
    pub fn new(identity: Identity) -> Result<Self, ClientError> {
        Self::trusting(identity, &Trust::default())
    }

    /// A client that checks the control plane's certificate against the platform's roots and `trust`'s CAs.
    pub fn trusting(identity: Identity, trust: &Trust) -> Result<Self, ClientError> {
        let http = crate::tls::http_client_trusting(trust)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("fluxplane-agent/", env!("CARGO_PKG_VERSION")))
            // an agent holds one connection with one request at a time, which HTTP/2 would not make cheaper; pinned,
            // so that the agent speaks the same whether or not a build unifies reqwest's `http2` feature in
            .http1_only()
            .build()?;
        Self::with_client(identity, http)
    }

    /// A client that sends its requests through `http`, a client of the caller's: the benchmark's simulated fleet
    /// carries many agents' requests on a few HTTP/2 connections, each agent still with its own identity and
    /// tokens.
    pub fn with_client(identity: Identity, http: reqwest::Client) -> Result<Self, ClientError> {
        let encryption_key = identity.encryption_key()?;
        Ok(Self {
            http,
            identity,
            encryption_key,
            token: Mutex::new(None),
        })
    }

    fn bearer(&self) -> Result<String, ClientError> {
        let mut token = self.token.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Utc::now().timestamp();
        match token.as_ref() {
            Some(current) if current.fresh(now) => Ok(current.value.clone()),
            _ => {
                let new = self.identity.token()?;
                *token = Some(new.clone());
                Ok(new.value)
            }
        }
    }

    pub fn cluster_id(&self) -> &str {
        &self.identity.cluster_id
    }

    /// The key pair secrets for this cluster are sealed to.
    pub fn encryption_key(&self) -> &EncryptionKey {
        &self.encryption_key
    }

    /// Registers the encryption key's public half, so that the control plane can seal secrets to it.
    pub async fn register_encryption_key(&self) -> Result<(), ClientError> {
        let body = EncryptionKeyRegistration {
            public_key: self.encryption_key.public_base64(),
        };
        let response = self
            .http
            .put(format!("{}{PREFIX}/encryption-key", self.identity.server))
            .timeout(Duration::from_secs(30))
            .bearer_auth(self.bearer()?)
            .json(&body)
            .send()
            .await?;
        refusal(response).await.map(drop)
    }

    /// The desired state once its revision is past `after` (at once without one), waiting up to `wait`.
    pub async fn desired_state(&self, after: Option<i64>, wait: Duration) -> Result<DesiredState, ClientError> {
        answer(self.desired_state_request(after, wait)?.send().await?).await
    }

    /// As [`Self::desired_state`] for an agent holding the desired state of revision `held`: if the revision is
    /// still that one when the wait ends, the control plane says so (`304 Not Modified`) instead of sending it all
    /// again. Servers that predate this answer in full; either way the caller holds the current desired state.
    pub async fn poll(&self, held: Option<i64>, wait: Duration) -> Result<Polled, ClientError> {
        let mut request = self.desired_state_request(held, wait)?;
        if let Some(held) = held {
            request = request.header(reqwest::header::IF_NONE_MATCH, format!("\"{held}\""));
        }
        let response = request.send().await?;
        if held.is_some() && response.status() == StatusCode::NOT_MODIFIED {
            return Ok(Polled::Unchanged);
        }
        answer(response).await.map(Polled::Changed)
    }

    fn desired_state_request(
        &self,
        after: Option<i64>,
        wait: Duration,
    ) -> Result<reqwest::RequestBuilder, ClientError> {
        let mut url = format!("{}{DESIRED_STATE_PATH}?wait={}", self.identity.server, wait.as_secs());
        if let Some(after) = after {
            url.push_str(&format!("&after={after}"));
        }
        Ok(self
            .http
            .get(url)
            // the server answers within `wait`; allow for the network on top
            .timeout(wait + Duration::from_secs(15))
            .bearer_auth(self.bearer()?))
    }

    pub async fn report(&self, report: &StatusReport) -> Result<StatusAccepted, ClientError> {
        let request = self
            .http
            .post(format!("{}{PREFIX}/status", self.identity.server))
            .timeout(Duration::from_secs(30))
            .bearer_auth(self.bearer()?)
            .json(report);
        answer(request.send().await?).await
    }
}

async fn answer<T: serde::de::DeserializeOwned>(response: reqwest::Response) -> Result<T, ClientError> {
    Ok(refusal(response).await?.json().await?)
}

/// The response if it is a success, else the error it tells of.
async fn refusal(response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    // in seconds, as the control plane sends it; the HTTP-date form, which it never sends, counts as none
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok()?.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.text().await.unwrap_or_default();
    if status == StatusCode::UNAUTHORIZED {
        Err(ClientError::Unauthorized(body))
    } else {
        Err(ClientError::Status {
            status,
            body,
            retry_after,
        })
    }
}

impl ClientError {
    /// How long the control plane asked to be left alone before the request is sent again (`Retry-After`).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(status: u16, retry_after: Option<&str>) -> reqwest::Response {
        let mut answer = axum::http::Response::builder().status(status);
        if let Some(value) = retry_after {
            answer = answer.header("retry-after", value);
        }
        reqwest::Response::from(answer.body("busy").expect("a valid response"))
    }

    #[tokio::test]
    async fn a_refusal_carries_the_wait_the_control_plane_asked_for() {
        let busy = refusal(refused(503, Some("5"))).await.unwrap_err();
        assert_eq!(busy.retry_after(), Some(Duration::from_secs(5)));
        assert!(matches!(busy, ClientError::Status { status, .. } if status == StatusCode::SERVICE_UNAVAILABLE));
        let dated = refusal(refused(503, Some("Wed, 21 Oct 2015 07:28:00 GMT")))
            .await
            .unwrap_err();
        assert_eq!(dated.retry_after(), None, "a date is not a number of seconds");
        let failed = refusal(refused(500, None)).await.unwrap_err();
        assert_eq!(failed.retry_after(), None);
    }
}
