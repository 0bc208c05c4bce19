use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error(transparent)]
    Codec(#[from] triad_codec::Error),
    #[error(
        "topic {topic} exists with {actual} partitions but the catalogue says {expected}; \
         refusing to change the partition count of a live topic (it would move workflows \
         between partitions)"
    )]
    PartitionMismatch {
        topic: String,
        expected: i32,
        actual: i32,
    },
    #[error(
        "{topic}/{partition} starts at offset {low}, but reading must start at {from}: the \
         records before it are gone (retention or a broker fault); refusing to fold a partial \
         log"
    )]
    LogStartMoved {
        topic: String,
        partition: i32,
        from: i64,
        low: i64,
    },
    #[error("creating topic {topic}: {reason}")]
    CreateTopic { topic: String, reason: String },
    #[error(
        "partition {partition} of event-store topic {topic} is halted at offset {offset}: {reason}. \
         The record cannot be skipped (it would corrupt state and the chain of custody); \
         inspect it with kcat and repair before restarting"
    )]
    Halted {
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error(
        "writes for {topic}/{partition}@{offset} were not acknowledged: {reason}; stopping so \
         the processor restarts and recovers from the log"
    )]
    Delivery {
        topic: String,
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error("timed out after {0:?} waiting for {1}")]
    Timeout(std::time::Duration, &'static str),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
