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

    /// Hands a record to librdkafka now and returns a future of its acknowledgement, so a
    /// caller can enqueue many records in order and wait for them later (the processor
    /// pipelines inputs this way; the idempotent producer keeps their order per partition).
    /// Waits only while librdkafka's queue is full.
    pub async fn enqueue(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &[u8],
        payload: &[u8],
    ) -> Result<impl std::future::Future<Output = Result<Delivered>> + Send + 'static> {
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic)
                .key(key)
                .payload(payload);
            if let Some(p) = partition {
                record = record.partition(p);
            }
            match self.inner.send_result(record) {
                Ok(delivery) => {
                    return Ok(async move {
                        match delivery.await {
                            Ok(Ok(d)) => Ok(Delivered {
                                partition: d.partition,
                                offset: d.offset,
                            }),
                            Ok(Err((error, _))) => Err(error.into()),
                            // The producer was dropped before delivery.
                            Err(_) => {
                                Err(crate::Error::Kafka(rdkafka::error::KafkaError::Canceled))
                            }
                        }
                    });
                }
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    _,
                )) => {
                    // Backpressure from librdkafka's local queue: give deliveries a moment.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                Err((error, _)) => return Err(error.into()),
            }
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

/// Kafka's murmur2 (as the Java client and librdkafka's `murmur2_random` compute it).
pub fn murmur2(data: &[u8]) -> u32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if let Some(first) = rest.first() {
        h ^= u32::from(*first);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

/// The partition of `key` among `partitions`, as every Kafka client pinned to murmur2
/// computes it: the same workflow id lands on the same partition number in every topic.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    let positive = murmur2(key) & 0x7fff_ffff;
    i32::try_from(positive % u32::try_from(partitions.max(1)).unwrap_or(1)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Reference values from Kafka's own Utils.murmur2 tests (as signed ints).
        assert_eq!(murmur2(b"21") as i32, -973_932_308);
        assert_eq!(murmur2(b"foobar") as i32, -790_332_482);
        assert_eq!(murmur2(b"a-little-bit-long-string") as i32, -985_981_536);
        assert_eq!(
            murmur2(b"a-little-bit-longer-string") as i32,
            -1_486_304_829
        );
        assert_eq!(
            murmur2(b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8") as i32,
            -58_897_971
        );
        assert_eq!(murmur2(b"abc") as i32, 479_470_107);
    }
}
