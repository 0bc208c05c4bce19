//! The workflow processor: consumes `triad.workflow-inbox`, runs
//! [`triad_workflow::aggregate::process`] for each record, and is the only writer of
//! event-store partition p for inbox partition p. After the events of an input are
//! acknowledged it publishes their side effects: a `TaskRequest` to `triad.tasks.<zone>` for
//! each dispatched attempt and a `ControlRecord` to `triad.control` for a cancellation.
//!
//! Crash safety without Kafka transactions (ADR 0002, ADR 0005): a record's events are
//! produced in order with `acks=all` before its offset is stored. When a partition is first
//! seen, its state is folded from the event-store partition; inputs whose offset precedes
//! the last input recorded there (causation) are already applied and skipped; the last one
//! may have been cut short by a crash, so it is re-run from the state before it and only the
//! events whose (deterministic) ids are missing are written. Then the outbox rule: the request
//! of every attempt in flight is published again (executors dedupe by attempt id; a repeated
//! result is recorded as discarded, never applied twice). The consumer uses static group
//! membership so a restarted instance takes its partitions back at once.
//!
//! Timers ([`timers`]) watch each attempt in flight: an SLA deadline, and an "unclaimed"
//! check that moves the task to another zone when its zone shows no live executor.
//!
//! After any rebalance a partition's state is loaded again from the log before its next input
//! (another instance may have owned it meanwhile).
//!
//! Recovery is bounded ([`recovery`], ADR 0005): every `processor.snapshot_every` inputs, the
//! workflows a partition changed are written to the compacted `triad.workflow-snapshots`
//! (after their events are acknowledged, by one writer task, in input order) followed by a
//! checkpoint naming the event offset they cover. Loading a partition writes an epoch marker,
//! reads the snapshots and folds only the event-store tail after the checkpoint.

pub mod custody;
pub mod ledger;
mod models;
pub mod recovery;
pub mod timers;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::{BoxFuture, Shared};
use futures::{FutureExt, StreamExt};
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use triad_codec::{AvroRecord, Codec};
use triad_config::{KafkaConfig, PolicyConfig, ProcessorConfig};
use triad_domain::{
    CommandMetadata, ControlAction, ControlRecord, EpochMarker, EventBody, ExecutorStatus,
    InboxBody, InboxRecord, SnapshotBody, SnapshotCheckpoint, SnapshotState, StatusBody,
    TaskTimerFired, TimerKind, WorkflowEvent, WorkflowSnapshot,
};
use triad_kafka::consume::{Group, Outcome};
use triad_kafka::dlq::DeadLetterWriter;
use triad_kafka::produce::{Delivered, Producer};
use triad_kafka::topics::Names;
use triad_sovereignty::merkle::leaf_hash;
use triad_workflow::Limits;
use triad_workflow::aggregate::{
    Input, Policy, STATE_FORMAT, WorkflowState, pending_requests, process, task_request,
};

use crate::recovery::{Repair, Start};
use crate::timers::{Liveness, Timer, Timers};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kafka(#[from] triad_kafka::Error),
    #[error(transparent)]
    Codec(#[from] triad_codec::Error),
    #[error("signing the chain of custody failed: {0}")]
    Sign(#[from] triad_sovereignty::Error),
    #[error(
        "credits ledger partition {partition}@{offset}: {reason}; the partition stays stopped \
         until an operator repairs it"
    )]
    Ledger {
        partition: i32,
        offset: i64,
        reason: String,
    },
    #[error(
        "event store {topic}/{partition}@{offset} does not decode: {source}; the partition \
         stays stopped until an operator repairs it"
    )]
    EventStore {
        topic: String,
        partition: i32,
        offset: i64,
        #[source]
        source: triad_codec::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The policy document of the configured sovereignty policy and model catalogue: what a
/// policy version states, in its one canonical text.
pub fn policy_document(
    policy: &PolicyConfig,
    models: &[triad_workflow::ModelOffer],
) -> triad_domain::PolicyDocument {
    triad_domain::PolicyDocument {
        zones: policy.zones.clone(),
        groups: policy.groups.clone(),
        hosts: policy.hosts.clone(),
        models: models
            .iter()
            .map(|m| (m.id.clone(), m.zones.clone()))
            .collect(),
    }
}

/// The canonical text of `document` and its version (hex SHA-256 of the text).
pub fn policy_text(document: &triad_domain::PolicyDocument) -> (String, String) {
    // Struct fields in declaration order, map keys sorted (BTreeMap): one policy, one text.
    let text = serde_json::to_string(document).unwrap_or_default();
    let version = triad_sovereignty::hex(&triad_sovereignty::custody::sha256(text.as_bytes()));
    (text, version)
}

/// The aggregate's policy from the configured sovereignty policy and model catalogue. Its
/// version is set by [`run`] once it is published.
pub fn policy_from(
    policy: &PolicyConfig,
    credits: &triad_config::CreditsConfig,
    models: &[triad_workflow::ModelOffer],
) -> Policy {
    Policy {
        zones: policy.zones.clone(),
        groups: policy
            .groups
            .iter()
            .map(|(g, zs)| (g.clone(), zs.clone()))
            .collect(),
        default_model: models.first().map(|m| m.id.clone()).unwrap_or_default(),
        models: Some(models.to_vec()),
        limits: Limits::default(),
        version: String::new(),
        costs: Some(Arc::new(triad_market::MarketCosts)),
        require_account: credits.require_account,
        registry_position: None,
    }
}

/// Publishes `document` on `triad.policies`, signed, unless this signer already did; returns
/// its version. A processor does this before it decides any input, so every
/// `WorkflowAccepted.policy_version` names a version already on the log.
async fn publish_policy(
    kafka: &KafkaConfig,
    codec: &Codec,
    producer: &Producer,
    document: &triad_domain::PolicyDocument,
    signer: &custody::RootSigner,
) -> Result<String> {
    let (text, version) = policy_text(document);
    let topic = Names::new(kafka).policies;
    let published = triad_kafka::consume::read_all(kafka, &topic, Duration::from_secs(60)).await?;
    for m in &published {
        if let Ok(p) = codec
            .decode::<triad_domain::PolicyVersion>(m.payload())
            .await
            && p.version == version
            && p.key_id == signer.signer.key_id()
        {
            return Ok(version);
        }
    }
    let signature = triad_sovereignty::hex(
        &signer
            .signer
            .sign(&triad_sovereignty::custody::policy_bytes(&text))?,
    );
    let record = triad_domain::PolicyVersion {
        version: version.clone(),
        document: text,
        node_id: signer.node_id.clone(),
        key_id: signer.signer.key_id().to_owned(),
        signature,
        published_at: triad_kafka::now_micros(),
        schema_version: 1,
    };
    producer
        .send_record(codec, &topic, None, &version, &record)
        .await?;
    tracing::info!(policy.version = %version, messaging.destination.name = %topic, "policy version published");
    Ok(version)
}

/// The ledger command `state` waits on (docs/credits.md), if any: the reservation of its
/// worst case while it awaits one, the settlement of its spend once it finished on one. The
/// processor sends it after the event that calls for it, again on recovery, and every
/// `processor.ledger_retry_ms` until the answer is on the log; the ledger answers a repeat
/// with its first answer.
pub fn ledger_command(
    state: &WorkflowState,
    reply_topic: &str,
) -> Option<triad_domain::CreditsCommand> {
    let budget = state.budget.as_ref()?;
    let (kind, body) = if state.awaiting_budget() {
        (
            "reserve",
            triad_domain::CreditsCommandBody::ReserveCredits(triad_domain::ReserveCredits {
                workflow_id: state.workflow_id.clone(),
                amount_micros: budget.reserved_micros,
                reply_topic: reply_topic.to_owned(),
            }),
        )
    } else if state.needs_settlement() {
        (
            "settle",
            triad_domain::CreditsCommandBody::SettleReservation(triad_domain::SettleReservation {
                workflow_id: state.workflow_id.clone(),
                burned_micros: state.spent_micros,
                reply_topic: reply_topic.to_owned(),
            }),
        )
    } else {
        return None;
    };
    Some(triad_domain::CreditsCommand {
        command_id: uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("triad-budget:{kind}:{}", state.workflow_id).as_bytes(),
        )
        .to_string(),
        account: budget.account.clone(),
        issued_at: triad_kafka::now_micros(),
        actor: Some("processor".to_owned()),
        body,
        schema_version: triad_domain::CREDITS_SCHEMA_VERSION,
    })
}

/// The policy of the default configuration.
pub fn default_policy() -> Policy {
    policy_from(
        &PolicyConfig::default(),
        &triad_config::CreditsConfig::default(),
        &[triad_workflow::ModelOffer::new(
            "triad-local",
            Vec::new(),
            Vec::new(),
        )],
    )
}

#[derive(Debug, Clone)]
pub struct Options {
    pub kafka: KafkaConfig,
    pub policy: Policy,
    pub timing: ProcessorConfig,
    /// Distinguishes processors sharing the group (static membership id).
    pub instance: u32,
    /// Signs each terminal event's root (`sovereignty.seal`); without it terminal events
    /// carry none and `triad audit verify` says so.
    pub signer: Option<custody::RootSigner>,
    /// The policy as a version states it; published (with a signer) before the first input,
    /// and its version stamped on every accepted workflow.
    pub policy_document: triad_domain::PolicyDocument,
    /// The policy's host allowlist per zone (`policy.hosts`), for checking registered models.
    pub zone_hosts: std::collections::BTreeMap<String, Vec<String>>,
}

#[derive(Debug, Default)]
struct PartitionState {
    /// The assignment count (`Group::rebalances`) this state was loaded under.
    generation: u64,
    workflows: HashMap<String, WorkflowState>,
    /// The highest inbox offset with events in the log, -1 when none.
    last_input: i64,
    repair: Option<Repair>,
    /// The offset of this owner's epoch marker in the snapshot partition (-1: snapshots off).
    epoch: i64,
    /// Workflows changed since their last snapshot.
    dirty: HashSet<String>,
    /// Inputs with events since the last snapshot round.
    since_snapshot: u64,
}

/// An acknowledgement both the offset commit and the snapshot writer wait for.
type Ack = Shared<BoxFuture<'static, Result<Delivered, String>>>;

/// The snapshots of one round: written after `event_acks`, then the checkpoint if every
/// changed workflow could be snapshotted.
struct Round {
    partition: i32,
    epoch: i64,
    event_acks: Vec<Ack>,
    states: Vec<Outgoing>,
    checkpoint_last_input: Option<i64>,
}

enum WriterMessage {
    Round(Round),
    /// Answered when every round sent before it is written (or abandoned).
    Barrier(oneshot::Sender<()>),
}

struct Processor {
    kafka: KafkaConfig,
    names: Names,
    policy: Policy,
    timing: ProcessorConfig,
    codec: Arc<Codec>,
    producer: Producer,
    partitions: Mutex<HashMap<i32, PartitionState>>,
    timers: Timers,
    rebalances: Arc<std::sync::atomic::AtomicU64>,
    /// Names this instance in its epoch markers.
    instance: String,
    snapshots: mpsc::Sender<WriterMessage>,
    signer: Option<custody::RootSigner>,
    /// Remote models registered on `triad.models` (module `models`).
    registry: Arc<models::Registry>,
}

/// One encoded record waiting to be sent.
struct Outgoing {
    topic: String,
    partition: Option<i32>,
    key: String,
    bytes: Vec<u8>,
}

impl Processor {
    /// Restores partition `p`: the snapshots up to this owner's epoch marker, then the
    /// event-store tail after their checkpoint (or the whole partition when they cannot be
    /// used); then the outbox rule.
    async fn load(&self, p: i32) -> Result<PartitionState> {
        let every = self.timing.snapshot_every;
        let (epoch, start) = if every == 0 {
            let reason = "processor.snapshot_every = 0".to_owned();
            (
                -1,
                Start::Log {
                    reason,
                    heal: false,
                    stale: vec![],
                },
            )
        } else {
            // Our own rounds of an earlier ownership go first, so they are not mistaken for a
            // zombie's writes after the new marker.
            self.snapshot_barrier().await;
            let epoch = self.write_marker(p).await?;
            (epoch, self.read_snapshots(p, epoch).await?)
        };
        let (seed, from, last_input, reason, heal, stale) = match start {
            Start::Snapshots {
                workflows,
                event_offset,
                last_input,
            } => (workflows, event_offset, last_input, None, false, vec![]),
            Start::Log {
                reason,
                heal,
                stale,
            } => (HashMap::new(), 0, -1, Some(reason), heal, stale),
        };
        let seeded = seed.len();
        let records = triad_kafka::consume::read_partition_from(
            &self.kafka,
            &self.names.events,
            p,
            from,
            Duration::from_secs(120),
        )
        .await?;
        let mut events = Vec::with_capacity(records.len());
        for m in &records {
            let event: WorkflowEvent =
                self.codec
                    .decode(m.payload())
                    .await
                    .map_err(|source| Error::EventStore {
                        topic: self.names.events.clone(),
                        partition: p,
                        offset: m.offset(),
                        source,
                    })?;
            events.push(event);
        }
        let leaves: Vec<_> = records
            .iter()
            .map(|m| leaf_hash(m.payload().unwrap_or_default()))
            .collect();
        let folded = recovery::fold(seed, last_input, &events, &leaves, &self.names.inbox, p);
        let heal_point = if heal {
            let offsets: Vec<i64> = records.iter().map(|m| m.offset()).collect();
            let point = recovery::heal_point(
                &folded,
                &events,
                &offsets,
                from,
                last_input,
                &self.names.inbox,
                p,
            );
            // None is not expected; the next round then rewrites every workflow instead.
            Some(point)
        } else {
            None
        };
        let from_log = reason.is_some();
        let mut ps = PartitionState {
            dirty: if from_log {
                folded.workflows.keys().cloned().collect()
            } else {
                folded.touched
            },
            workflows: folded.workflows,
            last_input: folded.last_input,
            repair: folded.repair,
            epoch,
            ..PartitionState::default()
        };
        match heal_point {
            Some(Some((event_offset, cut_input))) => {
                self.heal(p, &mut ps, event_offset, cut_input, &stale)
                    .await?;
            }
            Some(None) => ps.since_snapshot = every,
            None => {}
        }
        // The outbox rule: every attempt in flight is requested again, and its timers armed.
        let mut outbox = Vec::new();
        for state in ps.workflows.values() {
            if let Some(command) = ledger_command(state, &self.names.inbox) {
                outbox.push(
                    self.encode(&self.names.credits_inbox, None, &command.account, &command)
                        .await?,
                );
            }
            for request in pending_requests(state, &self.policy) {
                outbox.push(
                    self.encode(
                        &self.names.tasks(&request.zone),
                        None,
                        &request.workflow_id,
                        &request,
                    )
                    .await?,
                );
            }
            self.arm(state);
        }
        let republished = outbox.len();
        self.send_all(outbox).await?;
        tracing::info!(
            messaging.destination.name = %self.names.events,
            messaging.destination.partition.id = p,
            snapshot.epoch = epoch,
            snapshots = seeded,
            tail_from = from,
            events = records.len(),
            fold_reason = reason.as_deref().unwrap_or("-"),
            workflows = ps.workflows.len(),
            last_input = ps.last_input,
            duplicates = folded.duplicates,
            republished,
            "partition state restored"
        );
        Ok(ps)
    }

    /// Writes this owner's epoch marker to snapshot partition `p`; its offset is the epoch.
    async fn write_marker(&self, p: i32) -> Result<i64> {
        let marker = WorkflowSnapshot {
            partition: p,
            epoch: -1,
            written_at: triad_kafka::now_micros(),
            body: SnapshotBody::EpochMarker(EpochMarker {
                instance: self.instance.clone(),
            }),
            schema_version: 1,
        };
        let delivered = self
            .producer
            .send_record(
                &self.codec,
                &self.names.snapshots,
                Some(p),
                &marker.key(),
                &marker,
            )
            .await?;
        Ok(delivered.offset)
    }

    /// Reads snapshot partition `p` before `epoch` and chooses where the fold starts.
    async fn read_snapshots(&self, p: i32, epoch: i64) -> Result<Start> {
        let records = triad_kafka::consume::read_partitions(
            &self.kafka,
            &self.names.snapshots,
            Some(p),
            Duration::from_secs(120),
        )
        .await?;
        let mut decoded = Vec::with_capacity(records.len());
        for m in records.iter().filter(|m| m.offset() < epoch) {
            let key = String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned();
            let Some(payload) = m.payload() else {
                decoded.push(recovery::Stored {
                    offset: m.offset(),
                    key,
                    value: None,
                });
                continue;
            };
            match self.codec.decode::<WorkflowSnapshot>(Some(payload)).await {
                Ok(record) => decoded.push(recovery::Stored {
                    offset: m.offset(),
                    key,
                    value: Some(record),
                }),
                Err(error) if error.is_undecodable() => {
                    return Ok(Start::Log {
                        reason: format!(
                            "the snapshot record at offset {} does not decode: {error}",
                            m.offset()
                        ),
                        heal: true,
                        stale: vec![key],
                    });
                }
                Err(error) => return Err(error.into()),
            }
        }
        Ok(recovery::select(&decoded, epoch))
    }

    /// Snapshots every workflow of the partition and a checkpoint at (`event_offset`,
    /// `last_input`) now: after a load that could not trust the snapshots, so the next one
    /// can. A workflow whose last input may be partial is snapshotted as it was before that
    /// input, which the checkpoint leaves in the tail.
    async fn heal(
        &self,
        p: i32,
        ps: &mut PartitionState,
        event_offset: i64,
        last_input: i64,
        stale: &[String],
    ) -> Result<()> {
        let mut all: Vec<(&String, &WorkflowState)> = ps.workflows.iter().collect();
        all.sort_by_key(|(id, _)| *id);
        let mut states = Vec::with_capacity(all.len());
        let mut complete = true;
        for (id, current) in all {
            let state = match &ps.repair {
                Some(r) if &r.workflow_id == id => &r.before,
                _ => current,
            };
            if state.sequence == 0 {
                continue; // nothing before the partial input: the fold starts empty
            }
            match self.encode_state(p, ps.epoch, id, state).await? {
                Some(record) => states.push(record),
                None => complete = false,
            }
        }
        let written = states.len();
        self.send_all(states).await?;
        // A stale key that is no workflow here (the heal rewrote all workflows) is deleted,
        // so it stops looking like a zombie's write.
        for key in stale.iter().filter(|k| !ps.workflows.contains_key(*k)) {
            self.producer
                .send_to(
                    &self.names.snapshots,
                    Some(p),
                    Some(key.as_bytes()),
                    None,
                    &[],
                )
                .await?;
        }
        if complete {
            ps.dirty.clear();
            let checkpoint = self.checkpoint(p, ps.epoch, event_offset, last_input);
            self.producer
                .send_record(
                    &self.codec,
                    &self.names.snapshots,
                    Some(p),
                    &checkpoint.key(),
                    &checkpoint,
                )
                .await?;
        }
        tracing::info!(
            messaging.destination.partition.id = p,
            snapshots = written,
            checkpoint = complete,
            event_offset,
            "snapshots healed"
        );
        Ok(())
    }

    fn checkpoint(
        &self,
        p: i32,
        epoch: i64,
        event_offset: i64,
        last_input: i64,
    ) -> WorkflowSnapshot {
        WorkflowSnapshot {
            partition: p,
            epoch,
            written_at: triad_kafka::now_micros(),
            body: SnapshotBody::SnapshotCheckpoint(SnapshotCheckpoint {
                event_offset,
                last_input,
            }),
            schema_version: 1,
        }
    }

    /// Encodes the snapshots of the partition's changed workflows and clears them from
    /// `dirty`; a state that cannot be snapshotted stays dirty, and `complete` is false.
    async fn encode_states(
        &self,
        p: i32,
        ps: &mut PartitionState,
    ) -> Result<(Vec<Outgoing>, bool)> {
        let mut ids: Vec<String> = ps.dirty.drain().collect();
        ids.sort();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(state) = ps.workflows.get(&id) else {
                continue;
            };
            match self.encode_state(p, ps.epoch, &id, state).await? {
                Some(record) => out.push(record),
                None => {
                    ps.dirty.insert(id);
                }
            }
        }
        Ok((out, ps.dirty.is_empty()))
    }

    /// The snapshot record of one workflow, or None when its state cannot be snapshotted
    /// (too large for a record): recovery then folds it from the last good checkpoint.
    async fn encode_state(
        &self,
        p: i32,
        epoch: i64,
        id: &str,
        state: &WorkflowState,
    ) -> Result<Option<Outgoing>> {
        let bytes = match state.to_snapshot() {
            Ok(b) if b.len() <= self.timing.snapshot_max_bytes => b,
            Ok(b) => {
                tracing::warn!(workflow.id = %id, bytes = b.len(), limit = self.timing.snapshot_max_bytes, "workflow state too large to snapshot; recovery folds the log from the last checkpoint");
                return Ok(None);
            }
            Err(error) => {
                tracing::warn!(workflow.id = %id, %error, "workflow state not snapshotted");
                return Ok(None);
            }
        };
        let record = WorkflowSnapshot {
            partition: p,
            epoch,
            written_at: triad_kafka::now_micros(),
            body: SnapshotBody::SnapshotState(SnapshotState {
                workflow_id: id.to_owned(),
                sequence: state.sequence,
                state_format: STATE_FORMAT.to_owned(),
                state: bytes,
            }),
            schema_version: 1,
        };
        Ok(Some(
            self.encode(&self.names.snapshots, Some(p), id, &record)
                .await?,
        ))
    }

    /// Waits (at most 30 s) until the snapshot writer has handled every round sent so far.
    async fn snapshot_barrier(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .snapshots
            .send(WriterMessage::Barrier(tx))
            .await
            .is_ok()
            && tokio::time::timeout(Duration::from_secs(30), rx)
                .await
                .is_err()
        {
            tracing::warn!("the snapshot writer did not drain within 30 s");
        }
    }

    fn arm(&self, state: &WorkflowState) {
        self.timers.sync(
            state,
            triad_kafka::now_micros(),
            Duration::from_millis(self.timing.unclaimed_after_ms),
            Duration::from_millis(self.timing.deadline_grace_ms),
        );
    }

    async fn encode<T: AvroRecord>(
        &self,
        topic: &str,
        partition: Option<i32>,
        key: &str,
        record: &T,
    ) -> Result<Outgoing> {
        Ok(Outgoing {
            topic: topic.to_owned(),
            partition,
            key: key.to_owned(),
            bytes: self.codec.encode(topic, record).await?,
        })
    }

    /// Sends records in order and waits for every acknowledgement. They are enqueued
    /// together (the idempotent producer keeps their order per partition), so an input's
    /// events cost one round trip, not one per event.
    async fn send_all(&self, records: Vec<Outgoing>) -> Result<()> {
        let sends = records.iter().map(|r| {
            self.producer.send_to(
                &r.topic,
                r.partition,
                Some(r.key.as_bytes()),
                Some(&r.bytes),
                &[],
            )
        });
        futures::future::try_join_all(sends).await?;
        Ok(())
    }

    async fn handle(&self, m: OwnedMessage) -> Result<Outcome> {
        let (p, o) = (m.partition(), m.offset());
        let mut partitions = self.partitions.lock().await;
        // After a rebalance the partition may have had another owner meanwhile: its state is
        // loaded again from the log (the revoke flushed our own writes into it).
        let generation = self.rebalances.load(std::sync::atomic::Ordering::SeqCst);
        if partitions
            .get(&p)
            .is_some_and(|ps| ps.generation != generation)
        {
            tracing::info!(
                messaging.destination.partition.id = p,
                "rebalanced; reloading the partition's state"
            );
            partitions.remove(&p);
        }
        let ps = match partitions.entry(p) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let mut loaded = self.load(p).await?;
                loaded.generation = generation;
                e.insert(loaded)
            }
        };
        let repairing = ps.repair.as_ref().is_some_and(|r| r.offset == o);
        if o < ps.last_input || (o == ps.last_input && !repairing) {
            return Ok(Outcome::Done); // already applied before a restart
        }
        let record: InboxRecord = match self.codec.decode(m.payload()).await {
            Ok(r) => r,
            Err(e) if e.is_undecodable() => {
                return Ok(Outcome::Undecodable {
                    kind: "decode",
                    reason: e.to_string(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let wf = record.meta.workflow_id.clone();
        // The repair is cleared only once the input's writes are enqueued: an error before
        // (e.g. the registry is unreachable) retries the same record with the same repair.
        let (mut state, present, stamped) = match ps.repair.as_ref().filter(|r| r.offset == o) {
            Some(r) => (
                r.before.clone(),
                r.present.clone(),
                Some(r.registry_position),
            ),
            None => (
                ps.workflows.get(&wf).cloned().unwrap_or_default(),
                HashSet::new(),
                None,
            ),
        };
        let input = Input {
            topic: &self.names.inbox,
            partition: p,
            offset: o,
            record: &record,
        };
        let mut events = if let InboxBody::SubmitWorkflow(_) = &record.body {
            // A submission is decided with the registry's models as of a position it records
            // (module `models`): a repair's recorded one, else the view's.
            let position = stamped
                .flatten()
                .unwrap_or_else(|| self.registry.position());
            let before = state.clone();
            let mut events = process(
                &mut state,
                &input,
                &self.registry.policy_at(&self.policy, position),
            );
            let rejected = events
                .iter()
                .any(|e| matches!(e.body, EventBody::WorkflowRejected(_)));
            // A registration acknowledged before this submission may not be read yet; a
            // repair keeps its recorded decision.
            if rejected && stamped.is_none() && self.registry.catch_up().await {
                state = before;
                let position = self.registry.position();
                events = process(
                    &mut state,
                    &input,
                    &self.registry.policy_at(&self.policy, position),
                );
            }
            events
        } else {
            process(&mut state, &input, &self.policy)
        };
        // The chain of custody follows the exact bytes: each event extends it, and a terminal
        // event first gets the signed root of the events before it. Events a crash already
        // wrote are encoded again (deterministically, RFC 6979 signatures included) so that
        // the chain stays whole, but not written twice.
        let mut writes = Vec::new();
        for event in &mut events {
            if let Some(signer) = &self.signer
                && event.body.is_terminal()
            {
                custody::seal(&state.custody, event, signer)?;
            }
            let write = self.encode(&self.names.events, Some(p), &wf, event).await?;
            custody::push(&mut state.custody, leaf_hash(&write.bytes));
            if !present.contains(&event.meta.event_id) {
                writes.push(write);
            }
        }
        // Side effects only after the events are in the log: a crash in between is repaired
        // by the outbox rule on recovery.
        let mut effects = Vec::new();
        // The budget saga's next step, after the events that call for it.
        let saga = events
            .iter()
            .any(|e| matches!(e.body, EventBody::BudgetRequested(_)) || e.body.is_terminal());
        if saga && let Some(command) = ledger_command(&state, &self.names.inbox) {
            effects.push(
                self.encode(&self.names.credits_inbox, None, &command.account, &command)
                    .await?,
            );
        }
        for event in &events {
            match &event.body {
                EventBody::TaskDispatched(d) => {
                    if let Some(request) = task_request(&state, &d.task_id, &self.policy)
                        .filter(|r| r.attempt_id == d.attempt_id)
                    {
                        effects.push(
                            self.encode(&self.names.tasks(&d.zone), None, &wf, &request)
                                .await?,
                        );
                    }
                }
                EventBody::WorkflowCancelled(c) => {
                    let control = ControlRecord {
                        workflow_id: wf.clone(),
                        action: ControlAction::Cancel,
                        reason: c.reason.clone(),
                        event_id: event.meta.event_id.clone(),
                        issued_at: event.meta.occurred_at,
                        schema_version: 1,
                    };
                    effects.push(
                        self.encode(&self.names.control, None, &wf, &control)
                            .await?,
                    );
                }
                _ => {}
            }
        }
        // Pipelining: the events are enqueued now, in input order, and the next input is
        // decided without waiting for their acknowledgement; the offset is stored when they
        // (and the effects after them) are acknowledged. A crash leaves a prefix of the
        // enqueued events in the log, which recovery handles (module docs).
        let mut acks: Vec<Ack> = Vec::with_capacity(writes.len());
        for w in &writes {
            let ack = self
                .producer
                .enqueue(&w.topic, w.partition, w.key.as_bytes(), &w.bytes)
                .await?;
            acks.push(ack.map(|r| r.map_err(|e| e.to_string())).boxed().shared());
        }
        if ps.repair.as_ref().is_some_and(|r| r.offset == o) {
            ps.repair = None;
        }
        let changed = !events.is_empty();
        if changed {
            self.arm(&state);
            ps.last_input = o;
            tracing::debug!(workflow.id = %wf, events = events.len(), messaging.kafka.offset = o, "input applied");
        }
        ps.workflows.insert(wf.clone(), state);
        let every = self.timing.snapshot_every;
        if changed && every > 0 {
            ps.dirty.insert(wf);
            ps.since_snapshot += 1;
            if ps.since_snapshot >= every {
                ps.since_snapshot = 0;
                let (states, complete) = self.encode_states(p, ps).await?;
                let round = Round {
                    partition: p,
                    epoch: ps.epoch,
                    event_acks: acks.clone(),
                    states,
                    checkpoint_last_input: complete.then_some(o),
                };
                // The writer waits for this input's events itself; a closed writer (only at
                // shutdown) just means no snapshot.
                let _ = self.snapshots.send(WriterMessage::Round(round)).await;
            }
        }
        let producer = self.producer.clone();
        Ok(Outcome::Deferred(Box::pin(async move {
            for ack in acks {
                ack.await?;
            }
            let mut effect_acks = Vec::with_capacity(effects.len());
            for e in &effects {
                effect_acks.push(
                    producer
                        .enqueue(&e.topic, e.partition, e.key.as_bytes(), &e.bytes)
                        .await
                        .map_err(|e| e.to_string())?,
                );
            }
            for ack in effect_acks {
                ack.await.map_err(|e| e.to_string())?;
            }
            Ok(())
        })))
    }
}

/// Writes snapshot rounds in the order they were taken. A round waits for its input's
/// events; a failed round stops snapshots of that partition and epoch (a later checkpoint
/// would claim states that were never written), so recovery falls back to the last good
/// checkpoint.
async fn write_snapshots(
    producer: Producer,
    codec: Arc<Codec>,
    topic: String,
    mut rx: mpsc::Receiver<WriterMessage>,
) {
    let mut failed: HashSet<(i32, i64)> = HashSet::new();
    while let Some(message) = rx.recv().await {
        let round = match message {
            WriterMessage::Barrier(done) => {
                let _ = done.send(());
                continue;
            }
            WriterMessage::Round(round) => round,
        };
        let (p, epoch) = (round.partition, round.epoch);
        if failed.contains(&(p, epoch)) {
            continue;
        }
        if let Err(error) = write_round(&producer, &codec, &topic, round).await {
            tracing::warn!(%error, messaging.destination.partition.id = p, snapshot.epoch = epoch, "snapshot round failed; no more checkpoints for this partition until it is reloaded");
            failed.insert((p, epoch));
        }
    }
}

async fn write_round(
    producer: &Producer,
    codec: &Codec,
    topic: &str,
    round: Round,
) -> Result<(), String> {
    let mut last_event = -1;
    for ack in round.event_acks {
        last_event = last_event.max(ack.await?.offset);
    }
    let mut acks = Vec::with_capacity(round.states.len());
    for s in &round.states {
        acks.push(
            producer
                .enqueue(&s.topic, s.partition, s.key.as_bytes(), &s.bytes)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    for ack in acks {
        ack.await.map_err(|e| e.to_string())?;
    }
    let Some(last_input) = round.checkpoint_last_input else {
        return Ok(());
    };
    let checkpoint = WorkflowSnapshot {
        partition: round.partition,
        epoch: round.epoch,
        written_at: triad_kafka::now_micros(),
        body: SnapshotBody::SnapshotCheckpoint(SnapshotCheckpoint {
            event_offset: last_event + 1,
            last_input,
        }),
        schema_version: 1,
    };
    producer
        .send_record(
            codec,
            topic,
            Some(round.partition),
            &checkpoint.key(),
            &checkpoint,
        )
        .await
        .map_err(|e| e.to_string())?;
    tracing::debug!(
        messaging.destination.partition.id = round.partition,
        event_offset = last_event + 1,
        last_input,
        "snapshot checkpoint written"
    );
    Ok(())
}

/// Fires due timers into the inbox until `cancel`. An unclaimed-check fires only when the
/// zone shows no live executor; a deadline always fires (the aggregate ignores a timer whose
/// attempt already finished).
async fn run_timers(processor: Arc<Processor>, liveness: Arc<Liveness>, cancel: CancellationToken) {
    loop {
        let now = triad_kafka::now_micros();
        let (fired, next) = processor.timers.take_due(now);
        for timer in fired {
            if timer.kind == TimerKind::Unclaimed && liveness.alive(&timer.zone) {
                // The zone is alive (or the processor has not been up long enough to tell):
                // look again later, as long as the attempt is in flight.
                let again = i64::try_from(processor.timing.unclaimed_after_ms)
                    .unwrap_or(i64::MAX)
                    .saturating_mul(1000);
                processor.timers.rearm(timer, now.saturating_add(again));
                continue;
            }
            if let Err(error) = fire(&processor, &timer).await {
                tracing::warn!(%error, attempt.id = %timer.attempt_id, "writing a timer failed; it stays armed");
                processor.timers.rearm(timer, now + 1_000_000);
            }
        }
        let wait = next.map_or(Duration::from_secs(3600), |at| {
            Duration::from_micros(
                u64::try_from(at.saturating_sub(triad_kafka::now_micros())).unwrap_or(0),
            )
        });
        tokio::select! {
            () = cancel.cancelled() => return,
            () = processor.timers.changed.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

async fn fire(processor: &Processor, timer: &Timer) -> Result<()> {
    let kind = match timer.kind {
        TimerKind::Deadline => "deadline",
        TimerKind::Unclaimed => "unclaimed",
    };
    // The same timer fired twice is one command: its id derives from (attempt, kind).
    let command_id = uuid::Uuid::new_v5(
        &uuid::Uuid::NAMESPACE_URL,
        format!("triad:timer:{}:{kind}", timer.attempt_id).as_bytes(),
    )
    .to_string();
    let record = InboxRecord {
        meta: CommandMetadata {
            command_id: command_id.clone(),
            idempotency_key: command_id,
            workflow_id: timer.workflow_id.clone(),
            issued_at: triad_kafka::now_micros(),
            actor: Some("triad-processor/timer".to_owned()),
            tenant: None,
            schema_version: triad_domain::INBOX_SCHEMA_VERSION,
        },
        body: InboxBody::TaskTimerFired(TaskTimerFired {
            task_id: timer.task_id.clone(),
            attempt: timer.attempt,
            attempt_id: timer.attempt_id.clone(),
            kind: timer.kind,
            zone: timer.zone.clone(),
        }),
    };
    tracing::info!(workflow.id = %timer.workflow_id, attempt.id = %timer.attempt_id, timer = kind, zone = %timer.zone, "timer fired");
    processor
        .producer
        .send_record(
            &processor.codec,
            &processor.names.inbox,
            None,
            &timer.workflow_id,
            &record,
        )
        .await?;
    Ok(())
}

/// Re-sends, every `processor.ledger_retry_ms`, the ledger command of each workflow still
/// waiting for the ledger's answer: an answer lost in a crash of either side is asked for
/// again.
async fn retry_ledger(processor: Arc<Processor>, cancel: CancellationToken) {
    let every = Duration::from_millis(processor.timing.ledger_retry_ms.max(100));
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        let commands: Vec<triad_domain::CreditsCommand> = {
            let partitions = processor.partitions.lock().await;
            // Only partitions still owned: after a rebalance another instance answers for
            // the others (and this one reloads them before deciding anything).
            let generation = processor
                .rebalances
                .load(std::sync::atomic::Ordering::SeqCst);
            partitions
                .values()
                .filter(|ps| ps.generation == generation)
                .flat_map(|ps| ps.workflows.values())
                .filter_map(|state| ledger_command(state, &processor.names.inbox))
                .collect()
        };
        for command in &commands {
            if let Err(error) = processor
                .producer
                .send_record(
                    &processor.codec,
                    &processor.names.credits_inbox,
                    None,
                    &command.account,
                    command,
                )
                .await
            {
                tracing::warn!(%error, credits.account = %command.account, "re-sending a ledger command failed; next round retries");
            }
        }
        if !commands.is_empty() {
            tracing::debug!(commands = commands.len(), "ledger commands re-sent");
        }
    }
}

/// Follows `triad.executor-status` from its end and records heartbeats.
async fn follow_status(
    kafka: KafkaConfig,
    topic: String,
    codec: Arc<Codec>,
    liveness: Arc<Liveness>,
    cancel: CancellationToken,
) -> Result<()> {
    let consumer: StreamConsumer = triad_kafka::client::follower_config(&kafka)
        .create()
        .map_err(triad_kafka::Error::from)?;
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(&topic, 0, Offset::End)
        .map_err(triad_kafka::Error::from)?;
    consumer
        .assign(&assignment)
        .map_err(triad_kafka::Error::from)?;
    let mut stream = consumer.stream();
    loop {
        let next = tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            m = stream.next() => m,
        };
        match next {
            None => return Ok(()),
            Some(Err(error)) => tracing::warn!(%error, "reading executor status failed"),
            Some(Ok(m)) => match codec.decode::<ExecutorStatus>(m.payload()).await {
                Ok(status) => {
                    if let StatusBody::Heartbeat(_) = status.body {
                        liveness.heartbeat(&status.zone);
                    }
                }
                Err(error) => tracing::warn!(%error, "undecodable executor status skipped"),
            },
        }
    }
}

/// Runs the processor until `cancel`.
pub async fn run(options: &Options, codec: Arc<Codec>, cancel: CancellationToken) -> Result<()> {
    let names = Names::new(&options.kafka);
    let producer = Producer::new(&options.kafka)?;
    let group = format!("{}-processor", options.kafka.group_prefix);
    let mut policy = options.policy.clone();
    policy.version = match &options.signer {
        Some(signer) => {
            publish_policy(
                &options.kafka,
                &codec,
                &producer,
                &options.policy_document,
                signer,
            )
            .await?
        }
        None => String::new(),
    };
    // The registry is read before any input is decided: a restart decides with every
    // registration already in force (bounded, so a slow registry delays but never blocks).
    let registry = Arc::new(models::Registry::new(
        &options.kafka,
        &names.models,
        options.zone_hosts.clone(),
    ));
    let registry_stop = cancel.child_token();
    let (caught_up, registry_ready) = oneshot::channel();
    let registry_task = tokio::spawn(models::follow(
        options.kafka.clone(),
        codec.clone(),
        registry.clone(),
        registry_stop.clone(),
        caught_up,
    ));
    if tokio::time::timeout(Duration::from_secs(30), registry_ready)
        .await
        .is_err()
    {
        tracing::warn!(messaging.destination.name = %names.models, "the model registry was not read within 30 s; deciding with what is read");
    }
    let (snapshots, snapshot_rx) = mpsc::channel(16);
    let writer_task = tokio::spawn(write_snapshots(
        producer.clone(),
        codec.clone(),
        names.snapshots.clone(),
        snapshot_rx,
    ));
    let processor = Arc::new(Processor {
        kafka: options.kafka.clone(),
        names: names.clone(),
        policy,
        timing: options.timing.clone(),
        codec: codec.clone(),
        producer: producer.clone(),
        partitions: Mutex::new(HashMap::new()),
        timers: Timers::default(),
        rebalances: Arc::default(),
        instance: format!("{group}-{}", options.instance),
        snapshots,
        signer: options.signer.clone(),
        registry: registry.clone(),
    });
    let liveness = Arc::new(Liveness::new(Duration::from_millis(
        options.timing.liveness_ms,
    )));
    let background = cancel.child_token();
    let timer_task = tokio::spawn(run_timers(
        processor.clone(),
        liveness.clone(),
        background.clone(),
    ));
    let ledger_task = tokio::spawn(retry_ledger(processor.clone(), background.clone()));
    let status_task = tokio::spawn(follow_status(
        options.kafka.clone(),
        names.executor_status.clone(),
        codec.clone(),
        liveness,
        background.clone(),
    ));
    let dlq = DeadLetterWriter::new(producer.clone(), codec, &names.dlq);
    let topics = [names.inbox.as_str()];
    tracing::info!(messaging.consumer.group.name = %group, messaging.destination.name = %names.inbox, "workflow processor starting");
    let handler = {
        let processor = processor.clone();
        move |m: OwnedMessage| {
            let processor = processor.clone();
            async move { processor.handle(m).await }
        }
    };
    let group_options = Group::worker(
        &options.kafka,
        &group,
        &topics,
        &dlq,
        &producer,
        options.instance,
    )
    .counting_rebalances(processor.rebalances.clone());
    let result = triad_kafka::consume::run_group(group_options, cancel, handler).await;
    // Drain: the rounds already taken are written before the process stops.
    processor.snapshot_barrier().await;
    writer_task.abort();
    background.cancel();
    let _ = timer_task.await;
    let _ = ledger_task.await;
    if let Ok(Err(error)) = status_task.await {
        tracing::warn!(%error, "the executor-status reader stopped");
    }
    registry_stop.cancel();
    let _ = registry_task.await;
    result?;
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}
