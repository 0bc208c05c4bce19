//! Queries on the read models (connections have `search_path` set to the live schema).

use serde::Serialize;
use serde_json::Value;

use crate::long::Long;
use crate::{Error, Result};

/// Workflows by id (`$1`: text[]), with the columns `workflow_from` reads.
const WORKFLOWS: &str = "SELECT workflow_id, name, status, \
    to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
    to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), \
    task_count, tasks_completed, tasks_failed, tasks_skipped, total_cost_micros, models_used, \
    labels::text, error, error_field, failed_task, last_sequence, tenant \
    FROM workflows WHERE workflow_id = ANY($1)";

/// The tasks of those workflows, with the columns `task_from` reads, then the workflow id.
const TASKS: &str = "SELECT task_id, status, depends_on, zones, model_id, zone, attempts, \
    latency_ms, input_tokens, output_tokens, cost_micros, error, output, output_sha256, \
    output_size, workflow_id FROM tasks WHERE workflow_id = ANY($1) \
    ORDER BY workflow_id, task_id";

const EVENTS_AFTER: &str = "SELECT sequence, event_id, event_type, task_id, \
    to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), data::text \
    FROM workflow_events WHERE workflow_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3";

#[derive(Debug, Clone, Serialize, async_graphql::SimpleObject)]
#[graphql(complex, name = "Workflow")]
pub struct WorkflowView {
    pub workflow_id: String,
    pub name: Option<String>,
    pub status: String,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub task_count: i32,
    pub tasks_completed: i32,
    pub tasks_failed: i32,
    pub tasks_skipped: i32,
    pub total_cost_micros: Long,
    pub models_used: Vec<String>,
    #[graphql(skip)]
    pub labels: Value,
    pub error: Option<String>,
    pub error_field: Option<String>,
    pub failed_task: Option<String>,
    /// `Int`, not `Long`: a workflow's events are bounded by its limits (tasks, attempts).
    pub last_sequence: i64,
    /// The tenant that owns the workflow; null for one submitted through the operator's
    /// door (only operators see those).
    pub tenant: Option<String>,
    pub tasks: Vec<TaskView>,
}

impl WorkflowView {
    /// Whether a caller whose scope is `scope` (its tenant; none for operators) sees it.
    pub fn visible_to(&self, scope: Option<&str>) -> bool {
        scope.is_none_or(|t| self.tenant.as_deref() == Some(t))
    }
}

#[derive(Debug, Clone, Serialize, async_graphql::SimpleObject)]
#[graphql(name = "Task")]
pub struct TaskView {
    pub task_id: String,
    pub status: String,
    pub depends_on: Vec<String>,
    pub zones: Vec<String>,
    pub model_id: Option<String>,
    pub zone: Option<String>,
    pub attempts: i32,
    pub latency_ms: Option<Long>,
    pub input_tokens: Option<Long>,
    pub output_tokens: Option<Long>,
    pub cost_micros: Option<Long>,
    pub error: Option<String>,
    /// The output when it is inline UTF-8 text that this API may show: plaintext, or a
    /// sealed output opened here because this API runs in one of its zones.
    pub output: Option<String>,
    /// The zones a sealed output may be opened in (null for a plaintext output). An API
    /// outside them returns no `output`.
    pub sealed_to: Option<Vec<String>>,
    /// The sealed output as stored, until [`crate::AppState::reveal`] opens it.
    #[graphql(skip)]
    #[serde(skip)]
    pub sealed: Option<Vec<u8>>,
    /// Set when the output is in the blob store (claim check).
    pub output_sha256: Option<String>,
    pub output_size: Option<Long>,
}

/// One timeline entry.
#[derive(Debug, Clone, Serialize, async_graphql::SimpleObject)]
#[graphql(complex, name = "Event")]
pub struct EventView {
    pub workflow_id: String,
    pub sequence: i64,
    pub event_id: String,
    #[serde(rename = "type")]
    #[graphql(name = "type")]
    pub event_type: String,
    pub task_id: Option<String>,
    pub occurred_at: String,
    #[graphql(skip)]
    pub data: Value,
}

impl EventView {
    /// True for the event that ends a workflow.
    pub fn is_final(&self) -> bool {
        matches!(
            self.event_type.as_str(),
            "WorkflowCompleted" | "WorkflowFailed" | "WorkflowCancelled" | "WorkflowRejected"
        )
    }

    /// The seed's SSE event names.
    pub fn sse_name(&self) -> &'static str {
        match self.event_type.as_str() {
            "WorkflowAccepted" => "workflow.accepted",
            "WorkflowRejected" => "workflow.rejected",
            "TaskScheduled" => "task.scheduled",
            "TaskDispatched" => "task.executing",
            "TaskRouted" => "task.routed",
            "TaskCompleted" => "task.complete",
            "TaskFailed" => "task.failed",
            "TaskSkipped" => "task.skipped",
            "TaskResultDiscarded" => "task.result_discarded",
            "BidPlaced" => "auction.bid",
            "AuctionClosed" => "auction.closed",
            "BudgetRequested" => "budget.requested",
            "BudgetSettled" => "budget.settled",
            "WorkflowCompleted" => "workflow.complete",
            "WorkflowFailed" => "workflow.failed",
            "WorkflowCancelled" => "workflow.cancelled",
            _ => "event",
        }
    }
}

const WORKFLOWS_PAGE: &str = "SELECT workflow_id, \
    (extract(epoch FROM created_at) * 1000000)::bigint \
    FROM workflows \
    WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR name = $2) \
    AND ($3::bigint IS NULL OR (created_at, workflow_id) < (micros_ts($3), $4)) \
    AND ($6::text IS NULL OR tenant = $6) \
    ORDER BY created_at DESC, workflow_id DESC LIMIT $5";

/// Where the read model is in each event-store partition (the next offset to apply).
const POSITIONS: &str = "SELECT partition, next_offset FROM projection_offsets";

/// The workflows (matching the filter) with an event applied in the given offset ranges,
/// in the order they last changed. The ranges are (partition, from, until) as arrays.
const CHANGED: &str = "SELECT w.workflow_id FROM workflows w \
    WHERE w.workflow_id IN (SELECT e.workflow_id FROM workflow_events e \
        JOIN unnest($1::integer[], $2::bigint[], $3::bigint[]) AS r (p, lo, hi) \
        ON e.partition = r.p AND e.kafka_offset >= r.lo AND e.kafka_offset < r.hi) \
    AND ($4::text IS NULL OR w.status = $4) AND ($5::text IS NULL OR w.name = $5) \
    AND ($6::text IS NULL OR w.tenant = $6) \
    ORDER BY w.updated_at, w.workflow_id";

const MODELS: &str = "SELECT model_id, tasks_completed, tasks_failed, results_discarded, \
    cost_micros, discarded_micros, input_tokens, output_tokens, success_rate, p50_ms, p95_ms, \
    p99_ms FROM model_stats ORDER BY model_id";

/// A model with the statistics the read model measured.
#[derive(Debug, Clone, Serialize, async_graphql::SimpleObject)]
#[graphql(name = "Model")]
pub struct ModelView {
    pub model_id: String,
    pub tasks_completed: Long,
    pub tasks_failed: Long,
    pub results_discarded: Long,
    pub cost_micros: Long,
    pub discarded_micros: Long,
    pub input_tokens: Long,
    pub output_tokens: Long,
    pub success_rate: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p95_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The registration of a remote model that registered itself (null for configured
    /// models and models known only from their calls).
    pub registration: Option<crate::registry::RegistrationView>,
}

impl ModelView {
    /// A registered model no call has used yet.
    pub fn registered(model_id: String, registration: crate::registry::RegistrationView) -> Self {
        Self {
            model_id,
            tasks_completed: Long(0),
            tasks_failed: Long(0),
            results_discarded: Long(0),
            cost_micros: Long(0),
            discarded_micros: Long(0),
            input_tokens: Long(0),
            output_tokens: Long(0),
            success_rate: None,
            p50_ms: None,
            p95_ms: None,
            p99_ms: None,
            registration: Some(registration),
        }
    }
}

/// A position in `workflows` (newest first): the last row's creation time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    pub created_micros: i64,
    pub workflow_id: String,
}

impl Cursor {
    pub fn parse(text: &str) -> Option<Self> {
        let (micros, id) = text.split_once(':')?;
        Some(Self {
            created_micros: micros.parse().ok()?,
            workflow_id: id.to_owned(),
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.created_micros, self.workflow_id)
    }
}

pub(crate) async fn client(pool: &deadpool_postgres::Pool) -> Result<deadpool_postgres::Object> {
    pool.get()
        .await
        .map_err(|e| Error::Unavailable(e.to_string()))
}

pub async fn workflow(pool: &deadpool_postgres::Pool, id: &str) -> Result<Option<WorkflowView>> {
    Ok(workflows(pool, &[id.to_owned()]).await?.pop())
}

/// The workflows with these ids that exist, in the order of `ids`, each with its tasks: two
/// queries whatever the number (a page of the list is not N+1 queries).
pub async fn workflows(
    pool: &deadpool_postgres::Pool,
    ids: &[String],
) -> Result<Vec<WorkflowView>> {
    let client = client(pool).await?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&ids];
    let (rows, tasks) = futures::try_join!(
        client.query(WORKFLOWS, &params),
        client.query(TASKS, &params)
    )?;
    let mut by_id = std::collections::HashMap::new();
    for r in &rows {
        let view = workflow_from(r)?;
        by_id.insert(view.workflow_id.clone(), view);
    }
    for r in &tasks {
        let workflow: String = r.try_get(15)?;
        if let Some(view) = by_id.get_mut(&workflow) {
            view.tasks.push(task_from(r)?);
        }
    }
    Ok(ids.iter().filter_map(|id| by_id.remove(id)).collect())
}

fn workflow_from(r: &tokio_postgres::Row) -> Result<WorkflowView> {
    let labels: String = r.try_get(11)?;
    Ok(WorkflowView {
        workflow_id: r.try_get(0)?,
        name: r.try_get(1)?,
        status: r.try_get(2)?,
        created_at: r.try_get(3)?,
        finished_at: r.try_get(4)?,
        task_count: r.try_get(5)?,
        tasks_completed: r.try_get(6)?,
        tasks_failed: r.try_get(7)?,
        tasks_skipped: r.try_get(8)?,
        total_cost_micros: r.try_get(9)?,
        models_used: r.try_get(10)?,
        labels: serde_json::from_str(&labels).unwrap_or(Value::Null),
        error: r.try_get(12)?,
        error_field: r.try_get(13)?,
        failed_task: r.try_get(14)?,
        last_sequence: r.try_get(15)?,
        tenant: r.try_get(16)?,
        tasks: Vec::new(),
    })
}

fn task_from(r: &tokio_postgres::Row) -> Result<TaskView> {
    let output: Option<Vec<u8>> = r.try_get(12)?;
    Ok(TaskView {
        task_id: r.try_get(0)?,
        status: r.try_get(1)?,
        depends_on: r.try_get(2)?,
        zones: r.try_get(3)?,
        model_id: r.try_get(4)?,
        zone: r.try_get(5)?,
        attempts: r.try_get(6)?,
        latency_ms: r.try_get(7)?,
        input_tokens: r.try_get(8)?,
        output_tokens: r.try_get(9)?,
        cost_micros: r.try_get(10)?,
        error: r.try_get(11)?,
        sealed_to: output
            .as_deref()
            .and_then(triad_sovereignty::Envelope::from_wire)
            .and_then(Result::ok)
            .map(|e| e.zones),
        sealed: output.clone().filter(|b| triad_domain::is_sealed(b)),
        output: output
            .filter(|b| !triad_domain::is_sealed(b))
            .and_then(|b| String::from_utf8(b).ok()),
        output_sha256: r.try_get(13)?,
        output_size: r.try_get(14)?,
    })
}

/// Up to `limit` events of `workflow` after sequence `after`, in order.
pub async fn events_after(
    pool: &deadpool_postgres::Pool,
    workflow: &str,
    after: i64,
    limit: i64,
) -> Result<Vec<EventView>> {
    let client = client(pool).await?;
    let rows = client
        .query(EVENTS_AFTER, &[&workflow, &after, &limit])
        .await?;
    rows.iter()
        .map(|r| {
            let data: String = r.try_get(5)?;
            Ok(EventView {
                workflow_id: workflow.to_owned(),
                sequence: r.try_get(0)?,
                event_id: r.try_get(1)?,
                event_type: r.try_get(2)?,
                task_id: r.try_get(3)?,
                occurred_at: r.try_get(4)?,
                data: serde_json::from_str(&data).unwrap_or(Value::Null),
            })
        })
        .collect()
}

/// A page of workflows after `cursor`, newest first, and whether more follow; only
/// `tenant`'s when given.
pub async fn workflows_page(
    pool: &deadpool_postgres::Pool,
    status: Option<&str>,
    name: Option<&str>,
    tenant: Option<&str>,
    cursor: Option<&Cursor>,
    first: i64,
) -> Result<(Vec<(Cursor, WorkflowView)>, bool)> {
    let rows = {
        let client = client(pool).await?;
        let micros = cursor.map(|c| c.created_micros);
        let id = cursor.map(|c| c.workflow_id.clone());
        client
            .query(
                WORKFLOWS_PAGE,
                &[&status, &name, &micros, &id, &(first + 1), &tenant],
            )
            .await?
    };
    let more = i64::try_from(rows.len()).unwrap_or(i64::MAX) > first;
    let mut cursors = Vec::new();
    for r in rows.iter().take(usize::try_from(first).unwrap_or(0)) {
        cursors.push(Cursor {
            created_micros: r.try_get(1)?,
            workflow_id: r.try_get(0)?,
        });
    }
    let ids: Vec<String> = cursors.iter().map(|c| c.workflow_id.clone()).collect();
    let mut views: std::collections::HashMap<String, WorkflowView> = workflows(pool, &ids)
        .await?
        .into_iter()
        .map(|v| (v.workflow_id.clone(), v))
        .collect();
    let out = cursors
        .into_iter()
        .filter_map(|c| views.remove(&c.workflow_id).map(|v| (c, v)))
        .collect();
    Ok((out, more))
}

/// Event-store positions the read model has applied: partition → next offset.
pub type Positions = std::collections::BTreeMap<i32, i64>;

pub async fn positions(pool: &deadpool_postgres::Pool) -> Result<Positions> {
    let client = client(pool).await?;
    client
        .query(POSITIONS, &[])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}

/// The ids of the workflows matching `status`/`name`/`tenant` that changed after `from`, and the
/// positions they were read at — from one snapshot, so the next call starts exactly where
/// this one ended. The positions are Kafka offsets, which a rebuild from offset 0 keeps.
pub async fn changed_since(
    pool: &deadpool_postgres::Pool,
    from: &Positions,
    status: Option<&str>,
    name: Option<&str>,
    tenant: Option<&str>,
) -> Result<(Positions, Vec<String>)> {
    let mut client = client(pool).await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let to: Positions = tx
        .query(POSITIONS, &[])
        .await?
        .iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect::<Result<_>>()?;
    let (mut partitions, mut lows, mut highs) = (Vec::new(), Vec::new(), Vec::new());
    for (partition, until) in &to {
        let since = from.get(partition).copied().unwrap_or(0);
        if *until > since {
            partitions.push(*partition);
            lows.push(since);
            highs.push(*until);
        }
    }
    let ids = if partitions.is_empty() {
        Vec::new()
    } else {
        tx.query(
            CHANGED,
            &[&partitions, &lows, &highs, &status, &name, &tenant],
        )
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?
    };
    tx.commit().await?;
    Ok((to, ids))
}

pub async fn models(pool: &deadpool_postgres::Pool) -> Result<Vec<ModelView>> {
    let client = client(pool).await?;
    client
        .query(MODELS, &[])
        .await?
        .iter()
        .map(|r| {
            Ok(ModelView {
                model_id: r.try_get(0)?,
                tasks_completed: r.try_get(1)?,
                tasks_failed: r.try_get(2)?,
                results_discarded: r.try_get(3)?,
                cost_micros: r.try_get(4)?,
                discarded_micros: r.try_get(5)?,
                input_tokens: r.try_get(6)?,
                output_tokens: r.try_get(7)?,
                success_rate: r.try_get(8)?,
                p50_ms: r.try_get(9)?,
                p95_ms: r.try_get(10)?,
                p99_ms: r.try_get(11)?,
                registration: None,
            })
        })
        .collect()
}
