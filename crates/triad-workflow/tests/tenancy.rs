//! Tenancy in the aggregate (docs/access.md): a workflow records the tenant it was submitted
//! for, a tenant's workflow spends only that tenant's accounts, and a cancellation from
//! another tenant changes nothing — whatever wrote the command.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use triad_domain::{CancelWorkflow, EventBody, InboxBody, InboxRecord, WorkflowEvent};
use triad_workflow::aggregate::{Policy, Status, WorkflowState};
use triad_workflow::{Task, Workflow};

const WF: &str = "wf-tenancy";

fn policy() -> Policy {
    Policy::new(["EU"], "triad-local")
}

fn as_tenant(n: i64, tenant: Option<&str>, body: InboxBody) -> InboxRecord {
    let mut r = common::record(WF, n, body);
    r.meta.tenant = tenant.map(str::to_owned);
    r
}

fn submit(n: i64, tenant: Option<&str>, account: Option<&str>) -> InboxRecord {
    let w = Workflow::new("one-step")
        .zones(["EU"])
        .task(Task::new("only", "Write a haiku"));
    let w = match account {
        Some(a) => w.account(a),
        None => w,
    };
    as_tenant(n, tenant, InboxBody::SubmitWorkflow(w.to_command()))
}

fn cancel(n: i64, tenant: Option<&str>) -> InboxRecord {
    as_tenant(
        n,
        tenant,
        InboxBody::CancelWorkflow(CancelWorkflow {
            reason: Some("stop".into()),
        }),
    )
}

fn run(records: &[InboxRecord]) -> (Vec<WorkflowEvent>, WorkflowState) {
    common::process_all(records, &policy())
}

#[test]
fn the_tenant_is_recorded_and_survives_the_fold() {
    let (events, state) = run(&[submit(1, Some("acme"), None)]);
    let EventBody::WorkflowAccepted(a) = &events[0].body else {
        panic!("{:?}", events[0].body)
    };
    assert_eq!(a.tenant.as_deref(), Some("acme"));
    let mut folded = WorkflowState::default();
    for e in &events {
        folded.apply(e);
    }
    assert_eq!(folded.tenant.as_deref(), Some("acme"));
    assert_eq!(state.tenant, folded.tenant);
}

#[test]
fn a_tenant_spends_only_its_own_accounts() {
    for account in ["beta:main", "acme", "acmecorp:main", "main"] {
        let (events, state) = run(&[submit(1, Some("acme"), Some(account))]);
        assert_eq!(state.status, Status::Rejected, "{account}");
        let EventBody::WorkflowRejected(r) = &events[0].body else {
            panic!("{:?}", events[0].body)
        };
        assert_eq!(r.field.as_deref(), Some("account"));
        assert!(
            r.reason.contains("does not belong to tenant"),
            "{}",
            r.reason
        );
        assert_eq!(r.tenant.as_deref(), Some("acme"));
    }
    // Its own account passes this check (and then needs a cost model, which this policy
    // lacks: the rejection is about the cost model, not the owner).
    let (events, _) = run(&[submit(1, Some("acme"), Some("acme:main"))]);
    let EventBody::WorkflowRejected(r) = &events[0].body else {
        panic!("{:?}", events[0].body)
    };
    assert!(r.reason.contains("no cost model"), "{}", r.reason);
    // The operator's door (no tenant) names any account.
    let (events, _) = run(&[submit(1, None, Some("beta:main"))]);
    let EventBody::WorkflowRejected(r) = &events[0].body else {
        panic!("{:?}", events[0].body)
    };
    assert!(r.reason.contains("no cost model"), "{}", r.reason);
}

#[test]
fn another_tenants_cancellation_changes_nothing() {
    let (events, state) = run(&[submit(1, Some("acme"), None), cancel(2, Some("beta"))]);
    assert!(
        !events
            .iter()
            .any(|e| matches!(e.body, EventBody::WorkflowCancelled(_)))
    );
    assert_eq!(state.status, Status::Running);

    let (events, state) = run(&[submit(1, Some("acme"), None), cancel(2, Some("acme"))]);
    assert!(matches!(
        events.last().map(|e| &e.body),
        Some(EventBody::WorkflowCancelled(_))
    ));
    assert_eq!(state.status, Status::Cancelled);

    // No tenant on the command: an operator (or the CLI) cancels any workflow.
    let (_, state) = run(&[submit(1, Some("acme"), None), cancel(2, None)]);
    assert_eq!(state.status, Status::Cancelled);
}
