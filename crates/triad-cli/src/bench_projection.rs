//! `triad bench --projection`: the projection worker's apply rate against a binary COPY of
//! the same timeline rows at the same batch size, measured in the same run.
//!
//! Each synthetic workflow carries one event of every kind a completed workflow can have
//! (the fixtures, minus the other terminal events), sequenced 1..n. They are produced to a
//! fresh event-store topic, then `triad_projection::replay` applies them from offset 0 into a
//! fresh schema (Kafka fetch, Avro decode, the per-event statements, offsets, one
//! transaction per batch). The baseline COPYs the resulting `workflow_events` rows in binary
//! into a table of the same shape, one transaction per batch of the same size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::{EventBody, WorkflowEvent};
use triad_kafka::produce::Producer;
use triad_kafka::topics::{Names, Retention, TopicSpec};

/// The fixture events of one workflow, made unique to `workflow_id`.
fn events_of(workflow_id: &str) -> Vec<WorkflowEvent> {
    let mut out: Vec<WorkflowEvent> = triad_domain::fixtures::workflow_events()
        .into_iter()
        .filter(|e| {
            !matches!(
                e.body,
                EventBody::WorkflowRejected(_)
                    | EventBody::WorkflowFailed(_)
                    | EventBody::WorkflowCancelled(_)
            )
        })
        .collect();
    for (n, e) in out.iter_mut().enumerate() {
        e.meta.workflow_id = workflow_id.to_owned();
        e.meta.sequence = i64::try_from(n).unwrap_or(0) + 1;
        e.meta.event_id = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_OID,
            format!("{workflow_id}/{n}").as_bytes(),
        )
        .to_string();
    }
    out
}

pub async fn run(config: &Config, codec: Arc<Codec>, workflows: usize) -> Result<()> {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut kafka = config.kafka.clone();
    kafka.topic_prefix = format!("bench-proj-{}.", &run[..12]);
    let names = Names::new(&kafka);
    let schema = format!("bench_proj_{}", &run[..12]);
    let specs = [names.events.clone(), names.dlq.clone()].map(|name| TopicSpec {
        name,
        partitions: kafka.partitions,
        retention: Retention::Bounded { ms: 3_600_000 },
        purpose: "bench",
    });
    triad_kafka::topics::ensure(&kafka, &specs, false).await?;

    eprintln!(
        "bench --projection: producing {workflows} workflows to {}",
        names.events
    );
    let producer = Producer::new(&kafka)?;
    let mut total = 0usize;
    let mut acks = Vec::new();
    for w in 0..workflows {
        let id = format!("wf-bench-{w}-{}", &run[..8]);
        for e in events_of(&id) {
            let bytes = codec.encode(&names.events, &e).await?;
            acks.push(
                producer
                    .enqueue(&names.events, None, id.as_bytes(), &bytes)
                    .await?,
            );
            total += 1;
        }
        if acks.len() >= 2000 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks.drain(..) {
        a.await?;
    }
    let batch = config.projection.batch_max_records;
    eprintln!("produced {total} events; applying them with the projection (batches of {batch})");

    let password = std::env::var("PGPASSWORD").ok();
    let pool = triad_store::pool(&config.postgres.url, password.as_deref(), 4)?;
    let options = triad_projection::Options {
        kafka: kafka.clone(),
        topic: names.events.clone(),
        dlq_topic: names.dlq.clone(),
        schema: schema.clone(),
        batch_max_records: batch,
        flush_interval: Duration::from_millis(config.projection.flush_interval_ms),
    };
    let started = Instant::now();
    let report =
        triad_projection::replay(&options, pool.clone(), codec, "workflows", false, &|_| {})
            .await?;
    let projection = started.elapsed();
    anyhow::ensure!(
        report.applied.events == total,
        "the projection applied {} of {total} events",
        report.applied.events
    );

    // The baseline: the same rows, binary COPY, same batch size, one transaction each.
    let mut client = pool.get().await.context("connecting to PostgreSQL")?;
    client
        .query(
            "SELECT set_config('search_path', quote_ident($1) || ', public', false)",
            &[&schema],
        )
        .await?;
    client
        .batch_execute("CREATE TABLE copy_baseline (LIKE workflow_events INCLUDING ALL)")
        .await?;
    let rows = client
        .query(
            "SELECT workflow_id, sequence, event_id, event_type, task_id, occurred_at, \
             partition, kafka_offset, data FROM workflow_events ORDER BY partition, kafka_offset",
            &[],
        )
        .await?;
    let types = [
        Type::TEXT,
        Type::INT8,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::TIMESTAMPTZ,
        Type::INT4,
        Type::INT8,
        Type::JSONB,
    ];
    let started = Instant::now();
    for chunk in rows.chunks(batch.max(1)) {
        let tx = client.transaction().await?;
        let sink = tx
            .copy_in(
                "COPY copy_baseline (workflow_id, sequence, event_id, event_type, task_id, \
                 occurred_at, partition, kafka_offset, data) FROM STDIN BINARY",
            )
            .await?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        futures::pin_mut!(writer);
        for r in chunk {
            let workflow_id: String = r.try_get(0)?;
            let sequence: i64 = r.try_get(1)?;
            let event_id: String = r.try_get(2)?;
            let event_type: String = r.try_get(3)?;
            let task_id: Option<String> = r.try_get(4)?;
            let occurred_at: std::time::SystemTime = r.try_get(5)?;
            let partition: i32 = r.try_get(6)?;
            let offset: i64 = r.try_get(7)?;
            let data: serde_json::Value = r.try_get(8)?;
            writer
                .as_mut()
                .write(&[
                    &workflow_id,
                    &sequence,
                    &event_id,
                    &event_type,
                    &task_id,
                    &occurred_at,
                    &partition,
                    &offset,
                    &data,
                ])
                .await?;
        }
        writer.finish().await?;
        tx.commit().await?;
    }
    let copy = started.elapsed();
    let copied = rows.len();
    drop(client);
    let cleanup = pool.get().await?;
    cleanup
        .query("SELECT triad_drop_schema($1)", &[&schema])
        .await?;

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let (p, c) = (rate(total, projection), rate(copied, copy));
    println!(
        "| events | batch | projection events/s (Kafka → PostgreSQL) | binary COPY rows/s | ratio |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: |");
    println!("| {total} | {batch} | {p:.0} | {c:.0} | {:.2} |", p / c);
    Ok(())
}
