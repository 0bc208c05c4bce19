//! The workflow aggregate: a pure function from (state, inbox record) to events, and the
//! fold of events back into state. The workflow processor (Kafka side, next step of the
//! workflow issue) is a thin loop around [`process`]; everything that decides lives here, so
//! re-processing an input yields byte-identical events.
//!
//! Given/when/then tests are in `tests/aggregate.rs`.

use std::collections::{BTreeMap, BTreeSet};

use triad_domain::{
    Causation, EventBody, EventMetadata, InboxBody, InboxRecord, SubmitWorkflow, TaskCompleted,
    TaskDispatched, TaskFailed, TaskOutcome, TaskResultReported, TaskScheduled, TaskSkipped,
    WorkflowAccepted, WorkflowCancelled, WorkflowCompleted, WorkflowEvent, WorkflowFailed,
    WorkflowRejected, derive_event_id,
};

use crate::{Context, Limits, RetryPolicy, Task, Workflow};

/// What the processor needs to know besides the workflow: the sovereignty policy's zones
/// and groups, the model used when a task names none, and the limits.
#[derive(Debug, Clone)]
pub struct Policy {
    pub zones: Vec<String>,
    pub groups: Vec<(String, Vec<String>)>,
    pub default_model: String,
    pub models: Option<Vec<String>>,
    pub limits: Limits,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Status {
    #[default]
    New,
    Running,
    Completed,
    Failed,
    Cancelled,
    Rejected,
}

impl Status {
    fn is_final(self) -> bool {
        matches!(
            self,
            Self::Completed | Self::Failed | Self::Cancelled | Self::Rejected
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskStatus {
    Pending,
    Dispatched { attempt: i32, attempt_id: String },
    Completed { output: Vec<u8> },
    Failed,
    Skipped,
}

/// The state of one workflow, folded from its events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WorkflowState {
    pub workflow_id: String,
    pub status: Status,
    /// The last sequence number written; the next event gets `sequence + 1`.
    pub sequence: i64,
    pub workflow: Option<Workflow>,
    pub tasks: BTreeMap<String, TaskStatus>,
    pub total_cost_micros: i64,
    pub models_used: BTreeSet<String>,
}

/// Where an input record sits in the log: it names the events it causes.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub record: &'a InboxRecord,
}

fn from_command(cmd: &SubmitWorkflow) -> Workflow {
    Workflow {
        name: cmd.name.clone(),
        zones: cmd.default_zones.clone(),
        tasks: cmd
            .tasks
            .iter()
            .map(|t| Task {
                id: t.id.clone(),
                prompt: String::from_utf8_lossy(&t.prompt).into_owned(),
                model: t.model_hint.clone(),
                specialties: t.specialties.clone(),
                zones: t.zones.clone(),
                depends_on: t.depends_on.clone(),
                max_tokens: t.max_tokens,
                timeout_ms: t.timeout_ms,
                retry: RetryPolicy {
                    max_attempts: t.max_attempts,
                },
                auction: t.auction,
            })
            .collect(),
        labels: cmd.labels.clone(),
    }
}

/// The attempt id executors dedupe by: unique per (workflow, task, attempt).
pub fn attempt_id(workflow_id: &str, task: &str, attempt: i32) -> String {
    format!("{workflow_id}/{task}#{attempt}")
}

impl WorkflowState {
    /// Folds one event body into the state.
    pub fn apply_body(&mut self, body: &EventBody) {
        match body {
            EventBody::WorkflowAccepted(a) => {
                let w = from_command(&SubmitWorkflow {
                    name: a.name.clone(),
                    default_zones: a.default_zones.clone(),
                    tasks: a.tasks.clone(),
                    labels: a.labels.clone(),
                });
                self.tasks = w
                    .tasks
                    .iter()
                    .map(|t| (t.id.clone(), TaskStatus::Pending))
                    .collect();
                self.workflow = Some(w);
                self.status = Status::Running;
            }
            EventBody::WorkflowRejected(_) => self.status = Status::Rejected,
            EventBody::TaskScheduled(_) => {}
            EventBody::TaskDispatched(d) => {
                self.tasks.insert(
                    d.task_id.clone(),
                    TaskStatus::Dispatched {
                        attempt: d.attempt,
                        attempt_id: d.attempt_id.clone(),
                    },
                );
            }
            EventBody::TaskCompleted(c) => {
                self.tasks.insert(
                    c.task_id.clone(),
                    TaskStatus::Completed {
                        output: c.output.clone(),
                    },
                );
                self.total_cost_micros = self.total_cost_micros.saturating_add(c.cost_micros);
                self.models_used.insert(c.model_id.clone());
            }
            EventBody::TaskFailed(f) => {
                if !f.retryable {
                    self.tasks.insert(f.task_id.clone(), TaskStatus::Failed);
                }
            }
            EventBody::TaskSkipped(s) => {
                self.tasks.insert(s.task_id.clone(), TaskStatus::Skipped);
            }
            EventBody::WorkflowCompleted(_) => self.status = Status::Completed,
            EventBody::WorkflowFailed(_) => self.status = Status::Failed,
            EventBody::WorkflowCancelled(_) => self.status = Status::Cancelled,
        }
    }

    /// Folds a stored event (body and sequence).
    pub fn apply(&mut self, event: &WorkflowEvent) {
        self.workflow_id.clone_from(&event.meta.workflow_id);
        self.apply_body(&event.body);
        self.sequence = event.meta.sequence;
    }

    fn task(&self, id: &str) -> Option<&Task> {
        self.workflow.as_ref()?.tasks.iter().find(|t| t.id == id)
    }

    fn completed(&self) -> BTreeSet<&str> {
        self.tasks
            .iter()
            .filter(|(_, s)| matches!(s, TaskStatus::Completed { .. }))
            .map(|(id, _)| id.as_str())
            .collect()
    }
}

/// Decides the events for `input` and returns them with deterministic metadata: ids derived
/// from (topic, partition, offset, index), `occurred_at` from the command, sequence numbers
/// continuing the workflow's. `state` is advanced past them.
pub fn process(
    state: &mut WorkflowState,
    input: &Input<'_>,
    policy: &Policy,
) -> Vec<WorkflowEvent> {
    let record = input.record;
    let causation = Causation {
        command_id: Some(record.meta.command_id.clone()),
        topic: input.topic.to_owned(),
        partition: input.partition,
        offset: input.offset,
    };
    let mut out = Vec::new();
    let mut emit = |state: &mut WorkflowState, body: EventBody| {
        state.apply_body(&body);
        state.sequence += 1;
        let index = u32::try_from(out.len()).unwrap_or(u32::MAX);
        out.push(WorkflowEvent {
            meta: EventMetadata {
                event_id: derive_event_id(&causation, index),
                event_type: body.type_name().to_owned(),
                occurred_at: record.meta.issued_at,
                workflow_id: record.meta.workflow_id.clone(),
                causation: causation.clone(),
                sequence: state.sequence,
                schema_version: 1,
            },
            body,
        });
    };
    let wf_id = record.meta.workflow_id.as_str();
    state.workflow_id = wf_id.to_owned();
    match &record.body {
        InboxBody::SubmitWorkflow(cmd) => {
            // A second submission of the same workflow id is a duplicate: the first decided.
            if state.status != Status::New {
                return out;
            }
            let workflow = from_command(cmd);
            let ctx = Context {
                zones: &policy.zones,
                groups: &policy.groups,
                models: policy.models.as_deref(),
                limits: policy.limits,
            };
            if let Err(errors) = workflow.validate(&ctx) {
                let first = errors.0.first().map(|e| e.field.clone());
                emit(
                    state,
                    EventBody::WorkflowRejected(WorkflowRejected {
                        reason: errors.to_string(),
                        field: first,
                    }),
                );
                return out;
            }
            emit(
                state,
                EventBody::WorkflowAccepted(WorkflowAccepted {
                    name: cmd.name.clone(),
                    default_zones: cmd.default_zones.clone(),
                    tasks: cmd.tasks.clone(),
                    labels: cmd.labels.clone(),
                }),
            );
            for body in dispatch_ready(state, wf_id, policy) {
                emit(state, body);
            }
        }
        InboxBody::CancelWorkflow(c) => {
            if state.status == Status::Running {
                emit(
                    state,
                    EventBody::WorkflowCancelled(WorkflowCancelled {
                        reason: c.reason.clone(),
                    }),
                );
            }
        }
        InboxBody::TaskResultReported(r) => {
            if state.status != Status::Running {
                return out;
            }
            // Only the result of the attempt in flight counts; stale or repeated results of
            // an at-least-once executor are ignored.
            let current = matches!(
                state.tasks.get(&r.task_id),
                Some(TaskStatus::Dispatched { attempt_id, .. }) if *attempt_id == r.attempt_id
            );
            if !current {
                return out;
            }
            for body in on_result(state, r, policy) {
                emit(state, body);
            }
            if state.status == Status::Running {
                for body in dispatch_ready(state, wf_id, policy) {
                    emit(state, body);
                }
                if let Some(done) = finished(state) {
                    emit(state, done);
                }
            }
        }
    }
    out
}

fn on_result(state: &WorkflowState, r: &TaskResultReported, policy: &Policy) -> Vec<EventBody> {
    match r.outcome {
        TaskOutcome::Succeeded => vec![EventBody::TaskCompleted(TaskCompleted {
            task_id: r.task_id.clone(),
            attempt: r.attempt,
            attempt_id: r.attempt_id.clone(),
            model_id: r.model_id.clone(),
            executor_zone: r.executor_zone.clone(),
            output: r.output.clone().unwrap_or_default(),
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_micros: r.cost_micros,
            latency_ms: r.latency_ms,
        })],
        TaskOutcome::Failed => {
            let max = state.task(&r.task_id).map_or(1, |t| t.retry.max_attempts);
            let error = r
                .error
                .clone()
                .unwrap_or_else(|| "unknown error".to_owned());
            let retry = r.retryable && r.attempt < max;
            let mut out = vec![EventBody::TaskFailed(TaskFailed {
                task_id: r.task_id.clone(),
                attempt: r.attempt,
                attempt_id: r.attempt_id.clone(),
                error: error.clone(),
                retryable: retry,
            })];
            if retry {
                out.push(EventBody::TaskScheduled(TaskScheduled {
                    task_id: r.task_id.clone(),
                    attempt: r.attempt + 1,
                }));
                if let Some(task) = state.task(&r.task_id) {
                    out.push(dispatch_with(
                        &state.workflow_id,
                        state,
                        task,
                        r.attempt + 1,
                        policy,
                    ));
                }
            } else {
                for skipped in downstream(state, &r.task_id) {
                    out.push(EventBody::TaskSkipped(TaskSkipped {
                        task_id: skipped,
                        reason: format!("dependency {} failed", r.task_id),
                    }));
                }
                out.push(EventBody::WorkflowFailed(WorkflowFailed {
                    reason: format!(
                        "task {} failed after {} attempt(s): {error}",
                        r.task_id, r.attempt
                    ),
                    failed_task: Some(r.task_id.clone()),
                }));
            }
            out
        }
    }
}

/// Every task that depends, directly or not, on `failed` and has not finished.
fn downstream(state: &WorkflowState, failed: &str) -> Vec<String> {
    let Some(w) = &state.workflow else {
        return vec![];
    };
    let mut hit: BTreeSet<&str> = BTreeSet::from([failed]);
    let mut changed = true;
    while changed {
        changed = false;
        for t in &w.tasks {
            if !hit.contains(t.id.as_str()) && t.depends_on.iter().any(|d| hit.contains(d.as_str()))
            {
                hit.insert(&t.id);
                changed = true;
            }
        }
    }
    w.tasks
        .iter()
        .filter(|t| t.id != failed && hit.contains(t.id.as_str()))
        .filter(|t| matches!(state.tasks.get(&t.id), Some(TaskStatus::Pending)))
        .map(|t| t.id.clone())
        .collect()
}

/// Schedules and dispatches every task whose dependencies all completed.
fn dispatch_ready(state: &WorkflowState, wf_id: &str, policy: &Policy) -> Vec<EventBody> {
    let Some(w) = &state.workflow else {
        return vec![];
    };
    let completed = state.completed();
    let mut out = Vec::new();
    for t in &w.tasks {
        let pending = matches!(state.tasks.get(&t.id), Some(TaskStatus::Pending));
        if pending && t.depends_on.iter().all(|d| completed.contains(d.as_str())) {
            out.push(EventBody::TaskScheduled(TaskScheduled {
                task_id: t.id.clone(),
                attempt: 1,
            }));
            out.push(dispatch_with(wf_id, state, t, 1, policy));
        }
    }
    out
}

/// The zone and model of an attempt. Until the router lands this is deterministic and
/// simple: the first allowed zone (groups expanded, sorted) and the task's model hint or the
/// policy's default model.
fn dispatch_with(
    wf_id: &str,
    state: &WorkflowState,
    task: &Task,
    attempt: i32,
    policy: &Policy,
) -> EventBody {
    let names = if task.zones.is_empty() {
        state
            .workflow
            .as_ref()
            .map(|w| w.zones.clone())
            .unwrap_or_default()
    } else {
        task.zones.clone()
    };
    let zones: BTreeSet<&str> = names
        .iter()
        .flat_map(|n| match policy.groups.iter().find(|(g, _)| g == n) {
            Some((_, zs)) => zs.iter().map(String::as_str).collect::<Vec<_>>(),
            None => vec![n.as_str()],
        })
        .collect();
    EventBody::TaskDispatched(TaskDispatched {
        task_id: task.id.clone(),
        attempt,
        attempt_id: attempt_id(wf_id, &task.id, attempt),
        zone: zones.first().map(|z| (*z).to_owned()).unwrap_or_default(),
        model_id: task
            .model
            .clone()
            .unwrap_or_else(|| policy.default_model.clone()),
    })
}

/// `WorkflowCompleted` once every task completed: outputs of the leaf tasks (those nothing
/// depends on), total cost and models used.
fn finished(state: &WorkflowState) -> Option<EventBody> {
    let w = state.workflow.as_ref()?;
    if !state
        .tasks
        .values()
        .all(|s| matches!(s, TaskStatus::Completed { .. }))
    {
        return None;
    }
    let depended: BTreeSet<&str> = w
        .tasks
        .iter()
        .flat_map(|t| t.depends_on.iter().map(String::as_str))
        .collect();
    let outputs = w
        .tasks
        .iter()
        .filter(|t| !depended.contains(t.id.as_str()))
        .filter_map(|t| match state.tasks.get(&t.id) {
            Some(TaskStatus::Completed { output }) => {
                Some((t.id.clone(), serde_bytes::ByteBuf::from(output.clone())))
            }
            _ => None,
        })
        .collect();
    Some(EventBody::WorkflowCompleted(WorkflowCompleted {
        outputs,
        total_cost_micros: state.total_cost_micros,
        models_used: state.models_used.iter().cloned().collect(),
    }))
}

impl Status {
    /// True once the workflow can produce no more events.
    pub fn finished(self) -> bool {
        self.is_final()
    }
}
