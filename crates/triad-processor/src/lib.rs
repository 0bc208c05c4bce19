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
//! (another instance may have owned it meanwhile). Known limit: recovery folds the whole
//! event-store partition until the snapshots of ADR 0005 land.

pub mod timers;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::Offset;
use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use triad_codec::{AvroRecord, Codec};
use triad_config::{KafkaConfig, PolicyConfig, ProcessorConfig};
use triad_domain::{
    CommandMetadata, ControlAction, ControlRecord, EventBody, ExecutorStatus, InboxBody,
    InboxRecord, StatusBody, TaskTimerFired, TimerKind, WorkflowEvent,
};
use triad_kafka::consume::{Group, OnUndecodable, Outcome};
use triad_kafka::dlq::DeadLetterWriter;
use triad_kafka::produce::Producer;
use triad_kafka::topics::Names;
use triad_workflow::Limits;
use triad_workflow::aggregate::{
    Input, Policy, WorkflowState, pending_requests, process, task_request,
};

use crate::timers::{Liveness, Timer, Timers};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Kafka(#[from] triad_kafka::Error),
    #[error(transparent)]
    Codec(#[from] triad_codec::Error),
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

/// The aggregate's policy from the configured sovereignty policy and model catalogue (the
/// sovereignty issue makes the policy event-sourced and versioned).
pub fn policy_from(policy: &PolicyConfig, models: &[String]) -> Policy {
    Policy {
        zones: policy.zones.clone(),
        groups: policy
            .groups
            .iter()
            .map(|(g, zs)| (g.clone(), zs.clone()))
            .collect(),
        default_model: models.first().cloned().unwrap_or_default(),
        models: Some(models.to_vec()),
        limits: Limits::default(),
    }
}

/// The policy of the default configuration.
pub fn default_policy() -> Policy {
    policy_from(&PolicyConfig::default(), &["triad-local".to_owned()])
}

#[derive(Debug, Clone)]
pub struct Options {
    pub kafka: KafkaConfig,
    pub policy: Policy,
    pub timing: ProcessorConfig,
    /// Distinguishes processors sharing the group (static membership id).
    pub instance: u32,
}

/// The input that may have been cut short by a crash: the state before it and the ids of
/// the events of it already in the log.
#[derive(Debug)]
struct Repair {
    offset: i64,
    before: WorkflowState,
    present: HashSet<String>,
}

#[derive(Debug, Default)]
struct PartitionState {
    /// The assignment count (`Group::rebalances`) this state was loaded under.
    generation: u64,
    workflows: HashMap<String, WorkflowState>,
    /// The highest inbox offset with events in the log, -1 when none.
    last_input: i64,
    repair: Option<Repair>,
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
}

/// One encoded record waiting to be sent.
struct Outgoing {
    topic: String,
    partition: Option<i32>,
    key: String,
    bytes: Vec<u8>,
}

impl Processor {
    /// Folds event-store partition `p` into per-workflow state.
    async fn load(&self, p: i32) -> Result<PartitionState> {
        let records = triad_kafka::consume::read_partitions(
            &self.kafka,
            &self.names.events,
            Some(p),
            Duration::from_secs(120),
        )
        .await?;
        let mut ps = PartitionState {
            last_input: -1,
            ..PartitionState::default()
        };
        // Per workflow: the input offset of its latest events and its state before them.
        let mut before: HashMap<String, (i64, WorkflowState)> = HashMap::new();
        let mut last: Option<(String, HashSet<String>)> = None;
        let mut duplicates = 0usize;
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
            let c = &event.meta.causation;
            let input = (c.topic == self.names.inbox && c.partition == p).then_some(c.offset);
            let wf = event.meta.workflow_id.clone();
            let state = ps.workflows.entry(wf.clone()).or_default();
            // A byte-identical copy of an event already folded: written again by a repair
            // while the dead owner's last in-flight write was still landing, or by a zombie.
            // Deterministic ids make it recognisable; it must not be applied twice.
            if event.meta.sequence <= state.sequence {
                duplicates += 1;
                continue;
            }
            if let Some(o) = input {
                if before.get(&wf).map(|(off, _)| *off) != Some(o) {
                    before.insert(wf.clone(), (o, state.clone()));
                }
                if o > ps.last_input {
                    ps.last_input = o;
                    last = Some((wf.clone(), HashSet::new()));
                }
                if o == ps.last_input
                    && let Some((_, ids)) = &mut last
                {
                    ids.insert(event.meta.event_id.clone());
                }
            }
            state.apply(&event);
        }
        if let Some((wf, present)) = last
            && let Some((offset, state)) = before.remove(&wf)
        {
            ps.repair = Some(Repair {
                offset,
                before: state,
                present,
            });
        }
        // The outbox rule: every attempt in flight is requested again, and its timers armed.
        let mut outbox = Vec::new();
        for state in ps.workflows.values() {
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
            events = records.len(),
            workflows = ps.workflows.len(),
            last_input = ps.last_input,
            duplicates,
            republished,
            "partition state restored"
        );
        Ok(ps)
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
        let (mut state, present) = match ps.repair.as_ref().filter(|r| r.offset == o) {
            Some(r) => (r.before.clone(), r.present.clone()),
            None => (
                ps.workflows.get(&wf).cloned().unwrap_or_default(),
                HashSet::new(),
            ),
        };
        let input = Input {
            topic: &self.names.inbox,
            partition: p,
            offset: o,
            record: &record,
        };
        let events = process(&mut state, &input, &self.policy);
        let mut writes = Vec::new();
        for event in events
            .iter()
            .filter(|e| !present.contains(&e.meta.event_id))
        {
            writes.push(self.encode(&self.names.events, Some(p), &wf, event).await?);
        }
        // Side effects only after the events are in the log: a crash in between is repaired
        // by the outbox rule on recovery.
        let mut effects = Vec::new();
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
        let mut acks = Vec::with_capacity(writes.len());
        for w in &writes {
            acks.push(
                self.producer
                    .enqueue(&w.topic, w.partition, w.key.as_bytes(), &w.bytes)
                    .await?,
            );
        }
        if ps.repair.as_ref().is_some_and(|r| r.offset == o) {
            ps.repair = None;
        }
        if !events.is_empty() {
            self.arm(&state);
            ps.last_input = o;
            tracing::debug!(workflow.id = %wf, events = events.len(), messaging.kafka.offset = o, "input applied");
        }
        ps.workflows.insert(wf, state);
        let producer = self.producer.clone();
        Ok(Outcome::Deferred(Box::pin(async move {
            for ack in acks {
                ack.await.map_err(|e| e.to_string())?;
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

/// Follows `triad.executor-status` from its end and records heartbeats.
async fn follow_status(
    kafka: KafkaConfig,
    topic: String,
    codec: Arc<Codec>,
    liveness: Arc<Liveness>,
    cancel: CancellationToken,
) -> Result<()> {
    let consumer: StreamConsumer = triad_kafka::client::reader_config(&kafka)
        .set("enable.partition.eof", "false")
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
    let producer = Producer::single_record_batches(&options.kafka)?;
    let processor = Arc::new(Processor {
        kafka: options.kafka.clone(),
        names: names.clone(),
        policy: options.policy.clone(),
        timing: options.timing.clone(),
        codec: codec.clone(),
        producer: producer.clone(),
        partitions: Mutex::new(HashMap::new()),
        timers: Timers::default(),
        rebalances: Arc::default(),
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
    let status_task = tokio::spawn(follow_status(
        options.kafka.clone(),
        names.executor_status.clone(),
        codec.clone(),
        liveness,
        background.clone(),
    ));
    let dlq = DeadLetterWriter::new(producer.clone(), codec, &names.dlq);
    let group = format!("{}-processor", options.kafka.group_prefix);
    let topics = [names.inbox.as_str()];
    tracing::info!(messaging.consumer.group.name = %group, messaging.destination.name = %names.inbox, "workflow processor starting");
    let handler = {
        let processor = processor.clone();
        move |m: OwnedMessage| {
            let processor = processor.clone();
            async move { processor.handle(m).await }
        }
    };
    let group_options = Group {
        kafka: &options.kafka,
        name: &group,
        topics: &topics,
        on_undecodable: OnUndecodable::DeadLetter,
        dlq: Some(&dlq),
        flush_on_revoke: Some(producer.clone()),
        instance_id: options
            .kafka
            .static_membership
            .then(|| format!("{group}-{}", options.instance)),
        rebalances: Some(processor.rebalances.clone()),
    };
    let result = triad_kafka::consume::run_group(group_options, cancel, handler).await;
    background.cancel();
    let _ = timer_task.await;
    if let Ok(Err(error)) = status_task.await {
        tracing::warn!(%error, "the executor-status reader stopped");
    }
    result?;
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}
