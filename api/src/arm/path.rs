//! Path parameters, with rejections answered as ARM errors rather than axum's plain text.

use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

#[derive(Debug)]
pub struct ArmPath<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ArmPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Self(value))
            .map_err(|rejection: PathRejection| ApiError::InvalidParameter {
                message: format!("the request path is invalid: {}", rejection.body_text()),
                target: None,
                details: Vec::new(),
            })
    }
}

/// Query parameters, with rejections answered as ARM errors.
#[derive(Debug)]
pub struct ArmQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ArmQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        if let Some(name) = parameter_with_nul(parts.uri.query().unwrap_or_default()) {
            return Err(ApiError::invalid(
                name.clone(),
                format!("the query parameter '{name}' may not contain the NUL character (%00)"),
            ));
        }
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(value)| Self(value))
            .map_err(|rejection| ApiError::InvalidParameter {
                message: format!("the query string is invalid: {}", rejection.body_text()),
                target: None,
                details: Vec::new(),
            })
    }
}

/// The first query parameter whose name or value holds U+0000 once decoded: no store can keep it, and no
/// parameter means anything with it.
fn parameter_with_nul(query: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(name, value)| name.contains('\0') || value.contains('\0'))
        .map(|(name, _)| name.replace('\0', "%00"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_in_a_query_parameter_is_found_by_name() {
        assert_eq!(
            parameter_with_nul("api-version=1&%24filter=name%20eq%20%27a%00%27").as_deref(),
            Some("$filter")
        );
        assert_eq!(parameter_with_nul("a%00b=1").as_deref(), Some("a%00b"));
        assert_eq!(parameter_with_nul("api-version=2025-04-01&%24top=10"), None);
    }
}
