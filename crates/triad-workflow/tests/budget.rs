//! The budget saga in the aggregate (docs/credits.md): a submission that names an account
//! waits for the ledger's reservation, every attempt is pre-authorised against it, and the
//! settlement is recorded once.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use triad_domain::{
    CancelWorkflow, EventBody, InboxBody, InboxRecord, LedgerOutcome, LedgerReply, ModelCall,
    RoutingDecision, TaskOutcome, TaskResultReported, WorkflowEvent,
};
use triad_workflow::aggregate::{CostModel, Policy, Status, WorkflowState, attempt_id};
use triad_workflow::{Task, Workflow};

const WF: &str = "wf-budget";

/// Every attempt of every task may cost `per_attempt` µcredits.
#[derive(Debug)]
struct Flat(i64);

impl CostModel for Flat {
    fn attempt_worst_case(
        &self,
        workflow: &Workflow,
        _policy: &Policy,
    ) -> Result<BTreeMap<String, i64>, (String, String)> {
        Ok(workflow
            .tasks
            .iter()
            .map(|t| (t.id.clone(), self.0))
            .collect())
    }
}

fn policy(costs: Option<i64>, require_account: bool) -> Policy {
    Policy {
        costs: costs.map(|c| Arc::new(Flat(c)) as Arc<dyn CostModel>),
        require_account,
        ..Policy::new(["EU"], "triad-local")
    }
}

fn workflow(account: Option<&str>) -> Workflow {
    let w = Workflow::new("two-step")
        .zones(["EU"])
        .task(Task::new("first", "Write a haiku").max_attempts(2))
        .task(
            Task::new("second", "Translate: {first.output}")
                .depends_on(["first"])
                .max_attempts(1),
        );
    match account {
        Some(a) => w.account(a),
        None => w,
    }
}

fn record(n: i64, body: InboxBody) -> InboxRecord {
    common::record(WF, n, body)
}

fn reply(n: i64, outcome: LedgerOutcome, amount: i64) -> InboxRecord {
    record(
        n,
        InboxBody::LedgerReply(LedgerReply {
            account: "acct".into(),
            outcome,
            amount_micros: amount,
            burned_micros: 0,
            released_micros: 0,
            reason: (outcome == LedgerOutcome::Refused).then(|| "10 available".to_owned()),
        }),
    )
}

/// A result whose one model call cost `cost` µcredits.
fn result(n: i64, task: &str, attempt: i32, ok: bool, cost: i64) -> InboxRecord {
    record(
        n,
        InboxBody::TaskResultReported(TaskResultReported {
            task_id: task.into(),
            attempt,
            attempt_id: attempt_id(WF, task, attempt),
            model_id: "m".into(),
            executor_zone: "EU".into(),
            outcome: if ok {
                TaskOutcome::Succeeded
            } else {
                TaskOutcome::Failed
            },
            output: ok.then(|| b"out".to_vec()),
            output_ref: None,
            error: (!ok).then(|| "HTTP 500".to_owned()),
            retryable: !ok,
            input_tokens: 10,
            output_tokens: 10,
            cost_micros: cost,
            latency_ms: 5,
            routing: Some(RoutingDecision {
                model_id: "m".into(),
                score: 1.0,
                reason: "only model".into(),
                alternatives: vec![],
                calls: vec![ModelCall {
                    model_id: "m".into(),
                    ok,
                    error: None,
                    input_tokens: 10,
                    output_tokens: 10,
                    cost_micros: cost,
                    latency_ms: 5,
                }],
                auction: None,
            }),
            execution: None,
        }),
    )
}

fn submit(n: i64, account: Option<&str>) -> InboxRecord {
    record(n, InboxBody::SubmitWorkflow(workflow(account).to_command()))
}

fn run(records: &[InboxRecord], policy: &Policy) -> (Vec<WorkflowEvent>, WorkflowState) {
    let (all, state) = common::process_all(records, policy);
    // The fold of the events is the state the processor kept.
    let mut folded = WorkflowState::default();
    for e in &all {
        folded.apply(e);
    }
    assert_eq!(
        (folded.status, folded.spent_micros, &folded.budget),
        (state.status, state.spent_micros, &state.budget)
    );
    (all, state)
}

fn types(events: &[WorkflowEvent]) -> Vec<&str> {
    events.iter().map(|e| e.meta.event_type.as_str()).collect()
}

#[test]
fn a_submission_with_an_account_waits_for_the_reservation_of_its_worst_case() {
    let (events, state) = run(&[submit(1, Some("acct"))], &policy(Some(1_000), false));
    assert_eq!(types(&events), ["BudgetRequested"]);
    let EventBody::BudgetRequested(b) = &events[0].body else {
        panic!()
    };
    // first: 2 attempts × 1000, second: 1 × 1000.
    assert_eq!(b.budget.reserved_micros, 3_000);
    assert_eq!(b.budget.account, "acct");
    assert_eq!(b.submission.tasks.len(), 2);
    assert_eq!(state.status, Status::AwaitingBudget);
    assert!(state.awaiting_budget());
}

#[test]
fn the_reservation_accepts_and_dispatches_once() {
    let p = policy(Some(1_000), false);
    let (events, state) = run(
        &[
            submit(1, Some("acct")),
            reply(2, LedgerOutcome::Reserved, 3_000),
            reply(3, LedgerOutcome::Reserved, 3_000),
        ],
        &p,
    );
    assert_eq!(
        types(&events),
        [
            "BudgetRequested",
            "WorkflowAccepted",
            "TaskScheduled",
            "TaskDispatched"
        ]
    );
    let EventBody::WorkflowAccepted(a) = &events[1].body else {
        panic!()
    };
    assert_eq!(a.budget.as_ref().unwrap().reserved_micros, 3_000);
    assert_eq!(state.status, Status::Running);
}

#[test]
fn a_refusal_rejects_naming_the_account() {
    let (events, state) = run(
        &[
            submit(1, Some("acct")),
            reply(2, LedgerOutcome::Refused, 3_000),
            reply(3, LedgerOutcome::Reserved, 3_000),
        ],
        &policy(Some(1_000), false),
    );
    assert_eq!(types(&events), ["BudgetRequested", "WorkflowRejected"]);
    let EventBody::WorkflowRejected(r) = &events[1].body else {
        panic!()
    };
    assert_eq!(r.field.as_deref(), Some("account"));
    assert!(r.reason.contains("10 available"), "{}", r.reason);
    assert_eq!(state.status, Status::Rejected);
    // Nothing was reserved, so there is nothing to settle.
    assert!(!state.needs_settlement());
}

#[test]
fn an_account_is_required_when_configured_and_needs_a_cost_model() {
    let (events, _) = run(&[submit(1, None)], &policy(Some(1_000), true));
    let EventBody::WorkflowRejected(r) = &events[0].body else {
        panic!("{:?}", types(&events))
    };
    assert_eq!(r.field.as_deref(), Some("account"));
    assert!(r.reason.contains("credits.require_account"), "{}", r.reason);

    let (events, _) = run(&[submit(1, Some("acct"))], &policy(None, false));
    let EventBody::WorkflowRejected(r) = &events[0].body else {
        panic!("{:?}", types(&events))
    };
    assert!(r.reason.contains("no cost model"), "{}", r.reason);

    let (events, _) = run(&[submit(1, Some("no spaces"))], &policy(Some(1), false));
    let EventBody::WorkflowRejected(r) = &events[0].body else {
        panic!("{:?}", types(&events))
    };
    assert_eq!(r.field.as_deref(), Some("account"));

    // Without an account and without the requirement, nothing changes.
    let (events, _) = run(&[submit(1, None)], &policy(None, false));
    assert_eq!(types(&events)[0], "WorkflowAccepted");
}

#[test]
fn an_attempt_the_reservation_cannot_cover_is_not_dispatched() {
    // The first task's call cost 2500 where 1000 was the worst case foreseen (a prompt that
    // tokenised longer than estimated): 3000 - 2500 = 500 left, the second task may cost 1000.
    let (events, state) = run(
        &[
            submit(1, Some("acct")),
            reply(2, LedgerOutcome::Reserved, 3_000),
            result(3, "first", 1, true, 2_500),
        ],
        &policy(Some(1_000), false),
    );
    let tail = &types(&events)[4..];
    assert_eq!(
        tail,
        [
            "TaskRouted",
            "TaskCompleted",
            "TaskSkipped",
            "WorkflowFailed"
        ]
    );
    let EventBody::WorkflowFailed(f) = &events.last().unwrap().body else {
        panic!()
    };
    assert!(f.reason.starts_with("budget exhausted"), "{}", f.reason);
    assert!(f.reason.contains("500 of the 3000"), "{}", f.reason);
    assert_eq!(state.spent_micros, 2_500);
    assert!(state.needs_settlement());
}

#[test]
fn a_retry_is_pre_authorised_too() {
    // One attempt of 1000 per task and no slack: the failed first attempt cost 2500 (more
    // than foreseen), so the retry (1000) does not fit in 3000 - 2500.
    let (events, state) = run(
        &[
            submit(1, Some("acct")),
            reply(2, LedgerOutcome::Reserved, 3_000),
            result(3, "first", 1, false, 2_500),
        ],
        &policy(Some(1_000), false),
    );
    let failed = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::TaskFailed(f) => Some(f),
            _ => None,
        })
        .unwrap();
    assert!(!failed.retryable);
    assert!(
        failed.error.contains("budget exhausted"),
        "{}",
        failed.error
    );
    assert_eq!(state.status, Status::Failed);

    // With a cheap failure the retry fits and is dispatched.
    let (events, _) = run(
        &[
            submit(1, Some("acct")),
            reply(2, LedgerOutcome::Reserved, 3_000),
            result(3, "first", 1, false, 0),
        ],
        &policy(Some(1_000), false),
    );
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.body, EventBody::TaskDispatched(d) if d.attempt == 2))
    );
}

#[test]
fn spend_never_passes_the_reservation_when_attempts_keep_to_their_worst_case() {
    // Every attempt costs exactly its worst case and fails until the last: the reservation
    // covers every attempt the retry policy allows, and the workflow completes within it.
    let (events, state) = run(
        &[
            submit(1, Some("acct")),
            reply(2, LedgerOutcome::Reserved, 3_000),
            result(3, "first", 1, false, 1_000),
            result(4, "first", 2, true, 1_000),
            result(5, "second", 1, true, 1_000),
        ],
        &policy(Some(1_000), false),
    );
    assert_eq!(types(&events).last(), Some(&"WorkflowCompleted"));
    assert_eq!(state.spent_micros, 3_000);
    let reserved = state.budget.as_ref().unwrap().reserved_micros;
    assert!(state.spent_micros <= reserved);
}

#[test]
fn a_cancelled_reservation_is_settled_once() {
    let p = policy(Some(1_000), false);
    let settled = |n| {
        record(
            n,
            InboxBody::LedgerReply(LedgerReply {
                account: "acct".into(),
                outcome: LedgerOutcome::Settled,
                amount_micros: 3_000,
                burned_micros: 0,
                released_micros: 3_000,
                reason: None,
            }),
        )
    };
    let (events, state) = run(
        &[
            submit(1, Some("acct")),
            record(
                2,
                InboxBody::CancelWorkflow(CancelWorkflow { reason: None }),
            ),
            reply(3, LedgerOutcome::Reserved, 3_000),
            settled(4),
            settled(5),
        ],
        &p,
    );
    assert_eq!(
        types(&events),
        ["BudgetRequested", "WorkflowCancelled", "BudgetSettled"]
    );
    assert!(state.settled);
    assert!(!state.needs_settlement());
}
