//! The dead-letter topic: writing, listing and redriving.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_domain::DeadLetter;

use crate::Result;
use crate::produce::{Delivered, Producer};

/// Header names on every dead-letter record, so tools that do not decode Avro (kcat) still
/// see where it came from and why.
pub const H_SOURCE_TOPIC: &str = "triad.dlq.source-topic";
pub const H_SOURCE_PARTITION: &str = "triad.dlq.source-partition";
pub const H_SOURCE_OFFSET: &str = "triad.dlq.source-offset";
pub const H_ERROR: &str = "triad.dlq.error";

/// Writes dead letters and waits for the broker's acknowledgement.
#[derive(Debug, Clone)]
pub struct DeadLetterWriter {
    producer: Producer,
    codec: Arc<Codec>,
    topic: String,
}

impl DeadLetterWriter {
    pub fn new(producer: Producer, codec: Arc<Codec>, topic: &str) -> Self {
        Self {
            producer,
            codec,
            topic: topic.to_owned(),
        }
    }

    pub async fn write(
        &self,
        message: &OwnedMessage,
        group: &str,
        kind: &str,
        reason: &str,
    ) -> Result<Delivered> {
        let letter = crate::consume::dead_letter_for(message, group, kind, reason);
        tracing::warn!(
            messaging.destination.name = message.topic(),
            messaging.destination.partition.id = message.partition(),
            messaging.kafka.offset = message.offset(),
            error.kind = kind,
            error = reason,
            "record dead-lettered"
        );
        self.write_letter(&letter).await
    }

    pub async fn write_letter(&self, letter: &DeadLetter) -> Result<Delivered> {
        let value = self.codec.encode(&self.topic, letter).await?;
        let partition = letter.source_partition.to_string();
        let offset = letter.source_offset.to_string();
        let headers = [
            (H_SOURCE_TOPIC, Some(letter.source_topic.as_bytes())),
            (H_SOURCE_PARTITION, Some(partition.as_bytes())),
            (H_SOURCE_OFFSET, Some(offset.as_bytes())),
            (H_ERROR, Some(letter.error.as_bytes())),
        ];
        self.producer
            .send(&self.topic, letter.key.as_deref(), Some(&value), &headers)
            .await
    }
}

/// A dead letter with its own offset in the DLQ topic.
#[derive(Debug, Clone, PartialEq)]
pub struct Listed {
    pub offset: i64,
    pub letter: DeadLetter,
}

/// Every dead letter currently in `topic`.
pub async fn list(kafka: &KafkaConfig, codec: &Codec, topic: &str) -> Result<Vec<Listed>> {
    let mut out = Vec::new();
    for m in crate::consume::read_all(kafka, topic, Duration::from_secs(30)).await? {
        let letter: DeadLetter = codec.decode(m.payload()).await?;
        out.push(Listed {
            offset: m.offset(),
            letter,
        });
    }
    Ok(out)
}

/// Puts a dead letter's original record back on its source topic, byte for byte (same key,
/// value and headers), so it is processed again after the operator fixed the cause.
pub async fn redrive(producer: &Producer, letter: &DeadLetter) -> Result<Delivered> {
    let headers: Vec<(&str, Option<&[u8]>)> = letter
        .headers
        .iter()
        .map(|h| (h.key.as_str(), h.value.as_deref()))
        .collect();
    producer
        .send(
            &letter.source_topic,
            letter.key.as_deref(),
            letter.value.as_deref(),
            &headers,
        )
        .await
}
