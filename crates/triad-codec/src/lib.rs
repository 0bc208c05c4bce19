//! Avro encoding of TRIAD records in the Confluent wire format.
//!
//! The `.avsc` files in `schemas/` are the source of truth; they are embedded here at compile
//! time. Encoding registers the topic's schema with the schema registry (TopicNameStrategy,
//! see `docs/adr/0001-topic-and-subject-strategy.md`) through `schema_registry_converter` and
//! writes with apache-avro's schema-aware serializer; decoding fetches the writer schema by
//! the id in the 5-byte prefix and resolves it against the compiled-in reader schema, so old
//! records decode with new code (BACKWARD_TRANSITIVE evolution).

mod catalog;
mod codec;
mod error;
pub mod resolve;
pub mod wire;

pub use catalog::{AvroRecord, Catalog, SCHEMA_FILES};
pub use codec::{Codec, CodecOptions, decode_datum, encode_datum};
pub use error::{Error, Result};

/// Caps any single allocation apache-avro makes while decoding (process-wide; the first call
/// wins). `Codec::new` calls it with `codec.max_allocation_bytes`.
pub fn set_max_allocation_bytes(bytes: usize) -> usize {
    apache_avro::util::max_allocation_bytes(bytes)
}
