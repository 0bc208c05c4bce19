//! Records of the event store `triad.workflow-events` (schema `io.triad.v1.WorkflowEvent`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{RoutingDecision, TaskSpec, TimestampMicros};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkflowEvent {
    pub meta: EventMetadata,
    pub body: EventBody,
    /// On the terminal event only (v5): the processor's signature over the Merkle root of
    /// every earlier event of the workflow (`docs/audit.md`, "Signed roots").
    #[serde(default)]
    pub signed_root: Option<SignedRoot>,
}

/// A processor's signed statement of a workflow's chain of custody: the RFC 9162 root of the
/// leaf hashes of the workflow's first `leaves` events (their exact Kafka value bytes, in log
/// order, each distinct record once), signed over `triad_sovereignty::custody::root_bytes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedRoot {
    pub leaves: i64,
    /// Hex SHA-256.
    pub root: String,
    pub node_id: String,
    /// The processor's signing key, as the key directory enrols it.
    pub key_id: String,
    /// Hex `r || s` (ECDSA P-256, SHA-256, RFC 6979).
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    pub event_id: String,
    pub event_type: String,
    pub occurred_at: TimestampMicros,
    pub workflow_id: String,
    pub causation: Causation,
    pub sequence: i64,
    pub schema_version: i32,
}

/// What caused an event: the input record (topic, partition, offset) and, for commands, the
/// command id. Together with the output index it determines the event id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Causation {
    pub command_id: Option<String>,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// The Avro union of the event body. Variant order is the union's branch order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EventBody {
    WorkflowAccepted(WorkflowAccepted),
    WorkflowRejected(WorkflowRejected),
    TaskScheduled(TaskScheduled),
    TaskDispatched(TaskDispatched),
    TaskCompleted(TaskCompleted),
    TaskFailed(TaskFailed),
    TaskSkipped(TaskSkipped),
    WorkflowCompleted(WorkflowCompleted),
    WorkflowFailed(WorkflowFailed),
    WorkflowCancelled(WorkflowCancelled),
    TaskRouted(TaskRouted),
    TaskResultDiscarded(TaskResultDiscarded),
    BidPlaced(BidPlaced),
    AuctionClosed(AuctionClosed),
    BudgetRequested(BudgetRequested),
    BudgetSettled(BudgetSettled),
}

impl EventBody {
    /// True for the event that ends a workflow (the one that carries the signed root).
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Self::WorkflowCompleted(_)
                | Self::WorkflowFailed(_)
                | Self::WorkflowCancelled(_)
                | Self::WorkflowRejected(_)
        )
    }

    /// The Avro record name of the variant; stored in `EventMetadata::event_type`.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::WorkflowAccepted(_) => "WorkflowAccepted",
            Self::WorkflowRejected(_) => "WorkflowRejected",
            Self::TaskScheduled(_) => "TaskScheduled",
            Self::TaskDispatched(_) => "TaskDispatched",
            Self::TaskCompleted(_) => "TaskCompleted",
            Self::TaskFailed(_) => "TaskFailed",
            Self::TaskSkipped(_) => "TaskSkipped",
            Self::WorkflowCompleted(_) => "WorkflowCompleted",
            Self::WorkflowFailed(_) => "WorkflowFailed",
            Self::WorkflowCancelled(_) => "WorkflowCancelled",
            Self::TaskRouted(_) => "TaskRouted",
            Self::TaskResultDiscarded(_) => "TaskResultDiscarded",
            Self::BidPlaced(_) => "BidPlaced",
            Self::AuctionClosed(_) => "AuctionClosed",
            Self::BudgetRequested(_) => "BudgetRequested",
            Self::BudgetSettled(_) => "BudgetSettled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowAccepted {
    pub name: String,
    pub default_zones: Vec<String>,
    pub tasks: Vec<TaskSpec>,
    pub labels: BTreeMap<String, String>,
    /// The policy the processor accepted the workflow under (v6): the hex SHA-256 of a
    /// [`crate::PolicyDocument`] published on `triad.policies`.
    #[serde(default)]
    pub policy_version: Option<String>,
    /// The credits reservation the workflow runs on (v8); none for a workflow without an
    /// account.
    #[serde(default)]
    pub budget: Option<Budget>,
    /// The `triad.models` position of the model view the processor decided with (v9).
    #[serde(default)]
    pub registry_position: Option<i64>,
    /// The tenant that owns the workflow (v10); none through the operator's door.
    #[serde(default)]
    pub tenant: Option<String>,
}

/// A workflow's credits reservation and the worst case of one attempt of each task, which
/// every dispatch is pre-authorised against (docs/credits.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    pub account: String,
    pub reserved_micros: i64,
    pub attempt_micros: BTreeMap<String, i64>,
}

/// A valid submission naming an account, waiting for the ledger to reserve its worst case
/// (v8). The reservation turns it into `WorkflowAccepted`, a refusal into `WorkflowRejected`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetRequested {
    pub budget: Budget,
    pub submission: WorkflowAccepted,
}

/// The ledger burned the workflow's spend and released the rest of its reservation (v8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetSettled {
    pub account: String,
    pub burned_micros: i64,
    pub released_micros: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowRejected {
    pub reason: String,
    pub field: Option<String>,
    /// The `triad.models` position of the model view the processor decided with (v9).
    #[serde(default)]
    pub registry_position: Option<i64>,
    /// The tenant that owns the workflow (v10); none through the operator's door.
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskScheduled {
    pub task_id: String,
    pub attempt: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskDispatched {
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub zone: String,
    pub model_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCompleted {
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub model_id: String,
    pub executor_zone: String,
    /// Empty when the output travels by reference (`output_ref`).
    #[serde(with = "serde_bytes")]
    pub output: Vec<u8>,
    /// The output by reference (claim check), v3.
    #[serde(default)]
    pub output_ref: Option<crate::BlobRef>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micros: i64,
    pub latency_ms: i64,
    /// The executor's signed execution record, copied from its result (v4).
    #[serde(default)]
    pub execution: Option<Box<crate::ExecutionRecord>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFailed {
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub error: String,
    pub retryable: bool,
    /// Set when no executor of this zone picked the attempt up (v2).
    #[serde(default)]
    pub unavailable_zone: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSkipped {
    pub task_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowCompleted {
    pub outputs: BTreeMap<String, serde_bytes::ByteBuf>,
    /// Leaf outputs stored by reference, by task id (v3).
    #[serde(default)]
    pub output_refs: BTreeMap<String, crate::BlobRef>,
    pub total_cost_micros: i64,
    pub models_used: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowFailed {
    pub reason: String,
    pub failed_task: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkflowCancelled {
    pub reason: Option<String>,
}

/// The router's decision for an attempt, recorded from the executor's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRouted {
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub executor_zone: String,
    pub decision: RoutingDecision,
}

/// One bid of the auction an attempt held (v7), whatever its fate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BidPlaced {
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub bid: crate::AuctionBid,
}

/// The award of an attempt's auction (v7); no winner means the router's score chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuctionClosed {
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub winner: Option<String>,
    pub price_micros: Option<i64>,
    pub bids: i32,
    pub reason: String,
}

/// A result for an attempt no longer in flight (a duplicate delivery, late after a timeout
/// or a cancellation). Its spend is recorded here and never billed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskResultDiscarded {
    pub task_id: String,
    pub attempt_id: String,
    pub model_id: String,
    pub cost_micros: i64,
    pub reason: String,
}
