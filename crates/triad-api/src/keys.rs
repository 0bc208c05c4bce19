//! API keys through the API (issue 8, docs/access.md "Managing keys"): tenant admins create,
//! rotate, revoke and list their tenant's keys; operators any tenant's. The rules are
//! `triad_auth::api_keys` (pure); this module writes their events on `triad.api-keys` with
//! the caller as actor, so every change is on the log (who, what, when).
//!
//! A change answers once this node's fold has applied it: the next request here already
//! sees it (a key revoked through this node is refused here at once; other nodes refuse it
//! as soon as they read the event, within their follow latency).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use triad_auth::Principal;
use triad_auth::api_keys::{self, KeyEntry, KeyRequest, ManageError};
use triad_domain::{AccessRole, ApiKeyEvent};

use crate::AppState;
use crate::long::Long;

/// How long a change waits for this node's fold to apply it.
const SEEN_WITHIN: Duration = Duration::from_secs(10);

/// One key as the API shows it: never its secret, nor its hash.
#[derive(Debug, Clone, PartialEq, Serialize, async_graphql::SimpleObject)]
#[graphql(name = "ApiKey")]
pub struct KeyView {
    pub key_id: String,
    pub tenant: String,
    /// `member`, `tenant_admin` or `operator`.
    pub role: String,
    pub name: String,
    /// `active`, `expired` or `revoked`.
    pub state: String,
    /// µs since the epoch.
    pub created_at: Long,
    pub created_by: String,
    pub expires_at: Option<Long>,
    /// The key this one replaced (a rotation).
    pub replaces: Option<String>,
    pub revoked_at: Option<Long>,
    pub revoked_by: Option<String>,
    pub revoke_reason: Option<String>,
}

impl KeyView {
    fn of(entry: &KeyEntry, now: i64) -> Self {
        let revoked = entry.revoked.as_ref();
        Self {
            key_id: entry.key_id.clone(),
            tenant: entry.created.tenant.clone(),
            role: entry.created.role.as_str().to_owned(),
            name: entry.created.name.clone(),
            state: api_keys::state_at(entry, now).to_owned(),
            created_at: Long(entry.created_at),
            created_by: entry.created_by.clone(),
            expires_at: entry.created.expires_at.map(Long),
            replaces: entry.created.replaces.clone(),
            revoked_at: revoked.map(|(at, _, _)| Long(*at)),
            revoked_by: revoked.map(|(_, by, _)| by.clone()),
            revoke_reason: revoked.map(|(_, _, why)| why.clone()),
        }
    }
}

/// A new key: its text, shown this once, and what the API knows of it.
#[derive(Debug, Clone, Serialize, async_graphql::SimpleObject)]
#[graphql(name = "CreatedApiKey")]
pub struct CreatedKey {
    /// `triad_<key id>_<secret>`: store it now; it is never shown again.
    pub key: String,
    pub api_key: KeyView,
}

/// What to create. `tenant` defaults to the caller's, `role` to `member`.
#[derive(Debug, Clone, Deserialize, async_graphql::InputObject)]
#[graphql(name = "CreateApiKeyInput")]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// What the key is for (1-200 bytes).
    pub name: String,
    /// `member` (default), `tenant_admin` or `operator`.
    #[serde(default)]
    pub role: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
    /// The key stops working this many days after creation (1-3650); none: no expiry.
    #[serde(default)]
    pub expires_in_days: Option<i32>,
}

/// Why a key action was not taken.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Manage(#[from] ManageError),
    #[error(transparent)]
    Unavailable(#[from] crate::Error),
}

fn invalid(field: &'static str, message: impl Into<String>) -> KeyError {
    KeyError::Manage(ManageError::Invalid(api_keys::RequestError {
        field,
        message: message.into(),
    }))
}

/// The keys `principal` may see: its tenant's, or every key for an operator.
pub fn list(state: &AppState, principal: &Principal) -> Result<Vec<KeyView>, KeyError> {
    api_keys::may_manage(principal, &principal.tenant, AccessRole::Member)?;
    let now = triad_kafka::now_micros();
    Ok(state
        .identity
        .with_ring(|ring| {
            ring.entries()
                .filter(|e| api_keys::visible_to(principal, e))
                .map(|e| KeyView::of(e, now))
                .collect()
        })
        .unwrap_or_default())
}

/// Creates a key and returns its text (once).
pub async fn create(
    state: &AppState,
    principal: &Principal,
    request: CreateKey,
) -> Result<CreatedKey, KeyError> {
    let role = match request.role.as_deref() {
        None => AccessRole::Member,
        Some(text) => AccessRole::parse(text).ok_or_else(|| {
            invalid(
                "role",
                format!("{text:?} is not member, tenant_admin or operator"),
            )
        })?,
    };
    let tenant = request.tenant.as_deref().unwrap_or(&principal.tenant);
    api_keys::may_manage(principal, tenant, role)?;
    let now = triad_kafka::now_micros();
    let expires_at = match request.expires_in_days {
        None => None,
        Some(days @ 1..=3650) => Some(now + i64::from(days) * 86_400_000_000),
        Some(days) => {
            return Err(invalid(
                "expires_in_days",
                format!("{days} is not between 1 and 3650"),
            ));
        }
    };
    let actor = principal.actor();
    let key = api_keys::generate(
        &KeyRequest {
            tenant,
            role,
            name: &request.name,
            expires_at,
            replaces: None,
            actor: &actor,
        },
        now,
    )
    .map_err(ManageError::from)?;
    append(state, &key.event).await?;
    tracing::info!(key.id = %key.event.key_id, tenant, role = role.as_str(), actor, "API key created");
    created(state, key, now)
}

/// Replaces `key_id` by a new key (same tenant, role, name and expiry) and revokes it.
pub async fn rotate(
    state: &AppState,
    principal: &Principal,
    key_id: &str,
) -> Result<CreatedKey, KeyError> {
    let now = triad_kafka::now_micros();
    let actor = principal.actor();
    let (key, revoked) = state
        .identity
        .with_ring(|ring| {
            api_keys::manageable(ring, principal, key_id)
                .and_then(|old| api_keys::rotation(old, &actor, now))
        })
        .ok_or_else(|| ManageError::NotFound(key_id.to_owned()))??;
    // The new key first: a failure in between leaves two working keys, never none.
    append(state, &key.event).await?;
    append(state, &revoked).await?;
    tracing::info!(key.id = %key_id, new_key.id = %key.event.key_id, actor, "API key rotated");
    created(state, key, now)
}

/// Revokes `key_id` for `reason`. Revoking a revoked key changes nothing.
pub async fn revoke(
    state: &AppState,
    principal: &Principal,
    key_id: &str,
    reason: &str,
) -> Result<KeyView, KeyError> {
    if reason.trim().is_empty() || reason.len() > 500 {
        return Err(invalid(
            "reason",
            "say why the key is revoked (1-500 bytes)",
        ));
    }
    let already = state
        .identity
        .with_ring(|ring| {
            api_keys::manageable(ring, principal, key_id).map(|e| e.revoked.is_some())
        })
        .ok_or_else(|| ManageError::NotFound(key_id.to_owned()))??;
    let actor = principal.actor();
    if !already {
        let now = triad_kafka::now_micros();
        append(state, &api_keys::revocation(key_id, reason, &actor, now)).await?;
        tracing::info!(key.id = %key_id, actor, "API key revoked");
    }
    view(state, key_id)
}

/// Appends `event` and waits until this node's fold applied it.
async fn append(state: &AppState, event: &ApiKeyEvent) -> Result<(), KeyError> {
    let delivered = state
        .producer
        .send_record(
            &state.codec,
            &state.names.api_keys,
            None,
            &event.key_id,
            event,
        )
        .await
        .map_err(crate::Error::from)?;
    if !state.identity.seen(delivered.offset, SEEN_WITHIN).await {
        // Written (so it holds everywhere soon), but this node lags: say so in the log; the
        // answer below still describes the key from the event itself.
        tracing::warn!(messaging.destination.name = %state.names.api_keys, messaging.kafka.offset = delivered.offset, "API key change not applied by this node in time");
    }
    Ok(())
}

fn created(state: &AppState, key: api_keys::NewKey, now: i64) -> Result<CreatedKey, KeyError> {
    let api_key = match view(state, &key.event.key_id) {
        Ok(v) => v,
        // This node has not applied it yet: describe it from its own event.
        Err(_) => {
            let mut ring = api_keys::KeyRing::default();
            ring.apply(&key.event)
                .map_err(|reason| invalid("key", reason))?;
            ring.get(&key.event.key_id)
                .map(|e| KeyView::of(e, now))
                .ok_or_else(|| ManageError::NotFound(key.event.key_id.clone()))?
        }
    };
    Ok(CreatedKey {
        key: key.text,
        api_key,
    })
}

fn view(state: &AppState, key_id: &str) -> Result<KeyView, KeyError> {
    let now = triad_kafka::now_micros();
    state
        .identity
        .with_ring(|ring| ring.get(key_id).map(|e| KeyView::of(e, now)))
        .flatten()
        .ok_or_else(|| KeyError::Manage(ManageError::NotFound(key_id.to_owned())))
}
