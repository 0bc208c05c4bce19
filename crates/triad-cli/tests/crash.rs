//! Crash safety of the whole flow: `triad process` and `triad execute` run as child processes
//! and are killed with SIGKILL at seeded random points of each phase (accepting, dispatching,
//! executing, completing), and a processor is frozen with SIGSTOP, replaced, and woken up as a
//! zombie. Afterwards every workflow completed, no event is lost, and no task is completed or
//! billed twice. Re-run a failure with `CRASH_TEST_SEED=<seed printed by the test>`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Child;
use std::time::Duration;

use futures::StreamExt;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use support::{Env, kill};
use triad_domain::{EventBody, WorkflowEvent};

const WORKFLOWS: usize = 40;
const TASKS: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Phase {
    /// Right after a workflow was accepted (the submission's other events may be in flight).
    Accepting,
    /// Right after a dispatch, before or while its task request is published.
    Dispatching,
    /// The executor, right after a dispatch: the task is being executed.
    Executing,
    /// Right after a completion, before or while the next tasks are dispatched.
    Completing,
}

fn trigger(phase: Phase, body: &EventBody) -> bool {
    match phase {
        Phase::Accepting => matches!(body, EventBody::WorkflowAccepted(_)),
        Phase::Dispatching | Phase::Executing => matches!(body, EventBody::TaskDispatched(_)),
        Phase::Completing => matches!(body, EventBody::TaskCompleted(_)),
    }
}

fn signal(child: &Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_in_every_phase_and_a_zombie_lose_nothing_and_bill_nothing_twice() {
    let seed: u64 = std::env::var("CRASH_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("CRASH_TEST_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    // A priced embedded model, so billing twice would show.
    let env = Env::new(3).await.with_config(
        r#"
[processor]
unclaimed_after_ms = 600000
# Snapshot rounds every few inputs, so kills also land around snapshot writes and restarts
# recover from snapshots plus a tail.
snapshot_every = 3

[models.triad-local]
kind = "local"
input_micros_per_1k = 1000
output_micros_per_1k = 2000
"#,
    );
    let mut processor = env.spawn("processor-0", &["process"]);
    let mut executor = env.spawn("executor-0", &["execute", "--zone", "US-EAST"]);
    let mut spawned = 1;

    // Two rounds of every phase, each firing on a seeded-random k-th matching event.
    let mut plan: Vec<(Phase, usize)> = Vec::new();
    for _ in 0..2 {
        for phase in [
            Phase::Accepting,
            Phase::Dispatching,
            Phase::Executing,
            Phase::Completing,
        ] {
            plan.push((phase, rng.random_range(1..=6)));
        }
    }
    eprintln!("kill plan: {plan:?}");

    let ids: Vec<String> = (0..WORKFLOWS).map(|n| format!("wf-crash-{n:02}")).collect();
    let consumer: StreamConsumer =
        triad_kafka::client::consumer_config(&env.kafka, &format!("{}-observer", env.group))
            .create()
            .unwrap();
    consumer.subscribe(&[env.names.events.as_str()]).unwrap();
    let mut stream = consumer.stream();

    let mut events: Vec<WorkflowEvent> = Vec::new();
    let mut finished: HashSet<String> = HashSet::new();
    let mut submitted = 0;
    let mut step = 0;
    let mut seen_for_step = 0;
    let mut kills: HashMap<Phase, usize> = HashMap::new();
    let mut zombie: Option<support::Guarded> = None;
    let mut zombie_state = 0; // 0 not yet, 1 frozen + replaced, 2 woken, 3 done
    let deadline = tokio::time::Instant::now() + Duration::from_secs(420);
    while finished.len() < WORKFLOWS {
        // Submissions in waves of 10, so acceptances happen throughout the run.
        if submitted < WORKFLOWS && (submitted == 0 || finished.len() + 10 >= submitted) {
            for (n, id) in ids.iter().enumerate().skip(submitted).take(10) {
                env.submit(
                    id,
                    support::research(&format!("crash {n}"), true).to_command(),
                )
                .await;
            }
            submitted = (submitted + 10).min(WORKFLOWS);
        }
        let m = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "timed out (seed {seed}): {} of {WORKFLOWS} finished, kills {kills:?}",
                    finished.len()
                )
            })
            .unwrap()
            .unwrap();
        let event: WorkflowEvent = env.codec.decode(m.payload()).await.unwrap();
        if event.body.is_terminal() {
            finished.insert(event.meta.workflow_id.clone());
        }
        let body = event.body.clone();
        events.push(event);

        if let Some((phase, k)) = plan.get(step).copied() {
            if trigger(phase, &body) {
                seen_for_step += 1;
            }
            if seen_for_step >= k {
                if phase == Phase::Executing {
                    kill(&mut executor);
                    spawned += 1;
                    executor = env.spawn(
                        &format!("executor-{spawned}"),
                        &["execute", "--zone", "US-EAST"],
                    );
                } else {
                    kill(&mut processor);
                    spawned += 1;
                    processor = env.spawn(&format!("processor-{spawned}"), &["process"]);
                }
                *kills.entry(phase).or_default() += 1;
                step += 1;
                seen_for_step = 0;
            }
        } else if zombie_state == 0 {
            // The zombie: freeze the processor, let a replacement take its partitions...
            signal(&processor, "-STOP");
            spawned += 1;
            let replacement = env.spawn(&format!("processor-{spawned}"), &["process"]);
            zombie = Some(std::mem::replace(&mut processor, replacement));
            zombie_state = 1;
            seen_for_step = 0;
        } else if zombie_state == 1 && matches!(body, EventBody::TaskCompleted(_)) {
            // ...once the replacement made progress, wake the old one up.
            seen_for_step += 1;
            if seen_for_step >= 3 {
                signal(zombie.as_ref().unwrap(), "-CONT");
                zombie_state = 2;
                seen_for_step = 0;
            }
        } else if zombie_state == 2 && matches!(body, EventBody::TaskCompleted(_)) {
            seen_for_step += 1;
            if seen_for_step >= 3 {
                kill(zombie.as_mut().unwrap());
                zombie_state = 3;
            }
        }
    }
    kill(&mut processor);
    kill(&mut executor);
    if let Some(z) = zombie.as_mut() {
        kill(z);
    }
    eprintln!(
        "seed {seed}: kills {kills:?}, zombie state {zombie_state}, {} events read",
        events.len()
    );
    for phase in [
        Phase::Accepting,
        Phase::Dispatching,
        Phase::Executing,
        Phase::Completing,
    ] {
        assert!(
            kills.get(&phase).copied().unwrap_or(0) >= 2,
            "phase {phase:?} was not hit twice (seed {seed})"
        );
    }
    assert!(zombie_state >= 2, "the zombie never woke up (seed {seed})");

    // Copies (a repair racing a dead owner's write, a zombie) must be byte-identical, and
    // nothing is lost: gap-free from 1.
    let per_workflow = support::distinct_gap_free(&events, &format!("seed {seed}"));
    assert_eq!(per_workflow.len(), WORKFLOWS);
    for (wf, list) in &per_workflow {
        // Completed once; only discarded late results (recorded spend) may follow.
        let finals: Vec<&EventBody> = list
            .iter()
            .map(|e| &e.body)
            .filter(|b| b.is_terminal())
            .collect();
        let [EventBody::WorkflowCompleted(done)] = finals.as_slice() else {
            panic!("{wf} did not complete exactly once: {finals:?} (seed {seed})")
        };
        let end = list.iter().position(|e| e.body.is_terminal()).unwrap();
        assert!(
            list[end + 1..]
                .iter()
                .all(|e| matches!(e.body, EventBody::TaskResultDiscarded(_))),
            "{wf}: events after completion (seed {seed})"
        );
        // No task completed twice, and the bill is exactly the completed tasks' cost.
        let completed: Vec<(&str, i64)> = list
            .iter()
            .filter_map(|e| match &e.body {
                EventBody::TaskCompleted(c) => Some((c.task_id.as_str(), c.cost_micros)),
                _ => None,
            })
            .collect();
        let tasks: HashSet<&str> = completed.iter().map(|(t, _)| *t).collect();
        assert_eq!(
            (completed.len(), tasks.len()),
            (TASKS, TASKS),
            "{wf} (seed {seed})"
        );
        let billed: i64 = completed.iter().map(|(_, c)| c).sum();
        assert!(billed > 0);
        assert_eq!(
            done.total_cost_micros, billed,
            "{wf} billed twice? (seed {seed})"
        );
        // Repeated model calls after crashes are recorded, with their cost, never billed.
        for e in list {
            if let EventBody::TaskResultDiscarded(d) = &e.body {
                assert!(d.cost_micros > 0, "{d:?}");
            }
        }
    }
}
