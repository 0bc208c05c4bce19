//! The projection's SQL, kept in `projections/workflows/` and loaded by name.

use crate::{Error, Result};

/// Tables, then the analytics views over them.
pub const SCHEMA: &str = include_str!("../../../projections/workflows/schema.sql");
pub const ANALYTICS: &str = include_str!("../../../projections/workflows/analytics.sql");
const APPLY: &str = include_str!("../../../projections/workflows/apply.sql");

/// Every statement of `apply.sql`, by its `-- name:`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stmt {
    SearchPath,
    LockShared,
    LockExclusive,
    Build,
    SetBuild,
    Offsets,
    StoreOffset,
    Notify,
    WorkflowSequences,
    InsertEvent,
    InsertEvents,
    TouchWorkflow,
    WorkflowAccepted,
    TaskDeclared,
    WorkflowRejected,
    TaskScheduled,
    TaskDispatched,
    WorkflowRunning,
    TaskCompleted,
    ModelCompleted,
    TaskFailed,
    ModelFailed,
    TaskSkipped,
    CountTasks,
    WorkflowCompleted,
    WorkflowFailed,
    WorkflowCancelled,
    ResultDiscarded,
}

impl Stmt {
    pub const ALL: [Stmt; 28] = [
        Self::SearchPath,
        Self::LockShared,
        Self::LockExclusive,
        Self::Build,
        Self::SetBuild,
        Self::Offsets,
        Self::StoreOffset,
        Self::Notify,
        Self::WorkflowSequences,
        Self::InsertEvent,
        Self::InsertEvents,
        Self::TouchWorkflow,
        Self::WorkflowAccepted,
        Self::TaskDeclared,
        Self::WorkflowRejected,
        Self::TaskScheduled,
        Self::TaskDispatched,
        Self::WorkflowRunning,
        Self::TaskCompleted,
        Self::ModelCompleted,
        Self::TaskFailed,
        Self::ModelFailed,
        Self::TaskSkipped,
        Self::CountTasks,
        Self::WorkflowCompleted,
        Self::WorkflowFailed,
        Self::WorkflowCancelled,
        Self::ResultDiscarded,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::SearchPath => "search_path",
            Self::LockShared => "lock_shared",
            Self::LockExclusive => "lock_exclusive",
            Self::Build => "build",
            Self::SetBuild => "set_build",
            Self::Offsets => "offsets",
            Self::StoreOffset => "store_offset",
            Self::Notify => "notify",
            Self::WorkflowSequences => "workflow_sequences",
            Self::InsertEvent => "insert_event",
            Self::InsertEvents => "insert_events",
            Self::TouchWorkflow => "touch_workflow",
            Self::WorkflowAccepted => "workflow_accepted",
            Self::TaskDeclared => "task_declared",
            Self::WorkflowRejected => "workflow_rejected",
            Self::TaskScheduled => "task_scheduled",
            Self::TaskDispatched => "task_dispatched",
            Self::WorkflowRunning => "workflow_running",
            Self::TaskCompleted => "task_completed",
            Self::ModelCompleted => "model_completed",
            Self::TaskFailed => "task_failed",
            Self::ModelFailed => "model_failed",
            Self::TaskSkipped => "task_skipped",
            Self::CountTasks => "count_tasks",
            Self::WorkflowCompleted => "workflow_completed",
            Self::WorkflowFailed => "workflow_failed",
            Self::WorkflowCancelled => "workflow_cancelled",
            Self::ResultDiscarded => "result_discarded",
        }
    }
}

/// The text of every [`Stmt`], checked complete when loaded.
#[derive(Debug, Clone)]
pub struct Sql {
    texts: Vec<String>,
}

impl Sql {
    pub fn load() -> Result<Self> {
        Self::parse(APPLY)
    }

    /// Splits `text` at `-- name: <name>` lines; comments and blank lines inside a section
    /// are kept (PostgreSQL ignores them).
    pub fn parse(text: &str) -> Result<Self> {
        let mut sections: Vec<(String, String)> = Vec::new();
        for line in text.lines() {
            if let Some(name) = line.trim().strip_prefix("-- name:") {
                sections.push((name.trim().to_owned(), String::new()));
            } else if let Some((_, body)) = sections.last_mut() {
                body.push_str(line);
                body.push('\n');
            }
        }
        let mut texts = Vec::with_capacity(Stmt::ALL.len());
        for stmt in Stmt::ALL {
            let body = sections
                .iter()
                .find(|(name, _)| name == stmt.name())
                .map(|(_, body)| body.trim().trim_end_matches(';').to_owned())
                .filter(|body| !body.is_empty())
                .ok_or(Error::MissingStatement(stmt.name()))?;
            texts.push(body);
        }
        Ok(Self { texts })
    }

    pub fn text(&self, stmt: Stmt) -> &str {
        // `parse` filled one text per `Stmt::ALL` entry, in that order.
        let index = Stmt::ALL.iter().position(|s| *s == stmt).unwrap_or(0);
        self.texts.get(index).map_or("", String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_statement_is_in_apply_sql() {
        let sql = Sql::load().unwrap();
        for stmt in Stmt::ALL {
            assert!(!sql.text(stmt).is_empty(), "{}", stmt.name());
            assert!(!sql.text(stmt).ends_with(';'), "{}", stmt.name());
        }
        assert!(
            sql.text(Stmt::InsertEvent)
                .starts_with("INSERT INTO workflow_events")
        );
    }

    #[test]
    fn a_missing_statement_is_named() {
        let err = Sql::parse("-- name: search_path\nSELECT 1;\n").unwrap_err();
        assert!(err.to_string().contains("lock_shared"), "{err}");
    }
}
