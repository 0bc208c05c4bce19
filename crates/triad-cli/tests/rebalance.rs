//! A second processor joins the group mid-run, takes partitions, and leaves again: its
//! partitions go back to the first, which reloads their state from the log. Nothing is lost,
//! nothing is applied twice, no two different events share a (workflow, sequence).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use support::{Env, kill};

/// Waits for a stderr line containing every one of `needles`.
fn wait_for_line(rx: &Receiver<String>, needles: &[&str], what: &str) -> String {
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|_| panic!("no line for {what} within 60 s"));
        if needles.iter().all(|n| line.contains(n)) {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_processor_joining_and_leaving_loses_and_doubles_nothing() {
    let env = Env::new(3).await;
    let mut first = env.spawn("processor-a", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let ids: Vec<String> = (0..45).map(|n| format!("wf-rebalance-{n:02}")).collect();
    env.submit_research(&ids[0..15], "rebalance", false).await;
    env.events_until_finished(&ids[..15], Duration::from_secs(120))
        .await;

    // A second, dynamic member joins (it leaves the group for good when it stops).
    let mut second = env
        .triad(&["process", "--instance", "1"])
        .env("TRIAD_KAFKA__STATIC_MEMBERSHIP", "false")
        .env("TRIAD_LOG__FILTER", "info,triad_processor=debug")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = second.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let assigned = wait_for_line(
        &rx,
        &["partitions assigned"],
        "the second processor's assignment",
    );
    assert!(!assigned.contains("\"partitions\":0"), "{assigned}");
    env.submit_research(&ids[15..30], "rebalance", false).await;
    // The second processor does real work...
    wait_for_line(
        &rx,
        &["input applied"],
        "the second processor applying an input",
    );
    env.events_until_finished(&ids[..30], Duration::from_secs(120))
        .await;
    // ...then leaves; its partitions return to the first, which reloads them.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert!(
        second.wait().unwrap().success(),
        "the second processor did not stop cleanly"
    );
    env.submit_research(&ids[30..], "rebalance", false).await;
    let events = env
        .events_until_finished(&ids[..45], Duration::from_secs(180))
        .await;
    kill(&mut first);
    kill(&mut executor);

    let per_workflow = support::distinct_gap_free(&events, "rebalance");
    assert_eq!(per_workflow.len(), ids.len());
    support::assert_each_completed(&per_workflow, 2);
}
