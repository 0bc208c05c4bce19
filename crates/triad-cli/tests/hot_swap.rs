//! Hot swap through the model registry: `triad models register` puts a new component version
//! of a running `wasm` model on `triad.models`, the real `triad execute` installs it while
//! workflows flow, and nothing is lost or doubled. A restarted executor reads the registry
//! before it serves; bad registrations are refused with their reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use support::{Env, assert_each_completed, by_workflow, kill};
use triad_domain::{EventBody, ExecutorStatus, ModelRegistration, StatusBody, WorkflowEvent};
use triad_workflow::{Task, Workflow};

const QUESTION: &str = "What is 2+2?";

fn ask(model: &str) -> triad_domain::SubmitWorkflow {
    Workflow::new("swap")
        .zones(["US-EAST"])
        .task(Task::new("ask", QUESTION).model(model))
        .to_command()
}

/// A directory of its own for the components a test writes.
fn scratch() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("triad-it-swap-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The output of each workflow's one task.
fn outputs(events: &[WorkflowEvent]) -> std::collections::BTreeMap<String, String> {
    events
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TaskCompleted(t) => Some((
                e.meta.workflow_id.clone(),
                String::from_utf8(t.output.clone()).unwrap(),
            )),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registered_version_replaces_the_running_one_without_losing_or_doubling_a_task() {
    let dir = scratch();
    let testbed = dir.join("testbed.wasm");
    let local = dir.join("local.wasm");
    std::fs::write(&testbed, triad_wasm::TESTBED_ADAPTER).unwrap();
    std::fs::write(&local, triad_wasm::LOCAL_ADAPTER).unwrap();
    let env = Env::new(2).await.with_config(&format!(
        r#"
[models.swappy]
kind = "wasm"
component = "{}"
zones = ["US-EAST"]
"#,
        testbed.display()
    ));
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);

    // Version 1 (the testbed) echoes; version 2 (the local model) answers.
    let before: Vec<String> = (0..30).map(|i| format!("wf-before-{i}")).collect();
    for id in &before {
        env.submit(id, ask("swappy")).await;
    }
    let (stdout, _) = support::cli_ok(
        &env,
        &[
            "models",
            "register",
            "swappy",
            local.to_str().unwrap(),
            "--wait-for",
            "1",
        ],
        &[],
    );
    let sha256 = triad_store::sha256_hex(triad_wasm::LOCAL_ADAPTER);
    assert!(
        stdout.contains(&format!("registered swappy version 2: sha256 {sha256}")),
        "{stdout}"
    );
    assert!(stdout.contains("US-EAST-0: installed"), "{stdout}");
    // Submitted after the executor said it installed version 2: answered by it.
    let after: Vec<String> = (0..30).map(|i| format!("wf-after-{i}")).collect();
    for id in &after {
        env.submit(id, ask("swappy")).await;
    }
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    let events = env
        .events_until_finished(&all, Duration::from_secs(120))
        .await;
    let per_workflow = by_workflow(&events);
    assert_eq!(per_workflow.len(), all.len());
    assert_each_completed(&per_workflow, 1);
    let answers = outputs(&events);
    for id in &after {
        assert_eq!(answers[id], "4", "{id} ran after the install");
    }
    for id in &before {
        assert!(
            answers[id] == "4" || answers[id] == QUESTION,
            "{id}: {:?} is neither version's answer",
            answers[id]
        );
    }

    // The registry holds the component itself, so the log alone restores it.
    let registrations: Vec<ModelRegistration> = env
        .read_until(
            &env.names.models,
            Duration::from_secs(30),
            "the registration",
            |r: &[ModelRegistration]| !r.is_empty(),
        )
        .await;
    assert_eq!(registrations[0].version, 2);
    assert_eq!(
        registrations[0].component.as_deref(),
        Some(triad_wasm::LOCAL_ADAPTER)
    );

    // A restarted executor (configured with version 1) reads the registry before it takes
    // work: everything it answers comes from version 2.
    kill(&mut executor);
    let _executor = env.spawn("executor-2", &["execute", "--zone", "US-EAST"]);
    let restarted: Vec<String> = (0..10).map(|i| format!("wf-restart-{i}")).collect();
    for id in &restarted {
        env.submit(id, ask("swappy")).await;
    }
    let events = env
        .events_until_finished(&restarted, Duration::from_secs(120))
        .await;
    let answers = outputs(&events);
    for id in &restarted {
        assert_eq!(answers[id], "4", "{id} ran on the restarted executor");
    }
    kill(&mut processor);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused_with_their_reason_and_change_nothing() {
    let garbage = scratch().join("garbage.wasm");
    std::fs::write(&garbage, b"(component)").unwrap();
    let env = Env::new(1).await.with_config(
        r#"
[models.swappy]
kind = "wasm"
zones = ["US-EAST"]
"#,
    );
    // Refused by the command itself, before anything is written.
    let out = env
        .triad(&["models", "register", "swappy", garbage.to_str().unwrap()])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("is not a usable adapter"), "{stderr}");
    let out = env
        .triad(&["models", "register", "nonesuch", garbage.to_str().unwrap()])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("model \"nonesuch\" is not in this configuration"),
        "{stderr}"
    );

    // A record that some other writer got wrong: the executor refuses it and reports why.
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let forged = ModelRegistration {
        model_id: "swappy".into(),
        version: 2,
        component_sha256: "00".repeat(32),
        component_size: i64::try_from(triad_wasm::TESTBED_ADAPTER.len()).unwrap(),
        component: Some(triad_wasm::TESTBED_ADAPTER.to_vec()),
        component_path: None,
        registered_at: triad_kafka::now_micros(),
        remote: None,
        schema_version: triad_domain::MODEL_REGISTRATION_SCHEMA_VERSION,
    };
    env.producer
        .send_record(&env.codec, &env.names.models, None, "swappy", &forged)
        .await
        .unwrap();
    let statuses: Vec<ExecutorStatus> = env
        .read_until(
            &env.names.executor_status,
            Duration::from_secs(60),
            "the refusal",
            |s: &[ExecutorStatus]| {
                s.iter()
                    .any(|s| matches!(s.body, StatusBody::AdapterInstall(_)))
            },
        )
        .await;
    let refusal = statuses
        .iter()
        .find_map(|s| match &s.body {
            StatusBody::AdapterInstall(i) => Some(i.clone()),
            _ => None,
        })
        .unwrap();
    assert!(!refusal.installed);
    assert_eq!(refusal.version, 2);
    let reason = refusal.reason.unwrap();
    assert!(
        reason.contains("hashes to") && reason.contains(&"00".repeat(32)),
        "{reason}"
    );
    // The model still runs the embedded component (it answers arithmetic).
    env.submit("wf-still-v1", ask("swappy")).await;
    let events = env
        .events_until_finished(&["wf-still-v1".to_owned()], Duration::from_secs(60))
        .await;
    assert_eq!(outputs(&events)["wf-still-v1"], "4");
    kill(&mut executor);
    kill(&mut processor);
}
