//! TRIAD's development schema registry: a small implementation of the Confluent Schema
//! Registry REST API that keeps its state in a compacted Kafka topic (`_schemas`), like
//! Confluent's, so schema ids in the log keep their meaning across restarts.
//!
//! Production points clients at Confluent Schema Registry, Karapace or Redpanda; nothing in
//! TRIAD depends on this server beyond the public API. See `docs/adr/0003-dev-registry.md`.

pub mod compat;
mod error;
pub mod server;
pub mod state;
pub mod store;

pub use error::{ApiError, Error, Result};
