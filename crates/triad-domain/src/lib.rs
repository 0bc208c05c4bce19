//! TRIAD's domain vocabulary: the commands that enter the workflow inbox, the events of the
//! event store and the dead-letter record, plus the rules that make event ids deterministic.
//!
//! This crate does no I/O. Each type mirrors a record of an `.avsc` file in `schemas/` (the
//! source of truth); `triad-codec` checks the two agree, field by field, in its tests.

pub mod command;
pub mod dead_letter;
pub mod event;
pub mod fixtures;
pub mod ids;

pub use command::{
    CancelWorkflow, CommandMetadata, InboxBody, InboxRecord, SubmitWorkflow, TaskOutcome,
    TaskResultReported, TaskSpec,
};
pub use dead_letter::{DeadLetter, DeadLetterHeader};
pub use event::{
    Causation, EventBody, EventMetadata, TaskCompleted, TaskDispatched, TaskFailed, TaskScheduled,
    TaskSkipped, WorkflowAccepted, WorkflowCancelled, WorkflowCompleted, WorkflowEvent,
    WorkflowFailed, WorkflowRejected,
};
pub use ids::{derive_event_id, new_command_id};

/// Microseconds since the Unix epoch (Avro `timestamp-micros`).
pub type TimestampMicros = i64;
