//! Records of `triad.api-keys` (schema `io.triad.v1.ApiKeyEvent`): API keys created and
//! revoked, as hashes only (docs/access.md).

use serde::{Deserialize, Serialize};

use crate::TimestampMicros;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyEvent {
    pub key_id: String,
    pub occurred_at: TimestampMicros,
    pub actor: String,
    pub body: ApiKeyBody,
    pub schema_version: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApiKeyBody {
    ApiKeyCreated(ApiKeyCreated),
    ApiKeyRevoked(ApiKeyRevoked),
}

/// What a caller may do (issue 8): submit, cancel and read its own tenant's work; also manage
/// its tenant's keys and models; or operate the installation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum AccessRole {
    #[serde(rename = "MEMBER")]
    Member,
    #[serde(rename = "TENANT_ADMIN")]
    TenantAdmin,
    #[serde(rename = "OPERATOR")]
    Operator,
}

impl AccessRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Member => "member",
            Self::TenantAdmin => "tenant_admin",
            Self::Operator => "operator",
        }
    }

    /// `member`, `tenant_admin` (or `admin`) or `operator`, any case.
    pub fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "member" => Some(Self::Member),
            "tenant_admin" | "admin" => Some(Self::TenantAdmin),
            "operator" => Some(Self::Operator),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyCreated {
    pub tenant: String,
    pub role: AccessRole,
    pub name: String,
    /// Lower-case hex SHA-256 of the whole key text; the key itself is never written.
    pub sha256: String,
    pub expires_at: Option<TimestampMicros>,
    /// The key id this one rotates out.
    pub replaces: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiKeyRevoked {
    pub reason: String,
}
