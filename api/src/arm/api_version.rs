//! The `api-version` query parameter: required on every ARM call and checked against the versions each resource
//! type serves.

use std::marker::PhantomData;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::error::ApiError;

/// A resource type and the api-versions it serves.
pub trait Versioned {
    const SUPPORTED: &'static [&'static str];
}

/// `Microsoft.Kubernetes/connectedClusters`.
pub struct Clusters;
impl Versioned for Clusters {
    const SUPPORTED: &'static [&'static str] = &["2024-01-01", "2026-05-01"];
}

/// `Microsoft.KubernetesConfiguration/fluxConfigurations` and its operation statuses.
pub struct FluxConfigurations;
impl Versioned for FluxConfigurations {
    const SUPPORTED: &'static [&'static str] = &["2023-05-01", "2024-11-01", "2025-04-01"];
}

/// `Microsoft.KubernetesConfiguration/sourceControlConfigurations`, Flux v1's configurations, which Azure retired:
/// its GA versions are served so that tools which look for old configurations find none.
pub struct SourceControlConfigurations;
impl Versioned for SourceControlConfigurations {
    const SUPPORTED: &'static [&'static str] = &["2021-03-01", "2022-03-01", "2022-07-01", "2022-11-01", "2023-05-01"];
}

/// The `Fluxplane.Fleet` resource types: cluster groups and policy assignments.
pub struct Fleet;
impl Versioned for Fleet {
    const SUPPORTED: &'static [&'static str] = &["2026-01-01"];
}

/// The validated `api-version` of a request for resource type `R`.
#[derive(Debug)]
pub struct ApiVersion<R> {
    pub version: &'static str,
    resource: PhantomData<R>,
}

/// Finds `api-version` in a raw query string (ARM matches parameter names case-insensitively).
pub fn find_api_version(query: Option<&str>) -> Option<String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(name, _)| name.eq_ignore_ascii_case("api-version"))
        .map(|(_, value)| value.into_owned())
}

pub fn check<R: Versioned>(query: Option<&str>) -> Result<&'static str, ApiError> {
    let given = find_api_version(query).ok_or(ApiError::MissingApiVersion)?;
    R::SUPPORTED
        .iter()
        .find(|v| **v == given)
        .copied()
        .ok_or_else(|| ApiError::InvalidApiVersion {
            given,
            supported: R::SUPPORTED.join(", "),
        })
}

/// The `api-version` of a call to Resource Manager's own endpoints (subscriptions, providers, cloud metadata):
/// required, and any date-shaped version (`2022-12-01`, `2021-04-01-preview`) is served, since every Azure client
/// pins its own and their answers have kept one shape.
#[derive(Debug)]
pub struct AnyApiVersion(pub String);

/// `YYYY-MM-DD` with an optional `-suffix` of letters (`-preview`, `-beta`).
fn is_date_version(value: &str) -> bool {
    let bytes = value.as_bytes();
    if bytes.len() < 10 {
        return false;
    }
    let (date, suffix) = bytes.split_at(10);
    date.iter().enumerate().all(|(i, b)| {
        if i == 4 || i == 7 {
            *b == b'-'
        } else {
            b.is_ascii_digit()
        }
    }) && match suffix {
        [] => true,
        [b'-', word @ ..] => !word.is_empty() && word.len() <= 20 && word.iter().all(u8::is_ascii_alphabetic),
        _ => false,
    }
}

impl<S: Send + Sync> FromRequestParts<S> for AnyApiVersion {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let given = find_api_version(parts.uri.query()).ok_or(ApiError::MissingApiVersion)?;
        if is_date_version(&given) {
            Ok(Self(given))
        } else {
            Err(ApiError::InvalidApiVersion {
                given,
                supported: "any version of the form YYYY-MM-DD or YYYY-MM-DD-preview".into(),
            })
        }
    }
}

impl<S: Send + Sync, R: Versioned> FromRequestParts<S> for ApiVersion<R> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self {
            version: check::<R>(parts.uri.query())?,
            resource: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_version_is_required() {
        assert_eq!(
            check::<Clusters>(Some("x=1")).unwrap_err().code(),
            "MissingApiVersionParameter"
        );
        assert_eq!(
            check::<Clusters>(None).unwrap_err().code(),
            "MissingApiVersionParameter"
        );
    }

    #[test]
    fn unknown_api_versions_are_refused_with_the_supported_list() {
        let err = check::<FluxConfigurations>(Some("api-version=2019-01-01")).unwrap_err();
        assert_eq!(err.code(), "InvalidApiVersionParameter");
        assert!(err.to_string().contains("2025-04-01"));
    }

    #[test]
    fn api_version_name_matches_case_insensitively() {
        assert_eq!(
            check::<FluxConfigurations>(Some("API-Version=2024-11-01")).unwrap(),
            "2024-11-01"
        );
    }

    #[test]
    fn resource_manager_versions_are_dates_with_an_optional_suffix() {
        for good in ["2022-12-01", "2016-06-01", "2021-04-01-preview"] {
            assert!(is_date_version(good), "{good}");
        }
        for bad in [
            "",
            "2022-12",
            "2022-12-01-",
            "2022-12-01-pre-view",
            "20221201",
            "2022-1a-01",
            "2022-12-01x",
            "2022-12-0é",
            "2022-12-01-é",
        ] {
            assert!(!is_date_version(bad), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_query_string_yields_a_version_or_a_bad_request(query in "\\PC{0,120}|(api-version=[0-9a-z%-]{0,12}&?){0,3}") {
            for outcome in [check::<Clusters>(Some(&query)), check::<FluxConfigurations>(Some(&query)), check::<Fleet>(Some(&query))] {
                if let Err(err) = outcome {
                    proptest::prop_assert_eq!(err.status(), axum::http::StatusCode::BAD_REQUEST);
                }
            }
        }
    }
}
