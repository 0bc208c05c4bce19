//! The projection worker (`triad project`) against the real stack: the read models in
//! PostgreSQL hold every event exactly once across `kill -9`s of the worker, skip duplicate
//! and undecodable records (the latter dead-lettered), and `triad replay --verify` rebuilds
//! them from offset 0 into tables that hash identically before swapping them in, after which
//! the live worker carries on. Re-run a failure with `PROJECTION_TEST_SEED=<seed>`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rdkafka::message::Message;
use support::{Env, distinct_gap_free, kill, pg, wait_for};
use triad_domain::{DeadLetter, EventBody};

const WORKFLOWS: usize = 24;
const TASKS: usize = 4;

/// Content hashes of the read model tables (not the offsets, which move with every record).
async fn hashes(pg: &tokio_postgres::Client, schema: &str) -> Vec<String> {
    let mut out = Vec::new();
    for table in ["workflows", "tasks", "workflow_events", "models"] {
        let row = pg
            .query_one("SELECT triad_table_hash($1, $2)", &[&schema, &table])
            .await
            .unwrap();
        out.push(row.get(0));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_models_hold_each_event_once_across_kill_9_and_rebuild_identically() {
    let seed: u64 = std::env::var("PROJECTION_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("PROJECTION_TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut env = Env::new(3).await;
    let schema = format!("it_{}", env.group.trim_start_matches("it-"));
    env.extra_env.extend([
        ("TRIAD_PROJECTION__SCHEMA".to_owned(), schema.clone()),
        // Small batches: more transactions for the kills to land between and inside.
        (
            "TRIAD_PROJECTION__BATCH_MAX_RECORDS".to_owned(),
            "7".to_owned(),
        ),
    ]);
    let pg = pg().await;
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let mut projection = env.spawn("projection-0", &["project"]);

    let ids: Vec<String> = (0..WORKFLOWS)
        .map(|n| format!("wf-projection-{n}-{}", uuid::Uuid::new_v4()))
        .collect();
    env.submit_research(&ids, "projection", true).await;

    // 1 accepted + 4 × (scheduled, dispatched, routed, completed) + 1 completed.
    let expected = (WORKFLOWS * (2 + 4 * TASKS)) as i64;
    let count_events = format!("SELECT count(*) FROM {schema}.workflow_events");
    let mut kills: Vec<i64> = (0..3)
        .map(|_| rng.random_range(1..expected * 3 / 4))
        .collect();
    kills.sort_unstable();
    for (n, at) in kills.iter().enumerate() {
        let seen = wait_for(
            &pg,
            &count_events,
            "events to kill at",
            Duration::from_secs(120),
            |c| c >= *at,
        )
        .await;
        eprintln!("kill -9 of the projection at {seen} events (threshold {at})");
        kill(&mut projection);
        projection = env.spawn(&format!("projection-{}", n + 1), &["project"]);
    }

    let raw = env
        .events_until_finished(&ids, Duration::from_secs(180))
        .await;
    let per_workflow = distinct_gap_free(&raw, "event store");
    let total: usize = per_workflow.values().map(Vec::len).sum();
    assert_eq!(
        total as i64, expected,
        "the flow itself wrote what it should"
    );
    wait_for(
        &pg,
        &count_events,
        "every event in the read model",
        Duration::from_secs(60),
        |c| c >= expected,
    )
    .await;

    // The timeline: every event once, in sequence order, with its id.
    for (wf, events) in &per_workflow {
        let rows = pg
            .query(
                &format!(
                    "SELECT sequence, event_id, event_type FROM {schema}.workflow_events \
                     WHERE workflow_id = $1 ORDER BY sequence"
                ),
                &[wf],
            )
            .await
            .unwrap();
        let got: Vec<(i64, String, String)> = rows
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        let want: Vec<(i64, String, String)> = events
            .iter()
            .map(|e| {
                (
                    e.meta.sequence,
                    e.meta.event_id.clone(),
                    e.meta.event_type.clone(),
                )
            })
            .collect();
        assert_eq!(got, want, "{wf}: timeline");
        let row = pg
            .query_one(
                &format!(
                    "SELECT status, task_count, tasks_completed, last_sequence \
                     FROM {schema}.workflows WHERE workflow_id = $1"
                ),
                &[wf],
            )
            .await
            .unwrap();
        let (status, task_count, completed, last): (String, i32, i32, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        assert_eq!(status, "COMPLETED", "{wf}");
        assert_eq!(
            (task_count, completed),
            (TASKS as i32, TASKS as i32),
            "{wf}"
        );
        assert_eq!(last, events.len() as i64, "{wf}");
        // Each task's output is the one in its TaskCompleted event.
        for e in events {
            if let EventBody::TaskCompleted(c) = &e.body {
                let row = pg
                    .query_one(
                        &format!(
                            "SELECT status, output, attempts FROM {schema}.tasks \
                             WHERE workflow_id = $1 AND task_id = $2"
                        ),
                        &[wf, &c.task_id],
                    )
                    .await
                    .unwrap();
                let (status, output, attempts): (String, Vec<u8>, i32) =
                    (row.get(0), row.get(1), row.get(2));
                assert_eq!(status, "COMPLETED");
                assert!(output == c.output, "{wf}/{}: output", c.task_id);
                assert_eq!(attempts, c.attempt);
            }
        }
    }
    // Counters would show a record applied twice.
    let completed: i64 = pg
        .query_one(
            &format!("SELECT tasks_completed FROM {schema}.models WHERE model_id = 'triad-local'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(completed, (WORKFLOWS * TASKS) as i64, "model counter");
    // The analytics views agree with the tables they summarise.
    let row = pg
        .query_one(
            &format!(
                "SELECT (SELECT completed FROM {schema}.model_zone_outcomes \
                         WHERE model_id = 'triad-local' AND zone = 'US-EAST'), \
                        (SELECT sum(tasks)::bigint FROM {schema}.zone_tasks), \
                        (SELECT sum(tasks)::bigint FROM {schema}.model_daily_cost), \
                        (SELECT tasks_completed FROM {schema}.model_stats \
                         WHERE model_id = 'triad-local'), \
                        (SELECT count(*) FROM {schema}.top_workflows_by_cost), \
                        (SELECT sum(completed)::bigint FROM {schema}.daily_usage)"
            ),
            &[],
        )
        .await
        .unwrap();
    let all = (WORKFLOWS * TASKS) as i64;
    let views: (i64, i64, i64, i64, i64, i64) = (
        row.get(0),
        row.get(1),
        row.get(2),
        row.get(3),
        row.get(4),
        row.get(5),
    );
    assert_eq!(
        views,
        (all, all, all, all, WORKFLOWS as i64, WORKFLOWS as i64),
        "analytics views"
    );

    // Duplicate records (byte copies, as a repair or a zombie would write) and an undecodable
    // one: the read model does not change, the bad record is dead-lettered with its reason.
    let before = hashes(&pg, &schema).await;
    let records =
        triad_kafka::consume::read_all(&env.kafka, &env.names.events, Duration::from_secs(30))
            .await
            .unwrap();
    for m in records.iter().take(5) {
        env.producer
            .send_to(
                &env.names.events,
                Some(m.partition()),
                m.key(),
                m.payload(),
                &[],
            )
            .await
            .unwrap();
    }
    let garbage = env
        .producer
        .send_to(
            &env.names.events,
            Some(0),
            Some(b"bad"),
            Some(b"not an avro record"),
            &[],
        )
        .await
        .unwrap();
    let ends =
        format!("SELECT coalesce(sum(next_offset), 0)::bigint FROM {schema}.projection_offsets");
    let in_log = (records.len() + 6) as i64;
    wait_for(
        &pg,
        &ends,
        "the copies to be consumed",
        Duration::from_secs(60),
        |c| c >= in_log,
    )
    .await;
    assert_eq!(
        hashes(&pg, &schema).await,
        before,
        "duplicates changed the read model"
    );
    let letters: Vec<DeadLetter> = env
        .read_until(
            &env.names.dlq,
            Duration::from_secs(30),
            "the dead letter",
            |l: &[DeadLetter]| !l.is_empty(),
        )
        .await;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].source_offset, garbage.offset);
    assert_eq!(letters[0].error_kind, "decode");
    assert_eq!(
        letters[0].value.as_deref(),
        Some(&b"not an avro record"[..])
    );

    // Rebuild from offset 0 while the live worker runs: identical tables, then swapped in.
    env.replay_and_verify();
    assert_eq!(
        hashes(&pg, &schema).await,
        before,
        "the swapped-in build differs"
    );

    // The live worker re-seeks onto the new build and carries on.
    let late = format!("wf-projection-late-{}", uuid::Uuid::new_v4());
    env.submit_research(std::slice::from_ref(&late), "projection", true)
        .await;
    let done = format!(
        "SELECT count(*) FROM {schema}.workflows WHERE workflow_id = '{late}' AND status = 'COMPLETED'"
    );
    wait_for(
        &pg,
        &done,
        "the late workflow in the rebuilt read model",
        Duration::from_secs(60),
        |c| c == 1,
    )
    .await;
    let totals: BTreeMap<String, i64> = pg
        .query(
            &format!("SELECT status, count(*) FROM {schema}.workflows GROUP BY status"),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        totals,
        BTreeMap::from([("COMPLETED".to_owned(), WORKFLOWS as i64 + 1)])
    );

    for child in [&mut projection, &mut executor, &mut processor] {
        kill(child);
    }
    pg.query("SELECT triad_drop_schema($1)", &[&schema])
        .await
        .unwrap();
}

/// A TCP proxy in front of PostgreSQL that can cut every connection and refuse new ones.
struct Proxy {
    port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (u, c) = (up.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !u.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection closed
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:5432").await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            up,
            connections,
        }
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.connections.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_postgres_is_unreachable_the_worker_waits_and_then_skips_nothing() {
    let proxy = Proxy::start().await;
    let mut env = Env::new(2).await;
    let schema = format!("it_{}", env.group.trim_start_matches("it-"));
    env.extra_env.extend([
        ("TRIAD_PROJECTION__SCHEMA".to_owned(), schema.clone()),
        (
            "TRIAD_POSTGRES__URL".to_owned(),
            format!("postgresql://triad@127.0.0.1:{}/triad", proxy.port),
        ),
    ]);
    let pg = pg().await;
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let mut projection = env.spawn("projection", &["project"]);
    let count_events = format!("SELECT count(*) FROM {schema}.workflow_events");
    let per = (2 + 2 * 4) as i64; // accepted + 2 × 4 task events + completed

    let first: Vec<String> = (0..3)
        .map(|n| format!("wf-pgdown-a{n}-{}", uuid::Uuid::new_v4()))
        .collect();
    env.submit_research(&first, "pgdown", false).await;
    wait_for(
        &pg,
        &count_events,
        "the first wave",
        Duration::from_secs(120),
        |c| c >= 3 * per,
    )
    .await;

    proxy.down();
    let second: Vec<String> = (0..3)
        .map(|n| format!("wf-pgdown-b{n}-{}", uuid::Uuid::new_v4()))
        .collect();
    env.submit_research(&second, "pgdown", false).await;
    let all: Vec<String> = first.iter().chain(&second).cloned().collect();
    let raw = env
        .events_until_finished(&all, Duration::from_secs(120))
        .await;
    assert_eq!(
        distinct_gap_free(&raw, "event store")
            .values()
            .map(Vec::len)
            .sum::<usize>() as i64,
        6 * per
    );
    // The flow finished while the read model could not be written.
    let stalled: i64 = pg.query_one(&count_events, &[]).await.unwrap().get(0);
    assert_eq!(
        stalled,
        3 * per,
        "nothing can be applied while PostgreSQL is unreachable"
    );
    assert!(
        projection.try_wait().unwrap().is_none(),
        "the worker must wait, not exit"
    );

    proxy.up();
    wait_for(
        &pg,
        &count_events,
        "the second wave after PostgreSQL returned",
        Duration::from_secs(60),
        |c| c >= 6 * per,
    )
    .await;
    let completed: i64 = pg
        .query_one(
            &format!("SELECT count(*) FROM {schema}.workflows WHERE status = 'COMPLETED'"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(completed, 6);
    let log = support::read_log(&env.log_path("projection"));
    assert!(
        log.contains("retrying"),
        "the worker should say it is retrying: {log}"
    );

    for child in [&mut projection, &mut executor, &mut processor] {
        kill(child);
    }
    pg.query("SELECT triad_drop_schema($1)", &[&schema])
        .await
        .unwrap();
}
