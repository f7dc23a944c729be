//! Agent authentication: a short-lived EdDSA token signed by the agent's own private key, checked against the
//! public key registered on its cluster (`agentPublicKeyCertificate`, base64 of the SubjectPublicKeyInfo DER).
//! The control plane stores no shared secret; registering a new key makes the old one useless at once.

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use fluxplane_agent_protocol::agent::{AGENT_AUDIENCE, AgentClaims, MAX_TOKEN_LIFETIME_SECONDS};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::arm::ids::ClusterRef;
use crate::error::ApiError;
use crate::state::AppState;

/// The cluster an authenticated agent speaks for.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    pub cluster_id: i64,
    pub cluster: ClusterRef,
}

impl<S: Send + Sync> FromRequestParts<S> for AgentCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<AgentCaller>()
            .cloned()
            .ok_or_else(|| ApiError::AuthenticationFailed("no authenticated agent".into()))
    }
}

fn refused(why: &str) -> ApiError {
    ApiError::AuthenticationFailed(format!("the agent token is invalid: {why}"))
}

/// Parses a connected cluster's ARM id: `/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.Kubernetes/connectedClusters/{name}`.
pub fn parse_cluster_id(id: &str) -> Option<ClusterRef> {
    let segments: Vec<&str> = id.strip_prefix('/')?.split('/').collect();
    match segments.as_slice() {
        [s, sub, r, rg, p, rp, ty, name]
            if s.eq_ignore_ascii_case("subscriptions")
                && r.eq_ignore_ascii_case("resourceGroups")
                && p.eq_ignore_ascii_case("providers")
                && rp.eq_ignore_ascii_case("Microsoft.Kubernetes")
                && ty.eq_ignore_ascii_case("connectedClusters") =>
        {
            ClusterRef::parse(sub, rg, name).ok()
        }
        _ => None,
    }
}

/// The verifying key registered on a cluster, if it is an Ed25519 public key.
fn verifying_key(registered: &str) -> Option<DecodingKey> {
    let der = STANDARD.decode(registered.trim()).ok()?;
    let key = VerifyingKey::from_public_key_der(&der).ok()?;
    Some(DecodingKey::from_ed_der(key.as_bytes()))
}

/// Verifies an agent token and finds the cluster it speaks for.
pub async fn verify(state: &AppState, token: &str) -> Result<AgentCaller, ApiError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| refused("malformed token"))?;
    if header.alg != Algorithm::EdDSA {
        return Err(refused("agent tokens are signed with EdDSA"));
    }
    // the subject says whose key to check the signature with; nothing else is trusted before that check
    let unverified: AgentClaims =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| refused("malformed claims"))?;
    let cluster = parse_cluster_id(&unverified.sub).ok_or_else(|| refused("the subject is not a connected cluster"))?;
    let record = state
        .store
        .get_cluster(&cluster.key())
        .await?
        .ok_or_else(|| refused("the cluster is not registered"))?;
    let key = verifying_key(&record.spec.properties.agent_public_key_certificate)
        .ok_or_else(|| refused("the cluster's registered key is not an agent key"))?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[AGENT_AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "aud"]);
    let claims = jsonwebtoken::decode::<AgentClaims>(token, &key, &validation)
        .map_err(|err| {
            use jsonwebtoken::errors::ErrorKind;
            match err.kind() {
                ErrorKind::ExpiredSignature => refused("the token has expired"),
                ErrorKind::InvalidAudience => refused("wrong audience"),
                ErrorKind::InvalidSignature => refused("not signed by the cluster's registered key"),
                _ => refused("malformed token"),
            }
        })?
        .claims;
    if claims.exp - claims.iat > MAX_TOKEN_LIFETIME_SECONDS {
        return Err(refused(&format!(
            "agent tokens live at most {MAX_TOKEN_LIFETIME_SECONDS} seconds"
        )));
    }
    Ok(AgentCaller {
        cluster_id: record.id,
        cluster,
    })
}

/// Middleware of the agent routes.
pub async fn authenticate(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| {
            ApiError::AuthenticationFailed("the Authorization header must be 'Bearer <agent token>'".into())
        })?;
    let agent = verify(&state, token).await?;
    tracing::Span::current().record("caller", agent.cluster.id().as_str());
    request.extensions_mut().insert(agent);
    Ok(next.run(request).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connected_cluster_ids_name_an_agent() {
        let id = "/subscriptions/s/resourceGroups/RG/providers/Microsoft.Kubernetes/connectedClusters/c1";
        assert_eq!(parse_cluster_id(id).unwrap().key(), "s/rg/c1");
        assert!(parse_cluster_id("/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/vms/c1").is_none());
        assert!(parse_cluster_id(&format!("{id}/extra")).is_none());
        assert!(parse_cluster_id("subscriptions/s").is_none());
    }

    #[test]
    fn registered_keys_that_are_not_ed25519_are_refused() {
        assert!(verifying_key("a2V5").is_none());
        assert!(verifying_key("not base64").is_none());
    }
}
