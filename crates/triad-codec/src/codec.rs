//! Encoding and decoding against the schema registry.

use std::collections::HashMap;
use std::io::Cursor;
use std::sync::Mutex;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::SrSettings;
use schema_registry_converter::schema_registry_common::{
    SchemaType, SubjectNameStrategy, SuppliedSchema,
};

use crate::resolve::resolve;
use crate::{AvroRecord, Catalog, Error, Result, wire};

/// Options of the codec.
#[derive(Debug, Clone)]
pub struct CodecOptions {
    /// Base URL of a Confluent-compatible schema registry.
    pub registry_url: String,
    /// Upper bound on any single allocation while decoding (apache-avro's limit), so a record
    /// that claims a 4 GiB string cannot exhaust memory.
    pub max_allocation_bytes: usize,
}

/// Encodes records for a topic and decodes them back into Rust types.
pub struct Codec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    catalog: Catalog,
    same_layout: Mutex<HashMap<u32, bool>>,
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("catalog", &self.catalog)
            .finish_non_exhaustive()
    }
}

impl Codec {
    pub fn new(options: &CodecOptions) -> Result<Self> {
        // apache-avro keeps this limit process-wide and takes only the first value set.
        crate::set_max_allocation_bytes(options.max_allocation_bytes);
        let settings = SrSettings::new_builder(options.registry_url.clone())
            .no_proxy()
            .build()
            .map_err(Error::Registry)?;
        Ok(Self {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings),
            catalog: Catalog::load()?,
            same_layout: Mutex::default(),
        })
    }

    /// The TopicNameStrategy subject of a topic's values.
    pub fn value_subject(topic: &str) -> String {
        format!("{topic}-value")
    }

    /// Encodes `record` as a value of `topic`, registering `T`'s schema under the topic's
    /// value subject on first use (the registry answers with the existing id when the schema
    /// is already there, and refuses it when it breaks the subject's compatibility level).
    pub async fn encode<T: AvroRecord>(&self, topic: &str, record: &T) -> Result<Vec<u8>> {
        let strategy = Self::strategy::<T>(topic);
        self.encoder
            .encode_struct(record, &strategy)
            .await
            .map_err(Error::Registry)
    }

    /// The schema id `T` has under `topic`'s value subject (registering it if needed).
    pub async fn schema_id<T: AvroRecord>(&self, topic: &str) -> Result<u32> {
        let schema = self
            .encoder
            .get_schema_and_id(&Self::value_subject(topic), Self::strategy::<T>(topic))
            .await
            .map_err(Error::Registry)?;
        Ok(schema.id)
    }

    fn strategy<T: AvroRecord>(topic: &str) -> SubjectNameStrategy {
        let supplied = SuppliedSchema::new(
            Some(T::NAME.to_owned()),
            SchemaType::Avro,
            T::AVSC.to_owned(),
        );
        SubjectNameStrategy::TopicNameStrategyWithSchema(topic.to_owned(), false, supplied)
    }

    /// Decodes a framed record into `T`: the writer schema comes from the registry by the id
    /// in the prefix (cached), and is resolved against `T`'s compiled-in reader schema.
    pub async fn decode<T: AvroRecord>(&self, bytes: Option<&[u8]>) -> Result<T> {
        let bytes = bytes.ok_or(Error::Null)?;
        let (schema_id, body) = wire::split(bytes)?;
        let writer = self
            .decoder
            .get_schema(schema_id)
            .await
            .map_err(Error::Registry)?;
        let reader = self.catalog.schema::<T>()?;
        let same_layout = self.same_layout(schema_id, &writer.parsed, reader);
        decode_datum(
            schema_id,
            &writer.parsed,
            (!same_layout).then_some(reader),
            body,
        )
    }

    /// Whether a writer schema has the reader's binary layout (equal Parsing Canonical Forms),
    /// so resolution can be skipped; remembered per schema id.
    fn same_layout(&self, schema_id: u32, writer: &Schema, reader: &Schema) -> bool {
        let mut cache = self
            .same_layout
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *cache
            .entry(schema_id)
            .or_insert_with(|| writer.canonical_form() == reader.canonical_form())
    }
}

/// Writes `record` as an Avro datum of `schema` (no framing). The serializer walks the schema,
/// so a Rust type that disagrees with its `.avsc` fails here rather than writing bad bytes.
pub fn encode_datum<T: AvroRecord>(schema: &Schema, record: &T) -> Result<Vec<u8>> {
    GenericDatumWriter::builder(schema)
        .build()
        .and_then(|w| w.write_ser_to_vec(record))
        .map_err(|source| Error::Encode {
            name: T::NAME,
            source,
        })
}

/// Reads an Avro datum written with `writer` into `T`. With `reader` set, the value is first
/// resolved to it by the spec's rules (defaults fill fields the writer lacked, fields the
/// reader lacks are dropped, union branches match by name); `None` means the writer schema
/// has the reader's layout. The whole body must be consumed.
pub fn decode_datum<T: AvroRecord>(
    schema_id: u32,
    writer: &Schema,
    reader: Option<&Schema>,
    body: &[u8],
) -> Result<T> {
    let decode = |source| Error::Decode { schema_id, source };
    let mut cursor = Cursor::new(body);
    let value = GenericDatumReader::builder(writer)
        .build()
        .and_then(|r| r.read_value(&mut cursor))
        .map_err(decode)?;
    let consumed = usize::try_from(cursor.position()).unwrap_or(usize::MAX);
    if consumed != body.len() {
        return Err(Error::TrailingBytes {
            schema_id,
            extra: body.len().saturating_sub(consumed),
        });
    }
    let value = match reader {
        Some(reader) => {
            resolve(value, writer, reader).map_err(|source| Error::Resolve { schema_id, source })?
        }
        None => value,
    };
    apache_avro::from_value::<T>(&value).map_err(decode)
}
