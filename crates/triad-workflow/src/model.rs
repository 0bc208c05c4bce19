//! The workflow model, its builder and its JSON form.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use triad_domain::{SubmitWorkflow, TaskSpec};

/// How often a task is attempted before it fails for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryPolicy {
    pub max_attempts: i32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self { max_attempts: 3 }
    }
}

/// One task of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub id: String,
    /// A template: `{task_id.output}` inserts a dependency's output (filled in the executor,
    /// inside the zone, by the sovereignty rules).
    pub prompt: String,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub specialties: Vec<String>,
    /// Allowed sovereignty zones or groups; empty means the workflow's.
    #[serde(default)]
    pub zones: Vec<String>,
    #[serde(default)]
    pub depends_on: Vec<String>,
    #[serde(default = "default_max_tokens")]
    pub max_tokens: i32,
    /// The task's SLA: how long one attempt may take.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: i64,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Ask eligible models for bids instead of routing directly.
    #[serde(default)]
    pub auction: bool,
}

fn default_max_tokens() -> i32 {
    1024
}

fn default_timeout_ms() -> i64 {
    60_000
}

impl Task {
    pub fn new(id: impl Into<String>, prompt: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            prompt: prompt.into(),
            model: None,
            specialties: vec![],
            zones: vec![],
            depends_on: vec![],
            max_tokens: default_max_tokens(),
            timeout_ms: default_timeout_ms(),
            retry: RetryPolicy::default(),
            auction: false,
        }
    }

    pub fn depends_on<I: IntoIterator<Item = S>, S: Into<String>>(mut self, ids: I) -> Self {
        self.depends_on = ids.into_iter().map(Into::into).collect();
        self
    }

    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = Some(model.into());
        self
    }

    pub fn specialties<I: IntoIterator<Item = S>, S: Into<String>>(mut self, s: I) -> Self {
        self.specialties = s.into_iter().map(Into::into).collect();
        self
    }

    pub fn zones<I: IntoIterator<Item = S>, S: Into<String>>(mut self, zones: I) -> Self {
        self.zones = zones.into_iter().map(Into::into).collect();
        self
    }

    pub fn max_tokens(mut self, n: i32) -> Self {
        self.max_tokens = n;
        self
    }

    pub fn timeout_ms(mut self, ms: i64) -> Self {
        self.timeout_ms = ms;
        self
    }

    pub fn max_attempts(mut self, n: i32) -> Self {
        self.retry.max_attempts = n;
        self
    }

    pub fn auction(mut self, on: bool) -> Self {
        self.auction = on;
        self
    }
}

/// A workflow: named DAG of tasks with default zones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Workflow {
    pub name: String,
    #[serde(default)]
    pub zones: Vec<String>,
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The TRIAD credits account that pays. When set, the workflow runs only on a
    /// reservation of its worst-case cost (docs/credits.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub account: Option<String>,
}

impl Workflow {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            zones: vec![],
            tasks: vec![],
            labels: BTreeMap::new(),
            account: None,
        }
    }

    /// The credits account that pays for the workflow.
    pub fn account(mut self, account: impl Into<String>) -> Self {
        self.account = Some(account.into());
        self
    }

    pub fn zones<I: IntoIterator<Item = S>, S: Into<String>>(mut self, zones: I) -> Self {
        self.zones = zones.into_iter().map(Into::into).collect();
        self
    }

    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    pub fn task(mut self, task: Task) -> Self {
        self.tasks.push(task);
        self
    }

    /// Parses the JSON document form; errors name the line, column and field.
    pub fn from_json(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Parses the YAML document form (the same fields as JSON); errors name the line,
    /// column and field.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml_ng::Error> {
        serde_yaml_ng::from_str(text)
    }

    /// The command body this workflow is submitted as. Prompts travel as bytes (sealed by
    /// the sovereignty kernel once it is on).
    pub fn to_command(&self) -> SubmitWorkflow {
        SubmitWorkflow {
            name: self.name.clone(),
            default_zones: self.zones.clone(),
            tasks: self
                .tasks
                .iter()
                .map(|t| TaskSpec {
                    id: t.id.clone(),
                    prompt: t.prompt.as_bytes().to_vec(),
                    model_hint: t.model.clone(),
                    specialties: t.specialties.clone(),
                    zones: t.zones.clone(),
                    depends_on: t.depends_on.clone(),
                    max_tokens: t.max_tokens,
                    timeout_ms: t.timeout_ms,
                    max_attempts: t.retry.max_attempts,
                    auction: t.auction,
                })
                .collect(),
            labels: self.labels.clone(),
            account: self.account.clone(),
        }
    }
}
