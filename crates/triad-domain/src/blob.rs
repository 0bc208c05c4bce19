//! The claim check's reference (schema record `io.triad.v1.BlobRef`): a payload above
//! `blobs.inline_max_bytes` travels as this reference, and the content lives in a
//! content-addressed blob store (`triad-store`), so Kafka's message size limit never breaks a
//! workflow.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct BlobRef {
    /// Lower-case hex SHA-256 of the content: the store's key and the reader's check.
    pub sha256: String,
    pub size: i64,
    /// Where the store keeps it, e.g. `postgres:triad_blobs/<sha256>`.
    pub uri: String,
}
