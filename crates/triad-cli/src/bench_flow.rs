//! `triad bench --flow`: what orchestration adds to the broker. On a fresh topic prefix it
//! runs the processor and a US-EAST executor in this process (instant embedded model), and
//! measures in the same run:
//!
//! - latency: single-task workflows submitted at fixed arrival rates, from the submit call to
//!   the `TaskCompleted` event seen by a consumer, next to the raw rdkafka produce→consume
//!   round trip of a 1 KiB record at the same rate × the hops a task needs — on a topic with
//!   as many partitions as TRIAD's (Tansu's fetch cost grows with the partitions a fetch
//!   names) and on a single-partition topic;
//! - throughput: a burst of workflows until all completed, next to the raw broker's message
//!   rate (produce + consume of 1 KiB records) ÷ the messages one workflow needs;
//! - with `--budget`: the same workflows on a TRIAD credits account (the ledger runs here
//!   too), next to the same workflows without one — what the budget saga (a reservation
//!   before acceptance, a settlement after) costs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::{CommandMetadata, EventBody, InboxBody, InboxRecord, WorkflowEvent};
use triad_kafka::produce::Producer;
use triad_kafka::topics::{Names, Retention, TopicSpec};
use triad_workflow::{Task, Workflow};

/// Produce→consume hops on a task's critical path: submit → processor; task request →
/// executor; result → processor; `TaskCompleted` → observer.
pub const HOPS_PER_TASK: f64 = 4.0;
/// Records a single-task workflow writes: submit, Accepted, Scheduled, Dispatched, request,
/// result, Routed, Completed, WorkflowCompleted.
pub const MESSAGES_PER_WORKFLOW: f64 = 9.0;

#[derive(Debug, Clone, clap::Args)]
pub struct FlowArgs {
    /// Arrival rates (workflows/s) for the latency runs.
    #[arg(long, value_delimiter = ',', default_value = "10,25")]
    pub rates: Vec<u32>,
    /// Seconds per latency run.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Workflows in the throughput burst.
    #[arg(long, default_value_t = 500)]
    pub burst: usize,
    /// Also run every measurement on a credits account and compare (docs/credits.md).
    #[arg(long, requires = "flow")]
    pub budget: bool,
}

/// The account `--budget` runs on.
const ACCOUNT: &str = "bench-account";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A consumer of every partition of `topic` from its current end. The end is read first and
/// assigned as an explicit offset: `Offset::End` would resolve at the first fetch and skip
/// what was produced in between.
fn tail(config: &Config, topic: &str, partitions: i32) -> Result<StreamConsumer> {
    let consumer: StreamConsumer = triad_kafka::client::reader_config(&config.kafka)
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        let (_, high) = consumer.fetch_watermarks(topic, p, Duration::from_secs(10))?;
        tpl.add_partition_offset(topic, p, Offset::Offset(high))?;
    }
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Raw produce→consume round trips of 1 KiB records at `rate`/s for `seconds`, spread over
/// the `partitions` of `topic` by key and read by one consumer of all of them.
async fn raw_latency(
    config: &Config,
    producer: &Producer,
    (topic, partitions): (&str, i32),
    rate: u32,
    seconds: u64,
) -> Result<Vec<Duration>> {
    let consumer = tail(config, topic, partitions)?;
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let n = u64::from(rate) * seconds;
    let payload = vec![b'x'; 1024];
    let receiver = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut stream = consumer.stream();
            let mut out = Vec::new();
            while (out.len() as u64) < n {
                let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_secs(30), stream.next()).await
                else {
                    break;
                };
                let at = Instant::now();
                let id = m
                    .key()
                    .and_then(|k| std::str::from_utf8(k).ok())
                    .and_then(|k| k.parse().ok());
                if let Some(id) = id
                    && let Some(t) = sent.lock().await.remove(&id)
                {
                    out.push(at - t);
                }
            }
            out
        })
    };
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut sends = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        tick.tick().await;
        sent.lock().await.insert(i, Instant::now());
        let (producer, payload, topic) = (producer.clone(), payload.clone(), topic.to_owned());
        sends.push(async move {
            producer
                .send(&topic, Some(i.to_string().as_bytes()), Some(&payload), &[])
                .await
        });
        while let Some(r) = futures::FutureExt::now_or_never(sends.next()).flatten() {
            r?;
        }
    }
    while let Some(r) = sends.next().await {
        r?;
    }
    let mut out = receiver.await?;
    out.sort();
    Ok(out)
}

fn single_task(n: usize) -> Workflow {
    Workflow::new("bench")
        .zones(["US-EAST"])
        .task(Task::new("t", format!("What is {n}+1?")))
}

fn submit_record(id: &str, n: usize, account: Option<&str>) -> InboxRecord {
    let mut workflow = single_task(n);
    workflow.account = account.map(str::to_owned);
    InboxRecord {
        meta: CommandMetadata {
            command_id: triad_domain::new_command_id(),
            idempotency_key: id.to_owned(),
            workflow_id: id.to_owned(),
            issued_at: triad_kafka::now_micros(),
            actor: Some("bench".into()),
            tenant: None,
            schema_version: triad_domain::INBOX_SCHEMA_VERSION,
        },
        body: InboxBody::SubmitWorkflow(workflow.to_command()),
    }
}

/// Watches the event store and reports when each workflow's task completed / it finished.
fn observe(
    config: &Config,
    codec: Arc<Codec>,
    names: &Names,
    want: usize,
    on: fn(&EventBody) -> bool,
) -> Result<tokio::task::JoinHandle<HashMap<String, Instant>>> {
    let consumer = tail(config, &names.events, config.kafka.partitions)?;
    Ok(tokio::spawn(async move {
        let mut stream = consumer.stream();
        let mut seen = HashMap::new();
        while seen.len() < want {
            let Ok(Some(Ok(m))) =
                tokio::time::timeout(Duration::from_secs(60), stream.next()).await
            else {
                break;
            };
            let at = Instant::now();
            if let Ok(e) = codec.decode::<WorkflowEvent>(m.payload()).await
                && on(&e.body)
            {
                seen.entry(e.meta.workflow_id).or_insert(at);
            }
        }
        seen
    }))
}

#[allow(clippy::too_many_arguments)] // one call site per measurement; a struct would only rename them
async fn flow_latency(
    config: &Config,
    codec: &Arc<Codec>,
    producer: &Producer,
    names: &Names,
    tag: &str,
    rate: u32,
    seconds: u64,
    account: Option<&'static str>,
) -> Result<Vec<Duration>> {
    let n = (u64::from(rate) * seconds) as usize;
    let watcher = observe(config, codec.clone(), names, n, |b| {
        matches!(b, EventBody::TaskCompleted(_))
    })?;
    let mut submitted = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate.max(1))));
    let mut sends = futures::stream::FuturesUnordered::new();
    for i in 0..n {
        tick.tick().await;
        let id = format!("wf-{tag}-{i}");
        submitted.insert(id.clone(), Instant::now());
        let (producer, codec, topic) = (producer.clone(), codec.clone(), names.inbox.clone());
        sends.push(async move {
            let r = submit_record(&id, i, account);
            producer.send_record(&codec, &topic, None, &id, &r).await
        });
        while let Some(r) = futures::FutureExt::now_or_never(sends.next()).flatten() {
            r?;
        }
    }
    while let Some(r) = sends.next().await {
        r?;
    }
    let done = watcher.await?;
    if done.len() < n {
        bail!("only {} of {n} workflows completed at {rate}/s", done.len());
    }
    let mut out: Vec<Duration> = done
        .iter()
        .filter_map(|(id, at)| submitted.get(id).map(|t| *at - *t))
        .collect();
    out.sort();
    Ok(out)
}

/// The segments of a task's critical path, measured from the create times of its records
/// (set when a client hands a record to its producer; millisecond resolution).
const SEGMENTS: [&str; 4] = [
    "submit → Accepted (hop + decide)",
    "Dispatched → task request (outbox: waits for the events' ack)",
    "task request → result (hop + execute)",
    "result → TaskCompleted (hop + apply)",
];

/// Where the time of each workflow `wf-{tag}-*` went, per [`SEGMENTS`] entry, read back from
/// the inbox, the zone queue and the event store.
async fn breakdown(
    config: &Config,
    codec: &Codec,
    names: &Names,
    tag: &str,
) -> Result<Vec<Vec<Duration>>> {
    #[derive(Default)]
    struct Times {
        submit: Option<i64>,
        accepted: Option<i64>,
        dispatched: Option<i64>,
        request: Option<i64>,
        result: Option<i64>,
        completed: Option<i64>,
    }
    let prefix = format!("wf-{tag}-");
    let mut times: HashMap<String, Times> = HashMap::new();
    let wait = Duration::from_secs(30);
    let read = async |topic: &str| -> Result<Vec<(String, i64, rdkafka::message::OwnedMessage)>> {
        let all = triad_kafka::consume::read_all(&config.kafka, topic, wait).await?;
        Ok(all
            .into_iter()
            .filter_map(|m| {
                let key = std::str::from_utf8(m.key()?).ok()?.to_owned();
                let at = m.timestamp().to_millis()?;
                key.starts_with(&prefix).then_some((key, at, m))
            })
            .collect())
    };
    let first = |slot: &mut Option<i64>, at: i64| {
        slot.get_or_insert(at);
    };
    for (key, at, m) in read(&names.inbox).await? {
        let entry = times.entry(key).or_default();
        match codec.decode::<InboxRecord>(m.payload()).await?.body {
            InboxBody::SubmitWorkflow(_) => first(&mut entry.submit, at),
            InboxBody::TaskResultReported(_) => first(&mut entry.result, at),
            _ => {}
        }
    }
    for (key, at, _) in read(&names.tasks("US-EAST")).await? {
        first(&mut times.entry(key).or_default().request, at);
    }
    for (key, at, m) in read(&names.events).await? {
        let entry = times.entry(key).or_default();
        match codec.decode::<WorkflowEvent>(m.payload()).await?.body {
            EventBody::WorkflowAccepted(_) => first(&mut entry.accepted, at),
            EventBody::TaskDispatched(_) => first(&mut entry.dispatched, at),
            EventBody::TaskCompleted(_) => first(&mut entry.completed, at),
            _ => {}
        }
    }
    let mut out = vec![Vec::new(); SEGMENTS.len()];
    let span = |from: Option<i64>, to: Option<i64>| {
        Some(Duration::from_millis(u64::try_from(to? - from?).ok()?))
    };
    for t in times.values() {
        let spans = [
            span(t.submit, t.accepted),
            span(t.dispatched, t.request),
            span(t.request, t.result),
            span(t.result, t.completed),
        ];
        for (segment, d) in out.iter_mut().zip(spans) {
            segment.extend(d);
        }
    }
    for segment in &mut out {
        segment.sort();
    }
    Ok(out)
}

/// Produces and consumes `count` 1 KiB records as fast as the broker takes them, on a
/// fresh topic read from its beginning.
async fn raw_rate(config: &Config, producer: &Producer, topic: &str, count: usize) -> Result<f64> {
    let consumer: StreamConsumer = triad_kafka::client::reader_config(&config.kafka)
        .set("enable.partition.eof", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let receiver = tokio::spawn(async move {
        let mut stream = consumer.stream();
        let mut got = 0;
        while got < count {
            match tokio::time::timeout(Duration::from_secs(30), stream.next()).await {
                Ok(Some(Ok(_))) => got += 1,
                Ok(Some(Err(error))) => tracing::warn!(%error, "raw consumer"),
                _ => break,
            }
        }
        got
    });
    let payload = vec![b'x'; 1024];
    let mut sends = futures::stream::FuturesUnordered::new();
    for i in 0..count {
        let (producer, payload, topic) = (producer.clone(), payload.clone(), topic.to_owned());
        sends.push(async move {
            producer
                .send(&topic, Some(i.to_string().as_bytes()), Some(&payload), &[])
                .await
        });
        if sends.len() >= 1000
            && let Some(r) = sends.next().await
        {
            r?;
        }
    }
    while let Some(r) = sends.next().await {
        r?;
    }
    let got = receiver.await?;
    Ok(got as f64 / started.elapsed().as_secs_f64())
}

async fn flow_rate(
    config: &Config,
    codec: &Arc<Codec>,
    producer: &Producer,
    names: &Names,
    burst: usize,
    tag: &str,
    account: Option<&'static str>,
) -> Result<f64> {
    let watcher = observe(config, codec.clone(), names, burst, |b| {
        matches!(b, EventBody::WorkflowCompleted(_))
    })?;
    let started = Instant::now();
    let mut sends = futures::stream::FuturesUnordered::new();
    for i in 0..burst {
        let id = format!("wf-{tag}-{i}");
        let (producer, codec, topic) = (producer.clone(), codec.clone(), names.inbox.clone());
        sends.push(async move {
            let r = submit_record(&id, i, account);
            producer.send_record(&codec, &topic, None, &id, &r).await
        });
    }
    while let Some(r) = sends.next().await {
        r?;
    }
    let done = watcher.await?;
    if done.len() < burst {
        bail!("only {} of {burst} burst workflows completed", done.len());
    }
    Ok(burst as f64 / started.elapsed().as_secs_f64())
}

pub async fn run(config: &Config, codec: Arc<Codec>, args: &FlowArgs) -> Result<()> {
    let mut config = config.clone();
    let id = uuid::Uuid::new_v4().simple().to_string();
    config.kafka.topic_prefix = format!("bench-{id}.");
    config.kafka.group_prefix = format!("bench-{id}");
    config.policy.zones = vec!["US-EAST".to_owned()];
    config.policy.groups.clear();
    config.log.filter = "warn".to_owned();
    let names = Names::new(&config.kafka);
    let mut specs =
        triad_kafka::topics::catalogue(&config.kafka, &config.registry.topic, &config.policy.zones);
    // The raw hop on a topic shaped like TRIAD's, and on a single partition.
    let raw_shaped = (
        format!("{}triad.bench-raw-shaped", config.kafka.topic_prefix),
        config.kafka.partitions,
    );
    let raw_single = (format!("{}triad.bench-raw", config.kafka.topic_prefix), 1);
    let rate_topic = format!("{}triad.bench-rate", config.kafka.topic_prefix);
    for (name, partitions) in [&raw_shaped, &raw_single, &(rate_topic.clone(), 1)] {
        specs.push(TopicSpec {
            name: name.clone(),
            partitions: *partitions,
            retention: Retention::Bounded { ms: 3_600_000 },
            purpose: "raw baseline",
        });
    }
    triad_kafka::topics::ensure(&config.kafka, &specs, false).await?;
    println!(
        "bench --flow: prefix {}, {} partitions, embedded model, processor + US-EAST executor in this process",
        config.kafka.topic_prefix, config.kafka.partitions
    );

    let cancel = CancellationToken::new();
    let catalogue = crate::workers::catalogue(&config).await?;
    let mut workers = tokio::task::JoinSet::new();
    {
        let options = crate::workers::processor_options(&config, &catalogue, 0)?;
        let (c, t) = (codec.clone(), cancel.clone());
        workers.spawn(async move {
            triad_processor::run(&options, c, t)
                .await
                .map_err(anyhow::Error::from)
        });
        if args.budget {
            let options = triad_processor::ledger::Options {
                kafka: config.kafka.clone(),
                instance: 0,
            };
            let (c, t) = (codec.clone(), cancel.clone());
            workers.spawn(async move {
                triad_processor::ledger::run(&options, c, t)
                    .await
                    .map_err(anyhow::Error::from)
            });
        }
        let options = crate::workers::executor_options(&config, "US-EAST", 0)?;
        let (c, t, zones) = (codec.clone(), cancel.clone(), config.policy.zones.clone());
        workers.spawn(async move {
            triad_executor::run(&options, c, catalogue, &zones, t)
                .await
                .map_err(anyhow::Error::from)
        });
    }
    let producer = Producer::new(&config.kafka)?;
    let budgeted: Option<&'static str> = args.budget.then_some(ACCOUNT);
    if args.budget {
        // Sent before any reservation, on the account's one partition: applied first.
        let issue = triad_domain::CreditsCommand {
            command_id: triad_domain::new_command_id(),
            account: ACCOUNT.to_owned(),
            issued_at: triad_kafka::now_micros(),
            actor: Some("bench".to_owned()),
            body: triad_domain::CreditsCommandBody::IssueCredits(triad_domain::IssueCredits {
                amount_micros: i64::MAX / 4,
                kind: triad_domain::CreditKind::Grant,
                reason: "bench".to_owned(),
            }),
            schema_version: triad_domain::CREDITS_SCHEMA_VERSION,
        };
        producer
            .send_record(&codec, &names.credits_inbox, None, ACCOUNT, &issue)
            .await?;
    }
    // Warm-up: groups assigned, schemas registered, and every inbox partition's state
    // loaded (the processor loads a partition at its first input, which holds that input
    // and those behind it for a few hundred ms): 30 workflows cover 6 partitions with
    // probability 0.97; the count is printed.
    println!("warming up (group assignment, schema registration, partition state)…");
    let (warm_rate, warm_seconds) = (10, 3);
    let warm = flow_latency(
        &config,
        &codec,
        &producer,
        &names,
        "warm",
        warm_rate,
        warm_seconds,
        None,
    )
    .await
    .context("warm-up")?;
    let warmed: std::collections::BTreeSet<i32> = (0..(warm_rate as u64 * warm_seconds))
        .map(|i| {
            triad_kafka::produce::partition_for(
                format!("wf-warm-{i}").as_bytes(),
                config.kafka.partitions,
            )
        })
        .collect();
    if let Some(account) = budgeted {
        flow_latency(
            &config,
            &codec,
            &producer,
            &names,
            "warm-b",
            5,
            2,
            Some(account),
        )
        .await
        .context("warm-up on a credits account")?;
    }
    println!(
        "warm-up ok ({} workflows on {} of {} inbox partitions, p50 {:.1} ms)",
        warm.len(),
        warmed.len(),
        config.kafka.partitions,
        ms(percentile(&warm, 0.5))
    );
    let shaped = (raw_shaped.0.as_str(), raw_shaped.1);
    let single = (raw_single.0.as_str(), raw_single.1);
    let _ = raw_latency(&config, &producer, shaped, 50, 1).await?;
    let _ = raw_latency(&config, &producer, single, 50, 1).await?;

    let p = config.kafka.partitions;
    println!();
    println!(
        "| arrival rate | raw hop p50 / p99 ms ({p} partitions) | raw × {HOPS_PER_TASK} p50 / p99 ms | TRIAD submit→TaskCompleted p50 / p99 ms | ratio p50 | ratio p99 | raw hop p50 / p99 ms (1 partition) | ratio p50 / p99 vs 1 partition |"
    );
    println!("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for rate in &args.rates {
        let raw = raw_latency(&config, &producer, shaped, *rate, args.seconds).await?;
        let raw1 = if p == 1 {
            raw.clone()
        } else {
            raw_latency(&config, &producer, single, *rate, args.seconds).await?
        };
        let flow = flow_latency(
            &config,
            &codec,
            &producer,
            &names,
            &format!("r{rate}"),
            *rate,
            args.seconds,
            None,
        )
        .await?;
        let (r50, r99) = (ms(percentile(&raw, 0.5)), ms(percentile(&raw, 0.99)));
        let (f50, f99) = (ms(percentile(&flow, 0.5)), ms(percentile(&flow, 0.99)));
        let (s50, s99) = (ms(percentile(&raw1, 0.5)), ms(percentile(&raw1, 0.99)));
        println!(
            "| {rate}/s | {r50:.1} / {r99:.1} | {:.1} / {:.1} | {f50:.1} / {f99:.1} | {:.2} | {:.2} | {s50:.1} / {s99:.1} | {:.2} / {:.2} |",
            r50 * HOPS_PER_TASK,
            r99 * HOPS_PER_TASK,
            f50 / (r50 * HOPS_PER_TASK),
            f99 / (r99 * HOPS_PER_TASK),
            f50 / (s50 * HOPS_PER_TASK),
            f99 / (s99 * HOPS_PER_TASK)
        );
    }
    println!();
    println!("Where a task's time goes (p50 / p99 ms, from the records' create times):");
    println!();
    println!("| arrival rate | {} |", SEGMENTS.join(" | "));
    println!("| ---: |{}", " ---: |".repeat(SEGMENTS.len()));
    for rate in &args.rates {
        let segments = breakdown(&config, &codec, &names, &format!("r{rate}")).await?;
        let cells: Vec<String> = segments
            .iter()
            .map(|d| {
                format!(
                    "{:.0} / {:.0}",
                    ms(percentile(d, 0.5)),
                    ms(percentile(d, 0.99))
                )
            })
            .collect();
        println!("| {rate}/s | {} |", cells.join(" | "));
    }
    let raw_msgs = raw_rate(
        &config,
        &producer,
        &rate_topic,
        args.burst * MESSAGES_PER_WORKFLOW as usize,
    )
    .await?;
    let flow = flow_rate(
        &config, &codec, &producer, &names, args.burst, "burst", None,
    )
    .await?;
    let bound = raw_msgs / MESSAGES_PER_WORKFLOW;
    println!();
    println!(
        "| raw broker msg/s (1 KiB, produce+consume) | bound = ÷ {MESSAGES_PER_WORKFLOW} msgs/workflow | TRIAD workflows/s (burst of {}) | ratio |",
        args.burst
    );
    println!("| ---: | ---: | ---: | ---: |");
    println!(
        "| {raw_msgs:.0} | {bound:.0} | {flow:.1} | {:.3} |",
        flow / bound
    );
    if let Some(account) = budgeted {
        println!();
        println!(
            "| arrival rate | no account p50 / p99 ms | on a credits account p50 / p99 ms | ratio p50 | ratio p99 |"
        );
        println!("| ---: | ---: | ---: | ---: | ---: |");
        for rate in &args.rates {
            // Interleaved in one run, so both see the same broker.
            let plain = flow_latency(
                &config,
                &codec,
                &producer,
                &names,
                &format!("p{rate}"),
                *rate,
                args.seconds,
                None,
            )
            .await?;
            let paid = flow_latency(
                &config,
                &codec,
                &producer,
                &names,
                &format!("b{rate}"),
                *rate,
                args.seconds,
                Some(account),
            )
            .await?;
            let (p50, p99) = (ms(percentile(&plain, 0.5)), ms(percentile(&plain, 0.99)));
            let (b50, b99) = (ms(percentile(&paid, 0.5)), ms(percentile(&paid, 0.99)));
            println!(
                "| {rate}/s | {p50:.1} / {p99:.1} | {b50:.1} / {b99:.1} | {:.2} | {:.2} |",
                b50 / p50,
                b99 / p99
            );
        }
        let plain = flow_rate(
            &config, &codec, &producer, &names, args.burst, "burst-p", None,
        )
        .await?;
        let paid = flow_rate(
            &config,
            &codec,
            &producer,
            &names,
            args.burst,
            "burst-b",
            Some(account),
        )
        .await?;
        println!();
        println!(
            "| burst of {} | no account workflows/s | on a credits account workflows/s | ratio |",
            args.burst
        );
        println!("| ---: | ---: | ---: | ---: |");
        println!("| | {plain:.1} | {paid:.1} | {:.3} |", paid / plain);
    }
    cancel.cancel();
    while let Some(r) = workers.join_next().await {
        r??;
    }
    Ok(())
}
