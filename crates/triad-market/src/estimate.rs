//! Cost before execution (docs/market.md): what a workflow is expected to cost, and the most
//! it can cost, from the models' declared prices.
//!
//! For each task:
//! - **prompt tokens**: the template's own tokens ([`triad_router::estimate_tokens`]) plus,
//!   for each `{dep.output}` reference, the dependency's `max_tokens` (an output is never
//!   longer than that);
//! - **candidates**: the models the router could choose (zones, specialties, context window;
//!   health and breakers are assumed good, since they change by the time the task runs);
//! - **expected**: one call on the router's first choice, `prompt · in + max_tokens · out`
//!   per 1K tokens, rounded up to a micro-credit (the full `max_tokens` of output, so it
//!   leans high);
//! - **worst case**: `max_attempts ×` the priciest candidate's call. An attempt bills at most
//!   one successful call (failed calls report no usage), fallback can reach any candidate, and
//!   an attempt retried after its call succeeded (a timeout, a lost result) was real spend.
//!
//! The worst case is what a hard budget reserves.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use serde::Serialize;
use triad_router::{ModelInfo, Needs, estimate_tokens, rank};
use triad_workflow::aggregate::expand_zones;
use triad_workflow::{ModelOffer, Workflow, references};

use crate::SpecialtyClassifier;

/// The estimate of one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskEstimate {
    pub task: String,
    pub prompt_tokens: u32,
    pub max_tokens: u32,
    pub max_attempts: u32,
    /// The router's first choice; None when no model can run the task.
    pub model: Option<String>,
    /// Every model that could run it, best first.
    pub candidates: Vec<String>,
    /// The specialty read from the prompt when the task names none.
    pub inferred_specialty: Option<String>,
    pub expected_micros: i64,
    pub worst_case_micros: i64,
    /// Why no model can run the task.
    pub problem: Option<String>,
}

/// The estimate of a workflow: its tasks in definition order and their totals.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Estimate {
    pub tasks: Vec<TaskEstimate>,
    pub expected_micros: i64,
    pub worst_case_micros: i64,
}

/// The cost of one call on `offer`, rounded up to a micro-credit (as providers' usage is
/// billed: `triad_models::Fingerprint::cost_micros`).
pub fn call_micros(offer: &ModelOffer, prompt_tokens: u32, output_tokens: u32) -> i64 {
    let micros = i64::from(prompt_tokens)
        .saturating_mul(offer.input_micros_per_1k)
        .saturating_add(i64::from(output_tokens).saturating_mul(offer.output_micros_per_1k));
    micros.saturating_add(999).div_euclid(1000)
}

fn info(offer: &ModelOffer) -> ModelInfo {
    ModelInfo {
        id: offer.id.clone(),
        zones: offer.zones.clone(),
        specialties: offer.specialties.clone(),
        latency_p50_ms: offer.latency_p50_ms,
        latency_p95_ms: offer.latency_p95_ms,
        reliability: 1.0,
        input_micros_per_1k: offer.input_micros_per_1k,
        output_micros_per_1k: offer.output_micros_per_1k,
        max_context: offer.max_context,
        healthy: true,
        breaker: triad_domain::BreakerState::Closed,
        endpoint_host: None,
    }
}

/// Estimates `workflow` against the `offers` of the catalogue (module docs). `groups` expands
/// zone group names; `classifier` reads a specialty from prompts that name none.
pub fn estimate(
    workflow: &Workflow,
    offers: &[ModelOffer],
    groups: &[(String, Vec<String>)],
    classifier: Option<&dyn SpecialtyClassifier>,
) -> Estimate {
    let infos: Vec<ModelInfo> = offers.iter().map(info).collect();
    let by_id: BTreeMap<&str, &ModelOffer> = offers.iter().map(|o| (o.id.as_str(), o)).collect();
    let max_tokens: BTreeMap<&str, u32> = workflow
        .tasks
        .iter()
        .map(|t| (t.id.as_str(), positive(t.max_tokens)))
        .collect();
    let mut tasks = Vec::with_capacity(workflow.tasks.len());
    for task in &workflow.tasks {
        let refs = references(&task.prompt);
        // The template without its references, then each reference at its dependency's
        // longest output.
        let bare = crate::matching::instruction(&task.prompt);
        let prompt_tokens = refs.iter().fold(estimate_tokens(&bare), |sum, r| {
            sum.saturating_add(max_tokens.get(r.task.as_str()).copied().unwrap_or(0))
        });
        let names = if task.zones.is_empty() {
            &workflow.zones
        } else {
            &task.zones
        };
        let allowed: BTreeSet<String> = expand_zones(names, groups);
        let inferred_specialty = if task.specialties.is_empty() {
            classifier
                .and_then(|c| c.classify(&bare))
                .map(|i| i.specialty)
        } else {
            None
        };
        let max_out = positive(task.max_tokens);
        let max_attempts = positive(task.retry.max_attempts);
        let mut estimate = TaskEstimate {
            task: task.id.clone(),
            prompt_tokens,
            max_tokens: max_out,
            max_attempts,
            model: None,
            candidates: vec![],
            inferred_specialty: inferred_specialty.clone(),
            expected_micros: 0,
            worst_case_micros: 0,
            problem: None,
        };
        let Some(first_zone) = allowed.first().cloned() else {
            estimate.problem = Some("no allowed zone".to_owned());
            tasks.push(estimate);
            continue;
        };
        let needs = Needs {
            executor_zone: first_zone,
            allowed_zones: allowed,
            specialties: task.specialties.clone(),
            inferred_specialty,
            hint: task.model.clone().filter(|m| !m.is_empty()),
            prompt_tokens,
            max_tokens: max_out,
            timeout_ms: u64::try_from(task.timeout_ms).unwrap_or(0),
            zone_hosts: Arc::default(),
        };
        let ranking = rank(&infos, &needs);
        if ranking.eligible.is_empty() {
            estimate.problem = Some(ranking.explain_none());
            tasks.push(estimate);
            continue;
        }
        let costs: Vec<i64> = ranking
            .eligible
            .iter()
            .filter_map(|r| by_id.get(r.id.as_str()))
            .map(|o| call_micros(o, prompt_tokens, max_out))
            .collect();
        estimate.model = ranking.eligible.first().map(|r| r.id.clone());
        estimate.candidates = ranking.eligible.iter().map(|r| r.id.clone()).collect();
        estimate.expected_micros = costs.first().copied().unwrap_or(0);
        estimate.worst_case_micros = costs
            .iter()
            .copied()
            .max()
            .unwrap_or(0)
            .saturating_mul(i64::from(max_attempts));
        tasks.push(estimate);
    }
    Estimate {
        expected_micros: tasks.iter().map(|t| t.expected_micros).sum(),
        worst_case_micros: tasks.iter().map(|t| t.worst_case_micros).sum(),
        tasks,
    }
}

fn positive(n: i32) -> u32 {
    u32::try_from(n.max(1)).unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TfIdfClassifier;
    use triad_workflow::Task;

    fn priced(id: &str, zones: &[&str], specialties: &[&str], price: (i64, i64)) -> ModelOffer {
        let mut o = ModelOffer::new(
            id,
            zones.iter().map(|z| (*z).to_owned()).collect(),
            specialties.iter().map(|s| (*s).to_owned()).collect(),
        );
        (o.input_micros_per_1k, o.output_micros_per_1k) = price;
        o
    }

    #[test]
    fn prompts_count_dependencies_at_their_longest_and_prices_round_up() {
        let wf = Workflow::new("research")
            .zones(["US-EAST"])
            .task(Task::new("q", "Generate 3 questions about tides").max_tokens(200))
            .task(
                Task::new("a", "Answer: {q.output}")
                    .depends_on(["q"])
                    .max_tokens(500)
                    .max_attempts(2),
            );
        let offers = [
            priced("cheap", &["US-EAST"], &[], (1_000, 2_000)),
            priced("dear", &["US-EAST"], &[], (10_000, 30_000)),
            priced("abroad", &["EU-WEST"], &[], (1, 1)),
        ];
        let e = estimate(&wf, &offers, &[], None);
        let q = &e.tasks[0];
        // "Generate 3 questions about tides" = 32 bytes → 8 tokens (more than its 5 words).
        assert_eq!(q.prompt_tokens, 8);
        assert_eq!(q.candidates, ["cheap", "dear"]);
        assert_eq!(q.model.as_deref(), Some("cheap"));
        // cheap: (8·1000 + 200·2000) / 1000 = 408; dear: (8·10000 + 200·30000)/1000 = 6080.
        assert_eq!((q.expected_micros, q.worst_case_micros), (408, 3 * 6080));
        let a = &e.tasks[1];
        // "Answer:  " = 9 bytes → 3 tokens (> 1 word), plus q's 200.
        assert_eq!(a.prompt_tokens, 203);
        assert_eq!(a.expected_micros, (203 * 1000 + 500 * 2000 + 999) / 1000);
        assert_eq!(
            a.worst_case_micros,
            2 * ((203 * 10_000 + 500 * 30_000 + 999) / 1000)
        );
        assert_eq!(e.expected_micros, q.expected_micros + a.expected_micros);
        assert_eq!(
            e.worst_case_micros,
            q.worst_case_micros + a.worst_case_micros
        );
        assert_eq!(
            call_micros(&offers[0], 1, 0),
            1,
            "a started micro-credit is billed"
        );
    }

    #[test]
    fn hints_groups_specialties_and_impossible_tasks() {
        let groups = [("EU".to_owned(), vec!["EU-WEST".to_owned()])];
        let wf = Workflow::new("w")
            .zones(["EU"])
            .task(Task::new("t", "Translate this into French").model("dear"))
            .task(Task::new("u", "Write a Rust function").specialties(["code"]))
            .task(Task::new("v", "hello").zones(["US-EAST"]));
        let offers = [
            priced("cheap", &["EU-WEST"], &["translation"], (1_000, 1_000)),
            priced("dear", &["EU-WEST"], &[], (5_000, 5_000)),
        ];
        let classifier = TfIdfClassifier::embedded().unwrap();
        let e = estimate(&wf, &offers, &groups, Some(&classifier));
        assert_eq!(e.tasks[0].model.as_deref(), Some("dear"), "the hint leads");
        assert_eq!(
            e.tasks[0].inferred_specialty.as_deref(),
            Some("translation")
        );
        assert!(e.tasks[0].worst_case_micros > e.tasks[0].expected_micros / 2);
        assert_eq!(e.tasks[1].model, None);
        assert!(
            e.tasks[1]
                .problem
                .as_deref()
                .unwrap()
                .contains("lacks specialty code"),
            "{:?}",
            e.tasks[1].problem
        );
        assert_eq!(e.tasks[1].worst_case_micros, 0);
        assert!(
            e.tasks[2]
                .problem
                .as_deref()
                .unwrap()
                .contains("outside the task's zones")
        );
    }
}
