//! Projection workers: the event store (`triad.workflow-events`) into PostgreSQL read models.
//!
//! - **Exactly once.** Each batch of records is applied in one transaction together with the
//!   next offset of every partition it touched (`projection_offsets`, inside the read model's
//!   schema). The worker reads its start offsets from there, not from Kafka, and assigns the
//!   partitions itself: a redelivered record is below the stored offset and skipped, and a
//!   second worker on the same schema finds the offsets moved under its feet and re-seeks
//!   (the offsets row is locked `FOR UPDATE`), so two workers never apply a record twice.
//! - **Duplicates in the log** (a processor's repair or a zombie writing an event again) are
//!   skipped by the processor's own rule: an event whose sequence is not above its workflow's
//!   `last_sequence`.
//! - **Batching.** A batch closes at `batch_max_records` or `flush_interval_ms` after its first
//!   record arrived, whichever comes first; one `NOTIFY triad_read_model` per batch. A feed
//!   task reads ahead while a batch is applied (group commit), and batches commit without
//!   waiting for the WAL flush: rows and offsets are lost or kept together (ADR 0011).
//! - **PostgreSQL down**: the batch is retried with backoff until it commits; nothing is
//!   skipped. Undecodable records go to the dead-letter topic with their reason.
//! - **Rebuild** ([`replay`]): a shadow schema is built from offset 0 while the live one keeps
//!   serving, then swapped in atomically; the live worker notices the new build and re-seeks.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use tokio_postgres::types::ToSql;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::KafkaConfig;
use triad_domain::WorkflowEvent;
use triad_kafka::dlq::DeadLetterWriter;

mod copy;
pub mod plan;
pub mod sql;

use plan::Param;
use sql::{Sql, Stmt};

/// The projection names `triad replay --projection` accepts.
pub const PROJECTIONS: &[&str] = &["workflows"];

/// The tables of the `workflows` projection, in the order `replay --verify` compares them.
pub const TABLES: &[&str] = &[
    "workflows",
    "tasks",
    "workflow_events",
    "models",
    "projection_offsets",
];

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("PostgreSQL: {}", pg_message(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("PostgreSQL pool: {0}")]
    Pool(String),
    #[error(transparent)]
    Store(#[from] triad_store::Error),
    #[error(transparent)]
    Kafka(#[from] triad_kafka::Error),
    #[error("Kafka: {0}")]
    Rdkafka(#[from] rdkafka::error::KafkaError),
    #[error(transparent)]
    Codec(#[from] triad_codec::Error),
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("projections/workflows/apply.sql has no statement named {0:?}")]
    MissingStatement(&'static str),
    #[error(
        "partition {partition}: the batch starts at offset {first} but the read model is at {stored}"
    )]
    Gap {
        partition: i32,
        stored: i64,
        first: i64,
    },
    #[error("the read model was rebuilt (build {0}); re-reading its offsets")]
    Rebuilt(String),
    #[error("the rebuilt table {table} differs from the live one (live {live}, rebuilt {rebuilt})")]
    Mismatch {
        table: &'static str,
        live: String,
        rebuilt: String,
    },
    #[error("encoding a COPY row: {0}")]
    Encode(String),
    #[error("a batch took longer than {0:?} to apply (a connection that no longer answers?)")]
    Timeout(Duration),
    #[error("unknown projection {0:?} (known: workflows)")]
    UnknownProjection(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A live batch that has not committed after this long is abandoned and retried: a hung
/// connection must not stall the read model (a replay's final catch-up, which holds the live
/// batch back, takes far less; a batch that merely waited is retried harmlessly).
const APPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// The server's message when there is one ("db error" alone says nothing).
fn pg_message(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map_or_else(|| e.to_string(), ToString::to_string)
}

#[derive(Debug, Clone)]
pub struct Options {
    pub kafka: KafkaConfig,
    /// The event-store topic.
    pub topic: String,
    pub dlq_topic: String,
    /// The live read model's schema.
    pub schema: String,
    pub batch_max_records: usize,
    pub flush_interval: Duration,
}

/// Where a batch goes: the live schema (under the shared swap lock, checking the build) or a
/// replay's shadow (whose builder holds the exclusive lock during the final catch-up).
#[derive(Debug, Clone)]
enum Target {
    Live { schema: String, build: String },
    Shadow { schema: String },
}

impl Target {
    fn schema(&self) -> &str {
        match self {
            Self::Live { schema, .. } | Self::Shadow { schema } => schema,
        }
    }
}

/// A record ready to apply: its place in the log and the decoded event, or `None` when it was
/// dead-lettered (its offset still advances).
#[derive(Debug)]
struct Decoded {
    partition: i32,
    offset: i64,
    /// None when the record was dead-lettered.
    event: Option<Prepared>,
}

/// An event with its timeline `data` rendered as JSON, done by the reading task so the
/// apply path (which holds the transaction) only folds and writes.
#[derive(Debug)]
struct Prepared {
    event: WorkflowEvent,
    data: String,
}

impl Prepared {
    fn new(event: WorkflowEvent) -> Result<Self> {
        let data = plan::data(&event.body)?.to_string();
        Ok(Self { event, data })
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    pub events: usize,
    pub duplicates: usize,
    pub redelivered: usize,
    pub dead_lettered: usize,
}

/// The PostgreSQL side of a projection.
#[derive(Debug, Clone)]
pub struct Sink {
    pool: deadpool_postgres::Pool,
    sql: Arc<Sql>,
    topic: String,
}

impl Sink {
    pub fn new(pool: deadpool_postgres::Pool, topic: &str) -> Result<Self> {
        Ok(Self {
            pool,
            sql: Arc::new(Sql::load()?),
            topic: topic.to_owned(),
        })
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool
            .get()
            .await
            .map_err(|e| Error::Pool(e.to_string()))
    }

    async fn stmt(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        stmt: Stmt,
    ) -> Result<tokio_postgres::Statement> {
        Ok(tx.prepare_cached(self.sql.text(stmt)).await?)
    }

    /// Creates `schema` with the projection's tables and views if it does not exist (after
    /// the migrations), and returns its build id.
    pub async fn ensure(&self, schema: &str, live: &str) -> Result<String> {
        let mut client = self.client().await?;
        triad_store::migrate::run(&client).await?;
        let tx = client.transaction().await?;
        // "already exists, skipping" notices on every start say nothing.
        tx.batch_execute("SET LOCAL client_min_messages = warning")
            .await?;
        // Serialised with swaps and other workers creating the same schema.
        tx.query(self.sql.text(Stmt::LockExclusive), &[&live])
            .await?;
        tx.query("SELECT triad_create_schema($1)", &[&schema])
            .await?;
        tx.query(self.sql.text(Stmt::SearchPath), &[&schema])
            .await?;
        tx.batch_execute(sql::SCHEMA).await?;
        tx.batch_execute(sql::ANALYTICS).await?;
        let fresh = uuid::Uuid::new_v4().to_string();
        tx.execute(self.sql.text(Stmt::SetBuild), &[&fresh]).await?;
        let build: String = tx
            .query_one(self.sql.text(Stmt::Build), &[])
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(build)
    }

    /// The next offset of each partition stored in `schema`.
    pub async fn offsets(&self, schema: &str) -> Result<BTreeMap<i32, i64>> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.query(self.sql.text(Stmt::SearchPath), &[&schema])
            .await?;
        let rows = tx
            .query(self.sql.text(Stmt::Offsets), &[&self.topic])
            .await?;
        tx.commit().await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Applies `batch` in one transaction with the offsets; `Rebuilt` when a replay swapped
    /// the live schema since `target`'s build was read, `Gap` when the stored offsets are not
    /// where the batch starts (another worker moved them, or the log lost records).
    async fn apply(&self, target: &Target, batch: &[Decoded]) -> Result<Applied> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let schema = target.schema();
        let ids: Vec<String> = batch
            .iter()
            .filter_map(|r| r.event.as_ref().map(|e| e.event.meta.workflow_id.clone()))
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        // The search path first: statements are prepared (once per connection) against it.
        // Then the reads a batch needs are pipelined: tokio-postgres sends them back to back
        // and PostgreSQL runs them in that order, so the offsets and sequences are read with
        // the swap lock held. The batch is then folded in memory into a few set-based
        // statements (plan.rs), pipelined the same way, so a batch costs a handful of round
        // trips whatever its size.
        tx.query(&self.stmt(&tx, Stmt::SearchPath).await?, &[&schema])
            .await?;
        let async_commit = self.stmt(&tx, Stmt::AsyncCommit).await?;
        let lock = self.stmt(&tx, Stmt::LockShared).await?;
        let build = self.stmt(&tx, Stmt::Build).await?;
        let offsets = self.stmt(&tx, Stmt::Offsets).await?;
        let last = self.stmt(&tx, Stmt::WorkflowSequences).await?;
        let check = async {
            if let Target::Live {
                schema,
                build: ours,
            } = target
            {
                tx.query(&lock, &[schema]).await?;
                let current: String = tx.query_one(&build, &[]).await?.try_get(0)?;
                if &current != ours {
                    return Err(Error::Rebuilt(current));
                }
            }
            Ok(())
        };
        let (_, (), offsets, last) = futures::try_join!(
            async { Ok(tx.query(&async_commit, &[]).await?) },
            check,
            async { Ok(tx.query(&offsets, &[&self.topic]).await?) },
            async { Ok(tx.query(&last, &[&ids]).await?) },
        )?;
        let mut next: HashMap<i32, i64> = HashMap::new();
        for row in offsets {
            next.insert(row.try_get(0)?, row.try_get(1)?);
        }
        let mut sequences: HashMap<String, i64> = HashMap::new();
        for row in last {
            sequences.insert(row.try_get(0)?, row.try_get(1)?);
        }
        let mut applied = Applied::default();
        let mut touched: BTreeMap<i32, i64> = BTreeMap::new();
        let mut folded = plan::Batch::default();
        for record in batch {
            let expected = next.get(&record.partition).copied().unwrap_or(0);
            if record.offset < expected {
                applied.redelivered += 1;
                continue;
            }
            if record.offset > expected {
                return Err(Error::Gap {
                    partition: record.partition,
                    stored: expected,
                    first: record.offset,
                });
            }
            next.insert(record.partition, record.offset + 1);
            touched.insert(record.partition, record.offset + 1);
            let Some(Prepared { event, data }) = &record.event else {
                applied.dead_lettered += 1;
                continue;
            };
            let wf = &event.meta.workflow_id;
            let last = sequences.get(wf).copied().unwrap_or(0);
            if event.meta.sequence <= last {
                applied.duplicates += 1;
                continue;
            }
            folded.add_rendered(event, data.clone(), record.partition, record.offset)?;
            sequences.insert(wf.clone(), event.meta.sequence);
            applied.events += 1;
        }
        let plan::Planned { inserts, writes } = folded.writes();
        copy::write(&tx, &self.sql, &inserts).await?;
        // The updates, the offsets and the notification go out back to back (pipelined, run
        // in this order) and the commit follows: one wait instead of one per statement.
        let mut statements = Vec::with_capacity(writes.len() + touched.len() + 1);
        let mut params: Vec<Vec<&(dyn ToSql + Sync)>> = Vec::with_capacity(statements.capacity());
        for w in &writes {
            statements.push(self.stmt(&tx, w.stmt).await?);
            params.push(w.params.iter().map(bind).collect());
        }
        let store = self.stmt(&tx, Stmt::StoreOffset).await?;
        for (partition, offset) in &touched {
            statements.push(store.clone());
            params.push(vec![&self.topic, partition, offset]);
        }
        if applied.events > 0 {
            statements.push(self.stmt(&tx, Stmt::Notify).await?);
            params.push(vec![&schema]);
        }
        let pending = statements
            .iter()
            .zip(&params)
            .map(|(statement, p)| tx.execute(statement, p));
        futures::future::try_join_all(pending).await?;
        tx.commit().await?;
        Ok(applied)
    }

    /// Applies `records` (partition, offset, event) to `schema` in one transaction, as a
    /// replay does; the offsets must continue where `schema` stands. For tools and tests that
    /// hold events already decoded.
    pub async fn apply_events(
        &self,
        schema: &str,
        records: &[(i32, i64, WorkflowEvent)],
    ) -> Result<Applied> {
        let batch = records
            .iter()
            .map(|(partition, offset, event)| {
                Ok(Decoded {
                    partition: *partition,
                    offset: *offset,
                    event: Some(Prepared::new(event.clone())?),
                })
            })
            .collect::<Result<Vec<Decoded>>>()?;
        let target = Target::Shadow {
            schema: schema.to_owned(),
        };
        self.apply(&target, &batch).await
    }

    /// The content hash of each of [`TABLES`] in `schema`.
    pub async fn hashes(&self, schema: &str) -> Result<Vec<(&'static str, String)>> {
        let client = self.client().await?;
        let mut out = Vec::new();
        for table in TABLES {
            let row = client
                .query_one("SELECT triad_table_hash($1, $2)", &[&schema, table])
                .await?;
            out.push((*table, row.try_get(0)?));
        }
        Ok(out)
    }
}

fn bind(p: &Param) -> &(dyn ToSql + Sync) {
    match p {
        Param::TextArray(v) => v,
        Param::OptTextArray(v) => v,
        Param::IntArray(v) => v,
        Param::OptIntArray(v) => v,
        Param::BigIntArray(v) => v,
        Param::OptBigIntArray(v) => v,
        Param::BoolArray(v) => v,
        Param::OptBytesArray(v) => v,
        Param::TimeArray(v) => v,
        Param::OptTimeArray(v) => v,
    }
}

/// A consumer without a group on `topic`, assigned at `from` (partition → offset) for the
/// partitions that have something to read.
fn assign(kafka: &KafkaConfig, topic: &str, from: &BTreeMap<i32, i64>) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = triad_kafka::client::reader_config(kafka)
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for (p, o) in from {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*o))?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// The partitions of `topic` with the offset each starts at in `stored` (0 when absent).
fn start_offsets(
    kafka: &KafkaConfig,
    topic: &str,
    stored: &BTreeMap<i32, i64>,
) -> Result<BTreeMap<i32, i64>> {
    let consumer: StreamConsumer = triad_kafka::client::reader_config(kafka).create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    Ok(metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .map(|p| (p, stored.get(&p).copied().unwrap_or(0)))
        .collect())
}

/// Records until `max` or `interval` after the first; empty when `cancel` fires first.
async fn collect(
    stream: &mut rdkafka::consumer::MessageStream<'_, rdkafka::consumer::DefaultConsumerContext>,
    max: usize,
    interval: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<OwnedMessage>> {
    let mut batch = Vec::new();
    let first = tokio::select! {
        () = cancel.cancelled() => return Ok(batch),
        m = stream.next() => m,
    };
    match first {
        Some(m) => batch.push(m?.detach()),
        None => return Ok(batch),
    }
    let deadline = tokio::time::Instant::now() + interval;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(m)) => batch.push(m?.detach()),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}

/// A record the live worker's feed fetched and decoded, and when it arrived.
struct Fed {
    arrived: tokio::time::Instant,
    decoded: Decoded,
}

/// The reading side of the live worker, run as its own task: it fetches and decodes records
/// as they arrive, so the next batch fills while one is applied, and a record that waited
/// through an apply is not held back a flush interval more (see [`gather`]).
struct Feed {
    consumer: StreamConsumer,
    codec: Arc<Codec>,
    dlq: DeadLetterWriter,
    group: String,
}

impl Feed {
    /// Sends each record until `stop`, the receiver going away, or a Kafka error (sent, then
    /// it stops). A record that cannot be decoded for now (registry unreachable) is retried
    /// with backoff; one that can never be decoded is dead-lettered and still sent, so its
    /// offset advances with its batch.
    async fn run(self, tx: tokio::sync::mpsc::Sender<Result<Fed>>, stop: CancellationToken) {
        let mut stream = self.consumer.stream();
        let mut attempt = 0;
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => return,
                m = stream.next() => m,
            };
            let message = match next {
                None => return,
                Some(Err(e)) => {
                    let _closed = tx.send(Err(e.into())).await;
                    return;
                }
                Some(Ok(m)) => m.detach(),
            };
            let arrived = tokio::time::Instant::now();
            let event = loop {
                let failure = match self.codec.decode::<WorkflowEvent>(message.payload()).await {
                    Ok(e) => match Prepared::new(e) {
                        Ok(p) => break Some(p),
                        Err(e) => self.dead_letter(&message, &e.to_string()).await,
                    },
                    Err(e) if e.is_undecodable() => {
                        self.dead_letter(&message, &e.to_string()).await
                    }
                    Err(e) => Some(Error::from(e)),
                };
                let Some(failure) = failure else {
                    break None;
                };
                tracing::warn!(error = %failure, "decoding a record; retrying");
                if !backoff(&mut attempt, &stop).await {
                    return;
                }
            };
            attempt = 0;
            let decoded = Decoded {
                partition: message.partition(),
                offset: message.offset(),
                event,
            };
            if tx.send(Ok(Fed { arrived, decoded })).await.is_err() {
                return;
            }
        }
    }
}

impl Feed {
    /// Dead-letters `message` with `reason`; the error if the dead-letter topic refused it.
    async fn dead_letter(&self, message: &OwnedMessage, reason: &str) -> Option<Error> {
        self.dlq
            .write(message, &self.group, "decode", reason)
            .await
            .err()
            .map(Error::from)
    }
}

/// The next batch from the feed: it closes at `max` records or `interval` after its first
/// record *arrived*, whichever comes first. Records that arrived while the previous batch
/// was applied are already due, so under load a batch is whatever queued during the last
/// apply (group commit) and latency stays near max(interval, apply), not their sum. Empty
/// when cancelled before a first record or when the feed stopped.
async fn gather(
    rx: &mut tokio::sync::mpsc::Receiver<Result<Fed>>,
    max: usize,
    interval: Duration,
    cancel: &CancellationToken,
) -> Result<Vec<Decoded>> {
    let first = tokio::select! {
        () = cancel.cancelled() => return Ok(Vec::new()),
        f = rx.recv() => f,
    };
    let Some(first) = first else {
        return Ok(Vec::new());
    };
    let first = first?;
    let deadline = first.arrived + interval;
    let mut batch = vec![first.decoded];
    while batch.len() < max {
        // `timeout_at` polls the receiver before the deadline, so a past deadline still
        // takes every record already queued.
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(f)) => batch.push(f?.decoded),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(batch)
}

/// Decodes `batch`; undecodable records are dead-lettered (their offsets still advance).
/// Other failures (the registry unreachable) are errors: the caller retries.
async fn decode(
    codec: &Codec,
    dlq: &DeadLetterWriter,
    group: &str,
    batch: &[OwnedMessage],
) -> Result<Vec<Decoded>> {
    let mut out = Vec::with_capacity(batch.len());
    for m in batch {
        let prepared = match codec.decode::<WorkflowEvent>(m.payload()).await {
            Ok(e) => Prepared::new(e).map_err(|e| e.to_string()),
            Err(e) if e.is_undecodable() => Err(e.to_string()),
            Err(e) => return Err(e.into()),
        };
        let event = match prepared {
            Ok(p) => Some(p),
            Err(reason) => {
                dlq.write(m, group, "decode", &reason).await?;
                None
            }
        };
        out.push(Decoded {
            partition: m.partition(),
            offset: m.offset(),
            event,
        });
    }
    Ok(out)
}

/// Exponential backoff between retries, capped; returns false when cancelled meanwhile.
async fn backoff(attempt: &mut u32, cancel: &CancellationToken) -> bool {
    let wait = Duration::from_millis(100u64 << (*attempt).min(6)).min(Duration::from_secs(5));
    *attempt += 1;
    tokio::select! {
        () = cancel.cancelled() => false,
        () = tokio::time::sleep(wait) => true,
    }
}

/// Runs the live `workflows` projection until `cancel`; the batch in hand is applied before
/// it returns (drain).
pub async fn run(
    options: &Options,
    pool: deadpool_postgres::Pool,
    codec: Arc<Codec>,
    cancel: CancellationToken,
) -> Result<()> {
    let sink = Sink::new(pool, &options.topic)?;
    let group = format!("{}-projection-workflows", options.kafka.group_prefix);
    let dlq = DeadLetterWriter::new(
        triad_kafka::produce::Producer::new(&options.kafka)?,
        codec.clone(),
        &options.dlq_topic,
    );
    let mut attempt = 0;
    let mut build = loop {
        match sink.ensure(&options.schema, &options.schema).await {
            Ok(b) => break b,
            Err(error) => {
                tracing::warn!(%error, "read model not ready; retrying");
                if !backoff(&mut attempt, &cancel).await {
                    return Ok(());
                }
            }
        }
    };
    tracing::info!(db.namespace = %options.schema, build = %build, "projection started");
    'seek: loop {
        let stored = loop {
            match sink.offsets(&options.schema).await {
                Ok(o) => break o,
                Err(error) => {
                    tracing::warn!(%error, "reading the projection's offsets; retrying");
                    if !backoff(&mut attempt, &cancel).await {
                        return Ok(());
                    }
                }
            }
        };
        let from = start_offsets(&options.kafka, &options.topic, &stored)?;
        // The feed fetches and decodes while a batch is applied; it stops when this seek
        // ends (re-seek, return).
        let (tx, mut rx) = tokio::sync::mpsc::channel(options.batch_max_records.max(1));
        let stop = cancel.child_token();
        let _stop_feed = stop.clone().drop_guard();
        let feed = Feed {
            consumer: assign(&options.kafka, &options.topic, &from)?,
            codec: Arc::clone(&codec),
            dlq: dlq.clone(),
            group: group.clone(),
        };
        tokio::spawn(feed.run(tx, stop));
        loop {
            let decoded = gather(
                &mut rx,
                options.batch_max_records,
                options.flush_interval,
                &cancel,
            )
            .await?;
            if decoded.is_empty() {
                return Ok(());
            }
            let target = Target::Live {
                schema: options.schema.clone(),
                build: build.clone(),
            };
            loop {
                let applied = tokio::time::timeout(APPLY_TIMEOUT, sink.apply(&target, &decoded))
                    .await
                    .unwrap_or(Err(Error::Timeout(APPLY_TIMEOUT)));
                match applied {
                    Ok(applied) => {
                        attempt = 0;
                        tracing::debug!(
                            events = applied.events,
                            duplicates = applied.duplicates,
                            redelivered = applied.redelivered,
                            "batch applied"
                        );
                        break;
                    }
                    Err(Error::Rebuilt(new)) => {
                        tracing::info!(build = %new, "read model rebuilt by a replay; re-seeking");
                        build = new;
                        continue 'seek;
                    }
                    Err(error @ Error::Gap { .. }) => {
                        tracing::warn!(%error, "offsets moved; re-seeking");
                        if !backoff(&mut attempt, &cancel).await {
                            return Ok(());
                        }
                        continue 'seek;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "applying a batch; retrying (nothing is skipped)");
                        if !backoff(&mut attempt, &cancel).await {
                            return Ok(());
                        }
                    }
                }
            }
            if cancel.is_cancelled() {
                return Ok(());
            }
        }
    }
}

/// Progress of a replay: records applied of the records to read.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub done: u64,
    pub total: u64,
}

#[derive(Debug, Clone)]
pub struct ReplayReport {
    pub records: u64,
    pub applied: Applied,
    /// Table hashes compared equal before the swap (with `verify`).
    pub verified: Vec<(&'static str, String)>,
    /// Where the time went: waiting for Kafka, decoding Avro, applying to PostgreSQL (a
    /// reader task fetches and decodes the next batches while one is applied).
    pub timings: Timings,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    pub read: Duration,
    pub decode: Duration,
    pub apply: Duration,
}

/// Rebuilds projection `name` from offset 0 into a shadow schema and swaps it in.
///
/// The shadow is built to the live read model's offsets as they are when the replay starts
/// (to the log's end when there is none yet). Then, holding the swap lock exclusively (the
/// live worker's next batch waits), it catches up to the live offsets of that moment; with
/// `verify` it compares every table's content hash with the live one and refuses to swap on a
/// difference; then it renames the shadow into place.
pub async fn replay(
    options: &Options,
    pool: deadpool_postgres::Pool,
    codec: Arc<Codec>,
    name: &str,
    verify: bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<ReplayReport> {
    if !PROJECTIONS.contains(&name) {
        return Err(Error::UnknownProjection(name.to_owned()));
    }
    let sink = Sink::new(pool.clone(), &options.topic)?;
    let group = format!("{}-replay-{name}", options.kafka.group_prefix);
    let dlq = DeadLetterWriter::new(
        triad_kafka::produce::Producer::new(&options.kafka)?,
        codec.clone(),
        &options.dlq_topic,
    );
    let live = &options.schema;
    let shadow = format!("{live}_shadow");
    sink.ensure(live, live).await?;
    {
        let client = sink.client().await?;
        client
            .query("SELECT triad_drop_schema($1)", &[&shadow])
            .await?;
    }
    sink.ensure(&shadow, live).await?;
    let target = Target::Shadow {
        schema: shadow.clone(),
    };
    let mut live_offsets = sink.offsets(live).await?;
    if live_offsets.is_empty() {
        live_offsets = high_watermarks(&options.kafka, &options.topic)?;
    }
    let mut report = ReplayReport {
        records: 0,
        applied: Applied::default(),
        verified: Vec::new(),
        timings: Timings::default(),
    };
    let zero = start_offsets(&options.kafka, &options.topic, &BTreeMap::new())?;
    let total: i64 = live_offsets.values().sum();
    let mut tracker = Tracker {
        done: 0,
        total: u64::try_from(total).unwrap_or(0),
        progress,
    };
    let ctx = RangeContext {
        options,
        sink: &sink,
        target: &target,
        codec: &codec,
        dlq: &dlq,
        group: &group,
    };
    read_range(&ctx, &zero, &live_offsets, &mut report, &mut tracker).await?;

    let mut client = sink.client().await?;
    let tx = client.transaction().await?;
    tx.query(sink.sql.text(Stmt::LockExclusive), &[live])
        .await?;
    tx.query(sink.sql.text(Stmt::SearchPath), &[live]).await?;
    let mut now: BTreeMap<i32, i64> = BTreeMap::new();
    for row in tx
        .query(sink.sql.text(Stmt::Offsets), &[&options.topic])
        .await?
    {
        now.insert(row.try_get(0)?, row.try_get(1)?);
    }
    if !now.is_empty() {
        let from = sink.offsets(&shadow).await?;
        let from = start_offsets(&options.kafka, &options.topic, &from)?;
        tracker.total += now
            .iter()
            .map(|(p, o)| u64::try_from(o - from.get(p).copied().unwrap_or(0)).unwrap_or(0))
            .sum::<u64>();
        read_range(&ctx, &from, &now, &mut report, &mut tracker).await?;
    }
    if verify {
        let (a, b) = (sink.hashes(live).await?, sink.hashes(&shadow).await?);
        for ((table, live_hash), (_, rebuilt)) in a.into_iter().zip(b) {
            if live_hash != rebuilt {
                tx.rollback().await?;
                return Err(Error::Mismatch {
                    table,
                    live: live_hash,
                    rebuilt,
                });
            }
            report.verified.push((table, live_hash));
        }
    }
    tx.query("SELECT triad_swap_schema($1, $2)", &[live, &shadow])
        .await?;
    tx.commit().await?;
    Ok(report)
}

struct Tracker<'a> {
    done: u64,
    total: u64,
    progress: &'a (dyn Fn(Progress) + Sync),
}

fn high_watermarks(kafka: &KafkaConfig, topic: &str) -> Result<BTreeMap<i32, i64>> {
    let consumer: StreamConsumer = triad_kafka::client::reader_config(kafka).create()?;
    let partitions = start_offsets(kafka, topic, &BTreeMap::new())?;
    let mut out = BTreeMap::new();
    for p in partitions.keys() {
        let (_, high) = consumer.fetch_watermarks(topic, *p, Duration::from_secs(10))?;
        out.insert(*p, high);
    }
    Ok(out)
}

/// What every range of a replay is read with.
struct RangeContext<'a> {
    options: &'a Options,
    sink: &'a Sink,
    target: &'a Target,
    codec: &'a Arc<Codec>,
    dlq: &'a DeadLetterWriter,
    group: &'a str,
}

/// A decoded batch of a replay range and what reading it took.
struct ReadBatch {
    decoded: Vec<Decoded>,
    read: Duration,
    decode: Duration,
}

/// The reading side of a replay range, run as its own task.
struct Reader {
    consumer: StreamConsumer,
    until: BTreeMap<i32, i64>,
    /// Partitions not yet read up to `until`.
    open: BTreeMap<i32, i64>,
    batch_max_records: usize,
    flush_interval: Duration,
    codec: Arc<Codec>,
    dlq: DeadLetterWriter,
    group: String,
}

impl Reader {
    /// Sends decoded batches until every partition reached `until` (then the channel
    /// closes), an error (sent, then it stops), or `stop`.
    async fn run(
        mut self,
        tx: tokio::sync::mpsc::Sender<Result<ReadBatch>>,
        stop: CancellationToken,
    ) {
        while !self.open.is_empty() {
            let batch = tokio::select! {
                () = stop.cancelled() => return,
                b = self.next() => b,
            };
            let failed = batch.is_err();
            if tx.send(batch).await.is_err() || failed {
                return;
            }
        }
    }

    async fn next(&mut self) -> Result<ReadBatch> {
        let started = std::time::Instant::now();
        let never = CancellationToken::new();
        let mut stream = self.consumer.stream();
        let batch = tokio::time::timeout(
            Duration::from_secs(30),
            collect(
                &mut stream,
                self.batch_max_records,
                self.flush_interval,
                &never,
            ),
        )
        .await
        .map_err(|_| {
            triad_kafka::Error::Timeout(Duration::from_secs(30), "the replay's next record")
        })??;
        drop(stream);
        let until = &self.until;
        let batch: Vec<OwnedMessage> = batch
            .into_iter()
            .filter(|m| until.get(&m.partition()).is_some_and(|u| m.offset() < *u))
            .collect();
        for m in &batch {
            if until
                .get(&m.partition())
                .is_some_and(|u| m.offset() + 1 >= *u)
            {
                self.open.remove(&m.partition());
            }
        }
        let read = started.elapsed();
        let decoded = decode(&self.codec, &self.dlq, &self.group, &batch).await?;
        Ok(ReadBatch {
            decoded,
            read,
            decode: started.elapsed() - read,
        })
    }
}

/// Applies the records of each partition from `from` up to (not including) `until` into
/// `ctx.target`, in batches.
async fn read_range(
    ctx: &RangeContext<'_>,
    from: &BTreeMap<i32, i64>,
    until: &BTreeMap<i32, i64>,
    report: &mut ReplayReport,
    tracker: &mut Tracker<'_>,
) -> Result<()> {
    let RangeContext {
        options,
        sink,
        target,
        codec,
        dlq,
        group,
    } = ctx;
    let open: BTreeMap<i32, i64> = from
        .iter()
        .filter(|(p, o)| until.get(p).is_some_and(|u| u > o))
        .map(|(p, o)| (*p, *o))
        .collect();
    if open.is_empty() {
        return Ok(());
    }
    // A reader task fetches and decodes the next batches while this one applies: Kafka
    // fetches, Avro decoding and PostgreSQL writes take comparable time, so the replay goes
    // at the slowest of them instead of their sum.
    let consumer = assign(&options.kafka, &options.topic, &open)?;
    let stop = CancellationToken::new();
    let _stop_reader = stop.clone().drop_guard();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<ReadBatch>>(2);
    let reader = Reader {
        consumer,
        until: until.clone(),
        open,
        batch_max_records: options.batch_max_records,
        flush_interval: options.flush_interval,
        codec: Arc::clone(codec),
        dlq: (*dlq).clone(),
        group: (*group).to_owned(),
    };
    tokio::spawn(reader.run(tx, stop));
    while let Some(read) = rx.recv().await {
        let read = read?;
        report.timings.read += read.read;
        report.timings.decode += read.decode;
        if read.decoded.is_empty() {
            continue;
        }
        let records = u64::try_from(read.decoded.len()).unwrap_or(0);
        let started = std::time::Instant::now();
        let applied = sink.apply(target, &read.decoded).await?;
        report.timings.apply += started.elapsed();
        report.records += records;
        report.applied.events += applied.events;
        report.applied.duplicates += applied.duplicates;
        report.applied.dead_lettered += applied.dead_lettered;
        tracker.done += records;
        (tracker.progress)(Progress {
            done: tracker.done,
            total: tracker.total,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::mpsc;
    use tokio::time::Instant;

    fn fed(offset: i64, arrived: Instant) -> Result<Fed> {
        Ok(Fed {
            arrived,
            decoded: Decoded {
                partition: 0,
                offset,
                event: None,
            },
        })
    }

    /// `gather` with `max` records and an interval of `ms`, never cancelled.
    async fn take(rx: &mut mpsc::Receiver<Result<Fed>>, max: usize, ms: u64) -> Vec<Decoded> {
        gather(
            rx,
            max,
            Duration::from_millis(ms),
            &CancellationToken::new(),
        )
        .await
        .unwrap()
    }

    fn offsets(batch: &[Decoded]) -> Vec<i64> {
        batch.iter().map(|d| d.offset).collect()
    }

    // The clock is paused: a wait shows up as virtual time passing, without sleeping.
    #[tokio::test(start_paused = true)]
    async fn records_that_waited_through_an_apply_are_taken_at_once() {
        let (tx, mut rx) = mpsc::channel(16);
        let long_ago = Instant::now() - Duration::from_secs(1);
        for o in 0..3 {
            tx.send(fed(o, long_ago)).await.unwrap();
        }
        let start = Instant::now();
        let batch = take(&mut rx, 10, 50).await;
        assert_eq!(offsets(&batch), [0, 1, 2]);
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "a due batch must not linger"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fresh_record_lingers_one_interval_for_company() {
        let (tx, mut rx) = mpsc::channel(16);
        let start = Instant::now();
        tx.send(fed(7, start)).await.unwrap();
        let late = tokio::spawn({
            let tx = tx.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                tx.send(fed(8, Instant::now())).await.unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
                tx.send(fed(9, Instant::now())).await.unwrap();
            }
        });
        let batch = take(&mut rx, 10, 50).await;
        // Offset 8 arrived inside the interval, 9 after it closed.
        assert_eq!(offsets(&batch), [7, 8]);
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        late.await.unwrap();
        let next = take(&mut rx, 10, 50).await;
        assert_eq!(offsets(&next), [9]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_closes_at_max_records_and_the_rest_waits() {
        let (tx, mut rx) = mpsc::channel(16);
        let now = Instant::now();
        for o in 0..5 {
            tx.send(fed(o, now)).await.unwrap();
        }
        let cancel = CancellationToken::new();
        let first = gather(&mut rx, 2, Duration::from_secs(1), &cancel)
            .await
            .unwrap();
        assert_eq!(offsets(&first), [0, 1]);
        assert_eq!(now.elapsed(), Duration::ZERO);
        let second = gather(&mut rx, 2, Duration::from_secs(1), &cancel)
            .await
            .unwrap();
        assert_eq!(offsets(&second), [2, 3]);
    }

    #[tokio::test(start_paused = true)]
    async fn errors_end_the_batch_and_a_closed_feed_or_cancel_gives_nothing() {
        let (tx, mut rx) = mpsc::channel(16);
        let cancel = CancellationToken::new();
        tx.send(fed(0, Instant::now())).await.unwrap();
        tx.send(Err(Error::Pool("gone".into()))).await.unwrap();
        let failed = gather(&mut rx, 10, Duration::from_secs(1), &cancel).await;
        assert!(matches!(failed, Err(Error::Pool(_))), "{failed:?}");
        drop(tx);
        let closed = gather(&mut rx, 10, Duration::from_secs(1), &cancel)
            .await
            .unwrap();
        assert!(closed.is_empty());

        let (_tx, mut rx) = mpsc::channel::<Result<Fed>>(1);
        cancel.cancel();
        let cancelled = gather(&mut rx, 10, Duration::from_secs(1), &cancel)
            .await
            .unwrap();
        assert!(cancelled.is_empty());
    }
}
