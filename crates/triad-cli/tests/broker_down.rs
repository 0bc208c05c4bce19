//! A broker that is down when the workers start: they report it clearly, keep retrying, and
//! work once it is reachable. The "broker" address is a local proxy to Tansu that starts
//! listening only after the processor has reported the failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use support::{Env, by_workflow, kill};
use triad_domain::EventBody;
use triad_workflow::{Task, Workflow};

/// Forwards every connection on `listener` to Tansu.
async fn proxy(listener: tokio::net::TcpListener) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        tokio::spawn(async move {
            if let Ok(mut outbound) = tokio::net::TcpStream::connect("127.0.0.1:9092").await {
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            }
        });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_started_before_the_broker_report_it_retry_and_then_work() {
    let env = Env::new(1).await;
    // A free port with nothing listening yet.
    let port = support::free_port();
    let bootstrap = format!("127.0.0.1:{port}");
    let mut processor = env
        .triad(&["process"])
        .env("TRIAD_KAFKA__BOOTSTRAP_SERVERS", &bootstrap)
        .env("TRIAD_LOG__FILTER", "info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The processor says what is wrong, naming the address...
    let stderr = processor.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let reported = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("no error reported within 30 s");
        if line.contains(&bootstrap) && line.contains("Connection refused") {
            break line;
        }
    };
    assert!(reported.contains("\"level\":\"ERROR\""), "{reported}");
    // ...and keeps running instead of crashing.
    assert!(
        processor.try_wait().unwrap().is_none(),
        "the processor exited"
    );

    // The broker becomes reachable: the processor connects and works.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(proxy(listener));
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let wf = Workflow::new("late-broker")
        .zones(["US-EAST"])
        .task(Task::new("q", "What is 2+2?"));
    env.submit("wf-late-broker", wf.to_command()).await;
    let events = env
        .events_until_finished(&["wf-late-broker".to_owned()], Duration::from_secs(120))
        .await;
    kill(&mut processor);
    kill(&mut executor);
    let list = &by_workflow(&events)["wf-late-broker"];
    let EventBody::WorkflowCompleted(done) = &list.last().unwrap().body else {
        panic!("{:?}", list.last().unwrap().body)
    };
    assert_eq!(done.outputs["q"].as_ref(), b"4");
}
