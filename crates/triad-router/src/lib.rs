//! The router's decisions, free of I/O so they can be tested exhaustively: which models may
//! run a task ([`rank`]), the per-model circuit breaker ([`Breaker`]) and retry delays
//! ([`backoff`]). Time is passed in, never read.
//!
//! ## The score (docs/routing.md)
//! A model is *eligible* when all its zones lie inside the task's allowed zones (a model
//! that runs inside the executor counts as the executor's zone), it is healthy, its breaker
//! lets calls through, the prompt plus `max_tokens` fits its context window, and it has
//! every specialty the task requires. Eligible models are ranked by
//!
//! ```text
//! score = (0.5 · specialty + 0.3 · latency + 0.2 · cost) · sla · reliability
//! specialty   = 1 when the task names specialties (they are a filter) or none was inferred;
//!               else 1 when the model offers the specialty inferred from the prompt, 0.5 if not
//! latency     = 1000 / (1000 + p50 ms)
//! cost        = 1000 / (1000 + expected cost in micro-credits)
//! sla         = 1, or 0.5 when the model's p95 exceeds the task's timeout
//! reliability = 0.5 + 0.5 · success ratio of its recent calls (1 until there are enough)
//! ```
//! The latency figures and the success ratio are measured ([`CallWindow`]) once a model has
//! enough recent calls, the declared fingerprint until then. A model hint is respected when
//! the hinted model is eligible (reason `"hint"`); ties go to the lower model id so the
//! order is deterministic.

pub mod breaker;
pub mod health;
pub mod stats;

pub use breaker::{Breaker, BreakerConfig, Permit, Transition};
pub use health::{HealthConfig, ProbeTracker};
pub use stats::CallWindow;

use std::collections::BTreeSet;
use std::time::Duration;

use triad_domain::BreakerState;

/// What the router knows about a model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub id: String,
    /// Where it processes data; empty means inside the executor.
    pub zones: Vec<String>,
    pub specialties: Vec<String>,
    pub latency_p50_ms: u64,
    pub latency_p95_ms: u64,
    /// Share of its recent calls that succeeded, in [0, 1]; 1 while there are too few.
    pub reliability: f64,
    pub input_micros_per_1k: i64,
    pub output_micros_per_1k: i64,
    pub max_context: u32,
    pub healthy: bool,
    pub breaker: BreakerState,
    /// The host its calls go to; None for a model inside the executor.
    pub endpoint_host: Option<String>,
}

/// What a task asks of a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Needs {
    pub executor_zone: String,
    pub allowed_zones: BTreeSet<String>,
    pub specialties: Vec<String>,
    /// The specialty the prompt reads as (a classifier's answer) when the task names none:
    /// a preference, never a filter, since a classifier can be wrong.
    pub inferred_specialty: Option<String>,
    pub hint: Option<String>,
    pub prompt_tokens: u32,
    pub max_tokens: u32,
    /// How long one attempt may take (the task's SLA).
    pub timeout_ms: u64,
    /// The policy's host allowlist per zone (`policy.hosts`): a remote model is eligible only
    /// if its endpoint host is allowed in each of its zones that has a list.
    pub zone_hosts: std::sync::Arc<std::collections::BTreeMap<String, Vec<String>>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ranked {
    pub id: String,
    pub score: f64,
}

/// The router's answer: eligible models best first, and why each other model was not.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    pub eligible: Vec<Ranked>,
    pub rejected: Vec<(String, String)>,
    /// Why the first model leads: `"hint"` or `"best score"`.
    pub reason: &'static str,
}

impl Ranking {
    /// A one-line summary of why nothing is eligible, naming each model's reason.
    pub fn explain_none(&self) -> String {
        let reasons: Vec<String> = self
            .rejected
            .iter()
            .map(|(id, why)| format!("{id}: {why}"))
            .collect();
        format!("no eligible model ({})", reasons.join("; "))
    }
}

fn ineligible(m: &ModelInfo, needs: &Needs) -> Option<String> {
    let zones: Vec<&str> = if m.zones.is_empty() {
        vec![needs.executor_zone.as_str()]
    } else {
        m.zones.iter().map(String::as_str).collect()
    };
    if let Some(z) = zones.iter().find(|z| !needs.allowed_zones.contains(**z)) {
        return Some(format!("processes data in {z}, outside the task's zones"));
    }
    if let Some(host) = &m.endpoint_host {
        for z in &zones {
            if let Some(allowed) = needs.zone_hosts.get(*z)
                && !allowed.iter().any(|a| a.eq_ignore_ascii_case(host))
            {
                return Some(format!(
                    "endpoint host {host} is not allowed in zone {z} (policy.hosts)"
                ));
            }
        }
    }
    if !m.healthy {
        return Some("unhealthy".to_owned());
    }
    if m.breaker == BreakerState::Open {
        return Some("circuit breaker open".to_owned());
    }
    let need = u64::from(needs.prompt_tokens) + u64::from(needs.max_tokens);
    if need > u64::from(m.max_context) {
        return Some(format!(
            "context window {} < {need} tokens needed",
            m.max_context
        ));
    }
    if let Some(s) = needs
        .specialties
        .iter()
        .find(|s| !m.specialties.contains(s))
    {
        return Some(format!("lacks specialty {s}"));
    }
    None
}

/// The expected cost of the task on `m`, in micro-credits.
pub fn expected_cost(m: &ModelInfo, needs: &Needs) -> f64 {
    (f64::from(needs.prompt_tokens) * m.input_micros_per_1k as f64
        + f64::from(needs.max_tokens) * m.output_micros_per_1k as f64)
        / 1000.0
}

/// The documented score of an eligible model (module docs).
pub fn score(m: &ModelInfo, needs: &Needs) -> f64 {
    let specialty = match &needs.inferred_specialty {
        Some(s) if needs.specialties.is_empty() && !m.specialties.contains(s) => 0.5,
        _ => 1.0,
    };
    let latency = 1000.0 / (1000.0 + m.latency_p50_ms as f64);
    let cost = 1000.0 / (1000.0 + expected_cost(m, needs).max(0.0));
    let sla = if needs.timeout_ms > 0 && m.latency_p95_ms > needs.timeout_ms {
        0.5
    } else {
        1.0
    };
    let reliability = 0.5 + 0.5 * m.reliability.clamp(0.0, 1.0);
    (0.5 * specialty + 0.3 * latency + 0.2 * cost) * sla * reliability
}

pub use triad_domain::estimate_tokens;

/// Ranks `models` for a task (module docs).
pub fn rank(models: &[ModelInfo], needs: &Needs) -> Ranking {
    let mut eligible = Vec::new();
    let mut rejected = Vec::new();
    for m in models {
        match ineligible(m, needs) {
            Some(why) => rejected.push((m.id.clone(), why)),
            None => eligible.push(Ranked {
                id: m.id.clone(),
                score: score(m, needs),
            }),
        }
    }
    eligible.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
    let mut reason = "best score";
    if let Some(hint) = &needs.hint
        && let Some(i) = eligible.iter().position(|r| &r.id == hint)
    {
        let hinted = eligible.remove(i);
        eligible.insert(0, hinted);
        reason = "hint";
    }
    Ranking {
        eligible,
        rejected,
        reason,
    }
}

/// Exponential backoff with full jitter (AWS architecture blog): a delay drawn uniformly
/// from `[0, min(max, base · 2^retry)]`, using `unit` ∈ [0, 1) as the random draw. A
/// provider's `Retry-After` is a floor: it is honoured even when longer than the cap.
pub fn backoff(
    retry: u32,
    base: Duration,
    max: Duration,
    unit: f64,
    retry_after: Option<Duration>,
) -> Duration {
    let cap = base
        .checked_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    let jittered = cap.mul_f64(unit.clamp(0.0, 1.0));
    match retry_after {
        Some(r) => jittered.max(r),
        None => jittered,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, zones: &[&str], p50: u64, price: i64) -> ModelInfo {
        ModelInfo {
            id: id.into(),
            zones: zones.iter().map(|z| (*z).to_owned()).collect(),
            specialties: vec!["reasoning".into()],
            latency_p50_ms: p50,
            latency_p95_ms: p50 * 2,
            reliability: 1.0,
            input_micros_per_1k: price,
            output_micros_per_1k: price,
            max_context: 8192,
            healthy: true,
            breaker: BreakerState::Closed,
            endpoint_host: None,
        }
    }

    fn needs(allowed: &[&str]) -> Needs {
        Needs {
            executor_zone: "US-EAST".into(),
            allowed_zones: allowed.iter().map(|z| (*z).to_owned()).collect(),
            specialties: vec![],
            inferred_specialty: None,
            hint: None,
            prompt_tokens: 100,
            max_tokens: 100,
            timeout_ms: 60_000,
            zone_hosts: std::sync::Arc::default(),
        }
    }

    #[test]
    fn a_remote_endpoint_must_be_on_each_of_its_zones_host_allowlist() {
        let mut remote = model("remote", &["US-EAST", "US-WEST"], 10, 0);
        remote.endpoint_host = Some("api.example.com".into());
        let local = model("local", &[], 10, 0);
        let mut n = needs(&["US-EAST", "US-WEST"]);
        // No allowlist: any host.
        assert_eq!(rank(&[remote.clone(), local.clone()], &n).eligible.len(), 2);
        // US-WEST lists other hosts: the remote model is out, with the reason; the model
        // inside the executor has no endpoint and stays eligible.
        n.zone_hosts = std::sync::Arc::new(
            [
                ("US-EAST".to_owned(), vec!["api.example.com".to_owned()]),
                ("US-WEST".to_owned(), vec!["llm.west.example".to_owned()]),
            ]
            .into(),
        );
        let r = rank(&[remote.clone(), local.clone()], &n);
        assert_eq!(
            r.eligible.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["local"]
        );
        assert_eq!(
            r.rejected,
            [(
                "remote".to_owned(),
                "endpoint host api.example.com is not allowed in zone US-WEST (policy.hosts)"
                    .to_owned()
            )]
        );
        // Allowed in both: eligible again.
        n.zone_hosts = std::sync::Arc::new(
            [
                ("US-EAST".to_owned(), vec!["api.example.com".to_owned()]),
                ("US-WEST".to_owned(), vec!["api.example.com".to_owned()]),
            ]
            .into(),
        );
        assert_eq!(rank(&[remote, local], &n).eligible.len(), 2);
    }

    #[test]
    fn zones_outside_the_task_are_never_eligible() {
        let models = [
            model("eu", &["EU-WEST"], 10, 0),
            model("us", &["US-EAST"], 10, 0),
            model("both", &["US-EAST", "EU-WEST"], 10, 0),
            model("local", &[], 10, 0),
        ];
        let r = rank(&models, &needs(&["US-EAST"]));
        let ids: Vec<&str> = r.eligible.iter().map(|m| m.id.as_str()).collect();
        assert_eq!(ids, ["local", "us"]);
        assert_eq!(r.rejected.len(), 2);
        assert!(r.rejected[0].1.contains("EU-WEST"), "{:?}", r.rejected);
    }

    #[test]
    fn faster_and_cheaper_rank_first_and_hints_win_when_eligible() {
        let models = [
            model("slow", &["US-EAST"], 2000, 0),
            model("pricey", &["US-EAST"], 50, 30_000),
            model("fast", &["US-EAST"], 50, 0),
        ];
        let mut n = needs(&["US-EAST"]);
        let r = rank(&models, &n);
        assert_eq!(r.eligible[0].id, "fast");
        assert_eq!(r.reason, "best score");
        assert!(r.eligible[0].score > r.eligible[1].score);
        n.hint = Some("slow".into());
        let r = rank(&models, &n);
        assert_eq!((r.eligible[0].id.as_str(), r.reason), ("slow", "hint"));
        n.hint = Some("nowhere".into());
        assert_eq!(rank(&models, &n).reason, "best score");
    }

    #[test]
    fn breakers_health_context_and_specialties_filter() {
        let mut open = model("open", &["US-EAST"], 10, 0);
        open.breaker = BreakerState::Open;
        let mut half = model("half", &["US-EAST"], 10, 0);
        half.breaker = BreakerState::HalfOpen;
        let mut sick = model("sick", &["US-EAST"], 10, 0);
        sick.healthy = false;
        let mut small = model("small", &["US-EAST"], 10, 0);
        small.max_context = 150;
        let mut n = needs(&["US-EAST"]);
        n.specialties = vec!["reasoning".into()];
        let mut plain = model("plain", &["US-EAST"], 10, 0);
        plain.specialties.clear();
        let r = rank(&[open, half, sick, small, plain], &n);
        assert_eq!(
            r.eligible.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
            ["half"]
        );
        let why = r.explain_none();
        for expected in [
            "breaker open",
            "unhealthy",
            "context window 150",
            "lacks specialty reasoning",
        ] {
            assert!(why.contains(expected), "{why}");
        }
    }

    #[test]
    fn inferred_specialty_sla_and_reliability_reorder_but_never_filter() {
        let mut coder = model("coder", &["US-EAST"], 100, 0);
        coder.specialties = vec!["code".into()];
        let generalist = model("generalist", &["US-EAST"], 100, 0);
        let mut n = needs(&["US-EAST"]);
        // Identical but for the id: the id breaks the tie.
        assert_eq!(
            rank(&[coder.clone(), generalist.clone()], &n).eligible[0].id,
            "coder"
        );
        n.inferred_specialty = Some("reasoning".into());
        let r = rank(&[coder.clone(), generalist.clone()], &n);
        assert_eq!(r.eligible[0].id, "generalist");
        assert_eq!(r.eligible.len(), 2, "an inferred specialty is a preference");
        // A named specialty overrides the inference (and filters).
        n.specialties = vec!["code".into()];
        let r = rank(&[coder.clone(), generalist.clone()], &n);
        assert_eq!(r.eligible.len(), 1);
        assert_eq!(r.eligible[0].id, "coder");
        n.specialties.clear();
        n.inferred_specialty = None;
        // A p95 beyond the task's SLA halves the score.
        let mut slow_tail = generalist.clone();
        slow_tail.id = "a-slow-tail".into();
        slow_tail.latency_p95_ms = 5_000;
        n.timeout_ms = 2_000;
        let r = rank(&[slow_tail.clone(), generalist.clone()], &n);
        assert_eq!(r.eligible[0].id, "generalist");
        assert!((r.eligible[1].score * 2.0 - r.eligible[0].score).abs() < 1e-9);
        // Measured unreliability costs up to half the score.
        let mut flaky = generalist.clone();
        flaky.id = "a-flaky".into();
        flaky.reliability = 0.2;
        let r = rank(&[flaky, generalist], &n);
        assert_eq!(r.eligible[0].id, "generalist");
        assert!((r.eligible[1].score / r.eligible[0].score - 0.6).abs() < 1e-9);
    }

    #[test]
    fn token_estimates_take_the_larger_of_words_and_quarter_bytes() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("What is 2+2?"), 3);
        assert_eq!(estimate_tokens("a b c d e f"), 6);
        assert_eq!(estimate_tokens("supercalifragilistic"), 5);
    }

    #[test]
    fn backoff_is_capped_jittered_and_honours_retry_after() {
        let (base, max) = (Duration::from_millis(100), Duration::from_secs(5));
        assert_eq!(backoff(0, base, max, 0.5, None), Duration::from_millis(50));
        assert_eq!(backoff(3, base, max, 0.5, None), Duration::from_millis(400));
        assert_eq!(backoff(30, base, max, 1.0, None), max);
        assert_eq!(backoff(0, base, max, 0.0, None), Duration::ZERO);
        assert_eq!(
            backoff(0, base, max, 0.5, Some(Duration::from_secs(30))),
            Duration::from_secs(30)
        );
    }
}
