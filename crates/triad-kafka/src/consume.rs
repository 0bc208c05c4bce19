//! Consumers: a group consumer that stores an offset only after its record's work is
//! committed, with the dead-letter / halt policy for undecodable records, and a reader that
//! loads a whole topic (registry state, DLQ listing, audits).

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesOrdered;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;
use triad_config::KafkaConfig;
use triad_domain::{DeadLetter, DeadLetterHeader};

use crate::{Error, Result};

/// What to do with a record that cannot be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnUndecodable {
    /// Edge topics (commands, task results): write it to `triad.dlq` with the reason and move
    /// on, so one bad record never blocks a partition.
    DeadLetter,
    /// The event store: stop the partition loudly. Skipping an event would corrupt state and
    /// the chain of custody.
    Halt,
}

/// The result of handling one record.
pub enum Outcome {
    /// The work is committed; the offset may be stored.
    Done,
    /// The bytes are bad; retrying cannot help.
    Undecodable { kind: &'static str, reason: String },
    /// Given up on during shutdown: not done, its offset must not be stored.
    Abandoned,
    /// Decided, with writes in flight: the offset is stored when the future completes
    /// (in input order). An error stops the consumer: in-memory state already moved on, so
    /// the process must restart and recover from the log.
    Deferred(Pending),
}

/// The completion of a deferred record's writes.
pub type Pending =
    std::pin::Pin<Box<dyn Future<Output = std::result::Result<(), String>> + Send + 'static>>;

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Done => f.write_str("Done"),
            Self::Undecodable { kind, reason } => f
                .debug_struct("Undecodable")
                .field("kind", kind)
                .field("reason", reason)
                .finish(),
            Self::Abandoned => f.write_str("Abandoned"),
            Self::Deferred(_) => f.write_str("Deferred"),
        }
    }
}

/// The group consumer's context: on revoke it flushes the producer whose writes belong to
/// the revoked partitions' work and commits the stored offsets, so the next owner starts
/// exactly after the last completed record and sees every write that preceded it.
#[derive(Debug, Default)]
pub struct GroupContext {
    group: String,
    flush_on_revoke: Option<crate::produce::Producer>,
    rebalances: Option<Arc<AtomicU64>>,
}

impl GroupContext {
    pub fn new(group: &str, flush_on_revoke: Option<crate::produce::Producer>) -> Self {
        Self {
            group: group.to_owned(),
            flush_on_revoke,
            rebalances: None,
        }
    }
}

impl rdkafka::client::ClientContext for GroupContext {}

impl rdkafka::consumer::ConsumerContext for GroupContext {
    fn pre_rebalance(
        &self,
        consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        match rebalance {
            rdkafka::consumer::Rebalance::Revoke(partitions) => {
                if let Some(producer) = &self.flush_on_revoke
                    && let Err(error) = producer.flush(Duration::from_secs(10))
                {
                    tracing::error!(%error, messaging.consumer.group.name = %self.group, "flushing the producer on revoke failed");
                }
                if let Err(error) = commit(consumer) {
                    tracing::warn!(%error, messaging.consumer.group.name = %self.group, "committing offsets on revoke failed");
                }
                tracing::info!(messaging.consumer.group.name = %self.group, partitions = partitions.count(), "partitions revoked");
            }
            rdkafka::consumer::Rebalance::Assign(partitions) => {
                if let Some(r) = &self.rebalances {
                    r.fetch_add(1, Ordering::SeqCst);
                }
                tracing::info!(messaging.consumer.group.name = %self.group, partitions = partitions.count(), "partitions assigned");
            }
            rdkafka::consumer::Rebalance::Error(error) => {
                tracing::warn!(%error, messaging.consumer.group.name = %self.group, "rebalance error");
            }
        }
    }
}

/// What `run_group` consumes and how.
#[derive(Debug)]
pub struct Group<'a> {
    pub kafka: &'a KafkaConfig,
    /// The consumer group id.
    pub name: &'a str,
    pub topics: &'a [&'a str],
    pub on_undecodable: OnUndecodable,
    /// Where `OnUndecodable::DeadLetter` writes; without it an undecodable record halts.
    pub dlq: Option<&'a crate::dlq::DeadLetterWriter>,
    /// The producer of the handler's writes, flushed when partitions are revoked.
    pub flush_on_revoke: Option<crate::produce::Producer>,
    /// Static group membership (`group.instance.id`, KIP-345): a restarted instance takes
    /// its partitions back at once instead of waiting out the dead member's session.
    pub instance_id: Option<String>,
    /// Counts assignments: a stateful handler compares it with the count under which it
    /// loaded a partition's state, and reloads after any rebalance (another owner may have
    /// written meanwhile).
    pub rebalances: Option<Arc<AtomicU64>>,
}

impl<'a> Group<'a> {
    /// The usual worker of an edge topic: undecodable records to `dlq`, `producer` flushed
    /// on revoke, and static membership (`<name>-<instance>`) when `kafka.static_membership`.
    pub fn worker(
        kafka: &'a KafkaConfig,
        name: &'a str,
        topics: &'a [&'a str],
        dlq: &'a crate::dlq::DeadLetterWriter,
        producer: &crate::produce::Producer,
        instance: u32,
    ) -> Self {
        Self {
            kafka,
            name,
            topics,
            on_undecodable: OnUndecodable::DeadLetter,
            dlq: Some(dlq),
            flush_on_revoke: Some(producer.clone()),
            instance_id: kafka
                .static_membership
                .then(|| format!("{name}-{instance}")),
            rebalances: None,
        }
    }

    /// Counts assignments in `rebalances` (see [`Group::rebalances`]).
    pub fn counting_rebalances(mut self, rebalances: Arc<AtomicU64>) -> Self {
        self.rebalances = Some(rebalances);
        self
    }
}

/// Runs `handler` over the records of `topics` in consumer group `group` until `cancel`.
/// Offsets are stored only after `handler` returned `Done` (or the dead letter was
/// acknowledged); the stored offsets are committed on shutdown. A handler error (e.g. the
/// database is down) is retried with backoff on the same record: nothing is skipped.
pub async fn run_group<F, Fut, E>(
    options: Group<'_>,
    cancel: CancellationToken,
    mut handler: F,
) -> Result<()>
where
    F: FnMut(OwnedMessage) -> Fut,
    Fut: Future<Output = std::result::Result<Outcome, E>>,
    E: std::fmt::Display,
{
    let Group {
        kafka,
        name: group,
        topics,
        on_undecodable: policy,
        dlq,
        flush_on_revoke,
        instance_id,
        rebalances,
    } = options;
    let mut config = crate::client::consumer_config(kafka, group);
    if let Some(id) = &instance_id {
        config.set("group.instance.id", id);
    }
    let mut context = GroupContext::new(group, flush_on_revoke);
    context.rebalances = rebalances;
    let consumer: StreamConsumer<GroupContext> = config.create_with_context(context)?;
    consumer.subscribe(topics)?;
    let mut stream = consumer.stream();
    // Deferred completions, in input order: an offset is stored only when its record's
    // writes and those of every record before it are acknowledged.
    let mut pending: FuturesOrdered<Completion> = FuturesOrdered::new();
    let result = loop {
        let message = tokio::select! {
            () = cancel.cancelled() => break Ok(()),
            Some((topic, partition, offset, done)) = pending.next(), if !pending.is_empty() => {
                match done {
                    Ok(()) => consumer.store_offset(&topic, partition, offset)?,
                    Err(reason) => break Err(Error::Delivery { topic, partition, offset, reason }),
                }
                continue;
            }
            m = stream.next(), if pending.len() < MAX_PENDING => m,
        };
        let Some(message) = message else { break Ok(()) };
        let message = match message {
            Ok(m) => m.detach(),
            // A fatal error (e.g. this static member was fenced) ends the consumer for good:
            // stop, so the process exits and is restarted, rather than idle while owning
            // partitions nobody reads.
            Err(error @ rdkafka::error::KafkaError::MessageConsumptionFatal(_)) => {
                tracing::error!(%error, messaging.consumer.group.name = group, "fatal kafka consumer error; stopping");
                break Err(error.into());
            }
            Err(error) => {
                tracing::warn!(%error, messaging.consumer.group.name = group, "kafka consumer error");
                continue;
            }
        };
        let mut backoff = Duration::from_millis(100);
        let outcome = loop {
            match handler(message.clone()).await {
                Ok(outcome) => break outcome,
                Err(error) => {
                    tracing::warn!(
                        %error,
                        messaging.destination.name = message.topic(),
                        messaging.destination.partition.id = message.partition(),
                        messaging.kafka.offset = message.offset(),
                        "handler failed; retrying the same record"
                    );
                    tokio::select! {
                        () = cancel.cancelled() => return commit_and_close(&consumer),
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        };
        let done: Pending = match outcome {
            Outcome::Abandoned => break Ok(()),
            Outcome::Deferred(future) => future,
            Outcome::Done => Box::pin(std::future::ready(Ok(()))),
            Outcome::Undecodable { kind, reason } => match (policy, dlq) {
                (OnUndecodable::DeadLetter, Some(dlq)) => {
                    dlq.write(&message, group, kind, &reason).await?;
                    Box::pin(std::future::ready(Ok(())))
                }
                _ => {
                    tracing::error!(
                        messaging.destination.name = message.topic(),
                        messaging.destination.partition.id = message.partition(),
                        messaging.kafka.offset = message.offset(),
                        error = %reason,
                        "undecodable event-store record; partition halted"
                    );
                    break Err(Error::Halted {
                        topic: message.topic().to_owned(),
                        partition: message.partition(),
                        offset: message.offset(),
                        reason,
                    });
                }
            },
        };
        let (topic, partition, offset) = (
            message.topic().to_owned(),
            message.partition(),
            message.offset(),
        );
        pending.push_back(Box::pin(
            async move { (topic, partition, offset, done.await) },
        ));
    };
    // Drain: what was decided gets its acknowledgements and its offsets stored.
    while let Some((topic, partition, offset, done)) = pending.next().await {
        if done.is_err() {
            break;
        }
        consumer.store_offset(&topic, partition, offset)?;
    }
    commit_and_close(&consumer)?;
    result
}

/// Records decided but not yet acknowledged, at most.
const MAX_PENDING: usize = 1000;

type Completion = std::pin::Pin<
    Box<dyn Future<Output = (String, i32, i64, std::result::Result<(), String>)> + Send>,
>;

fn commit_and_close(consumer: &StreamConsumer<GroupContext>) -> Result<()> {
    commit(consumer)
}

/// Commits the stored offsets now (shutdown of a pool).
pub fn commit_now(consumer: &StreamConsumer<GroupContext>) -> Result<()> {
    commit(consumer)
}

fn commit<C: Consumer<GroupContext>>(consumer: &C) -> Result<()> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) => Ok(()),
        // Nothing stored since the last commit.
        Err(rdkafka::error::KafkaError::ConsumerCommit(
            rdkafka::error::RDKafkaErrorCode::NoOffset,
        )) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// The headers of a message as owned pairs.
pub fn headers_of(message: &OwnedMessage) -> Vec<DeadLetterHeader> {
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| DeadLetterHeader {
                    key: h.key.to_owned(),
                    value: h.value.map(<[u8]>::to_vec),
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A dead letter describing `message`.
pub fn dead_letter_for(
    message: &OwnedMessage,
    group: &str,
    kind: &str,
    reason: &str,
) -> DeadLetter {
    DeadLetter {
        source_topic: message.topic().to_owned(),
        source_partition: message.partition(),
        source_offset: message.offset(),
        consumer_group: group.to_owned(),
        key: message.key().map(<[u8]>::to_vec),
        value: message.payload().map(<[u8]>::to_vec),
        headers: headers_of(message),
        error_kind: kind.to_owned(),
        error: reason.to_owned(),
        failed_at: crate::now_micros(),
    }
}

/// Reads every record of `topic` present when called (up to each partition's high
/// watermark), without a consumer group.
pub async fn read_all(
    kafka: &KafkaConfig,
    topic: &str,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>> {
    read_partitions(kafka, topic, None, timeout).await
}

/// Like [`read_all`], for one partition (`Some(p)`) or all (`None`).
pub async fn read_partitions(
    kafka: &KafkaConfig,
    topic: &str,
    only: Option<i32>,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>> {
    read_from(kafka, topic, only, 0, timeout).await
}

/// Reads partition `partition` of `topic` from offset `from` to the high watermark seen when
/// it starts: the tail the processor folds after its snapshots. A log whose first offset is
/// past `from` is an error, never a silently shorter fold (the event store keeps everything;
/// Tansu 0.6 on sqlite has been seen to move the log start after a restart, ADR 0007 §4).
pub async fn read_partition_from(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    from: i64,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>> {
    let consumer: crate::client::Reader =
        crate::client::reader_config(kafka).create_with_context(crate::client::ReaderContext)?;
    let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
    if low > from && high > low {
        return Err(Error::LogStartMoved {
            topic: topic.to_owned(),
            partition,
            from,
            low,
        });
    }
    drop(consumer);
    read_from(kafka, topic, Some(partition), from, timeout).await
}

async fn read_from(
    kafka: &KafkaConfig,
    topic: &str,
    only: Option<i32>,
    from: i64,
    timeout: Duration,
) -> Result<Vec<OwnedMessage>> {
    let consumer: crate::client::Reader =
        crate::client::reader_config(kafka).create_with_context(crate::client::ReaderContext)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .filter(|p| only.is_none_or(|o| o == *p))
        .collect();
    let mut remaining: HashMap<i32, i64> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in partitions {
        let (low, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        let start = from.max(low);
        if high > start {
            remaining.insert(p, high);
            assignment.add_partition_offset(topic, p, Offset::Offset(start))?;
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return Ok(out);
    }
    consumer.assign(&assignment)?;
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + timeout;
    while !remaining.is_empty() {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| Error::Timeout(timeout, "the end of the topic"))?;
        match next {
            None => break,
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => return Err(e.into()),
            Some(Ok(m)) => {
                let m = m.detach();
                if remaining
                    .get(&m.partition())
                    .is_some_and(|high| m.offset() + 1 >= *high)
                {
                    remaining.remove(&m.partition());
                }
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// Reads the one record at `topic`/`partition`@`offset`.
pub async fn read_at(
    kafka: &KafkaConfig,
    topic: &str,
    partition: i32,
    offset: i64,
    timeout: Duration,
) -> Result<OwnedMessage> {
    let consumer: crate::client::Reader =
        crate::client::reader_config(kafka).create_with_context(crate::client::ReaderContext)?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    consumer.assign(&assignment)?;
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| Error::Timeout(timeout, "the record"))?;
        match next {
            Some(Ok(m)) if m.offset() == offset => return Ok(m.detach()),
            Some(Ok(_)) | Some(Err(rdkafka::error::KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => return Err(e.into()),
            None => return Err(Error::Timeout(timeout, "the record")),
        }
    }
}
