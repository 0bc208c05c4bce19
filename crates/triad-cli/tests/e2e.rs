//! Workflows end to end through the real binaries: `triad process` and `triad execute` run
//! as child processes on the stack (Tansu, the registry); only the remote model providers are
//! replaced, by local servers speaking their wire protocols.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use support::{Env, by_workflow, kill};
use triad_domain::{BreakerState, EventBody, ExecutorStatus, StatusBody, WorkflowEvent};
use triad_testkit::{Behaviour, FakeProvider, Flavor};
use triad_workflow::{Task, Workflow};

fn output(events: &[WorkflowEvent], task: &str) -> Option<String> {
    events.iter().find_map(|e| match &e.body {
        EventBody::WorkflowCompleted(done) => done
            .outputs
            .get(task)
            .map(|o| String::from_utf8_lossy(o).into_owned()),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_plus_two_and_a_hundred_concurrent_workflows_complete() {
    let env = Env::new(3).await;
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);

    // The seed's success criterion.
    let question = Workflow::new("test")
        .zones(["US-EAST"])
        .task(Task::new("question", "What is 2+2?"));
    let mut ids = vec!["wf-two-plus-two".to_owned()];
    env.submit(&ids[0], question.to_command()).await;
    // 100 fan-out/fan-in workflows at once.
    let submissions = (0..100).map(|n| {
        let id = format!("wf-{n:03}");
        let env = &env;
        async move {
            env.submit(
                &id,
                support::research(&format!("topic {n}"), true).to_command(),
            )
            .await;
            id
        }
    });
    ids.extend(futures::future::join_all(submissions).await);

    let events = env
        .events_until_finished(&ids, Duration::from_secs(240))
        .await;
    kill(&mut processor);
    kill(&mut executor);

    let workflows = by_workflow(&events);
    let two = &workflows["wf-two-plus-two"];
    assert_eq!(output(two, "question").as_deref(), Some("4"), "{two:#?}");

    for id in &ids {
        let list = &workflows[id];
        // Per-workflow order: the sequence in log order is exactly 1..n, no gap, no repeat.
        let sequences: Vec<i64> = list.iter().map(|e| e.meta.sequence).collect();
        assert_eq!(
            sequences,
            (1..=list.len() as i64).collect::<Vec<_>>(),
            "{id}"
        );
        assert!(
            matches!(list.last().unwrap().body, EventBody::WorkflowCompleted(_)),
            "{id} did not complete: {:?}",
            list.last().unwrap().body
        );
        // Every completion was routed first, in this zone, by the embedded model.
        for (i, e) in list.iter().enumerate() {
            if let EventBody::TaskCompleted(c) = &e.body {
                let EventBody::TaskRouted(r) = &list[i - 1].body else {
                    panic!("{id}: TaskCompleted without TaskRouted before it")
                };
                assert_eq!(
                    (r.task_id.as_str(), c.executor_zone.as_str()),
                    (c.task_id.as_str(), "US-EAST")
                );
                assert_eq!(r.decision.model_id, "triad-local");
            }
        }
    }
    // No task completed twice, counted on the raw topic.
    let mut completions: HashMap<(String, String), usize> = HashMap::new();
    for e in &events {
        if let EventBody::TaskCompleted(c) = &e.body {
            *completions
                .entry((e.meta.workflow_id.clone(), c.task_id.clone()))
                .or_default() += 1;
        }
    }
    assert_eq!(completions.len(), 1 + 100 * 4);
    assert!(
        completions.values().all(|n| *n == 1),
        "a task completed twice"
    );
    let report = output(&workflows["wf-007"], "report").unwrap();
    assert!(report.contains("words)"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_retry_open_the_breaker_and_fall_back_and_failures_skip_downstream() {
    // "flaky" never answers in time; "broken" always answers 500; "locked" rejects the key.
    let flaky = FakeProvider::start(Flavor::OpenAi).await;
    flaky.set_default(Behaviour::Slow(Duration::from_secs(30)));
    let broken = FakeProvider::start(Flavor::Anthropic).await;
    broken.set_default(Behaviour::Status {
        code: 500,
        retry_after: None,
        message: "internal error".into(),
    });
    let locked = FakeProvider::start(Flavor::OpenAi).await;
    locked.set_default(Behaviour::Status {
        code: 401,
        retry_after: None,
        message: "invalid api key".into(),
    });
    let config = format!(
        r#"
[executor]
retries_per_model = 3
retry_base_ms = 10
retry_max_ms = 50
breaker_failures = 3
breaker_cooldown_ms = 600000

[models.triad-local]
kind = "local"
specialties = ["arithmetic"]
latency_p50_ms = 5

[models.flaky]
kind = "openai"
base_url = "{}"
zones = ["US-EAST"]
specialties = ["arithmetic"]
latency_p50_ms = 1
timeout_ms = 300

[models.broken]
kind = "anthropic"
base_url = "{}"
api_key_env = "TEST_BROKEN_KEY"
zones = ["US-EAST"]
specialties = ["law"]

[models.locked]
kind = "openai"
base_url = "{}"
api_key_env = "TEST_LOCKED_KEY"
zones = ["US-EAST"]
specialties = ["vision"]
"#,
        flaky.base_url(),
        broken.base_url(),
        locked.base_url()
    );
    // A free port for the executor's Prometheus endpoint.
    let metrics_port = support::free_port();
    let config = format!("{config}\n[metrics]\nlisten = \"127.0.0.1:{metrics_port}\"\n");
    let mut env = Env::new(1).await.with_config(&config);
    env.extra_env = vec![
        ("TEST_BROKEN_KEY".into(), "sk-broken-secret".into()),
        ("TEST_LOCKED_KEY".into(), "sk-locked-secret".into()),
    ];
    let mut processor = env.spawn("processor", &["process"]);
    let mut executor = env.spawn("executor", &["execute", "--zone", "US-EAST"]);

    let fallback = Workflow::new("fallback")
        .zones(["US-EAST"])
        .task(Task::new("sum", "What is 2+2?"));
    let all_fail = Workflow::new("all-fail")
        .zones(["US-EAST"])
        .task(
            Task::new("brief", "Draft a brief")
                .specialties(["law"])
                .max_attempts(2),
        )
        .task(Task::new("review", "Review: {brief.output}").depends_on(["brief"]));
    let fatal = Workflow::new("fatal")
        .zones(["US-EAST"])
        .task(Task::new("look", "Describe the image").specialties(["vision"]));
    env.submit("wf-fallback", fallback.to_command()).await;
    env.submit("wf-all-fail", all_fail.to_command()).await;
    env.submit("wf-fatal", fatal.to_command()).await;
    let ids: Vec<String> = ["wf-fallback", "wf-all-fail", "wf-fatal"]
        .map(String::from)
        .to_vec();
    let events = env
        .events_until_finished(&ids, Duration::from_secs(120))
        .await;
    let workflows = by_workflow(&events);

    // Timeout → retry → breaker opens → fallback succeeds.
    let f = &workflows["wf-fallback"];
    assert_eq!(output(f, "sum").as_deref(), Some("4"));
    let routed = f
        .iter()
        .find_map(|e| match &e.body {
            EventBody::TaskRouted(r) => Some(r.decision.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(routed.model_id, "triad-local");
    assert!(
        routed.reason.starts_with("fallback after"),
        "{}",
        routed.reason
    );
    let calls: Vec<(&str, bool)> = routed
        .calls
        .iter()
        .map(|c| (c.model_id.as_str(), c.ok))
        .collect();
    assert_eq!(
        calls,
        [
            ("flaky", false),
            ("flaky", false),
            ("flaky", false),
            ("triad-local", true)
        ]
    );
    assert!(
        routed.calls[0]
            .error
            .as_deref()
            .unwrap()
            .contains("timed out"),
        "{:?}",
        routed.calls[0]
    );
    assert_eq!(
        flaky.requests().len(),
        3,
        "three calls, then the open breaker stops them"
    );

    // All models failing → TaskFailed with the reasons, downstream skipped, workflow failed.
    let a = &workflows["wf-all-fail"];
    let failures: Vec<(i32, String, bool)> = a
        .iter()
        .filter_map(|e| match &e.body {
            EventBody::TaskFailed(t) => Some((t.attempt, t.error.clone(), t.retryable)),
            _ => None,
        })
        .collect();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert!(
        failures[0].1.contains("HTTP 500: internal error"),
        "{failures:?}"
    );
    assert!(failures[0].2, "a 500 is worth another attempt");
    assert!(
        failures[1].1.contains("circuit breaker open"),
        "{failures:?}"
    );
    assert!(!failures[1].2);
    assert!(
        a.iter()
            .any(|e| matches!(&e.body, EventBody::TaskSkipped(s) if s.task_id == "review"))
    );
    assert!(matches!(
        a.last().unwrap().body,
        EventBody::WorkflowFailed(_)
    ));
    assert_eq!(broken.requests().len(), 3);
    assert_eq!(
        broken.requests()[0].header("x-api-key"),
        Some("sk-broken-secret")
    );

    // 401 fails fast: one call, one attempt.
    let x = &workflows["wf-fatal"];
    let failed: Vec<&EventBody> = x
        .iter()
        .map(|e| &e.body)
        .filter(|b| matches!(b, EventBody::TaskFailed(_)))
        .collect();
    assert_eq!(failed.len(), 1);
    let EventBody::TaskFailed(t) = failed[0] else {
        unreachable!()
    };
    assert!(t.error.contains("HTTP 401") && !t.retryable, "{t:?}");
    assert_eq!(locked.requests().len(), 1);

    let statuses: Vec<ExecutorStatus> = env
        .read_until(
            &env.names.executor_status,
            Duration::from_secs(30),
            "breaker transitions",
            |s: &[ExecutorStatus]| {
                let opened: HashSet<&str> = s
                    .iter()
                    .filter_map(|s| match &s.body {
                        StatusBody::BreakerTransition(t) if t.to_state == BreakerState::Open => {
                            Some(t.model_id.as_str())
                        }
                        _ => None,
                    })
                    .collect();
                opened.contains("flaky") && opened.contains("broken")
            },
        )
        .await;
    // ...and metrics: the executor serves the same transitions to Prometheus.
    let metrics = scrape(metrics_port).await;
    kill(&mut processor);
    kill(&mut executor);
    for line in [
        "triad_breaker_transitions_total{zone=\"US-EAST\",model=\"flaky\",from=\"closed\",to=\"open\"} 1",
        "triad_breaker_transitions_total{zone=\"US-EAST\",model=\"broken\",from=\"closed\",to=\"open\"} 1",
        "triad_task_attempts_total{zone=\"US-EAST\",model=\"triad-local\",outcome=\"succeeded\"} 1",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} missing from:\n{metrics}"
        );
    }

    // Breaker transitions are events on triad.executor-status.
    let transitions: BTreeMap<&str, Vec<(BreakerState, BreakerState)>> =
        statuses.iter().fold(BTreeMap::new(), |mut m, s| {
            if let StatusBody::BreakerTransition(t) = &s.body {
                m.entry(t.model_id.as_str())
                    .or_default()
                    .push((t.from_state, t.to_state));
            }
            m
        });
    assert_eq!(
        transitions["flaky"],
        [(BreakerState::Closed, BreakerState::Open)]
    );

    // Secrets never reach the log or the events.
    let log = support::read_log(&env.log_path("executor"));
    assert!(!log.contains("sk-broken-secret") && !log.contains("sk-locked-secret"));
    let dump = format!("{events:?}");
    assert!(!dump.contains("sk-broken-secret") && !dump.contains("sk-locked-secret"));
}

/// `GET /metrics` over plain HTTP/1.0; returns the body.
async fn scrape(port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(
        response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"),
        "{response}"
    );
    response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap()
}
