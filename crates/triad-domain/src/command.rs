//! Records of `triad.workflow-inbox` (schema `io.triad.v1.InboxRecord`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::TimestampMicros;

/// One record of the workflow inbox: commands from the edge and task results from executors
/// share this topic so that their order per workflow is a fact of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboxRecord {
    pub meta: CommandMetadata,
    pub body: InboxBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandMetadata {
    pub command_id: String,
    pub idempotency_key: String,
    pub workflow_id: String,
    pub issued_at: TimestampMicros,
    pub actor: Option<String>,
    /// The tenant the command acts for (v7); none through the operator's door.
    #[serde(default)]
    pub tenant: Option<String>,
    pub schema_version: i32,
}

/// The Avro union of the inbox body. Variant order is the union's branch order.
// A record is decoded, handled and dropped one at a time; boxing the result variant would
// complicate every construction site for no measurable gain.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum InboxBody {
    SubmitWorkflow(SubmitWorkflow),
    CancelWorkflow(CancelWorkflow),
    TaskResultReported(TaskResultReported),
    TaskTimerFired(TaskTimerFired),
    LedgerReply(LedgerReply),
}

impl InboxBody {
    /// The Avro record name of the variant, used in logs and as `event_type`-like labels.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::SubmitWorkflow(_) => "SubmitWorkflow",
            Self::CancelWorkflow(_) => "CancelWorkflow",
            Self::TaskResultReported(_) => "TaskResultReported",
            Self::TaskTimerFired(_) => "TaskTimerFired",
            Self::LedgerReply(_) => "LedgerReply",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitWorkflow {
    pub name: String,
    pub default_zones: Vec<String>,
    pub tasks: Vec<TaskSpec>,
    pub labels: BTreeMap<String, String>,
    /// The credits account that pays (v6); the workflow then waits for a reservation.
    #[serde(default)]
    pub account: Option<String>,
}

/// The credits ledger's answer about a workflow's reservation (v6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerReply {
    pub account: String,
    pub outcome: LedgerOutcome,
    pub amount_micros: i64,
    pub burned_micros: i64,
    pub released_micros: i64,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LedgerOutcome {
    #[serde(rename = "RESERVED")]
    Reserved,
    #[serde(rename = "REFUSED")]
    Refused,
    #[serde(rename = "SETTLED")]
    Settled,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub id: String,
    #[serde(with = "serde_bytes")]
    pub prompt: Vec<u8>,
    pub model_hint: Option<String>,
    pub specialties: Vec<String>,
    pub zones: Vec<String>,
    pub depends_on: Vec<String>,
    pub max_tokens: i32,
    pub timeout_ms: i64,
    pub max_attempts: i32,
    pub auction: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelWorkflow {
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::upper_case_acronyms)]
pub enum TaskOutcome {
    #[serde(rename = "SUCCEEDED")]
    Succeeded,
    #[serde(rename = "FAILED")]
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResultReported {
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub model_id: String,
    pub executor_zone: String,
    pub outcome: TaskOutcome,
    #[serde(with = "serde_bytes")]
    pub output: Option<Vec<u8>>,
    /// The output by reference when it is above `blobs.inline_max_bytes` (v3).
    #[serde(default)]
    pub output_ref: Option<crate::BlobRef>,
    pub error: Option<String>,
    pub retryable: bool,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micros: i64,
    pub latency_ms: i64,
    /// How the router chose, and every model call of the attempt (v2).
    #[serde(default)]
    pub routing: Option<RoutingDecision>,
    /// The executor's signed execution record, for a success (v4).
    #[serde(default)]
    pub execution: Option<Box<ExecutionRecord>>,
}

/// An executor's signed statement of where and how an attempt ran: its node and signing
/// key, its zone, the model and where that model processed the data, and the hashes of what
/// went in and came out (docs/audit.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutionRecord {
    pub node_id: String,
    pub key_id: String,
    pub executor_zone: String,
    pub model_id: String,
    pub model_zones: Vec<String>,
    pub prompt_sha256: String,
    pub inputs_sha256: String,
    pub output_sha256: String,
    pub signature: String,
}

/// The router's decision and the model calls behind one attempt's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RoutingDecision {
    pub model_id: String,
    pub score: f64,
    pub reason: String,
    pub alternatives: Vec<String>,
    pub calls: Vec<ModelCall>,
    /// The auction that chose the model, for tasks that asked for one (inbox v5). The event
    /// store records it as `BidPlaced`/`AuctionClosed` events instead.
    #[serde(default)]
    pub auction: Option<Auction>,
}

/// An attempt's auction (docs/market.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Auction {
    pub winner: Option<String>,
    pub reason: String,
    pub bids: Vec<AuctionBid>,
}

/// One bid and its fate: `WON`, `ACCEPTED`, `MALFORMED`, `LATE`, `DECLINED`, `OVER_SLA` or
/// `BELOW_FLOOR`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuctionBid {
    pub model_id: String,
    pub price_micros: Option<i64>,
    pub latency_ms: Option<i64>,
    pub confidence: Option<f64>,
    pub standing: f64,
    pub status: String,
    pub reason: String,
}

/// One call to a model: real spend whether or not its result is used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelCall {
    pub model_id: String,
    pub ok: bool,
    pub error: Option<String>,
    pub input_tokens: i64,
    pub output_tokens: i64,
    pub cost_micros: i64,
    pub latency_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimerKind {
    /// The task's SLA passed without a result.
    #[serde(rename = "DEADLINE")]
    Deadline,
    /// No executor of the zone was alive to pick the task up.
    #[serde(rename = "UNCLAIMED")]
    Unclaimed,
}

/// A timer of a dispatched attempt expired. Its command id derives from (attempt, kind), so
/// a timer fired twice is one input applied once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskTimerFired {
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub kind: TimerKind,
    pub zone: String,
}
