//! The registry's log: a compacted, single-partition Kafka topic.

use std::time::Duration;

use rdkafka::message::Message;
use triad_config::KafkaConfig;
use triad_kafka::produce::Producer;
use triad_kafka::topics::{Retention, TopicSpec};

use crate::state::{LogRecord, State};
use crate::{ApiError, Error, Result};

#[derive(Debug, Clone)]
pub struct Store {
    kafka: KafkaConfig,
    topic: String,
    producer: Producer,
}

impl Store {
    /// Connects and makes sure the topic exists (one partition, so the log has one order).
    pub async fn open(kafka: &KafkaConfig, topic: &str) -> Result<Self> {
        let spec = TopicSpec {
            name: topic.to_owned(),
            partitions: 1,
            retention: Retention::Compacted,
            purpose: "schema registry state",
        };
        triad_kafka::topics::ensure(kafka, &[spec], false).await?;
        Ok(Self {
            kafka: kafka.clone(),
            topic: topic.to_owned(),
            producer: Producer::new(kafka)?,
        })
    }

    /// Folds the whole topic into a state.
    pub async fn load(&self) -> Result<State> {
        let mut state = State::default();
        let records =
            triad_kafka::consume::read_all(&self.kafka, &self.topic, Duration::from_secs(60))
                .await?;
        let count = records.len();
        for m in records {
            let Some(key) = m.key() else { continue };
            match LogRecord::from_bytes(key, m.payload()) {
                Ok(Some(record)) => state.apply(record),
                Ok(None) => {}
                Err(reason) => {
                    return Err(Error::BadLogRecord {
                        topic: self.topic.clone(),
                        offset: m.offset(),
                        reason,
                    });
                }
            }
        }
        tracing::info!(messaging.destination.name = %self.topic, records = count, "registry state loaded");
        Ok(state)
    }

    /// Appends records and waits until the broker acknowledged all of them.
    pub async fn append(&self, records: &[LogRecord]) -> Result<(), ApiError> {
        for record in records {
            let (key, value) = record
                .to_bytes()
                .map_err(|e| ApiError::Store(e.to_string()))?;
            self.producer
                .send(&self.topic, Some(&key), value.as_deref(), &[])
                .await
                .map_err(|e| ApiError::Store(e.to_string()))?;
        }
        Ok(())
    }
}
