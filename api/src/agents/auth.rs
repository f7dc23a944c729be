//! Agent authentication: a short-lived EdDSA token signed by the agent's own private key, checked against the
//! public key registered on its cluster (`agentPublicKeyCertificate`, base64 of the SubjectPublicKeyInfo DER).
//! The control plane stores no shared secret; registering a new key makes the old one useless at once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};

use axum::extract::{FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, Utc};
use ed25519_dalek::VerifyingKey;
use ed25519_dalek::pkcs8::DecodePublicKey;
use fluxplane_agent_protocol::agent::{AGENT_AUDIENCE, AgentClaims, AgentInfo, MAX_TOKEN_LIFETIME_SECONDS};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use sha2::{Digest as _, Sha256};

use super::lookups::ClusterLookups;
use crate::arm::ids::ClusterRef;
use crate::auth::CLOCK_SKEW_SECONDS;
use crate::error::ApiError;

/// The cluster an authenticated agent speaks for.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    pub cluster_id: i64,
    pub cluster: ClusterRef,
    /// What the cluster row said of the agent when its key was read.
    pub last_heard: LastHeard,
}

/// The agent's last heartbeat as recorded, read together with the key that authenticated it.
#[derive(Debug, Clone, Default)]
pub struct LastHeard {
    pub at: Option<DateTime<Utc>>,
    pub connected: bool,
    pub info: AgentInfo,
}

impl LastHeard {
    /// Whether a request at this time, saying `info` (if anything), must be written as a heartbeat: the last one is
    /// older than `quiet_since`, or the agent says something new. The rest are answered from reads alone, so that a
    /// fleet woken at once does not rewrite every cluster row with each poll and report.
    pub fn heartbeat_due(&self, quiet_since: DateTime<Utc>, info: Option<&AgentInfo>) -> bool {
        let stale = !self.connected || self.at.is_none_or(|at| at < quiet_since);
        let news = info.is_some_and(|info| {
            (info.agent_version.is_some() && info.agent_version != self.info.agent_version)
                || (info.kubernetes_version.is_some() && info.kubernetes_version != self.info.kubernetes_version)
                || (info.total_node_count.is_some() && info.total_node_count != self.info.total_node_count)
        });
        stale || news
    }
}

/// How often an agent heard without news has its heartbeat written: a quarter of the silence that makes a cluster
/// Offline, at most 75 s (the default `--offline-after` of 5 minutes). An agent polling every 30 s writes every third
/// poll, a third of the row updates of writing them all (at 100,000 agents, 1,100 a second rather than 3,300), and
/// the time since its last written heartbeat stays under this plus the longest poll (60 s), inside the silence that
/// makes it Offline.
pub fn heartbeat_every(offline_after: std::time::Duration) -> std::time::Duration {
    (offline_after / 4).min(std::time::Duration::from_secs(75))
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
pub async fn verify(clusters: &ClusterLookups, tokens: &VerifiedTokens, token: &str) -> Result<AgentCaller, ApiError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| refused("malformed token"))?;
    if header.alg != Algorithm::EdDSA {
        return Err(refused("agent tokens are signed with EdDSA"));
    }
    // the subject says whose key to check the signature with; nothing else is trusted before that check
    let unverified: AgentClaims =
        jsonwebtoken::dangerous::insecure_decode_claims(token).map_err(|_| refused("malformed claims"))?;
    let cluster = parse_cluster_id(&unverified.sub).ok_or_else(|| refused("the subject is not a connected cluster"))?;
    let record = clusters
        .get(cluster.key())
        .await?
        .ok_or_else(|| refused("the cluster is not registered"))?;
    let registered = &record.spec.properties.agent_public_key_certificate;
    let now = Utc::now().timestamp();
    if !tokens.verified(token, registered, now) {
        check_signature(token, registered)?;
        tokens.remember(token, registered, unverified.exp, now);
    }
    Ok(AgentCaller {
        cluster_id: record.id,
        cluster,
        last_heard: LastHeard {
            at: record.last_connectivity_time,
            connected: record.connectivity_status == "Connected",
            info: AgentInfo {
                agent_version: record.agent_version,
                kubernetes_version: record.kubernetes_version,
                total_node_count: record.total_node_count,
            },
        },
    })
}

/// Checks the token's signature against the cluster's registered key, and its claims.
fn check_signature(token: &str, registered: &str) -> Result<(), ApiError> {
    let key = verifying_key(registered).ok_or_else(|| refused("the cluster's registered key is not an agent key"))?;
    let mut validation = Validation::new(Algorithm::EdDSA);
    validation.set_audience(&[AGENT_AUDIENCE]);
    validation.set_required_spec_claims(&["exp", "iat", "sub", "aud"]);
    validation.leeway = CLOCK_SKEW_SECONDS;
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
    lifetime_bounded(&claims, Utc::now().timestamp())
}

/// An agent token's times, against the server's clock: `exp - iat` alone would let a key holder sign a token
/// issued in ten years and valid until then.
fn lifetime_bounded(claims: &AgentClaims, now: i64) -> Result<(), ApiError> {
    let skew = CLOCK_SKEW_SECONDS as i64;
    if claims.iat > now + skew {
        return Err(refused(&format!(
            "it was issued in the future (iat more than {skew} seconds ahead of the server's clock)"
        )));
    }
    if claims.exp - claims.iat > MAX_TOKEN_LIFETIME_SECONDS || claims.exp > now + MAX_TOKEN_LIFETIME_SECONDS + skew {
        return Err(refused(&format!(
            "agent tokens live at most {MAX_TOKEN_LIFETIME_SECONDS} seconds from now"
        )));
    }
    Ok(())
}

/// Most tokens remembered; past it, expired ones are dropped, and if none has expired, all. Two per agent of a
/// 100,000-agent fleet (an agent takes a new token at half its old one's life), about 85 bytes each.
const MAX_VERIFIED_TOKENS: usize = 250_000;

/// A SHA-256 digest: what the cache keeps of a token and of a key.
type Digest = [u8; 32];

fn digest(text: &str) -> Digest {
    Sha256::digest(text.as_bytes()).into()
}

/// Agent tokens whose signature and claims have been checked, each with the key it was checked against and its
/// expiry. An agent sends the same token for a minute or so; checking the signature once is enough as long as the
/// cluster's registered key, read with every request, is still that key, so a new key takes effect at once.
///
/// Tokens and keys are kept as SHA-256 digests, not whole: a token is some 400 bytes, and at 100,000 agents the
/// whole ones were about 50 MB, which also made the cache full and cleared over and over, every agent's signature
/// checked again. A digest stands for its token only because no one can make another token with the same one.
#[derive(Default)]
pub struct VerifiedTokens {
    entries: Mutex<HashMap<Digest, (Digest, i64)>>,
}

impl VerifiedTokens {
    fn verified(&self, token: &str, registered: &str, now: i64) -> bool {
        let (token, registered) = (digest(token), digest(registered));
        let entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .get(&token)
            .is_some_and(|(key, expires_at)| *key == registered && *expires_at > now)
    }

    fn remember(&self, token: &str, registered: &str, expires_at: i64, now: i64) {
        let (token, registered) = (digest(token), digest(registered));
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= MAX_VERIFIED_TOKENS {
            entries.retain(|_, (_, expires_at)| *expires_at > now);
            if entries.len() >= MAX_VERIFIED_TOKENS {
                entries.clear();
            }
        }
        entries.insert(token, (registered, expires_at));
    }
}

/// The token of an agent's request, from `Authorization: Bearer <token>`.
fn bearer(request: &Request) -> Result<String, ApiError> {
    request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::AuthenticationFailed("the Authorization header must be 'Bearer <agent token>'".into()))
}

/// The layer of the agent routes: a request reaches its route with the [`AgentCaller`] it was verified as, or is
/// answered 401. A plain service rather than `from_fn` middleware, which would keep the request's verification and
/// a boxed copy of the routes below it in every held long-poll (about 2 KiB each, measured with heaptrack); here a
/// held poll keeps only the route's own future.
#[derive(Clone)]
pub struct Authenticate<S> {
    inner: S,
    clusters: ClusterLookups,
    tokens: Arc<VerifiedTokens>,
}

impl<S> Authenticate<S> {
    /// Authenticates the agents of `inner`'s requests against the clusters `clusters` reads (a layer of these:
    /// `tower::layer::layer_fn`).
    pub fn new(inner: S, clusters: ClusterLookups, tokens: Arc<VerifiedTokens>) -> Self {
        Self {
            inner,
            clusters,
            tokens,
        }
    }
}

impl<S> tower::Service<Request> for Authenticate<S>
where
    S: tower::Service<Request, Response = Response> + Clone,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Authenticating<S>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let token = match bearer(&request) {
            Ok(token) => token,
            Err(refusal) => {
                return Authenticating::Answered {
                    response: Some(refusal.into_response()),
                };
            }
        };
        let (clusters, tokens) = (self.clusters.clone(), self.tokens.clone());
        let verifying = Box::pin(async move { verify(&clusters, &tokens, &token).await });
        // the service that was made ready goes with the request; this one stays behind for the next
        let ready = self.inner.clone();
        Authenticating::Verifying {
            verifying,
            inner: Some(std::mem::replace(&mut self.inner, ready)),
            request: Some(request),
        }
    }
}

type Verification = Pin<Box<dyn Future<Output = Result<AgentCaller, ApiError>> + Send>>;

pin_project_lite::pin_project! {
    /// The future of an agent's request: its token being verified, then its route.
    #[project = AuthenticatingProjection]
    pub enum Authenticating<S: tower::Service<Request>> {
        Verifying { verifying: Verification, inner: Option<S>, request: Option<Request> },
        Called { #[pin] future: S::Future },
        Answered { response: Option<Response> },
    }
}

impl<S> Future for Authenticating<S>
where
    S: tower::Service<Request, Response = Response>,
{
    type Output = Result<Response, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match self.as_mut().project() {
                AuthenticatingProjection::Verifying {
                    verifying,
                    inner,
                    request,
                } => {
                    let verified = std::task::ready!(verifying.as_mut().poll(cx));
                    let (mut inner, mut request) = (
                        inner.take().expect("a request is verified once"),
                        request.take().expect("a request is verified once"),
                    );
                    let next = match verified {
                        Ok(agent) => {
                            tracing::Span::current().record("caller", agent.cluster.id().as_str());
                            request.extensions_mut().insert(agent);
                            Authenticating::Called {
                                future: inner.call(request),
                            }
                        }
                        Err(refusal) => Authenticating::Answered {
                            response: Some(refusal.into_response()),
                        },
                    };
                    self.set(next);
                }
                AuthenticatingProjection::Called { future } => return future.poll(cx),
                AuthenticatingProjection::Answered { response } => {
                    return Poll::Ready(Ok(response.take().expect("a refused request is answered once")));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fluxplane_agent_protocol::agent::MAX_WAIT_SECONDS;

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
    fn an_agent_token_may_not_outlive_its_limit_from_the_servers_clock() {
        let now = 1_800_000_000;
        let claims = |iat: i64, exp: i64| AgentClaims {
            sub: "c".into(),
            aud: AGENT_AUDIENCE.into(),
            iat,
            exp,
        };
        assert!(lifetime_bounded(&claims(now, now + 120), now).is_ok());
        assert!(
            lifetime_bounded(&claims(now + 30, now + 300), now).is_ok(),
            "within the clock skew"
        );
        let ten_years = 10 * 365 * 86_400;
        for (iat, exp) in [
            (now, now + ten_years),
            (now + ten_years, now + ten_years + 60),
            (now + ten_years - 60, now + ten_years),
            (now + 120, now + 400),
        ] {
            let err = lifetime_bounded(&claims(iat, exp), now).unwrap_err();
            assert_eq!(err.code(), "AuthenticationFailed", "iat {iat} exp {exp}");
        }
    }

    #[test]
    fn registered_keys_that_are_not_ed25519_are_refused() {
        assert!(verifying_key("a2V5").is_none());
        assert!(verifying_key("not base64").is_none());
    }

    #[test]
    fn a_verified_token_is_trusted_only_with_the_same_key_and_until_it_expires() {
        let tokens = VerifiedTokens::default();
        assert!(!tokens.verified("t1", "key-a", 100), "never checked");
        tokens.remember("t1", "key-a", 160, 100);
        assert!(tokens.verified("t1", "key-a", 159));
        assert!(!tokens.verified("t1", "key-b", 120), "the cluster has a new key");
        assert!(!tokens.verified("t1", "key-a", 160), "expired");
        assert!(!tokens.verified("t2", "key-a", 120), "another token");
    }

    #[test]
    fn the_verified_tokens_stay_bounded() {
        let tokens = VerifiedTokens::default();
        for i in 0..MAX_VERIFIED_TOKENS {
            tokens.remember(&format!("old-{i}"), "k", 10, 0);
        }
        tokens.remember("new", "k", 100, 50);
        let entries = tokens.entries.lock().unwrap();
        assert_eq!(entries.len(), 1, "the expired ones were dropped");
        assert!(entries.contains_key(&digest("new")));
    }

    #[test]
    fn an_agent_polling_every_30_seconds_writes_every_third_heartbeat_and_never_looks_offline() {
        let offline_after = std::time::Duration::from_secs(300);
        let every = chrono::Duration::from_std(heartbeat_every(offline_after)).unwrap();
        let start = Utc::now();
        let mut heard = LastHeard {
            at: None,
            connected: false,
            info: AgentInfo::default(),
        };
        let (mut written, mut longest_silence) = (0, chrono::Duration::zero());
        for poll in 0..30 {
            let now = start + chrono::Duration::seconds(30 * poll);
            if let Some(at) = heard.at {
                longest_silence = longest_silence.max(now - at);
            }
            if heard.heartbeat_due(now - every, None) {
                written += 1;
                heard.at = Some(now);
                heard.connected = true;
            }
        }
        assert_eq!(written, 10, "one poll in three writes");
        assert!(
            longest_silence.num_seconds() < 300,
            "{longest_silence} of recorded silence"
        );
        // the longest poll (60 s) past the interval is still inside the silence that makes a cluster Offline
        assert!(heartbeat_every(offline_after).as_secs() + MAX_WAIT_SECONDS < offline_after.as_secs());
        assert_eq!(heartbeat_every(std::time::Duration::from_secs(40)).as_secs(), 10);
    }

    #[test]
    fn a_heartbeat_is_written_when_due_or_when_the_agent_says_something_new() {
        let now = Utc::now();
        let quiet_since = now - chrono::Duration::seconds(10);
        let info = |version: &str| AgentInfo {
            agent_version: Some(version.into()),
            ..Default::default()
        };
        let heard = |ago: i64, connected: bool| LastHeard {
            at: Some(now - chrono::Duration::seconds(ago)),
            connected,
            info: info("0.1.0"),
        };
        assert!(!heard(5, true).heartbeat_due(quiet_since, None), "a poll soon after");
        assert!(
            !heard(5, true).heartbeat_due(quiet_since, Some(&info("0.1.0"))),
            "a report saying the same"
        );
        assert!(
            !heard(5, true).heartbeat_due(quiet_since, Some(&AgentInfo::default())),
            "a report saying nothing"
        );
        assert!(
            heard(5, true).heartbeat_due(quiet_since, Some(&info("0.2.0"))),
            "a new version"
        );
        let nodes = AgentInfo {
            total_node_count: Some(4),
            ..Default::default()
        };
        assert!(
            heard(5, true).heartbeat_due(quiet_since, Some(&nodes)),
            "a new node count"
        );
        assert!(heard(11, true).heartbeat_due(quiet_since, None), "past the quiet time");
        assert!(heard(5, false).heartbeat_due(quiet_since, None), "never connected");
        assert!(LastHeard::default().heartbeat_due(quiet_since, None), "never heard");
    }
}
