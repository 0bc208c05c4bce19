//! `triad demo`: at this stage of the build, the event spine end to end — a workflow command
//! is encoded with its registered Avro schema, published to the inbox, read back from Kafka
//! and decoded. Later issues grow this into the full workflow demo.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, bail};
use rdkafka::message::{Headers, Message};
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::{CommandMetadata, InboxBody, InboxRecord, fixtures, new_command_id};
use triad_kafka::produce::{Producer, TRACEPARENT, new_traceparent};
use triad_kafka::topics::{self, Names, WORKFLOW_INBOX};

pub async fn run(config: &Config, codec: Arc<Codec>) -> Result<()> {
    println!("TRIAD demo — the event spine");
    println!("1. topics ({})", config.kafka.bootstrap_servers);
    let specs = topics::catalogue(&config.kafka, &config.registry.topic, &config.policy.zones);
    for step in topics::ensure(&config.kafka, &specs, false).await? {
        println!("   {step}");
    }

    let workflow_id = format!("wf-{}", uuid::Uuid::new_v4());
    let record = InboxRecord {
        meta: CommandMetadata {
            command_id: new_command_id(),
            idempotency_key: format!("demo-{workflow_id}"),
            workflow_id: workflow_id.clone(),
            issued_at: triad_kafka::now_micros(),
            actor: Some("demo".to_owned()),
            schema_version: triad_domain::INBOX_SCHEMA_VERSION,
        },
        body: InboxBody::SubmitWorkflow(fixtures::research_workflow()),
    };
    let inbox = Names::new(&config.kafka).inbox;
    let schema_id = codec.schema_id::<InboxRecord>(&inbox).await?;
    let bytes = codec.encode(&inbox, &record).await?;
    println!(
        "2. encoded SubmitWorkflow {workflow_id}: {} bytes, schema id {schema_id} (subject {}, registry {})",
        bytes.len(),
        Codec::value_subject(&inbox),
        config.registry.url
    );

    let producer = Producer::new(&config.kafka)?;
    let traceparent = new_traceparent();
    let delivered = producer
        .send(
            &inbox,
            Some(workflow_id.as_bytes()),
            Some(&bytes),
            &[(TRACEPARENT, Some(traceparent.as_bytes()))],
        )
        .await?;
    println!(
        "3. published to {inbox} partition {} offset {} (acks=all, key = workflow id)",
        delivered.partition, delivered.offset
    );

    let message = triad_kafka::consume::read_at(
        &config.kafka,
        &inbox,
        delivered.partition,
        delivered.offset,
        Duration::from_secs(30),
    )
    .await?;
    let decoded: InboxRecord = codec.decode(message.payload()).await?;
    if decoded != record {
        bail!("the record read back differs from the one published:\n{decoded:?}\n{record:?}");
    }
    let header = message
        .headers()
        .and_then(|h| h.iter().find(|h| h.key == TRACEPARENT))
        .and_then(|h| h.value)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default();
    println!("4. read back and decoded (identical to what was sent):");
    println!(
        "   command   {} (idempotency key {})",
        decoded.meta.command_id, decoded.meta.idempotency_key
    );
    println!("   traceparent {header}");
    if let InboxBody::SubmitWorkflow(w) = &decoded.body {
        println!("   workflow  {:?}, zones {:?}", w.name, w.default_zones);
        for t in &w.tasks {
            let deps = if t.depends_on.is_empty() {
                String::new()
            } else {
                format!(" after {:?}", t.depends_on)
            };
            println!(
                "   task      {}{deps}: {:?}",
                t.id,
                String::from_utf8_lossy(&t.prompt)
            );
        }
    }
    println!("demo ok");
    Ok(())
}

/// Publishes every fixture to prefixed copies of the spine topics and prints the topics.
pub async fn publish_fixtures(config: &Config, codec: Arc<Codec>, prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        bail!("--topic-prefix must not be empty: fixtures never go into the live topics");
    }
    let inbox = format!("{prefix}{WORKFLOW_INBOX}");
    let events = format!("{prefix}{}", topics::WORKFLOW_EVENTS);
    let dlq = format!("{prefix}{}", topics::DLQ);
    let tasks = format!("{prefix}{}US-EAST", topics::TASKS_PREFIX);
    let control = format!("{prefix}{}", topics::CONTROL);
    let status = format!("{prefix}{}", topics::EXECUTOR_STATUS);
    let specs: Vec<topics::TopicSpec> = [&inbox, &events, &dlq, &tasks, &control, &status]
        .iter()
        .map(|name| topics::TopicSpec {
            name: (*name).clone(),
            partitions: 1,
            retention: topics::Retention::Bounded { ms: 86_400_000 },
            purpose: "fixtures",
        })
        .collect();
    topics::ensure(&config.kafka, &specs, false).await?;
    let producer = Producer::new(&config.kafka)?;
    for r in fixtures::inbox_records() {
        producer
            .send_record(&codec, &inbox, None, &r.meta.workflow_id, &r)
            .await?;
    }
    for e in fixtures::workflow_events() {
        producer
            .send_record(&codec, &events, None, &e.meta.workflow_id, &e)
            .await?;
    }
    let request = fixtures::task_request();
    producer
        .send_record(&codec, &tasks, None, &request.workflow_id, &request)
        .await?;
    let c = fixtures::control_record();
    producer
        .send_record(&codec, &control, None, &c.workflow_id, &c)
        .await?;
    for s in fixtures::executor_statuses() {
        producer
            .send_record(&codec, &status, None, &s.executor_id, &s)
            .await?;
    }
    triad_kafka::dlq::DeadLetterWriter::new(producer, codec, &dlq)
        .write_letter(&fixtures::dead_letter())
        .await?;
    for topic in [&inbox, &events, &dlq, &tasks, &control, &status] {
        println!("{topic}");
    }
    Ok(())
}
