//! `triad bench --wasm`: one call of a trivial WebAssembly component — a fresh instance from
//! the pooling allocator, its deny-all WASI context, the call, the result — against a call
//! of a native adapter through the same `ModelAdapter` trait, in the same run.
//!
//! The component is `adapters/testbed` answering an echo prompt; the native baseline is the
//! native `triad-local` model echoing the same prompt. Calls run one at a time on one task,
//! so each latency is the call alone. A second WASM pass runs `--wasm-concurrency` calls at
//! once to show the pooled instances under load.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use triad_models::{ModelAdapter, ModelRequest};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Microseconds of each of `calls` sequential calls of `model`, sorted.
async fn sequential(
    model: &dyn ModelAdapter,
    request: &ModelRequest,
    calls: usize,
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(calls);
    for _ in 0..calls {
        let started = Instant::now();
        let r = model.invoke(request).await?;
        out.push(started.elapsed().as_secs_f64() * 1e6);
        anyhow::ensure!(r.output == "echo-bench", "unexpected output {:?}", r.output);
    }
    out.sort_by(f64::total_cmp);
    Ok(out)
}

fn row(label: &str, sorted: &[f64], wall: Duration) {
    println!(
        "| {label} | {} | {:.1} | {:.1} | {:.1} | {:.0} |",
        sorted.len(),
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        percentile(sorted, 100.0),
        sorted.len() as f64 / wall.as_secs_f64().max(1e-9),
    );
}

pub async fn run(calls: usize, concurrency: usize) -> Result<()> {
    anyhow::ensure!(
        calls > 0 && concurrency > 0,
        "--count and --wasm-concurrency must be above 0"
    );
    let host = triad_wasm::WasmHost::new(triad_wasm::HostConfig::default())?;
    let compile = Instant::now();
    let wasm = Arc::new(
        triad_wasm::WasmModel::load(
            &host,
            "testbed",
            vec![],
            triad_wasm::TESTBED_ADAPTER,
            triad_wasm::Egress::none()?,
        )
        .await?,
    );
    let compiled = compile.elapsed();
    let native = triad_models::local::LocalModel::new(wasm.capabilities().clone());
    let echo = ModelRequest {
        prompt: "echo-bench".to_owned(),
        max_tokens: 16,
        timeout: Duration::from_secs(5),
    };
    // The testbed echoes a prompt it has no command for; the native model's `echo:` command
    // gives the same output.
    let native_echo = ModelRequest {
        prompt: "echo: echo-bench".to_owned(),
        ..echo.clone()
    };
    println!(
        "bench --wasm: testbed component compiled and loaded in {:.0} ms; {calls} calls each, \
         one at a time, after {} warm-up calls",
        compiled.as_secs_f64() * 1e3,
        calls / 10
    );
    sequential(&native, &native_echo, calls / 10).await?;
    sequential(wasm.as_ref(), &echo, calls / 10).await?;

    let started = Instant::now();
    let base = sequential(&native, &native_echo, calls).await?;
    let base_wall = started.elapsed();
    let started = Instant::now();
    let sandboxed = sequential(wasm.as_ref(), &echo, calls).await?;
    let sandboxed_wall = started.elapsed();

    // Under load: `concurrency` tasks share the calls.
    let started = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..concurrency {
        let (wasm, echo) = (Arc::clone(&wasm), echo.clone());
        let share = calls / concurrency + usize::from(worker < calls % concurrency);
        set.spawn(async move { sequential(wasm.as_ref(), &echo, share).await });
    }
    let mut loaded = Vec::with_capacity(calls);
    while let Some(r) = set.join_next().await {
        loaded.extend(r??);
    }
    loaded.sort_by(f64::total_cmp);
    let loaded_wall = started.elapsed();

    println!("| call | calls | p50 µs | p99 µs | max µs | calls/s |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    row("native adapter (baseline)", &base, base_wall);
    row("WASM: fresh instance + call", &sandboxed, sandboxed_wall);
    row(
        &format!("WASM, {concurrency} tasks at once (2 cores)"),
        &loaded,
        loaded_wall,
    );
    println!(
        "WASM p99 {:.1} µs (goal ≤ 50 µs); p50 {:.1}× the native call's",
        percentile(&sandboxed, 99.0),
        percentile(&sandboxed, 50.0) / percentile(&base, 50.0).max(1e-9)
    );
    Ok(())
}
