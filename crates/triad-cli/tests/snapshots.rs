//! Bounded recovery (ADR 0005) on the real stack: the processor snapshots changed workflows to
//! the compacted snapshot topic, and after `kill -9` its successor restores each partition
//! from the snapshots plus the event-store tail after their checkpoint, not from the whole
//! log. A record written by a superseded owner (a zombie) makes the next owner fold the whole
//! partition and rewrite the snapshots; the owner after it trusts them again. Through all of
//! it nothing is lost and nothing is applied twice.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use serde_json::Value as Json;
use support::{Env, kill};
use triad_domain::{SnapshotBody, SnapshotState, WorkflowEvent, WorkflowSnapshot};
use triad_kafka::produce::partition_for;

const PARTITIONS: i32 = 2;

/// The "partition state restored" lines of a processor log, by partition.
fn restored(env: &Env, name: &str) -> BTreeMap<i64, Json> {
    support::read_log(&env.log_path(name))
        .lines()
        .filter_map(|l| serde_json::from_str::<Json>(l).ok())
        .filter(|j| j["message"] == "partition state restored")
        .map(|j| (j["messaging.destination.partition.id"].as_i64().unwrap(), j))
        .collect()
}

async fn run_wave(env: &Env, ids: &[String]) -> Vec<WorkflowEvent> {
    env.submit_research(ids, "snapshots", true).await;
    env.events_until_finished(ids, Duration::from_secs(180))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_reads_snapshots_and_the_tail_and_heals_after_a_zombie_write() {
    let mut env = Env::new(PARTITIONS).await;
    env.extra_env = vec![
        ("TRIAD_PROCESSOR__SNAPSHOT_EVERY".into(), "4".into()),
        (
            "TRIAD_LOG__FILTER".into(),
            "warn,triad_processor=info".into(),
        ),
    ];
    let ids: Vec<String> = (0..60).map(|n| format!("wf-snap-{n:02}")).collect();
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);

    // Wave 1 on a first processor, killed afterwards.
    let mut first = env.spawn("processor-1", &["process"]);
    let before = run_wave(&env, &ids[..20]).await;
    let snapshots: Vec<WorkflowSnapshot> = env
        .read_until(
            &env.names.snapshots,
            Duration::from_secs(60),
            "a checkpoint per partition",
            |s: &[WorkflowSnapshot]| {
                (0..PARTITIONS).all(|p| {
                    s.iter().any(|r| {
                        r.partition == p && matches!(r.body, SnapshotBody::SnapshotCheckpoint(_))
                    })
                })
            },
        )
        .await;
    let states: HashSet<&str> = snapshots
        .iter()
        .filter_map(|r| match &r.body {
            SnapshotBody::SnapshotState(s) => Some(s.workflow_id.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        states.len() >= 10,
        "only {} workflows snapshotted",
        states.len()
    );
    assert!(states.iter().all(|id| ids[..20].iter().any(|i| i == id)));
    kill(&mut first);

    // Wave 2 on a successor: it must start from the snapshots.
    let mut second = env.spawn("processor-2", &["process"]);
    run_wave(&env, &ids[20..40]).await;
    let lines = restored(&env, "processor-2");
    assert_eq!(lines.len(), PARTITIONS as usize, "{lines:?}");
    for (p, line) in &lines {
        let in_log = before
            .iter()
            .filter(|e| i64::from(partition_for(e.meta.workflow_id.as_bytes(), PARTITIONS)) == *p)
            .count();
        assert_eq!(line["fold_reason"], "-", "partition {p}: {line}");
        assert!(
            line["snapshots"].as_i64().unwrap() > 0,
            "partition {p}: {line}"
        );
        let tail = line["events"].as_i64().unwrap();
        assert!(
            tail < i64::try_from(in_log).unwrap(),
            "partition {p} folded {tail} of its {in_log} events: recovery is not bounded ({line})"
        );
    }
    kill(&mut second);

    // A zombie's write: a state record with an epoch below the markers already written.
    let zombie = WorkflowSnapshot {
        partition: 0,
        epoch: 0,
        written_at: triad_kafka::now_micros(),
        body: SnapshotBody::SnapshotState(SnapshotState {
            workflow_id: "wf-from-a-zombie".into(),
            sequence: 1,
            state_format: triad_workflow::aggregate::STATE_FORMAT.into(),
            state: b"{}".to_vec(),
        }),
        schema_version: 1,
    };
    env.producer
        .send_record(
            &env.codec,
            &env.names.snapshots,
            Some(0),
            "wf-from-a-zombie",
            &zombie,
        )
        .await
        .unwrap();
    let mut third = env.spawn("processor-3", &["process"]);
    run_wave(&env, &ids[40..50]).await;
    let lines = restored(&env, "processor-3");
    let reason = lines[&0]["fold_reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("superseded owner"), "{reason}");
    assert_eq!(lines[&0]["tail_from"], 0);
    assert!(
        support::read_log(&env.log_path("processor-3")).contains("snapshots healed"),
        "the third processor did not rewrite the snapshots"
    );
    assert_eq!(lines[&1]["fold_reason"], "-", "{}", lines[&1]);
    kill(&mut third);

    // The heal made the snapshots trustworthy again.
    let mut fourth = env.spawn("processor-4", &["process"]);
    let events = run_wave(&env, &ids[50..]).await;
    let lines = restored(&env, "processor-4");
    for (p, line) in &lines {
        assert_eq!(line["fold_reason"], "-", "partition {p}: {line}");
        assert!(
            line["tail_from"].as_i64().unwrap() > 0,
            "partition {p}: {line}"
        );
    }
    kill(&mut fourth);
    kill(&mut executor);

    let per_workflow = support::distinct_gap_free(&events, "snapshots");
    assert_eq!(per_workflow.len(), ids.len());
    support::assert_each_completed(&per_workflow, 4);
}
