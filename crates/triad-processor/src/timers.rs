//! Timers of dispatched attempts. A timer's *firing* is written to the inbox as a
//! `TaskTimerFired` command whose id derives from (attempt, kind), so what it decides is a fact
//! of the log and replays identically; only *when* it fires depends on the wall clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use triad_domain::{TimerKind, TimestampMicros};
use triad_workflow::aggregate::{TaskStatus, WorkflowState};

/// One armed timer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    pub workflow_id: String,
    pub task_id: String,
    pub attempt: i32,
    pub attempt_id: String,
    pub zone: String,
    pub kind: TimerKind,
}

type Key = (TimestampMicros, String, u8);

fn kind_order(kind: TimerKind) -> u8 {
    match kind {
        TimerKind::Unclaimed => 0,
        TimerKind::Deadline => 1,
    }
}

#[derive(Debug, Default)]
struct Inner {
    due: BTreeMap<Key, Timer>,
    by_workflow: HashMap<String, Vec<Key>>,
}

/// The armed timers, ordered by due time.
#[derive(Debug, Default)]
pub struct Timers {
    inner: Mutex<Inner>,
    pub changed: tokio::sync::Notify,
}

impl Timers {
    /// Re-arms the timers of one workflow from its state: one pair per attempt in flight,
    /// none once it finished. A new attempt's timers count from `now` (the processor's clock,
    /// not the client's, so clock skew cannot fire them early); an attempt already armed
    /// keeps its due times. After a restart the timers count from the recovery: a crash can
    /// only extend a deadline, never cut it short.
    pub fn sync(
        &self,
        state: &WorkflowState,
        now: TimestampMicros,
        unclaimed_after: Duration,
        grace: Duration,
    ) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        let mut armed: HashMap<(String, u8), TimestampMicros> = HashMap::new();
        if let Some(keys) = inner.by_workflow.remove(&state.workflow_id) {
            for k in keys {
                inner.due.remove(&k);
                armed.insert((k.1.clone(), k.2), k.0);
            }
        }
        let Some(workflow) = &state.workflow else {
            return;
        };
        if state.status.finished() {
            return;
        }
        let micros = |d: Duration| i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
        let mut keys = Vec::new();
        for (task_id, status) in &state.tasks {
            let TaskStatus::Dispatched(d) = status else {
                continue;
            };
            let timeout_ms = workflow
                .tasks
                .iter()
                .find(|t| &t.id == task_id)
                .map_or(0, |t| t.timeout_ms);
            let mut arm = |kind, after: TimestampMicros| {
                let order = kind_order(kind);
                let at = armed
                    .get(&(d.attempt_id.clone(), order))
                    .copied()
                    .unwrap_or_else(|| now.saturating_add(after));
                let key = (at, d.attempt_id.clone(), order);
                inner.due.insert(
                    key.clone(),
                    Timer {
                        workflow_id: state.workflow_id.clone(),
                        task_id: task_id.clone(),
                        attempt: d.attempt,
                        attempt_id: d.attempt_id.clone(),
                        zone: d.zone.clone(),
                        kind,
                    },
                );
                keys.push(key);
            };
            arm(TimerKind::Unclaimed, micros(unclaimed_after));
            if timeout_ms > 0 {
                arm(
                    TimerKind::Deadline,
                    timeout_ms
                        .saturating_mul(1000)
                        .saturating_add(micros(grace)),
                );
            }
        }
        if !keys.is_empty() {
            inner.by_workflow.insert(state.workflow_id.clone(), keys);
        }
        drop(inner);
        self.changed.notify_one();
    }

    /// Removes and returns the timers due at `now`, and the due time of the next one.
    pub fn take_due(&self, now: TimestampMicros) -> (Vec<Timer>, Option<TimestampMicros>) {
        let Ok(mut inner) = self.inner.lock() else {
            return (vec![], None);
        };
        let mut fired = Vec::new();
        while let Some(entry) = inner.due.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let (key, timer) = entry.remove_entry();
            if let Some(keys) = inner.by_workflow.get_mut(&timer.workflow_id) {
                keys.retain(|k| *k != key);
            }
            fired.push(timer);
        }
        let next = inner.due.keys().next().map(|k| k.0);
        (fired, next)
    }

    /// Arms `timer` again at `at` (after a failed write).
    pub fn rearm(&self, timer: Timer, at: TimestampMicros) {
        if let Ok(mut inner) = self.inner.lock() {
            let key = (at, timer.attempt_id.clone(), kind_order(timer.kind));
            inner
                .by_workflow
                .entry(timer.workflow_id.clone())
                .or_default()
                .push(key.clone());
            inner.due.insert(key, timer);
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.due.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which zones have a live executor, from the heartbeats on `triad.executor-status`.
#[derive(Debug)]
pub struct Liveness {
    started: Instant,
    window: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Liveness {
    pub fn new(window: Duration) -> Self {
        Self {
            started: Instant::now(),
            window,
            last: Mutex::new(HashMap::new()),
        }
    }

    pub fn heartbeat(&self, zone: &str) {
        if let Ok(mut last) = self.last.lock() {
            last.insert(zone.to_owned(), Instant::now());
        }
    }

    /// True when the zone sent a heartbeat within the window, or the processor has not been
    /// up for a whole window yet (it cannot know; it gives the zone the benefit of the doubt).
    pub fn alive(&self, zone: &str) -> bool {
        if self.started.elapsed() < self.window {
            return true;
        }
        self.last
            .lock()
            .ok()
            .and_then(|l| l.get(zone).copied())
            .is_some_and(|t| t.elapsed() < self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_domain::{CommandMetadata, InboxBody, InboxRecord, TaskOutcome, TaskResultReported};
    use triad_workflow::aggregate::{Input, Policy, process};
    use triad_workflow::{Task, Workflow};

    fn policy() -> Policy {
        Policy::new(["US-EAST"], "triad-local")
    }

    fn input(n: i64, body: InboxBody) -> InboxRecord {
        InboxRecord {
            meta: CommandMetadata {
                command_id: format!("c{n}"),
                idempotency_key: format!("k{n}"),
                workflow_id: "wf".into(),
                issued_at: 1_000_000 * n,
                actor: None,
                tenant: None,
                schema_version: 2,
            },
            body,
        }
    }

    fn feed(state: &mut WorkflowState, n: i64, body: InboxBody) {
        let r = input(n, body);
        process(
            state,
            &Input {
                topic: "inbox",
                partition: 0,
                offset: n,
                record: &r,
            },
            &policy(),
        );
    }

    #[test]
    fn timers_follow_the_attempts_in_flight() {
        let wf = Workflow::new("w")
            .zones(["US-EAST"])
            .task(Task::new("a", "p").timeout_ms(2_000));
        let mut state = WorkflowState::default();
        feed(&mut state, 1, InboxBody::SubmitWorkflow(wf.to_command()));
        let timers = Timers::default();
        let (unclaimed, grace) = (Duration::from_secs(10), Duration::from_secs(5));
        timers.sync(&state, 1_000_000, unclaimed, grace);
        assert_eq!(timers.len(), 2);
        // Re-syncing later (another input of the workflow) keeps the due times.
        timers.sync(&state, 3_000_000, unclaimed, grace);
        // Armed at t = 1 s: the deadline is 1 + 2 + 5 s, the unclaimed check 1 + 10 s.
        let (fired, next) = timers.take_due(7_999_999);
        assert!(fired.is_empty());
        assert_eq!(next, Some(8_000_000));
        let (fired, next) = timers.take_due(8_000_000);
        assert_eq!(
            fired.iter().map(|t| t.kind).collect::<Vec<_>>(),
            [TimerKind::Deadline]
        );
        assert_eq!(fired[0].attempt_id, "wf/a#1");
        assert_eq!(next, Some(11_000_000));
        // The result arrives: the workflow finished, nothing stays armed.
        feed(
            &mut state,
            2,
            InboxBody::TaskResultReported(TaskResultReported {
                task_id: "a".into(),
                attempt: 1,
                attempt_id: "wf/a#1".into(),
                model_id: "m".into(),
                executor_zone: "US-EAST".into(),
                outcome: TaskOutcome::Succeeded,
                output: Some(b"x".to_vec()),
                output_ref: None,
                error: None,
                retryable: false,
                input_tokens: 0,
                output_tokens: 0,
                cost_micros: 0,
                latency_ms: 0,
                routing: None,
                execution: None,
            }),
        );
        timers.sync(&state, 12_000_000, unclaimed, grace);
        assert!(timers.is_empty());
    }

    #[test]
    fn a_zone_is_alive_only_while_it_heartbeats() {
        let live = Liveness::new(Duration::ZERO);
        assert!(!live.alive("US-EAST"));
        let live = Liveness::new(Duration::from_secs(60));
        // Within the first window every zone gets the benefit of the doubt.
        assert!(live.alive("US-EAST"));
        live.heartbeat("US-EAST");
        assert!(live.alive("US-EAST"));
    }
}
