//! JSON request bodies: media type, size limit and syntax are checked before any handler logic runs, and typed
//! parsing reports the exact field that is wrong.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{ApiError, ErrorDetail};
use crate::state::AppState;

/// A request body that is a JSON object.
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl FromRequest<AppState> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let content_type = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if essence != "application/json" && essence != "application/merge-patch+json" {
            return Err(ApiError::UnsupportedMediaType(format!(
                "content type '{content_type}' is not supported; send application/json"
            )));
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::RequestEntityTooLarge {
                    limit: state.config.max_body_bytes,
                }
            } else {
                ApiError::InvalidRequestContent(rejection.body_text())
            }
        })?;
        let value: Value =
            serde_json::from_slice(&bytes).map_err(|err| ApiError::InvalidRequestContent(err.to_string()))?;
        if !value.is_object() {
            return Err(ApiError::InvalidRequestContent(
                "the request body must be a JSON object".into(),
            ));
        }
        Ok(Self(value))
    }
}

/// Parses `value` into `T`, naming the offending field (prefixed with `prefix`) when it does not fit.
pub fn parse<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let target = match (prefix.is_empty(), path.as_str()) {
            (_, ".") => prefix.to_owned(),
            (true, p) => p.to_owned(),
            (false, p) => format!("{prefix}.{p}"),
        };
        let message = format!("{}: {}", target, err.inner());
        ApiError::InvalidParameter {
            message: message.clone(),
            target: Some(target.clone()),
            details: vec![ErrorDetail::new("InvalidParameter", message).with_target(target)],
        }
    })
}

/// Removes read-only keys a client may send back from a GET (ARM ignores them on writes).
pub fn strip_read_only(object: &mut Value, keys: &[&str]) {
    if let Some(map) = object.as_object_mut() {
        for key in keys {
            map.remove(*key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: i64,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Outer {
        inner: Inner,
    }

    #[test]
    fn wrong_types_name_the_field() {
        let err = parse::<Outer>(json!({"inner": {"count": "three"}}), "properties").unwrap_err();
        let detail = err.detail();
        assert_eq!(detail.code, "InvalidParameter");
        assert_eq!(detail.target.as_deref(), Some("properties.inner.count"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse::<Outer>(json!({"inner": {"count": 1, "extra": true}}), "").unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
