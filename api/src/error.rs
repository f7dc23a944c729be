//! The server's one error type and its mapping to ARM error bodies.
//!
//! Every failure a handler can meet is a variant here; `IntoResponse` is the only place that turns one into an
//! HTTP status and a `{"error":{"code","message","target","details"}}` body. Internal errors are logged with their
//! whole cause chain inside the request's span and answered with a body that leaks nothing.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// One ARM error detail; `details` nests further ones (one per invalid field, for instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub details: Vec<ErrorDetail>,
}

impl ErrorDetail {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.to_owned(),
            message: message.into(),
            target: None,
            details: Vec::new(),
        }
    }

    pub fn with_target(mut self, target: impl Into<String>) -> Self {
        self.target = Some(target.into());
        self
    }
}

/// The ARM error envelope.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorResponse {
    pub error: ErrorDetail,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A request field or parameter is invalid; `details` lists every problem found.
    #[error("{message}")]
    InvalidParameter {
        message: String,
        target: Option<String>,
        details: Vec<ErrorDetail>,
    },
    #[error("the request body is not valid JSON: {0}")]
    InvalidRequestContent(String),
    #[error("the api-version query parameter is required")]
    MissingApiVersion,
    #[error("api-version '{given}' is not supported; supported versions: {supported}")]
    InvalidApiVersion { given: String, supported: String },
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("the request body is larger than the limit of {limit} bytes")]
    RequestEntityTooLarge { limit: usize },
    #[error("{0}")]
    ResourceNotFound(String),
    /// A Flux configuration that does not exist on its (registered) cluster.
    #[error("{0}")]
    FluxConfigurationNotFound(String),
    /// An extension that does not exist on its (registered) cluster.
    #[error("{0}")]
    ExtensionNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    SubscriptionNotFound(String),
    /// A write of a resource type Azure retired (Flux v1's sourceControlConfigurations).
    #[error("{0}")]
    Retired(String),
    #[error("{0}")]
    InvalidResourceNamespace(String),
    #[error("method not allowed on this resource")]
    MethodNotAllowed,
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    Conflict(String),
    /// Secrets were written for a cluster whose agent has registered no key to seal them to.
    #[error("{0}")]
    AgentEncryptionKeyMissing(String),
    #[error("{0}")]
    AuthenticationFailed(String),
    #[error("{0}")]
    AuthorizationFailed(String),
    #[error("the service is not ready: {0}")]
    NotReady(String),
    /// The database cannot be reached; the message says what was met.
    #[error("{0}")]
    DatabaseUnavailable(String),
    /// No pooled database connection came free in time: the database is down or every connection busy (an
    /// overload); the availability watcher finds out which before refusing everyone (`availability`).
    #[error("{0}")]
    NoConnection(String),
    /// The server holds as much of this kind of work as it queues; retry in a second.
    #[error("{0}")]
    ServerBusy(String),
    /// The database rolled the write back for another transaction (a deadlock it broke) and nothing was written;
    /// retry in a second. Answered as `ServerBusy`.
    #[error("{0}")]
    WriteCollided(String),
    #[error("the request did not complete within {} seconds", .0.as_secs())]
    RequestTimeout(std::time::Duration),
    /// A rate limit of the server's own (an alert receiver's) has no room now; retry after the given seconds.
    #[error("{message}")]
    TooManyRequests { message: String, retry_after: u64 },
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// The same answer for another request that met the same failure (a batch's other requests): an error cannot
    /// be cloned (it may hold its cause), so its kind is kept where a client acts on it (an outage, no connection,
    /// a collision: retry) and anything else is an internal error saying the same.
    fn for_another(&self) -> ApiError {
        match self {
            ApiError::DatabaseUnavailable(message) => ApiError::DatabaseUnavailable(message.clone()),
            ApiError::NoConnection(message) => ApiError::NoConnection(message.clone()),
            ApiError::WriteCollided(message) => ApiError::WriteCollided(message.clone()),
            other => ApiError::Internal(anyhow::anyhow!("{other}")),
        }
    }

    /// The answers of `n` requests that met this failure together (a batch's): itself, and `n - 1` alike.
    pub fn for_each_of(self, n: usize) -> impl Iterator<Item = ApiError> {
        let others: Vec<ApiError> = (1..n).map(|_| self.for_another()).collect();
        std::iter::once(self).take(n.min(1)).chain(others)
    }

    pub fn invalid(target: impl Into<String>, message: impl Into<String>) -> Self {
        Self::InvalidParameter {
            message: message.into(),
            target: Some(target.into()),
            details: Vec::new(),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidParameter { .. }
            | ApiError::InvalidRequestContent(_)
            | ApiError::MissingApiVersion
            | ApiError::InvalidApiVersion { .. }
            | ApiError::Retired(_) => StatusCode::BAD_REQUEST,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::RequestEntityTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::ResourceNotFound(_)
            | ApiError::FluxConfigurationNotFound(_)
            | ApiError::ExtensionNotFound(_)
            | ApiError::NotFound(_)
            | ApiError::SubscriptionNotFound(_)
            | ApiError::InvalidResourceNamespace(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            ApiError::Conflict(_) | ApiError::AgentEncryptionKeyMissing(_) => StatusCode::CONFLICT,
            ApiError::AuthenticationFailed(_) => StatusCode::UNAUTHORIZED,
            ApiError::AuthorizationFailed(_) => StatusCode::FORBIDDEN,
            ApiError::NotReady(_)
            | ApiError::DatabaseUnavailable(_)
            | ApiError::NoConnection(_)
            | ApiError::ServerBusy(_)
            | ApiError::WriteCollided(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            ApiError::InvalidParameter { .. } => "InvalidParameter",
            ApiError::InvalidRequestContent(_) => "InvalidRequestContent",
            ApiError::MissingApiVersion => "MissingApiVersionParameter",
            ApiError::InvalidApiVersion { .. } => "InvalidApiVersionParameter",
            ApiError::UnsupportedMediaType(_) => "UnsupportedMediaType",
            ApiError::RequestEntityTooLarge { .. } => "RequestEntityTooLarge",
            ApiError::ResourceNotFound(_) => "ResourceNotFound",
            ApiError::FluxConfigurationNotFound(_) => "FluxConfigurationNotFound",
            ApiError::ExtensionNotFound(_) => "ExtensionNotFound",
            ApiError::NotFound(_) => "NotFound",
            ApiError::SubscriptionNotFound(_) => "SubscriptionNotFound",
            ApiError::Retired(_) => "FluxV1Retired",
            ApiError::InvalidResourceNamespace(_) => "InvalidResourceNamespace",
            ApiError::MethodNotAllowed => "MethodNotAllowed",
            ApiError::PreconditionFailed(_) => "PreconditionFailed",
            ApiError::Conflict(_) => "Conflict",
            ApiError::AgentEncryptionKeyMissing(_) => "AgentEncryptionKeyMissing",
            ApiError::AuthenticationFailed(_) => "AuthenticationFailed",
            ApiError::AuthorizationFailed(_) => "AuthorizationFailed",
            ApiError::NotReady(_) | ApiError::DatabaseUnavailable(_) | ApiError::NoConnection(_) => {
                "ServiceUnavailable"
            }
            ApiError::ServerBusy(_) | ApiError::WriteCollided(_) => "ServerBusy",
            ApiError::RequestTimeout(_) => "RequestTimeout",
            ApiError::TooManyRequests { .. } => "TooManyRequests",
            ApiError::Internal(_) => "InternalServerError",
        }
    }

    /// The ARM error body; for internal errors a fixed message, never the cause.
    pub fn detail(&self) -> ErrorDetail {
        match self {
            ApiError::InvalidParameter {
                message,
                target,
                details,
            } => ErrorDetail {
                code: self.code().to_owned(),
                message: message.clone(),
                target: target.clone(),
                details: details.clone(),
            },
            ApiError::Internal(_) => ErrorDetail::new(
                self.code(),
                "The server encountered an internal error. Please retry the request.",
            ),
            other => ErrorDetail::new(other.code(), other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            ApiError::Internal(err) => tracing::error!(error = format!("{err:#}"), "request failed"),
            // an outage is logged once, when it begins (availability)
            ApiError::DatabaseUnavailable(_) => {}
            // a flood refused would be a line per request; the request metrics count them by status (an overload
            // that leaves requests without a connection is logged once a second, by the availability watcher)
            ApiError::ServerBusy(_) | ApiError::NoConnection(_) => tracing::debug!(error = %self, "request refused"),
            _ if status.is_server_error() => tracing::warn!(error = %self, "request failed"),
            _ => {}
        }
        let mut response = (status, axum::Json(ErrorResponse { error: self.detail() })).into_response();
        match &self {
            ApiError::DatabaseUnavailable(why) => {
                response.extensions_mut().insert(Unreachable(why.clone()));
            }
            ApiError::NoConnection(why) => {
                response.extensions_mut().insert(Unanswered(why.clone()));
            }
            _ => {}
        }
        let headers = response.headers_mut();
        headers.insert("x-ms-error-code", HeaderValue::from_static(self.code()));
        if let ApiError::ServerBusy(_) | ApiError::WriteCollided(_) = &self {
            // as the connection cap's 503 says: a queue drains in moments, an outage does not
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        } else if status == StatusCode::SERVICE_UNAVAILABLE {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let ApiError::TooManyRequests { retry_after, .. } = &self {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after));
        }
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

/// What a response says when it met an unreachable database (with what the database driver said): the
/// availability guard marks the database down on seeing it.
#[derive(Debug, Clone)]
pub struct Unreachable(pub String);

/// What a response says when no pooled database connection came free in time: the availability guard has the
/// database tried before it marks it down, since an overload looks the same.
#[derive(Debug, Clone)]
pub struct Unanswered(pub String);

/// Collects every validation problem of a request, so that one answer lists them all.
#[derive(Debug, Default)]
pub struct Problems(Vec<ErrorDetail>);

impl Problems {
    /// Records that the field at `target` is invalid, and why.
    pub fn add(&mut self, target: impl Into<String>, message: impl Into<String>) {
        let target = target.into();
        let message = format!("{}: {}", target, message.into());
        self.0
            .push(ErrorDetail::new("InvalidParameter", message).with_target(target));
    }

    /// `Ok` when nothing was recorded; otherwise one `InvalidParameter` error listing every problem in `details`
    /// (`what` names the resource in the summary, `target` is the summary's target).
    pub fn into_result(self, what: &str, target: Option<&str>) -> ApiResult<()> {
        match self.0.len() {
            0 => Ok(()),
            1 => {
                let only = self.0.into_iter().next().expect("one problem");
                Err(ApiError::InvalidParameter {
                    message: only.message.clone(),
                    target: only.target.clone(),
                    details: vec![only],
                })
            }
            n => Err(ApiError::InvalidParameter {
                message: format!("the {what} has {n} invalid fields; see details"),
                target: target.map(str::to_owned),
                details: self.0,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_timeout_is_answered_503_and_asks_for_a_check_rather_than_declaring_an_outage() {
        let err = crate::store::StoreError::Database(sqlx::Error::PoolTimedOut);
        let response = ApiError::from(err).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "5");
        assert_eq!(response.headers()["x-ms-error-code"], "ServiceUnavailable");
        assert!(
            response.extensions().get::<Unanswered>().is_some(),
            "the guard has the database tried"
        );
        assert!(
            response.extensions().get::<Unreachable>().is_none(),
            "not an outage by itself"
        );
    }

    #[test]
    fn a_refused_connection_is_an_outage() {
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let response = ApiError::from(crate::store::StoreError::Database(sqlx::Error::Io(refused))).into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.extensions().get::<Unreachable>().is_some());
        assert!(response.extensions().get::<Unanswered>().is_none());
    }

    #[test]
    fn the_other_requests_of_a_failed_batch_are_answered_with_the_same_kind_of_error() {
        let timed_out = ApiError::from(crate::store::StoreError::Database(sqlx::Error::PoolTimedOut));
        let mate = timed_out.for_another().into_response();
        assert_eq!(mate.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            mate.extensions().get::<Unanswered>().is_some(),
            "no connection, not an outage"
        );
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let outage = ApiError::from(crate::store::StoreError::Database(sqlx::Error::Io(refused)));
        assert!(
            outage
                .for_another()
                .into_response()
                .extensions()
                .get::<Unreachable>()
                .is_some()
        );
        let internal = ApiError::Internal(anyhow::anyhow!("a column did not decode"));
        assert_eq!(internal.for_another().status(), StatusCode::INTERNAL_SERVER_ERROR);
        let answers: Vec<_> = ApiError::NoConnection("none free".into()).for_each_of(3).collect();
        assert_eq!(answers.len(), 3);
        assert!(
            answers
                .iter()
                .all(|a| matches!(a, ApiError::NoConnection(m) if m == "none free"))
        );
        assert_eq!(ApiError::NoConnection("x".into()).for_each_of(0).count(), 0);
    }

    #[test]
    fn internal_errors_do_not_leak_their_cause() {
        let err = ApiError::Internal(anyhow::anyhow!("password=hunter2 at db.internal"));
        let detail = err.detail();
        assert_eq!(detail.code, "InternalServerError");
        assert!(!detail.message.contains("hunter2"));
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn invalid_parameter_keeps_target_and_details() {
        let err = ApiError::InvalidParameter {
            message: "2 problems".into(),
            target: Some("properties".into()),
            details: vec![ErrorDetail::new("InvalidParameter", "bad url").with_target("properties.gitRepository.url")],
        };
        let body = serde_json::to_value(ErrorResponse { error: err.detail() }).unwrap();
        assert_eq!(body["error"]["target"], "properties");
        assert_eq!(body["error"]["details"][0]["target"], "properties.gitRepository.url");
    }
}
