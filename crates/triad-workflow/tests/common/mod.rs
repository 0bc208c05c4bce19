//! Shared by the aggregate's tests.
#![allow(dead_code)]

use triad_domain::{CommandMetadata, InboxBody, InboxRecord, WorkflowEvent};
use triad_workflow::aggregate::{Input, Policy, WorkflowState, process};

/// The `n`-th inbox record of workflow `workflow`: ids and time derived from `n`.
pub fn record(workflow: &str, n: i64, body: InboxBody) -> InboxRecord {
    InboxRecord {
        meta: CommandMetadata {
            command_id: format!("cmd-{n}"),
            idempotency_key: format!("key-{n}"),
            workflow_id: workflow.into(),
            issued_at: 1_000_000 * n,
            actor: None,
            tenant: None,
            schema_version: triad_domain::INBOX_SCHEMA_VERSION,
        },
        body,
    }
}

/// Runs `records` through the aggregate from a fresh state (inbox offsets 0, 1, …); returns
/// every event written and the final state.
pub fn process_all(
    records: &[InboxRecord],
    policy: &Policy,
) -> (Vec<WorkflowEvent>, WorkflowState) {
    let mut state = WorkflowState::default();
    let mut all = Vec::new();
    for (offset, r) in records.iter().enumerate() {
        let input = Input {
            topic: "triad.workflow-inbox",
            partition: 0,
            offset: offset as i64,
            record: r,
        };
        all.extend(process(&mut state, &input, policy));
    }
    (all, state)
}
