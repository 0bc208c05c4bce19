//! Who is calling (issue 8, docs/access.md), free of I/O: every API surface resolves a
//! bearer credential to a [`Principal`] — a tenant, a role and a subject — or a
//! [`Rejection`].
//!
//! - [`api_keys`]: keys `triad_<id>_<secret>`, shown once, stored as SHA-256 on
//!   `triad.api-keys` (created, rotated, revoked as events); [`api_keys::KeyRing`] is the fold
//!   every API node keeps.
//! - [`jwt`]: bearer JWTs from an identity provider, checked against a JWKS with RFC 8725
//!   practice (allow-listed asymmetric algorithms, `kid`-bound keys of the right family,
//!   `iss`, `aud`, `exp`, `nbf`).
//!
//! A rejection's [`Display`](std::fmt::Display) is for the server's log; callers get one
//! undifferentiated "invalid credentials" answer, so probing learns nothing.

pub mod api_keys;
pub mod jwt;

use triad_domain::AccessRole;

/// How the caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    ApiKey,
    Jwt,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    pub tenant: String,
    pub role: AccessRole,
    /// The key id or the token's `sub`.
    pub subject: String,
    pub via: Via,
}

impl Principal {
    /// The caller an API key `key_id` names.
    pub fn of_key(tenant: &str, role: AccessRole, key_id: &str) -> Self {
        Self {
            tenant: tenant.to_owned(),
            role,
            subject: key_id.to_owned(),
            via: Via::ApiKey,
        }
    }

    /// A name for logs and audit events: `<tenant>/<subject>`.
    pub fn actor(&self) -> String {
        format!("{}/{}", self.tenant, self.subject)
    }
}

/// Why a credential was not accepted (for the log; see the crate docs).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("malformed credential: {0}")]
    Malformed(&'static str),
    #[error("unknown key")]
    UnknownKey,
    #[error("revoked key")]
    Revoked,
    #[error("expired")]
    Expired,
    #[error("algorithm not allowed: {0}")]
    Algorithm(String),
    #[error("bad signature")]
    Signature,
    #[error("claim rejected: {0}")]
    Claim(&'static str),
}

/// Whether `tenant` can name a tenant: 1–64 characters of `a-z 0-9 - _`, starting with a
/// letter or digit.
pub fn valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && tenant
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

/// Constant-time equality.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
