//! User authentication and authorisation.
//!
//! Every ARM call carries `Authorization: Bearer <JWT>`. The signature algorithm is pinned by configuration and
//! never read from the token; signature, `exp`, `nbf`, `iss` and `aud` are checked. The token's `roles` claim lists
//! role assignments (`Reader` < `Contributor` < `Owner`, each at a scope); a call is allowed when one assignment
//! of a sufficient role covers the resource's id. Authorisation looks at the path alone, before the store is
//! touched, so a caller never learns whether a resource outside its scope exists.

use std::sync::Arc;

use std::path::Path;

use anyhow::Context;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use chrono::Utc;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::arm::ids::{ResourceGroupName, SubscriptionId};
use crate::arm::scope::{ClusterSet, FleetScope};
use crate::config::{JwtAlgorithm, ServeConfig};
use crate::error::{ApiError, ApiResult};

/// Shortest HS256 secret accepted: 256 bits, as RFC 7518 requires for HS256.
const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum)]
#[value(rename_all = "PascalCase")]
pub enum Role {
    Reader,
    Contributor,
    Owner,
}

/// How far apart the clocks of the server and of a token's signer may be: the leeway of `exp`, `nbf` and `iat`.
pub const CLOCK_SKEW_SECONDS: u64 = 60;

/// A role granted at a scope: `/`, `/subscriptions/{sub}` or `/subscriptions/{sub}/resourceGroups/{rg}`. A token
/// whose roles claim holds any other scope is refused as a whole: read loosely, an empty or truncated scope would
/// cover every resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "RoleClaim")]
pub struct RoleAssignment {
    pub role: Role,
    pub scope: String,
}

/// A role assignment as a token states it, before its scope is checked.
#[derive(Deserialize)]
struct RoleClaim {
    role: Role,
    scope: String,
}

impl TryFrom<RoleClaim> for RoleAssignment {
    type Error = String;

    fn try_from(claim: RoleClaim) -> Result<Self, Self::Error> {
        Self::parse(claim.role, &claim.scope).map_err(|err| err.to_string())
    }
}

impl RoleAssignment {
    pub fn parse(role: Role, scope: &str) -> anyhow::Result<Self> {
        let segments: Vec<&str> = scope.trim_end_matches('/').split('/').skip(1).collect();
        let subscription = |sub: &str| SubscriptionId::parse(sub).is_ok();
        let group = |rg: &str| ResourceGroupName::parse(rg).is_ok();
        let valid = scope == "/"
            || scope.starts_with('/')
                && !scope.ends_with("//")
                && (matches!(segments.as_slice(), [s, sub] if s.eq_ignore_ascii_case("subscriptions") && subscription(sub))
                    || matches!(segments.as_slice(), [s, sub, r, rg]
                        if s.eq_ignore_ascii_case("subscriptions") && r.eq_ignore_ascii_case("resourceGroups")
                            && subscription(sub) && group(rg)));
        anyhow::ensure!(
            valid,
            "scope '{scope}' must be '/', '/subscriptions/{{sub}}' or '/subscriptions/{{sub}}/resourceGroups/{{rg}}'"
        );
        let scope = if scope == "/" {
            scope
        } else {
            scope.trim_end_matches('/')
        };
        Ok(Self {
            role,
            scope: scope.to_owned(),
        })
    }

    fn covers(&self, resource_id: &str) -> bool {
        if self.scope == "/" {
            return true;
        }
        let scope = self.scope.to_ascii_lowercase();
        let id = resource_id.to_ascii_lowercase();
        id == scope || id.starts_with(&format!("{scope}/"))
    }
}

/// The claims of a user token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub iss: String,
    pub aud: String,
    pub iat: i64,
    pub nbf: i64,
    pub exp: i64,
    #[serde(default)]
    pub roles: Vec<RoleAssignment>,
    /// The tenant, as Entra ID names it: Azure's tools read it (`az login` files subscriptions under it). A token
    /// that names another tenant than the server's is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tid: Option<String>,
    /// The caller's object id in the tenant, which Azure's tools read as the signed-in principal's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<String>,
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller {
    pub subject: String,
    pub roles: Vec<RoleAssignment>,
}

impl Caller {
    /// Allows the call if an assignment of at least `role` covers `resource_id`.
    pub fn require(&self, role: Role, resource_id: &str) -> Result<(), ApiError> {
        if self.roles.iter().any(|a| a.role >= role && a.covers(resource_id)) {
            Ok(())
        } else {
            Err(ApiError::AuthorizationFailed(format!(
                "the client '{}' does not have the {role:?} role at scope '{resource_id}' or above",
                self.subject
            )))
        }
    }
}

impl Caller {
    /// The resource groups of `subscription` (lower-cased) where an assignment of at least `role` is scoped to
    /// the group itself: what a caller without a subscription-wide role may still see of the subscription.
    pub fn resource_groups_with(&self, role: Role, subscription: &str) -> Vec<String> {
        let prefix = format!("/subscriptions/{}/resourcegroups/", subscription.to_ascii_lowercase());
        let mut groups: Vec<String> = self
            .roles
            .iter()
            .filter(|a| a.role >= role)
            .filter_map(|a| a.scope.to_ascii_lowercase().strip_prefix(&prefix).map(str::to_owned))
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError::AuthenticationFailed("no authenticated caller".into()))
    }
}

enum Keys {
    Shared(DecodingKey),
    Set(Vec<(Option<String>, DecodingKey)>),
}

/// Verifies user tokens.
pub struct Authenticator {
    keys: Keys,
    validation: Validation,
    /// The server's tenant, which a token's `tid`, when it has one, must name.
    tenant: Option<Uuid>,
}

impl Authenticator {
    /// An authenticator for HS256 tokens signed with `secret`.
    pub fn shared_secret(secret: &[u8], issuer: &str, audience: &str) -> anyhow::Result<Self> {
        anyhow::ensure!(
            secret.len() >= MIN_SECRET_BYTES,
            "the JWT secret must be at least {MIN_SECRET_BYTES} bytes"
        );
        Ok(Self {
            keys: Keys::Shared(DecodingKey::from_secret(secret)),
            validation: validation(Algorithm::HS256, issuer, audience),
            tenant: None,
        })
    }

    /// An authenticator for tokens signed by one of the keys of a JSON Web Key Set.
    pub fn key_set(jwks: &JwkSet, algorithm: Algorithm, issuer: &str, audience: &str) -> anyhow::Result<Self> {
        let keys = jwks
            .keys
            .iter()
            .map(|jwk| Ok((jwk.common.key_id.clone(), DecodingKey::from_jwk(jwk)?)))
            .collect::<anyhow::Result<Vec<_>>>()
            .context("the JWKS holds a key that cannot verify signatures")?;
        anyhow::ensure!(!keys.is_empty(), "the JWKS holds no key");
        Ok(Self {
            keys: Keys::Set(keys),
            validation: validation(algorithm, issuer, audience),
            tenant: None,
        })
    }

    /// Refuses tokens whose `tid` names another tenant than `tenant`.
    pub fn in_tenant(mut self, tenant: Uuid) -> Self {
        self.tenant = Some(tenant);
        self
    }

    /// Builds the authenticator the configuration asks for.
    pub fn from_config(config: &ServeConfig) -> anyhow::Result<Self> {
        Ok(Self::keys_of(config)?.in_tenant(config.tenant()))
    }

    fn keys_of(config: &ServeConfig) -> anyhow::Result<Self> {
        if let Some(path) = &config.jwks_file {
            let algorithm = match config.jwt_algorithm.unwrap_or(JwtAlgorithm::Rs256) {
                JwtAlgorithm::Rs256 => Algorithm::RS256,
                JwtAlgorithm::Es256 => Algorithm::ES256,
                JwtAlgorithm::Hs256 => anyhow::bail!("--jwt-algorithm HS256 goes with --jwt-secret-file, not a JWKS"),
            };
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            let jwks: JwkSet = serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
            return Self::key_set(&jwks, algorithm, &config.jwt_issuer, &config.jwt_audience);
        }
        if matches!(config.jwt_algorithm, Some(JwtAlgorithm::Rs256 | JwtAlgorithm::Es256)) {
            anyhow::bail!("--jwt-algorithm RS256/ES256 needs --jwks-file");
        }
        let secret = read_secret_file(&config.jwt_secret_path())?;
        Self::shared_secret(&secret, &config.jwt_issuer, &config.jwt_audience)
    }

    /// Verifies a bearer token and returns its caller.
    pub fn authenticate(&self, token: &str) -> Result<Caller, ApiError> {
        let fail = |why: &str| ApiError::AuthenticationFailed(format!("the access token is invalid: {why}"));
        let key = match &self.keys {
            Keys::Shared(key) => key,
            Keys::Set(keys) => {
                let kid = jsonwebtoken::decode_header(token)
                    .map_err(|_| fail("malformed token"))?
                    .kid;
                keys.iter()
                    .find(|(id, _)| kid.is_none() && keys.len() == 1 || id.is_some() && *id == kid)
                    .map(|(_, key)| key)
                    .ok_or_else(|| fail("signed by an unknown key"))?
            }
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, &self.validation).map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            match err.kind() {
                ErrorKind::ExpiredSignature => fail("the token has expired"),
                ErrorKind::ImmatureSignature => fail("the token is not valid yet"),
                ErrorKind::InvalidIssuer => fail("wrong issuer"),
                ErrorKind::InvalidAudience => fail("wrong audience"),
                ErrorKind::InvalidAlgorithm => fail("wrong signing algorithm"),
                ErrorKind::InvalidSignature => fail("bad signature"),
                ErrorKind::MissingRequiredClaim(claim) => fail(&format!("the {claim} claim is missing")),
                ErrorKind::Json(err) => fail(&format!("malformed claims: {err}")),
                _ => fail("malformed token"),
            }
        })?;
        if let (Some(tid), Some(tenant)) = (&data.claims.tid, self.tenant)
            && !Uuid::parse_str(tid).is_ok_and(|tid| tid == tenant)
        {
            return Err(fail(&format!(
                "it was issued for tenant '{tid}', not this server's '{tenant}'"
            )));
        }
        Ok(Caller {
            subject: data.claims.sub,
            roles: data.claims.roles,
        })
    }
}

fn validation(algorithm: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.set_issuer(&[issuer]);
    validation.set_audience(&[audience]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
    validation.validate_nbf = true;
    validation.leeway = CLOCK_SKEW_SECONDS;
    validation
}

/// Reads a key file, ignoring surrounding white space.
pub fn read_secret_file(path: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(bytes.trim_ascii().to_vec())
}

/// The subscription a role's scope lies in (`None` for `/`).
pub fn subscription_of(scope: &str) -> Option<&str> {
    scope
        .strip_prefix("/subscriptions/")
        .map(|rest| rest.split('/').next().unwrap_or(rest))
}

pub fn covers_everything(caller: &Caller) -> bool {
    caller.roles.iter().any(|a| a.scope == "/")
}

/// `subscription` if the caller may see it (what `GET /subscriptions/{id}` and provider reads answer for) (any role at, inside or above it), else ARM's `SubscriptionNotFound`.
pub fn visible_subscription(caller: &Caller, subscription: &str) -> ApiResult<String> {
    let parsed = SubscriptionId::parse(subscription)?;
    let named = caller
        .roles
        .iter()
        .any(|a| subscription_of(&a.scope).is_some_and(|s| s.eq_ignore_ascii_case(parsed.as_str())));
    if named || covers_everything(caller) {
        Ok(parsed.as_str().to_owned())
    } else {
        Err(ApiError::SubscriptionNotFound(format!(
            "The subscription '{subscription}' could not be found."
        )))
    }
}

/// Mints an HS256 user token, as `fluxplane token` does: with the claims Azure's tools read besides ours, the
/// tenant (`tid`) and an object id (`oid`) that is the same for the same subject in the same tenant.
pub fn mint(
    secret: &[u8],
    issuer: &str,
    audience: &str,
    subject: &str,
    roles: Vec<RoleAssignment>,
    ttl: chrono::Duration,
    tenant: Uuid,
) -> anyhow::Result<String> {
    anyhow::ensure!(!subject.is_empty(), "the subject must not be empty");
    let now = Utc::now().timestamp();
    let claims = Claims {
        sub: subject.to_owned(),
        iss: issuer.to_owned(),
        aud: audience.to_owned(),
        iat: now,
        nbf: now,
        exp: now + ttl.num_seconds(),
        roles,
        tid: Some(tenant.to_string()),
        oid: Some(Uuid::new_v5(&tenant, subject.as_bytes()).to_string()),
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )?)
}

/// Middleware: authenticates the bearer token and records the caller for the handlers.
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let header = request
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or_else(|| ApiError::AuthenticationFailed("the Authorization header is missing".into()))?;
    let token = header
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::AuthenticationFailed("the Authorization header must be 'Bearer <token>'".into()))?;
    let caller = auth.authenticate(token)?;
    tracing::Span::current().record("caller", caller.subject.as_str());
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}

/// The scopes a list at `scope` reads for the caller, in key order: the scope itself, or, at a subscription the
/// caller may read only parts of, the resource groups it may read (as ARM lists them).
pub fn readable_scopes(caller: &Caller, scope: &FleetScope) -> Result<Vec<ClusterSet>, ApiError> {
    let whole = caller.require(Role::Reader, &scope.id());
    if whole.is_ok() {
        return Ok(vec![scope.clusters()]);
    }
    let subscription_key = scope.subscription.key();
    let mut groups = match scope.resource_group {
        None => caller.resource_groups_with(Role::Reader, scope.subscription.as_str()),
        Some(_) => Vec::new(),
    };
    if groups.is_empty() {
        return Err(whole.expect_err("checked above"));
    }
    // a group's keys all start with "{subscription}/{group}/": read in that order, pages continue across groups
    groups.sort_by_cached_key(|group| format!("{subscription_key}/{group}/"));
    Ok(groups
        .into_iter()
        .map(|resource_group_key| ClusterSet::ResourceGroup {
            subscription_key: subscription_key.clone(),
            resource_group_key,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    const TENANT: Uuid = Uuid::from_u128(0x1234);

    fn owner_of(scope: &str) -> Vec<RoleAssignment> {
        vec![RoleAssignment::parse(Role::Owner, scope).unwrap()]
    }

    fn auth() -> Authenticator {
        Authenticator::shared_secret(SECRET, "fluxplane", "fluxplane").unwrap()
    }

    fn reader_at(scopes: &[&str]) -> Caller {
        Caller {
            subject: "t".into(),
            roles: scopes
                .iter()
                .map(|s| RoleAssignment::parse(Role::Reader, s).unwrap())
                .collect(),
        }
    }

    #[test]
    fn a_caller_sees_the_subscriptions_its_roles_name_and_no_other() {
        let reader = reader_at(&["/subscriptions/Team-A", "/subscriptions/team-b/resourceGroups/rg"]);
        assert_eq!(visible_subscription(&reader, "team-a").unwrap(), "team-a");
        assert_eq!(visible_subscription(&reader, "TEAM-B").unwrap(), "TEAM-B");
        let err = visible_subscription(&reader, "team-c").unwrap_err();
        assert_eq!((err.code(), err.status().as_u16()), ("SubscriptionNotFound", 404));
        assert_eq!(
            visible_subscription(&reader_at(&["/"]), "anything").unwrap(),
            "anything"
        );
    }

    #[test]
    fn a_minted_token_authenticates_its_subject() {
        let token = mint(
            SECRET,
            "fluxplane",
            "fluxplane",
            "alice",
            owner_of("/"),
            chrono::Duration::hours(1),
            TENANT,
        )
        .unwrap();
        let caller = auth().authenticate(&token).unwrap();
        assert_eq!(caller.subject, "alice");
        assert_eq!(caller.roles[0].role, Role::Owner);
    }

    #[test]
    fn expired_tokens_are_refused() {
        let token = mint(
            SECRET,
            "fluxplane",
            "fluxplane",
            "a",
            owner_of("/"),
            chrono::Duration::hours(-2),
            TENANT,
        )
        .unwrap();
        let err = auth().authenticate(&token).unwrap_err();
        assert_eq!(err.code(), "AuthenticationFailed");
        assert!(err.to_string().contains("expired"), "{err}");
    }

    #[test]
    fn wrong_audience_issuer_and_key_are_refused() {
        let hour = chrono::Duration::hours(1);
        let other_aud = mint(SECRET, "fluxplane", "other", "a", owner_of("/"), hour, TENANT).unwrap();
        assert!(auth().authenticate(&other_aud).is_err());
        let other_iss = mint(SECRET, "evil", "fluxplane", "a", owner_of("/"), hour, TENANT).unwrap();
        assert!(auth().authenticate(&other_iss).is_err());
        let other_key = mint(&[7u8; 32], "fluxplane", "fluxplane", "a", owner_of("/"), hour, TENANT).unwrap();
        assert!(auth().authenticate(&other_key).is_err());
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        // header {"alg":"none","typ":"JWT"}, a valid-looking payload, no signature
        let token = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhIiwiaXNzIjoiZmx1eHBsYW5lIiwiYXVkIjoiZmx1eHBsYW5lIiwiaWF0IjowLCJuYmYiOjAsImV4cCI6OTk5OTk5OTk5OSwicm9sZXMiOlt7InJvbGUiOiJPd25lciIsInNjb3BlIjoiLyJ9XX0.";
        assert!(auth().authenticate(token).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Authenticator::shared_secret(b"short", "i", "a").is_err());
    }

    #[test]
    fn roles_cover_their_scope_and_below_only() {
        let caller = Caller {
            subject: "bob".into(),
            roles: vec![RoleAssignment::parse(Role::Contributor, "/subscriptions/S1/resourceGroups/rg1").unwrap()],
        };
        let inside = "/subscriptions/s1/resourcegroups/RG1/providers/Microsoft.Kubernetes/connectedClusters/c";
        assert!(caller.require(Role::Reader, inside).is_ok());
        assert!(caller.require(Role::Contributor, inside).is_ok());
        assert_eq!(
            caller.require(Role::Owner, inside).unwrap_err().code(),
            "AuthorizationFailed"
        );
        assert!(
            caller
                .require(Role::Reader, "/subscriptions/s1/resourceGroups/rg10/x")
                .is_err()
        );
        assert!(caller.require(Role::Reader, "/subscriptions/s1").is_err());
    }

    #[test]
    fn resource_group_roles_are_found_per_subscription() {
        let caller = Caller {
            subject: "c".into(),
            roles: vec![
                RoleAssignment::parse(Role::Reader, "/subscriptions/S1/resourceGroups/B").unwrap(),
                RoleAssignment::parse(Role::Owner, "/subscriptions/s1/resourceGroups/a").unwrap(),
                RoleAssignment::parse(Role::Owner, "/subscriptions/s2/resourceGroups/c").unwrap(),
            ],
        };
        assert_eq!(caller.resource_groups_with(Role::Reader, "s1"), ["a", "b"]);
        assert_eq!(caller.resource_groups_with(Role::Contributor, "S1"), ["a"]);
        assert!(caller.resource_groups_with(Role::Reader, "s3").is_empty());
    }

    #[test]
    fn malformed_scopes_are_refused() {
        for bad in [
            "",
            "//",
            "subscriptions/x",
            "/subscriptions",
            "/subscriptions/",
            "/subscriptions//",
            "/subscriptions/x/resourceGroups",
            "/subscriptions/x/resourceGroups/",
            "/subscriptions/x/junk",
            "/subscriptions/x/resourceGroups/rg/junk",
            "/subscriptions/x y",
            "/subscriptions/x/resourceGroups/rg.",
            "/tenants/x",
        ] {
            assert!(RoleAssignment::parse(Role::Reader, bad).is_err(), "{bad}");
        }
        assert!(RoleAssignment::parse(Role::Reader, "/subscriptions/x/").is_ok());
    }

    #[test]
    fn a_token_with_a_malformed_scope_is_refused_whole() {
        let auth = auth();
        for scope in ["", "/subscriptions", "/subscriptions/s1/junk"] {
            let now = Utc::now().timestamp();
            let claims = serde_json::json!({
                "sub": "mallory", "iss": "fluxplane", "aud": "fluxplane", "iat": now, "nbf": now, "exp": now + 60,
                "roles": [{"role": "Owner", "scope": scope}],
            });
            let token = jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(SECRET),
            )
            .unwrap();
            let err = auth.authenticate(&token).unwrap_err();
            assert_eq!(err.code(), "AuthenticationFailed", "{scope:?}");
            assert!(err.to_string().contains("scope"), "{err}");
        }
    }
}
