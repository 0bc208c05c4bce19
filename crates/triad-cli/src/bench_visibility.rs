//! `triad bench --visibility`: how long an event takes from its append to the event store
//! until it is visible in the read model, at a steady rate, next to what Kafka alone takes
//! for the same records in the same run.
//!
//! Synthetic completed workflows (the projection bench's events) are pre-encoded, then
//! appended at `--rate` events/s for `--seconds`. The live projection worker
//! (`triad_projection::run`, the configured batch size and flush interval) applies them into
//! a fresh schema. An observer `LISTEN`s on `triad_read_model`: at each notification it
//! reads which events the read model now holds (the timeline rows between its last and new
//! `projection_offsets`), and each of those became visible no later than that moment. The
//! baseline is a plain consumer assigned to the same topic: the moment each record arrives
//! there is what the broker alone costs (append, fetch). Latencies are from the moment the
//! producer was handed the record.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use futures::StreamExt as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::message::Message as _;
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::Config;
use triad_kafka::produce::Producer;

/// The timeline rows applied between two positions (partition → next offset).
const APPLIED: &str = "SELECT e.event_id FROM workflow_events e \
    JOIN unnest($1::integer[], $2::bigint[], $3::bigint[]) AS r (p, lo, hi) \
    ON e.partition = r.p AND e.kafka_offset >= r.lo AND e.kafka_offset < r.hi";
const POSITIONS: &str = "SELECT partition, next_offset FROM projection_offsets";

/// Milliseconds from `sent[i]` to `seen[i]` for every event seen, sorted.
fn latencies(sent: &[Option<Instant>], seen: &[Option<Instant>]) -> Vec<f64> {
    let mut out: Vec<f64> = sent
        .iter()
        .zip(seen)
        .filter_map(|(s, v)| Some(v.as_ref()?.saturating_duration_since(*s.as_ref()?)))
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    out.sort_by(f64::total_cmp);
    out
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Appends `rate` events/s for `seconds` and reports append → visible latency.
pub async fn run(config: &Config, codec: Arc<Codec>, rate: u32, seconds: u64) -> Result<()> {
    anyhow::ensure!(
        rate > 0 && seconds > 0,
        "--rate and --seconds must be above 0"
    );
    let crate::bench_projection::Scratch {
        run,
        kafka,
        names,
        schema,
    } = crate::bench_projection::Scratch::create(config, "vis").await?;

    // Every record encoded before the clock starts; one warm-up workflow first.
    let total = usize::try_from(rate)? * usize::try_from(seconds)?;
    let mut records: Vec<(String, String, Vec<u8>)> = Vec::with_capacity(total + 16);
    let mut w = 0;
    while records.len() < total + 9 {
        let id = format!("wf-vis-{w}-{}", &run[..8]);
        for e in crate::bench_projection::events_of(&id) {
            let bytes = codec.encode(&names.events, &e).await?;
            records.push((id.clone(), e.meta.event_id.clone(), bytes));
        }
        w += 1;
    }
    let warmup = 9;
    records.truncate(total + warmup);
    let index: HashMap<String, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.1.clone(), i))
        .collect();
    let by_payload: HashMap<Vec<u8>, usize> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.2.clone(), i))
        .collect();
    let n = records.len();
    let sent: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let visible: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));
    let fetched: Arc<Mutex<Vec<Option<Instant>>>> = Arc::new(Mutex::new(vec![None; n]));

    let password = std::env::var("PGPASSWORD").ok();
    let pool = triad_store::pool(&config.postgres.url, password.as_deref(), 4)?;
    let read_pool =
        triad_store::pool_in_schema(&config.postgres.url, password.as_deref(), 2, Some(&schema))?;
    let cancel = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();

    // The projection worker under test.
    let options = triad_projection::Options {
        kafka: kafka.clone(),
        topic: names.events.clone(),
        dlq_topic: names.dlq.clone(),
        schema: schema.clone(),
        batch_max_records: config.projection.batch_max_records,
        flush_interval: Duration::from_millis(config.projection.flush_interval_ms),
    };
    {
        let (pool, codec, cancel) = (pool.clone(), codec.clone(), cancel.clone());
        tasks.spawn(async move {
            triad_projection::run(&options, pool, codec, cancel)
                .await
                .context("the projection worker")
        });
    }

    // The baseline: a plain consumer of the same partitions.
    {
        let consumer: StreamConsumer = triad_kafka::client::reader_config(&kafka)
            .set("enable.partition.eof", "false")
            .create()?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        for p in 0..kafka.partitions {
            tpl.add_partition_offset(&names.events, p, rdkafka::Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let (fetched, cancel) = (fetched.clone(), cancel.clone());
        tasks.spawn(async move {
            let mut stream = consumer.stream();
            loop {
                let m = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    m = stream.next() => m,
                };
                let Some(m) = m else { return Ok(()) };
                let now = Instant::now();
                let m = m.context("the plain consumer")?;
                if let Some(i) = m.payload().and_then(|p| by_payload.get(p))
                    && let Ok(mut f) = fetched.lock()
                {
                    f[*i] = Some(now);
                }
            }
        });
    }

    // The observer: LISTEN, then read what became visible at each notification.
    let (listener, mut connection) = {
        let mut pg: tokio_postgres::Config = config.postgres.url.parse()?;
        if let Some(p) = &password {
            pg.password(p);
        }
        pg.connect(tokio_postgres::NoTls).await?
    };
    let (notify_tx, mut notify_rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    tasks.spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(m) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(_) = m?
                && notify_tx.send(Instant::now()).is_err()
            {
                break;
            }
        }
        Ok(())
    });
    listener.batch_execute("LISTEN triad_read_model").await?;
    let observer = {
        let (pool, visible) = (read_pool, visible.clone());
        tokio::spawn(async move {
            let mut from: BTreeMap<i32, i64> = BTreeMap::new();
            let mut seen = 0usize;
            while seen < n {
                let Some(at) = notify_rx.recv().await else {
                    break;
                };
                // Notifications that queued up meanwhile are covered by this read.
                while notify_rx.try_recv().is_ok() {}
                let client = pool.get().await?;
                let to: BTreeMap<i32, i64> = client
                    .query(POSITIONS, &[])
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
                    .collect::<Result<_, tokio_postgres::Error>>()?;
                let (mut ps, mut lo, mut hi) = (Vec::new(), Vec::new(), Vec::new());
                for (p, until) in &to {
                    let since = from.get(p).copied().unwrap_or(0);
                    if *until > since {
                        ps.push(*p);
                        lo.push(since);
                        hi.push(*until);
                    }
                }
                let rows = client.query(APPLIED, &[&ps, &lo, &hi]).await?;
                from = to;
                let mut v = visible.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                for r in rows {
                    let id: String = r.try_get(0)?;
                    if let Some(i) = index.get(&id)
                        && v[*i].is_none()
                    {
                        v[*i] = Some(at);
                        seen += 1;
                    }
                }
            }
            anyhow::Ok(())
        })
    };

    let producer = Producer::new(&kafka)?;
    let mark_sent = |i: usize| {
        if let Ok(mut s) = sent.lock() {
            s[i] = Some(Instant::now());
        }
    };
    eprintln!("bench --visibility: warming up (the projection creates its schema)");
    for (i, (key, _, bytes)) in records.iter().enumerate().take(warmup) {
        mark_sent(i);
        producer
            .enqueue(&names.events, None, key.as_bytes(), bytes)
            .await?
            .await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while visible
        .lock()
        .map(|v| v[warmup - 1].is_none())
        .unwrap_or(true)
    {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the warm-up never became visible"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    eprintln!(
        "appending {total} events at {} events/s to {}",
        rate, names.events
    );
    let started = Instant::now();
    let progress = {
        let (visible, fetched, cancel) = (visible.clone(), fetched.clone(), cancel.clone());
        tokio::spawn(async move {
            let count = |v: &Mutex<Vec<Option<Instant>>>| {
                v.lock().map(|v| v.iter().flatten().count()).unwrap_or(0)
            };
            let mut every = tokio::time::interval(Duration::from_secs(2));
            every.tick().await;
            loop {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    _ = every.tick() => {}
                }
                eprintln!(
                    "  {:>5.1} s: {} of {n} fetched by the plain consumer, {} visible",
                    started.elapsed().as_secs_f64(),
                    count(&fetched),
                    count(&visible)
                );
            }
        })
    };
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    let mut next = warmup;
    while next < n {
        tick.tick().await;
        // Records due by now at the rate (catching up after a late tick).
        let due =
            warmup + (started.elapsed().as_secs_f64() * f64::from(rate)).min(total as f64) as usize;
        while next < due.min(n) {
            let (key, _, bytes) = &records[next];
            mark_sent(next);
            acks.push(
                producer
                    .enqueue(&names.events, None, key.as_bytes(), bytes)
                    .await?,
            );
            next += 1;
        }
        while let Some(Some(a)) = futures::FutureExt::now_or_never(acks.next()) {
            a?;
        }
    }
    while let Some(a) = acks.next().await {
        a?;
    }
    let appended = started.elapsed();
    // A worker that fails ends the bench at once (instead of the wait timing out).
    let waited = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::select! {
            r = observer => r?,
            Some(failed) = tasks.join_next() => {
                failed??;
                anyhow::bail!("a worker stopped early")
            }
        }
    })
    .await;
    waited.context("waiting for every event to become visible")??;
    cancel.cancel();
    // Closing the LISTEN connection ends its driver task.
    drop(listener);
    let _ = progress.await;
    while let Some(t) = tasks.join_next().await {
        t??;
    }
    let cleanup = pool.get().await?;
    cleanup
        .query("SELECT triad_drop_schema($1)", &[&schema])
        .await?;

    let sent = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[warmup..].to_vec();
    let visible = visible.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[warmup..].to_vec();
    let fetched = fetched.lock().map_err(|_| anyhow::anyhow!("poisoned"))?[warmup..].to_vec();
    let (v, f) = (latencies(&sent, &visible), latencies(&sent, &fetched));
    eprintln!(
        "appended {total} events in {:.2} s ({:.0} events/s); {} visible, {} fetched",
        appended.as_secs_f64(),
        total as f64 / appended.as_secs_f64(),
        v.len(),
        f.len()
    );
    println!("| events/s | events | | p50 ms | p95 ms | p99 ms | max ms |");
    println!("| ---: | ---: | --- | ---: | ---: | ---: | ---: |");
    for (what, l) in [
        ("Kafka alone (plain consumer)", &f),
        ("visible in the read model", &v),
    ] {
        println!(
            "| {} | {total} | {what} | {:.1} | {:.1} | {:.1} | {:.1} |",
            rate,
            percentile(l, 50.0),
            percentile(l, 95.0),
            percentile(l, 99.0),
            l.last().copied().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), 50.0);
        assert_eq!(percentile(&sorted, 99.0), 99.0);
        assert_eq!(percentile(&sorted, 100.0), 100.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn latencies_skip_what_was_never_seen() {
        let t0 = Instant::now();
        let sent = vec![Some(t0), Some(t0), None];
        let seen = vec![Some(t0 + Duration::from_millis(5)), None, Some(t0)];
        assert_eq!(latencies(&sent, &seen), vec![5.0]);
    }
}
