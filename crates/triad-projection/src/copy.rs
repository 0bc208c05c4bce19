//! Binary COPY of the rows a batch creates (plan.rs folds their later changes in first):
//! the same wire format as the bench's baseline, so new rows cost what COPY costs.

use std::pin::pin;

use bytes::{BufMut as _, BytesMut};
use futures::SinkExt as _;
use tokio_postgres::types::{IsNull, ToSql, Type, to_sql_checked};

use crate::plan::{Inserts, time};
use crate::sql::{Sql, Stmt};
use crate::{Error, Result};

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

/// The signature, flags and header-extension length that open a binary COPY body.
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// A binary COPY body built in memory and sent in one piece. (tokio-postgres's
/// `BinaryCopyInWriter` sends every 4 KiB, each send a trip through the connection task and a
/// wake-up; a batch's rows are a few hundred KiB at most, and the bench's baseline sends its
/// body whole too.)
struct CopyBody {
    types: &'static [Type],
    buf: BytesMut,
}

impl CopyBody {
    fn new(types: &'static [Type]) -> Self {
        let mut buf = BytesMut::with_capacity(64 * 1024);
        buf.put_slice(HEADER);
        Self { types, buf }
    }

    /// Appends one row: the field count, then each field's length (-1 for NULL) and value.
    fn row(&mut self, values: &[&(dyn ToSql + Sync)]) -> Result<()> {
        if values.len() != self.types.len() {
            return Err(Error::Encode(format!(
                "a row of {} values for {} columns",
                values.len(),
                self.types.len()
            )));
        }
        let fields = i16::try_from(values.len()).map_err(|e| Error::Encode(e.to_string()))?;
        self.buf.put_i16(fields);
        for (value, ty) in values.iter().zip(self.types) {
            let at = self.buf.len();
            self.buf.put_i32(0);
            let len = match value
                .to_sql_checked(ty, &mut self.buf)
                .map_err(|e| Error::Encode(format!("{ty}: {e}")))?
            {
                IsNull::Yes => -1,
                IsNull::No => i32::try_from(self.buf.len() - at - 4)
                    .map_err(|e| Error::Encode(e.to_string()))?,
            };
            self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        Ok(())
    }

    /// Runs `statement` (a `COPY … FROM STDIN (FORMAT binary)`) with the rows appended.
    async fn send(mut self, tx: &tokio_postgres::Transaction<'_>, statement: &str) -> Result<()> {
        self.buf.put_i16(-1);
        let mut sink = pin!(tx.copy_in(statement).await?);
        sink.send(self.buf.freeze()).await?;
        sink.as_mut().finish().await?;
        Ok(())
    }
}

/// The column types of `copy_workflows`, `copy_tasks` and `copy_events`, in their order.
const WORKFLOWS: [Type; 19] = [
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
    Type::TEXT,
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
        let mut body = CopyBody::new(&WORKFLOWS);
        for (id, w) in &inserts.workflows {
            let (created, updated) = (time(w.created_at), time(w.updated_at));
            let finished = w.finished_at.map(time);
            let labels = Jsonb(&w.labels);
            body.row(&[
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
                &w.tenant,
            ])?;
        }
        body.send(tx, sql.text(Stmt::CopyWorkflows)).await?;
    }
    if !inserts.tasks.is_empty() {
        let mut body = CopyBody::new(&TASKS);
        for ((workflow, task), t) in &inserts.tasks {
            let scheduled = t.scheduled_at.map(time);
            let finished = t.finished_at.map(time);
            body.row(&[
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
            ])?;
        }
        body.send(tx, sql.text(Stmt::CopyTasks)).await?;
    }
    let t = &inserts.timeline;
    if !t.sequence.is_empty() {
        let mut body = CopyBody::new(&EVENTS);
        for i in 0..t.sequence.len() {
            let at = time(t.occurred_at[i]);
            let data = Jsonb(&t.data[i]);
            body.row(&[
                &t.workflow[i],
                &t.sequence[i],
                &t.event_id[i],
                &t.event_type[i],
                &t.task[i],
                &at,
                &t.partition[i],
                &t.offset[i],
                &data,
            ])?;
        }
        body.send(tx, sql.text(Stmt::CopyEvents)).await?;
    }
    Ok(())
}
