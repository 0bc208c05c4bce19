//! The projection folds each batch in memory (rows created by the batch are inserted whole,
//! older rows get set-based updates). This proves, against the real PostgreSQL, that where
//! batches start and end never changes the result: random histories — retries on other
//! models, failures with skipped dependants, cancellations, rejections, discarded results,
//! redelivered duplicates — applied one event per batch, in random batches and in one batch
//! hash identically, and the counters match what the test computes from the histories.
//! Re-run a failure with `FOLD_TEST_SEED=<seed>`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use triad_domain::event::*;
use triad_domain::fixtures;

const MODELS: [&str; 3] = ["model-a", "model-b", "model-c"];
const BASE_MICROS: i64 = 1_790_000_000_000_000;

/// What the test expects the `models` table to count, from the histories alone.
#[derive(Debug, Default, PartialEq, Eq)]
struct Expected {
    completed: BTreeMap<String, i64>,
    failed: BTreeMap<String, i64>,
    discarded: BTreeMap<String, i64>,
    statuses: BTreeMap<String, &'static str>,
}

fn history(rng: &mut StdRng, expected: &mut Expected, wf: &str) -> Vec<EventBody> {
    if rng.random_ratio(1, 10) {
        expected.statuses.insert(wf.to_owned(), "REJECTED");
        return vec![EventBody::WorkflowRejected(WorkflowRejected {
            reason: "unknown zone MARS".into(),
            field: Some("tasks[1].zones".into()),
            registry_position: None,
            tenant: Some("beta".into()),
        })];
    }
    let spec = fixtures::research_workflow();
    let tasks: Vec<String> = spec.tasks.iter().map(|t| t.id.clone()).collect();
    let mut out = vec![EventBody::WorkflowAccepted(WorkflowAccepted {
        name: spec.name,
        default_zones: spec.default_zones,
        tasks: spec.tasks,
        labels: spec.labels,
        policy_version: None,
        budget: None,
        registry_position: None,
        tenant: rng.random_ratio(1, 2).then(|| "acme".to_owned()),
    })];
    let mut total = 0;
    let mut used = Vec::new();
    for (n, task) in tasks.iter().enumerate() {
        if rng.random_ratio(1, 12) {
            let reason = rng.random_bool(0.5).then(|| "user asked".to_owned());
            out.push(EventBody::WorkflowCancelled(WorkflowCancelled { reason }));
            expected.statuses.insert(wf.to_owned(), "CANCELLED");
            return out;
        }
        let attempts = rng.random_range(1..=3);
        for attempt in 1..=attempts {
            let model = MODELS[rng.random_range(0..MODELS.len())].to_owned();
            let attempt_id = format!("{task}#{attempt}");
            out.push(EventBody::TaskScheduled(TaskScheduled {
                task_id: task.clone(),
                attempt,
            }));
            out.push(EventBody::TaskDispatched(TaskDispatched {
                task_id: task.clone(),
                attempt,
                attempt_id: attempt_id.clone(),
                zone: "US-EAST".into(),
                model_id: model.clone(),
            }));
            if rng.random_ratio(1, 3) {
                let mut routed = fixtures::routing_decision();
                routed.model_id = model.clone();
                out.push(EventBody::TaskRouted(TaskRouted {
                    task_id: task.clone(),
                    attempt,
                    attempt_id: attempt_id.clone(),
                    executor_zone: "US-EAST".into(),
                    decision: routed,
                }));
            }
            let last = attempt == attempts;
            let gives_up = last && rng.random_ratio(1, 4);
            if !last || gives_up {
                out.push(EventBody::TaskFailed(TaskFailed {
                    task_id: task.clone(),
                    attempt,
                    attempt_id: attempt_id.clone(),
                    error: format!("attempt {attempt} timed out"),
                    retryable: !gives_up,
                    unavailable_zone: None,
                }));
                *expected.failed.entry(model.clone()).or_default() += 1;
                if gives_up {
                    for later in &tasks[n + 1..] {
                        out.push(EventBody::TaskSkipped(TaskSkipped {
                            task_id: later.clone(),
                            reason: format!("dependency {task} failed"),
                        }));
                    }
                    out.push(EventBody::WorkflowFailed(WorkflowFailed {
                        reason: format!("task {task} failed"),
                        failed_task: rng.random_bool(0.8).then(|| task.clone()),
                    }));
                    expected.statuses.insert(wf.to_owned(), "FAILED");
                    return out;
                }
                if rng.random_ratio(1, 3) {
                    // The failed attempt's late result, discarded.
                    out.push(EventBody::TaskResultDiscarded(TaskResultDiscarded {
                        task_id: task.clone(),
                        attempt_id: attempt_id.clone(),
                        model_id: model.clone(),
                        cost_micros: 7,
                        reason: "result of a failed attempt".into(),
                    }));
                    *expected.discarded.entry(model.clone()).or_default() += 1;
                }
                continue;
            }
            let cost = rng.random_range(1..1000);
            total += cost;
            used.push(model.clone());
            let inline = rng.random_bool(0.7);
            out.push(EventBody::TaskCompleted(TaskCompleted {
                task_id: task.clone(),
                attempt,
                attempt_id,
                model_id: model.clone(),
                executor_zone: "US-EAST".into(),
                output: if inline {
                    format!("answer {n}").into_bytes()
                } else {
                    Vec::new()
                },
                output_ref: (!inline).then(fixtures::blob_ref),
                input_tokens: rng.random_range(1..100),
                output_tokens: rng.random_range(1..100),
                cost_micros: cost,
                latency_ms: rng.random_range(1..500),
                execution: None,
            }));
            *expected.completed.entry(model).or_default() += 1;
        }
    }
    used.sort();
    used.dedup();
    out.push(EventBody::WorkflowCompleted(WorkflowCompleted {
        outputs: BTreeMap::new(),
        output_refs: BTreeMap::new(),
        total_cost_micros: total + 1, // the billed total, which the recount must keep
        models_used: used,
    }));
    expected.statuses.insert(wf.to_owned(), "COMPLETED");
    out
}

fn event(wf: &str, index: usize, sequence: i64, body: EventBody) -> WorkflowEvent {
    let causation = Causation {
        command_id: None,
        topic: "fold-test".into(),
        partition: 0,
        offset: sequence,
    };
    WorkflowEvent {
        meta: EventMetadata {
            event_id: uuid::Uuid::new_v5(
                &uuid::Uuid::NAMESPACE_OID,
                format!("{wf}/{sequence}").as_bytes(),
            )
            .to_string(),
            event_type: body.type_name().to_owned(),
            occurred_at: BASE_MICROS + sequence * 1_000 + index as i64,
            workflow_id: wf.to_owned(),
            causation,
            sequence,
            schema_version: triad_domain::EVENT_SCHEMA_VERSION,
        },
        body,
        signed_root: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_boundaries_never_change_the_read_model() {
    let seed: u64 = std::env::var("FOLD_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("FOLD_TEST_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut expected = Expected::default();
    let run = uuid::Uuid::new_v4().simple().to_string();

    // Histories of 60 workflows, interleaved at random (each keeps its order), with some
    // events delivered twice.
    let mut queues: Vec<(String, std::collections::VecDeque<WorkflowEvent>)> = (0..60)
        .map(|n| {
            let wf = format!("wf-fold-{n}-{}", &run[..8]);
            let events = history(&mut rng, &mut expected, &wf)
                .into_iter()
                .enumerate()
                .map(|(i, body)| event(&wf, n, i as i64 + 1, body))
                .collect();
            (wf, events)
        })
        .collect();
    let mut stream: Vec<WorkflowEvent> = Vec::new();
    let mut duplicates = 0;
    while !queues.is_empty() {
        let pick = rng.random_range(0..queues.len());
        let next = queues[pick].1.pop_front().unwrap();
        if next.meta.sequence > 1 && rng.random_ratio(1, 20) {
            let wf = &next.meta.workflow_id;
            let earlier = stream.iter().rfind(|e| &e.meta.workflow_id == wf).unwrap();
            stream.push(earlier.clone());
            duplicates += 1;
        }
        stream.push(next);
        if queues[pick].1.is_empty() {
            queues.swap_remove(pick);
        }
    }
    let records: Vec<(i32, i64, WorkflowEvent)> = stream
        .into_iter()
        .enumerate()
        .map(|(offset, e)| (0, offset as i64, e))
        .collect();

    let pool = triad_store::pool("postgresql://triad@127.0.0.1:5432/triad", None, 2).unwrap();
    let sink = triad_projection::Sink::new(pool.clone(), "fold-test").unwrap();
    let mut hashes = Vec::new();
    for (name, sizes) in [
        ("one", Some(1)),
        ("random", None),
        ("all", Some(usize::MAX)),
    ] {
        let schema = format!("fold_{}_{name}", &run[..8]);
        sink.ensure(&schema, &schema).await.unwrap();
        let mut applied = triad_projection::Applied::default();
        let mut rest = &records[..];
        while !rest.is_empty() {
            let size = sizes
                .unwrap_or_else(|| rng.random_range(1..40))
                .min(rest.len());
            let a = sink.apply_events(&schema, &rest[..size]).await.unwrap();
            applied.events += a.events;
            applied.duplicates += a.duplicates;
            rest = &rest[size..];
        }
        assert_eq!(applied.duplicates, duplicates, "{name}: duplicates skipped");
        assert_eq!(applied.events, records.len() - duplicates, "{name}");
        let hash = sink.hashes(&schema).await.unwrap();
        hashes.push((name, schema, hash));
    }

    let client = pool.get().await.unwrap();
    let (_, schema, one) = &hashes[0];
    for (name, _, other) in &hashes[1..] {
        assert_eq!(one, other, "batches of one vs {name}");
    }
    // And the shared result is right, by the histories.
    let rows = client
        .query(
            &format!(
                "SELECT model_id, tasks_completed, tasks_failed, results_discarded \
                 FROM {schema}.models"
            ),
            &[],
        )
        .await
        .unwrap();
    let mut actual = Expected::default();
    for r in rows {
        let model: String = r.get(0);
        for (map, n) in [
            (&mut actual.completed, r.get::<_, i64>(1)),
            (&mut actual.failed, r.get::<_, i64>(2)),
            (&mut actual.discarded, r.get::<_, i64>(3)),
        ] {
            if n > 0 {
                map.insert(model.clone(), n);
            }
        }
    }
    let rows = client
        .query(
            &format!("SELECT workflow_id, status FROM {schema}.workflows"),
            &[],
        )
        .await
        .unwrap();
    for r in rows {
        let status: String = r.get(1);
        let known = [
            "REJECTED",
            "CANCELLED",
            "FAILED",
            "COMPLETED",
            "RUNNING",
            "ACCEPTED",
        ]
        .into_iter()
        .find(|s| *s == status)
        .unwrap();
        actual.statuses.insert(r.get(0), known);
    }
    assert_eq!(actual, expected);
    for (_, schema, _) in &hashes {
        client
            .query("SELECT triad_drop_schema($1)", &[schema])
            .await
            .unwrap();
    }
}
