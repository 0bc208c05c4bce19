//! The workflow aggregate: a pure function from (state, inbox record) to events, and the
//! fold of events back into state. The workflow processor (Kafka side, next step of the
//! workflow issue) is a thin loop around [`process`]; everything that decides lives here, so
//! re-processing an input yields byte-identical events.
//!
//! Given/when/then tests are in `tests/aggregate.rs`.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use triad_domain::{
    AuctionClosed, BidPlaced, Budget, BudgetRequested, BudgetSettled, Causation, EventBody,
    EventMetadata, InboxBody, InboxRecord, LedgerOutcome, LedgerReply, RoutingDecision,
    SubmitWorkflow, TaskCompleted, TaskDispatched, TaskFailed, TaskOutcome, TaskRequest,
    TaskResultDiscarded, TaskResultReported, TaskRouted, TaskScheduled, TaskSkipped,
    TaskTimerFired, TimerKind, TimestampMicros, WorkflowAccepted, WorkflowCancelled,
    WorkflowCompleted, WorkflowEvent, WorkflowFailed, WorkflowRejected, derive_event_id,
};

use crate::{Context, Limits, RetryPolicy, Task, Workflow};

/// What the processor needs to know besides the workflow: the sovereignty policy's zones
/// and groups, the model used when a task names none, and the limits.
#[derive(Debug, Clone)]
pub struct Policy {
    pub zones: Vec<String>,
    pub groups: Vec<(String, Vec<String>)>,
    pub default_model: String,
    pub models: Option<Vec<crate::ModelOffer>>,
    pub limits: Limits,
    /// The published policy version this is (`WorkflowAccepted.policy_version`); empty when
    /// none was published.
    pub version: String,
    /// Prices submissions that name a credits account; without it such submissions are
    /// rejected (nothing could be reserved).
    pub costs: Option<std::sync::Arc<dyn CostModel>>,
    /// Reject submissions that name no credits account (`credits.require_account`).
    pub require_account: bool,
    /// The `triad.models` position `models` was taken at, when it includes registered
    /// models: stamped on the submission's decision (`WorkflowAccepted`/`WorkflowRejected`)
    /// so that a repair decides with the same view.
    pub registry_position: Option<i64>,
}

impl Policy {
    /// A policy over `zones` (no groups) that routes tasks naming no model to
    /// `default_model`: no catalogue, default limits, unpublished, no pricing, accounts
    /// optional. Callers set the rest with struct update syntax.
    pub fn new<Z: Into<String>>(
        zones: impl IntoIterator<Item = Z>,
        default_model: impl Into<String>,
    ) -> Self {
        Self {
            zones: zones.into_iter().map(Into::into).collect(),
            groups: Vec::new(),
            default_model: default_model.into(),
            models: None,
            limits: Limits::default(),
            version: String::new(),
            costs: None,
            require_account: false,
            registry_position: None,
        }
    }
}

/// Prices a workflow for its credits reservation: the worst case of one attempt of each task
/// (`triad_market::MarketCosts` implements it over the catalogue's declared prices). The
/// reservation is each task's attempt worst case times its `max_attempts`.
pub trait CostModel: Send + Sync + std::fmt::Debug {
    /// Task id -> worst case of one attempt, in µcredits; or why a task cannot be priced,
    /// naming its field.
    fn attempt_worst_case(
        &self,
        workflow: &Workflow,
        policy: &Policy,
    ) -> Result<BTreeMap<String, i64>, (String, String)>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum Status {
    #[default]
    New,
    /// Valid, waiting for the ledger to reserve its worst case (`BudgetRequested`).
    AwaitingBudget,
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskStatus {
    Pending,
    Dispatched(Dispatch),
    Completed {
        #[serde(with = "base64_bytes")]
        output: Vec<u8>,
        /// Set when the output travels by reference (claim check); `output` is then empty.
        #[serde(default)]
        output_ref: Option<triad_domain::BlobRef>,
    },
    Failed,
    Skipped,
}

/// The attempt of a task in flight: what the outbox re-publishes and the timers watch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dispatch {
    pub attempt: i32,
    pub attempt_id: String,
    pub zone: String,
    /// The `TaskDispatched` event's id and time (from its input, never from a clock).
    pub event_id: String,
    pub dispatched_at: TimestampMicros,
}

/// The state of one workflow, folded from its events. It is also the content of a snapshot
/// (`STATE_FORMAT`): a cache of the fold, never the truth.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkflowState {
    pub workflow_id: String,
    pub status: Status,
    /// The last sequence number written; the next event gets `sequence + 1`.
    pub sequence: i64,
    pub workflow: Option<Workflow>,
    pub tasks: BTreeMap<String, TaskStatus>,
    pub total_cost_micros: i64,
    pub models_used: BTreeSet<String>,
    /// Failures that used up retry budget, per task (zone failovers do not).
    pub failures: BTreeMap<String, i32>,
    /// Zones in which no executor picked a task up, per task: later attempts avoid them.
    pub unavailable: BTreeMap<String, BTreeSet<String>>,
    /// The chain of custody of the events written so far. The processor keeps it (from the
    /// exact bytes it writes and reads); the aggregate never reads it.
    #[serde(default)]
    pub custody: Custody,
    /// The credits reservation the workflow runs on, if it names an account.
    #[serde(default)]
    pub budget: Option<Budget>,
    /// While awaiting the reservation: what will be accepted.
    #[serde(default)]
    pub submission: Option<WorkflowAccepted>,
    /// Every model call's cost so far, billed or not (routed calls and discarded results):
    /// what the reservation is charged.
    #[serde(default)]
    pub spent_micros: i64,
    /// True once the ledger settled the reservation (`BudgetSettled`).
    #[serde(default)]
    pub settled: bool,
    /// The tenant that owns the workflow (none through the operator's door).
    #[serde(default)]
    pub tenant: Option<String>,
}

/// The workflow's events so far as a Merkle frontier (`triad_sovereignty::merkle::Frontier`):
/// their number and the roots of the perfect subtrees at the tree's right edge, in hex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Custody {
    pub leaves: u64,
    pub peaks: Vec<String>,
}

/// The encoding of a [`WorkflowState`] in a snapshot. A change to the state's shape changes
/// this name; snapshots in another format are not read (the processor folds the log instead).
pub const STATE_FORMAT: &str = "triad.workflow-state/json-v3";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot format {found:?} is not {STATE_FORMAT:?}")]
    Format { found: String },
    #[error("snapshot state does not decode: {0}")]
    Json(#[from] serde_json::Error),
}

impl WorkflowState {
    /// The state in [`STATE_FORMAT`].
    pub fn to_snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        Ok(serde_json::to_vec(self)?)
    }

    /// A state written by [`WorkflowState::to_snapshot`].
    pub fn from_snapshot(format: &str, bytes: &[u8]) -> Result<Self, SnapshotError> {
        if format != STATE_FORMAT {
            return Err(SnapshotError::Format {
                found: format.to_owned(),
            });
        }
        Ok(serde_json::from_slice(bytes)?)
    }
}

/// Task outputs are bytes; base64 keeps them compact in the JSON snapshot.
mod base64_bytes {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD.decode(text).map_err(serde::de::Error::custom)
    }
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
        account: cmd.account.clone(),
    }
}

/// The attempt id executors dedupe by: unique per (workflow, task, attempt).
pub fn attempt_id(workflow_id: &str, task: &str, attempt: i32) -> String {
    format!("{workflow_id}/{task}#{attempt}")
}

impl WorkflowState {
    /// Folds one stored event into the state.
    pub fn apply(&mut self, event: &WorkflowEvent) {
        self.workflow_id.clone_from(&event.meta.workflow_id);
        self.sequence = event.meta.sequence;
        match &event.body {
            EventBody::WorkflowAccepted(a) => {
                let w = from_command(&SubmitWorkflow {
                    name: a.name.clone(),
                    default_zones: a.default_zones.clone(),
                    tasks: a.tasks.clone(),
                    labels: a.labels.clone(),
                    account: a.budget.as_ref().map(|b| b.account.clone()),
                });
                self.budget.clone_from(&a.budget);
                self.tenant.clone_from(&a.tenant);
                self.submission = None;
                self.tasks = w
                    .tasks
                    .iter()
                    .map(|t| (t.id.clone(), TaskStatus::Pending))
                    .collect();
                self.workflow = Some(w);
                self.status = Status::Running;
            }
            EventBody::WorkflowRejected(_) => {
                self.status = Status::Rejected;
                self.submission = None;
            }
            EventBody::BudgetRequested(b) => {
                self.status = Status::AwaitingBudget;
                self.budget = Some(b.budget.clone());
                self.tenant.clone_from(&b.submission.tenant);
                self.submission = Some(b.submission.clone());
            }
            EventBody::BudgetSettled(_) => self.settled = true,
            EventBody::TaskRouted(r) => {
                let calls = r.decision.calls.iter().map(|c| c.cost_micros);
                self.spent_micros = calls.fold(self.spent_micros, i64::saturating_add);
            }
            EventBody::TaskResultDiscarded(d) => {
                self.spent_micros = self.spent_micros.saturating_add(d.cost_micros);
            }
            EventBody::TaskScheduled(_) | EventBody::BidPlaced(_) | EventBody::AuctionClosed(_) => {
            }
            EventBody::TaskDispatched(d) => {
                self.tasks.insert(
                    d.task_id.clone(),
                    TaskStatus::Dispatched(Dispatch {
                        attempt: d.attempt,
                        attempt_id: d.attempt_id.clone(),
                        zone: d.zone.clone(),
                        event_id: event.meta.event_id.clone(),
                        dispatched_at: event.meta.occurred_at,
                    }),
                );
            }
            EventBody::TaskCompleted(c) => {
                self.tasks.insert(
                    c.task_id.clone(),
                    TaskStatus::Completed {
                        output: c.output.clone(),
                        output_ref: c.output_ref.clone(),
                    },
                );
                self.total_cost_micros = self.total_cost_micros.saturating_add(c.cost_micros);
                self.models_used.insert(c.model_id.clone());
            }
            EventBody::TaskFailed(f) => {
                match &f.unavailable_zone {
                    Some(zone) => {
                        self.unavailable
                            .entry(f.task_id.clone())
                            .or_default()
                            .insert(zone.clone());
                    }
                    None => *self.failures.entry(f.task_id.clone()).or_default() += 1,
                }
                if !f.retryable {
                    self.tasks.insert(f.task_id.clone(), TaskStatus::Failed);
                }
            }
            EventBody::TaskSkipped(s) => {
                self.tasks.insert(s.task_id.clone(), TaskStatus::Skipped);
            }
            EventBody::WorkflowCompleted(_) => self.status = Status::Completed,
            EventBody::WorkflowFailed(_) => self.status = Status::Failed,
            EventBody::WorkflowCancelled(_) => {
                self.status = Status::Cancelled;
                self.submission = None;
            }
        }
    }

    /// True when the ledger still has to settle this workflow's reservation: it finished
    /// after asking for one (a refusal reserved nothing).
    pub fn needs_settlement(&self) -> bool {
        self.budget.is_some()
            && !self.settled
            && matches!(
                self.status,
                Status::Completed | Status::Failed | Status::Cancelled
            )
    }

    /// True while the workflow waits for the ledger's reservation.
    pub fn awaiting_budget(&self) -> bool {
        self.status == Status::AwaitingBudget
    }

    /// Why the next attempt of `task` may not be dispatched, if it may not: its worst case
    /// does not fit in what is left of the reservation after the spend so far and the worst
    /// case of every attempt in flight.
    fn unaffordable(&self, task: &str, also_dispatching: i64) -> Option<String> {
        let budget = self.budget.as_ref()?;
        let cost = budget.attempt_micros.get(task).copied().unwrap_or(0);
        let in_flight = self
            .tasks
            .iter()
            .filter(|(_, s)| matches!(s, TaskStatus::Dispatched(_)))
            .map(|(t, _)| budget.attempt_micros.get(t).copied().unwrap_or(0))
            .fold(also_dispatching, i64::saturating_add);
        let left = budget
            .reserved_micros
            .saturating_sub(self.spent_micros)
            .saturating_sub(in_flight);
        (cost > left).then(|| {
            format!(
                "budget exhausted: the next attempt of {task} may cost {cost} µcredits and \
                 {left} of the {} reserved are left",
                budget.reserved_micros
            )
        })
    }

    /// The attempt of `task` in flight, if any.
    pub fn dispatch(&self, task: &str) -> Option<&Dispatch> {
        match self.tasks.get(task) {
            Some(TaskStatus::Dispatched(d)) => Some(d),
            _ => None,
        }
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
        let index = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let event = WorkflowEvent {
            meta: EventMetadata {
                event_id: derive_event_id(&causation, index),
                event_type: body.type_name().to_owned(),
                occurred_at: record.meta.issued_at,
                workflow_id: record.meta.workflow_id.clone(),
                causation: causation.clone(),
                sequence: state.sequence + 1,
                schema_version: triad_domain::EVENT_SCHEMA_VERSION,
            },
            body,
            signed_root: None,
        };
        state.apply(&event);
        out.push(event);
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
            let tenant = record.meta.tenant.clone();
            if let Err(errors) = workflow.validate(&ctx) {
                let first = errors.0.first().map(|e| e.field.clone());
                emit(
                    state,
                    EventBody::WorkflowRejected(WorkflowRejected {
                        reason: errors.to_string(),
                        field: first,
                        registry_position: policy.registry_position,
                        tenant,
                    }),
                );
                return out;
            }
            if let Some(reason) = foreign_account(tenant.as_deref(), cmd.account.as_deref()) {
                emit(
                    state,
                    EventBody::WorkflowRejected(WorkflowRejected {
                        reason,
                        field: Some("account".to_owned()),
                        registry_position: policy.registry_position,
                        tenant,
                    }),
                );
                return out;
            }
            let accepted = WorkflowAccepted {
                name: cmd.name.clone(),
                default_zones: cmd.default_zones.clone(),
                tasks: cmd.tasks.clone(),
                labels: cmd.labels.clone(),
                policy_version: (!policy.version.is_empty()).then(|| policy.version.clone()),
                budget: None,
                registry_position: policy.registry_position,
                tenant: tenant.clone(),
            };
            match budget_for(&workflow, policy) {
                Err((field, reason)) => emit(
                    state,
                    EventBody::WorkflowRejected(WorkflowRejected {
                        reason: format!("{field}: {reason}"),
                        field: Some(field),
                        registry_position: policy.registry_position,
                        tenant,
                    }),
                ),
                // The saga's first step: the processor asks the ledger for the reservation.
                Ok(Some(budget)) => emit(
                    state,
                    EventBody::BudgetRequested(BudgetRequested {
                        budget,
                        submission: accepted,
                    }),
                ),
                Ok(None) => {
                    emit(state, EventBody::WorkflowAccepted(accepted));
                    for body in dispatch_ready(state, wf_id, policy) {
                        emit(state, body);
                    }
                }
            }
        }
        InboxBody::LedgerReply(reply) => {
            for body in on_ledger_reply(state, reply) {
                emit(state, body);
            }
            if state.status == Status::Running {
                for body in dispatch_ready(state, wf_id, policy) {
                    emit(state, body);
                }
            }
        }
        InboxBody::CancelWorkflow(c) => {
            // A tenant cancels only its own workflows (the API checks first; this holds even
            // for a command written past it). No tenant: the operator's door.
            let allowed = record
                .meta
                .tenant
                .as_ref()
                .is_none_or(|t| state.tenant.as_ref() == Some(t));
            if allowed && matches!(state.status, Status::Running | Status::AwaitingBudget) {
                emit(
                    state,
                    EventBody::WorkflowCancelled(WorkflowCancelled {
                        reason: c.reason.clone(),
                    }),
                );
            }
        }
        InboxBody::TaskResultReported(r) => {
            let bodies = match discard_reason(state, r) {
                Some(reason) => vec![EventBody::TaskResultDiscarded(TaskResultDiscarded {
                    task_id: r.task_id.clone(),
                    attempt_id: r.attempt_id.clone(),
                    model_id: r.model_id.clone(),
                    cost_micros: r.cost_micros,
                    reason,
                })],
                None => on_result(state, r, policy),
            };
            for body in bodies {
                emit(state, body);
            }
            advance(state, policy, &mut emit);
        }
        InboxBody::TaskTimerFired(t) => {
            // A timer of an attempt that already finished (or a repeat) decides nothing.
            let current = state.status == Status::Running
                && state.dispatch(&t.task_id).map(|d| d.attempt_id.as_str())
                    == Some(t.attempt_id.as_str());
            if !current {
                return out;
            }
            for body in on_timer(state, t, policy) {
                emit(state, body);
            }
            advance(state, policy, &mut emit);
        }
    }
    out
}

/// Why a tenant's submission may not name `account`: an account `<tenant>:<name>` belongs to
/// its tenant, and only its own tenant spends it (docs/access.md). Submissions through the
/// operator's door (no tenant) may name any account.
pub fn foreign_account(tenant: Option<&str>, account: Option<&str>) -> Option<String> {
    let (tenant, account) = (tenant?, account?);
    let owned = account
        .strip_prefix(tenant)
        .is_some_and(|rest| rest.starts_with(':'));
    (!owned).then(|| {
        format!(
            "account: {account:?} does not belong to tenant {tenant:?}; a tenant's workflows \
             spend only its own accounts ({tenant}:<name>)"
        )
    })
}

/// The budget a submission runs on: none without an account, or the reservation of its
/// worst case (each task's attempt worst case times its attempts). Errors name the field.
fn budget_for(workflow: &Workflow, policy: &Policy) -> Result<Option<Budget>, (String, String)> {
    let Some(account) = &workflow.account else {
        if policy.require_account {
            return Err((
                "account".to_owned(),
                "this deployment runs workflows only on a credits account \
                 (credits.require_account)"
                    .to_owned(),
            ));
        }
        return Ok(None);
    };
    let Some(costs) = &policy.costs else {
        return Err((
            "account".to_owned(),
            "this processor has no cost model, so no credits can be reserved".to_owned(),
        ));
    };
    let attempt_micros = costs.attempt_worst_case(workflow, policy)?;
    let reserved_micros = workflow
        .tasks
        .iter()
        .map(|t| {
            let attempt = attempt_micros.get(&t.id).copied().unwrap_or(0);
            attempt.saturating_mul(i64::from(t.retry.max_attempts.max(1)))
        })
        .fold(0i64, i64::saturating_add);
    Ok(Some(Budget {
        account: account.clone(),
        reserved_micros,
        attempt_micros,
    }))
}

/// The ledger's answer: a reservation accepts the waiting submission, a refusal rejects it,
/// a settlement is recorded once. Anything else (a repeated answer) decides nothing.
fn on_ledger_reply(state: &WorkflowState, reply: &LedgerReply) -> Vec<EventBody> {
    match reply.outcome {
        LedgerOutcome::Reserved if state.status == Status::AwaitingBudget => {
            let (Some(submission), Some(budget)) = (&state.submission, &state.budget) else {
                return vec![];
            };
            vec![EventBody::WorkflowAccepted(WorkflowAccepted {
                budget: Some(Budget {
                    reserved_micros: reply.amount_micros,
                    ..budget.clone()
                }),
                ..submission.clone()
            })]
        }
        LedgerOutcome::Refused if state.status == Status::AwaitingBudget => {
            let reason = reply.reason.as_deref().unwrap_or("refused");
            vec![EventBody::WorkflowRejected(WorkflowRejected {
                reason: format!("account: the ledger refused the reservation: {reason}"),
                field: Some("account".to_owned()),
                // The model view was stamped on BudgetRequested; this is the ledger's answer.
                registry_position: None,
                tenant: state.tenant.clone(),
            })]
        }
        LedgerOutcome::Settled if state.needs_settlement() => {
            vec![EventBody::BudgetSettled(BudgetSettled {
                account: reply.account.clone(),
                burned_micros: reply.burned_micros,
                released_micros: reply.released_micros,
            })]
        }
        _ => vec![],
    }
}

/// After a task finished: dispatch what became ready, then finish the workflow if all done.
fn advance(
    state: &mut WorkflowState,
    policy: &Policy,
    emit: &mut impl FnMut(&mut WorkflowState, EventBody),
) {
    if state.status != Status::Running {
        return;
    }
    let wf_id = state.workflow_id.clone();
    for body in dispatch_ready(state, &wf_id, policy) {
        emit(state, body);
    }
    if let Some(done) = finished(state) {
        emit(state, done);
    }
}

/// Why a result must not be applied, if it must not: only the result of the attempt in
/// flight counts. Stale, repeated or late results of at-least-once executors are recorded
/// (their model calls were real spend) but never applied or billed.
fn discard_reason(state: &WorkflowState, r: &TaskResultReported) -> Option<String> {
    match state.status {
        Status::Running => {}
        // Nothing was accepted under this id: there is no workflow to record against.
        Status::New | Status::Rejected | Status::AwaitingBudget => {
            return Some("no such workflow".to_owned());
        }
        Status::Cancelled => return Some("the workflow was cancelled".to_owned()),
        Status::Completed | Status::Failed => {
            return Some("the workflow had already finished".to_owned());
        }
    }
    match state.tasks.get(&r.task_id) {
        Some(TaskStatus::Dispatched(d)) if d.attempt_id == r.attempt_id => None,
        Some(TaskStatus::Completed { .. }) => {
            Some("duplicate result: the task had already completed".to_owned())
        }
        None => Some(format!("the workflow has no task {}", r.task_id)),
        Some(_) => Some(format!("attempt {} is no longer in flight", r.attempt_id)),
    }
}

fn on_result(state: &WorkflowState, r: &TaskResultReported, policy: &Policy) -> Vec<EventBody> {
    let mut out = Vec::new();
    if let Some(decision) = &r.routing {
        // An auction is recorded as its own events (every bid, then the award), so the
        // routing decision that follows carries none.
        if let Some(auction) = &decision.auction {
            for bid in &auction.bids {
                out.push(EventBody::BidPlaced(BidPlaced {
                    task_id: r.task_id.clone(),
                    attempt: r.attempt,
                    attempt_id: r.attempt_id.clone(),
                    bid: bid.clone(),
                }));
            }
            out.push(EventBody::AuctionClosed(AuctionClosed {
                task_id: r.task_id.clone(),
                attempt: r.attempt,
                attempt_id: r.attempt_id.clone(),
                price_micros: auction
                    .bids
                    .iter()
                    .find(|b| b.status == "WON")
                    .and_then(|b| b.price_micros),
                winner: auction.winner.clone(),
                bids: i32::try_from(auction.bids.len()).unwrap_or(i32::MAX),
                reason: auction.reason.clone(),
            }));
        }
        out.push(EventBody::TaskRouted(TaskRouted {
            task_id: r.task_id.clone(),
            attempt: r.attempt,
            attempt_id: r.attempt_id.clone(),
            executor_zone: r.executor_zone.clone(),
            decision: RoutingDecision {
                auction: None,
                ..decision.clone()
            },
        }));
    }
    match r.outcome {
        TaskOutcome::Succeeded => out.push(EventBody::TaskCompleted(TaskCompleted {
            task_id: r.task_id.clone(),
            attempt: r.attempt,
            attempt_id: r.attempt_id.clone(),
            model_id: r.model_id.clone(),
            executor_zone: r.executor_zone.clone(),
            output: r.output.clone().unwrap_or_default(),
            output_ref: r.output_ref.clone(),
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            cost_micros: r.cost_micros,
            latency_ms: r.latency_ms,
            // A recorded fact: the audit checks it, the processor only carries it.
            execution: r.execution.clone(),
        })),
        TaskOutcome::Failed => {
            let error = r
                .error
                .clone()
                .unwrap_or_else(|| "unknown error".to_owned());
            // On a budget, the retry is pre-authorised against what the failed attempt
            // actually spent (its calls), not its worst case still counted in flight.
            let after;
            let state = match &r.routing {
                Some(decision) if state.budget.is_some() => {
                    let mut s = state.clone();
                    let calls = decision.calls.iter().map(|c| c.cost_micros);
                    s.spent_micros = calls.fold(s.spent_micros, i64::saturating_add);
                    s.tasks.insert(r.task_id.clone(), TaskStatus::Pending);
                    after = s;
                    &after
                }
                _ => state,
            };
            out.extend(fail_attempt(
                state,
                &r.task_id,
                r.attempt,
                &error,
                r.retryable,
                None,
                policy,
            ));
        }
    }
    out
}

fn on_timer(state: &WorkflowState, t: &TaskTimerFired, policy: &Policy) -> Vec<EventBody> {
    match t.kind {
        TimerKind::Deadline => {
            let timeout = state.task(&t.task_id).map_or(0, |task| task.timeout_ms);
            let error = format!("no result within the task's timeout of {timeout} ms");
            fail_attempt(state, &t.task_id, t.attempt, &error, true, None, policy)
        }
        TimerKind::Unclaimed => {
            let error = format!("no executor of zone {} picked the task up", t.zone);
            fail_attempt(
                state,
                &t.task_id,
                t.attempt,
                &error,
                true,
                Some(&t.zone),
                policy,
            )
        }
    }
}

/// The events of a failed attempt: a retry (with backoff left to the executor) while the
/// budget lasts, a move to another allowed zone when the zone was unavailable, otherwise the
/// task fails, its dependents are skipped and the workflow fails.
fn fail_attempt(
    state: &WorkflowState,
    task_id: &str,
    attempt: i32,
    error: &str,
    retryable: bool,
    unavailable_zone: Option<&str>,
    policy: &Policy,
) -> Vec<EventBody> {
    let Some(task) = state.task(task_id) else {
        return vec![];
    };
    let failures =
        state.failures.get(task_id).copied().unwrap_or(0) + i32::from(unavailable_zone.is_none());
    let mut avoid = state.unavailable.get(task_id).cloned().unwrap_or_default();
    if let Some(z) = unavailable_zone {
        avoid.insert(z.to_owned());
    }
    let next_zone = pick_zone(state, task, policy, &avoid);
    let wants_retry = retryable && failures < task.retry.max_attempts;
    // The retry is pre-authorised like any attempt. After a timeout the attempt still counts
    // in flight at its worst case: its calls may yet be billed.
    let unaffordable = wants_retry
        .then(|| state.unaffordable(task_id, 0))
        .flatten();
    let error = match &unaffordable {
        Some(budget) => format!("{error}; {budget}"),
        None => error.to_owned(),
    };
    let error = error.as_str();
    let (retry, error) = match (wants_retry && unaffordable.is_none(), &next_zone) {
        (true, Some(_)) => (true, error.to_owned()),
        (true, None) => (
            false,
            format!(
                "{error}; no other allowed zone is available (tried {})",
                avoid.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        ),
        (false, _) => (false, error.to_owned()),
    };
    let mut out = vec![EventBody::TaskFailed(TaskFailed {
        task_id: task_id.to_owned(),
        attempt,
        attempt_id: attempt_id(&state.workflow_id, task_id, attempt),
        error: error.clone(),
        retryable: retry,
        unavailable_zone: unavailable_zone.map(str::to_owned),
    })];
    if let (true, Some(zone)) = (retry, next_zone) {
        out.push(EventBody::TaskScheduled(TaskScheduled {
            task_id: task_id.to_owned(),
            attempt: attempt + 1,
        }));
        out.push(dispatch_to(&state.workflow_id, task, attempt + 1, zone));
        return out;
    }
    for skipped in downstream(state, task_id) {
        out.push(EventBody::TaskSkipped(TaskSkipped {
            task_id: skipped,
            reason: format!("dependency {task_id} failed"),
        }));
    }
    out.push(EventBody::WorkflowFailed(WorkflowFailed {
        reason: format!("task {task_id} failed after {attempt} attempt(s): {error}"),
        failed_task: Some(task_id.to_owned()),
    }));
    out
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
    // The worst case of the attempts this call dispatches, which are not in `state` yet.
    let mut dispatching = 0i64;
    for t in &w.tasks {
        let pending = matches!(state.tasks.get(&t.id), Some(TaskStatus::Pending));
        if pending && t.depends_on.iter().all(|d| completed.contains(d.as_str())) {
            // Pre-authorisation: when the reservation cannot cover the attempt, nothing more
            // runs; the tasks not yet dispatched are skipped with the reason.
            if let Some(reason) = state.unaffordable(&t.id, dispatching) {
                let dispatched: BTreeSet<&str> = out
                    .iter()
                    .filter_map(|b| match b {
                        EventBody::TaskDispatched(d) => Some(d.task_id.as_str()),
                        _ => None,
                    })
                    .collect();
                let mut skipped = Vec::new();
                for other in &w.tasks {
                    let waiting = matches!(state.tasks.get(&other.id), Some(TaskStatus::Pending));
                    if waiting && !dispatched.contains(other.id.as_str()) {
                        skipped.push(EventBody::TaskSkipped(TaskSkipped {
                            task_id: other.id.clone(),
                            reason: reason.clone(),
                        }));
                    }
                }
                out.extend(skipped);
                out.push(EventBody::WorkflowFailed(WorkflowFailed {
                    reason,
                    failed_task: Some(t.id.clone()),
                }));
                return out;
            }
            dispatching = dispatching.saturating_add(
                state
                    .budget
                    .as_ref()
                    .and_then(|b| b.attempt_micros.get(&t.id).copied())
                    .unwrap_or(0),
            );
            out.push(EventBody::TaskScheduled(TaskScheduled {
                task_id: t.id.clone(),
                attempt: 1,
            }));
            let zone = pick_zone(state, t, policy, &BTreeSet::new()).unwrap_or_default();
            out.push(dispatch_to(wf_id, t, 1, zone));
        }
    }
    out
}

/// The task's allowed zones with groups expanded, sorted.
pub fn allowed_zones(state: &WorkflowState, task: &Task, policy: &Policy) -> BTreeSet<String> {
    let names = if task.zones.is_empty() {
        state
            .workflow
            .as_ref()
            .map(|w| w.zones.clone())
            .unwrap_or_default()
    } else {
        task.zones.clone()
    };
    expand_zones(&names, &policy.groups)
}

/// Zone and group names as the set of zones they stand for (a name that is no group is a
/// zone), sorted.
pub fn expand_zones(names: &[String], groups: &[(String, Vec<String>)]) -> BTreeSet<String> {
    names
        .iter()
        .flat_map(|n| match groups.iter().find(|(g, _)| g == n) {
            Some((_, zs)) => zs.clone(),
            None => vec![n.clone()],
        })
        .collect()
}

/// The zone whose queue gets an attempt: the first allowed zone (sorted) not known to be
/// unavailable. The model is chosen inside the zone by its executors' router, which sees
/// live health; the processor decides only what must replay identically.
fn pick_zone(
    state: &WorkflowState,
    task: &Task,
    policy: &Policy,
    avoid: &BTreeSet<String>,
) -> Option<String> {
    allowed_zones(state, task, policy)
        .into_iter()
        .find(|z| !avoid.contains(z))
}

fn dispatch_to(wf_id: &str, task: &Task, attempt: i32, zone: String) -> EventBody {
    EventBody::TaskDispatched(TaskDispatched {
        task_id: task.id.clone(),
        attempt,
        attempt_id: attempt_id(wf_id, &task.id, attempt),
        zone,
        model_id: task.model.clone().unwrap_or_default(),
    })
}

/// The work request for the attempt of `task_id` in flight: what the processor publishes to
/// `triad.tasks.<zone>` after the `TaskDispatched` event, and again on recovery.
pub fn task_request(state: &WorkflowState, task_id: &str, policy: &Policy) -> Option<TaskRequest> {
    let d = state.dispatch(task_id)?;
    let task = state.task(task_id)?;
    // A dependency's output travels as it arrived: inline, or by reference (claim check).
    let mut inputs = BTreeMap::new();
    let mut input_refs = BTreeMap::new();
    for dep in &task.depends_on {
        match state.tasks.get(dep) {
            Some(TaskStatus::Completed {
                output_ref: Some(r),
                ..
            }) => {
                input_refs.insert(dep.clone(), r.clone());
            }
            Some(TaskStatus::Completed { output, .. }) => {
                inputs.insert(dep.clone(), serde_bytes::ByteBuf::from(output.clone()));
            }
            _ => {}
        }
    }
    Some(TaskRequest {
        workflow_id: state.workflow_id.clone(),
        dispatched_event_id: d.event_id.clone(),
        issued_at: d.dispatched_at,
        task_id: task_id.to_owned(),
        attempt: d.attempt,
        attempt_id: d.attempt_id.clone(),
        zone: d.zone.clone(),
        allowed_zones: allowed_zones(state, task, policy).into_iter().collect(),
        prompt: task.prompt.clone().into_bytes(),
        inputs,
        input_refs,
        model_hint: task.model.clone(),
        specialties: task.specialties.clone(),
        max_tokens: task.max_tokens,
        timeout_ms: task.timeout_ms,
        auction: task.auction,
        // Pre-authorised at dispatch against the reservation; the executor holds each call
        // to it.
        budget_micros: state
            .budget
            .as_ref()
            .map(|b| b.attempt_micros.get(task_id).copied().unwrap_or(0)),
        schema_version: triad_domain::TASK_REQUEST_SCHEMA_VERSION,
    })
}

/// The requests of every attempt in flight (the outbox rule: re-published on recovery).
pub fn pending_requests(state: &WorkflowState, policy: &Policy) -> Vec<TaskRequest> {
    if state.status != Status::Running {
        return vec![];
    }
    state
        .tasks
        .keys()
        .filter_map(|t| task_request(state, t, policy))
        .collect()
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
    let mut outputs = BTreeMap::new();
    let mut output_refs = BTreeMap::new();
    for t in w.tasks.iter().filter(|t| !depended.contains(t.id.as_str())) {
        match state.tasks.get(&t.id) {
            Some(TaskStatus::Completed {
                output_ref: Some(r),
                ..
            }) => {
                output_refs.insert(t.id.clone(), r.clone());
            }
            Some(TaskStatus::Completed { output, .. }) => {
                outputs.insert(t.id.clone(), serde_bytes::ByteBuf::from(output.clone()));
            }
            _ => {}
        }
    }
    Some(EventBody::WorkflowCompleted(WorkflowCompleted {
        outputs,
        output_refs,
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
