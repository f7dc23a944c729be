//! The public webhook of Git receivers: `POST /webhooks/git/{hookId}`, called by a Git host on push. No bearer
//! token: each delivery is authenticated with the receiver's secret (`model::read`), and hard to abuse:
//!
//! - a path that is no hook id is refused without touching the database; deliveries are rate limited, all
//!   together before the receiver is looked up and per receiver after (`limits`);
//! - the body is read up to `--max-body-bytes` (413 beyond) and authenticated before it is parsed;
//! - a delivery that does not authenticate changes nothing and is answered 401 without saying why; the server's
//!   log says which receiver refused it, never a header or the body.

use axum::Json;
use axum::body::{Body, to_bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use chrono::Utc;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::model::{Event, Headers, Refused, read};
use super::service::{GitReceivers, HOOK_ID_CHARS};
use crate::error::{ApiError, ApiResult, ErrorResponse};
use crate::fleet::breaker::repository_key;
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(deliver))
}

/// What a delivery did.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delivered {
    /// `push`, or the event the host said it was (nothing done).
    pub event: String,
    /// How many configurations were asked to re-check their source at once.
    pub configurations: u64,
}

struct RequestHeaders<'a>(&'a HeaderMap);

impl Headers for RequestHeaders<'_> {
    fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).and_then(|value| value.to_str().ok())
    }
}

fn unknown() -> ApiError {
    ApiError::NotFound("no Git receiver has this webhook".into())
}

/// A Git host's delivery to a receiver. A verified push asks the configurations of the receiver's scope that read
/// the pushed repository and ref to re-check their source at once (202); any other event is acknowledged and does
/// nothing (200). Unauthenticated by bearer token: the receiver's secret authenticates each delivery (401, saying
/// no more, when it does not).
#[utoipa::path(
    post,
    path = "/webhooks/git/{hookId}",
    tag = "GitReceivers",
    operation_id = "GitReceivers_Deliver",
    params(("hookId" = String, Path, description = "The last segment of the receiver's `webhookUrl`")),
    request_body(content = Object, description = "The Git host's payload, as it sends it (application/json)"),
    responses(
        (status = 202, description = "A push: its configurations were asked to re-check", body = Delivered),
        (status = 200, description = "Another event: nothing done", body = Delivered),
        (status = 401, description = "The delivery does not authenticate", body = ErrorResponse),
        (status = 404, description = "No receiver has this webhook", body = ErrorResponse),
        (status = 413, description = "The body is larger than the server accepts", body = ErrorResponse),
        (status = 429, description = "Too many deliveries: retry after a second", body = ErrorResponse),
        (status = "default", description = "Error", body = ErrorResponse),
    ),
    security(())
)]
async fn deliver(
    State(state): State<AppState>,
    State(receivers): State<GitReceivers>,
    Path(hook_id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, Json<Delivered>)> {
    if hook_id.len() != HOOK_ID_CHARS
        || !hook_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(unknown());
    }
    if !state.hooks.all() {
        return Err(ApiError::TooManyRequests {
            message: "too many webhook deliveries; retry shortly".into(),
            retry_after: 1,
        });
    }
    let receiver = state.store.git_receiver_by_hook(&hook_id).await?.ok_or_else(unknown)?;
    if !state.hooks.receiver(receiver.id) {
        tracing::warn!(receiver = %receiver.key, "webhook deliveries past the receiver's rate limit");
        return Err(ApiError::TooManyRequests {
            message: "too many deliveries to this receiver; retry shortly".into(),
            retry_after: 1,
        });
    }
    let limit = state.config.max_body_bytes;
    let body = to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::RequestEntityTooLarge { limit })?;
    let secret = receivers.secret(&receiver)?;
    let host = receiver.spec.host_type;
    let event = match read(host, &secret, &RequestHeaders(&headers), &body) {
        Ok(event) => event,
        Err(Refused::Unauthenticated) => {
            tracing::warn!(receiver = %receiver.key, host = host.as_str(), "a webhook delivery did not authenticate; nothing done");
            return Err(ApiError::AuthenticationFailed(
                "the delivery is not authenticated".into(),
            ));
        }
        Err(Refused::Unreadable(why)) => {
            tracing::warn!(receiver = %receiver.key, host = host.as_str(), why, "an authenticated delivery could not be read");
            return Err(ApiError::InvalidRequestContent(why));
        }
    };
    let push = match event {
        Event::Push(push) => push,
        Event::Other(event) => {
            tracing::info!(receiver = %receiver.key, host = host.as_str(), event, "a webhook delivery that is no push: nothing to do");
            return Ok((
                StatusCode::OK,
                Json(Delivered {
                    event,
                    configurations: 0,
                }),
            ));
        }
    };
    if !push.is_to(&repository_key(&receiver.spec.repository_url)) {
        tracing::warn!(receiver = %receiver.key, host = host.as_str(), "a push to another repository than the receiver's; nothing done");
        return Err(ApiError::invalid(
            "repository",
            format!(
                "the push is to another repository than the receiver's ({}): point this host's webhook at a receiver \
                 of that repository",
                receiver.spec.repository_url
            ),
        ));
    }
    let configurations = receivers.push(&receiver, &push, Utc::now()).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Delivered {
            event: "push".into(),
            configurations,
        }),
    ))
}
