//! `triad bench --routing`: what the market adds to a routing decision, in the same run.
//!
//! Baseline: `rank` over a catalogue of eight models (eligibility and score), as the router
//! did before the market. Measured: the same `rank` after reading the prompt's specialty
//! (`TfIdfClassifier::classify` of the instruction, then `rank` with the inferred specialty),
//! and an auction's `close` over eight bids. Prompts are the held-out rows of the labelled set,
//! cycled; every pass is timed per decision, one decision at a time. No services needed.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use triad_domain::BreakerState;
use triad_market::SpecialtyClassifier;
use triad_market::auction::{Offer, Received, Rules, Standing, close};
use triad_market::matching::{LABELLED_SET, parse_labelled};
use triad_router::{ModelInfo, Needs, rank};

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn catalogue() -> Vec<ModelInfo> {
    let specialties = [
        "arithmetic",
        "code",
        "creativity",
        "distributed_systems",
        "questions",
        "reasoning",
        "summarization",
        "translation",
    ];
    specialties
        .iter()
        .enumerate()
        .map(|(i, s)| ModelInfo {
            id: format!("model-{i}"),
            zones: vec!["US-EAST".to_owned()],
            specialties: vec![(*s).to_owned()],
            latency_p50_ms: 100 + 50 * i as u64,
            latency_p95_ms: 300 + 50 * i as u64,
            reliability: 1.0,
            input_micros_per_1k: 1_000 * (i as i64 + 1),
            output_micros_per_1k: 2_000 * (i as i64 + 1),
            max_context: 128_000,
            healthy: true,
            breaker: BreakerState::Closed,
            endpoint_host: None,
        })
        .collect()
}

/// Times `decisions` runs of `f` (µs each, sorted); `f` returns something to keep.
fn time(decisions: usize, mut f: impl FnMut(usize) -> usize) -> (Vec<f64>, usize) {
    let mut out = Vec::with_capacity(decisions);
    let mut keep = 0;
    for i in 0..decisions {
        let started = Instant::now();
        keep += f(i);
        out.push(started.elapsed().as_secs_f64() * 1e6);
    }
    out.sort_by(f64::total_cmp);
    (out, keep)
}

fn row(label: &str, sorted: &[f64], baseline_p50: f64) {
    println!(
        "| {label} | {} | {:.2} | {:.2} | {:.2} | {:.2}× |",
        sorted.len(),
        percentile(sorted, 50.0),
        percentile(sorted, 99.0),
        percentile(sorted, 100.0),
        percentile(sorted, 50.0) / baseline_p50
    );
}

pub fn run(decisions: usize) -> Result<()> {
    anyhow::ensure!(decisions > 0, "--count must be above 0");
    let classifier =
        triad_market::TfIdfClassifier::embedded().context("building the classifier")?;
    let prompts: Vec<String> = parse_labelled(LABELLED_SET)?
        .into_iter()
        .filter(|e| e.held_out)
        .map(|e| e.text)
        .collect();
    let models = catalogue();
    let needs = |inferred: Option<String>, prompt: &str| Needs {
        executor_zone: "US-EAST".to_owned(),
        allowed_zones: BTreeSet::from(["US-EAST".to_owned()]),
        specialties: vec![],
        inferred_specialty: inferred,
        hint: None,
        prompt_tokens: triad_router::estimate_tokens(prompt),
        max_tokens: 512,
        timeout_ms: 60_000,
        zone_hosts: Arc::default(),
    };
    let prompt = |i: usize| prompts[i % prompts.len()].as_str();
    // Warm-up: the classifier's tables and the allocator.
    for i in 0..decisions.min(1_000) {
        let _ = classifier.classify(prompt(i));
    }
    let (baseline, a) = time(decisions, |i| {
        rank(&models, &needs(None, prompt(i))).eligible.len()
    });
    let (matched, b) = time(decisions, |i| {
        let inferred = classifier.classify(prompt(i)).map(|x| x.specialty);
        rank(&models, &needs(inferred, prompt(i))).eligible.len()
    });
    let bids: Vec<(String, Received)> = models
        .iter()
        .map(|m| {
            (
                m.id.clone(),
                Received::Bid(Offer {
                    price_micros: m.input_micros_per_1k,
                    latency_ms: m.latency_p50_ms,
                    confidence: 0.9,
                }),
            )
        })
        .collect();
    let standing = Standing::default();
    let rules = Rules {
        sla_ms: 60_000,
        confidence_floor: 0.5,
    };
    let (auction, c) = time(decisions, |_| {
        close(bids.clone(), rules, &standing).bids.len()
    });
    anyhow::ensure!(
        a == b && c == 8 * decisions,
        "the passes did different work"
    );
    let base = percentile(&baseline, 50.0);
    println!(
        "routing decisions over {} models, one at a time (µs):",
        models.len()
    );
    println!("| pass | decisions | p50 | p99 | max | p50 / baseline |");
    println!("| --- | --- | --- | --- | --- | --- |");
    row("rank (baseline)", &baseline, base);
    row("classify + rank", &matched, base);
    row("auction close (8 bids)", &auction, base);
    Ok(())
}
