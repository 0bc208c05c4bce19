//! Shared by the aggregate's tests.
#![allow(dead_code)]

use triad_domain::{CommandMetadata, InboxBody, InboxRecord};

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
