//! The executor's Prometheus metrics, rendered in the text exposition format (served by
//! `triad execute` / `triad dev` / `triad demo` on `metrics.listen`). Counters only, kept in a
//! mutex-guarded map: they change a few times per task, far below any contention.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

use triad_domain::BreakerState;

/// Labels of a breaker transition: zone, model, from, to.
type TransitionKey = (String, String, &'static str, &'static str);

/// The counters of every executor in one process.
#[derive(Debug, Default)]
pub struct Metrics {
    breaker: Mutex<BTreeMap<TransitionKey, u64>>,
    /// (zone, model, outcome) → attempts reported.
    attempts: Counters,
    /// (zone, model, to) → health changes.
    health: Counters,
}

fn state(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::Open => "open",
        BreakerState::HalfOpen => "half_open",
    }
}

/// Per-(zone, model, `label`) counters.
type Counters = Mutex<BTreeMap<(String, String, &'static str), u64>>;

/// Writes one counter family labelled by zone, model and `label`.
fn family(out: &mut String, name: &str, help: &str, label_name: &str, counters: &Counters) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    if let Ok(m) = counters.lock() {
        for ((zone, model, value), n) in m.iter() {
            let _ = writeln!(
                out,
                "{name}{{zone=\"{}\",model=\"{}\",{label_name}=\"{value}\"}} {n}",
                label(zone),
                label(model)
            );
        }
    }
}

/// Label values are escaped as the exposition format requires.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn breaker_transition(
        &self,
        zone: &str,
        model: &str,
        from: BreakerState,
        to: BreakerState,
    ) {
        if let Ok(mut m) = self.breaker.lock() {
            *m.entry((zone.to_owned(), model.to_owned(), state(from), state(to)))
                .or_default() += 1;
        }
    }

    pub fn health_transition(&self, zone: &str, model: &str, healthy: bool) {
        let to = if healthy { "healthy" } else { "unhealthy" };
        if let Ok(mut m) = self.health.lock() {
            *m.entry((zone.to_owned(), model.to_owned(), to))
                .or_default() += 1;
        }
    }

    pub fn attempt(&self, zone: &str, model: &str, succeeded: bool) {
        let outcome = if succeeded { "succeeded" } else { "failed" };
        if let Ok(mut m) = self.attempts.lock() {
            *m.entry((zone.to_owned(), model.to_owned(), outcome))
                .or_default() += 1;
        }
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP triad_breaker_transitions_total Circuit-breaker state changes per model.\n\
             # TYPE triad_breaker_transitions_total counter\n",
        );
        if let Ok(m) = self.breaker.lock() {
            for ((zone, model, from, to), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "triad_breaker_transitions_total{{zone=\"{}\",model=\"{}\",from=\"{from}\",to=\"{to}\"}} {n}",
                    label(zone),
                    label(model)
                );
            }
        }
        family(
            &mut out,
            "triad_model_health_transitions_total",
            "Models marked healthy or unhealthy by their probes.",
            "to",
            &self.health,
        );
        family(
            &mut out,
            "triad_task_attempts_total",
            "Task attempts reported, by the model that answered last.",
            "outcome",
            &self.attempts,
        );
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn counters_render_in_the_exposition_format() {
        let m = Metrics::default();
        m.breaker_transition("US-EAST", "flaky", BreakerState::Closed, BreakerState::Open);
        m.breaker_transition("US-EAST", "flaky", BreakerState::Closed, BreakerState::Open);
        m.attempt("US-EAST", "odd\"name", true);
        m.health_transition("US-EAST", "flaky", false);
        let text = m.render();
        assert!(text.contains(
            "triad_breaker_transitions_total{zone=\"US-EAST\",model=\"flaky\",from=\"closed\",to=\"open\"} 2\n"
        ), "{text}");
        assert!(text.contains(
            "triad_task_attempts_total{zone=\"US-EAST\",model=\"odd\\\"name\",outcome=\"succeeded\"} 1\n"
        ), "{text}");
        assert!(text.contains("# TYPE triad_breaker_transitions_total counter\n"));
        assert!(text.contains(
            "# HELP triad_model_health_transitions_total Models marked healthy or unhealthy by their probes.\n\
             # TYPE triad_model_health_transitions_total counter\n\
             triad_model_health_transitions_total{zone=\"US-EAST\",model=\"flaky\",to=\"unhealthy\"} 1\n"
        ), "{text}");
        assert!(text.contains("# TYPE triad_task_attempts_total counter\n"));
    }
}
