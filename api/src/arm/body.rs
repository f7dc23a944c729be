//! JSON request bodies: media type, size limit and syntax are checked before any handler logic runs, and typed
//! parsing reports the exact field that is wrong.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRef, FromRequest, Request};
use axum::http::{StatusCode, header};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::config::ServeConfig;
use crate::error::{ApiError, ErrorDetail};

/// A request body that is a JSON object.
#[derive(Debug)]
pub struct JsonBody(pub Value);

impl<S> FromRequest<S> for JsonBody
where
    S: Send + Sync,
    Arc<ServeConfig>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let value = read_object(req, state, Arc::<ServeConfig>::from_ref(state).max_body_bytes).await?;
        if let Some(path) = first_nul(&value) {
            return Err(ApiError::invalid(
                path.clone(),
                format!("{path}: text may not contain the NUL character (U+0000)"),
            ));
        }
        Ok(Self(value))
    }
}

/// A request body that is a JSON object, with every NUL character (U+0000) in its keys and strings replaced by
/// U+FFFD: for what agents report, which must land whatever text their cluster produced (neither PostgreSQL's
/// `text` nor its `jsonb` can hold U+0000).
#[derive(Debug)]
pub struct SanitizedJsonBody(pub Value);

impl<S> FromRequest<S> for SanitizedJsonBody
where
    S: Send + Sync,
    Arc<ServeConfig>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let mut value = read_object(req, state, Arc::<ServeConfig>::from_ref(state).max_body_bytes).await?;
        if first_nul(&value).is_some() {
            replace_nul(&mut value);
        }
        Ok(Self(value))
    }
}

/// Reads a JSON object body: media type, size limit and syntax checked.
async fn read_object<S: Send + Sync>(req: Request, state: &S, limit: usize) -> Result<Value, ApiError> {
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
            ApiError::RequestEntityTooLarge { limit }
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
    Ok(value)
}

/// The path (`a.b[2].c`) of the first key or string holding U+0000, if any. Walked with a stack of its own, not
/// by recursion, so that no nesting a client sends can exhaust the thread's stack.
fn first_nul(value: &Value) -> Option<String> {
    let mut stack: Vec<(&Value, String)> = vec![(value, String::new())];
    while let Some((value, path)) = stack.pop() {
        match value {
            Value::String(text) if text.contains('\0') => return Some(path),
            Value::Array(items) => stack.extend(
                items
                    .iter()
                    .enumerate()
                    .rev()
                    .map(|(i, item)| (item, format!("{path}[{i}]"))),
            ),
            Value::Object(map) => {
                for (key, item) in map.iter().rev() {
                    let at = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    if key.contains('\0') {
                        return Some(at.replace('\0', "\\u0000"));
                    }
                    stack.push((item, at));
                }
            }
            _ => {}
        }
    }
    None
}

/// Replaces U+0000 with U+FFFD in every key and string of `value`, without recursion.
fn replace_nul(value: &mut Value) {
    let clean = |text: &str| text.replace('\0', "\u{FFFD}");
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::String(text) if text.contains('\0') => *text = clean(text),
            Value::Array(items) => stack.extend(items.iter_mut()),
            Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    *map = std::mem::take(map).into_iter().map(|(k, v)| (clean(&k), v)).collect();
                }
                stack.extend(map.values_mut());
            }
            _ => {}
        }
    }
}

/// Parses `value` into `T`, naming the offending field (prefixed with `prefix`) when it does not fit.
///
/// serde reads a struct from a JSON array of its fields as well as from an object, so `"selector": []` would
/// become an empty selector, which selects every cluster. What was read is therefore written back and compared:
/// an array where `T` holds an object is refused.
pub fn parse<T: DeserializeOwned + Serialize>(value: Value, prefix: &str) -> Result<T, ApiError> {
    let target = |path: &str| match (prefix.is_empty(), path) {
        (_, "" | ".") => prefix.to_owned(),
        (true, p) => p.to_owned(),
        (false, p) => format!("{prefix}.{p}"),
    };
    let invalid = |target: String, message: String| ApiError::InvalidParameter {
        message: message.clone(),
        target: Some(target.clone()),
        details: vec![ErrorDetail::new("InvalidParameter", message).with_target(target)],
    };
    let parsed: T = serde_path_to_error::deserialize(&value).map_err(|err| {
        let at = target(&err.path().to_string());
        invalid(at.clone(), format!("{}: {}", at, err.inner()))
    })?;
    if has_array(&value) {
        let read = serde_json::to_value(&parsed).map_err(|err| ApiError::Internal(err.into()))?;
        if let Some(path) = array_for_object(&value, &read) {
            let at = target(&path);
            return Err(invalid(at.clone(), format!("{at}: expected an object, found an array")));
        }
    }
    Ok(parsed)
}

fn has_array(value: &Value) -> bool {
    let mut stack = vec![value];
    while let Some(value) = stack.pop() {
        match value {
            Value::Array(_) => return true,
            Value::Object(map) => stack.extend(map.values()),
            _ => {}
        }
    }
    false
}

/// The path of the first place where `sent` has an array and `read` (the same document as parsed and written
/// back) an object.
fn array_for_object(sent: &Value, read: &Value) -> Option<String> {
    let mut stack = vec![(sent, read, String::new())];
    while let Some((sent, read, path)) = stack.pop() {
        match (sent, read) {
            (Value::Array(_), Value::Object(_)) => return Some(path),
            (Value::Array(sent), Value::Array(read)) => stack.extend(
                sent.iter()
                    .zip(read)
                    .enumerate()
                    .map(|(i, (s, r))| (s, r, format!("{path}[{i}]"))),
            ),
            (Value::Object(sent), Value::Object(read)) => {
                for (key, s) in sent {
                    if let Some(r) = read.get(key) {
                        let at = if path.is_empty() {
                            key.clone()
                        } else {
                            format!("{path}.{key}")
                        };
                        stack.push((s, r, at));
                    }
                }
            }
            _ => {}
        }
    }
    None
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
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        count: i64,
    }

    #[derive(Debug, Deserialize, Serialize)]
    #[serde(deny_unknown_fields)]
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
    fn the_first_nul_is_found_with_its_path() {
        assert_eq!(
            first_nul(&json!({"a": {"b": ["x", "y\u{0}"]}})).as_deref(),
            Some("a.b[1]")
        );
        assert_eq!(
            first_nul(&json!({"tags": {"k\u{0}": "v"}})).as_deref(),
            Some("tags.k\\u0000")
        );
        assert_eq!(first_nul(&json!({"a": ["clean", {"b": 1}]})), None);
    }

    #[test]
    fn nul_characters_are_replaced_in_keys_and_strings() {
        let mut value = json!({"message\u{0}": ["a\u{0}b", {"c": "\u{0}"}]});
        replace_nul(&mut value);
        assert_eq!(value, json!({"message\u{FFFD}": ["a\u{FFFD}b", {"c": "\u{FFFD}"}]}));
        assert_eq!(first_nul(&value), None);
    }

    #[test]
    fn an_array_is_not_read_as_an_object() {
        let err = parse::<Outer>(json!({"inner": [3]}), "properties").unwrap_err();
        assert_eq!(err.detail().target.as_deref(), Some("properties.inner"));
        assert!(err.to_string().contains("expected an object"), "{err}");
        let err = parse::<Outer>(json!([{"count": 3}]), "").unwrap_err();
        assert!(err.to_string().contains("expected an object"), "{err}");
        assert!(parse::<Outer>(json!({"inner": {"count": 3}}), "").is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = parse::<Outer>(json!({"inner": {"count": 1, "extra": true}}), "").unwrap_err();
        assert!(err.to_string().contains("extra"), "{err}");
    }
}
