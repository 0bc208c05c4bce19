//! The notary: signed, chained checkpoints over every record of the event store and of the
//! credits ledger (`docs/audit.md`, "Checkpoints"; `docs/credits.md`). A workflow's signed root vouches for its own events; a
//! checkpoint vouches for a whole range of a partition — terminal events, late results after
//! them, and other workflows' records — so deleting a workflow, cutting a tail or editing a
//! terminal event breaks a signed range even when nobody knows the workflow's id.
//!
//! Each stream has its own checkpoint topic (`triad.custody-checkpoints` for the event store,
//! `triad.credits-checkpoints` for the ledger), partition p for partition p. For each
//! partition the notary reads the records after its last checkpoint ( — the log is its only state, so
//! a `kill -9` at any point resumes where the last acknowledged checkpoint ends) and writes a
//! checkpoint every `every` records, or when the partition has been quiet for `idle` with
//! records pending. Run exactly one notary per installation: two would write two chains
//! (an audit reports the fork).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_domain::CustodyCheckpoint;
use triad_kafka::produce::Producer;
use triad_kafka::topics::Names;
use triad_sovereignty::custody::{self, Checkpoint};
use triad_sovereignty::merkle::{self, Hash};
use triad_sovereignty::signing::Signer;

use crate::{Error, Result};

/// The event store's logical name in checkpoints (independent of the topic prefix).
pub const STREAM: &str = "workflow-events";
/// The credits ledger's logical name in checkpoints.
pub const CREDITS_STREAM: &str = "credits";

/// A stream the notary vouches for: its logical name, its topic and its checkpoint topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stream {
    pub name: &'static str,
    pub topic: String,
    pub checkpoints: String,
}

impl Stream {
    /// The event store.
    pub fn events(kafka: &KafkaConfig) -> Self {
        let names = Names::new(kafka);
        Self {
            name: STREAM,
            topic: names.events,
            checkpoints: names.checkpoints,
        }
    }

    /// The credits ledger.
    pub fn credits(kafka: &KafkaConfig) -> Self {
        let names = Names::new(kafka);
        Self {
            name: CREDITS_STREAM,
            topic: names.credits,
            checkpoints: names.credits_checkpoints,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub kafka: KafkaConfig,
    pub node_id: String,
    pub signer: Arc<dyn Signer>,
    /// Records per checkpoint at most.
    pub every: u64,
    /// A partition quiet this long with records pending gets its checkpoint.
    pub idle: Duration,
}

/// The end of a partition's chain: where the next checkpoint starts and what it links to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub sequence: u64,
    pub to_offset: i64,
    pub hash: Hash,
}

impl Head {
    pub const GENESIS: Self = Self {
        sequence: 0,
        to_offset: 0,
        hash: [0; 32],
    };
}

/// The signed statement of `c`, as [`custody::checkpoint_bytes`] takes it; None when a
/// field is out of range (a record no notary wrote).
pub fn statement(c: &CustodyCheckpoint) -> Option<(Checkpoint<'_>, Vec<u8>)> {
    let cp = Checkpoint {
        stream: &c.stream,
        partition: u32::try_from(c.partition).ok()?,
        sequence: u64::try_from(c.sequence).ok()?,
        from_offset: u64::try_from(c.from_offset).ok()?,
        to_offset: u64::try_from(c.to_offset).ok()?,
        records: u64::try_from(c.records).ok()?,
        root: custody::hash_from_hex("root", &c.root).ok()?,
        previous: custody::hash_from_hex("previous", &c.previous).ok()?,
    };
    let bytes = custody::checkpoint_bytes(&cp);
    Some((cp, bytes))
}

/// Reads the checkpoints of `stream`'s partition `partition` in log order.
pub async fn read(
    kafka: &KafkaConfig,
    codec: &Codec,
    stream: &Stream,
    partition: i32,
) -> Result<Vec<(i64, CustodyCheckpoint)>> {
    let topic = stream.checkpoints.clone();
    let records = triad_kafka::consume::read_partition_from(
        kafka,
        &topic,
        partition,
        0,
        Duration::from_secs(60),
    )
    .await?;
    let mut out = Vec::with_capacity(records.len());
    for m in records {
        let c: CustodyCheckpoint = codec.decode(m.payload()).await.map_err(|e| Error::Record {
            topic: topic.clone(),
            offset: m.offset(),
            reason: format!("undecodable checkpoint: {e}"),
        })?;
        out.push((m.offset(), c));
    }
    Ok(out)
}

/// A partition's pending records and chain head.
struct Partition {
    head: Head,
    pending: Vec<Hash>,
    last_offset: i64,
    last_seen: Instant,
}

/// Runs the notary over the event store and the credits ledger until `cancel`; on cancel
/// the pending records get their checkpoints.
pub async fn run(options: &Options, codec: Arc<Codec>, cancel: CancellationToken) -> Result<()> {
    let producer = Producer::new(&options.kafka)?;
    let events = Stream::events(&options.kafka);
    let credits = Stream::credits(&options.kafka);
    // One stream failing stops the other: the process exits and a restart resumes both.
    let stop = cancel.child_token();
    let (a, b) = tokio::join!(
        async {
            let r = follow(options, &codec, &producer, &events, &stop).await;
            if r.is_err() {
                stop.cancel();
            }
            r
        },
        async {
            let r = follow(options, &codec, &producer, &credits, &stop).await;
            if r.is_err() {
                stop.cancel();
            }
            r
        },
    );
    a?;
    b?;
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}

async fn follow(
    options: &Options,
    codec: &Codec,
    producer: &Producer,
    stream: &Stream,
    cancel: &CancellationToken,
) -> Result<()> {
    let mut parts: HashMap<i32, Partition> = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for p in 0..options.kafka.partitions {
        let head = resume(&options.kafka, codec, stream, p).await?;
        assignment
            .add_partition_offset(&stream.topic, p, Offset::Offset(head.to_offset))
            .map_err(triad_kafka::Error::from)?;
        parts.insert(
            p,
            Partition {
                head,
                pending: Vec::new(),
                last_offset: head.to_offset - 1,
                last_seen: Instant::now(),
            },
        );
    }
    let consumer: StreamConsumer = triad_kafka::client::follower_config(&options.kafka)
        .create()
        .map_err(triad_kafka::Error::from)?;
    consumer
        .assign(&assignment)
        .map_err(triad_kafka::Error::from)?;
    tracing::info!(messaging.destination.name = %stream.topic, partitions = options.kafka.partitions, node.id = %options.node_id, "notary following");
    let mut tick = tokio::time::interval(options.idle / 4);
    let writer = Writer {
        options,
        codec,
        producer,
        stream,
    };
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {
                for (p, part) in &mut parts {
                    if !part.pending.is_empty() && part.last_seen.elapsed() >= options.idle {
                        writer.flush(*p, part).await;
                    }
                }
            }
            next = consumer.recv() => match next {
                Err(error) => tracing::warn!(%error, messaging.destination.name = %stream.topic, "reading failed"),
                Ok(m) => {
                    let p = m.partition();
                    let Some(part) = parts.get_mut(&p) else { continue };
                    if m.offset() <= part.last_offset {
                        continue; // a re-delivery after a reconnect
                    }
                    part.pending.push(merkle::leaf_hash(m.payload().unwrap_or_default()));
                    part.last_offset = m.offset();
                    part.last_seen = Instant::now();
                    if u64::try_from(part.pending.len()).unwrap_or(u64::MAX) >= options.every {
                        writer.flush(p, part).await;
                    }
                }
            },
        }
    }
    // Drain: what was read gets its checkpoint before the process stops.
    for (p, part) in &mut parts {
        if !part.pending.is_empty() {
            writer.flush(*p, part).await;
        }
    }
    Ok(())
}

/// Partition `p`'s chain head from its last checkpoint (genesis when there is none).
async fn resume(kafka: &KafkaConfig, codec: &Codec, stream: &Stream, p: i32) -> Result<Head> {
    let Some((_, last)) = read(kafka, codec, stream, p).await?.pop() else {
        return Ok(Head::GENESIS);
    };
    let (cp, bytes) = statement(&last).ok_or_else(|| Error::Record {
        topic: stream.checkpoints.clone(),
        offset: -1,
        reason: format!("partition {p}: the last checkpoint has fields out of range"),
    })?;
    Ok(Head {
        sequence: cp.sequence,
        to_offset: last.to_offset,
        hash: custody::sha256(&bytes),
    })
}

struct Writer<'a> {
    options: &'a Options,
    codec: &'a Codec,
    producer: &'a Producer,
    stream: &'a Stream,
}

impl Writer<'_> {
    /// Signs and writes a checkpoint over the partition's pending records; on failure they
    /// stay pending and the next tick tries again.
    async fn flush(&self, p: i32, part: &mut Partition) {
        match self.write(p, part).await {
            Ok(head) => {
                tracing::debug!(
                    messaging.destination.partition.id = p,
                    checkpoint.sequence = head.sequence,
                    checkpoint.to_offset = head.to_offset,
                    records = part.pending.len(),
                    "checkpoint written"
                );
                part.head = head;
                part.pending.clear();
            }
            Err(error) => {
                tracing::warn!(%error, messaging.destination.partition.id = p, "writing a checkpoint failed; retrying");
            }
        }
    }

    async fn write(&self, p: i32, part: &Partition) -> Result<Head> {
        let (record, head) = next(
            self.stream.name,
            &part.head,
            p,
            &part.pending,
            part.last_offset + 1,
            &self.options.node_id,
            self.options.signer.as_ref(),
        )?;
        self.producer
            .send_record(
                self.codec,
                &self.stream.checkpoints,
                Some(p),
                &record.key(),
                &record,
            )
            .await?;
        Ok(head)
    }
}

/// The checkpoint of `stream` after `head` over the records `leaves` (leaf hashes in offset
/// order) of partition `p`, ending before `to_offset`, signed by `signer`; and the new head.
pub fn next(
    stream: &str,
    head: &Head,
    p: i32,
    leaves: &[Hash],
    to_offset: i64,
    node_id: &str,
    signer: &dyn Signer,
) -> Result<(CustodyCheckpoint, Head)> {
    let n = u64::try_from(leaves.len()).unwrap_or(u64::MAX);
    let cp = Checkpoint {
        stream,
        partition: u32::try_from(p).unwrap_or(0),
        sequence: head.sequence + 1,
        from_offset: u64::try_from(head.to_offset).unwrap_or(0),
        to_offset: u64::try_from(to_offset).unwrap_or(0),
        records: n,
        root: merkle::root(leaves),
        previous: head.hash,
    };
    let bytes = custody::checkpoint_bytes(&cp);
    let signature = triad_sovereignty::hex(&signer.sign(&bytes)?);
    let record = CustodyCheckpoint {
        stream: stream.to_owned(),
        partition: p,
        sequence: i64::try_from(cp.sequence).unwrap_or(i64::MAX),
        from_offset: head.to_offset,
        to_offset,
        records: i64::try_from(n).unwrap_or(i64::MAX),
        root: triad_sovereignty::hex(&cp.root),
        previous: triad_sovereignty::hex(&cp.previous),
        node_id: node_id.to_owned(),
        key_id: signer.key_id().to_owned(),
        signature,
        written_at: triad_kafka::now_micros(),
        schema_version: 1,
    };
    Ok((
        record,
        Head {
            sequence: cp.sequence,
            to_offset,
            hash: custody::sha256(&bytes),
        },
    ))
}
