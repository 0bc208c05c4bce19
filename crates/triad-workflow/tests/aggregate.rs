//! Given the events so far, when an inbox record arrives, then these events follow.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use triad_domain::{
    CancelWorkflow, EventBody, InboxBody, InboxRecord, TaskOutcome, TaskResultReported,
    TaskTimerFired, TimerKind, WorkflowEvent, fixtures,
};
use triad_workflow::aggregate::{
    Input, Policy, Status, WorkflowState, attempt_id, pending_requests, process, task_request,
};
use triad_workflow::{Task, Workflow};

const WF: &str = "wf-1";
const INBOX: &str = "triad.workflow-inbox";

fn policy() -> Policy {
    Policy {
        groups: vec![(
            "CONUS".into(),
            vec!["US-EAST".into(), "US-WEST".into(), "US-CENTRAL".into()],
        )],
        ..Policy::new(
            ["US-EAST", "US-WEST", "US-CENTRAL", "EU-WEST"],
            "triad-local",
        )
    }
}

fn record(n: i64, body: InboxBody) -> InboxRecord {
    common::record(WF, n, body)
}

fn research() -> Workflow {
    Workflow::new("research")
        .zones(["CONUS"])
        .task(Task::new("generate_questions", "Generate questions").max_attempts(2))
        .task(
            Task::new("answer", "Answer: {generate_questions.output}")
                .depends_on(["generate_questions"]),
        )
}

fn submit(n: i64) -> InboxRecord {
    record(n, InboxBody::SubmitWorkflow(research().to_command()))
}

fn result(n: i64, task: &str, attempt: i32, outcome: TaskOutcome, retryable: bool) -> InboxRecord {
    record(
        n,
        InboxBody::TaskResultReported(TaskResultReported {
            task_id: task.into(),
            attempt,
            attempt_id: attempt_id(WF, task, attempt),
            model_id: "triad-local".into(),
            executor_zone: "US-CENTRAL".into(),
            outcome,
            output: (outcome == TaskOutcome::Succeeded)
                .then(|| format!("out of {task}").into_bytes()),
            output_ref: None,
            error: (outcome == TaskOutcome::Failed).then(|| "model timed out".to_owned()),
            retryable,
            input_tokens: 10,
            output_tokens: 5,
            cost_micros: 100,
            latency_ms: 7,
            routing: None,
            execution: None,
        }),
    )
}

/// Feeds records at consecutive offsets, returning all events and the final state.
fn run(records: &[InboxRecord]) -> (Vec<WorkflowEvent>, WorkflowState) {
    let mut state = WorkflowState::default();
    let mut all = Vec::new();
    for (offset, r) in records.iter().enumerate() {
        let input = Input {
            topic: INBOX,
            partition: 0,
            offset: offset as i64,
            record: r,
        };
        all.extend(process(&mut state, &input, &policy()));
    }
    (all, state)
}

/// What the workflow bills: the cost of completed tasks.
fn state_cost(events: &[WorkflowEvent]) -> i64 {
    let mut state = WorkflowState::default();
    for e in events {
        state.apply(e);
    }
    state.total_cost_micros
}

fn timer(n: i64, task: &str, attempt: i32, kind: TimerKind, zone: &str) -> InboxRecord {
    record(
        n,
        InboxBody::TaskTimerFired(TaskTimerFired {
            task_id: task.into(),
            attempt,
            attempt_id: attempt_id(WF, task, attempt),
            kind,
            zone: zone.into(),
        }),
    )
}

fn dispatched(events: &[WorkflowEvent]) -> Vec<(String, i32, String)> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TaskDispatched(d) => Some((d.task_id.clone(), d.attempt, d.zone.clone())),
            _ => None,
        })
        .collect()
}

fn types(events: &[WorkflowEvent]) -> Vec<&str> {
    events.iter().map(|e| e.meta.event_type.as_str()).collect()
}

#[test]
fn submission_accepts_and_dispatches_the_roots() {
    let (events, state) = run(&[submit(1)]);
    assert_eq!(
        types(&events),
        ["WorkflowAccepted", "TaskScheduled", "TaskDispatched"]
    );
    assert_eq!(
        events.iter().map(|e| e.meta.sequence).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert!(
        events
            .iter()
            .all(|e| e.meta.occurred_at == 1_000_000 && e.meta.causation.offset == 0)
    );
    let EventBody::TaskDispatched(d) = &events[2].body else {
        panic!()
    };
    // The first allowed zone (CONUS expanded, sorted); no hint, so the zone's router picks.
    assert_eq!((d.zone.as_str(), d.model_id.as_str()), ("US-CENTRAL", ""));
    assert_eq!(d.attempt_id, "wf-1/generate_questions#1");
    assert_eq!(state.status, Status::Running);
}

#[test]
fn reprocessing_an_input_yields_identical_events() {
    let records = [
        submit(1),
        result(2, "generate_questions", 1, TaskOutcome::Succeeded, false),
    ];
    let (first, _) = run(&records);
    let (second, _) = run(&records);
    assert_eq!(first, second);
    // Ids are distinct within the run and derived from the input position.
    let ids: std::collections::BTreeSet<_> =
        first.iter().map(|e| e.meta.event_id.clone()).collect();
    assert_eq!(ids.len(), first.len());
}

#[test]
fn the_workflow_runs_to_completion_with_leaf_outputs() {
    let (events, state) = run(&[
        submit(1),
        result(2, "generate_questions", 1, TaskOutcome::Succeeded, false),
        result(3, "answer", 1, TaskOutcome::Succeeded, false),
    ]);
    assert_eq!(
        types(&events[3..]),
        [
            "TaskCompleted",
            "TaskScheduled",
            "TaskDispatched",
            "TaskCompleted",
            "WorkflowCompleted"
        ]
    );
    let EventBody::WorkflowCompleted(done) = &events.last().unwrap().body else {
        panic!()
    };
    assert_eq!(done.outputs.keys().collect::<Vec<_>>(), ["answer"]);
    assert_eq!(done.outputs["answer"].as_ref(), b"out of answer");
    assert_eq!(done.total_cost_micros, 200);
    assert_eq!(done.models_used, ["triad-local"]);
    assert_eq!(state.status, Status::Completed);
    assert_eq!(events.last().unwrap().meta.sequence, events.len() as i64);
}

#[test]
fn duplicate_submissions_do_nothing_and_stale_results_are_recorded_not_applied() {
    let (events, _) = run(&[
        submit(1),
        submit(2),
        result(3, "generate_questions", 7, TaskOutcome::Succeeded, false),
        result(4, "answer", 1, TaskOutcome::Succeeded, false),
        result(5, "generate_questions", 1, TaskOutcome::Succeeded, false),
        result(6, "generate_questions", 1, TaskOutcome::Succeeded, false),
    ]);
    // The second submission made nothing; one result completed the task.
    assert!(events.iter().all(|e| e.meta.causation.offset != 1));
    assert_eq!(
        events
            .iter()
            .filter(|e| e.meta.event_type == "TaskCompleted")
            .count(),
        1
    );
    // Every other result is recorded as discarded, with its spend and why.
    let discarded: Vec<(i64, &str, i64)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TaskResultDiscarded(d) => {
                Some((e.meta.causation.offset, d.reason.as_str(), d.cost_micros))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        discarded,
        [
            (
                2,
                "attempt wf-1/generate_questions#7 is no longer in flight",
                100
            ),
            (3, "attempt wf-1/answer#1 is no longer in flight", 100),
            (5, "duplicate result: the task had already completed", 100),
        ]
    );
    // Discarded spend is never billed.
    assert_eq!(state_cost(&events), 100);
}

#[test]
fn a_retryable_failure_schedules_the_next_attempt() {
    let (events, _) = run(&[
        submit(1),
        result(2, "generate_questions", 1, TaskOutcome::Failed, true),
    ]);
    assert_eq!(
        types(&events[3..]),
        ["TaskFailed", "TaskScheduled", "TaskDispatched"]
    );
    let EventBody::TaskDispatched(d) = &events[5].body else {
        panic!()
    };
    assert_eq!(
        (d.attempt, d.attempt_id.as_str()),
        (2, "wf-1/generate_questions#2")
    );
}

#[test]
fn the_last_attempt_failing_skips_downstream_and_fails_the_workflow() {
    let (events, state) = run(&[
        submit(1),
        result(2, "generate_questions", 1, TaskOutcome::Failed, true),
        result(3, "generate_questions", 2, TaskOutcome::Failed, true),
    ]);
    assert_eq!(
        types(&events[6..]),
        ["TaskFailed", "TaskSkipped", "WorkflowFailed"]
    );
    let EventBody::WorkflowFailed(f) = &events.last().unwrap().body else {
        panic!()
    };
    assert_eq!(f.failed_task.as_deref(), Some("generate_questions"));
    assert!(
        f.reason.contains("after 2 attempt(s): model timed out"),
        "{}",
        f.reason
    );
    assert_eq!(state.status, Status::Failed);
}

#[test]
fn an_invalid_workflow_is_rejected_naming_the_field() {
    let bad = Workflow::new("bad")
        .zones(["MARS"])
        .task(Task::new("a", "p"));
    let (events, state) = run(&[record(1, InboxBody::SubmitWorkflow(bad.to_command()))]);
    assert_eq!(types(&events), ["WorkflowRejected"]);
    let EventBody::WorkflowRejected(r) = &events[0].body else {
        panic!()
    };
    assert_eq!(r.field.as_deref(), Some("zones[0]"));
    assert!(
        r.reason.contains("unknown zone or group \"MARS\""),
        "{}",
        r.reason
    );
    assert_eq!(state.status, Status::Rejected);
}

#[test]
fn cancellation_stops_the_workflow_and_later_results_are_discarded() {
    let (events, state) = run(&[
        submit(1),
        record(
            2,
            InboxBody::CancelWorkflow(CancelWorkflow {
                reason: Some("user".into()),
            }),
        ),
        result(3, "generate_questions", 1, TaskOutcome::Succeeded, false),
        record(
            4,
            InboxBody::CancelWorkflow(CancelWorkflow { reason: None }),
        ),
    ]);
    assert_eq!(
        types(&events),
        [
            "WorkflowAccepted",
            "TaskScheduled",
            "TaskDispatched",
            "WorkflowCancelled",
            "TaskResultDiscarded"
        ]
    );
    let EventBody::TaskResultDiscarded(d) = &events[4].body else {
        panic!()
    };
    assert_eq!(d.reason, "the workflow was cancelled");
    assert_eq!(state.status, Status::Cancelled);
}

#[test]
fn state_rebuilt_from_the_events_equals_the_live_state() {
    let (events, live) = run(&[
        submit(1),
        result(2, "generate_questions", 1, TaskOutcome::Failed, true),
        result(3, "generate_questions", 2, TaskOutcome::Succeeded, false),
    ]);
    let mut rebuilt = WorkflowState::default();
    for e in &events {
        rebuilt.apply(e);
    }
    assert_eq!(rebuilt, live);
}

#[test]
fn a_routing_decision_is_recorded_before_the_outcome() {
    let mut r = result(2, "generate_questions", 1, TaskOutcome::Succeeded, false);
    if let InboxBody::TaskResultReported(t) = &mut r.body {
        t.routing = Some(fixtures::routing_decision());
    }
    let (events, _) = run(&[submit(1), r]);
    assert_eq!(types(&events[3..5]), ["TaskRouted", "TaskCompleted"]);
    let EventBody::TaskRouted(routed) = &events[3].body else {
        panic!()
    };
    assert_eq!(routed.decision, fixtures::routing_decision());
    assert_eq!(routed.executor_zone, "US-CENTRAL");
}

#[test]
fn an_auction_is_recorded_bid_by_bid_then_the_award_then_the_routing() {
    let mut r = result(2, "generate_questions", 1, TaskOutcome::Succeeded, false);
    if let InboxBody::TaskResultReported(t) = &mut r.body {
        t.routing = Some(triad_domain::RoutingDecision {
            auction: Some(fixtures::auction()),
            ..fixtures::routing_decision()
        });
    }
    let records = [submit(1), r];
    let (events, _) = run(&records);
    assert_eq!(
        types(&events[3..]),
        [
            "BidPlaced",
            "BidPlaced",
            "BidPlaced",
            "BidPlaced",
            "AuctionClosed",
            "TaskRouted",
            "TaskCompleted",
            "TaskScheduled",
            "TaskDispatched"
        ]
    );
    let bids: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::BidPlaced(b) => Some((b.bid.model_id.clone(), b.bid.status.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        bids,
        fixtures::auction()
            .bids
            .iter()
            .map(|b| (b.model_id.clone(), b.status.clone()))
            .collect::<Vec<_>>()
    );
    let EventBody::AuctionClosed(closed) = &events[7].body else {
        panic!()
    };
    assert_eq!(closed.winner.as_deref(), Some("triad-local"));
    assert_eq!((closed.price_micros, closed.bids), (Some(10), 4));
    // The routing decision that follows carries no copy of the auction.
    let EventBody::TaskRouted(routed) = &events[8].body else {
        panic!()
    };
    assert_eq!(routed.decision, fixtures::routing_decision());
    // A pure function of the input: the same record again gives byte-identical events.
    let (again, _) = run(&records);
    assert_eq!(events, again);
}

#[test]
fn a_deadline_retries_in_the_same_zone_and_uses_the_budget() {
    let (events, state) = run(&[
        submit(1),
        timer(
            2,
            "generate_questions",
            1,
            TimerKind::Deadline,
            "US-CENTRAL",
        ),
        timer(
            3,
            "generate_questions",
            2,
            TimerKind::Deadline,
            "US-CENTRAL",
        ),
    ]);
    assert_eq!(
        dispatched(&events),
        [
            ("generate_questions".into(), 1, "US-CENTRAL".into()),
            ("generate_questions".into(), 2, "US-CENTRAL".into()),
        ]
    );
    // max_attempts(2): the second deadline fails the task and the workflow.
    let EventBody::WorkflowFailed(f) = &events.last().unwrap().body else {
        panic!("{:?}", types(&events))
    };
    assert!(
        f.reason.contains("no result within the task's timeout"),
        "{}",
        f.reason
    );
    assert_eq!(state.status, Status::Failed);
}

#[test]
fn an_unclaimed_zone_moves_the_task_to_the_next_allowed_zone_without_using_the_budget() {
    let (events, state) = run(&[
        submit(1),
        timer(
            2,
            "generate_questions",
            1,
            TimerKind::Unclaimed,
            "US-CENTRAL",
        ),
        timer(3, "generate_questions", 2, TimerKind::Unclaimed, "US-EAST"),
        result(4, "generate_questions", 3, TaskOutcome::Failed, true),
        result(5, "generate_questions", 4, TaskOutcome::Succeeded, false),
    ]);
    assert_eq!(
        dispatched(&events)
            .into_iter()
            .filter(|(t, ..)| t == "generate_questions")
            .collect::<Vec<_>>(),
        [
            ("generate_questions".into(), 1, "US-CENTRAL".into()),
            ("generate_questions".into(), 2, "US-EAST".into()),
            ("generate_questions".into(), 3, "US-WEST".into()),
            // The model failure (budget 2) retries in the zone that works.
            ("generate_questions".into(), 4, "US-WEST".into()),
        ]
    );
    assert_eq!(state.failures["generate_questions"], 1);
    assert_eq!(state.unavailable["generate_questions"].len(), 2);
    assert_eq!(state.status, Status::Running);
}

#[test]
fn no_available_zone_fails_the_task_with_the_zones_tried() {
    let (events, state) = run(&[
        submit(1),
        timer(
            2,
            "generate_questions",
            1,
            TimerKind::Unclaimed,
            "US-CENTRAL",
        ),
        timer(3, "generate_questions", 2, TimerKind::Unclaimed, "US-EAST"),
        timer(4, "generate_questions", 3, TimerKind::Unclaimed, "US-WEST"),
    ]);
    assert_eq!(
        types(&events[events.len() - 3..]),
        ["TaskFailed", "TaskSkipped", "WorkflowFailed"]
    );
    let EventBody::WorkflowFailed(f) = &events.last().unwrap().body else {
        panic!()
    };
    assert!(
        f.reason
            .contains("no other allowed zone is available (tried US-CENTRAL, US-EAST, US-WEST)"),
        "{}",
        f.reason
    );
    assert_eq!(state.status, Status::Failed);
}

#[test]
fn a_timer_of_a_finished_attempt_decides_nothing() {
    let (events, _) = run(&[
        submit(1),
        result(2, "generate_questions", 1, TaskOutcome::Succeeded, false),
        timer(
            3,
            "generate_questions",
            1,
            TimerKind::Deadline,
            "US-CENTRAL",
        ),
    ]);
    assert!(events.iter().all(|e| e.meta.causation.offset != 2));
}

#[test]
fn the_request_of_a_dispatched_task_carries_its_dependencies_outputs() {
    let (events, state) = run(&[
        submit(1),
        result(2, "generate_questions", 1, TaskOutcome::Succeeded, false),
    ]);
    let request = task_request(&state, "answer", &policy()).unwrap();
    let dispatched = events
        .iter()
        .rev()
        .find(|e| e.meta.event_type == "TaskDispatched")
        .unwrap();
    assert_eq!(request.dispatched_event_id, dispatched.meta.event_id);
    assert_eq!(request.issued_at, dispatched.meta.occurred_at);
    assert_eq!(request.attempt_id, "wf-1/answer#1");
    assert_eq!(request.prompt, b"Answer: {generate_questions.output}");
    assert_eq!(
        request.inputs["generate_questions"].as_ref(),
        b"out of generate_questions"
    );
    assert_eq!(request.allowed_zones, ["US-CENTRAL", "US-EAST", "US-WEST"]);
    // The outbox after a restart: the state folded from the log yields the same request.
    let mut rebuilt = WorkflowState::default();
    for e in &events {
        rebuilt.apply(e);
    }
    assert_eq!(pending_requests(&rebuilt, &policy()), [request]);
}
