//! List paging: `$top` and an opaque `$skipToken` (never `api-version`, which Azure's SDKs replace when they
//! follow `nextLink`), and the base URL that `nextLink` and `Azure-AsyncOperation` point at.

use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::{IntoParams, ToSchema};

use crate::arm::scope::ClusterSet;
use crate::config::ServeConfig;
use crate::error::ApiError;

pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Query parameters of a list call.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Largest number of items in one page (1-1000, default 100).
    #[serde(rename = "$top")]
    #[param(rename = "$top")]
    pub top: Option<String>,
    /// Continuation token from a previous page's `nextLink`.
    #[serde(rename = "$skipToken")]
    #[param(rename = "$skipToken")]
    pub skip_token: Option<String>,
}

/// A validated page request: where to start (after which store key) and how many items.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    pub after: Option<String>,
    pub limit: u32,
}

impl ListParams {
    pub fn page(&self) -> Result<PageRequest, ApiError> {
        let limit = match &self.top {
            None => DEFAULT_PAGE_SIZE,
            Some(top) => top
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=MAX_PAGE_SIZE).contains(n))
                .ok_or_else(|| {
                    ApiError::invalid("$top", format!("$top must be a whole number from 1 to {MAX_PAGE_SIZE}"))
                })?,
        };
        let after = match &self.skip_token {
            None => None,
            Some(token) => Some(decode_token(token)?),
        };
        Ok(PageRequest { after, limit })
    }
}

/// Bytes of a token's check: a token is the last key read, then the first bytes of a SHA-256 of it, so that a token
/// this server did not issue (typed, truncated, edited) is refused instead of answering an arbitrary page.
const CHECK_BYTES: usize = 8;

fn check_of(key: &[u8]) -> [u8; CHECK_BYTES] {
    let digest = Sha256::new()
        .chain_update(b"fluxplane $skipToken\n")
        .chain_update(key)
        .finalize();
    digest[..CHECK_BYTES]
        .try_into()
        .expect("a SHA-256 digest is longer than the check")
}

/// The key a token this server issued continues after.
pub fn decode_token(token: &str) -> Result<String, ApiError> {
    URL_SAFE_NO_PAD
        .decode(token)
        .ok()
        .and_then(|mut bytes| {
            let check = bytes.split_off(bytes.len().checked_sub(CHECK_BYTES)?);
            (check == check_of(&bytes)).then_some(bytes)
        })
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .ok_or_else(|| ApiError::invalid("$skipToken", "$skipToken is not a token this server issued"))
}

pub fn encode_token(last_key: &str) -> String {
    let mut bytes = last_key.as_bytes().to_vec();
    bytes.extend_from_slice(&check_of(last_key.as_bytes()));
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One page of an ARM list.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Page<T> {
    pub value: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

impl<T> Page<T> {
    /// Builds the page from up to `limit + 1` items fetched from the store: the extra one only tells that another
    /// page exists. `key` gives the store key an item continues after.
    pub fn from_items<I>(
        mut items: Vec<I>,
        page: &PageRequest,
        key: impl Fn(&I) -> String,
        link: impl Fn(&str) -> String,
        render: impl Fn(I) -> T,
    ) -> Self {
        let next_link = if items.len() > page.limit as usize {
            items.truncate(page.limit as usize);
            items.last().map(|last| link(&encode_token(&key(last))))
        } else {
            None
        };
        Self {
            value: items.into_iter().map(render).collect(),
            next_link,
        }
    }
}

/// The externally visible base URL (scheme and authority, no trailing slash).
#[derive(Debug, Clone)]
pub struct BaseUrl(pub String);

impl BaseUrl {
    /// `{base}{path}?api-version={v}&$skipToken={token}` plus `$top` when the caller chose a page size.
    pub fn next_link(&self, path: &str, api_version: &str, top: Option<&str>, token: &str) -> String {
        let mut link = format!("{}{}?api-version={}&$skipToken={}", self.0, path, api_version, token);
        if let Some(top) = top {
            link.push_str("&$top=");
            link.push_str(top);
        }
        link
    }
}

impl<S> FromRequestParts<S> for BaseUrl
where
    S: Send + Sync,
    Arc<ServeConfig>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let config = Arc::<ServeConfig>::from_ref(state);
        if let Some(public) = &config.public_url {
            return Ok(Self(public.trim_end_matches('/').to_owned()));
        }
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("localhost");
        let scheme = parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|h| h.to_str().ok())
            .filter(|p| *p == "https" || *p == "http")
            // without a proxy's word, the scheme this server speaks
            .unwrap_or(if config.serves_tls() { "https" } else { "http" });
        Ok(Self(format!("{scheme}://{host}")))
    }
}

/// Up to `page.limit + 1` items of `scopes` in key order, after `page.after`: `fetch` reads one scope.
pub async fn list_scopes<T, E, F, Fut>(
    scopes: Vec<ClusterSet>,
    page: &PageRequest,
    fetch: F,
) -> Result<Vec<T>, ApiError>
where
    F: Fn(ClusterSet, PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, E>>,
    ApiError: From<E>,
{
    let wanted = page.limit as usize + 1;
    let mut items = Vec::with_capacity(wanted);
    for scope in scopes {
        let rest = PageRequest {
            after: page.after.clone(),
            // each read answers up to limit + 1
            limit: (wanted - items.len() - 1) as u32,
        };
        items.extend(fetch(scope, rest).await?);
        if items.len() >= wanted {
            break;
        }
    }
    items.truncate(wanted);
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_must_be_within_bounds() {
        for bad in ["0", "1001", "-1", "ten"] {
            let params = ListParams {
                top: Some(bad.into()),
                skip_token: None,
            };
            assert_eq!(params.page().unwrap_err().code(), "InvalidParameter", "{bad}");
        }
        let params = ListParams {
            top: Some("5".into()),
            skip_token: Some(encode_token("rg/c1")),
        };
        assert_eq!(
            params.page().unwrap(),
            PageRequest {
                after: Some("rg/c1".into()),
                limit: 5
            }
        );
    }

    #[test]
    fn forged_skip_tokens_are_refused() {
        let issued = encode_token("s/rg/c1");
        let mut edited = URL_SAFE_NO_PAD.decode(&issued).unwrap();
        edited[0] ^= 1;
        for forged in [
            "%%%".to_owned(),
            URL_SAFE_NO_PAD.encode("s/rg/zzz"),
            URL_SAFE_NO_PAD.encode(edited),
            issued[..issued.len() - 2].to_owned(),
            String::new(),
        ] {
            let params = ListParams {
                top: None,
                skip_token: Some(forged.clone()),
            };
            assert_eq!(params.page().unwrap_err().code(), "InvalidParameter", "{forged}");
        }
    }

    #[test]
    fn a_page_links_onwards_only_when_more_items_exist() {
        let page = PageRequest { after: None, limit: 2 };
        let full = Page::from_items(vec!["a", "b", "c"], &page, |s| s.to_string(), |t| t.to_owned(), |s| s);
        assert_eq!(full.value, vec!["a", "b"]);
        assert_eq!(full.next_link.as_deref(), Some(encode_token("b").as_str()));
        let last = Page::from_items(vec!["a", "b"], &page, |s| s.to_string(), |t| t.to_owned(), |s| s);
        assert!(last.next_link.is_none());
    }
}
