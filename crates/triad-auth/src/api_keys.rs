//! API keys (docs/access.md). A key is `triad_<key id>_<secret>`: the key id (8 random bytes,
//! hex) is public and names the key in events and logs; the secret (32 random bytes, hex) is
//! shown once, at creation. Only the SHA-256 of the whole text is written
//! (`ApiKeyCreated.sha256` on `triad.api-keys`); a key has 256 bits of entropy, so a fast
//! hash is enough — there is nothing to brute-force as with a password.
//!
//! [`KeyRing`] is the fold of the topic every API node keeps: a revocation applied there
//! stops the key on that node at once.

use std::collections::BTreeMap;

use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use triad_domain::{AccessRole, ApiKeyBody, ApiKeyCreated, ApiKeyEvent, ApiKeyRevoked};

use crate::{Principal, Rejection, valid_tenant};

const PREFIX: &str = "triad_";

/// A new key: the text to hand over once, and the event that records its hash.
#[derive(Clone)]
pub struct NewKey {
    pub text: String,
    pub event: ApiKeyEvent,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("text", &"<shown once>")
            .field("event", &self.event)
            .finish()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Lower-case hex SHA-256 of `text`.
pub fn sha256_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

/// What a new key is for.
#[derive(Debug, Clone)]
pub struct KeyRequest<'a> {
    pub tenant: &'a str,
    pub role: AccessRole,
    pub name: &'a str,
    pub expires_at: Option<i64>,
    pub replaces: Option<&'a str>,
    pub actor: &'a str,
}

/// Why a key request is refused, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct RequestError {
    pub field: &'static str,
    pub message: String,
}

/// Generates a key for `request` at `now` (µs).
pub fn generate(request: &KeyRequest<'_>, now: i64) -> Result<NewKey, RequestError> {
    if !valid_tenant(request.tenant) {
        return Err(RequestError {
            field: "tenant",
            message: format!(
                "{:?} must be 1-64 characters of a-z 0-9 - _ starting with a letter or digit",
                request.tenant
            ),
        });
    }
    if request.name.trim().is_empty() || request.name.len() > 200 {
        return Err(RequestError {
            field: "name",
            message: "say what the key is for (1-200 bytes)".to_owned(),
        });
    }
    if request.expires_at.is_some_and(|e| e <= now) {
        return Err(RequestError {
            field: "expires_at",
            message: "must be in the future".to_owned(),
        });
    }
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut id);
    OsRng.fill_bytes(&mut secret);
    let key_id = hex(&id);
    let text = format!("{PREFIX}{key_id}_{}", hex(&secret));
    let event = ApiKeyEvent {
        key_id,
        occurred_at: now,
        actor: request.actor.to_owned(),
        body: ApiKeyBody::ApiKeyCreated(ApiKeyCreated {
            tenant: request.tenant.to_owned(),
            role: request.role,
            name: request.name.to_owned(),
            sha256: sha256_hex(&text),
            expires_at: request.expires_at,
            replaces: request.replaces.map(str::to_owned),
        }),
        schema_version: 1,
    };
    Ok(NewKey { text, event })
}

/// The revocation of `key_id`.
pub fn revocation(key_id: &str, reason: &str, actor: &str, now: i64) -> ApiKeyEvent {
    ApiKeyEvent {
        key_id: key_id.to_owned(),
        occurred_at: now,
        actor: actor.to_owned(),
        body: ApiKeyBody::ApiKeyRevoked(ApiKeyRevoked {
            reason: reason.to_owned(),
        }),
        schema_version: 1,
    }
}

/// Why a key-management action is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManageError {
    /// The caller may not do this (a member, or a tenant admin reaching for operator keys).
    #[error("{0}")]
    Forbidden(String),
    /// No such key, or one of another tenant: the two read alike, so ids cannot be probed.
    #[error("{0}: no such API key")]
    NotFound(String),
    /// The key is revoked already and cannot be rotated.
    #[error("{0} is revoked; create a new key instead")]
    Revoked(String),
    #[error(transparent)]
    Invalid(#[from] RequestError),
}

/// Whether `principal` may create or change a key of `tenant` with `role`: an operator any
/// key; a tenant admin its own tenant's member and tenant-admin keys — never an operator key,
/// or a tenant admin could mint itself the operator role.
pub fn may_manage(
    principal: &Principal,
    tenant: &str,
    role: AccessRole,
) -> Result<(), ManageError> {
    match principal.role {
        AccessRole::Operator => Ok(()),
        AccessRole::Member => Err(ManageError::Forbidden(
            "managing API keys needs the tenant_admin role".to_owned(),
        )),
        AccessRole::TenantAdmin if tenant != principal.tenant => {
            Err(ManageError::Forbidden(format!(
                "a tenant admin manages only the keys of tenant {:?}",
                principal.tenant
            )))
        }
        AccessRole::TenantAdmin if role == AccessRole::Operator => Err(ManageError::Forbidden(
            "operator keys are managed by operators".to_owned(),
        )),
        AccessRole::TenantAdmin => Ok(()),
    }
}

/// Whether `principal` sees `entry` at all: operators every key, anyone else only its own
/// tenant's.
pub fn visible_to(principal: &Principal, entry: &KeyEntry) -> bool {
    principal.role == AccessRole::Operator || entry.created.tenant == principal.tenant
}

/// The key `key_id` as `principal` may change it: absent and foreign keys are both
/// `NotFound`; a visible key the caller may not manage is `Forbidden`.
pub fn manageable<'a>(
    ring: &'a KeyRing,
    principal: &Principal,
    key_id: &str,
) -> Result<&'a KeyEntry, ManageError> {
    let entry = ring
        .get(key_id)
        .filter(|e| visible_to(principal, e))
        .ok_or_else(|| ManageError::NotFound(key_id.to_owned()))?;
    may_manage(principal, &entry.created.tenant, entry.created.role)?;
    Ok(entry)
}

/// The rotation of `old`: a new key for the same tenant, role, name and (unexpired) expiry
/// that names the key it replaces, and the old key's revocation. Write them in this order:
/// a crash in between leaves two working keys, never none.
pub fn rotation(
    old: &KeyEntry,
    actor: &str,
    now: i64,
) -> Result<(NewKey, ApiKeyEvent), ManageError> {
    if old.revoked.is_some() {
        return Err(ManageError::Revoked(old.key_id.clone()));
    }
    let request = KeyRequest {
        tenant: &old.created.tenant,
        role: old.created.role,
        name: &old.created.name,
        expires_at: old.created.expires_at.filter(|e| *e > now),
        replaces: Some(&old.key_id),
        actor,
    };
    let key = generate(&request, now)?;
    let revoked = revocation(
        &old.key_id,
        &format!("rotated to {}", key.event.key_id),
        actor,
        now,
    );
    Ok((key, revoked))
}

/// What a key is now: `active`, `expired` or `revoked`.
pub fn state_at(entry: &KeyEntry, now: i64) -> &'static str {
    match (&entry.revoked, entry.created.expires_at) {
        (Some(_), _) => "revoked",
        (None, Some(e)) if e <= now => "expired",
        (None, _) => "active",
    }
}

/// The key id of a key's text, when it has the shape of one.
pub fn key_id_of(text: &str) -> Option<&str> {
    let rest = text.strip_prefix(PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hexish = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id, 16) && hexish(secret, 64)).then_some(id)
}

/// One key as the ring knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub key_id: String,
    pub created: ApiKeyCreated,
    pub created_at: i64,
    pub created_by: String,
    /// Set once revoked: when, by whom, why.
    pub revoked: Option<(i64, String, String)>,
}

/// The keys of `triad.api-keys`, folded in log order.
#[derive(Debug, Clone, Default)]
pub struct KeyRing {
    keys: BTreeMap<String, KeyEntry>,
}

impl KeyRing {
    /// Applies one event. A second creation of a key id, or a revocation of an unknown one, is
    /// refused (and changes nothing): the topic's writers never produce them.
    pub fn apply(&mut self, event: &ApiKeyEvent) -> Result<(), String> {
        match &event.body {
            ApiKeyBody::ApiKeyCreated(c) => {
                if self.keys.contains_key(&event.key_id) {
                    return Err(format!("key {} is created twice", event.key_id));
                }
                self.keys.insert(
                    event.key_id.clone(),
                    KeyEntry {
                        key_id: event.key_id.clone(),
                        created: c.clone(),
                        created_at: event.occurred_at,
                        created_by: event.actor.clone(),
                        revoked: None,
                    },
                );
                Ok(())
            }
            ApiKeyBody::ApiKeyRevoked(r) => match self.keys.get_mut(&event.key_id) {
                Some(k) => {
                    // A second revocation keeps the first's record.
                    if k.revoked.is_none() {
                        k.revoked =
                            Some((event.occurred_at, event.actor.clone(), r.reason.clone()));
                    }
                    Ok(())
                }
                None => Err(format!(
                    "key {} is revoked but was never created",
                    event.key_id
                )),
            },
        }
    }

    pub fn get(&self, key_id: &str) -> Option<&KeyEntry> {
        self.keys.get(key_id)
    }

    pub fn entries(&self) -> impl Iterator<Item = &KeyEntry> {
        self.keys.values()
    }

    /// Who `text` is, at `now` (µs).
    pub fn authenticate(&self, text: &str, now: i64) -> Result<Principal, Rejection> {
        let key_id = key_id_of(text).ok_or(Rejection::Malformed("not an API key"))?;
        let entry = self.keys.get(key_id).ok_or(Rejection::UnknownKey)?;
        // Constant time over the hashes: timing says nothing about how much matched.
        let presented = sha256_hex(text);
        if !crate::same(presented.as_bytes(), entry.created.sha256.as_bytes()) {
            return Err(Rejection::UnknownKey);
        }
        if entry.revoked.is_some() {
            return Err(Rejection::Revoked);
        }
        if entry.created.expires_at.is_some_and(|e| e <= now) {
            return Err(Rejection::Expired);
        }
        Ok(Principal::of_key(
            &entry.created.tenant,
            entry.created.role,
            key_id,
        ))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn request(tenant: &str) -> KeyRequest<'_> {
        KeyRequest {
            tenant,
            role: AccessRole::Member,
            name: "ci",
            expires_at: Some(2_000),
            replaces: None,
            actor: "operator",
        }
    }

    #[test]
    fn a_key_works_until_it_is_revoked_or_expires_and_only_its_hash_is_written() {
        let key = generate(&request("acme"), 1_000).unwrap();
        assert!(!format!("{:?}", key.event).contains(&key.text[30..]));
        assert!(!format!("{key:?}").contains(&key.text));
        let ApiKeyBody::ApiKeyCreated(c) = &key.event.body else {
            panic!()
        };
        assert_eq!(c.sha256, sha256_hex(&key.text));
        let mut ring = KeyRing::default();
        ring.apply(&key.event).unwrap();
        let who = ring.authenticate(&key.text, 1_500).unwrap();
        assert_eq!(
            (who.tenant.as_str(), who.role),
            ("acme", AccessRole::Member)
        );
        assert_eq!(who.subject, key.event.key_id);
        assert_eq!(ring.authenticate(&key.text, 2_000), Err(Rejection::Expired));

        // A key of the right shape whose secret differs is unknown; so is another id.
        let mut forged = key.text.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert_eq!(
            ring.authenticate(&forged, 1_500),
            Err(Rejection::UnknownKey)
        );
        let other = generate(&request("acme"), 1_000).unwrap();
        assert_eq!(
            ring.authenticate(&other.text, 1_500),
            Err(Rejection::UnknownKey)
        );
        assert!(matches!(
            ring.authenticate("Bearer nonsense", 1_500),
            Err(Rejection::Malformed(_))
        ));

        ring.apply(&revocation(&key.event.key_id, "leaked", "operator", 1_600))
            .unwrap();
        assert_eq!(ring.authenticate(&key.text, 1_700), Err(Rejection::Revoked));
        assert!(ring.apply(&key.event).is_err(), "created twice");
        assert!(
            ring.apply(&revocation("0000000000000000", "x", "op", 1))
                .is_err()
        );
    }

    fn who(tenant: &str, role: AccessRole) -> Principal {
        Principal::of_key(tenant, role, "k")
    }

    #[test]
    fn tenant_admins_manage_their_tenants_keys_below_operator() {
        let admin = who("acme", AccessRole::TenantAdmin);
        assert_eq!(may_manage(&admin, "acme", AccessRole::Member), Ok(()));
        assert_eq!(may_manage(&admin, "acme", AccessRole::TenantAdmin), Ok(()));
        assert!(matches!(
            may_manage(&admin, "acme", AccessRole::Operator),
            Err(ManageError::Forbidden(_))
        ));
        assert!(matches!(
            may_manage(&admin, "other", AccessRole::Member),
            Err(ManageError::Forbidden(_))
        ));
        assert!(matches!(
            may_manage(&who("acme", AccessRole::Member), "acme", AccessRole::Member),
            Err(ManageError::Forbidden(_))
        ));
        let operator = who("ops", AccessRole::Operator);
        assert_eq!(may_manage(&operator, "acme", AccessRole::Operator), Ok(()));

        // Another tenant's key reads like a missing one; an operator key of the admin's own
        // tenant is visible but not changeable.
        let mut ring = KeyRing::default();
        let theirs = generate(&request("other"), 1_000).unwrap();
        ring.apply(&theirs.event).unwrap();
        let mut op = request("acme");
        op.role = AccessRole::Operator;
        let op = generate(&op, 1_000).unwrap();
        ring.apply(&op.event).unwrap();
        assert!(matches!(
            manageable(&ring, &admin, &theirs.event.key_id),
            Err(ManageError::NotFound(_))
        ));
        assert!(matches!(
            manageable(&ring, &admin, &op.event.key_id),
            Err(ManageError::Forbidden(_))
        ));
        assert!(manageable(&ring, &operator, &theirs.event.key_id).is_ok());
    }

    #[test]
    fn a_rotation_replaces_the_key_and_revokes_the_old_one() {
        let mut ring = KeyRing::default();
        let old = generate(&request("acme"), 1_000).unwrap();
        ring.apply(&old.event).unwrap();
        let entry = ring.get(&old.event.key_id).unwrap().clone();
        let (new, revoked) = rotation(&entry, "acme/admin", 1_100).unwrap();
        let ApiKeyBody::ApiKeyCreated(c) = &new.event.body else {
            panic!()
        };
        assert_eq!(c.replaces.as_deref(), Some(old.event.key_id.as_str()));
        assert_eq!((c.tenant.as_str(), c.role), ("acme", AccessRole::Member));
        assert_eq!(c.expires_at, Some(2_000));
        assert_eq!(revoked.key_id, old.event.key_id);
        ring.apply(&new.event).unwrap();
        ring.apply(&revoked).unwrap();
        assert_eq!(ring.authenticate(&old.text, 1_200), Err(Rejection::Revoked));
        assert_eq!(ring.authenticate(&new.text, 1_200).unwrap().tenant, "acme");
        assert_eq!(
            state_at(ring.get(&old.event.key_id).unwrap(), 1_200),
            "revoked"
        );
        assert_eq!(
            state_at(ring.get(&new.event.key_id).unwrap(), 1_200),
            "active"
        );
        assert_eq!(
            state_at(ring.get(&new.event.key_id).unwrap(), 2_000),
            "expired"
        );
        let entry = ring.get(&old.event.key_id).unwrap();
        assert!(matches!(
            rotation(entry, "x", 1_300),
            Err(ManageError::Revoked(_))
        ));
    }

    #[test]
    fn requests_are_checked_by_field() {
        assert_eq!(
            generate(&request("Acme Corp"), 1).unwrap_err().field,
            "tenant"
        );
        let mut r = request("acme");
        r.name = " ";
        assert_eq!(generate(&r, 1).unwrap_err().field, "name");
        let r = request("acme");
        assert_eq!(generate(&r, 5_000).unwrap_err().field, "expires_at");
    }
}
