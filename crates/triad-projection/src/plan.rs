//! What the `workflows` projection writes for one event: pure, no I/O, so the mapping from
//! events to statements is tested without a database.

use serde_json::{Value, json};
use triad_domain::{EventBody, WorkflowEvent};

use crate::sql::Stmt;

/// A statement parameter (the PostgreSQL side binds these; see `pg.rs`).
#[derive(Debug, Clone, PartialEq)]
pub enum Param {
    Text(String),
    OptText(Option<String>),
    Int(i32),
    BigInt(i64),
    OptBigInt(Option<i64>),
    TextArray(Vec<String>),
    OptBytes(Option<Vec<u8>>),
    OptTextArray(Vec<Option<String>>),
    IntArray(Vec<i32>),
    BigIntArray(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Write {
    pub stmt: Stmt,
    pub params: Vec<Param>,
}

fn w(stmt: Stmt, params: Vec<Param>) -> Write {
    Write { stmt, params }
}

fn text(s: &str) -> Param {
    Param::Text(s.to_owned())
}

/// The writes for `event`, read at `partition`/`offset` of the event store, given that it is
/// the next event of its workflow (the caller skips duplicates).
pub fn plan(event: &WorkflowEvent, partition: i32, offset: i64) -> crate::Result<Vec<Write>> {
    let m = &event.meta;
    let wf = || text(&m.workflow_id);
    let at = Param::BigInt(m.occurred_at);
    let mut out = vec![w(
        Stmt::InsertEvent,
        vec![
            wf(),
            Param::BigInt(m.sequence),
            text(&m.event_id),
            text(event.body.type_name()),
            Param::OptText(task_of(&event.body).map(str::to_owned)),
            at.clone(),
            Param::Int(partition),
            Param::BigInt(offset),
            Param::Text(data(&event.body)?.to_string()),
        ],
    )];
    let touch = w(
        Stmt::TouchWorkflow,
        vec![wf(), Param::BigInt(m.sequence), at.clone()],
    );
    let count = w(Stmt::CountTasks, vec![wf()]);
    match &event.body {
        EventBody::WorkflowAccepted(a) => {
            let labels = serde_json::to_string(&a.labels)?;
            out.push(w(
                Stmt::WorkflowAccepted,
                vec![
                    wf(),
                    text(&a.name),
                    at,
                    Param::Int(i32::try_from(a.tasks.len()).unwrap_or(i32::MAX)),
                    Param::Text(labels),
                    Param::TextArray(a.default_zones.clone()),
                    Param::BigInt(m.sequence),
                ],
            ));
            for t in &a.tasks {
                let zones = if t.zones.is_empty() {
                    a.default_zones.clone()
                } else {
                    t.zones.clone()
                };
                out.push(w(
                    Stmt::TaskDeclared,
                    vec![
                        wf(),
                        text(&t.id),
                        Param::TextArray(t.depends_on.clone()),
                        Param::TextArray(zones),
                    ],
                ));
            }
            return Ok(out);
        }
        EventBody::WorkflowRejected(r) => {
            out.push(w(
                Stmt::WorkflowRejected,
                vec![
                    wf(),
                    at,
                    text(&r.reason),
                    Param::OptText(r.field.clone()),
                    Param::BigInt(m.sequence),
                ],
            ));
            return Ok(out);
        }
        EventBody::TaskScheduled(s) => out.push(w(
            Stmt::TaskScheduled,
            vec![wf(), text(&s.task_id), Param::Int(s.attempt), at],
        )),
        EventBody::TaskDispatched(d) => {
            out.push(w(
                Stmt::TaskDispatched,
                vec![
                    wf(),
                    text(&d.task_id),
                    Param::Int(d.attempt),
                    text(&d.model_id),
                    text(&d.zone),
                ],
            ));
            out.push(w(Stmt::WorkflowRunning, vec![wf()]));
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
            out.push(w(
                Stmt::TaskCompleted,
                vec![
                    wf(),
                    text(&c.task_id),
                    Param::Int(c.attempt),
                    text(&c.model_id),
                    text(&c.executor_zone),
                    Param::OptBigInt(Some(c.latency_ms)),
                    Param::OptBigInt(Some(c.input_tokens)),
                    Param::OptBigInt(Some(c.output_tokens)),
                    Param::OptBigInt(Some(c.cost_micros)),
                    Param::OptBytes(output),
                    Param::OptText(sha),
                    Param::OptBigInt(size),
                    at.clone(),
                ],
            ));
            out.push(w(
                Stmt::ModelCompleted,
                vec![
                    text(&c.model_id),
                    Param::BigInt(c.latency_ms),
                    Param::BigInt(c.input_tokens),
                    Param::BigInt(c.output_tokens),
                    Param::BigInt(c.cost_micros),
                    at,
                ],
            ));
            out.push(count);
        }
        EventBody::TaskFailed(f) => {
            out.push(w(
                Stmt::TaskFailed,
                vec![
                    wf(),
                    text(&f.task_id),
                    Param::Int(f.attempt),
                    text(&f.error),
                    at.clone(),
                ],
            ));
            out.push(w(Stmt::ModelFailed, vec![wf(), text(&f.task_id), at]));
            out.push(count);
        }
        EventBody::TaskSkipped(s) => {
            out.push(w(
                Stmt::TaskSkipped,
                vec![wf(), text(&s.task_id), text(&s.reason), at],
            ));
            out.push(count);
        }
        EventBody::WorkflowCompleted(c) => out.push(w(
            Stmt::WorkflowCompleted,
            vec![
                wf(),
                at,
                Param::BigInt(c.total_cost_micros),
                Param::TextArray(c.models_used.clone()),
            ],
        )),
        EventBody::WorkflowFailed(f) => out.push(w(
            Stmt::WorkflowFailed,
            vec![
                wf(),
                at,
                text(&f.reason),
                Param::OptText(f.failed_task.clone()),
            ],
        )),
        EventBody::WorkflowCancelled(c) => out.push(w(
            Stmt::WorkflowCancelled,
            vec![wf(), at, Param::OptText(c.reason.clone())],
        )),
        EventBody::TaskResultDiscarded(d) => out.push(w(
            Stmt::ResultDiscarded,
            vec![text(&d.model_id), Param::BigInt(d.cost_micros), at],
        )),
        EventBody::TaskRouted(_) => {}
    }
    out.push(touch);
    Ok(out)
}

/// A batch's writes with fewer statements, same result: the timeline rows become one
/// `insert_events` of arrays, each workflow is touched once (with its last event) and
/// recounted once, after every other write; the other writes keep their order.
pub fn condense(writes: Vec<Write>) -> Vec<Write> {
    let mut ordered = Vec::new();
    let mut columns: [Vec<Param>; 9] = Default::default();
    let mut rows = 0;
    let mut touches: Vec<Write> = Vec::new();
    let mut counts: Vec<Write> = Vec::new();
    for w in writes {
        match w.stmt {
            Stmt::InsertEvent if w.params.len() == 9 => {
                for (column, p) in columns.iter_mut().zip(w.params) {
                    column.push(p);
                }
                rows += 1;
            }
            Stmt::TouchWorkflow => {
                // Later events of a workflow come later in the batch: the last one wins.
                touches.retain(|t| t.params.first() != w.params.first());
                touches.push(w);
            }
            Stmt::CountTasks => {
                if !counts.iter().any(|c| c.params.first() == w.params.first()) {
                    counts.push(w);
                }
            }
            _ => ordered.push(w),
        }
    }
    if rows > 0 {
        let [wf, seq, id, ty, task, at, part, off, data] = columns;
        let texts = |c: Vec<Param>| -> Vec<String> {
            c.into_iter()
                .map(|p| match p {
                    Param::Text(s) => s,
                    _ => String::new(),
                })
                .collect()
        };
        let bigints = |c: Vec<Param>| -> Vec<i64> {
            c.into_iter()
                .map(|p| match p {
                    Param::BigInt(n) => n,
                    _ => 0,
                })
                .collect()
        };
        let insert = Write {
            stmt: Stmt::InsertEvents,
            params: vec![
                Param::TextArray(texts(wf)),
                Param::BigIntArray(bigints(seq)),
                Param::TextArray(texts(id)),
                Param::TextArray(texts(ty)),
                Param::OptTextArray(
                    task.into_iter()
                        .map(|p| match p {
                            Param::OptText(t) => t,
                            _ => None,
                        })
                        .collect(),
                ),
                Param::BigIntArray(bigints(at)),
                Param::IntArray(
                    part.into_iter()
                        .map(|p| match p {
                            Param::Int(n) => n,
                            _ => 0,
                        })
                        .collect(),
                ),
                Param::BigIntArray(bigints(off)),
                Param::TextArray(texts(data)),
            ],
        };
        ordered.insert(0, insert);
    }
    ordered.extend(touches);
    ordered.extend(counts);
    ordered
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use triad_domain::fixtures;

    fn stmts(event: &WorkflowEvent) -> Vec<Stmt> {
        plan(event, 0, 7)
            .unwrap()
            .into_iter()
            .map(|w| w.stmt)
            .collect()
    }

    #[test]
    fn every_event_starts_with_the_timeline_and_keeps_payloads_out_of_it() {
        for event in fixtures::workflow_events() {
            let writes = plan(&event, 2, 7).unwrap();
            let first = &writes[0];
            assert_eq!(first.stmt, Stmt::InsertEvent, "{}", event.meta.event_type);
            assert_eq!(first.params[6], Param::Int(2));
            assert_eq!(first.params[7], Param::BigInt(7));
            let Param::Text(json) = &first.params[8] else {
                panic!("data is text")
            };
            // Payload bytes would serialise as long arrays of numbers.
            assert!(!json.contains("\"output\":["), "{json}");
            assert!(!json.contains("\"prompt\":"), "{json}");
        }
    }

    #[test]
    fn first_events_create_the_workflow_and_later_ones_touch_it() {
        for event in fixtures::workflow_events() {
            let s = stmts(&event);
            match &event.body {
                EventBody::WorkflowAccepted(a) => {
                    assert_eq!(s[1], Stmt::WorkflowAccepted);
                    assert_eq!(s.len(), 2 + a.tasks.len());
                    assert!(!s.contains(&Stmt::TouchWorkflow));
                }
                EventBody::WorkflowRejected(_) => {
                    assert_eq!(s, vec![Stmt::InsertEvent, Stmt::WorkflowRejected]);
                }
                _ => assert_eq!(s.last(), Some(&Stmt::TouchWorkflow)),
            }
        }
    }

    #[test]
    fn task_outcomes_recount_the_workflow() {
        for event in fixtures::workflow_events() {
            let s = stmts(&event);
            let recount = matches!(
                event.body,
                EventBody::TaskCompleted(_) | EventBody::TaskFailed(_) | EventBody::TaskSkipped(_)
            );
            assert_eq!(s.contains(&Stmt::CountTasks), recount, "{s:?}");
        }
    }

    #[test]
    fn condense_keeps_the_order_and_merges_the_repeats() {
        let events = fixtures::workflow_events();
        let mut writes = Vec::new();
        for (n, e) in events.iter().enumerate() {
            writes.extend(plan(e, 0, n as i64).unwrap());
        }
        let others: Vec<Write> = writes
            .iter()
            .filter(|w| {
                !matches!(
                    w.stmt,
                    Stmt::InsertEvent | Stmt::TouchWorkflow | Stmt::CountTasks
                )
            })
            .cloned()
            .collect();
        let condensed = condense(writes);
        assert_eq!(condensed[0].stmt, Stmt::InsertEvents);
        let Param::BigIntArray(seqs) = &condensed[0].params[1] else {
            panic!("sequences")
        };
        assert_eq!(seqs.len(), events.len());
        assert_eq!(condensed[1..=others.len()].to_vec(), others, "order kept");
        let touches: Vec<&Write> = condensed
            .iter()
            .filter(|w| w.stmt == Stmt::TouchWorkflow)
            .collect();
        assert_eq!(touches.len(), 1, "one workflow, touched once");
        assert_eq!(
            touches[0].params[1],
            Param::BigInt(events.last().unwrap().meta.sequence)
        );
        assert_eq!(
            condensed
                .iter()
                .filter(|w| w.stmt == Stmt::CountTasks)
                .count(),
            1
        );
        assert!(matches!(
            condensed[condensed.len() - 1].stmt,
            Stmt::CountTasks
        ));
    }

    #[test]
    fn a_claim_checked_output_is_stored_by_reference() {
        let mut event = fixtures::workflow_events()
            .into_iter()
            .find(|e| matches!(e.body, EventBody::TaskCompleted(_)))
            .unwrap();
        if let EventBody::TaskCompleted(c) = &mut event.body {
            c.output.clear();
            c.output_ref = Some(triad_domain::BlobRef {
                sha256: "ab".repeat(32),
                size: 5_000_000,
                uri: "postgres:triad_blobs/x".into(),
            });
        }
        let writes = plan(&event, 0, 0).unwrap();
        let done = writes
            .iter()
            .find(|w| w.stmt == Stmt::TaskCompleted)
            .unwrap();
        assert_eq!(done.params[9], Param::OptBytes(None));
        assert_eq!(done.params[10], Param::OptText(Some("ab".repeat(32))));
        assert_eq!(done.params[11], Param::OptBigInt(Some(5_000_000)));
    }
}
