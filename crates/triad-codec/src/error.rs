use schema_registry_converter::error::SRCError;

/// Errors of encoding and decoding. [`Error::is_undecodable`] separates a bad record (it goes
/// to the dead-letter topic) from a failure of the registry (retry later, do not dead-letter).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("record is {len} bytes, shorter than the 5-byte Confluent prefix")]
    Truncated { len: usize },
    #[error("record starts with magic byte {found:#04x}, expected 0x00 (Confluent wire format)")]
    BadMagic { found: u8 },
    #[error("record is null (a tombstone) where a value is required")]
    Null,
    #[error("schema {name} does not parse: {source}")]
    Schema {
        name: &'static str,
        #[source]
        source: apache_avro::Error,
    },
    #[error("record type {name} has no schema in the catalog")]
    UnknownRecord { name: &'static str },
    #[error("schema registry: {0}")]
    Registry(SRCError),
    #[error("avro body does not decode with writer schema id {schema_id}: {source}")]
    Decode {
        schema_id: u32,
        #[source]
        source: apache_avro::Error,
    },
    #[error("writer schema id {schema_id} does not resolve to the reader schema {source}")]
    Resolve {
        schema_id: u32,
        source: crate::resolve::ResolveError,
    },
    #[error("avro body of writer schema id {schema_id} has {extra} trailing bytes")]
    TrailingBytes { schema_id: u32, extra: usize },
    #[error("record does not encode with schema {name}: {source}")]
    Encode {
        name: &'static str,
        #[source]
        source: apache_avro::Error,
    },
}

impl Error {
    /// True when the bytes themselves are bad, so retrying cannot help: the record belongs in
    /// the dead-letter topic. Registry errors that may be transient return false.
    pub fn is_undecodable(&self) -> bool {
        match self {
            Self::Truncated { .. }
            | Self::BadMagic { .. }
            | Self::Null
            | Self::Decode { .. }
            | Self::Resolve { .. }
            | Self::TrailingBytes { .. } => true,
            // An unknown schema id is a permanent property of the record; an unreachable
            // registry is not.
            Self::Registry(e) => !e.retriable,
            Self::Schema { .. } | Self::UnknownRecord { .. } | Self::Encode { .. } => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
