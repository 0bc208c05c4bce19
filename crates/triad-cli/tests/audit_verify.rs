//! `triad audit verify` against the threat model's tampering insider: a sealed, signed
//! research workflow (four tasks, fan-out and fan-in) runs on the stack and verifies; then
//! copies of its log, each with one tampering, are written to fresh topics and every one is
//! refused with the reason — an edited output, an edited clear field, a deleted event, two
//! events swapped, a deleted terminal event, a record re-signed with a key not in the
//! directory, a false zone claim, a deleted workflow. The untampered copy is the control.
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

/// A fresh installation holding `events` as its event store and `directory` (raw records)
/// as its key directory, configured like `like`.
async fn copy_of(like: &Env, directory: &[Vec<u8>], events: &[WorkflowEvent]) -> Env {
    let mut env = Env::new(like.partitions).await;
    env.extra_env.clone_from(&like.extra_env);
    for value in directory {
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
    for e in events {
        let partition =
            triad_kafka::produce::partition_for(e.meta.workflow_id.as_bytes(), env.partitions);
        env.producer
            .send_record(
                &env.codec,
                &env.names.events,
                Some(partition),
                &e.meta.workflow_id,
                e,
            )
            .await
            .unwrap();
    }
    env
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
    let mut env = Env::new(2).await;
    let dir = env.dir().to_path_buf();
    sealing(&mut env, &[("executor-US-EAST", "US-EAST", None)]);
    let _processor = env.spawn("processor", &["process"]);
    let _executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let file = dir.join("research.json");
    std::fs::write(
        &file,
        serde_json::to_string(&support::research("tamper-evidence", true)).unwrap(),
    )
    .unwrap();
    let out = ok(
        &env,
        &["submit", file.to_str().unwrap(), "--timeout", "120"],
    );
    let workflow = after(&out, "submitted ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let report = ok(&env, &["audit", "verify", &workflow]);
    assert!(
        report.contains(
            "verified: all 4 operations signed by enrolled executors and stayed in US-EAST"
        ),
        "{report}"
    );

    // The log as an auditor copies it: the directory's records and the workflow's events.
    let directory: Vec<Vec<u8>> = triad_kafka::consume::read_all(
        &env.kafka,
        &env.names.key_directory,
        Duration::from_secs(30),
    )
    .await
    .unwrap()
    .iter()
    .map(|m| m.payload().unwrap().to_vec())
    .collect();
    let events: Vec<WorkflowEvent> = env
        .events_until_finished(std::slice::from_ref(&workflow), Duration::from_secs(30))
        .await
        .into_iter()
        .filter(|e| e.meta.workflow_id == workflow)
        .collect();
    assert_eq!(events.len(), 18, "accepted + 4 × 4 task events + completed");

    // Which completed task to tamper with is drawn per run; the seed is printed.
    let seed: u64 = rand::random();
    let pick = usize::try_from(seed % 4).unwrap();
    eprintln!("tampering with completed task #{pick} (seed {seed})");
    let foreign = SoftwareSigner::generate();
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
            "an event deleted",
            Box::new(|ev| {
                ev.remove(5);
            }),
            "an event is missing, repeated or out of order",
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
        let installation = copy_of(&env, &directory, &copy).await;
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
    // A deleted workflow: nothing of it is left to verify, and verify says so.
    let empty = copy_of(&env, &directory, &[]).await;
    let out = run(&empty, &["audit", "verify", &workflow]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no events of workflow"));
}
