//! Cancellation through the broadcast control topic, and a zone whose queue nobody picks
//! up. Real `triad process` / `triad execute` binaries on the stack; a local server speaks
//! the OpenAI wire protocol for the slow model.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use support::{Env, by_workflow, kill};
use triad_domain::{EventBody, WorkflowEvent};
use triad_testkit::{Behaviour, FakeProvider, Flavor};
use triad_workflow::{Task, Workflow};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_aborts_the_call_in_flight_and_its_late_result_is_discarded() {
    let slow = FakeProvider::start(Flavor::OpenAi).await;
    slow.set_default(Behaviour::Slow(Duration::from_secs(60)));
    let env = Env::new(1).await.with_config(&format!(
        r#"
[models.slow]
kind = "openai"
base_url = "{}"
zones = ["US-EAST"]
specialties = ["essays"]
timeout_ms = 120000
"#,
        slow.base_url()
    ));
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let wf = Workflow::new("long")
        .zones(["US-EAST"])
        .task(
            Task::new("essay", "Write an essay")
                .specialties(["essays"])
                .timeout_ms(120_000),
        )
        .task(Task::new("edit", "Edit: {essay.output}").depends_on(["essay"]));
    env.submit("wf-cancel", wf.to_command()).await;
    // The model call is in flight...
    slow.wait_for_requests(1, Duration::from_secs(60)).await;
    env.cancel("wf-cancel", "changed my mind").await;
    // ...and the cancellation aborts it long before the model would answer (60 s).
    let events: Vec<WorkflowEvent> = env
        .read_until(
            &env.names.events,
            Duration::from_secs(30),
            "the discarded result",
            |es: &[WorkflowEvent]| {
                es.iter()
                    .any(|e| matches!(e.body, EventBody::TaskResultDiscarded(_)))
            },
        )
        .await;
    kill(&mut processor);
    kill(&mut executor);
    let types: Vec<&str> = events.iter().map(|e| e.meta.event_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "WorkflowAccepted",
            "TaskScheduled",
            "TaskDispatched",
            "WorkflowCancelled",
            "TaskResultDiscarded"
        ]
    );
    let EventBody::WorkflowCancelled(c) = &events[3].body else {
        unreachable!()
    };
    assert_eq!(c.reason.as_deref(), Some("changed my mind"));
    let EventBody::TaskResultDiscarded(d) = &events[4].body else {
        unreachable!()
    };
    assert_eq!(d.reason, "the workflow was cancelled");
    assert_eq!(d.task_id, "essay");
    assert_eq!(slow.requests().len(), 1, "the aborted call is not retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_without_executors_hands_its_task_to_another_allowed_zone() {
    let env = Env::new(1).await.with_config(
        r#"
[processor]
unclaimed_after_ms = 1000
liveness_ms = 3000

[executor]
heartbeat_ms = 500
"#,
    );
    let mut processor = env.spawn("processor", &["process"]);
    // Only US-EAST has an executor; CONUS sorts US-CENTRAL first.
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);
    let wf = Workflow::new("conus")
        .zones(["CONUS"])
        .task(Task::new("q", "What is 6*7?"));
    env.submit("wf-outage", wf.to_command()).await;
    let events = env
        .events_until_finished(&["wf-outage".to_owned()], Duration::from_secs(60))
        .await;
    kill(&mut processor);
    kill(&mut executor);
    let list = &by_workflow(&events)["wf-outage"];
    let dispatched: Vec<(i32, &str)> = list
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TaskDispatched(d) => Some((d.attempt, d.zone.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(dispatched[0], (1, "US-CENTRAL"));
    assert_eq!(dispatched.last().unwrap().1, "US-EAST");
    let unavailable: Vec<&str> = list
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TaskFailed(f) => f.unavailable_zone.as_deref(),
            _ => None,
        })
        .collect();
    assert!(unavailable.contains(&"US-CENTRAL"), "{unavailable:?}");
    assert!(!unavailable.contains(&"US-EAST"));
    let EventBody::WorkflowCompleted(done) = &list.last().unwrap().body else {
        panic!("{:?}", list.last().unwrap().body)
    };
    assert_eq!(done.outputs["q"].as_ref(), b"42");
}
