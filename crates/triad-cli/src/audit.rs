//! `triad audit root|prove|verify`: a workflow's chain of custody recomputed from the event
//! store in Kafka, never from the read models (`triad_kernel::audit`). Each event's leaf is `SHA-256(0x00 || its exact Kafka
//! value bytes)`; the workflow's leaves in log order form an RFC 9162 Merkle tree
//! (`triad_sovereignty::merkle`, `docs/audit.md`). `prove` prints an inclusion proof a third
//! party checks with the documented algorithm and nothing of TRIAD's.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::WorkflowEvent;
use triad_kafka::topics::Names;
use triad_kernel::audit::{Chain, check};
use triad_sovereignty::hex;
use triad_sovereignty::merkle;

/// Reads the workflow's events from the event store, saying so on stderr.
pub async fn chain(config: &Config, codec: &Codec, workflow_id: &str) -> Result<Chain> {
    let partition =
        triad_kafka::produce::partition_for(workflow_id.as_bytes(), config.kafka.partitions);
    eprintln!(
        "reading {} partition {partition} from offset 0…",
        Names::new(&config.kafka).events
    );
    Ok(triad_kernel::audit::chain(&config.kafka, codec, workflow_id).await?)
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

/// `triad audit verify`: replays the workflow from the event store and checks it
/// ([`check`]); prints a report and fails on any problem.
pub async fn verify(config: &Config, codec: &Codec, workflow_id: &str) -> Result<()> {
    let chain = chain(config, codec, workflow_id).await?;
    let Some(operator) = config
        .sovereignty
        .operator_public_key
        .as_deref()
        .and_then(triad_sovereignty::parse_public_hex)
    else {
        bail!(
            "sovereignty.operator_public_key is needed to verify signatures against the key directory"
        );
    };
    let directory = crate::keys::read(config, codec, operator).await?;
    let groups: Vec<(String, Vec<String>)> = config
        .policy
        .groups
        .iter()
        .map(|(g, z)| (g.clone(), z.clone()))
        .collect();
    let events: Vec<WorkflowEvent> = chain.leaves.iter().map(|l| l.event.clone()).collect();
    let verdict = check(&events, directory.directory(), &groups);
    println!(
        "workflow {workflow_id}: {} events in {}/{}, Merkle root {}",
        verdict.events,
        chain.topic,
        chain.partition,
        hex(&chain.root())
    );
    // Refused opens are not problems of the workflow (nothing was opened) but belong in
    // its report.
    let topic = Names::new(&config.kafka).violations;
    let records =
        triad_kafka::consume::read_all(&config.kafka, &topic, std::time::Duration::from_secs(60))
            .await
            .with_context(|| format!("reading {topic}"))?;
    for m in records {
        let Ok(v) = codec
            .decode::<triad_domain::SovereigntyViolation>(rdkafka::message::Message::payload(&m))
            .await
        else {
            continue;
        };
        if v.workflow_id == workflow_id {
            println!(
                "  ! refused: node {} in {} may not open the {} of task {} (sealed to {}): {}",
                v.node_id,
                v.zone,
                v.role,
                v.task_id,
                v.envelope_zones.join(", "),
                v.reason
            );
        }
    }
    if verdict.problems.is_empty() {
        println!(
            "verified: all {} operations signed by enrolled executors and stayed in {}",
            verdict.operations,
            verdict.zones.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        return Ok(());
    }
    for p in &verdict.problems {
        println!("  ✗ {p}");
    }
    bail!(
        "workflow {workflow_id} failed the audit: {} problem(s)",
        verdict.problems.len()
    )
}
