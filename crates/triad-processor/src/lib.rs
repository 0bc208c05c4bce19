//! The workflow processor: consumes `triad.workflow-inbox`, runs
//! [`triad_workflow::aggregate::process`] for each record, and is the only writer of
//! event-store partition p for inbox partition p.
//!
//! Crash safety without Kafka transactions (ADR 0002, ADR 0005): a record's events are
//! produced in order with `acks=all` before its offset is stored. When a partition is first
//! seen, its state is folded from the event-store partition; inputs whose offset precedes
//! the last input recorded there (causation) are already applied and skipped; the last one
//! may have been cut short by a crash, so it is re-run from the state before it and only the
//! events whose (deterministic) ids are missing are written. The consumer uses static group
//! membership so a restarted instance takes its partitions back at once. Known limit: a
//! partition's in-memory state is kept after a revoke, so running several instances that
//! trade partitions needs the snapshot-based reload of ADR 0005. Still to come (workflow issue):
//! snapshots so recovery reads a bounded tail instead of the whole partition, and the outbox
//! re-publication of dispatched tasks.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_domain::{InboxRecord, WorkflowEvent};
use triad_kafka::consume::{Group, OnUndecodable, Outcome};
use triad_kafka::dlq::DeadLetterWriter;
use triad_kafka::produce::Producer;
use triad_kafka::topics::Names;
use triad_workflow::Limits;
use triad_workflow::aggregate::{Input, Policy, WorkflowState, process};

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

/// The policy used until the sovereignty policy is event-sourced (sovereignty issue): the
/// four zones of the design brief, `CONUS`, and the embedded model.
pub fn default_policy() -> Policy {
    let us = ["US-EAST", "US-WEST", "US-CENTRAL"]
        .map(String::from)
        .to_vec();
    Policy {
        zones: ["US-EAST", "US-WEST", "US-CENTRAL", "EU-WEST"]
            .map(String::from)
            .to_vec(),
        groups: vec![("CONUS".to_owned(), us)],
        default_model: "triad-local".to_owned(),
        models: None,
        limits: Limits::default(),
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub kafka: KafkaConfig,
    pub policy: Policy,
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
    workflows: HashMap<String, WorkflowState>,
    /// The highest inbox offset with events in the log, -1 when none.
    last_input: i64,
    repair: Option<Repair>,
}

struct Processor {
    kafka: KafkaConfig,
    names: Names,
    policy: Policy,
    codec: Arc<Codec>,
    producer: Producer,
    partitions: Mutex<HashMap<i32, PartitionState>>,
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
        tracing::info!(
            messaging.destination.name = %self.names.events,
            messaging.destination.partition.id = p,
            events = records.len(),
            workflows = ps.workflows.len(),
            last_input = ps.last_input,
            "partition state restored"
        );
        Ok(ps)
    }

    async fn handle(&self, m: OwnedMessage) -> Result<Outcome> {
        let (p, o) = (m.partition(), m.offset());
        let mut partitions = self.partitions.lock().await;
        let ps = match partitions.entry(p) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => e.insert(self.load(p).await?),
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
        let (mut state, present) = match ps.repair.take().filter(|r| r.offset == o) {
            Some(r) => (r.before, r.present),
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
        for event in &events {
            if present.contains(&event.meta.event_id) {
                continue;
            }
            self.producer
                .send_record(&self.codec, &self.names.events, Some(p), &wf, event)
                .await?;
        }
        if !events.is_empty() {
            ps.last_input = o;
            tracing::debug!(workflow.id = %wf, events = events.len(), messaging.kafka.offset = o, "input applied");
        }
        ps.workflows.insert(wf, state);
        Ok(Outcome::Done)
    }
}

/// Runs the processor until `cancel`.
pub async fn run(options: &Options, codec: Arc<Codec>, cancel: CancellationToken) -> Result<()> {
    let names = Names::new(&options.kafka);
    let producer = Producer::new(&options.kafka)?;
    let processor = Arc::new(Processor {
        kafka: options.kafka.clone(),
        names: names.clone(),
        policy: options.policy.clone(),
        codec: codec.clone(),
        producer: producer.clone(),
        partitions: Mutex::new(HashMap::new()),
    });
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
        instance_id: Some(format!("{group}-0")),
    };
    triad_kafka::consume::run_group(group_options, cancel, handler).await?;
    producer.flush(Duration::from_secs(10))?;
    Ok(())
}
