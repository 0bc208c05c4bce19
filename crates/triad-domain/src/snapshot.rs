//! Records of the compacted topic `triad.workflow-snapshots` (schema
//! `io.triad.v1.WorkflowSnapshot`): the workflow processor's cache for bounded recovery
//! (ADR 0005). The event store stays the truth; a snapshot that cannot be used means a fold
//! of the log, never a wrong state.

use serde::{Deserialize, Serialize};

use crate::TimestampMicros;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowSnapshot {
    pub partition: i32,
    /// The offset of the writer's [`EpochMarker`]; -1 in the marker itself.
    pub epoch: i64,
    pub written_at: TimestampMicros,
    pub body: SnapshotBody,
    pub schema_version: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotBody {
    SnapshotState(SnapshotState),
    SnapshotCheckpoint(SnapshotCheckpoint),
    EpochMarker(EpochMarker),
}

/// A workflow's state after its event with `sequence` (key = workflow id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotState {
    pub workflow_id: String,
    pub sequence: i64,
    pub state_format: String,
    #[serde(with = "serde_bytes")]
    pub state: Vec<u8>,
}

/// Every workflow with events before `event_offset` has a [`SnapshotState`] covering them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotCheckpoint {
    pub event_offset: i64,
    pub last_input: i64,
}

/// Written by a processor when it takes a partition, before it reads the snapshots.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochMarker {
    pub instance: String,
}

impl WorkflowSnapshot {
    /// The compaction key: the workflow id, or one key per partition for the others.
    pub fn key(&self) -> String {
        match &self.body {
            SnapshotBody::SnapshotState(s) => s.workflow_id.clone(),
            SnapshotBody::SnapshotCheckpoint(_) => format!("checkpoint/{}", self.partition),
            SnapshotBody::EpochMarker(_) => format!("epoch/{}", self.partition),
        }
    }
}
