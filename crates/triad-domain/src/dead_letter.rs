//! The dead-letter record of `triad.dlq` (schema `io.triad.v1.DeadLetter`).

use serde::{Deserialize, Serialize};

use crate::TimestampMicros;

/// A record of an edge topic that could not be processed. It keeps the original key, value
/// and headers byte for byte so `triad dlq redrive` can put it back unchanged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub consumer_group: String,
    #[serde(with = "serde_bytes")]
    pub key: Option<Vec<u8>>,
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
    pub headers: Vec<DeadLetterHeader>,
    pub error_kind: String,
    pub error: String,
    pub failed_at: TimestampMicros,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterHeader {
    pub key: String,
    #[serde(with = "serde_bytes")]
    pub value: Option<Vec<u8>>,
}
