//! The producer every TRIAD component writes with.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use triad_codec::{AvroRecord, Codec};
use triad_config::KafkaConfig;

use crate::Result;

/// W3C trace context header name.
pub const TRACEPARENT: &str = "traceparent";

/// A fresh W3C `traceparent` (version 00, sampled) for a request entering at the edge.
pub fn new_traceparent() -> String {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = uuid::Uuid::new_v4().simple().to_string();
    let span = span.get(..16).unwrap_or_default();
    format!("00-{trace}-{span}-01")
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// An idempotent, `acks=all` producer. `send` returns only after the broker acknowledged
/// the record, so a caller that then reports success never reports an unwritten record.
#[derive(Clone)]
pub struct Producer {
    inner: FutureProducer,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").finish_non_exhaustive()
    }
}

impl Producer {
    pub fn new(kafka: &KafkaConfig) -> Result<Self> {
        Ok(Self {
            inner: crate::client::producer_config(kafka).create()?,
        })
    }

    /// A producer for logs that are later read back to their high watermark (the event
    /// store): one record per batch. Tansu 0.6.0 reports a partition's high watermark as the
    /// last *batch's* base offset + 1, so the tail records of a multi-record batch would be
    /// invisible to a reader that stops at the watermark (found by the processor's kill -9
    /// test; docs/adr/0005). Requests are still pipelined, so the cost is per-record
    /// framing, not round trips.
    pub fn single_record_batches(kafka: &KafkaConfig) -> Result<Self> {
        Ok(Self {
            inner: crate::client::producer_config(kafka)
                .set("batch.num.messages", "1")
                .create()?,
        })
    }

    /// Sends to the partition the pinned partitioner picks for `key`.
    pub async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Result<Delivered> {
        self.send_to(topic, None, key, payload, headers).await
    }

    /// Sends to an explicit partition when given (the workflow processor writes event-store
    /// partition p from inbox partition p).
    pub async fn send_to(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(&str, Option<&[u8]>)],
    ) -> Result<Delivered> {
        let headers = headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header { key, value: *value })
        });
        let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers);
        if let Some(p) = partition {
            record = record.partition(p);
        }
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        let delivery = self.inner.send(record, Duration::from_secs(30)).await;
        match delivery {
            Ok(d) => {
                tracing::debug!(
                    messaging.destination.name = topic,
                    messaging.destination.partition.id = d.partition,
                    messaging.kafka.offset = d.offset,
                    "record acknowledged"
                );
                Ok(Delivered {
                    partition: d.partition,
                    offset: d.offset,
                })
            }
            Err((error, _)) => Err(error.into()),
        }
    }

    /// Encodes `record` as a value of `topic` with its registered schema and sends it with
    /// `key` (a workflow id), to `partition` when given; returns after the acknowledgement.
    pub async fn send_record<T: AvroRecord>(
        &self,
        codec: &Codec,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        record: &T,
    ) -> Result<Delivered> {
        let bytes = codec.encode(topic, record).await?;
        self.send_to(topic, partition, Some(key.as_bytes()), Some(&bytes), &[])
            .await
    }

    /// Waits for every in-flight record (on revoke and on shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<()> {
        self.inner.flush(timeout).map_err(Into::into)
    }
}
