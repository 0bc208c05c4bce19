//! `triad bench --flood` (issue 8): does one tenant's flood slow another tenant down?
//!
//! An API node (in this process, with a projection worker, on a scratch installation) serves
//! tenant B's reads of a workflow, one after another, for `--seconds`: alone (the baseline),
//! then while tenant A's `--flooders` connections send the same read as fast as they can —
//! once with the per-tenant rate limit on (A gets 429s) and once with it off (the control:
//! every flood request reaches PostgreSQL). B's p50/p99 against its baseline, measured in the
//! same run, is the answer; the A columns say how much of the flood was refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::{Config, LimitsConfig};
use triad_domain::AccessRole;
use triad_kafka::produce::Producer;

/// B's latencies over one phase, sorted (ms), and A's outcome counts.
struct Phase {
    b_ms: Vec<f64>,
    a_served: u64,
    a_refused: u64,
    seconds: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round();
    sorted[(rank as usize).min(sorted.len() - 1)]
}

/// B's reads of `url` for `seconds`, paced at `per_second` (below its own rate limit: B is
/// a well-behaved tenant).
async fn tenant_b(
    http: &reqwest::Client,
    url: &str,
    seconds: u64,
    per_second: u32,
) -> Result<Vec<f64>> {
    let until = Instant::now() + Duration::from_secs(seconds);
    let mut pace = tokio::time::interval(Duration::from_secs(1) / per_second.max(1));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latencies = Vec::new();
    while Instant::now() < until {
        pace.tick().await;
        let start = Instant::now();
        let r = http.get(url).send().await?;
        anyhow::ensure!(
            r.status().is_success(),
            "tenant B was refused: {}",
            r.status()
        );
        r.bytes().await?;
        latencies.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    latencies.sort_by(f64::total_cmp);
    Ok(latencies)
}

/// Starts `flooders` loops sending A's reads until `stop`.
fn flood(
    http: &reqwest::Client,
    url: &str,
    flooders: usize,
    stop: &CancellationToken,
    served: &Arc<AtomicU64>,
    refused: &Arc<AtomicU64>,
) -> tokio::task::JoinSet<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..flooders {
        let (http, url, stop) = (http.clone(), url.to_owned(), stop.clone());
        let (served, refused) = (served.clone(), refused.clone());
        set.spawn(async move {
            while !stop.is_cancelled() {
                match http.get(&url).send().await {
                    Ok(r) if r.status().as_u16() == 429 => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        let _ = r.bytes().await;
                        served.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
        });
    }
    set
}

fn client(key: &str) -> Result<reqwest::Client> {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse()?,
    );
    Ok(reqwest::Client::builder()
        .default_headers(headers)
        .pool_max_idle_per_host(256)
        .build()?)
}

pub async fn run(
    config: &Config,
    codec: Arc<Codec>,
    flooders: usize,
    seconds: u64,
    rate: u32,
) -> Result<()> {
    anyhow::ensure!(
        flooders > 0 && seconds > 0 && rate > 0,
        "--flooders, --seconds and --rate must be above 0"
    );
    let scratch = crate::bench_projection::Projected::start(config, "flood", codec.clone()).await?;
    let (run, names) = (scratch.run.clone(), scratch.names.clone());
    let mut config = scratch.config.clone();
    let cancel = scratch.cancel.clone();
    // A is a member of tenant flood-a; B an operator of flood-b, so it reads the fixture
    // workflow (which has no tenant). A's reads of it answer 404 after the same lookup.
    let a_key =
        crate::access::new_key(&config, &codec, "flood-a", AccessRole::Member, "flood").await?;
    let b_key =
        crate::access::new_key(&config, &codec, "flood-b", AccessRole::Operator, "flood").await?;
    let (a, b) = (client(&a_key)?, client(&b_key)?);

    let workflow_id = format!("wf-flood-{}", &run[..12]);
    let producer = Producer::new(&config.kafka)?;
    for e in crate::bench_projection::events_of(&workflow_id) {
        let bytes = codec.encode(&names.events, &e).await?;
        producer
            .enqueue(&names.events, None, workflow_id.as_bytes(), &bytes)
            .await?
            .await?;
    }

    // B reads at 80 % of the per-tenant rate.
    let b_rate = (rate * 4 / 5).max(1);
    let mut phases: Vec<(&str, Phase)> = Vec::new();
    let held = LimitsConfig::default().refusal_hold_ms;
    for (n, (label, requests_per_second, refusal_hold_ms)) in [
        ("A floods, limit on, refusals held (default)", rate, held),
        ("A floods, limit on, refusals answered at once", rate, 0),
        ("A floods, limits off (control)", 0, 0),
    ]
    .into_iter()
    .enumerate()
    {
        config.api.listen = crate::bench_fanout::free_port()?;
        config.api.limits = LimitsConfig {
            requests_per_second,
            burst: rate,
            refusal_hold_ms,
            ..LimitsConfig::default()
        };
        let api_cancel = cancel.child_token();
        let (state, api) = crate::workers::api(&config, codec.clone(), &api_cancel).await?;
        let server = {
            let t = api_cancel.clone();
            tokio::spawn(async move { triad_api::serve(state, &api, t).await })
        };
        let url = format!("http://{}/v1/workflows/{workflow_id}", config.api.listen);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let r = b.get(&url).send().await;
            if r.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            if Instant::now() > deadline {
                let status = b.get(&url).send().await.map(|r| r.status());
                anyhow::bail!("the workflow never became visible ({status:?})");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if n == 0 {
            eprintln!("bench --flood: tenant B alone for {seconds} s");
            let b_ms = tenant_b(&b, &url, seconds, b_rate).await?;
            phases.push((
                "B alone (baseline)",
                Phase {
                    b_ms,
                    a_served: 0,
                    a_refused: 0,
                    seconds: seconds as f64,
                },
            ));
        }
        eprintln!("bench --flood: {label}: {flooders} connections of tenant A");
        let (served, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let stop = CancellationToken::new();
        let mut flooding = flood(&a, &url, flooders, &stop, &served, &refused);
        // Let the flood reach its pace before B measures.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let (s0, r0) = (
            served.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        );
        let b_ms = tenant_b(&b, &url, seconds, b_rate).await?;
        let (s1, r1) = (
            served.load(Ordering::Relaxed),
            refused.load(Ordering::Relaxed),
        );
        stop.cancel();
        while flooding.join_next().await.is_some() {}
        phases.push((
            label,
            Phase {
                b_ms,
                a_served: s1 - s0,
                a_refused: r1 - r0,
                seconds: seconds as f64,
            },
        ));
        api_cancel.cancel();
        server.await.context("the API task")??;
    }
    scratch.finish().await?;

    let base = phases
        .first()
        .map(|(_, p)| (percentile(&p.b_ms, 50.0), percentile(&p.b_ms, 99.0)))
        .context("no baseline")?;
    println!(
        "| phase | B requests | B p50 ms | B p99 ms | B p50 / baseline | B p99 / baseline | A served/s | A refused/s |"
    );
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (label, p) in &phases {
        let (p50, p99) = (percentile(&p.b_ms, 50.0), percentile(&p.b_ms, 99.0));
        println!(
            "| {label} | {} | {p50:.2} | {p99:.2} | {:.2} | {:.2} | {:.0} | {:.0} |",
            p.b_ms.len(),
            p50 / base.0,
            p99 / base.1,
            p.a_served as f64 / p.seconds,
            p.a_refused as f64 / p.seconds,
        );
    }
    println!(
        "(per-tenant rate limit {rate}/s, burst {rate}; B paced at {b_rate}/s; {flooders} flood connections)"
    );
    Ok(())
}
