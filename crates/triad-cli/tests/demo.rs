//! The README's main job: `triad demo` runs the research workflow end to end on the embedded
//! defaults, payloads sealed, and the submitting edge opens the report.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::Env;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_the_research_workflow_sealed_end_to_end() {
    let mut env = Env::new(1).await;
    let keys = env.log_path("keys");
    env.extra_env.push((
        "TRIAD_SOVEREIGNTY__KEY_DIR".into(),
        keys.display().to_string(),
    ));
    let (stdout, _) = support::cli_ok(&env, &["demo"], &[]);
    assert!(stdout.ends_with("demo ok\n"), "{stdout}");
    assert!(stdout.contains("sealing on: an operator key made for this run enrolled edge-US-EAST"));
    // Every task's output crossed the log sealed …
    let completed: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("TaskCompleted"))
        .collect();
    assert_eq!(completed.len(), 4, "{stdout}");
    assert!(
        completed.iter().all(|l| l.contains("[sealed, ")),
        "{stdout}"
    );
    assert!(stdout.contains("sealed: 4 of 4 outputs"), "{stdout}");
    // … and the edge, inside the workflow's zones, read the report in clear.
    let report = stdout
        .lines()
        .skip_while(|l| !l.contains("output of report:"))
        .nth(1)
        .unwrap_or_default();
    assert!(
        report.contains("data sovereignty") && !report.contains("sealed"),
        "{report}"
    );
    assert!(stdout.contains("Merkle root"), "{stdout}");
    assert!(
        stdout.contains("audit: all 4 operations signed by enrolled executors"),
        "{stdout}"
    );
    assert!(
        stdout.contains("the root of the 17 events before the end signed by processor"),
        "{stdout}"
    );
    // The node keys went to the configured key store, one file per node, mode 0600.
    let files = std::fs::read_dir(&keys).unwrap().count();
    assert_eq!(
        files, 11,
        "edge + one executor per zone, each executor's signing key, the processor's and the notary's signing keys"
    );
}
