//! `triad audit root|prove`: a workflow's chain of custody recomputed from the event store in
//! Kafka, never from the read models. Each event's leaf is `SHA-256(0x00 || its exact Kafka
//! value bytes)`; the workflow's leaves in log order form an RFC 9162 Merkle tree
//! (`triad_sovereignty::merkle`, `docs/audit.md`). `prove` prints an inclusion proof a third
//! party checks with the documented algorithm and nothing of TRIAD's.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rdkafka::message::Message;
use serde::Serialize;
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::WorkflowEvent;
use triad_kafka::produce::partition_for;
use triad_kafka::topics::Names;
use triad_sovereignty::hex;
use triad_sovereignty::merkle::{self, Hash};

/// One event of the workflow, as the log holds it.
pub struct Leaf {
    pub offset: i64,
    pub event_id: String,
    pub event_type: String,
    pub hash: Hash,
}

/// A workflow's events in log order, with where they were read.
pub struct Chain {
    pub topic: String,
    pub partition: i32,
    pub leaves: Vec<Leaf>,
}

impl Chain {
    pub fn root(&self) -> Hash {
        merkle::root(&self.hashes())
    }

    fn hashes(&self) -> Vec<Hash> {
        self.leaves.iter().map(|l| l.hash).collect()
    }
}

/// Reads the workflow's partition of the event store from offset 0.
pub async fn chain(config: &Config, codec: &Codec, workflow_id: &str) -> Result<Chain> {
    let topic = Names::new(&config.kafka).events;
    let partition = partition_for(workflow_id.as_bytes(), config.kafka.partitions);
    eprintln!("reading {topic} partition {partition} from offset 0…");
    let records = triad_kafka::consume::read_partition_from(
        &config.kafka,
        &topic,
        partition,
        0,
        Duration::from_secs(300),
    )
    .await
    .with_context(|| format!("reading {topic} partition {partition}"))?;
    let mut leaves = Vec::new();
    for m in records {
        if m.key() != Some(workflow_id.as_bytes()) {
            continue;
        }
        let value = m.payload().unwrap_or_default();
        let event: WorkflowEvent = codec
            .decode(Some(value))
            .await
            .with_context(|| format!("{topic}/{partition}@{}: undecodable event", m.offset()))?;
        leaves.push(Leaf {
            offset: m.offset(),
            event_id: event.meta.event_id,
            event_type: event.meta.event_type,
            hash: merkle::leaf_hash(value),
        });
    }
    if leaves.is_empty() {
        bail!("no events of workflow {workflow_id} in {topic} partition {partition}");
    }
    Ok(Chain {
        topic,
        partition,
        leaves,
    })
}

/// Prints every leaf and the root.
pub async fn root(config: &Config, codec: &Codec, workflow_id: &str) -> Result<()> {
    let chain = chain(config, codec, workflow_id).await?;
    println!(
        "workflow {workflow_id}: {} events in {}/{}",
        chain.leaves.len(),
        chain.topic,
        chain.partition
    );
    for (i, l) in chain.leaves.iter().enumerate() {
        println!(
            "  {i:>4}  offset {:>8}  {}  {} {}",
            l.offset,
            hex(&l.hash),
            l.event_type,
            l.event_id
        );
    }
    println!("root {} (size {})", hex(&chain.root()), chain.leaves.len());
    Ok(())
}

#[derive(Serialize)]
struct Proof {
    workflow_id: String,
    event_id: String,
    topic: String,
    partition: i32,
    offset: i64,
    index: usize,
    size: usize,
    leaf_hash: String,
    proof: Vec<String>,
    root: String,
}

/// Prints the inclusion proof of one event as JSON.
pub async fn prove(
    config: &Config,
    codec: &Codec,
    workflow_id: &str,
    event_id: &str,
) -> Result<()> {
    let chain = chain(config, codec, workflow_id).await?;
    let Some(index) = chain.leaves.iter().position(|l| l.event_id == event_id) else {
        bail!(
            "workflow {workflow_id} has no event {event_id} ({} events in {}/{})",
            chain.leaves.len(),
            chain.topic,
            chain.partition
        );
    };
    let hashes = chain.hashes();
    let path = merkle::inclusion_proof(&hashes, index).context("index out of range")?;
    let leaf = &chain.leaves[index];
    let proof = Proof {
        workflow_id: workflow_id.to_owned(),
        event_id: event_id.to_owned(),
        topic: chain.topic.clone(),
        partition: chain.partition,
        offset: leaf.offset,
        index,
        size: hashes.len(),
        leaf_hash: hex(&leaf.hash),
        proof: path.iter().map(|h| hex(h)).collect(),
        root: hex(&merkle::root(&hashes)),
    };
    println!("{}", serde_json::to_string_pretty(&proof)?);
    Ok(())
}
