//! The market's [`CostModel`] for credits reservations (docs/credits.md): each task's worst
//! attempt is its priciest candidate's call at `max_tokens` ([`crate::estimate`]), so a
//! workflow reserves what it could spend if every attempt of every task ran on the dearest
//! model it may use.

use std::collections::BTreeMap;

use triad_workflow::Workflow;
use triad_workflow::aggregate::{CostModel, Policy};

use crate::matching;

/// Prices workflows from the policy's model offers (their declared prices).
#[derive(Debug, Clone, Copy, Default)]
pub struct MarketCosts;

impl CostModel for MarketCosts {
    fn attempt_worst_case(
        &self,
        workflow: &Workflow,
        policy: &Policy,
    ) -> Result<BTreeMap<String, i64>, (String, String)> {
        let offers = policy.models.as_deref().unwrap_or_default();
        let classifier = matching::shared();
        let estimate = crate::estimate(
            workflow,
            offers,
            &policy.groups,
            classifier.map(|c| c as &dyn crate::SpecialtyClassifier),
        );
        let mut out = BTreeMap::new();
        for (i, task) in estimate.tasks.iter().enumerate() {
            if let Some(problem) = &task.problem {
                return Err((
                    format!("tasks[{i}]"),
                    format!("{} cannot be priced: {problem}", task.task),
                ));
            }
            let attempts = i64::from(task.max_attempts.max(1));
            out.insert(task.task.clone(), task.worst_case_micros / attempts);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_workflow::{ModelOffer, Task};

    fn policy(offers: Vec<ModelOffer>) -> Policy {
        Policy {
            models: Some(offers),
            ..Policy::new(["EU"], "cheap")
        }
    }

    fn priced(id: &str, price: (i64, i64)) -> ModelOffer {
        let mut o = ModelOffer::new(id, vec!["EU".to_owned()], vec![]);
        (o.input_micros_per_1k, o.output_micros_per_1k) = price;
        o
    }

    #[test]
    fn an_attempt_costs_the_priciest_candidate_at_max_tokens() {
        let w = Workflow::new("w").zones(["EU"]).task(
            Task::new("a", "Summarise this report in three sentences")
                .max_tokens(1000)
                .max_attempts(3),
        );
        let costs = MarketCosts
            .attempt_worst_case(
                &w,
                &policy(vec![
                    priced("cheap", (1_000, 1_000)),
                    priced("dear", (10_000, 20_000)),
                ]),
            )
            .unwrap();
        // The dear model: 1000 output tokens at 20 000 µ/1K = 20 000, plus the prompt's
        // estimated tokens at 10 000 µ/1K (rounded up), per attempt — not times attempts.
        let prompt = i64::from(triad_domain::estimate_tokens(
            "Summarise this report in three sentences",
        ));
        assert_eq!(costs["a"], 20_000 + (prompt * 10_000 + 999) / 1000);
    }

    #[test]
    fn a_task_no_model_can_run_names_its_field() {
        let w = Workflow::new("w")
            .zones(["EU"])
            .task(Task::new("a", "hello").specialties(["vision"]));
        let err = MarketCosts
            .attempt_worst_case(&w, &policy(vec![priced("cheap", (1, 1))]))
            .unwrap_err();
        assert_eq!(err.0, "tasks[0]");
        assert!(err.1.contains("a cannot be priced"), "{}", err.1);
    }
}
