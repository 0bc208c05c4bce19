//! Records of the broadcast topic `triad.control` (schema `io.triad.v1.ControlRecord`), of
//! `triad.executor-status` (schema `io.triad.v1.ExecutorStatus`) and of the compacted model
//! registry `triad.models` (schema `io.triad.v1.ModelRegistration`) and its heartbeats
//! `triad.model-health` (schema `io.triad.v1.ModelHeartbeat`).

use serde::{Deserialize, Serialize};

use crate::TimestampMicros;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlAction {
    #[serde(rename = "CANCEL")]
    Cancel,
}

/// A message every executor reads: e.g. abort the in-flight calls of a cancelled workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlRecord {
    pub workflow_id: String,
    pub action: ControlAction,
    pub reason: Option<String>,
    pub event_id: String,
    pub issued_at: TimestampMicros,
    pub schema_version: i32,
}

/// Liveness and circuit-breaker transitions of one executor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutorStatus {
    pub zone: String,
    pub executor_id: String,
    pub occurred_at: TimestampMicros,
    pub body: StatusBody,
    pub schema_version: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StatusBody {
    Heartbeat(Heartbeat),
    BreakerTransition(BreakerTransition),
    AdapterInstall(AdapterInstall),
    HealthTransition(HealthTransition),
}

/// A model's health changed after `probes` probes in a row agreed (v3).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthTransition {
    pub model_id: String,
    pub healthy: bool,
    pub reason: String,
    pub probes: i32,
}

/// An executor installed (or refused) a component version registered on `triad.models`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdapterInstall {
    pub model_id: String,
    pub version: i64,
    pub component_sha256: String,
    pub installed: bool,
    pub reason: Option<String>,
}

/// The current registration of a model: the component a `wasm` model runs, carried in the
/// record (`component`) or named by a path every executor can read (`component_path`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRegistration {
    pub model_id: String,
    pub version: i64,
    pub component_sha256: String,
    pub component_size: i64,
    #[serde(with = "serde_bytes")]
    pub component: Option<Vec<u8>>,
    pub component_path: Option<String>,
    pub registered_at: TimestampMicros,
    /// Set for a remote model that registered itself (v2); the component fields are then
    /// empty.
    pub remote: Option<RemoteModel>,
    pub schema_version: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RemoteKind {
    /// OpenAI-compatible chat completions (vLLM, Grok, Kimi).
    #[serde(rename = "OPENAI")]
    Openai,
    /// The Anthropic Messages API.
    #[serde(rename = "ANTHROPIC")]
    Anthropic,
}

/// A model served elsewhere that joined the market: its endpoint and its fingerprint
/// (docs/market.md, "Registering a remote model").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteModel {
    pub kind: RemoteKind,
    pub base_url: String,
    pub model: String,
    /// The name of the variable holding the API key on each executor, never the key.
    pub api_key_env: Option<String>,
    pub zones: Vec<String>,
    pub specialties: Vec<String>,
    pub input_micros_per_1k: i64,
    pub output_micros_per_1k: i64,
    pub latency_p50_ms: i64,
    pub latency_p95_ms: i64,
    pub latency_p99_ms: i64,
    pub max_context: i64,
    pub timeout_ms: i64,
    pub bid_confidence: Option<f64>,
    /// 0: no heartbeats; executors probe the endpoint instead.
    pub heartbeat_every_ms: i64,
    pub registered_by: String,
}

// Floats never NaN here (validated at the edge and by every consumer); equality is that of
// the fields.
impl Eq for RemoteModel {}

/// A self-registered model (or its sidecar) is alive: one record of `triad.model-health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelHeartbeat {
    pub model_id: String,
    pub version: i64,
    pub sender: String,
    pub sent_at: TimestampMicros,
    pub schema_version: i32,
}

/// The largest component a registration carries in the record itself: records stay under
/// the broker's 1 MB limit with room for the other fields.
pub const INLINE_COMPONENT_MAX_BYTES: usize = 768 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub in_flight: i32,
    pub capacity: i32,
    pub models: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum BreakerState {
    #[serde(rename = "CLOSED")]
    Closed,
    #[serde(rename = "OPEN")]
    Open,
    #[serde(rename = "HALF_OPEN")]
    HalfOpen,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerTransition {
    pub model_id: String,
    pub from_state: BreakerState,
    pub to_state: BreakerState,
    pub reason: String,
}
