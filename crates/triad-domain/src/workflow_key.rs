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
