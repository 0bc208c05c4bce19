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
    /// Every record of the partition read (any workflow's), as (offset, leaf hash), for the
    /// checkpoints.
    pub records: Vec<(i64, Hash)>,
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
    let read =
        triad_kafka::consume::read_partition_from(kafka, &topic, partition, 0, READ_FOR).await?;
    let mut leaves = Vec::new();
    let mut records = Vec::with_capacity(read.len());
    for m in read {
        let value = m.payload().unwrap_or_default();
        records.push((m.offset(), merkle::leaf_hash(value)));
        if m.key() != Some(workflow_id.as_bytes()) {
            continue;
        }
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
        records,
    })
}

/// Every policy version published on `triad.policies`.
pub async fn policies(
    kafka: &KafkaConfig,
    codec: &Codec,
) -> Result<Vec<triad_domain::PolicyVersion>> {
    let topic = Names::new(kafka).policies;
    let read = triad_kafka::consume::read_all(kafka, &topic, READ_FOR).await?;
    let mut out = Vec::with_capacity(read.len());
    for m in read {
        let p = codec.decode(m.payload()).await.map_err(|e| Error::Record {
            topic: topic.clone(),
            offset: m.offset(),
            reason: format!("undecodable policy version: {e}"),
        })?;
        out.push(p);
    }
    Ok(out)
}

/// The policy a workflow was accepted under: the published record of `version` whose text
/// hashes to it and whose signature verifies under a signing key the directory enrols (not
/// revoked). Returns the document and who published it, or why there is none.
pub fn policy_in_force(
    version: Option<&str>,
    published: &[triad_domain::PolicyVersion],
    directory: &triad_sovereignty::KeyDirectory,
) -> Result<(triad_domain::PolicyDocument, String), String> {
    let Some(version) = version else {
        return Err("the accepted workflow names no policy version".to_owned());
    };
    let mut why = format!("no record on the policy topic publishes policy version {version}");
    for p in published.iter().filter(|p| p.version == version) {
        if custody::hash_from_hex("version", version).ok()
            != Some(custody::sha256(p.document.as_bytes()))
        {
            why = format!("the published text of policy version {version} does not hash to it");
            continue;
        }
        let Some(s) = directory.signer(&p.key_id) else {
            why = format!(
                "policy version {version} is signed by key {}, which the key directory does not enrol as a signing key",
                p.key_id
            );
            continue;
        };
        if s.node_id != p.node_id
            || s.state == triad_sovereignty::KeyState::Revoked
            || !triad_sovereignty::signing::verify(
                &s.public_key,
                &custody::policy_bytes(&p.document),
                &p.signature,
            )
        {
            why = format!("the signature on policy version {version} does not verify");
            continue;
        }
        return serde_json::from_str(&p.document)
            .map(|d| (d, p.node_id.clone()))
            .map_err(|e| format!("policy version {version} is not a policy document: {e}"));
    }
    Err(why)
}

/// The policy version the workflow's `WorkflowAccepted` names.
pub fn accepted_policy(leaves: &[Leaf]) -> Option<&str> {
    leaves.iter().find_map(|l| match &l.event.body {
        EventBody::WorkflowAccepted(a) => a.policy_version.as_deref(),
        _ => None,
    })
}

/// Every record of event-store partition `p`, as (offset, leaf hash).
pub async fn partition_records(kafka: &KafkaConfig, p: i32) -> Result<Vec<(i64, Hash)>> {
    stream_records(kafka, &Names::new(kafka).events, p).await
}

/// Every record of `topic` partition `p` as (offset, leaf hash), for the checkpoints of any
/// stream (the credits ledger's too).
pub async fn stream_records(kafka: &KafkaConfig, topic: &str, p: i32) -> Result<Vec<(i64, Hash)>> {
    let read = triad_kafka::consume::read_partition_from(kafka, topic, p, 0, READ_FOR).await?;
    Ok(read
        .iter()
        .map(|m| {
            (
                m.offset(),
                merkle::leaf_hash(m.payload().unwrap_or_default()),
            )
        })
        .collect())
}

/// What the checkpoints of a partition say about its records.
#[derive(Debug, Default)]
pub struct Coverage {
    /// Checkpoints verified, in chain order.
    pub checkpoints: usize,
    /// Offsets below this are under a verified checkpoint.
    pub covered_to: i64,
    /// Records under them.
    pub records: usize,
    pub problems: Vec<String>,
}

/// Checks partition `partition`'s checkpoints against its records (`records`: every record
/// read, as (offset, leaf hash), in offset order): the chain runs 1, 2, 3… from offset 0,
/// each linked to the one before, signed by a signing key the directory enrols, and each
/// range holds exactly the records signed. Read the checkpoints *before* the records: the
/// log only grows, so a checkpoint reaching past the last record read means the tail was
/// cut. The check stops at the first break (what follows cannot be trusted).
pub fn check_checkpoints(
    stream: &str,
    partition: i32,
    records: &[(i64, Hash)],
    checkpoints: &[(i64, triad_domain::CustodyCheckpoint)],
    directory: &triad_sovereignty::KeyDirectory,
) -> Coverage {
    use crate::notary::{Head, statement};
    let read_to = records.last().map_or(0, |(o, _)| o + 1);
    let mut head = Head::GENESIS;
    let mut cov = Coverage::default();
    let mut last: Option<&triad_domain::CustodyCheckpoint> = None;
    for (at, c) in checkpoints {
        if last == Some(c) {
            continue; // a byte-identical copy
        }
        let Some((cp, bytes)) = statement(c) else {
            cov.problems.push(format!(
                "the checkpoint at offset {at} has fields out of range"
            ));
            break;
        };
        let name = format!(
            "checkpoint #{} (offsets {}..{})",
            c.sequence, c.from_offset, c.to_offset
        );
        if c.stream != stream || c.partition != partition {
            cov.problems.push(format!(
                "{name} is about {} partition {}, not {stream} partition {partition}",
                c.stream, c.partition
            ));
            break;
        }
        if cp.sequence != head.sequence + 1
            || c.from_offset != head.to_offset
            || cp.previous != head.hash
        {
            cov.problems.push(format!(
                "{name} does not continue the chain after #{} (ending at offset {}): a checkpoint was removed or altered, or two notaries wrote",
                head.sequence, head.to_offset
            ));
            break;
        }
        match directory.signer(&c.key_id) {
            None => {
                cov.problems.push(format!(
                    "{name} is signed by key {}, which the key directory does not enrol as a signing key",
                    c.key_id
                ));
                break;
            }
            Some(s) => {
                if s.node_id != c.node_id
                    || s.state == triad_sovereignty::KeyState::Revoked
                    || !triad_sovereignty::signing::verify(&s.public_key, &bytes, &c.signature)
                {
                    cov.problems.push(format!(
                        "{name}: the signature does not verify for node {} (key {})",
                        c.node_id, c.key_id
                    ));
                    break;
                }
            }
        }
        if c.to_offset > read_to {
            cov.problems.push(format!(
                "{name} reaches past the partition's end at offset {read_to}: records were deleted (the tail cut)"
            ));
            break;
        }
        let range: Vec<Hash> = records
            .iter()
            .filter(|(o, _)| *o >= c.from_offset && *o < c.to_offset)
            .map(|(_, h)| *h)
            .collect();
        if u64::try_from(range.len()).ok() != Some(cp.records) {
            cov.problems.push(format!(
                "{name} signs {} records, the log holds {} there: records were deleted or inserted",
                c.records,
                range.len()
            ));
            break;
        }
        if merkle::root(&range) != cp.root {
            cov.problems.push(format!(
                "{name}: the records there are not the ones signed: a record was edited or reordered"
            ));
            break;
        }
        cov.checkpoints += 1;
        cov.records += range.len();
        head = Head {
            sequence: cp.sequence,
            to_offset: c.to_offset,
            hash: custody::sha256(&bytes),
        };
        last = Some(c);
    }
    cov.covered_to = head.to_offset;
    cov
}

/// What `verify` found: the operations checked, the zones they stayed in, who signed the
/// root, the problems.
#[derive(Debug, Default)]
pub struct Verdict {
    pub events: usize,
    pub operations: usize,
    pub zones: std::collections::BTreeSet<String>,
    /// The node whose signature over the root of the events before the terminal one
    /// verified, and how many events that root covers.
    pub root_signed_by: Option<(String, u64)>,
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
/// groups: gap-free; ending in a terminal event whose signed root, by a signing key the
/// directory enrols, is the root of exactly the events before it; and every completed
/// attempt carrying an execution record signed by a signing key the directory enrols in the
/// zone it claims, over exactly the prompt, inputs and output the log holds, run and
/// processed inside the task's allowed zones.
pub fn check(
    leaves: &[Leaf],
    directory: &triad_sovereignty::KeyDirectory,
    groups: &[(String, Vec<String>)],
) -> Verdict {
    use std::collections::{BTreeMap, BTreeSet};
    // A processor that crashed between writing and committing writes byte-identical copies
    // again (deterministic events, deterministic signatures): a copy adds nothing, a
    // different event at a taken sequence is a problem found below.
    let mut distinct: Vec<&Leaf> = Vec::with_capacity(leaves.len());
    for l in leaves {
        if !distinct.iter().any(|d| d.hash == l.hash) {
            distinct.push(l);
        }
    }
    let hashes: Vec<Hash> = distinct.iter().map(|l| l.hash).collect();
    let events: Vec<&WorkflowEvent> = distinct.iter().map(|l| &l.event).collect();
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
    let end = events.iter().rposition(|e| e.body.is_terminal());
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
    if let Some(i) = end {
        check_root(events[i], &hashes[..i], directory, &mut v);
    }
    v
}

/// The terminal event's signed root must be the processor's signature, by a signing key the
/// directory enrols, over the root of exactly the events before it: this covers every clear
/// field no execution record signs (labels, routing, costs, the accepted workflow itself).
fn check_root(
    terminal: &WorkflowEvent,
    before: &[Hash],
    directory: &triad_sovereignty::KeyDirectory,
    v: &mut Verdict,
) {
    let Some(r) = &terminal.signed_root else {
        v.problems.push(format!(
            "the terminal event {} carries no signed root: nothing vouches for the {} events before it",
            terminal.meta.event_id,
            before.len()
        ));
        return;
    };
    let n = u64::try_from(before.len()).unwrap_or(u64::MAX);
    let Ok(claimed) = custody::hash_from_hex("signed_root.root", &r.root) else {
        v.problems
            .push("the signed root is not a 32-byte hex hash".to_owned());
        return;
    };
    if u64::try_from(r.leaves).ok() != Some(n) {
        v.problems.push(format!(
            "the signed root covers {} events, the log holds {n} before the terminal event: events were inserted or deleted",
            r.leaves
        ));
    } else if merkle::root(before) != claimed {
        v.problems.push(
            "the signed root is not the root of the events before the terminal event: an event was edited, inserted, deleted or reordered".to_owned(),
        );
    }
    let Some(s) = directory.signer(&r.key_id) else {
        v.problems.push(format!(
            "the root is signed by key {}, which the key directory does not enrol as a signing key",
            r.key_id
        ));
        return;
    };
    let signed = custody::root_bytes(&custody::SignedRoot {
        workflow_id: &terminal.meta.workflow_id,
        event_id: &terminal.meta.event_id,
        leaves: u64::try_from(r.leaves).unwrap_or(u64::MAX),
        root: claimed,
    });
    if s.node_id != r.node_id {
        v.problems.push(format!(
            "the root's key {} belongs to {}, but the root claims {}",
            r.key_id, s.node_id, r.node_id
        ));
    } else if s.state == triad_sovereignty::KeyState::Revoked {
        v.problems
            .push(format!("the root is signed by revoked key {}", r.key_id));
    } else if !triad_sovereignty::signing::verify(&s.public_key, &signed, &r.signature) {
        v.problems
            .push("the signature over the root does not verify".to_owned());
    } else {
        v.root_signed_by = Some((r.node_id.clone(), n));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::notary::{Head, STREAM, next};
    use triad_sovereignty::signing::{Signer, SoftwareSigner};

    fn records(n: i64) -> Vec<(i64, Hash)> {
        (0..n)
            .map(|o| (o, merkle::leaf_hash(&o.to_be_bytes())))
            .collect()
    }

    /// Checkpoints over `records` ending at each of `ends`, signed by `signer`.
    fn chain_over(
        records: &[(i64, Hash)],
        ends: &[i64],
        signer: &dyn Signer,
    ) -> Vec<(i64, triad_domain::CustodyCheckpoint)> {
        let mut head = Head::GENESIS;
        let mut out = Vec::new();
        for (i, end) in ends.iter().enumerate() {
            let leaves: Vec<Hash> = records
                .iter()
                .filter(|(o, _)| *o >= head.to_offset && o < end)
                .map(|(_, h)| *h)
                .collect();
            let (c, h) = next(STREAM, &head, 0, &leaves, *end, "notary", signer).unwrap();
            out.push((i64::try_from(i).unwrap(), c));
            head = h;
        }
        out
    }

    /// A directory enrolling `signer` as node `node`'s signing key.
    fn directory(node: &str, signer: &dyn Signer) -> triad_sovereignty::KeyDirectory {
        let mut d = triad_sovereignty::KeyDirectory::default();
        d.apply(&triad_sovereignty::DirectoryChange::SigningKeyEnrolled {
            node_id: node.into(),
            zone: "US-EAST".into(),
            public_key: triad_sovereignty::public_hex(signer.public()),
        })
        .unwrap();
        d
    }

    fn problems(
        records: &[(i64, Hash)],
        cps: &[(i64, triad_domain::CustodyCheckpoint)],
        d: &triad_sovereignty::KeyDirectory,
    ) -> String {
        check_checkpoints(STREAM, 0, records, cps, d)
            .problems
            .join("; ")
    }

    #[test]
    fn a_checkpoint_chain_verifies_and_every_break_is_found() {
        let notary = SoftwareSigner::generate();
        let d = directory("notary", &notary);
        let log = records(30);
        let cps = chain_over(&log, &[10, 25, 30], &notary);
        let ok = check_checkpoints(STREAM, 0, &log, &cps, &d);
        assert!(ok.problems.is_empty(), "{:?}", ok.problems);
        assert_eq!((ok.checkpoints, ok.covered_to, ok.records), (3, 30, 30));
        // Records after the last checkpoint are simply not covered yet.
        let longer = records(33);
        assert_eq!(
            check_checkpoints(STREAM, 0, &longer, &cps, &d).covered_to,
            30
        );

        let mut edited = log.clone();
        edited[12].1 = merkle::leaf_hash(b"edited");
        assert!(problems(&edited, &cps, &d).contains("not the ones signed"));
        let mut gap = log.clone();
        gap.remove(12);
        assert!(problems(&gap, &cps, &d).contains("signs 15 records, the log holds 14"));
        assert!(problems(&log[..27], &cps, &d).contains("records were deleted (the tail cut)"));
        let mut swapped = log.clone();
        swapped.swap(3, 4);
        assert!(problems(&swapped, &cps, &d).contains("not the ones signed"));

        let removed: Vec<_> = [cps[0].clone(), cps[2].clone()].into();
        assert!(problems(&log, &removed, &d).contains("does not continue the chain"));
        // A second notary's chain over the same records forks at its first checkpoint.
        let other = chain_over(&log, &[12, 30], &notary);
        let forked: Vec<_> = [cps[0].clone(), other[1].clone()].into();
        assert!(problems(&log, &forked, &d).contains("does not continue the chain"));

        let stranger = SoftwareSigner::generate();
        let foreign = chain_over(&log, &[10, 25, 30], &stranger);
        assert!(problems(&log, &foreign, &d).contains("does not enrol as a signing key"));
        let mut resigned = cps.clone();
        resigned[1].1.root = triad_sovereignty::hex(&merkle::leaf_hash(b"x"));
        assert!(problems(&log, &resigned, &d).contains("signature does not verify"));
        // A byte-identical copy of a checkpoint counts once.
        let copied: Vec<_> = [
            cps[0].clone(),
            cps[0].clone(),
            cps[1].clone(),
            cps[2].clone(),
        ]
        .into();
        assert!(problems(&log, &copied, &d).is_empty());
    }

    fn published(text: &str, signer: &dyn Signer, node: &str) -> triad_domain::PolicyVersion {
        triad_domain::PolicyVersion {
            version: triad_sovereignty::hex(&custody::sha256(text.as_bytes())),
            document: text.to_owned(),
            node_id: node.to_owned(),
            key_id: signer.key_id().to_owned(),
            signature: triad_sovereignty::hex(&signer.sign(&custody::policy_bytes(text)).unwrap()),
            published_at: 0,
            schema_version: 1,
        }
    }

    #[test]
    fn only_a_signed_policy_whose_text_hashes_to_its_version_is_in_force() {
        let processor = SoftwareSigner::generate();
        let d = directory("processor", &processor);
        let text = r#"{"zones":["US-EAST","EU-WEST"],"groups":{"CONUS":["US-EAST"]},"hosts":{},"models":{}}"#;
        let good = published(text, &processor, "processor");
        let v = good.version.clone();
        let (doc, by) = policy_in_force(Some(&v), std::slice::from_ref(&good), &d).unwrap();
        assert_eq!(
            (doc.groups["CONUS"].clone(), by.as_str()),
            (vec!["US-EAST".to_owned()], "processor")
        );

        let err = |records: &[triad_domain::PolicyVersion], version: Option<&str>| {
            policy_in_force(version, records, &d).unwrap_err()
        };
        assert!(err(std::slice::from_ref(&good), None).contains("names no policy version"));
        assert!(err(&[], Some(&v)).contains("no record on the policy topic"));
        // A wider policy under the old version's name: the text does not hash to it.
        let mut widened = good.clone();
        widened.document = widened
            .document
            .replace(r#"["US-EAST"]"#, r#"["US-EAST","EU-WEST"]"#);
        assert!(err(&[widened], Some(&v)).contains("does not hash to it"));
        let stranger = SoftwareSigner::generate();
        assert!(
            err(&[published(text, &stranger, "processor")], Some(&v)).contains("does not enrol")
        );
        let mut forged = good.clone();
        forged.signature = triad_sovereignty::hex(&processor.sign(b"other").unwrap());
        assert!(err(&[forged.clone()], Some(&v)).contains("does not verify"));
        // A forged record next to the genuine one does not hide it.
        assert!(policy_in_force(Some(&v), &[forged, good], &d).is_ok());
    }
}
