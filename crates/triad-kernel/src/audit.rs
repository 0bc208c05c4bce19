//! A workflow's chain of custody, recomputed from the event store in Kafka (never from the
//! read models), and its audit (`docs/audit.md`). Each event's leaf is `SHA-256(0x00 || its
//! exact Kafka value bytes)`; the workflow's leaves in log order form an RFC 9162 Merkle
//! tree. [`check`] verifies the events against the key directory and the policy's groups.

use std::time::Duration;

use rdkafka::message::Message;
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_domain::{EventBody, WorkflowEvent};
use triad_kafka::produce::partition_for;
use triad_kafka::topics::Names;
use triad_sovereignty::custody;
use triad_sovereignty::merkle::{self, Hash};

use crate::{Error, Result};

/// How long reading a partition of the event store may take.
const READ_FOR: Duration = Duration::from_secs(300);

/// One event of the workflow, as the log holds it.
#[derive(Debug, Clone)]
pub struct Leaf {
    pub offset: i64,
    pub event_id: String,
    pub event_type: String,
    pub hash: Hash,
    pub event: WorkflowEvent,
}

/// A workflow's events in log order, with where they were read.
#[derive(Debug, Clone)]
pub struct Chain {
    pub topic: String,
    pub partition: i32,
    pub leaves: Vec<Leaf>,
}

impl Chain {
    pub fn root(&self) -> Hash {
        merkle::root(&self.hashes())
    }

    pub fn hashes(&self) -> Vec<Hash> {
        self.leaves.iter().map(|l| l.hash).collect()
    }
}

/// Reads the workflow's partition of the event store from offset 0.
pub async fn chain(kafka: &KafkaConfig, codec: &Codec, workflow_id: &str) -> Result<Chain> {
    let topic = Names::new(kafka).events;
    let partition = partition_for(workflow_id.as_bytes(), kafka.partitions);
    tracing::info!(messaging.destination.name = %topic, messaging.destination.partition.id = partition, "reading the event store from offset 0");
    let records =
        triad_kafka::consume::read_partition_from(kafka, &topic, partition, 0, READ_FOR).await?;
    let mut leaves = Vec::new();
    for m in records {
        if m.key() != Some(workflow_id.as_bytes()) {
            continue;
        }
        let value = m.payload().unwrap_or_default();
        let event: WorkflowEvent = codec.decode(Some(value)).await.map_err(|e| Error::Record {
            topic: topic.clone(),
            offset: m.offset(),
            reason: format!("partition {partition}: undecodable event: {e}"),
        })?;
        leaves.push(Leaf {
            offset: m.offset(),
            event_id: event.meta.event_id.clone(),
            event_type: event.meta.event_type.clone(),
            hash: merkle::leaf_hash(value),
            event,
        });
    }
    if leaves.is_empty() {
        return Err(Error::NoEvents {
            workflow_id: workflow_id.to_owned(),
            topic,
            partition,
        });
    }
    Ok(Chain {
        topic,
        partition,
        leaves,
    })
}

/// True for the event that ends a workflow.
pub fn is_final(body: &EventBody) -> bool {
    matches!(
        body,
        EventBody::WorkflowCompleted(_)
            | EventBody::WorkflowFailed(_)
            | EventBody::WorkflowCancelled(_)
            | EventBody::WorkflowRejected(_)
    )
}

/// What `verify` found: the operations checked, the zones they stayed in, the problems.
#[derive(Debug, Default)]
pub struct Verdict {
    pub events: usize,
    pub operations: usize,
    pub zones: std::collections::BTreeSet<String>,
    pub problems: Vec<String>,
}

/// The stored hash of an output: of the inline bytes, or the content a reference names.
fn stored_hash(output: &[u8], reference: Option<&triad_domain::BlobRef>) -> Option<Hash> {
    match reference {
        Some(r) => custody::hash_from_hex("output_ref.sha256", &r.sha256).ok(),
        None => Some(custody::sha256(output)),
    }
}

/// Checks a workflow's events (log order) against the key directory and the policy's
/// groups: gap-free, ending in a terminal event, and every completed attempt carrying an
/// execution record signed by a signing key the directory enrols in the zone it claims, over
/// exactly the prompt, inputs and output the log holds, run and processed inside the task's
/// allowed zones.
pub fn check(
    events: &[WorkflowEvent],
    directory: &triad_sovereignty::KeyDirectory,
    groups: &[(String, Vec<String>)],
) -> Verdict {
    use std::collections::{BTreeMap, BTreeSet};
    // A processor that crashed between writing and committing writes byte-identical copies
    // again (deterministic events): a copy adds nothing, a different event at a taken
    // sequence is a problem found below.
    let mut distinct: Vec<&WorkflowEvent> = Vec::with_capacity(events.len());
    for e in events {
        if !distinct.contains(&e) {
            distinct.push(e);
        }
    }
    let events = distinct;
    let mut v = Verdict {
        events: events.len(),
        ..Verdict::default()
    };
    for (i, e) in events.iter().enumerate() {
        let expected = i64::try_from(i).unwrap_or(i64::MAX) + 1;
        if e.meta.sequence != expected {
            v.problems.push(format!(
                "event {} has sequence {} where {expected} belongs: an event is missing, repeated or out of order",
                e.meta.event_id, e.meta.sequence
            ));
            break;
        }
    }
    let accepted = events.iter().find_map(|e| match &e.body {
        EventBody::WorkflowAccepted(a) => Some(a),
        _ => None,
    });
    let Some(accepted) = accepted else {
        v.problems
            .push("no WorkflowAccepted event: the workflow's start is missing".to_owned());
        return v;
    };
    let tasks: BTreeMap<&str, &triad_domain::TaskSpec> =
        accepted.tasks.iter().map(|t| (t.id.as_str(), t)).collect();
    let mut outputs: BTreeMap<&str, Hash> = BTreeMap::new();
    for e in &events {
        let EventBody::TaskCompleted(c) = &e.body else {
            continue;
        };
        v.operations += 1;
        let at = format!("task {} attempt {}", c.task_id, c.attempt);
        let Some(task) = tasks.get(c.task_id.as_str()) else {
            v.problems
                .push(format!("{at}: no such task in the accepted workflow"));
            continue;
        };
        let names = if task.zones.is_empty() {
            &accepted.default_zones
        } else {
            &task.zones
        };
        let allowed: BTreeSet<String> = triad_workflow::aggregate::expand_zones(names, groups);
        let output = stored_hash(&c.output, c.output_ref.as_ref());
        if let Some(h) = output {
            outputs.insert(c.task_id.as_str(), h);
        }
        let Some(x) = &c.execution else {
            v.problems.push(format!("{at}: no signed execution record"));
            continue;
        };
        v.zones.insert(x.executor_zone.clone());
        v.zones.extend(x.model_zones.iter().cloned());
        match directory.signer(&x.key_id) {
            None => v.problems.push(format!(
                "{at}: signed by key {}, which the key directory does not enrol as a signing key",
                x.key_id
            )),
            Some(s) => {
                if s.zone != x.executor_zone || s.node_id != x.node_id {
                    v.problems.push(format!(
                        "{at}: key {} belongs to {} in {}, but the record claims {} in {}",
                        x.key_id, s.node_id, s.zone, x.node_id, x.executor_zone
                    ));
                }
                if s.state == triad_sovereignty::KeyState::Revoked {
                    v.problems
                        .push(format!("{at}: signed by revoked key {}", x.key_id));
                }
                let hashes = (
                    custody::hash_from_hex("prompt_sha256", &x.prompt_sha256),
                    custody::hash_from_hex("inputs_sha256", &x.inputs_sha256),
                    custody::hash_from_hex("output_sha256", &x.output_sha256),
                );
                let (Ok(prompt), Ok(inputs), Ok(out)) = hashes else {
                    v.problems
                        .push(format!("{at}: a hash in the record is not hex"));
                    continue;
                };
                let execution = custody::Execution {
                    workflow_id: &e.meta.workflow_id,
                    task_id: &c.task_id,
                    attempt: u32::try_from(c.attempt).unwrap_or(0),
                    attempt_id: &c.attempt_id,
                    node_id: &x.node_id,
                    executor_zone: &x.executor_zone,
                    model_id: &x.model_id,
                    model_zones: &x.model_zones,
                    prompt_sha256: prompt,
                    inputs_sha256: inputs,
                    output_sha256: out,
                };
                if !triad_sovereignty::signing::verify(
                    &s.public_key,
                    &custody::execution_bytes(&execution),
                    &x.signature,
                ) {
                    v.problems.push(format!(
                        "{at}: the execution record's signature does not verify"
                    ));
                }
                if custody::sha256(&task.prompt) != prompt {
                    v.problems.push(format!(
                        "{at}: the record's prompt hash is not the accepted prompt's"
                    ));
                }
                let deps: Option<Vec<(&str, Hash)>> = task
                    .depends_on
                    .iter()
                    .map(|d| outputs.get(d.as_str()).map(|h| (d.as_str(), *h)))
                    .collect();
                if deps.map(custody::inputs_digest) != Some(inputs) {
                    v.problems.push(format!(
                        "{at}: the record's inputs are not the logged outputs of {}",
                        task.depends_on.join(", ")
                    ));
                }
                if output != Some(out) {
                    v.problems.push(format!(
                        "{at}: the logged output is not the one the executor signed"
                    ));
                }
            }
        }
        if x.executor_zone != c.executor_zone || x.model_id != c.model_id {
            v.problems.push(format!(
                "{at}: the event says {} on {}, the signed record {} on {}",
                c.model_id, c.executor_zone, x.model_id, x.executor_zone
            ));
        }
        if let Some(z) = std::iter::once(&x.executor_zone)
            .chain(&x.model_zones)
            .find(|z| !allowed.contains(*z))
        {
            v.problems.push(format!(
                "{at}: ran or processed data in {z}, outside the task's zones ({})",
                allowed.iter().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
    }
    // After the terminal event only late results may follow (a result that arrives after
    // the end is recorded as discarded); anything else means the real end was cut off.
    let end = events.iter().rposition(|e| is_final(&e.body));
    let late_only = end.is_some_and(|i| {
        events[i + 1..]
            .iter()
            .all(|e| matches!(e.body, EventBody::TaskResultDiscarded(_)))
    });
    if !late_only {
        v.problems.push(
            "the last event is not terminal: the tail is missing (truncated or deleted)".to_owned(),
        );
    }
    v
}
