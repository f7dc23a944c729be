//! `fluxplane dev`'s managed identity: a token endpoint in the protocol of App Service's managed identities, so that
//! Azure's own sign-in code gets fluxplane tokens without Microsoft's login servers. MSAL's `ManagedIdentityClient`
//! (which `az login --identity` and azure-identity's `ManagedIdentityCredential` use) speaks it when the
//! environment holds `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` (and no `IDENTITY_SERVER_THUMBPRINT`, which would
//! make it Service Fabric's):
//!
//! - it sends `GET {IDENTITY_ENDPOINT}?api-version=2019-08-01&resource={audience}` with the header
//!   `X-IDENTITY-HEADER: {IDENTITY_HEADER}` (and `Metadata: true`); a user-assigned identity would add `client_id`,
//!   `object_id` or `mi_res_id`;
//! - it takes `access_token` and `expires_on` (epoch seconds; a string in App Service's answers) from a success,
//!   and `statusCode` and `message` from anything else.
//!
//! The answer also carries `resource`, `token_type` and `client_id`, as App Service's does, and a refusal also
//! carries ARM's `error` object, for readers with curl. The token is like the one `dev`'s banner prints, Owner of
//! every scope, signed for this server's own audience only: a request for another resource is refused, since a token for
//! it could not be used here anyway and most likely means the client is still pointed at Azure's cloud.
//!
//! Only `dev` sets `ServeConfig::managed_identity`; the route is not mounted without it (`server::app`).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::auth::{self, Role, RoleAssignment};
use crate::config::{ManagedIdentity, ServeConfig};
use crate::error::ApiError;
use crate::state::AppState;

/// Where `dev` serves the endpoint: its `IDENTITY_ENDPOINT` is this path on dev's address.
pub const PATH: &str = "/dev/identity/token";

/// The header that carries `IDENTITY_HEADER`.
pub const SECRET_HEADER: HeaderName = HeaderName::from_static("x-identity-header");

/// The version of App Service's protocol that MSAL and azure-identity speak.
pub const API_VERSION: &str = "2019-08-01";

/// The subject of the identity's tokens: `createdBy` and `lastModifiedBy` of what it writes.
pub const SUBJECT: &str = "dev-managed-identity";

/// How long a token is valid: as long as the banner's. MSAL refreshes it after half of that.
const LIFETIME_HOURS: i64 = 24;

/// The query parameters that name a user-assigned identity, in App Service's spelling and in the VM's.
const USER_ASSIGNED: &[&str] = &["client_id", "object_id", "principal_id", "mi_res_id", "msi_res_id"];

pub fn router() -> Router<AppState> {
    Router::new().route(PATH, get(token))
}

/// A token as App Service answers it.
#[derive(Debug, Serialize)]
pub struct Token {
    pub access_token: String,
    /// Epoch seconds, as a string: App Service's spelling, which MSAL and azure-identity both parse.
    pub expires_on: String,
    pub resource: String,
    pub token_type: &'static str,
    /// The identity's id: the token's `oid`.
    pub client_id: String,
}

async fn token(State(config): State<Arc<ServeConfig>>, RawQuery(query): RawQuery, headers: HeaderMap) -> Response {
    let Some(identity) = &config.managed_identity else {
        // not mounted without one; answered as the fallback would, should that ever change
        return refusal(ApiError::NotFound("no resource or route matches this path".into()));
    };
    let issued = check(
        identity,
        headers.get(SECRET_HEADER),
        query.as_deref(),
        &config.jwt_audience,
    )
    .and_then(|resource| issue(identity, &config, resource));
    match issued {
        Ok(token) => (no_store(), Json(token)).into_response(),
        Err(err) => refusal(err),
    }
}

/// The resource a request may have a token for, or why it may not. The secret is checked first, so that a caller
/// without it learns nothing else.
fn check(
    identity: &ManagedIdentity,
    secret: Option<&HeaderValue>,
    query: Option<&str>,
    audience: &str,
) -> Result<String, ApiError> {
    let secret = secret.ok_or_else(|| {
        ApiError::AuthenticationFailed(
            "the X-IDENTITY-HEADER header is missing: send the IDENTITY_HEADER that fluxplane dev prints".into(),
        )
    })?;
    // compared as digests: the time a comparison takes then tells nothing about the secret's bytes
    if Sha256::digest(secret.as_bytes()) != Sha256::digest(identity.header.as_bytes()) {
        return Err(ApiError::AuthenticationFailed(
            "the X-IDENTITY-HEADER header is not the IDENTITY_HEADER that fluxplane dev prints".into(),
        ));
    }
    let mut api_version = None;
    let mut resource = None;
    for (name, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        let slot = match name.as_ref() {
            "api-version" => &mut api_version,
            "resource" => &mut resource,
            name if USER_ASSIGNED.contains(&name) => {
                return Err(ApiError::invalid(
                    name,
                    format!(
                        "fluxplane dev has one managed identity, a system-assigned one: '{name}' names a \
                         user-assigned identity (sign in with `az login --identity` alone)"
                    ),
                ));
            }
            // parameters of later clients (capabilities, a token to refresh) change nothing here
            _ => continue,
        };
        if slot.replace(value.into_owned()).is_some() {
            let message = format!("'{name}' is given more than once");
            return Err(ApiError::invalid(name, message));
        }
    }
    match api_version.as_deref() {
        None => return Err(ApiError::MissingApiVersion),
        Some(API_VERSION) => {}
        Some(given) => {
            return Err(ApiError::InvalidApiVersion {
                given: given.to_owned(),
                supported: format!("{API_VERSION} (App Service's managed-identity protocol)"),
            });
        }
    }
    match resource {
        Some(resource) if resource == audience => Ok(resource),
        Some(resource) => Err(ApiError::invalid(
            "resource",
            format!(
                "fluxplane dev's managed identity has tokens for this server's audience '{audience}' only (the \
                 authentication.audiences of its /metadata/endpoints), not for '{resource}'; register this server as \
                 a cloud and select it (`az cloud register`, `az cloud set`) so that az asks for its audience"
            ),
        )),
        None => Err(ApiError::invalid(
            "resource",
            format!("the resource parameter is required: this server's audience, '{audience}'"),
        )),
    }
}

/// Signs the identity's token for `resource`, the server's audience.
fn issue(identity: &ManagedIdentity, config: &ServeConfig, resource: String) -> Result<Token, ApiError> {
    let tenant = config.tenant();
    let owner = RoleAssignment::parse(Role::Owner, "/")?;
    let lifetime = chrono::Duration::hours(LIFETIME_HOURS);
    // taken before the token is signed: the client then expects it to expire no later than it does
    let expires_on = chrono::Utc::now() + lifetime;
    let access_token = auth::mint(
        &identity.signing_key,
        &config.jwt_issuer,
        &resource,
        SUBJECT,
        vec![owner],
        lifetime,
        tenant,
    )?;
    Ok(Token {
        access_token,
        expires_on: expires_on.timestamp().to_string(),
        resource,
        token_type: "Bearer",
        client_id: object_id(tenant).to_string(),
    })
}

/// The identity's object id: the `oid` that `auth::mint` gives its subject.
pub fn object_id(tenant: Uuid) -> Uuid {
    Uuid::new_v5(&tenant, SUBJECT.as_bytes())
}

/// Neither a token nor a refusal is kept by a cache: each request must reach the server, which decides anew.
fn no_store() -> [(HeaderName, HeaderValue); 1] {
    [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))]
}

/// A refusal in the protocol's shape (`statusCode`, `message`: what MSAL reads), with ARM's `error` beside it.
fn refusal(err: ApiError) -> Response {
    let status = err.status();
    let message = match &err {
        ApiError::Internal(cause) => {
            tracing::error!(
                error = format!("{cause:#}"),
                "the managed identity's token could not be signed"
            );
            "the token could not be signed".to_owned()
        }
        other => other.to_string(),
    };
    let body = serde_json::json!({
        "statusCode": status.as_u16(),
        "message": message,
        "error": {"code": err.code(), "message": message},
    });
    (status, no_store(), Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn status_of(result: &Result<String, ApiError>) -> StatusCode {
        match result {
            Ok(_) => StatusCode::OK,
            Err(err) => err.status(),
        }
    }

    fn identity() -> ManagedIdentity {
        ManagedIdentity {
            header: "s3cret".into(),
            signing_key: b"0123456789abcdef0123456789abcdef".to_vec(),
        }
    }

    fn ask(secret: Option<&str>, query: &str) -> Result<String, ApiError> {
        let secret = secret.map(|s| HeaderValue::from_str(s).unwrap());
        check(&identity(), secret.as_ref(), Some(query), "fluxplane")
    }

    const GOOD: &str = "api-version=2019-08-01&resource=fluxplane";

    #[test]
    fn a_request_with_the_secret_for_the_servers_audience_gets_its_token() {
        assert_eq!(ask(Some("s3cret"), GOOD).unwrap(), "fluxplane");
        let later_client = "resource=fluxplane&api-version=2019-08-01&xms_cc=CP1";
        assert_eq!(ask(Some("s3cret"), later_client).unwrap(), "fluxplane");
    }

    #[test]
    fn a_missing_or_wrong_secret_is_refused_before_anything_else_is_read() {
        for secret in [None, Some("wrong"), Some("s3cret ")] {
            let refused = ask(secret, "api-version=1&resource=elsewhere");
            assert_eq!(status_of(&refused), StatusCode::UNAUTHORIZED, "{secret:?}");
            assert!(refused.unwrap_err().to_string().contains("X-IDENTITY-HEADER"));
        }
    }

    #[test]
    fn another_resource_is_refused_with_how_to_point_az_at_this_server() {
        let refused = ask(
            Some("s3cret"),
            "api-version=2019-08-01&resource=https%3A%2F%2Fmanagement.core.windows.net%2F",
        )
        .unwrap_err();
        assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
        let message = refused.to_string();
        assert!(message.contains("'https://management.core.windows.net/'"), "{message}");
        assert!(message.contains("az cloud set"), "{message}");
        let missing = ask(Some("s3cret"), "api-version=2019-08-01").unwrap_err();
        assert!(
            missing.to_string().contains("resource parameter is required"),
            "{missing}"
        );
    }

    #[test]
    fn only_the_2019_protocol_is_spoken() {
        let missing = ask(Some("s3cret"), "resource=fluxplane").unwrap_err();
        assert_eq!(missing.code(), "MissingApiVersionParameter");
        let old = ask(Some("s3cret"), "api-version=2017-09-01&resource=fluxplane").unwrap_err();
        assert_eq!(old.code(), "InvalidApiVersionParameter");
        assert!(old.to_string().contains("2019-08-01"), "{old}");
    }

    #[test]
    fn a_user_assigned_identity_or_a_repeated_parameter_is_refused() {
        for named in ["client_id=abc", "object_id=abc", "mi_res_id=/subscriptions/x"] {
            let refused = ask(Some("s3cret"), &format!("{GOOD}&{named}")).unwrap_err();
            assert_eq!(refused.status(), StatusCode::BAD_REQUEST, "{named}");
            assert!(refused.to_string().contains("system-assigned"), "{refused}");
        }
        let twice = ask(Some("s3cret"), &format!("{GOOD}&resource=fluxplane")).unwrap_err();
        assert!(twice.to_string().contains("more than once"), "{twice}");
    }

    #[test]
    fn its_tokens_are_the_servers_owner_tokens_with_the_tenant_and_its_object_id() {
        let dir = tempfile::tempdir().unwrap();
        let config = crate::testing::test_config(dir.path(), "sqlite::memory:");
        let token = issue(&identity(), &config, "fluxplane".into()).unwrap();
        assert_eq!((token.token_type, token.resource.as_str()), ("Bearer", "fluxplane"));
        let expires_on: i64 = token.expires_on.parse().unwrap();
        let lifetime = expires_on - chrono::Utc::now().timestamp();
        assert!(
            (LIFETIME_HOURS * 3600 - 60..=LIFETIME_HOURS * 3600).contains(&lifetime),
            "{lifetime}"
        );
        let verifier = auth::Authenticator::shared_secret(&identity().signing_key, "fluxplane", "fluxplane")
            .unwrap()
            .in_tenant(config.tenant());
        let caller = verifier.authenticate(&token.access_token).unwrap();
        assert_eq!(caller.subject, SUBJECT);
        assert_eq!(caller.roles, vec![RoleAssignment::parse(Role::Owner, "/").unwrap()]);
        let claims: auth::Claims = jsonwebtoken::dangerous::insecure_decode_claims(&token.access_token).unwrap();
        assert_eq!(claims.tid, Some(config.tenant().to_string()));
        assert_eq!(claims.oid, Some(token.client_id));
        assert!(
            (0..=1).contains(&(claims.exp - expires_on)),
            "{} against {expires_on}",
            claims.exp
        );
    }
}
