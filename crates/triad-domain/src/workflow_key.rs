//! Records of `triad.workflow-keys` (schema `io.triad.v1.WorkflowKey`): wrapped workflow keys,
//! compacted by workflow key id; a tombstone shreds one.

use serde::{Deserialize, Serialize};

/// What starts a sealed payload in a payload field (`prompt`, `inputs`, `output`: `bytes` in
/// the schemas); the envelope's JSON follows (docs/sovereignty_kernel.md). Anything else in
/// such a field is plaintext.
pub const SEALED_PREFIX: &[u8] = b"TRIAD-SEALED:1:";

/// Whether a payload field holds a sealed envelope.
pub fn is_sealed(payload: &[u8]) -> bool {
    payload.starts_with(SEALED_PREFIX)
}
use serde_bytes::ByteBuf;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowKey {
    pub format: i32,
    pub workflow_id: String,
    pub workflow_key_id: String,
    pub zones: Vec<String>,
    pub wrapped: Vec<WrappedWorkflowKey>,
    pub created_by: String,
    pub created_at: i64,
    pub schema_version: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrappedWorkflowKey {
    pub zone: String,
    pub node_id: String,
    pub key_id: String,
    pub enc: ByteBuf,
    pub wrapped: ByteBuf,
}

/// A record of `triad.violations` (schema `io.triad.v1.SovereigntyViolation`): a node
/// refused to open a payload it is not allowed to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SovereigntyViolation {
    pub occurred_at: i64,
    pub node_id: String,
    pub zone: String,
    pub workflow_id: String,
    pub task_id: String,
    pub attempt_id: Option<String>,
    pub role: String,
    pub envelope_zones: Vec<String>,
    pub reason: String,
    pub schema_version: i32,
}

/// A record of `triad.custody-checkpoints` (schema `io.triad.v1.CustodyCheckpoint`): the
/// notary's signed statement that event-store partition `partition` held exactly `records`
/// records at offsets `from_offset..to_offset`, with the RFC 9162 root of their leaf hashes,
/// chained to the partition's previous checkpoint (`docs/audit.md`, "Checkpoints").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustodyCheckpoint {
    /// The stream, by its logical name (`workflow-events`), so a copy under another topic
    /// prefix verifies the same.
    pub stream: String,
    pub partition: i32,
    /// 1, 2, 3… per partition.
    pub sequence: i64,
    pub from_offset: i64,
    /// Exclusive: the next checkpoint starts here.
    pub to_offset: i64,
    pub records: i64,
    /// Hex SHA-256.
    pub root: String,
    /// Hex SHA-256 of the previous checkpoint's signed bytes; 64 zeros for the first.
    pub previous: String,
    pub node_id: String,
    pub key_id: String,
    /// Hex `r || s` over `triad_sovereignty::custody::checkpoint_bytes`.
    pub signature: String,
    pub written_at: i64,
    pub schema_version: i32,
}

impl CustodyCheckpoint {
    /// The record key: one partition's checkpoints share it (and the partition).
    pub fn key(&self) -> String {
        format!("{}/{}", self.stream, self.partition)
    }
}

/// A record of `triad.policies` (schema `io.triad.v1.PolicyVersion`): one version of the
/// sovereignty policy, published and signed by the processor that enforces it before it
/// accepts any workflow under it (`docs/audit.md`, "Policy versions").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyVersion {
    /// Hex SHA-256 of `document`.
    pub version: String,
    /// The policy as canonical JSON ([`PolicyDocument`]).
    pub document: String,
    pub node_id: String,
    pub key_id: String,
    /// Hex `r || s` over `triad_sovereignty::custody::policy_bytes(document)`.
    pub signature: String,
    pub published_at: i64,
    pub schema_version: i32,
}

/// The sovereignty policy as one version states it: the zones, the named groups, each
/// zone's allowed endpoint hosts, and the zones of each model in the catalogue. Serialised
/// with sorted keys (JSON of these maps), so one policy has one text and one version.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyDocument {
    pub zones: Vec<String>,
    pub groups: std::collections::BTreeMap<String, Vec<String>>,
    pub hosts: std::collections::BTreeMap<String, Vec<String>>,
    pub models: std::collections::BTreeMap<String, Vec<String>>,
}
