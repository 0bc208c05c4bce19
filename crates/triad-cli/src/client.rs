//! Submitting a workflow and following its events: what `triad submit` and `triad demo` do
//! (the API issue puts the same behind GraphQL and REST).

use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_domain::{
    CommandMetadata, EventBody, InboxBody, InboxRecord, SubmitWorkflow, WorkflowEvent,
};
use triad_kafka::produce::{Producer, partition_for};
use triad_kafka::topics::Names;

/// How a payload stored by reference (claim check) is shown.
pub fn by_reference(r: &triad_domain::BlobRef) -> String {
    format!("[{} bytes by reference, sha256 {}]", r.size, r.sha256)
}

/// Where a submitted workflow's events will appear.
#[derive(Debug, Clone)]
pub struct Submitted {
    pub workflow_id: String,
    pub partition: i32,
    /// The event-store offset from which to read: nothing of this workflow precedes it.
    pub from: i64,
}

/// How the edge seals a submission: its kernel and the policy's zone groups.
pub type Sealing<'a> = Option<(&'a triad_kernel::NodeKernel, &'a [(String, Vec<String>)])>;

/// Publishes `SubmitWorkflow` for `workflow` under a fresh id; idempotency key `key`. With
/// `sealing`, every prompt is sealed first (its workflow keys published before the command).
pub async fn submit(
    kafka: &KafkaConfig,
    codec: &Codec,
    producer: &Producer,
    mut workflow: SubmitWorkflow,
    key: Option<String>,
    sealing: Sealing<'_>,
) -> Result<Submitted> {
    let names = Names::new(kafka);
    let workflow_id = format!("wf-{}", uuid::Uuid::new_v4());
    if let Some((kernel, groups)) = sealing {
        let keys = kernel
            .seal_submission(&workflow_id, &mut workflow, groups)
            .await
            .context("sealing the prompts")?;
        tracing::info!(workflow.id = %workflow_id, workflow_keys = keys, "prompts sealed");
    }
    let partition = partition_for(workflow_id.as_bytes(), kafka.partitions);
    // The end of the workflow's event partition before it exists: its events come later.
    let consumer: StreamConsumer = triad_kafka::client::reader_config(kafka).create()?;
    let (_, from) = consumer
        .fetch_watermarks(&names.events, partition, Duration::from_secs(10))
        .with_context(|| format!("reading the end of {}", names.events))?;
    let record = InboxRecord {
        meta: CommandMetadata {
            command_id: triad_domain::new_command_id(),
            idempotency_key: key.unwrap_or_else(|| format!("submit:{workflow_id}")),
            workflow_id: workflow_id.clone(),
            issued_at: triad_kafka::now_micros(),
            actor: Some("cli".to_owned()),
            tenant: None,
            schema_version: triad_domain::INBOX_SCHEMA_VERSION,
        },
        body: InboxBody::SubmitWorkflow(workflow),
    };
    let delivered = producer
        .send_record(codec, &names.inbox, None, &workflow_id, &record)
        .await?;
    if delivered.partition != partition {
        bail!(
            "the inbox record landed on partition {} but murmur2 says {partition}: is \
             kafka.partitions ({}) the topics' partition count?",
            delivered.partition,
            kafka.partitions
        );
    }
    Ok(Submitted {
        workflow_id,
        partition,
        from,
    })
}

/// Calls `on_event` for each event of the workflow, in order, until its final event or
/// `timeout`. Byte-identical copies (a repaired crash) are shown once.
pub async fn follow(
    kafka: &KafkaConfig,
    codec: &Codec,
    submitted: &Submitted,
    timeout: Duration,
    mut on_event: impl FnMut(&WorkflowEvent),
) -> Result<Vec<WorkflowEvent>> {
    let names = Names::new(kafka);
    let consumer: StreamConsumer = triad_kafka::client::reader_config(kafka)
        .set("enable.partition.eof", "false")
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(
        &names.events,
        submitted.partition,
        Offset::Offset(submitted.from),
    )?;
    consumer.assign(&assignment)?;
    let mut stream = consumer.stream();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events: Vec<WorkflowEvent> = Vec::new();
    loop {
        let next = tokio::time::timeout_at(deadline, stream.next())
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "workflow {} did not finish within {timeout:?} (are `triad process` and the \
                     zone executors running?)",
                    submitted.workflow_id
                )
            })?;
        let Some(message) = next else {
            bail!("the event stream ended");
        };
        let message = message?;
        let event: WorkflowEvent = codec.decode(message.payload()).await?;
        if event.meta.workflow_id != submitted.workflow_id
            || events
                .iter()
                .any(|e| e.meta.sequence >= event.meta.sequence)
        {
            continue;
        }
        on_event(&event);
        let done = event.body.is_terminal();
        events.push(event);
        if done {
            return Ok(events);
        }
    }
}

/// One line describing an event for a terminal.
pub fn describe(e: &WorkflowEvent) -> String {
    let text = |b: &[u8]| {
        if triad_domain::is_sealed(b) {
            return format!("[sealed, {} bytes]", b.len());
        }
        let s = String::from_utf8_lossy(b);
        let one_line = s.replace('\n', " ⏎ ");
        if one_line.chars().count() > 100 {
            format!("{}…", one_line.chars().take(100).collect::<String>())
        } else {
            one_line
        }
    };
    let detail = match &e.body {
        EventBody::WorkflowAccepted(a) => match &a.budget {
            Some(b) => format!(
                "{} ({} tasks, {} µcredits reserved on {})",
                a.name,
                a.tasks.len(),
                b.reserved_micros,
                b.account
            ),
            None => format!("{} ({} tasks)", a.name, a.tasks.len()),
        },
        EventBody::WorkflowRejected(r) => r.reason.clone(),
        EventBody::TaskScheduled(s) => format!("{} attempt {}", s.task_id, s.attempt),
        EventBody::TaskDispatched(d) => format!("{} → zone {}", d.task_id, d.zone),
        EventBody::TaskRouted(r) => format!(
            "{} → {} (score {:.3}, {}; {} call(s))",
            r.task_id,
            r.decision.model_id,
            r.decision.score,
            r.decision.reason,
            r.decision.calls.len()
        ),
        EventBody::TaskCompleted(c) => format!(
            "{} by {} in {} ms: {}",
            c.task_id,
            c.model_id,
            c.latency_ms,
            match &c.output_ref {
                Some(r) => by_reference(r),
                None => text(&c.output),
            }
        ),
        EventBody::TaskFailed(f) => format!("{} attempt {}: {}", f.task_id, f.attempt, f.error),
        EventBody::TaskSkipped(s) => format!("{}: {}", s.task_id, s.reason),
        EventBody::TaskResultDiscarded(d) => format!("{}: {}", d.task_id, d.reason),
        EventBody::BidPlaced(b) => format!(
            "{} ← {} {}{}: {}",
            b.task_id,
            b.bid.model_id,
            b.bid.status,
            b.bid
                .price_micros
                .map(|p| format!(" {p} µcredits"))
                .unwrap_or_default(),
            b.bid.reason
        ),
        EventBody::AuctionClosed(a) => format!(
            "{} → {} ({} bids): {}",
            a.task_id,
            a.winner.as_deref().unwrap_or("no winner"),
            a.bids,
            a.reason
        ),
        EventBody::WorkflowCompleted(c) => format!(
            "cost {} µcredits, models {:?}",
            c.total_cost_micros, c.models_used
        ),
        EventBody::WorkflowFailed(f) => f.reason.clone(),
        EventBody::WorkflowCancelled(c) => c.reason.clone().unwrap_or_default(),
        EventBody::BudgetRequested(b) => format!(
            "{} µcredits from account {}",
            b.budget.reserved_micros, b.budget.account
        ),
        EventBody::BudgetSettled(b) => format!(
            "burned {} µcredits, released {} to account {}",
            b.burned_micros, b.released_micros, b.account
        ),
    };
    format!("#{:<3} {:<20} {detail}", e.meta.sequence, e.meta.event_type)
}

/// An output as text for a terminal: opened by `kernel` when sealed and this node may, else
/// a note saying why not.
pub async fn output_text(
    kernel: Option<&triad_kernel::NodeKernel>,
    workflow_id: &str,
    task_id: &str,
    output: &[u8],
) -> String {
    if !triad_domain::is_sealed(output) {
        return String::from_utf8_lossy(output).into_owned();
    }
    let Some(kernel) = kernel else {
        return format!(
            "[sealed, {} bytes; sovereignty.seal is off here]",
            output.len()
        );
    };
    let expect = triad_sovereignty::Expect {
        workflow_id,
        task_id,
        role: triad_sovereignty::Role::Output,
    };
    match kernel.open(output, expect).await {
        Ok(opened) => String::from_utf8_lossy(opened.bytes()).into_owned(),
        Err(error) => format!(
            "[sealed, {} bytes; not readable here: {error}]",
            output.len()
        ),
    }
}
