//! The projection's SQL, kept in `projections/workflows/` and loaded by name.

use crate::{Error, Result};

/// Tables, then the analytics views over them.
pub const SCHEMA: &str = include_str!("../../../projections/workflows/schema.sql");
pub const ANALYTICS: &str = include_str!("../../../projections/workflows/analytics.sql");
const APPLY: &str = include_str!("../../../projections/workflows/apply.sql");

/// Every statement of `apply.sql`, by its `-- name:`; the batch statements are listed in
/// the order a batch runs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stmt {
    SearchPath,
    AsyncCommit,
    LockShared,
    LockExclusive,
    Build,
    SetBuild,
    Offsets,
    StoreOffset,
    Notify,
    WorkflowSequences,
    CopyWorkflows,
    CopyTasks,
    CopyEvents,
    ModelFailures,
    UpdateTasks,
    UpsertModels,
    UpdateWorkflows,
    CountTasks,
}

impl Stmt {
    pub const ALL: [Stmt; 18] = [
        Self::SearchPath,
        Self::AsyncCommit,
        Self::LockShared,
        Self::LockExclusive,
        Self::Build,
        Self::SetBuild,
        Self::Offsets,
        Self::StoreOffset,
        Self::Notify,
        Self::WorkflowSequences,
        Self::CopyWorkflows,
        Self::CopyTasks,
        Self::CopyEvents,
        Self::ModelFailures,
        Self::UpdateTasks,
        Self::UpsertModels,
        Self::UpdateWorkflows,
        Self::CountTasks,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::SearchPath => "search_path",
            Self::AsyncCommit => "async_commit",
            Self::LockShared => "lock_shared",
            Self::LockExclusive => "lock_exclusive",
            Self::Build => "build",
            Self::SetBuild => "set_build",
            Self::Offsets => "offsets",
            Self::StoreOffset => "store_offset",
            Self::Notify => "notify",
            Self::WorkflowSequences => "workflow_sequences",
            Self::CopyWorkflows => "copy_workflows",
            Self::CopyTasks => "copy_tasks",
            Self::CopyEvents => "copy_events",
            Self::ModelFailures => "model_failures",
            Self::UpdateTasks => "update_tasks",
            Self::UpsertModels => "upsert_models",
            Self::UpdateWorkflows => "update_workflows",
            Self::CountTasks => "count_tasks",
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
        assert!(sql.text(Stmt::CopyEvents).contains("COPY workflow_events"));
    }

    #[test]
    fn a_missing_statement_is_named() {
        let err = Sql::parse("-- name: search_path\nSELECT 1;\n").unwrap_err();
        assert!(err.to_string().contains("async_commit"), "{err}");
    }
}
