//! `triad audit verify` against the threat model's tampering insider: a sealed, signed
//! research workflow (four tasks, fan-out and fan-in) runs on the stack and verifies; then
//! copies of its log, each with one tampering, are written to fresh topics and every one is
//! refused with the reason — an edited output, an edited clear field, an edited label no
//! execution record covers, a terminal event stripped of its signed root, a deleted event, two
//! events swapped, a deleted terminal event, a record or the root re-signed with a key not
//! in the directory, a false zone claim, a deleted workflow. The untampered copy (the
//! original bytes) is the control.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use rdkafka::message::Message;
use support::{Env, after, cli, cli_ok, sealing};
use triad_domain::{EventBody, WorkflowEvent};
use triad_sovereignty::signing::{Signer, SoftwareSigner};

fn run(env: &Env, args: &[&str]) -> std::process::Output {
    cli(env, args, &[])
}

fn ok(env: &Env, args: &[&str]) -> String {
    cli_ok(env, args, &[]).0
}

/// Every record value of `topic`, byte for byte.
async fn values(env: &Env, topic: &str) -> Vec<Vec<u8>> {
    triad_kafka::consume::read_all(&env.kafka, topic, Duration::from_secs(30))
        .await
        .unwrap()
        .iter()
        .map(|m| m.payload().unwrap().to_vec())
        .collect()
}

/// Submits the workflow in `file`, waits for its end and returns its id.
fn submit(env: &Env, file: &std::path::Path) -> String {
    let out = ok(env, &["submit", file.to_str().unwrap(), "--timeout", "120"]);
    after(&out, "submitted ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

/// The log as an auditor copies it, record by record.
struct Log {
    /// The key directory's records.
    directory: Vec<Vec<u8>>,
    /// The notary's checkpoints of partition 0.
    checkpoints: Vec<Vec<u8>>,
    /// The published policy versions.
    policies: Vec<Vec<u8>>,
    /// The workflow's events and their exact bytes.
    original: Vec<(WorkflowEvent, Vec<u8>)>,
}

/// A fresh installation (one partition, like the original) holding `events` as its event
/// store and the log's directory and checkpoints byte for byte, configured like `like`. An
/// event equal to an original one is copied as its original bytes; any other is encoded anew
/// (as a tampering insider would).
async fn copy_of(like: &Env, log: &Log, events: &[WorkflowEvent]) -> Env {
    let mut env = Env::new(like.partitions).await;
    env.extra_env.clone_from(&like.extra_env);
    for value in &log.directory {
        env.producer
            .send(
                &env.names.key_directory,
                Some(b"directory"),
                Some(value),
                &[],
            )
            .await
            .unwrap();
    }
    for value in &log.policies {
        env.producer
            .send(&env.names.policies, None, Some(value), &[])
            .await
            .unwrap();
    }
    for value in &log.checkpoints {
        env.producer
            .send_to(
                &env.names.checkpoints,
                Some(0),
                Some(b"workflow-events/0"),
                Some(value),
                &[],
            )
            .await
            .unwrap();
    }
    let original = &log.original;
    for e in events {
        let partition =
            triad_kafka::produce::partition_for(e.meta.workflow_id.as_bytes(), env.partitions);
        let bytes = match original.iter().find(|(o, _)| o == e) {
            Some((_, raw)) => raw.clone(),
            None => env.codec.encode(&env.names.events, e).await.unwrap(),
        };
        env.producer
            .send_to(
                &env.names.events,
                Some(partition),
                Some(e.meta.workflow_id.as_bytes()),
                Some(&bytes),
                &[],
            )
            .await
            .unwrap();
    }
    env
}

fn accepted(events: &mut [WorkflowEvent]) -> &mut triad_domain::WorkflowAccepted {
    events
        .iter_mut()
        .find_map(|e| match &mut e.body {
            EventBody::WorkflowAccepted(a) => Some(a),
            _ => None,
        })
        .unwrap()
}

fn completed(events: &mut [WorkflowEvent]) -> Vec<&mut triad_domain::TaskCompleted> {
    events
        .iter_mut()
        .filter_map(|e| match &mut e.body {
            EventBody::TaskCompleted(c) => Some(c),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_accepts_the_log_and_refuses_every_tampering() {
    // One partition: copies keep every record's offset, and the notary restarted below
    // continues the same chain.
    let mut env = Env::new(1).await;
    let dir = env.dir().to_path_buf();
    sealing(&mut env, &[("executor-US-EAST", "US-EAST", None)]);
    let _processor = env.spawn("processor", &["process"]);
    let mut notary = env.spawn("notary", &["notary"]);
    let _executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let file = dir.join("research.json");
    std::fs::write(
        &file,
        serde_json::to_string(&support::research("tamper-evidence", true)).unwrap(),
    )
    .unwrap();
    let workflow = submit(&env, &file);
    let report = ok(&env, &["audit", "verify", &workflow]);
    assert!(
        report.contains(
            "verified: all 4 operations signed by enrolled executors and stayed in US-EAST"
        ),
        "{report}"
    );
    assert!(
        report.contains("the root of the 17 events before the end is signed by processor"),
        "{report}"
    );
    assert!(
        report.contains("cover offsets 0..18 of partition 0 (18 records), the workflow's included"),
        "{report}"
    );
    assert!(
        report.contains("under policy version ") && report.contains("(published by processor)"),
        "{report}"
    );

    // The log as an auditor copies it: the directory's records and the workflow's events.
    let directory = values(&env, &env.names.key_directory).await;
    env.events_until_finished(std::slice::from_ref(&workflow), Duration::from_secs(30))
        .await;
    let partition = triad_kafka::produce::partition_for(workflow.as_bytes(), env.partitions);
    let mut original: Vec<(WorkflowEvent, Vec<u8>)> = Vec::new();
    for m in triad_kafka::consume::read_partition_from(
        &env.kafka,
        &env.names.events,
        partition,
        0,
        Duration::from_secs(30),
    )
    .await
    .unwrap()
    {
        if m.key() == Some(workflow.as_bytes()) {
            let raw = m.payload().unwrap().to_vec();
            original.push((env.codec.decode(Some(&raw)).await.unwrap(), raw));
        }
    }
    let events: Vec<WorkflowEvent> = original.iter().map(|(e, _)| e.clone()).collect();
    assert_eq!(events.len(), 18, "accepted + 4 × 4 task events + completed");
    let checkpoints = values(&env, &env.names.checkpoints).await;
    assert!(!checkpoints.is_empty());
    let policies = values(&env, &env.names.policies).await;
    assert_eq!(policies.len(), 1, "the processor published its policy once");
    let log = Log {
        directory,
        checkpoints,
        policies,
        original,
    };
    let signed = events[17]
        .signed_root
        .clone()
        .expect("the terminal event's signed root");
    assert_eq!((signed.leaves, signed.node_id.as_str()), (17, "processor"));

    // Which completed task to tamper with is drawn per run; the seed is printed.
    let seed: u64 = rand::random();
    let pick = usize::try_from(seed % 4).unwrap();
    eprintln!("tampering with completed task #{pick} (seed {seed})");
    let foreign = std::sync::Arc::new(SoftwareSigner::generate());
    let foreign2 = foreign.clone();
    type Tamper = Box<dyn Fn(&mut Vec<WorkflowEvent>)>;
    let cases: Vec<(&str, Tamper, &str)> = vec![
        ("control", Box::new(|_| {}), ""),
        (
            "an output edited",
            Box::new(move |ev| {
                let c = &mut completed(ev)[pick];
                let last = c.output.len() - 1;
                c.output[last] ^= 1;
            }),
            "the logged output is not the one the executor signed",
        ),
        (
            "a clear field edited",
            Box::new(move |ev| completed(ev)[pick].model_id = "cheaper-model".into()),
            "the event says cheaper-model",
        ),
        (
            "a label edited (no execution record covers it)",
            Box::new(|ev| {
                accepted(ev)
                    .labels
                    .insert("cost-centre".into(), "someone-else".into());
            }),
            "the signed root is not the root of the events before the terminal event",
        ),
        (
            "the accepted workflow moved to a policy version nobody published",
            Box::new(|ev| accepted(ev).policy_version = Some("00".repeat(32))),
            "no record on the policy topic publishes policy version",
        ),
        (
            "the terminal event edited (no signature of its own covers it)",
            Box::new(|ev| match &mut ev[17].body {
                EventBody::WorkflowCompleted(c) => c.total_cost_micros += 1,
                other => panic!("not the end: {other:?}"),
            }),
            "the records there are not the ones signed",
        ),
        (
            "the root re-signed with a key not in the directory",
            Box::new(move |ev| {
                let r = ev[17].signed_root.as_mut().unwrap();
                r.key_id = foreign2.key_id().to_owned();
                r.signature = triad_sovereignty::hex(&foreign2.sign(b"anything").unwrap());
            }),
            "the root is signed by key",
        ),
        (
            "the terminal event without its signed root",
            Box::new(|ev| ev[17].signed_root = None),
            "carries no signed root",
        ),
        (
            "any one event's time edited (drawn by the seed)",
            Box::new(move |ev| {
                let i = usize::try_from(seed % 18).unwrap();
                ev[i].meta.occurred_at += 1;
            }),
            // The root (events before the end) or a checkpoint (the end) no longer matches.
            "not the ones signed",
        ),
        (
            "an event deleted",
            Box::new(|ev| {
                ev.remove(5);
            }),
            "an event is missing, repeated or out of order",
        ),
        (
            "the tail truncated (the last three events)",
            Box::new(|ev| ev.truncate(15)),
            "records were deleted (the tail cut)",
        ),
        (
            "two events swapped",
            Box::new(|ev| ev.swap(3, 4)),
            "an event is missing, repeated or out of order",
        ),
        (
            "the terminal event deleted",
            Box::new(|ev| {
                ev.pop();
            }),
            "the last event is not terminal",
        ),
        (
            "re-signed with a key not in the directory",
            Box::new(move |ev| {
                let mut tasks = completed(ev);
                let x = tasks[pick].execution.as_mut().unwrap();
                x.key_id = foreign.key_id().to_owned();
                x.signature = triad_sovereignty::hex(&foreign.sign(b"anything").unwrap());
            }),
            "which the key directory does not enrol as a signing key",
        ),
        (
            "a false zone claim",
            Box::new(move |ev| {
                let c = &mut completed(ev)[pick];
                c.executor_zone = "EU-WEST".into();
                c.execution.as_mut().unwrap().executor_zone = "EU-WEST".into();
            }),
            "outside the task's zones",
        ),
    ];
    for (name, tamper, expected) in cases {
        let mut copy = events.clone();
        tamper(&mut copy);
        let installation = copy_of(&env, &log, &copy).await;
        let out = run(&installation, &["audit", "verify", &workflow]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        if expected.is_empty() {
            assert!(out.status.success(), "{name}: {stdout}");
            assert!(
                stdout.contains("verified: all 4 operations"),
                "{name}: {stdout}"
            );
        } else {
            assert!(!out.status.success(), "{name} went unnoticed: {stdout}");
            assert!(stdout.contains(expected), "{name}: {stdout}");
        }
    }
    // A deleted workflow: nothing of it is left to verify, and verify says so; the
    // checkpoints show it without its id.
    let empty = copy_of(&env, &log, &[]).await;
    let out = run(&empty, &["audit", "verify", &workflow]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no events of workflow"));
    let out = run(&empty, &["audit", "checkpoints"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success(),
        "a deleted workflow went unnoticed: {stdout}"
    );
    assert!(stdout.contains("records were deleted"), "{stdout}");

    // The notary killed (SIGKILL) and started again resumes its chain from the log: a
    // second workflow's records are covered by checkpoints linked to the first ones.
    support::kill(&mut notary.0);
    let _notary = env.spawn("notary-2", &["notary"]);
    let second = submit(&env, &file);
    let report = ok(&env, &["audit", "verify", &second]);
    assert!(report.contains("the workflow's included"), "{report}");
    let report = ok(&env, &["audit", "checkpoints"]);
    assert!(
        report.contains("verified: every checkpoint matches the records it signs")
            && report.contains("cover offsets 0..36 (36 records); 0 records after them"),
        "{report}"
    );
}
