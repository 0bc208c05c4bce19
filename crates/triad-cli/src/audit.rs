//! `triad audit root|prove|verify|checkpoints`: a workflow's chain of custody recomputed from the event
//! store in Kafka, never from the read models (`triad_kernel::audit`). Each event's leaf is `SHA-256(0x00 || its exact Kafka
//! value bytes)`; the workflow's leaves in log order form an RFC 9162 Merkle tree
//! (`triad_sovereignty::merkle`, `docs/audit.md`). `prove` prints an inclusion proof a third
//! party checks with the documented algorithm and nothing of TRIAD's.

use anyhow::{Context, Result, bail};
use serde::Serialize;
use std::time::Duration;
use triad_codec::Codec;
use triad_config::Config;
use triad_kafka::topics::Names;

use triad_kernel::audit::{Chain, check, check_checkpoints};
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

/// The key directory, every change verified against `sovereignty.operator_public_key`.
async fn directory(config: &Config, codec: &Codec) -> Result<triad_sovereignty::SignedDirectory> {
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
    crate::keys::read(config, codec, operator).await
}

/// How long `verify` waits for the notary to cover a workflow's last records (it
/// checkpoints a quiet partition after `sovereignty.checkpoint_idle_ms`).
const COVER_WAIT: Duration = Duration::from_secs(15);

/// `triad audit verify`: replays the workflow from the event store and checks it
/// ([`check`]) and the checkpoints over its partition; prints a report and fails on any
/// problem.
pub async fn verify(config: &Config, codec: &Codec, workflow_id: &str) -> Result<()> {
    let directory = directory(config, codec).await?;
    let stream = triad_kernel::notary::Stream::events(&config.kafka);
    let p = triad_kafka::produce::partition_for(workflow_id.as_bytes(), config.kafka.partitions);
    let deadline = tokio::time::Instant::now()
        + COVER_WAIT
        + Duration::from_millis(config.sovereignty.checkpoint_idle_ms);
    // Checkpoints first, then the records (check_checkpoints says why); again until the
    // workflow's records are covered or the wait is over.
    let (chain, coverage) = loop {
        let checkpoints = triad_kernel::notary::read(&config.kafka, codec, &stream, p).await?;
        let chain = chain(config, codec, workflow_id).await?;
        let coverage = check_checkpoints(
            stream.name,
            p,
            &chain.records,
            &checkpoints,
            directory.directory(),
        );
        let last = chain.leaves.last().map_or(-1, |l| l.offset);
        if last < coverage.covered_to
            || !coverage.problems.is_empty()
            || tokio::time::Instant::now() >= deadline
        {
            break (chain, coverage);
        }
        eprintln!(
            "waiting for the notary's checkpoint over offset {last} (covered to {})…",
            coverage.covered_to
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Zones are judged under the policy version the workflow was accepted under, as the log
    // publishes it — never under this verifier's own configuration.
    let published = triad_kernel::audit::policies(&config.kafka, codec).await?;
    let policy = triad_kernel::audit::policy_in_force(
        triad_kernel::audit::accepted_policy(&chain.leaves),
        &published,
        directory.directory(),
    );
    let groups: Vec<(String, Vec<String>)> = match &policy {
        Ok((document, _)) => document.groups.clone().into_iter().collect(),
        Err(_) => Vec::new(),
    };
    let mut verdict = check(&chain.leaves, directory.directory(), &groups);
    match &policy {
        Ok((_, node)) => println!(
            "under policy version {} (published by {node})",
            triad_kernel::audit::accepted_policy(&chain.leaves).unwrap_or_default()
        ),
        Err(why) => verdict.problems.push(why.clone()),
    }
    verdict.problems.extend(coverage.problems.iter().cloned());
    let last = chain.leaves.last().map_or(-1, |l| l.offset);
    if coverage.problems.is_empty() && last >= coverage.covered_to {
        verdict.problems.push(format!(
            "the workflow's records from offset {} on are under no signed checkpoint (is `triad notary` running?)",
            coverage.covered_to.max(chain.leaves.first().map_or(0, |l| l.offset))
        ));
    }
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
        if let Some((node, n)) = &verdict.root_signed_by {
            println!("the root of the {n} events before the end is signed by {node}");
        }
        println!(
            "{} signed checkpoints cover offsets 0..{} of partition {p} ({} records), the workflow's included",
            coverage.checkpoints, coverage.covered_to, coverage.records
        );
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

/// `triad audit checkpoints`: every partition of the event store against the notary's
/// checkpoints; fails on any problem.
pub async fn checkpoints(config: &Config, codec: &Codec) -> Result<()> {
    let stream = triad_kernel::notary::Stream::events(&config.kafka);
    let problems = stream_checkpoints(config, codec, &stream).await?;
    if problems > 0 {
        bail!("the event store failed the checkpoint audit: {problems} problem(s)");
    }
    println!("verified: every checkpoint matches the records it signs");
    Ok(())
}

/// Checks every partition of `stream` against the notary's checkpoints, printing a line per
/// partition and each problem; returns the number of problems.
pub async fn stream_checkpoints(
    config: &Config,
    codec: &Codec,
    stream: &triad_kernel::notary::Stream,
) -> Result<usize> {
    let directory = directory(config, codec).await?;
    let events = &stream.topic;
    let mut problems = 0;
    for p in 0..config.kafka.partitions {
        let checkpoints = triad_kernel::notary::read(&config.kafka, codec, stream, p).await?;
        let records = triad_kernel::audit::stream_records(&config.kafka, events, p).await?;
        let coverage = check_checkpoints(
            stream.name,
            p,
            &records,
            &checkpoints,
            directory.directory(),
        );
        let after = records
            .iter()
            .filter(|(o, _)| *o >= coverage.covered_to)
            .count();
        println!(
            "{events} partition {p}: {} signed checkpoints cover offsets 0..{} ({} records); {after} records after them",
            coverage.checkpoints, coverage.covered_to, coverage.records
        );
        for problem in &coverage.problems {
            println!("  ✗ {problem}");
        }
        problems += coverage.problems.len();
    }
    Ok(problems)
}
