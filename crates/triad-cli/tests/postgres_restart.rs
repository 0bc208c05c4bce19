//! PostgreSQL crashed and restarted in the middle of a run (`scripts/dev.sh pg-restart
//! immediate`: no shutdown checkpoint, open transactions aborted, every connection dropped,
//! and the most recent batches — committed without waiting for their WAL flush — may be lost
//! and recovered from the log) while the projection worker applies batches: the worker
//! reconnects and carries on, every event is in the read model once, and `triad replay
//! --verify` finds it identical to a rebuild from offset 0.
//! Its own test binary, so no other test runs while PostgreSQL is down.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::{Env, distinct_gap_free, kill, pg, wait_for};

const WORKFLOWS: usize = 12;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_crash_mid_run_loses_nothing_and_rebuilds_identically() {
    let mut env = Env::new(2).await;
    let schema = format!("it_{}", env.group.trim_start_matches("it-"));
    env.extra_env.extend([
        ("TRIAD_PROJECTION__SCHEMA".to_owned(), schema.clone()),
        // Small batches: many transactions, so the restart lands among them.
        (
            "TRIAD_PROJECTION__BATCH_MAX_RECORDS".to_owned(),
            "5".to_owned(),
        ),
    ]);
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let mut projection = env.spawn("projection", &["project"]);
    let count_events = format!("SELECT count(*) FROM {schema}.workflow_events");
    let per = (2 + 2 * 4) as i64; // accepted + 2 × 4 task events + completed
    let expected = WORKFLOWS as i64 * per;

    let ids: Vec<String> = (0..WORKFLOWS)
        .map(|n| format!("wf-pgrestart-{n}-{}", uuid::Uuid::new_v4()))
        .collect();
    env.submit_research(&ids, "pgrestart", false).await;
    let before = {
        let pg = pg().await;
        wait_for(
            &pg,
            &count_events,
            "the first events in the read model",
            Duration::from_secs(120),
            |c| c >= per,
        )
        .await
    };

    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");
    let restart = std::process::Command::new("bash")
        .arg("scripts/dev.sh")
        .arg("pg-restart")
        .arg("immediate")
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        restart.status.success(),
        "restarting PostgreSQL: {} {}",
        String::from_utf8_lossy(&restart.stdout),
        String::from_utf8_lossy(&restart.stderr)
    );
    eprintln!("PostgreSQL crashed and restarted with {before} of {expected} events applied");

    let raw = env
        .events_until_finished(&ids, Duration::from_secs(180))
        .await;
    let total: usize = distinct_gap_free(&raw, "event store")
        .values()
        .map(Vec::len)
        .sum();
    assert_eq!(total as i64, expected, "the flow wrote what it should");
    let pg = pg().await;
    wait_for(
        &pg,
        &count_events,
        "every event in the read model after the restart",
        Duration::from_secs(120),
        |c| c >= expected,
    )
    .await;
    // Exactly once: no event applied twice across the aborted transactions.
    let distinct: i64 = pg
        .query_one(
            &format!("SELECT count(DISTINCT event_id) FROM {schema}.workflow_events"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let rows: i64 = pg.query_one(&count_events, &[]).await.unwrap().get(0);
    assert_eq!((rows, distinct), (expected, expected));
    assert!(
        projection.try_wait().unwrap().is_none(),
        "the worker must reconnect, not exit"
    );
    // The restart reached the worker: a batch retried, or its pool found its connections
    // closed and opened new ones (which one depends on where the restart fell).
    let log = support::read_log(&env.log_path("projection"));
    assert!(
        log.contains("retrying") || log.contains("Connection could not be recycled"),
        "the worker's connections should have been cut by the restart: {log}"
    );

    env.replay_and_verify();

    for child in [&mut projection, &mut executor, &mut processor] {
        kill(child);
    }
    pg.query("SELECT triad_drop_schema($1)", &[&schema])
        .await
        .unwrap();
}
