//! Conditional requests: `If-Match` and `If-None-Match` against a resource's ETag, answered with 412
//! `PreconditionFailed` when they do not hold.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};

use crate::error::ApiError;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Condition {
    Any,
    OneOf(Vec<String>),
}

impl Condition {
    fn parse(headers: &HeaderMap, name: &str) -> Result<Option<Self>, ApiError> {
        let Some(value) = headers.get(name) else {
            return Ok(None);
        };
        let value = value
            .to_str()
            .map_err(|_| ApiError::invalid(name, format!("{name} must be ASCII")))?
            .trim();
        if value == "*" {
            return Ok(Some(Self::Any));
        }
        let tags = value
            .split(',')
            .map(|tag| tag.trim().trim_start_matches("W/").trim_matches('"').to_owned())
            .filter(|tag| !tag.is_empty())
            .collect::<Vec<_>>();
        if tags.is_empty() {
            return Err(ApiError::invalid(name, format!("{name} holds no entity tag")));
        }
        Ok(Some(Self::OneOf(tags)))
    }

    fn matches(&self, current: Option<&str>) -> bool {
        match (self, current) {
            (_, None) => false,
            (Self::Any, Some(_)) => true,
            (Self::OneOf(tags), Some(etag)) => tags.iter().any(|t| t == etag),
        }
    }
}

/// The preconditions of a write.
#[derive(Debug, Clone, Default)]
pub struct Preconditions {
    if_match: Option<Condition>,
    if_none_match: Option<Condition>,
}

impl Preconditions {
    /// True when the caller made the write conditional: a lost race must then fail rather than be retried.
    pub fn is_conditional(&self) -> bool {
        self.if_match.is_some() || self.if_none_match.is_some()
    }

    /// Checks the preconditions against the current etag (`None` when the resource does not exist).
    pub fn check(&self, current: Option<&str>) -> Result<(), ApiError> {
        if let Some(condition) = &self.if_match
            && !condition.matches(current)
        {
            return Err(ApiError::PreconditionFailed(match current {
                None => "If-Match was given but the resource does not exist".into(),
                Some(_) => "the resource's ETag does not match If-Match; read it again and retry".into(),
            }));
        }
        if let Some(condition) = &self.if_none_match
            && condition.matches(current)
        {
            return Err(ApiError::PreconditionFailed(
                "the resource already exists and If-None-Match forbids replacing it".into(),
            ));
        }
        Ok(())
    }

    /// Whether the caller holds some representation it would keep on a `304 Not Modified` (`If-None-Match`).
    pub fn asks_not_modified(&self) -> bool {
        self.if_none_match.is_some()
    }

    /// Whether a read may answer `304 Not Modified` instead of the representation tagged `current`: the caller holds
    /// it (`If-None-Match` names it, or `*`).
    pub fn not_modified(&self, current: &str) -> bool {
        self.if_none_match
            .as_ref()
            .is_some_and(|condition| condition.matches(Some(current)))
    }

    /// The preconditions the `If-Match` and `If-None-Match` headers state.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        Ok(Self {
            if_match: Condition::parse(headers, "if-match")?,
            if_none_match: Condition::parse(headers, "if-none-match")?,
        })
    }

    /// A write allowed only over the version `etag` (as services are called in tests).
    #[cfg(test)]
    pub fn if_match(etag: &str) -> Self {
        Self {
            if_match: Some(Condition::OneOf(vec![etag.to_owned()])),
            if_none_match: None,
        }
    }

    pub fn lost_race() -> ApiError {
        ApiError::PreconditionFailed("the resource changed while this request was applied; read it again".into())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Preconditions {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::from_headers(&parts.headers)
    }
}

/// Adds the `ETag` header for a stored etag.
pub fn insert_etag(headers: &mut HeaderMap, etag: &str) {
    if let Ok(value) = HeaderValue::from_str(&format!("\"{etag}\"")) {
        headers.insert(header::ETAG, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pre(if_match: Option<&str>, if_none_match: Option<&str>) -> Preconditions {
        let mut headers = HeaderMap::new();
        if let Some(v) = if_match {
            headers.insert("if-match", v.parse().unwrap());
        }
        if let Some(v) = if_none_match {
            headers.insert("if-none-match", v.parse().unwrap());
        }
        Preconditions::from_headers(&headers).unwrap()
    }

    #[test]
    fn if_match_must_name_the_current_etag() {
        assert!(pre(Some("\"abc\""), None).check(Some("abc")).is_ok());
        assert!(pre(Some("W/\"x\", \"abc\""), None).check(Some("abc")).is_ok());
        assert_eq!(
            pre(Some("\"old\""), None).check(Some("abc")).unwrap_err().code(),
            "PreconditionFailed"
        );
        assert!(pre(Some("*"), None).check(None).is_err());
    }

    #[test]
    fn if_none_match_star_only_creates() {
        assert!(pre(None, Some("*")).check(None).is_ok());
        assert!(pre(None, Some("*")).check(Some("abc")).is_err());
    }

    #[test]
    fn a_read_is_not_modified_only_for_a_tag_the_caller_names() {
        assert!(pre(None, Some("\"7\"")).not_modified("7"));
        assert!(pre(None, Some("\"6\", W/\"7\"")).not_modified("7"));
        assert!(pre(None, Some("*")).not_modified("7"));
        assert!(!pre(None, Some("\"6\"")).not_modified("7"));
        assert!(
            !pre(Some("\"7\""), None).not_modified("7"),
            "If-Match says nothing of a read's answer"
        );
    }
}
