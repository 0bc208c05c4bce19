//! Who is calling, on every surface (issue 8, ADR 0021, docs/access.md).
//!
//! Every route except `/v1/health` and `/metrics` goes through [`require`], which resolves
//! `Authorization: Bearer …` to a [`Principal`] and puts it in the request's extensions;
//! GraphQL over WebSocket resolves the same credential from its `connection_init` payload
//! (browsers cannot set headers on a WebSocket). API keys are checked against the fold of
//! `triad.api-keys` this node keeps ([`Identity`]); JWTs against the configured JWKS.
//!
//! What a principal may do is decided here too, in one place: [`scope`] (whose workflows it
//! sees), [`owns_account`], [`require_role`].

use std::sync::RwLock;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use triad_auth::api_keys::{self, KeyRing};
use triad_auth::jwt::JwtVerifier;
use triad_auth::{Principal, Rejection};
use triad_domain::{AccessRole, ApiKeyEvent};

use crate::{AppState, Problem};

/// How long a request with a key this node has not seen waits for the node to read the
/// topic up to its current end.
const CATCH_UP_WITHIN: Duration = Duration::from_secs(5);

/// The credentials this node accepts: the key ring folded from `triad.api-keys` and,
/// when configured, a JWT verifier.
pub struct Identity {
    ring: RwLock<KeyRing>,
    /// The next offset of `triad.api-keys` (one partition) to apply.
    position: watch::Sender<i64>,
    jwt: Option<JwtVerifier>,
    /// The instant the last catch-up started. Held while catching up, so unknown keys arriving
    /// together cost one watermark fetch: a request that waited behind a catch-up started
    /// after it arrived re-checks without fetching again.
    last_catch_up: tokio::sync::Mutex<Instant>,
    /// Reads the topic's end for catch-ups (set by `attach`), and the topic.
    watermarks: std::sync::OnceLock<(std::sync::Arc<BaseConsumer>, String)>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("position", &*self.position.borrow())
            .field("jwt", &self.jwt)
            .finish_non_exhaustive()
    }
}

impl Identity {
    pub fn new(jwt: Option<JwtVerifier>) -> Self {
        Self {
            ring: RwLock::new(KeyRing::default()),
            position: watch::channel(0).0,
            jwt,
            last_catch_up: tokio::sync::Mutex::new(Instant::now()),
            watermarks: std::sync::OnceLock::new(),
        }
    }

    /// Applies the record at `offset` (None: it did not decode, and only moves the position).
    pub fn apply(&self, offset: i64, event: Option<&ApiKeyEvent>) {
        if let Some(event) = event
            && let Ok(mut ring) = self.ring.write()
            && let Err(reason) = ring.apply(event)
        {
            tracing::warn!(key.id = %event.key_id, %reason, "API key event ignored");
        }
        self.position.send_replace(offset + 1);
    }

    /// Runs `f` over the key ring as this node holds it now (None if the lock is poisoned).
    pub fn with_ring<R>(&self, f: impl FnOnce(&KeyRing) -> R) -> Option<R> {
        self.ring.read().ok().map(|ring| f(&ring))
    }

    /// Waits until the fold applied the record at `offset` (false after `timeout`).
    pub async fn seen(&self, offset: i64, timeout: Duration) -> bool {
        let mut position = self.position.subscribe();
        tokio::time::timeout(timeout, position.wait_for(|p| *p > offset))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    fn check_key(&self, text: &str) -> Result<Principal, Rejection> {
        let now = triad_kafka::now_micros();
        match self.ring.read() {
            Ok(ring) => ring.authenticate(text, now),
            Err(_) => Err(Rejection::UnknownKey),
        }
    }

    fn knows(&self, text: &str) -> bool {
        let Some(id) = api_keys::key_id_of(text) else {
            return true;
        };
        self.ring.read().is_ok_and(|r| r.get(id).is_some())
    }

    /// Who presents `bearer`. A key this node has not seen yet may have been created an
    /// instant ago: the node first reads the topic up to its end (once for all requests
    /// waiting), so a key created before a request is always recognised.
    pub async fn authenticate(&self, bearer: &str) -> Result<Principal, Rejection> {
        if api_keys::key_id_of(bearer).is_none() {
            return match &self.jwt {
                Some(jwt) => jwt.verify(bearer),
                None => Err(Rejection::Malformed(
                    "not an API key, and this node accepts no JWTs",
                )),
            };
        }
        if !self.knows(bearer) {
            let asked = Instant::now();
            let mut last = self.last_catch_up.lock().await;
            if *last < asked {
                *last = Instant::now();
                self.catch_up().await;
            }
        }
        self.check_key(bearer)
    }

    /// Gives the node a reader of `topic`'s end, for catch-ups.
    pub fn attach(&self, kafka: &triad_config::KafkaConfig, topic: &str) {
        match triad_kafka::client::reader_config(kafka).create::<BaseConsumer>() {
            Ok(c) => {
                let _ = self
                    .watermarks
                    .set((std::sync::Arc::new(c), topic.to_owned()));
            }
            Err(error) => {
                tracing::warn!(%error, "no catch-up reader for the API keys topic");
            }
        }
    }

    /// Waits (up to a few seconds) until the fold has applied every record the topic holds
    /// now. [`crate::serve`] does this before it accepts requests, so a key revoked before
    /// the node started never works on it.
    pub async fn catch_up(&self) {
        let Some((consumer, topic)) = self.watermarks.get().cloned() else {
            return;
        };
        let end = tokio::task::spawn_blocking(move || {
            consumer
                .fetch_watermarks(&topic, 0, Duration::from_secs(5))
                .map(|(_, high)| high)
        })
        .await;
        let end = match end {
            Ok(Ok(end)) => end,
            Ok(Err(error)) => {
                tracing::warn!(%error, "cannot read the end of the API keys topic");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "the API keys catch-up failed");
                return;
            }
        };
        let mut position = self.position.subscribe();
        let caught = tokio::time::timeout(CATCH_UP_WITHIN, position.wait_for(|p| *p >= end)).await;
        if caught.is_err() {
            tracing::warn!(
                messaging.kafka.offset = end,
                "the API keys topic was not read to its end in time"
            );
        }
    }

    /// Resolves the `Authorization` header of a request.
    pub async fn from_headers(&self, headers: &HeaderMap) -> Result<Principal, Rejection> {
        let bearer = headers
            .get(header::AUTHORIZATION)
            .ok_or(Rejection::Malformed("no Authorization header"))?
            .to_str()
            .map_err(|_| Rejection::Malformed("the Authorization header is not text"))?;
        let token = bearer
            .strip_prefix("Bearer ")
            .or_else(|| bearer.strip_prefix("bearer "))
            .ok_or(Rejection::Malformed("not a Bearer credential"))?;
        self.authenticate(token.trim()).await
    }
}

/// Follows `triad.api-keys` from offset 0 into `state.identity` until `cancel`.
pub async fn follow(state: std::sync::Arc<AppState>, cancel: CancellationToken) {
    let topic = state.names.api_keys.clone();
    let each = |m: rdkafka::message::OwnedMessage| {
        let state = state.clone();
        async move {
            let event = match state.codec.decode::<ApiKeyEvent>(m.payload()).await {
                Ok(e) => Some(e),
                Err(error) => {
                    tracing::warn!(%error, messaging.destination.name = %state.names.api_keys, messaging.kafka.offset = m.offset(), "undecodable API key event skipped");
                    None
                }
            };
            state.identity.apply(m.offset(), event.as_ref());
        }
    };
    crate::follow_topic(&state.kafka, &topic, 1, cancel, each).await;
}

/// The answer to a request without acceptable credentials. The reason goes to the log only:
/// callers learn nothing from probing.
pub fn unauthenticated(rejection: &Rejection) -> Response {
    tracing::info!(%rejection, "request refused: unauthenticated");
    (
        [(header::WWW_AUTHENTICATE, "Bearer realm=\"triad\"")],
        Problem::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "invalid or missing credentials",
        )
        .detail("send Authorization: Bearer <API key or JWT> (docs/access.md)"),
    )
        .into_response()
}

/// The layer in front of every route but health and metrics: resolves the caller and hands
/// the [`Principal`] to the handler as an extension.
pub async fn require(
    State(state): State<std::sync::Arc<AppState>>,
    mut request: Request,
    next: Next,
) -> Response {
    match state.identity.from_headers(request.headers()).await {
        Ok(principal) => {
            if let Err(exceeded) = state.limits.check_rate(&principal.tenant) {
                // Debug, not info: a flood would otherwise turn into a flood of log lines.
                tracing::debug!(tenant = %principal.tenant, "request refused: over the tenant's rate");
                let exceeded = state.limits.hold(exceeded).await;
                return if request.uri().path() == "/graphql" {
                    exceeded.graphql_response()
                } else {
                    exceeded.problem().into_response()
                };
            }
            request.extensions_mut().insert(principal);
            next.run(request).await
        }
        Err(rejection) => unauthenticated(&rejection),
    }
}

/// Whose workflows `principal` sees: its tenant's, or everyone's for an operator.
pub fn scope(principal: &Principal) -> Option<&str> {
    match principal.role {
        AccessRole::Operator => None,
        AccessRole::Member | AccessRole::TenantAdmin => Some(&principal.tenant),
    }
}

/// Whether `principal` may read or spend `account`: an account `<tenant>:<name>` belongs to
/// its tenant; operators reach every account.
pub fn owns_account(principal: &Principal, account: &str) -> bool {
    principal.role == AccessRole::Operator
        || account
            .strip_prefix(principal.tenant.as_str())
            .is_some_and(|rest| rest.starts_with(':'))
}

/// Whether `principal` may act on something owned by `tenant`.
pub fn owns(principal: &Principal, tenant: Option<&str>) -> bool {
    principal.role == AccessRole::Operator || tenant == Some(principal.tenant.as_str())
}

/// Refuses (403 `forbidden`) unless `principal` has at least `role`
/// (member < tenant admin < operator).
pub fn require_role(principal: &Principal, role: AccessRole, action: &str) -> Result<(), Problem> {
    if rank(principal.role) >= rank(role) {
        Ok(())
    } else {
        Err(Problem::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("{action} needs the {} role", role.as_str()),
        ))
    }
}

/// Whether `principal` has at least `role`.
pub fn has_role(principal: &Principal, role: AccessRole) -> bool {
    rank(principal.role) >= rank(role)
}

fn rank(role: AccessRole) -> u8 {
    match role {
        AccessRole::Member => 0,
        AccessRole::TenantAdmin => 1,
        AccessRole::Operator => 2,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn who(tenant: &str, role: AccessRole) -> Principal {
        Principal::of_key(tenant, role, "k")
    }

    #[test]
    fn accounts_belong_to_the_tenant_named_before_the_colon() {
        let a = who("acme", AccessRole::Member);
        assert!(owns_account(&a, "acme:research"));
        assert!(!owns_account(&a, "acme2:research"));
        assert!(!owns_account(&a, "acmeresearch"));
        assert!(!owns_account(&a, "other:acme"));
        assert!(!owns_account(&a, "demo"));
        assert!(owns_account(&who("ops", AccessRole::Operator), "demo"));
    }

    #[test]
    fn roles_are_ordered_and_scopes_follow_them() {
        let m = who("acme", AccessRole::Member);
        let admin = who("acme", AccessRole::TenantAdmin);
        let op = who("ops", AccessRole::Operator);
        assert!(require_role(&m, AccessRole::TenantAdmin, "x").is_err());
        assert!(require_role(&admin, AccessRole::TenantAdmin, "x").is_ok());
        assert!(require_role(&admin, AccessRole::Operator, "x").is_err());
        assert!(require_role(&op, AccessRole::TenantAdmin, "x").is_ok());
        assert_eq!(scope(&m), Some("acme"));
        assert_eq!(scope(&op), None);
        assert!(owns(&m, Some("acme")) && !owns(&m, Some("beta")) && !owns(&m, None));
        assert!(owns(&op, Some("beta")) && owns(&op, None));
    }
}
