//! What the `workflows` projection writes for one event: pure, no I/O, so the mapping from
//! events to statements is tested without a database.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use triad_domain::{EventBody, WorkflowEvent};

use crate::sql::Stmt;

/// A statement parameter: every batch statement takes its rows as parallel arrays.
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    TextArray(Vec<String>),
    OptTextArray(Vec<Option<String>>),
    IntArray(Vec<i32>),
    OptIntArray(Vec<Option<i32>>),
    BigIntArray(Vec<i64>),
    OptBigIntArray(Vec<Option<i64>>),
    BoolArray(Vec<bool>),
    OptBytesArray(Vec<Option<Vec<u8>>>),
    TimeArray(Vec<SystemTime>),
    OptTimeArray(Vec<Option<SystemTime>>),
}

/// An event time (microseconds since the Unix epoch) as a `timestamptz` parameter.
pub fn time(micros: i64) -> SystemTime {
    let d = Duration::from_micros(micros.unsigned_abs());
    let t = if micros >= 0 {
        UNIX_EPOCH.checked_add(d)
    } else {
        UNIX_EPOCH.checked_sub(d)
    };
    t.unwrap_or(UNIX_EPOCH)
}

fn times(micros: impl Iterator<Item = i64>) -> Param {
    Param::TimeArray(micros.map(time).collect())
}

fn opt_times(micros: impl Iterator<Item = Option<i64>>) -> Param {
    Param::OptTimeArray(micros.map(|m| m.map(time)).collect())
}

#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub stmt: Stmt,
    pub params: Vec<Param>,
}

/// A workflow first seen in the batch (accepted or rejected): the whole row, with the
/// batch's later changes folded in before it is inserted.
#[derive(Debug, Clone, PartialEq)]
pub struct NewWorkflow {
    pub name: Option<String>,
    pub status: &'static str,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub task_count: i32,
    pub tasks_completed: i32,
    pub tasks_failed: i32,
    pub tasks_skipped: i32,
    pub total_cost_micros: i64,
    pub models_used: Vec<String>,
    /// JSON text.
    pub labels: String,
    pub default_zones: Vec<String>,
    pub error: Option<String>,
    pub error_field: Option<String>,
    pub failed_task: Option<String>,
    pub last_sequence: i64,
    pub updated_at: i64,
    pub tenant: Option<String>,
}

/// A task declared in the batch: the whole row, likewise.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NewTask {
    pub status: &'static str,
    pub depends_on: Vec<String>,
    pub zones: Vec<String>,
    pub attempts: i32,
    pub model: Option<String>,
    pub zone: Option<String>,
    pub latency_ms: Option<i64>,
    pub input_tokens: Option<i64>,
    pub output_tokens: Option<i64>,
    pub cost_micros: Option<i64>,
    pub output: Option<Vec<u8>>,
    pub output_sha256: Option<String>,
    pub output_size: Option<i64>,
    pub error: Option<String>,
    pub scheduled_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// One task's changes in the batch. `None` leaves a column as it was; `done` and
/// `error_set` say that the batch set those columns, `NULL` included.
#[derive(Debug, Clone, PartialEq, Default)]
struct TaskPatch {
    status: &'static str,
    attempts: Option<i32>,
    model: Option<String>,
    zone: Option<String>,
    done: bool,
    latency_ms: Option<i64>,
    input_tokens: Option<i64>,
    output_tokens: Option<i64>,
    cost_micros: Option<i64>,
    output: Option<Vec<u8>>,
    output_sha256: Option<String>,
    output_size: Option<i64>,
    error_set: bool,
    error: Option<String>,
    scheduled_at: Option<i64>,
    finished_at: Option<i64>,
}

impl TaskPatch {
    /// What `update_tasks` does to a row, for a row still in memory.
    fn apply_to(self, row: &mut NewTask) {
        row.status = self.status;
        row.attempts = self.attempts.unwrap_or(row.attempts);
        row.model = self.model.or(row.model.take());
        row.zone = self.zone.or(row.zone.take());
        if self.done {
            row.latency_ms = self.latency_ms;
            row.input_tokens = self.input_tokens;
            row.output_tokens = self.output_tokens;
            row.cost_micros = self.cost_micros;
            row.output = self.output;
            row.output_sha256 = self.output_sha256;
            row.output_size = self.output_size;
        }
        if self.error_set {
            row.error = self.error;
        }
        row.scheduled_at = row.scheduled_at.or(self.scheduled_at);
        row.finished_at = self.finished_at.or(row.finished_at);
    }
}

/// One workflow's changes in the batch; `status` RUNNING only moves an ACCEPTED workflow.
#[derive(Debug, Clone, PartialEq, Default)]
struct WorkflowPatch {
    status: Option<&'static str>,
    finished_at: Option<i64>,
    error_set: bool,
    error: Option<String>,
    failed_task_set: bool,
    failed_task: Option<String>,
    total_cost_micros: Option<i64>,
    models_used: Option<Vec<String>>,
    last_sequence: Option<i64>,
    updated_at: Option<i64>,
}

impl WorkflowPatch {
    /// What `update_workflows` does to a row, for a row still in memory.
    fn apply_to(self, row: &mut NewWorkflow) {
        row.status = match self.status {
            None => row.status,
            Some("RUNNING") if row.status != "ACCEPTED" => row.status,
            Some(s) => s,
        };
        row.finished_at = self.finished_at.or(row.finished_at);
        if self.error_set {
            row.error = self.error;
        }
        if self.failed_task_set {
            row.failed_task = self.failed_task;
        }
        row.total_cost_micros = self.total_cost_micros.unwrap_or(row.total_cost_micros);
        if let Some(m) = self.models_used {
            row.models_used = m;
        }
        row.last_sequence = self.last_sequence.unwrap_or(row.last_sequence);
        row.updated_at = self.updated_at.unwrap_or(row.updated_at);
    }

    /// What `count_tasks` does to a row, for a row and tasks still in memory.
    fn recount<'a>(row: &mut NewWorkflow, tasks: impl Iterator<Item = &'a NewTask>) {
        let (mut done, mut failed, mut skipped, mut cost) = (0, 0, 0, 0);
        for t in tasks {
            match t.status {
                "COMPLETED" => {
                    done += 1;
                    cost += t.cost_micros.unwrap_or(0);
                }
                "FAILED" => failed += 1,
                "SKIPPED" => skipped += 1,
                _ => {}
            }
        }
        row.tasks_completed = done;
        row.tasks_failed = failed;
        row.tasks_skipped = skipped;
        if row.status != "COMPLETED" {
            row.total_cost_micros = cost;
        }
    }
}

/// Completions and discarded results of one model in the batch, summed.
#[derive(Debug, Clone, PartialEq, Default)]
struct ModelDelta {
    completed: i64,
    failed: i64,
    latency_ms: i64,
    input_tokens: i64,
    output_tokens: i64,
    cost_micros: i64,
    discarded: i64,
    discarded_micros: i64,
    last_used: Option<i64>,
}

/// A failed attempt: its model is the batch's own dispatch of the task when there is one,
/// else whatever the task row says (resolved by `model_failures`).
#[derive(Debug, Clone, PartialEq)]
struct Failure {
    workflow: String,
    task: String,
    model: Option<String>,
    at: i64,
}

/// The timeline rows, column by column.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Timeline {
    pub workflow: Vec<String>,
    pub sequence: Vec<i64>,
    pub event_id: Vec<String>,
    pub event_type: Vec<String>,
    pub task: Vec<Option<String>>,
    pub occurred_at: Vec<i64>,
    pub partition: Vec<i32>,
    pub offset: Vec<i64>,
    /// JSON text.
    pub data: Vec<String>,
}

/// The rows a batch creates, whole: written with binary COPY (`copy_*` in `apply.sql`),
/// in this order (tasks reference workflows).
#[derive(Debug, Default)]
pub struct Inserts {
    pub workflows: Vec<(String, NewWorkflow)>,
    pub tasks: Vec<((String, String), NewTask)>,
    pub timeline: Timeline,
}

/// What a batch writes: its new rows, then the set-based statements in order.
#[derive(Debug, Default)]
pub struct Planned {
    pub inserts: Inserts,
    pub writes: Vec<Write>,
}

/// A batch of events folded into the set-based statements of `apply.sql`: each runs at most
/// once per batch whatever its size. Folding follows the per-event rules exactly (last write
/// wins per column, `scheduled_at` keeps the first, counters add up), so the tables end the
/// same wherever batches start and end. Rows created by the batch get their later changes
/// in memory and are inserted whole; only rows from earlier batches are updated.
#[derive(Debug, Default)]
pub struct Batch {
    timeline: Timeline,
    workflows_new: BTreeMap<String, NewWorkflow>,
    tasks_new: BTreeMap<(String, String), NewTask>,
    failures: Vec<Failure>,
    tasks: BTreeMap<(String, String), TaskPatch>,
    models: BTreeMap<String, ModelDelta>,
    workflows: BTreeMap<String, WorkflowPatch>,
    recount: BTreeSet<String>,
}

/// `items` as a PostgreSQL array literal (`{"a","b\\"c"}`), cast to text[] by the statement.
fn array_literal(items: &[String]) -> String {
    let mut out = String::from("{");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push('"');
        for c in item.chars() {
            if c == '"' || c == '\\' {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
    }
    out.push('}');
    out
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.timeline.sequence.is_empty()
    }

    /// Adds `event`, read at `partition`/`offset` of the event store, given that it is the
    /// next event of its workflow (the caller skips duplicates).
    pub fn add(&mut self, event: &WorkflowEvent, partition: i32, offset: i64) -> crate::Result<()> {
        self.add_rendered(event, data(&event.body)?.to_string(), partition, offset)
    }

    /// [`Batch::add`] with the timeline's `data` already rendered ([`data`] as JSON text),
    /// which the workers do while reading, off the apply path.
    pub fn add_rendered(
        &mut self,
        event: &WorkflowEvent,
        rendered: String,
        partition: i32,
        offset: i64,
    ) -> crate::Result<()> {
        let m = &event.meta;
        let wf = &m.workflow_id;
        let at = m.occurred_at;
        let t = &mut self.timeline;
        t.workflow.push(wf.clone());
        t.sequence.push(m.sequence);
        t.event_id.push(m.event_id.clone());
        t.event_type.push(event.body.type_name().to_owned());
        t.task.push(task_of(&event.body).map(str::to_owned));
        t.occurred_at.push(at);
        t.partition.push(partition);
        t.offset.push(offset);
        t.data.push(rendered);

        match &event.body {
            EventBody::WorkflowAccepted(a) => {
                self.workflows_new.insert(
                    wf.clone(),
                    NewWorkflow {
                        name: Some(a.name.clone()),
                        status: "ACCEPTED",
                        created_at: at,
                        finished_at: None,
                        task_count: i32::try_from(a.tasks.len()).unwrap_or(i32::MAX),
                        tasks_completed: 0,
                        tasks_failed: 0,
                        tasks_skipped: 0,
                        total_cost_micros: 0,
                        models_used: Vec::new(),
                        labels: serde_json::to_string(&a.labels)?,
                        default_zones: a.default_zones.clone(),
                        error: None,
                        error_field: None,
                        failed_task: None,
                        last_sequence: m.sequence,
                        updated_at: at,
                        tenant: a.tenant.clone(),
                    },
                );
                for task in &a.tasks {
                    let zones = if task.zones.is_empty() {
                        &a.default_zones
                    } else {
                        &task.zones
                    };
                    self.tasks_new.insert(
                        (wf.clone(), task.id.clone()),
                        NewTask {
                            status: "PENDING",
                            depends_on: task.depends_on.clone(),
                            zones: zones.clone(),
                            ..NewTask::default()
                        },
                    );
                }
                // The row carries its own sequence and time: nothing to touch.
                return Ok(());
            }
            EventBody::WorkflowRejected(r) => {
                self.workflows_new.insert(
                    wf.clone(),
                    NewWorkflow {
                        name: None,
                        status: "REJECTED",
                        created_at: at,
                        finished_at: Some(at),
                        task_count: 0,
                        tasks_completed: 0,
                        tasks_failed: 0,
                        tasks_skipped: 0,
                        total_cost_micros: 0,
                        models_used: Vec::new(),
                        labels: "{}".to_owned(),
                        default_zones: Vec::new(),
                        error: Some(r.reason.clone()),
                        error_field: r.field.clone(),
                        failed_task: None,
                        last_sequence: m.sequence,
                        updated_at: at,
                        tenant: r.tenant.clone(),
                    },
                );
                return Ok(());
            }
            EventBody::TaskScheduled(s) => {
                let p = self.task(wf, &s.task_id);
                p.status = "SCHEDULED";
                p.attempts = Some(s.attempt);
                p.scheduled_at = p.scheduled_at.or(Some(at));
            }
            EventBody::TaskDispatched(d) => {
                let p = self.task(wf, &d.task_id);
                p.status = "DISPATCHED";
                p.attempts = Some(d.attempt);
                p.model = Some(d.model_id.clone());
                p.zone = Some(d.zone.clone());
                let w = self.workflow(wf);
                if w.status.is_none() {
                    w.status = Some("RUNNING");
                }
            }
            EventBody::TaskCompleted(c) => {
                let (output, sha, size) = match &c.output_ref {
                    Some(r) => (None, Some(r.sha256.clone()), Some(r.size)),
                    None => (
                        Some(c.output.clone()),
                        None,
                        Some(i64::try_from(c.output.len()).unwrap_or(i64::MAX)),
                    ),
                };
                let p = self.task(wf, &c.task_id);
                p.status = "COMPLETED";
                p.attempts = Some(c.attempt);
                p.model = Some(c.model_id.clone());
                p.zone = Some(c.executor_zone.clone());
                p.done = true;
                p.latency_ms = Some(c.latency_ms);
                p.input_tokens = Some(c.input_tokens);
                p.output_tokens = Some(c.output_tokens);
                p.cost_micros = Some(c.cost_micros);
                p.output = output;
                p.output_sha256 = sha;
                p.output_size = size;
                p.error_set = true;
                p.error = None;
                p.finished_at = Some(at);
                let d = self.models.entry(c.model_id.clone()).or_default();
                d.completed += 1;
                d.latency_ms += c.latency_ms;
                d.input_tokens += c.input_tokens;
                d.output_tokens += c.output_tokens;
                d.cost_micros += c.cost_micros;
                d.last_used = d.last_used.max(Some(at));
                self.recount.insert(wf.clone());
            }
            EventBody::TaskFailed(f) => {
                let p = self.task(wf, &f.task_id);
                // The model the failed attempt ran on, before this event changes anything.
                let model = p.model.clone();
                p.status = "FAILED";
                p.attempts = Some(f.attempt);
                p.error_set = true;
                p.error = Some(f.error.clone());
                p.finished_at = Some(at);
                self.failures.push(Failure {
                    workflow: wf.clone(),
                    task: f.task_id.clone(),
                    model,
                    at,
                });
                self.recount.insert(wf.clone());
            }
            EventBody::TaskSkipped(s) => {
                let p = self.task(wf, &s.task_id);
                p.status = "SKIPPED";
                p.error_set = true;
                p.error = Some(s.reason.clone());
                p.finished_at = Some(at);
                self.recount.insert(wf.clone());
            }
            EventBody::WorkflowCompleted(c) => {
                let models_used = c.models_used.clone();
                let w = self.workflow(wf);
                w.status = Some("COMPLETED");
                w.finished_at = Some(at);
                w.total_cost_micros = Some(c.total_cost_micros);
                w.models_used = Some(models_used);
            }
            EventBody::WorkflowFailed(f) => {
                let w = self.workflow(wf);
                w.status = Some("FAILED");
                w.finished_at = Some(at);
                w.error_set = true;
                w.error = Some(f.reason.clone());
                w.failed_task_set = true;
                w.failed_task = f.failed_task.clone();
            }
            EventBody::WorkflowCancelled(c) => {
                let w = self.workflow(wf);
                w.status = Some("CANCELLED");
                w.finished_at = Some(at);
                w.error_set = true;
                w.error = c.reason.clone();
            }
            EventBody::TaskResultDiscarded(d) => {
                let delta = self.models.entry(d.model_id.clone()).or_default();
                delta.discarded += 1;
                delta.discarded_micros += d.cost_micros;
                delta.last_used = delta.last_used.max(Some(at));
            }
            // The routing decision and the auction live in the timeline only.
            EventBody::TaskRouted(_) | EventBody::BidPlaced(_) | EventBody::AuctionClosed(_) => {}
            // The budget saga lives in the timeline; the workflow row appears with its
            // acceptance or rejection.
            EventBody::BudgetRequested(_) | EventBody::BudgetSettled(_) => {}
        }
        let w = self.workflow(wf);
        w.last_sequence = Some(m.sequence);
        w.updated_at = Some(at);
        Ok(())
    }

    fn task(&mut self, workflow: &str, task: &str) -> &mut TaskPatch {
        self.tasks
            .entry((workflow.to_owned(), task.to_owned()))
            .or_default()
    }

    fn workflow(&mut self, workflow: &str) -> &mut WorkflowPatch {
        self.workflows.entry(workflow.to_owned()).or_default()
    }

    /// The batch's new rows and its statements, in the order they must run (see
    /// `apply.sql`); a statement with no rows is left out.
    pub fn writes(mut self) -> Planned {
        // Rows this batch created take the batch's changes in memory (the same rules as the
        // update statements); a change to a task or workflow that exists neither here nor in
        // an earlier batch changes nothing, as an UPDATE of a missing row would.
        let mut task_patches = BTreeMap::new();
        for (key, patch) in std::mem::take(&mut self.tasks) {
            match self.tasks_new.get_mut(&key) {
                Some(row) => patch.apply_to(row),
                None if self.workflows_new.contains_key(&key.0) => {}
                None => {
                    task_patches.insert(key, patch);
                }
            }
        }
        let mut failures = Vec::new();
        for f in std::mem::take(&mut self.failures) {
            let key = (f.workflow.clone(), f.task.clone());
            if self.tasks_new.contains_key(&key) {
                // A new task had no model before the batch: the batch's dispatch or none.
                if let Some(model) = f.model {
                    let d = self.models.entry(model).or_default();
                    d.failed += 1;
                    d.last_used = d.last_used.max(Some(f.at));
                }
            } else if !self.workflows_new.contains_key(&f.workflow) {
                failures.push(f);
            }
        }
        let mut workflow_patches = BTreeMap::new();
        for (id, patch) in std::mem::take(&mut self.workflows) {
            match self.workflows_new.get_mut(&id) {
                Some(row) => patch.apply_to(row),
                None => {
                    workflow_patches.insert(id, patch);
                }
            }
        }
        let mut recount = Vec::new();
        for id in std::mem::take(&mut self.recount) {
            match self.workflows_new.get_mut(&id) {
                Some(row) => WorkflowPatch::recount(
                    row,
                    self.tasks_new
                        .range((id.clone(), String::new())..)
                        .take_while(|((w, _), _)| *w == id)
                        .map(|(_, t)| t),
                ),
                None => recount.push(id),
            }
        }

        let mut out = Vec::new();
        let mut push = |stmt: Stmt, rows: usize, params: Vec<Param>| {
            if rows > 0 {
                out.push(Write { stmt, params });
            }
        };
        let inserts = Inserts {
            workflows: self.workflows_new.into_iter().collect(),
            tasks: self.tasks_new.into_iter().collect(),
            timeline: self.timeline,
        };
        let f = failures;
        push(
            Stmt::ModelFailures,
            f.len(),
            vec![
                Param::TextArray(f.iter().map(|x| x.workflow.clone()).collect()),
                Param::TextArray(f.iter().map(|x| x.task.clone()).collect()),
                Param::OptTextArray(f.iter().map(|x| x.model.clone()).collect()),
                times(f.iter().map(|x| x.at)),
            ],
        );
        let (keys, tp): (Vec<(String, String)>, Vec<TaskPatch>) = task_patches.into_iter().unzip();
        push(
            Stmt::UpdateTasks,
            tp.len(),
            vec![
                Param::TextArray(keys.iter().map(|k| k.0.clone()).collect()),
                Param::TextArray(keys.iter().map(|k| k.1.clone()).collect()),
                Param::TextArray(tp.iter().map(|p| p.status.to_owned()).collect()),
                Param::OptIntArray(tp.iter().map(|p| p.attempts).collect()),
                Param::OptTextArray(tp.iter().map(|p| p.model.clone()).collect()),
                Param::OptTextArray(tp.iter().map(|p| p.zone.clone()).collect()),
                Param::BoolArray(tp.iter().map(|p| p.done).collect()),
                Param::OptBigIntArray(tp.iter().map(|p| p.latency_ms).collect()),
                Param::OptBigIntArray(tp.iter().map(|p| p.input_tokens).collect()),
                Param::OptBigIntArray(tp.iter().map(|p| p.output_tokens).collect()),
                Param::OptBigIntArray(tp.iter().map(|p| p.cost_micros).collect()),
                Param::OptBytesArray(tp.iter().map(|p| p.output.clone()).collect()),
                Param::OptTextArray(tp.iter().map(|p| p.output_sha256.clone()).collect()),
                Param::OptBigIntArray(tp.iter().map(|p| p.output_size).collect()),
                Param::BoolArray(tp.iter().map(|p| p.error_set).collect()),
                Param::OptTextArray(tp.iter().map(|p| p.error.clone()).collect()),
                opt_times(tp.iter().map(|p| p.scheduled_at)),
                opt_times(tp.iter().map(|p| p.finished_at)),
            ],
        );
        let (ids, md): (Vec<String>, Vec<ModelDelta>) = self.models.into_iter().unzip();
        push(
            Stmt::UpsertModels,
            md.len(),
            vec![
                Param::TextArray(ids),
                Param::BigIntArray(md.iter().map(|d| d.completed).collect()),
                Param::BigIntArray(md.iter().map(|d| d.failed).collect()),
                Param::BigIntArray(md.iter().map(|d| d.latency_ms).collect()),
                Param::BigIntArray(md.iter().map(|d| d.input_tokens).collect()),
                Param::BigIntArray(md.iter().map(|d| d.output_tokens).collect()),
                Param::BigIntArray(md.iter().map(|d| d.cost_micros).collect()),
                Param::BigIntArray(md.iter().map(|d| d.discarded).collect()),
                Param::BigIntArray(md.iter().map(|d| d.discarded_micros).collect()),
                opt_times(md.iter().map(|d| d.last_used)),
            ],
        );
        let (ids, wp): (Vec<String>, Vec<WorkflowPatch>) = workflow_patches.into_iter().unzip();
        push(
            Stmt::UpdateWorkflows,
            wp.len(),
            vec![
                Param::TextArray(ids),
                Param::OptTextArray(wp.iter().map(|p| p.status.map(str::to_owned)).collect()),
                opt_times(wp.iter().map(|p| p.finished_at)),
                Param::BoolArray(wp.iter().map(|p| p.error_set).collect()),
                Param::OptTextArray(wp.iter().map(|p| p.error.clone()).collect()),
                Param::BoolArray(wp.iter().map(|p| p.failed_task_set).collect()),
                Param::OptTextArray(wp.iter().map(|p| p.failed_task.clone()).collect()),
                Param::OptBigIntArray(wp.iter().map(|p| p.total_cost_micros).collect()),
                Param::OptTextArray(
                    wp.iter()
                        .map(|p| p.models_used.as_deref().map(array_literal))
                        .collect(),
                ),
                Param::OptBigIntArray(wp.iter().map(|p| p.last_sequence).collect()),
                opt_times(wp.iter().map(|p| p.updated_at)),
            ],
        );
        push(
            Stmt::CountTasks,
            recount.len(),
            vec![Param::TextArray(recount)],
        );
        Planned {
            inserts,
            writes: out,
        }
    }
}

fn task_of(body: &EventBody) -> Option<&str> {
    Some(match body {
        EventBody::TaskScheduled(e) => &e.task_id,
        EventBody::TaskDispatched(e) => &e.task_id,
        EventBody::TaskCompleted(e) => &e.task_id,
        EventBody::TaskFailed(e) => &e.task_id,
        EventBody::TaskSkipped(e) => &e.task_id,
        EventBody::TaskRouted(e) => &e.task_id,
        EventBody::TaskResultDiscarded(e) => &e.task_id,
        EventBody::BidPlaced(e) => &e.task_id,
        EventBody::AuctionClosed(e) => &e.task_id,
        EventBody::WorkflowFailed(e) => return e.failed_task.as_deref(),
        _ => return None,
    })
}

/// The event for the timeline, without its payloads (prompts and outputs stay where the
/// sovereignty rules can guard them: `tasks.output`, the blob store); their sizes remain.
pub fn data(body: &EventBody) -> crate::Result<Value> {
    Ok(match body {
        EventBody::WorkflowAccepted(a) => {
            let tasks: Vec<Value> = a
                .tasks
                .iter()
                .map(|t| {
                    json!({
                        "id": t.id,
                        "prompt_bytes": t.prompt.len(),
                        "model_hint": t.model_hint,
                        "specialties": t.specialties,
                        "zones": t.zones,
                        "depends_on": t.depends_on,
                        "max_tokens": t.max_tokens,
                        "timeout_ms": t.timeout_ms,
                        "max_attempts": t.max_attempts,
                        "auction": t.auction,
                    })
                })
                .collect();
            json!({
                "name": a.name,
                "default_zones": a.default_zones,
                "labels": a.labels,
                "tasks": tasks,
                "budget": a.budget,
            })
        }
        EventBody::TaskCompleted(c) => json!({
            "task_id": c.task_id,
            "attempt": c.attempt,
            "attempt_id": c.attempt_id,
            "model_id": c.model_id,
            "executor_zone": c.executor_zone,
            "output_bytes": c.output_ref.as_ref().map_or(i64::try_from(c.output.len()).unwrap_or(i64::MAX), |r| r.size),
            "output_ref": c.output_ref.as_ref().map(|r| json!({"sha256": r.sha256, "size": r.size})),
            "input_tokens": c.input_tokens,
            "output_tokens": c.output_tokens,
            "cost_micros": c.cost_micros,
            "latency_ms": c.latency_ms,
        }),
        EventBody::WorkflowCompleted(c) => {
            let mut outputs: Vec<&String> = c.outputs.keys().chain(c.output_refs.keys()).collect();
            outputs.sort();
            json!({
                "outputs": outputs,
                "total_cost_micros": c.total_cost_micros,
                "models_used": c.models_used,
            })
        }
        EventBody::WorkflowRejected(e) => serde_json::to_value(e)?,
        EventBody::TaskScheduled(e) => serde_json::to_value(e)?,
        EventBody::TaskDispatched(e) => serde_json::to_value(e)?,
        EventBody::TaskFailed(e) => serde_json::to_value(e)?,
        EventBody::TaskSkipped(e) => serde_json::to_value(e)?,
        EventBody::WorkflowFailed(e) => serde_json::to_value(e)?,
        EventBody::WorkflowCancelled(e) => serde_json::to_value(e)?,
        EventBody::TaskRouted(e) => serde_json::to_value(e)?,
        EventBody::TaskResultDiscarded(e) => serde_json::to_value(e)?,
        EventBody::BidPlaced(e) => serde_json::to_value(e)?,
        EventBody::AuctionClosed(e) => serde_json::to_value(e)?,
        // The submission's prompts stay out of the timeline, as for WorkflowAccepted.
        EventBody::BudgetRequested(b) => json!({
            "budget": b.budget,
            "name": b.submission.name,
            "tasks": b.submission.tasks.len(),
        }),
        EventBody::BudgetSettled(e) => serde_json::to_value(e)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_domain::fixtures;

    fn completing() -> Vec<WorkflowEvent> {
        fixtures::completed_workflow_events()
    }

    fn folded(events: &[WorkflowEvent]) -> Batch {
        let mut batch = Batch::default();
        for (n, e) in events.iter().enumerate() {
            batch.add(e, 2, n as i64).unwrap();
        }
        batch
    }

    fn find<T: Clone>(events: &[WorkflowEvent], f: impl Fn(&EventBody) -> Option<T>) -> T {
        events.iter().find_map(|e| f(&e.body)).unwrap()
    }

    #[test]
    fn every_event_is_on_the_timeline_without_its_payloads() {
        let events = fixtures::workflow_events();
        let batch = folded(&events);
        let t = &batch.timeline;
        assert_eq!(t.sequence.len(), events.len());
        assert!(t.partition.iter().all(|p| *p == 2));
        assert_eq!(t.offset.last(), Some(&(events.len() as i64 - 1)));
        for json in &t.data {
            // Payload bytes would serialise as long arrays of numbers.
            assert!(!json.contains("\"output\":["), "{json}");
            assert!(!json.contains("\"prompt\":"), "{json}");
        }
    }

    fn order(writes: &[Write]) -> Vec<Stmt> {
        writes.iter().map(|w| w.stmt).collect()
    }

    #[test]
    fn a_batch_runs_each_statement_once_in_dependency_order() {
        let events = completing();
        // The workflow's first event in one batch, the rest in the next: the second batch
        // changes rows from an earlier batch, so it updates them.
        let first = folded(&events[..1]).writes();
        assert!(first.writes.is_empty(), "{:?}", order(&first.writes));
        assert_eq!(first.inserts.workflows.len(), 1);
        assert_eq!(first.inserts.tasks.len(), 2);
        assert_eq!(first.inserts.timeline.sequence, vec![1]);
        let mut events_b = events[1..].to_vec();
        // A failure and a retry's dispatch in the batch too.
        let failed = fixtures::workflow_events()
            .into_iter()
            .find(|e| matches!(e.body, EventBody::TaskFailed(_)))
            .unwrap();
        events_b.insert(0, failed);
        let planned = folded(&events_b).writes();
        assert!(planned.inserts.workflows.is_empty() && planned.inserts.tasks.is_empty());
        assert_eq!(planned.inserts.timeline.sequence.len(), events_b.len());
        let writes = planned.writes;
        assert_eq!(
            order(&writes),
            vec![
                Stmt::ModelFailures,
                Stmt::UpdateTasks,
                Stmt::UpsertModels,
                Stmt::UpdateWorkflows,
                Stmt::CountTasks,
            ]
        );
        // Every column of a statement has one entry per row.
        for w in &writes {
            let lens: Vec<usize> = w
                .params
                .iter()
                .map(|p| match p {
                    Param::TextArray(v) => v.len(),
                    Param::OptTextArray(v) => v.len(),
                    Param::IntArray(v) => v.len(),
                    Param::OptIntArray(v) => v.len(),
                    Param::BigIntArray(v) => v.len(),
                    Param::OptBigIntArray(v) => v.len(),
                    Param::BoolArray(v) => v.len(),
                    Param::OptBytesArray(v) => v.len(),
                    Param::TimeArray(v) => v.len(),
                    Param::OptTimeArray(v) => v.len(),
                })
                .collect();
            assert!(
                lens.windows(2).all(|p| p[0] == p[1]),
                "{:?} {lens:?}",
                w.stmt
            );
        }
        // An event that only adds to the timeline writes nothing else.
        let routed: Vec<WorkflowEvent> = events
            .into_iter()
            .filter(|e| matches!(e.body, EventBody::TaskRouted(_)))
            .collect();
        assert_eq!(
            order(&folded(&routed).writes().writes),
            vec![Stmt::UpdateWorkflows]
        );
    }

    #[test]
    fn rows_created_by_the_batch_are_inserted_with_its_later_changes() {
        let events = completing();
        let planned = folded(&events).writes();
        assert_eq!(order(&planned.writes), vec![Stmt::UpsertModels]);
        let (_, w) = &planned.inserts.workflows[0];
        assert_eq!(w.status, "COMPLETED");
        // `answer` failed, then was skipped.
        assert_eq!(
            (w.tasks_completed, w.tasks_failed, w.tasks_skipped),
            (1, 0, 1)
        );
        // The billed total of WorkflowCompleted, not the recount's running sum (42).
        assert_eq!(w.total_cost_micros, 84);
        assert_eq!(w.models_used, vec!["triad-local".to_owned()]);
        assert_eq!(w.last_sequence, events.last().unwrap().meta.sequence);
        let statuses: Vec<(&str, &str)> = planned
            .inserts
            .tasks
            .iter()
            .map(|((_, t), row)| (t.as_str(), row.status))
            .collect();
        assert_eq!(
            statuses,
            vec![("answer", "SKIPPED"), ("generate_questions", "COMPLETED")]
        );
        // `answer` was never dispatched in the batch: its failure counts for no model.
        let models = &planned.writes[0].params;
        assert_eq!(models[0], Param::TextArray(vec!["triad-local".into()]));
        assert_eq!(models[2], Param::BigIntArray(vec![0]));
    }

    #[test]
    fn a_new_tasks_failure_counts_against_the_batch_dispatch() {
        let events = completing();
        let mut dispatch = events
            .iter()
            .find(|e| matches!(e.body, EventBody::TaskDispatched(_)))
            .unwrap()
            .clone();
        if let EventBody::TaskDispatched(d) = &mut dispatch.body {
            d.task_id = "answer".into();
            d.model_id = "other-model".into();
        }
        let failed = fixtures::workflow_events()
            .into_iter()
            .find(|e| matches!(e.body, EventBody::TaskFailed(_)))
            .unwrap();
        let writes = folded(&[events[0].clone(), dispatch, failed])
            .writes()
            .writes;
        let models = writes
            .iter()
            .find(|w| w.stmt == Stmt::UpsertModels)
            .unwrap();
        assert_eq!(
            models.params[0],
            Param::TextArray(vec!["other-model".into()])
        );
        assert_eq!(models.params[1], Param::BigIntArray(vec![0]), "completed");
        assert_eq!(models.params[2], Param::BigIntArray(vec![1]), "failed");
        assert!(!order(&writes).contains(&Stmt::ModelFailures));
    }

    #[test]
    fn a_task_patch_keeps_the_last_write_of_each_column() {
        let events = completing();
        let batch = folded(&events);
        let wf = events[0].meta.workflow_id.clone();
        let done = &batch.tasks[&(wf.clone(), "generate_questions".to_owned())];
        assert_eq!(done.status, "COMPLETED");
        assert!(done.done && done.error_set && done.error.is_none());
        assert_eq!(
            done.output, None,
            "claim-checked output is stored by reference"
        );
        let blob = find(&events, |b| match b {
            EventBody::TaskCompleted(c) => c.output_ref.clone(),
            _ => None,
        });
        assert_eq!(done.output_sha256.as_deref(), Some(blob.sha256.as_str()));
        assert_eq!(done.output_size, Some(blob.size));
        let scheduled = events
            .iter()
            .find(|e| matches!(e.body, EventBody::TaskScheduled(_)))
            .unwrap();
        assert_eq!(done.scheduled_at, Some(scheduled.meta.occurred_at));
        // `answer` failed, then was skipped: the skip's status and reason win.
        let answer = &batch.tasks[&(wf.clone(), "answer".to_owned())];
        assert_eq!(answer.status, "SKIPPED");
        assert_eq!(
            answer.attempts,
            Some(1),
            "the skip leaves the failure's attempt"
        );
        assert!(answer.error.as_deref().unwrap().starts_with("dependency"));
        assert_eq!(batch.recount.iter().collect::<Vec<_>>(), vec![&wf]);
    }

    #[test]
    fn a_failure_counts_against_the_batch_dispatch_or_else_the_stored_model() {
        let events = fixtures::workflow_events();
        let failed = events
            .iter()
            .find(|e| matches!(e.body, EventBody::TaskFailed(_)))
            .unwrap()
            .clone();
        // No dispatch of `answer` in the batch: the model comes from the task row.
        let batch = folded(std::slice::from_ref(&failed));
        assert_eq!(batch.failures.len(), 1);
        assert_eq!(batch.failures[0].model, None);
        // Dispatched in the same batch: that dispatch's model.
        let mut dispatch = events
            .iter()
            .find(|e| matches!(e.body, EventBody::TaskDispatched(_)))
            .unwrap()
            .clone();
        if let EventBody::TaskDispatched(d) = &mut dispatch.body {
            d.task_id = "answer".into();
            d.model_id = "other-model".into();
        }
        let batch = folded(&[dispatch, failed]);
        assert_eq!(batch.failures[0].model.as_deref(), Some("other-model"));
    }

    #[test]
    fn running_never_replaces_a_terminal_status_and_the_last_terminal_wins() {
        let events = fixtures::workflow_events();
        let pick = |f: fn(&EventBody) -> bool| events.iter().find(|e| f(&e.body)).unwrap().clone();
        let dispatched = pick(|b| matches!(b, EventBody::TaskDispatched(_)));
        let completed = pick(|b| matches!(b, EventBody::WorkflowCompleted(_)));
        let cancelled = pick(|b| matches!(b, EventBody::WorkflowCancelled(_)));
        let wf = dispatched.meta.workflow_id.clone();

        let b = folded(std::slice::from_ref(&dispatched));
        assert_eq!(b.workflows[&wf].status, Some("RUNNING"));
        let b = folded(&[completed.clone(), dispatched.clone()]);
        assert_eq!(b.workflows[&wf].status, Some("COMPLETED"));
        let b = folded(&[dispatched, completed, cancelled.clone()]);
        let w = &b.workflows[&wf];
        assert_eq!(w.status, Some("CANCELLED"));
        assert!(
            w.error_set && w.error.is_none(),
            "a cancel without reason clears it"
        );
        assert_eq!(w.last_sequence, Some(cancelled.meta.sequence));
        assert_eq!(w.models_used, Some(vec!["triad-local".to_owned()]));
    }

    #[test]
    fn array_literals_quote_every_element() {
        assert_eq!(array_literal(&[]), "{}");
        let items = [
            "a".to_owned(),
            r#"b"c\d"#.to_owned(),
            "NULL".to_owned(),
            "{,}".to_owned(),
        ];
        assert_eq!(array_literal(&items), r#"{"a","b\"c\\d","NULL","{,}"}"#);
    }

    #[test]
    fn event_times_keep_their_microseconds() {
        let t = time(1_700_000_000_123_456);
        assert_eq!(
            t.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_micros(1_700_000_000_123_456)
        );
        assert_eq!(
            UNIX_EPOCH.duration_since(time(-5)).unwrap(),
            Duration::from_micros(5)
        );
    }

    #[test]
    fn model_deltas_add_up_completions_and_discards() {
        let events = completing();
        let batch = folded(&[events.clone(), events].concat());
        let d = &batch.models["triad-local"];
        assert_eq!((d.completed, d.discarded), (2, 2));
        assert_eq!((d.input_tokens, d.output_tokens), (24, 14));
        assert_eq!((d.cost_micros, d.discarded_micros), (84, 84));
    }

    #[test]
    fn first_events_create_rows_with_their_own_sequence() {
        let events = fixtures::workflow_events();
        let accepted = folded(&events[..1]);
        let rejected = folded(&events[1..2]);
        let wf = &events[0].meta.workflow_id;
        assert_eq!(accepted.workflows_new[wf].status, "ACCEPTED");
        assert_eq!(
            accepted.workflows_new[wf].last_sequence,
            events[0].meta.sequence
        );
        assert_eq!(rejected.workflows_new[wf].status, "REJECTED");
        assert_eq!(
            rejected.workflows_new[wf].error_field.as_deref(),
            Some("tasks[0].zones")
        );
        let declared = find(&events, |b| match b {
            EventBody::WorkflowAccepted(a) => Some(a.tasks.len()),
            _ => None,
        });
        assert_eq!(accepted.tasks_new.len(), declared);
        assert!(accepted.workflows.is_empty(), "nothing to touch");
    }
}
