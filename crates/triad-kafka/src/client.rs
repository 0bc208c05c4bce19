//! librdkafka settings shared by every TRIAD client.

use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use triad_config::KafkaConfig;

/// The context of readers that consume to the end of a partition (`enable.partition.eof`).
/// librdkafka now and then reports reaching the end as a client-level error too ("Global
/// error: PartitionEOF"), besides the partition's own event the reader acts on; that copy
/// means nothing and is logged at debug. Every other client error is logged as rdkafka's
/// default context does, at error.
#[derive(Debug, Default, Clone, Copy)]
pub struct ReaderContext;

impl rdkafka::client::ClientContext for ReaderContext {
    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(%error, reason, "librdkafka: end of partition");
        } else {
            tracing::error!(%error, reason, "librdkafka client error");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReaderContext {}

/// A consumer of [`reader_config`] with [`ReaderContext`].
pub type Reader = rdkafka::consumer::StreamConsumer<ReaderContext>;

/// A producer that never loses or duplicates an acknowledged write on retry: idempotent,
/// `acks=all`, and partitioned by murmur2 like the Java client, so any Kafka client computes
/// the same partition for a workflow id.
pub fn producer_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", &kafka.client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    c
}

/// A consumer in `group` that stores offsets only when the code says the work is committed
/// (`enable.auto.offset.store=false`); stored offsets are committed in the background and
/// synchronously on revoke and shutdown.
pub fn consumer_config(kafka: &KafkaConfig, group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", &kafka.client_id)
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "false")
        // Kafka's default. Shorter wedges Tansu 0.6 groups of static members (ADR 0007 §3): a
        // restarted member takes its old member id back without its last-contact time being
        // refreshed, so if that time is older than the session timeout its first heartbeat
        // removes the member while it stays the leader; a kill before it rejoins leaves the
        // group led by a member that no longer exists, and nothing ever expires it. A
        // restart within the timeout never goes through that window.
        .set("session.timeout.ms", "45000")
        .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string());
    c
}

/// A reader that follows a topic in the background, off any task's critical path: no
/// end-of-partition events, and the longer `background_fetch_wait_max_ms`.
pub fn follower_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = reader_config(kafka);
    c.set("enable.partition.eof", "false").set(
        "fetch.wait.max.ms",
        kafka.background_fetch_wait_max_ms.to_string(),
    );
    c
}

/// A consumer without a group, for reading a topic from the start (registry state, DLQ
/// listing, audits). It never commits.
pub fn reader_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &kafka.bootstrap_servers)
        .set("client.id", &kafka.client_id)
        .set("group.id", format!("{}-reader", kafka.group_prefix))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", kafka.fetch_wait_max_ms.to_string());
    c
}
