//! Binary COPY of the rows a batch creates (plan.rs folds their later changes in first):
//! the same wire format as the bench's baseline, so new rows cost what COPY costs.

use std::pin::pin;

use bytes::BufMut as _;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::Result;
use crate::plan::{Inserts, time};
use crate::sql::{Sql, Stmt};

/// JSON text sent as `jsonb` (its binary format: version 1, then the text, which PostgreSQL
/// parses and normalises exactly as it does a text cast).
#[derive(Debug)]
struct Jsonb<'a>(&'a str);

impl ToSql for Jsonb<'_> {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.put_u8(1);
        out.put_slice(self.0.as_bytes());
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::JSONB
    }

    to_sql_checked!();
}

/// The column types of `copy_workflows`, `copy_tasks` and `copy_events`, in their order.
const WORKFLOWS: [Type; 18] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::INT4,
    Type::INT8,
    Type::TEXT_ARRAY,
    Type::JSONB,
    Type::TEXT_ARRAY,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
];
const TASKS: [Type; 18] = [
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT_ARRAY,
    Type::TEXT_ARRAY,
    Type::TEXT,
    Type::TEXT,
    Type::INT4,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::INT8,
    Type::TEXT,
    Type::BYTEA,
    Type::TEXT,
    Type::INT8,
    Type::TIMESTAMPTZ,
    Type::TIMESTAMPTZ,
];
const EVENTS: [Type; 9] = [
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TIMESTAMPTZ,
    Type::INT4,
    Type::INT8,
    Type::JSONB,
];

/// Writes `inserts` in `tx`: workflows, then tasks (they reference workflows), then the
/// timeline; a table with no new rows is skipped.
pub(crate) async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &Sql,
    inserts: &Inserts,
) -> Result<()> {
    if !inserts.workflows.is_empty() {
        let sink = tx.copy_in(sql.text(Stmt::CopyWorkflows)).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &WORKFLOWS));
        for (id, w) in &inserts.workflows {
            let (created, updated) = (time(w.created_at), time(w.updated_at));
            let finished = w.finished_at.map(time);
            let labels = Jsonb(&w.labels);
            writer
                .as_mut()
                .write(&[
                    id,
                    &w.name,
                    &w.status,
                    &created,
                    &finished,
                    &w.task_count,
                    &w.tasks_completed,
                    &w.tasks_failed,
                    &w.tasks_skipped,
                    &w.total_cost_micros,
                    &w.models_used,
                    &labels,
                    &w.default_zones,
                    &w.error,
                    &w.error_field,
                    &w.failed_task,
                    &w.last_sequence,
                    &updated,
                ])
                .await?;
        }
        writer.finish().await?;
    }
    if !inserts.tasks.is_empty() {
        let sink = tx.copy_in(sql.text(Stmt::CopyTasks)).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &TASKS));
        for ((workflow, task), t) in &inserts.tasks {
            let scheduled = t.scheduled_at.map(time);
            let finished = t.finished_at.map(time);
            writer
                .as_mut()
                .write(&[
                    workflow,
                    task,
                    &t.status,
                    &t.depends_on,
                    &t.zones,
                    &t.model,
                    &t.zone,
                    &t.attempts,
                    &t.latency_ms,
                    &t.input_tokens,
                    &t.output_tokens,
                    &t.cost_micros,
                    &t.error,
                    &t.output,
                    &t.output_sha256,
                    &t.output_size,
                    &scheduled,
                    &finished,
                ])
                .await?;
        }
        writer.finish().await?;
    }
    let t = &inserts.timeline;
    if !t.sequence.is_empty() {
        let sink = tx.copy_in(sql.text(Stmt::CopyEvents)).await?;
        let mut writer = pin!(BinaryCopyInWriter::new(sink, &EVENTS));
        for i in 0..t.sequence.len() {
            let at = time(t.occurred_at[i]);
            let data = Jsonb(&t.data[i]);
            writer
                .as_mut()
                .write(&[
                    &t.workflow[i],
                    &t.sequence[i],
                    &t.event_id[i],
                    &t.event_type[i],
                    &t.task[i],
                    &at,
                    &t.partition[i],
                    &t.offset[i],
                    &data,
                ])
                .await?;
        }
        writer.finish().await?;
    }
    Ok(())
}
