//! TRIAD's domain vocabulary: the commands that enter the workflow inbox, the events of the
//! event store and the dead-letter record, plus the rules that make event ids deterministic.
//!
//! This crate does no I/O. Each type mirrors a record of an `.avsc` file in `schemas/` (the
//! source of truth); `triad-codec` checks the two agree, field by field, in its tests.

pub mod access;
pub mod blob;
pub mod command;
pub mod control;
pub mod credits;
pub mod dead_letter;
pub mod event;
pub mod fixtures;
pub mod ids;
pub mod key_directory;
pub mod snapshot;
pub mod task;
pub mod workflow_key;

pub use access::{AccessRole, ApiKeyBody, ApiKeyCreated, ApiKeyEvent, ApiKeyRevoked};
pub use blob::BlobRef;
pub use command::{
    Auction, AuctionBid, CancelWorkflow, CommandMetadata, ExecutionRecord, InboxBody, InboxRecord,
    LedgerOutcome, LedgerReply, ModelCall, RoutingDecision, SubmitWorkflow, TaskOutcome,
    TaskResultReported, TaskSpec, TaskTimerFired, TimerKind,
};
pub use control::{
    AdapterInstall, BreakerState, BreakerTransition, ControlAction, ControlRecord, ExecutorStatus,
    HealthTransition, Heartbeat, INLINE_COMPONENT_MAX_BYTES, ModelHeartbeat, ModelRegistration,
    RemoteKind, RemoteModel, StatusBody,
};
pub use credits::{
    AccountTotals, CreditKind, CreditsBurned, CreditsCommand, CreditsCommandBody, CreditsEvent,
    CreditsEventBody, CreditsIssued, CreditsReserved, GENESIS_SHA256, IssueCredits,
    LedgerCausation, ReservationRefused, ReservationReleased, ReserveCredits, SettleReservation,
};
pub use dead_letter::{DeadLetter, DeadLetterHeader};
pub use event::{
    AuctionClosed, BidPlaced, Budget, BudgetRequested, BudgetSettled, Causation, EventBody,
    EventMetadata, SignedRoot, TaskCompleted, TaskDispatched, TaskFailed, TaskResultDiscarded,
    TaskRouted, TaskScheduled, TaskSkipped, WorkflowAccepted, WorkflowCancelled, WorkflowCompleted,
    WorkflowEvent, WorkflowFailed, WorkflowRejected,
};
pub use ids::{derive_event_id, new_command_id};
pub use key_directory::{
    DirectoryBody, KeyDirectoryChange, NodeEnrolled, NodeKeyRetired, NodeKeyRevoked,
    NodeSigningKeyEnrolled,
};
pub use snapshot::{
    EpochMarker, SnapshotBody, SnapshotCheckpoint, SnapshotState, WorkflowSnapshot,
};
pub use task::TaskRequest;
pub use workflow_key::{
    CustodyCheckpoint, PolicyDocument, PolicyVersion, SEALED_PREFIX, SovereigntyViolation,
    WorkflowKey, WrappedWorkflowKey, is_sealed,
};

/// The token estimate of a text, used before a tokenizer has seen it (routing, bids, cost
/// estimates): the larger of its word count and a quarter of its bytes, the usual rule of
/// thumb for English text with BPE vocabularies.
pub fn estimate_tokens(text: &str) -> u32 {
    let words = text.split_whitespace().count();
    let quarter = text.len().div_ceil(4);
    u32::try_from(words.max(quarter)).unwrap_or(u32::MAX)
}

/// Microseconds since the Unix epoch (Avro `timestamp-micros`).
pub type TimestampMicros = i64;

/// The version of `io.triad.v1.InboxRecord` this code writes (`schemas/history`).
pub const INBOX_SCHEMA_VERSION: i32 = 7;
/// The version of `io.triad.v1.WorkflowEvent` this code writes.
pub const EVENT_SCHEMA_VERSION: i32 = 10;
/// The version of `io.triad.v1.CreditsCommand` and `io.triad.v1.CreditsEvent` this code
/// writes.
pub const CREDITS_SCHEMA_VERSION: i32 = 1;
/// `io.triad.v1.ModelRegistration` as written today (v2: remote models).
pub const MODEL_REGISTRATION_SCHEMA_VERSION: i32 = 2;
/// The version of `io.triad.v1.TaskRequest` this code writes.
pub const TASK_REQUEST_SCHEMA_VERSION: i32 = 4;
