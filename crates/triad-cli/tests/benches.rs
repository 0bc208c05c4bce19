//! The benchmarks whose figures docs/benchmarks.md records still run on the real stack, at a
//! small size: a benchmark nobody runs breaks silently (`--fanout` did, once every connection
//! started counting against its tenant's request rate). The figures themselves are not
//! asserted here; they belong in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::{Env, cli_ok};

/// The numeric cells of the first table row that starts with `start`.
fn row<'a>(stdout: &'a str, start: &str) -> Vec<&'a str> {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no row {start:?} in:\n{stdout}"));
    line.split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect()
}

/// `triad bench <args>` on a fresh two-partition installation; its stdout.
async fn bench(args: &str, env_vars: &[(&str, &str)]) -> String {
    let env = Env::new(2).await;
    let args: Vec<&str> = std::iter::once("bench")
        .chain(args.split_whitespace())
        .collect();
    cli_ok(&env, &args, env_vars).0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_serves_more_subscribers_than_its_tenants_request_rate() {
    // 300 connections of one tenant, configured here far below that (a connection counts
    // as a request): the bench must not measure the rate limit.
    let stdout = bench(
        "--fanout --subscribers 300 --paced-events 4 --burst-events 10",
        &[
            ("TRIAD_API__LIMITS__REQUESTS_PER_SECOND", "10"),
            ("TRIAD_API__LIMITS__BURST", "20"),
        ],
    )
    .await;
    for phase in ["paced 20/s", "burst"] {
        for server in ["TRIAD subscription", "raw broadcast"] {
            let cells = row(&stdout, &format!("| 300 | {phase} | {server} |"));
            let frames_per_s: f64 = cells[5].parse().unwrap();
            assert!(frames_per_s > 0.0, "{phase} {server}: {cells:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flow_measures_hops_segments_and_throughput() {
    let stdout = bench("--flow --rates 20 --seconds 1 --burst 20", &[]).await;
    assert!(
        stdout.contains("on 2 of 2 inbox partitions"),
        "the warm-up must reach every partition:\n{stdout}"
    );
    // rate, raw (shaped), raw × 4, TRIAD, ratio p50, ratio p99, raw (1 partition), ratios.
    let latency = row(&stdout, "| 20/s | ");
    assert_eq!(latency.len(), 8, "{latency:?}");
    let ratio: f64 = latency[4].parse().unwrap();
    assert!(ratio > 0.0, "{latency:?}");
    // The breakdown: a p50 / p99 pair for each of the four segments, every workflow found.
    let segments = stdout
        .lines()
        .filter(|l| l.starts_with("| 20/s | "))
        .nth(1)
        .unwrap_or_else(|| panic!("no breakdown row in:\n{stdout}"));
    let pairs: Vec<&str> = segments
        .split('|')
        .map(str::trim)
        .filter(|c| c.contains(" / "))
        .collect();
    assert_eq!(pairs.len(), 4, "{segments}");
    for pair in pairs {
        let (p50, p99) = pair.split_once(" / ").unwrap();
        let (p50, p99): (f64, f64) = (p50.parse().unwrap(), p99.parse().unwrap());
        assert!(p50 <= p99, "{segments}");
    }
    let throughput = stdout
        .lines()
        .skip_while(|l| !l.starts_with("| raw broker msg/s"))
        .nth(2)
        .unwrap_or_else(|| panic!("no throughput row in:\n{stdout}"));
    let cells: Vec<&str> = throughput
        .split('|')
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    let workflows_per_s: f64 = cells[2].parse().unwrap();
    assert!(workflows_per_s > 0.0, "{throughput}");
}
