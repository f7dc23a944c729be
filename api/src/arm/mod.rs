//! Azure Resource Manager conventions shared by every resource: names and ids, `api-version`, request bodies,
//! paging and the headers of long-running operations.

pub mod api_version;
pub mod body;
pub mod conditional;
pub mod filter;
pub mod ids;
pub mod paging;
pub mod params;
pub mod path;
pub mod schema;
pub mod scope;
pub mod segments;
pub mod system_data;
pub mod write;

pub use api_version::ApiVersion;
pub use body::JsonBody;
pub use path::{ArmPath, ArmQuery};

use axum::http::{HeaderMap, HeaderValue};

/// Headers of a long-running operation: where to poll its status and how soon.
pub fn async_operation_headers(operation_url: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(operation_url) {
        headers.insert("azure-asyncoperation", value);
    }
    headers.extend(retry_after());
    headers
}

/// How soon to poll an operation again: one second, so that a poller sees the agent's report within a second of it.
pub fn retry_after() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("retry-after", HeaderValue::from_static("1"));
    headers
}
