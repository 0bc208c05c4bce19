//! Records of the zone work queues `triad.tasks.<zone>` (schema `io.triad.v1.TaskRequest`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TimestampMicros;

/// One attempt of a task for the executors of `zone`. The processor publishes it after the
/// `TaskDispatched` event is acknowledged and again on recovery (outbox rule), so executors
/// see it at least once and dedupe by `attempt_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRequest {
    pub workflow_id: String,
    pub dispatched_event_id: String,
    pub issued_at: TimestampMicros,
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub zone: String,
    pub allowed_zones: Vec<String>,
    #[serde(with = "serde_bytes")]
    pub prompt: Vec<u8>,
    pub inputs: BTreeMap<String, serde_bytes::ByteBuf>,
    /// Dependency outputs stored by reference, by task id (v2); fetched inside the zone.
    #[serde(default)]
    pub input_refs: BTreeMap<String, crate::BlobRef>,
    pub model_hint: Option<String>,
    pub specialties: Vec<String>,
    pub max_tokens: i32,
    pub timeout_ms: i64,
    /// The task asked for an auction (v3).
    #[serde(default)]
    pub auction: bool,
    /// What the attempt may spend, for a workflow on a credits reservation (v4): a model
    /// whose worst-case call exceeds it is not called.
    #[serde(default)]
    pub budget_micros: Option<i64>,
    pub schema_version: i32,
}
