//! The broker dies (SIGKILL) mid-run and comes back on its durable `sqlite://` storage: the
//! workers reconnect, nothing acknowledged is lost, nothing is applied twice. The test runs
//! its own Tansu on a free port (the stack's registry keeps serving schemas).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use support::{Env, kill};
use triad_domain::WorkflowEvent;

fn tansu_bin() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let installed = home.join(".cargo/bin/tansu");
    if installed.exists() {
        installed
    } else {
        PathBuf::from("tansu")
    }
}

fn start_tansu(dir: &Path, port: u16) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::options()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .unwrap();
    Command::new(tansu_bin())
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "sqlite://tansu.db"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

/// Waits until the broker answers a metadata request (each try is a real request).
fn wait_ready(bootstrap: &str) {
    for _ in 0..60 {
        let ok = Command::new(env!("CARGO_BIN_EXE_triad"))
            .args(["topics", "ensure", "--dry-run"])
            .env("TRIAD_KAFKA__BOOTSTRAP_SERVERS", bootstrap)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        if ok {
            return;
        }
    }
    panic!("the broker at {bootstrap} did not come up");
}

/// A Tansu of this test's own on sqlite storage in a fresh directory, ready to serve.
fn sqlite_broker() -> (PathBuf, u16, String, Child) {
    let dir = std::env::temp_dir().join(format!("triad-broker-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = support::free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let broker = start_tansu(&dir, port);
    wait_ready(&bootstrap);
    (dir, port, bootstrap, broker)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_on_sqlite_loses_nothing_and_the_workers_reconnect() {
    let (dir, port, bootstrap, mut broker) = sqlite_broker();
    let env = Env::on_broker(3, &bootstrap).await;
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let ids: Vec<String> = (0..30).map(|n| format!("wf-durable-{n:02}")).collect();
    env.submit_research(&ids[0..15], "durability", false).await;
    let before = env
        .events_until_finished(&ids[..15], Duration::from_secs(120))
        .await;

    // The broker dies and comes back on the same storage.
    kill(&mut broker);
    broker = start_tansu(&dir, port);
    wait_ready(&bootstrap);
    env.submit_research(&ids[15..], "durability", false).await;
    let events = env
        .events_until_finished(&ids[..30], Duration::from_secs(180))
        .await;
    kill(&mut processor);
    kill(&mut executor);
    kill(&mut broker);

    // Every event acknowledged before the crash is still there, unchanged. (A reader merges
    // partitions in arrival order, so positions across partitions are not comparable.)
    let after: std::collections::HashMap<(&str, i64), &WorkflowEvent> = events
        .iter()
        .map(|e| ((e.meta.workflow_id.as_str(), e.meta.sequence), e))
        .collect();
    for e in &before {
        let key = (e.meta.workflow_id.as_str(), e.meta.sequence);
        assert!(
            after.get(&key) == Some(&e),
            "event {key:?} ({}) changed or vanished across the restart",
            e.meta.event_type
        );
    }
    let per_workflow = support::distinct_gap_free(&events, "broker restart");
    assert_eq!(per_workflow.len(), ids.len());
    support::assert_each_completed(&per_workflow, 2);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Whatever Tansu does with the log start after a restart (ADR 0007 §4), the processor's
/// recovery read never returns a silently shortened event-store partition: it returns every
/// acknowledged record, or refuses with `LogStartMoved`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_broker_restart_the_recovery_read_is_whole_or_refused() {
    let (dir, port, bootstrap, mut broker) = sqlite_broker();
    let env = Env::on_broker(1, &bootstrap).await;
    let mut acked = Vec::new();
    for wave in 0..2 {
        if wave == 1 {
            kill(&mut broker);
            broker = start_tansu(&dir, port);
            wait_ready(&bootstrap);
        }
        // A fresh producer per wave: the point is the log, not reconnection.
        let producer = triad_kafka::produce::Producer::new(&env.kafka).unwrap();
        for n in 0..10 {
            let value = format!("record {wave}/{n}");
            let d = producer
                .send_to(
                    &env.names.events,
                    Some(0),
                    Some(b"k"),
                    Some(value.as_bytes()),
                    &[],
                )
                .await
                .unwrap();
            acked.push(d.offset);
        }
    }
    let read = triad_kafka::consume::read_partition_from(
        &env.kafka,
        &env.names.events,
        0,
        0,
        Duration::from_secs(60),
    )
    .await;
    kill(&mut broker);
    match read {
        Ok(records) => {
            let offsets: Vec<i64> = records.iter().map(rdkafka::Message::offset).collect();
            assert_eq!(offsets, acked, "every acknowledged record, in order");
            eprintln!("the recovery read returned all {} records", offsets.len());
        }
        Err(triad_kafka::Error::LogStartMoved { from, low, .. }) => {
            assert_eq!(from, 0);
            assert!(
                low > 0 && low <= acked[10],
                "low watermark {low}, acked {acked:?}"
            );
            eprintln!("the recovery read refused: the log now starts at {low}");
        }
        Err(e) => panic!("unexpected error: {e}"),
    }
}
