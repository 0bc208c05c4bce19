//! Multi-zone, TPM-backed sealing end to end: executors in the three CONUS zones and in
//! EU-WEST, each with its own `swtpm` holding its node key (the unwrap's DH step runs in
//! that TPM). A CONUS workflow runs only on CONUS executors; an EU-only workflow runs in
//! EU-WEST and its output cannot be opened in CONUS; a CONUS task that only a non-CONUS model
//! could serve is rejected — at the edge by `triad submit`, and by the processor when the
//! edge is bypassed — naming the task.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::{Env, Guarded, after, cli as run, cli_ok, sealing};
use triad_domain::{EventBody, WorkflowEvent};
use triad_testkit::swtpm::Swtpm;

const CONUS: [&str; 3] = ["US-CENTRAL", "US-EAST", "US-WEST"];

fn ok(env: &Env, args: &[&str], extra: &[(&str, &str)]) -> String {
    cli_ok(env, args, extra).0
}

fn submitted_id(stdout: &str) -> String {
    after(stdout, "submitted ")
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conus_work_stays_in_conus_on_tpm_backed_executors() {
    // A remote model that processes data only in EU-WEST, with a specialty nothing else has.
    let mut env = Env::new(2).await.with_config(
        r#"
[models.triad-local]
kind = "local"

[models.eu-legal]
kind = "openai"
base_url = "http://127.0.0.1:9"
zones = ["EU-WEST"]
specialties = ["eu-legal"]
"#,
    );
    let dir = env.dir().to_path_buf();
    // One swtpm per executor: its key is created inside it and enrolled; the edge's key is
    // a file.
    let zones: Vec<&str> = CONUS.iter().copied().chain(["EU-WEST"]).collect();
    let tpms: Vec<Swtpm> = zones
        .iter()
        .map(|z| Swtpm::start(&dir.join(format!("tpm-{z}"))))
        .collect();
    let nodes: Vec<(String, &str, String)> = zones
        .iter()
        .zip(&tpms)
        .map(|(z, t)| (format!("executor-{z}"), *z, t.tcti()))
        .collect();
    let mut enrolments: Vec<(&str, &str, Option<&str>)> = vec![("edge-US-EAST", "US-EAST", None)];
    enrolments.extend(
        nodes
            .iter()
            .map(|(n, z, t)| (n.as_str(), *z, Some(t.as_str()))),
    );
    sealing(&mut env, &enrolments);
    env.extra_env
        .push(("TRIAD_SOVEREIGNTY__ZONE".into(), "US-EAST".into()));
    let mut executors: Vec<Guarded> = Vec::new();
    for (zone, tpm) in zones.iter().zip(&tpms) {
        let node = format!("executor-{zone}");
        let mut cmd = env.triad(&["execute", "--zone", zone]);
        cmd.env("TRIAD_SOVEREIGNTY__TPM_TCTI", tpm.tcti())
            .stderr(std::fs::File::create(env.log_path(&node)).unwrap());
        executors.push(Guarded(cmd.spawn().unwrap()));
    }
    let _processor = env.spawn("processor", &["process"]);
    let _notary = env.spawn("notary", &["notary"]);

    let file = |name: &str, text: serde_json::Value| {
        let path = dir.join(name);
        std::fs::write(&path, text.to_string()).unwrap();
        path
    };
    // The demo's research workflow in CONUS: four tasks, fan-out and fan-in.
    let conus = file(
        "conus.json",
        serde_json::from_str(triad_cli_research()).unwrap(),
    );
    let eu = file(
        "eu.json",
        serde_json::json!({
            "name": "eu-only", "zones": ["EU-WEST"],
            "tasks": [{"id": "draft", "prompt": "Echo: bonjour from the EU"}]
        }),
    );
    let out = ok(
        &env,
        &["submit", conus.to_str().unwrap(), "--timeout", "120"],
        &[],
    );
    let conus_id = submitted_id(&out);
    assert!(out.contains("output of report:"), "{out}");
    assert!(!out.contains("not readable here"), "{out}");
    let out = ok(
        &env,
        &["submit", eu.to_str().unwrap(), "--timeout", "120"],
        &[],
    );
    let eu_id = submitted_id(&out);
    assert!(
        out.contains("sovereignty violation") && !out.contains("bonjour"),
        "an EU-only output does not open in US-EAST: {out}"
    );

    // Where everything ran, from the event store.
    let events: Vec<WorkflowEvent> = env
        .events_until_finished(&[conus_id.clone(), eu_id.clone()], Duration::from_secs(60))
        .await;
    let mut ran = 0;
    for e in &events {
        let conus_workflow = e.meta.workflow_id == conus_id;
        let allowed: &[&str] = if conus_workflow { &CONUS } else { &["EU-WEST"] };
        match &e.body {
            EventBody::TaskDispatched(d)
                if e.meta.workflow_id == conus_id || e.meta.workflow_id == eu_id =>
            {
                assert!(allowed.contains(&d.zone.as_str()), "{d:?}");
            }
            EventBody::TaskCompleted(c)
                if e.meta.workflow_id == conus_id || e.meta.workflow_id == eu_id =>
            {
                assert!(allowed.contains(&c.executor_zone.as_str()), "{c:?}");
                assert_eq!(c.model_id, "triad-local");
                assert!(triad_domain::is_sealed(&c.output), "sealed output");
                ran += 1;
            }
            _ => {}
        }
    }
    assert_eq!(ran, 5, "four CONUS tasks and one EU task completed");

    // A CONUS task that only the EU model could serve: refused at the edge, naming it …
    let needs_eu = serde_json::json!({
        "name": "needs-eu", "zones": ["CONUS"],
        "tasks": [{"id": "review", "prompt": "Review this contract", "specialties": ["eu-legal"]}]
    });
    let refused = run(
        &env,
        &[
            "submit",
            file("needs-eu.json", needs_eu.clone()).to_str().unwrap(),
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("tasks[0].zones") && stderr.contains("eu-legal"),
        "{stderr}"
    );
    // … and by the processor when the edge is bypassed.
    let workflow: triad_workflow::Workflow =
        triad_workflow::Workflow::from_json(&needs_eu.to_string()).unwrap();
    let bypass = format!("wf-bypass-{}", uuid::Uuid::new_v4());
    env.submit(&bypass, workflow.to_command()).await;
    let bypass_events = env
        .events_until_finished(std::slice::from_ref(&bypass), Duration::from_secs(60))
        .await;
    let rejected = bypass_events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::WorkflowRejected(r) if e.meta.workflow_id == bypass => Some(r.clone()),
            _ => None,
        })
        .expect("the processor rejects it");
    assert_eq!(
        rejected.field.as_deref(),
        Some("tasks[0].zones"),
        "{rejected:?}"
    );
    assert!(rejected.reason.contains("review"), "{rejected:?}");

    // An EU-only prompt put straight on US-EAST's queue (a misrouting the processor never
    // does): the US-EAST executor refuses to open it, and the refusal is on record.
    let prompt = events
        .iter()
        .find_map(|e| match &e.body {
            EventBody::WorkflowAccepted(a) if e.meta.workflow_id == eu_id => {
                Some(a.tasks[0].prompt.clone())
            }
            _ => None,
        })
        .unwrap();
    assert!(triad_domain::is_sealed(&prompt));
    let misrouted = triad_domain::TaskRequest {
        workflow_id: eu_id.clone(),
        dispatched_event_id: "misrouted".into(),
        issued_at: triad_kafka::now_micros(),
        task_id: "draft".into(),
        attempt: 9,
        attempt_id: "draft#9-misrouted".into(),
        zone: "US-EAST".into(),
        allowed_zones: vec!["US-EAST".into()],
        prompt,
        inputs: Default::default(),
        input_refs: Default::default(),
        model_hint: None,
        specialties: vec![],
        max_tokens: 64,
        timeout_ms: 10_000,
        auction: false,
        budget_micros: None,
        schema_version: triad_domain::TASK_REQUEST_SCHEMA_VERSION,
    };
    env.producer
        .send_record(
            &env.codec,
            &env.names.tasks("US-EAST"),
            None,
            &eu_id,
            &misrouted,
        )
        .await
        .unwrap();
    let violations: Vec<triad_domain::SovereigntyViolation> = env
        .read_until(
            &env.names.violations,
            Duration::from_secs(60),
            "the refused open on record",
            |v: &[triad_domain::SovereigntyViolation]| v.iter().any(|v| v.workflow_id == eu_id),
        )
        .await;
    let v = violations.iter().find(|v| v.workflow_id == eu_id).unwrap();
    assert_eq!(
        (v.node_id.as_str(), v.zone.as_str(), v.role.as_str()),
        ("executor-US-EAST", "US-EAST", "prompt")
    );
    assert_eq!(v.envelope_zones, ["EU-WEST"]);
    assert_eq!(v.attempt_id.as_deref(), Some("draft#9-misrouted"));
    // The audit report of that workflow shows the refusal (it is no problem of the
    // workflow: nothing was opened).
    let report = ok(&env, &["audit", "verify", &eu_id], &[]);
    assert!(
        report.contains("! refused: node executor-US-EAST in US-EAST may not open the prompt of task draft (sealed to EU-WEST)"),
        "{report}"
    );

    // Only the TPM keys are enrolled for the executors, so every completion above was
    // opened through a TPM (an executor on another key refuses to start).
    drop(executors);
}

/// `examples/research.json`, the demo's workflow (zones CONUS).
fn triad_cli_research() -> &'static str {
    include_str!("../../../examples/research.json")
}
