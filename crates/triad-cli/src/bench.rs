//! `triad bench`: CPU time per event of Avro encode + produce, against raw produce of
//! pre-encoded bytes of the same size, on the same broker in the same run. The broker bounds
//! messages per second here, so CPU per event is the figure that says what TRIAD adds.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use cpu_time::ProcessTime;
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::{InboxRecord, fixtures};
use triad_kafka::produce::Producer;
use triad_kafka::topics::{Retention, TopicSpec};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Measure the whole flow (orchestration overhead) instead of the event spine.
    #[arg(long)]
    pub flow: bool,
    /// Measure the projection worker's apply rate against a binary COPY of the same rows.
    #[arg(long, conflicts_with = "flow")]
    pub projection: bool,
    /// Synthetic workflows for --projection (9 events each).
    #[arg(long, default_value_t = 2_000)]
    pub workflows: usize,
    /// Measure append → visible-in-the-read-model latency at --rate events/s for
    /// --seconds, next to a plain consumer's latency for the same records.
    #[arg(long, conflicts_with_all = ["flow", "projection"])]
    pub visibility: bool,
    /// Events appended per second for --visibility.
    #[arg(long, default_value_t = 5_000)]
    pub rate: u32,
    /// Measure one workflow's events delivered to --subscribers GraphQL subscriptions
    /// against a raw WebSocket broadcast to as many clients.
    #[arg(long, conflicts_with_all = ["flow", "projection", "visibility"])]
    pub fanout: bool,
    /// Measure tenant B's read latency alone, then while tenant A floods the API, with the
    /// per-tenant rate limit on and off (issue 8).
    #[arg(long, conflicts_with_all = ["flow", "projection", "visibility", "fanout"])]
    pub flood: bool,
    /// Concurrent connections of the flooding tenant for --flood.
    #[arg(long, default_value_t = 32)]
    pub flooders: usize,
    /// The flooding tenant's rate limit (requests/s, and its burst) for --flood.
    #[arg(long, default_value_t = 50)]
    pub flood_rate: u32,
    /// Measure instantiate + invoke of a trivial WebAssembly component against a native
    /// adapter call (--count calls each; no services needed).
    #[arg(long, conflicts_with_all = ["flow", "projection", "visibility", "fanout"])]
    pub wasm: bool,
    /// Measure the sovereignty kernel's per-payload seal + unseal against the raw
    /// AES-256-GCM and SHA-256 work (no services needed).
    #[arg(long, conflicts_with_all = ["flow", "projection", "visibility", "fanout", "wasm"])]
    pub seal: bool,
    /// With --seal: also measure the per-workflow key setup through the TPM this TCTI names
    /// (e.g. swtpm:host=127.0.0.1,port=2321).
    #[arg(long, requires = "seal")]
    pub tpm: Option<String>,
    /// Measure what the market adds to a routing decision (reading the prompt's specialty,
    /// closing an auction) against `rank` alone (--count decisions each; no services needed).
    #[arg(long, conflicts_with_all = ["flow", "projection", "visibility", "fanout", "wasm", "seal"])]
    pub routing: bool,
    /// Tasks calling at once in --wasm's load pass.
    #[arg(long, default_value_t = 4)]
    pub wasm_concurrency: usize,
    /// Subscribers for --fanout.
    #[arg(long, default_value_t = 1_000)]
    pub subscribers: usize,
    /// Events appended at 20/s for --fanout's latency phase.
    #[arg(long, default_value_t = 40)]
    pub paced_events: usize,
    /// Events appended at once for --fanout's throughput phase.
    #[arg(long, default_value_t = 200)]
    pub burst_events: usize,
    #[command(flatten)]
    pub flow_args: crate::bench_flow::FlowArgs,
    /// Events per measured pass.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Records in flight at once.
    #[arg(long, default_value_t = 500)]
    window: usize,
    /// Measured rounds; each runs the baseline then the Avro pass, after one warm-up pass.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

#[derive(Default)]
struct Pass {
    cpu: Duration,
    wall: Duration,
}

impl std::ops::AddAssign for Pass {
    fn add_assign(&mut self, other: Self) {
        self.cpu += other.cpu;
        self.wall += other.wall;
    }
}

impl Pass {
    fn cpu_per_event_us(&self, n: usize) -> f64 {
        self.cpu.as_secs_f64() * 1e6 / n as f64
    }
}

/// Sends `count` records, `window` at a time, each built by `make(i)`.
async fn pass<F, Fut>(count: usize, window: usize, mut make: F) -> Result<Pass>
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let cpu = ProcessTime::now();
    let wall = Instant::now();
    let mut in_flight = futures_unordered::Set::default();
    for i in 0..count {
        in_flight.push(make(i));
        if in_flight.len() >= window {
            in_flight.drain_one().await?;
        }
    }
    in_flight.drain_all().await?;
    Ok(Pass {
        cpu: cpu.elapsed(),
        wall: wall.elapsed(),
    })
}

mod futures_unordered {
    use futures::stream::{FuturesUnordered, StreamExt};

    pub struct Set<F>(FuturesUnordered<F>);

    impl<F> Default for Set<F> {
        fn default() -> Self {
            Self(FuturesUnordered::new())
        }
    }

    impl<F: std::future::Future<Output = anyhow::Result<()>>> Set<F> {
        pub fn push(&mut self, f: F) {
            self.0.push(f);
        }
        pub fn len(&self) -> usize {
            self.0.len()
        }
        pub async fn drain_one(&mut self) -> anyhow::Result<()> {
            self.0.next().await.unwrap_or(Ok(()))
        }
        pub async fn drain_all(&mut self) -> anyhow::Result<()> {
            while let Some(r) = self.0.next().await {
                r?;
            }
            Ok(())
        }
    }
}

pub async fn run(config: &Config, codec: Arc<Codec>, args: &Args) -> Result<()> {
    if args.flow {
        return crate::bench_flow::run(config, codec, &args.flow_args).await;
    }
    if args.seal {
        return crate::bench_seal::run(args.rounds, args.tpm.as_deref());
    }
    if args.wasm {
        return crate::bench_wasm::run(args.count, args.wasm_concurrency).await;
    }
    if args.routing {
        return crate::bench_routing::run(args.count);
    }
    if args.projection {
        return crate::bench_projection::run(config, codec, args.workflows).await;
    }
    if args.fanout {
        return crate::bench_fanout::run(
            config,
            codec,
            args.subscribers,
            args.paced_events,
            args.burst_events,
        )
        .await;
    }
    if args.flood {
        return crate::bench_flood::run(
            config,
            codec,
            args.flooders,
            args.flow_args.seconds,
            args.flood_rate,
        )
        .await;
    }
    if args.visibility {
        return crate::bench_visibility::run(config, codec, args.rate, args.flow_args.seconds)
            .await;
    }
    let topic = format!("triad.bench-{}", uuid::Uuid::new_v4().simple());
    let spec = TopicSpec {
        name: topic.clone(),
        partitions: 1,
        retention: Retention::Bounded { ms: 3_600_000 },
        purpose: "bench",
    };
    triad_kafka::topics::ensure(&config.kafka, &[spec], false).await?;
    let producer = Producer::new(&config.kafka)?;
    let sample = fixtures::inbox_records().swap_remove(0);
    // Warm-up: registers the schema and fills the codec's caches.
    let encoded = codec.encode(&topic, &sample).await?;
    println!(
        "bench: {} rounds of {} events per pass, {} in flight, record {} bytes, topic {topic}",
        args.rounds,
        args.count,
        args.window,
        encoded.len()
    );

    let raw_pass = || {
        pass(args.count, args.window, |i| {
            let producer = producer.clone();
            let topic = topic.clone();
            let bytes = encoded.clone();
            async move {
                let key = format!("wf-{i}");
                producer
                    .send(&topic, Some(key.as_bytes()), Some(&bytes), &[])
                    .await?;
                Ok(())
            }
        })
    };
    let avro_pass = || {
        pass(args.count, args.window, |i| {
            let producer = producer.clone();
            let topic = topic.clone();
            let codec = codec.clone();
            let mut record: InboxRecord = sample.clone();
            async move {
                // A distinct record each time, as a real edge produces.
                record.meta.workflow_id = format!("wf-{i:08}");
                producer
                    .send_record(&codec, &topic, None, &record.meta.workflow_id, &record)
                    .await?;
                Ok(())
            }
        })
    };

    // Warm-up: connections, metadata and the broker's first segment are not what we measure.
    raw_pass().await?;
    let (mut raw, mut avro) = (Pass::default(), Pass::default());
    for _ in 0..args.rounds.max(1) {
        raw += raw_pass().await?;
        avro += avro_pass().await?;
    }
    let n = args.count * args.rounds.max(1);
    let base = raw.cpu_per_event_us(n);
    let ours = avro.cpu_per_event_us(n);
    println!("| pass | CPU µs/event | wall events/s |");
    println!("| --- | ---: | ---: |");
    println!(
        "| raw produce of pre-encoded bytes (baseline) | {base:.1} | {:.0} |",
        n as f64 / raw.wall.as_secs_f64()
    );
    println!(
        "| Avro encode (registry-cached) + produce | {ours:.1} | {:.0} |",
        n as f64 / avro.wall.as_secs_f64()
    );
    println!(
        "ratio (encode+produce / raw produce, CPU per event): {:.2}",
        ours / base
    );
    Ok(())
}
