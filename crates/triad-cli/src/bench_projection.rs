//! `triad bench --projection`: the projection worker's write rate against a binary COPY of
//! the same rows at the same batch size, measured in the same run.
//!
//! Each synthetic workflow carries one event of every kind a completed workflow can have
//! (the fixtures, minus the other terminal events), sequenced 1..n. They are produced to a
//! fresh event-store topic, then `triad_projection::replay` applies them from offset 0 into a
//! fresh schema (Kafka fetch, Avro decode, folding, the set-based statements, offsets, one
//! transaction per batch). The baseline reads every row the projection ended with (timeline,
//! workflows, tasks, models) with a binary COPY TO and writes them with binary COPY FROM into
//! tables of the same shape and indexes, one transaction per batch of the same size.
//!
//! The ratio compares the time the projection spent in PostgreSQL (its apply transactions;
//! reading and decoding the next batch overlap them) with the COPY's, for the same rows. The
//! end-to-end rate, which includes the Kafka fetch and the replay's setup, is reported next
//! to it, and so is the stricter comparison with copying the timeline rows alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::{SinkExt as _, StreamExt as _};
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::WorkflowEvent;
use triad_kafka::produce::Producer;
use triad_kafka::topics::{Names, Retention, TopicSpec};

/// A bench's own event-store and dead-letter topics (bounded retention) and read-model
/// schema name, so runs never mix with each other or with the stack's data.
pub(crate) struct Scratch {
    pub run: String,
    pub kafka: triad_config::KafkaConfig,
    pub names: Names,
    pub schema: String,
}

impl Scratch {
    pub(crate) async fn create(config: &Config, tag: &str) -> Result<Self> {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let mut kafka = config.kafka.clone();
        kafka.topic_prefix = format!("bench-{tag}-{}.", &run[..12]);
        kafka.group_prefix = format!("bench-{tag}-{}", &run[..12]);
        let names = Names::new(&kafka);
        let schema = format!("bench_{tag}_{}", &run[..12]);
        let specs = [names.events.clone(), names.dlq.clone()].map(|name| TopicSpec {
            name,
            partitions: kafka.partitions,
            retention: Retention::Bounded { ms: 3_600_000 },
            purpose: "bench",
        });
        triad_kafka::topics::ensure(&kafka, &specs, false).await?;
        // The rest of the catalogue as configured: the benchmarks that run an API need the
        // topics it follows (the API keys above all, one partition).
        let rest: Vec<TopicSpec> = triad_kafka::topics::catalogue(&kafka, "_schemas", &[])
            .into_iter()
            .filter(|t| t.name != names.events && t.name != names.dlq)
            .collect();
        triad_kafka::topics::ensure(&kafka, &rest, false).await?;
        Ok(Self {
            run,
            kafka,
            names,
            schema,
        })
    }
}

/// A scratch installation with a projection worker running on it, for the benchmarks that
/// serve an API from it: `config` points at the scratch topics and schema.
pub(crate) struct Projected {
    pub run: String,
    pub names: Names,
    pub config: Config,
    pub cancel: tokio_util::sync::CancellationToken,
    pub services: tokio::task::JoinSet<Result<()>>,
}

impl Projected {
    pub(crate) async fn start(config: &Config, tag: &str, codec: Arc<Codec>) -> Result<Self> {
        let scratch = Scratch::create(config, tag).await?;
        let mut config = config.clone();
        config.kafka = scratch.kafka;
        config.projection.schema = scratch.schema;
        let cancel = tokio_util::sync::CancellationToken::new();
        let mut services = tokio::task::JoinSet::new();
        let (options, pool) = crate::workers::projection(&config)?;
        let stop = cancel.clone();
        services.spawn(async move {
            triad_projection::run(&options, pool, codec, stop).await?;
            anyhow::Ok(())
        });
        Ok(Self {
            run: scratch.run,
            names: scratch.names,
            config,
            cancel,
            services,
        })
    }

    /// Stops every service, surfacing the first failure, and drops the scratch schema.
    pub(crate) async fn finish(mut self) -> Result<()> {
        self.cancel.cancel();
        while let Some(s) = self.services.join_next().await {
            s??;
        }
        crate::workers::pg_pool(&self.config)?
            .get()
            .await?
            .query(
                "SELECT triad_drop_schema($1)",
                &[&self.config.projection.schema],
            )
            .await?;
        Ok(())
    }
}

/// The fixture events of one workflow, made unique to `workflow_id`.
pub(crate) fn events_of(workflow_id: &str) -> Vec<WorkflowEvent> {
    let mut out = triad_domain::fixtures::completed_workflow_events();
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
    let Scratch {
        run,
        kafka,
        names,
        schema,
    } = Scratch::create(config, "proj").await?;

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
    let t = report.timings;
    eprintln!(
        "projection: {:.2} s (reading Kafka {:.2} s, decoding {:.2} s, PostgreSQL {:.2} s)",
        projection.as_secs_f64(),
        t.read.as_secs_f64(),
        t.decode.as_secs_f64(),
        t.apply.as_secs_f64()
    );
    anyhow::ensure!(
        report.applied.events == total,
        "the projection applied {} of {total} events",
        report.applied.events
    );

    // The baseline: the same rows (every row the projection ended with, read back with
    // a binary COPY TO), binary COPY FROM into tables of the same shape and indexes, in
    // transactions of the same batch size, committed the way the projection commits
    // (without waiting for the WAL flush, ADR 0011).
    let mut client = pool.get().await.context("connecting to PostgreSQL")?;
    client
        .query(
            "SELECT set_config('search_path', quote_ident($1) || ', public', false), \
             set_config('synchronous_commit', 'off', false)",
            &[&schema],
        )
        .await?;
    let mut copied = 0usize;
    let mut copy = Duration::ZERO;
    let mut timeline = (0usize, Duration::ZERO);
    for table in BASELINE {
        client.batch_execute(table.create).await?;
        let mut data = Vec::new();
        let out = client.copy_out(table.copy_out).await?;
        futures::pin_mut!(out);
        while let Some(chunk) = out.next().await {
            data.extend_from_slice(&chunk?);
        }
        let rows = binary_copy_rows(&data)?;
        let started = Instant::now();
        for chunk in rows.chunks(batch.max(1)) {
            let tx = client.transaction().await?;
            let sink = tx.copy_in(table.copy_in).await?;
            futures::pin_mut!(sink);
            let mut body = Vec::with_capacity(chunk.iter().map(|r| r.len()).sum::<usize>() + 21);
            body.extend_from_slice(COPY_HEADER);
            for row in chunk {
                body.extend_from_slice(row);
            }
            body.extend_from_slice(&(-1i16).to_be_bytes());
            sink.send(bytes::Bytes::from(body)).await?;
            sink.finish().await?;
            tx.commit().await?;
        }
        let took = started.elapsed();
        copy += took;
        copied += rows.len();
        if table.name == "workflow_events" {
            timeline = (rows.len(), took);
        }
    }
    drop(client);
    let cleanup = pool.get().await?;
    cleanup
        .query("SELECT triad_drop_schema($1)", &[&schema])
        .await?;

    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(1e-9);
    let apply = report.timings.apply;
    println!(
        "| events | rows | batch | projection rows/s (PostgreSQL apply) | binary COPY rows/s | \
         ratio | end to end events/s (Kafka → PostgreSQL) | timeline-only COPY ratio |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    println!(
        "| {total} | {copied} | {batch} | {:.0} | {:.0} | {:.2} | {:.0} | {:.2} |",
        rate(copied, apply),
        rate(copied, copy),
        copy.as_secs_f64() / apply.as_secs_f64().max(1e-9),
        rate(total, projection),
        rate(timeline.0, apply) / rate(timeline.0, timeline.1),
    );
    Ok(())
}

/// A table of the read model and the statements that copy it for the baseline (constants:
/// SQL is never assembled from strings).
struct Baseline {
    name: &'static str,
    create: &'static str,
    copy_out: &'static str,
    copy_in: &'static str,
}

const BASELINE: [Baseline; 4] = [
    Baseline {
        name: "workflows",
        create: "CREATE TABLE copy_workflows (LIKE workflows INCLUDING ALL)",
        copy_out: "COPY workflows TO STDOUT (FORMAT binary)",
        copy_in: "COPY copy_workflows FROM STDIN (FORMAT binary)",
    },
    Baseline {
        name: "tasks",
        create: "CREATE TABLE copy_tasks (LIKE tasks INCLUDING ALL)",
        copy_out: "COPY tasks TO STDOUT (FORMAT binary)",
        copy_in: "COPY copy_tasks FROM STDIN (FORMAT binary)",
    },
    Baseline {
        name: "workflow_events",
        create: "CREATE TABLE copy_workflow_events (LIKE workflow_events INCLUDING ALL)",
        copy_out: "COPY workflow_events TO STDOUT (FORMAT binary)",
        copy_in: "COPY copy_workflow_events FROM STDIN (FORMAT binary)",
    },
    Baseline {
        name: "models",
        create: "CREATE TABLE copy_models (LIKE models INCLUDING ALL)",
        copy_out: "COPY models TO STDOUT (FORMAT binary)",
        copy_in: "COPY copy_models FROM STDIN (FORMAT binary)",
    },
];

/// The binary COPY header with no flags and no extension.
const COPY_HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Splits a binary COPY stream (PostgreSQL's documented format: a header, then per row a
/// field count and length-prefixed fields, then -1) into its rows, each kept whole.
fn binary_copy_rows(data: &[u8]) -> Result<Vec<&[u8]>> {
    let bad = || anyhow::anyhow!("malformed binary COPY stream");
    let be32 = |at: usize| -> Result<i32> {
        let b = data.get(at..at + 4).ok_or_else(bad)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    anyhow::ensure!(
        data.starts_with(&COPY_HEADER[..11]),
        "not a binary COPY stream"
    );
    let extension = usize::try_from(be32(15)?)?;
    let mut at = 19 + extension;
    let mut rows = Vec::new();
    loop {
        let b = data.get(at..at + 2).ok_or_else(bad)?;
        let fields = i16::from_be_bytes([b[0], b[1]]);
        if fields < 0 {
            return Ok(rows);
        }
        let start = at;
        at += 2;
        for _ in 0..fields {
            let len = be32(at)?;
            at += 4 + usize::try_from(len.max(0))?;
        }
        rows.push(data.get(start..at).ok_or_else(bad)?);
    }
}
