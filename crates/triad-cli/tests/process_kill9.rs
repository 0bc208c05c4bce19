//! The workflow processor survives `kill -9`: workflows are submitted, a test executor answers
//! every dispatched task through the inbox, and the processor process is killed twice along
//! the way. Every workflow must complete with a gap-free sequence and no event written twice,
//! and its terminal event must carry the processor's signature over the root of exactly the
//! records before it as the log holds them — the Merkle frontier survives the kills, the
//! repairs and the snapshots. Needs the stack (`scripts/dev.sh up`); runs on its own topic
//! prefix and groups. `KILL9_LOG=info` (a tracing filter) shows the processors' logs; on a
//! timeout the failure names where each unfinished workflow stopped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use triad_codec::{Codec, CodecOptions};
use triad_config::KafkaConfig;
use triad_domain::{
    CommandMetadata, EventBody, InboxBody, InboxRecord, TaskOutcome, TaskResultReported,
    WorkflowEvent, fixtures,
};
use triad_kafka::produce::Producer;
use triad_kafka::topics::Names;

const WORKFLOWS: usize = 20;
const EVENTS_PER_WORKFLOW: usize = 8;

struct Env {
    prefix: String,
    group: String,
    /// The processor's signing key lives here (sealing on, so it signs roots).
    keys: std::path::PathBuf,
    operator: String,
}

impl Env {
    fn triad(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_triad"));
        c.args(args)
            .env("TRIAD_KAFKA__TOPIC_PREFIX", &self.prefix)
            .env("TRIAD_KAFKA__GROUP_PREFIX", &self.group)
            .env("TRIAD_KAFKA__PARTITIONS", "3")
            // No executors run here: the unclaimed-zone timer must not move tasks.
            .env("TRIAD_PROCESSOR__UNCLAIMED_AFTER_MS", "600000")
            .env("TRIAD_PROCESSOR__SNAPSHOT_EVERY", "2")
            .env(
                "TRIAD_LOG__FILTER",
                std::env::var("KILL9_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env("TRIAD_SOVEREIGNTY__SEAL", "true")
            .env("TRIAD_SOVEREIGNTY__OPERATOR_PUBLIC_KEY", &self.operator)
            .env("TRIAD_SOVEREIGNTY__KEY_DIR", &self.keys)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    }

    fn spawn_processor(&self) -> Child {
        self.triad(&["process"]).spawn().unwrap()
    }
}

fn command(workflow_id: &str, n: i64, body: InboxBody) -> InboxRecord {
    InboxRecord {
        meta: CommandMetadata {
            command_id: format!("{workflow_id}-cmd-{n}"),
            idempotency_key: format!("{workflow_id}-{n}"),
            workflow_id: workflow_id.to_owned(),
            issued_at: triad_kafka::now_micros(),
            actor: Some("kill9-test".into()),
            tenant: None,
            schema_version: 1,
        },
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn processor_survives_kill_9_with_nothing_lost_or_doubled() {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let operator = triad_sovereignty::signing::SoftwareSigner::generate();
    let env = Env {
        prefix: format!("it-{id}."),
        group: format!("it-{id}"),
        keys: std::env::temp_dir().join(format!("triad-it-kill9-{id}")),
        operator: triad_sovereignty::public_hex(triad_sovereignty::signing::Signer::public(
            &operator,
        )),
    };
    assert!(env.triad(&["topics", "ensure"]).status().unwrap().success());
    let kafka = KafkaConfig {
        topic_prefix: env.prefix.clone(),
        partitions: 3,
        ..KafkaConfig::default()
    };
    let names = Names::new(&kafka);
    let codec = Arc::new(
        Codec::new(&CodecOptions {
            registry_url: "http://127.0.0.1:8081".into(),
            max_allocation_bytes: 16 << 20,
        })
        .unwrap(),
    );
    let producer = Producer::new(&kafka).unwrap();

    let mut processor = env.spawn_processor();
    for i in 0..WORKFLOWS {
        let wf = format!("wf-{i}");
        let r = command(
            &wf,
            0,
            InboxBody::SubmitWorkflow(fixtures::research_workflow()),
        );
        producer
            .send_record(&codec, &names.inbox, None, &wf, &r)
            .await
            .unwrap();
    }

    // A test executor: answers each dispatched attempt once, through the inbox.
    let consumer: StreamConsumer =
        triad_kafka::client::consumer_config(&kafka, &format!("{}-observer", env.group))
            .create()
            .unwrap();
    consumer.subscribe(&[names.events.as_str()]).unwrap();
    let mut stream = consumer.stream();
    let mut events: Vec<WorkflowEvent> = Vec::new();
    let mut raw: Vec<(String, Vec<u8>)> = Vec::new();
    let mut answered = HashSet::new();
    let mut completed = HashSet::new();
    let mut kills = 0;
    let mut raw_partitions: Vec<(String, i32)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while completed.len() < WORKFLOWS {
        let Ok(m) = tokio::time::timeout_at(deadline, stream.next()).await else {
            // Say where each unfinished workflow stopped, and whether the processor lives.
            let mut last: BTreeMap<&str, (i64, &str)> = BTreeMap::new();
            for e in &events {
                let entry = last.entry(e.meta.workflow_id.as_str()).or_default();
                if e.meta.sequence >= entry.0 {
                    *entry = (e.meta.sequence, e.meta.event_type.as_str());
                }
            }
            last.retain(|wf, _| !completed.contains(*wf));
            let partitions: BTreeMap<&str, i32> = raw_partitions
                .iter()
                .map(|(wf, p)| (wf.as_str(), *p))
                .collect();
            let stuck: Vec<String> = last
                .iter()
                .map(|(wf, (seq, ty))| {
                    format!("{wf}@p{}: {ty} #{seq}", partitions.get(wf).unwrap_or(&-1))
                })
                .collect();
            panic!(
                "timed out: {} of {WORKFLOWS} workflows completed after {kills} kills; \
                 processor exited: {:?}; unfinished: {stuck:?}",
                completed.len(),
                processor.try_wait()
            );
        };
        let m = m.unwrap().unwrap();
        raw_partitions.push((
            String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            m.partition(),
        ));
        let event: WorkflowEvent = codec.decode(m.payload()).await.unwrap();
        raw.push((
            event.meta.workflow_id.clone(),
            m.payload().unwrap().to_vec(),
        ));
        match &event.body {
            EventBody::TaskDispatched(d) if answered.insert(d.attempt_id.clone()) => {
                let n = i64::from(d.attempt) + if d.task_id == "answer" { 10 } else { 0 };
                let result = command(
                    &event.meta.workflow_id,
                    n,
                    InboxBody::TaskResultReported(TaskResultReported {
                        task_id: d.task_id.clone(),
                        attempt: d.attempt,
                        attempt_id: d.attempt_id.clone(),
                        model_id: d.model_id.clone(),
                        executor_zone: d.zone.clone(),
                        outcome: TaskOutcome::Succeeded,
                        output: Some(format!("{} done", d.task_id).into_bytes()),
                        output_ref: None,
                        error: None,
                        retryable: false,
                        input_tokens: 3,
                        output_tokens: 2,
                        cost_micros: 5,
                        latency_ms: 1,
                        routing: None,
                        execution: None,
                    }),
                );
                producer
                    .send_record(&codec, &names.inbox, None, &event.meta.workflow_id, &result)
                    .await
                    .unwrap();
            }
            EventBody::WorkflowCompleted(_) => {
                completed.insert(event.meta.workflow_id.clone());
            }
            _ => {}
        }
        events.push(event);
        // kill -9 twice, at arbitrary points of the run, and restart.
        if (kills == 0 && events.len() >= 30) || (kills == 1 && events.len() >= 90) {
            processor.kill().unwrap();
            processor.wait().unwrap();
            kills += 1;
            processor = env.spawn_processor();
        }
    }
    processor.kill().unwrap();
    processor.wait().unwrap();
    assert_eq!(kills, 2, "the run ended before both kills");

    // Nothing applied twice. A repair can race the dead owner's last in-flight write, so
    // the log may hold a copy of an event: it must be byte-identical (same id, sequence and
    // content), which is how every reader recognises it; two *different* events never share
    // a (workflow, sequence).
    let mut first: BTreeMap<(String, i64), &WorkflowEvent> = BTreeMap::new();
    let mut copies = 0;
    for e in &events {
        let key = (e.meta.workflow_id.clone(), e.meta.sequence);
        match first.get(&key) {
            Some(seen) => {
                assert_eq!(*seen, e, "two different events at {key:?}");
                copies += 1;
            }
            None => {
                first.insert(key, e);
            }
        }
    }
    eprintln!("{} events, {copies} byte-identical copies", events.len());
    let all = events.clone();
    let events: Vec<WorkflowEvent> = first.into_values().cloned().collect();
    let mut by_workflow: BTreeMap<&str, Vec<&WorkflowEvent>> = BTreeMap::new();
    for e in &events {
        by_workflow
            .entry(e.meta.workflow_id.as_str())
            .or_default()
            .push(e);
    }
    // ...and nothing lost: every workflow has the full gap-free history.
    assert_eq!(by_workflow.len(), WORKFLOWS);
    for (wf, list) in by_workflow {
        let sequences: Vec<i64> = list.iter().map(|e| e.meta.sequence).collect();
        assert_eq!(
            sequences,
            (1..=EVENTS_PER_WORKFLOW as i64).collect::<Vec<_>>(),
            "{wf}"
        );
        let types: Vec<&str> = list.iter().map(|e| e.meta.event_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "WorkflowAccepted",
                "TaskScheduled",
                "TaskDispatched",
                "TaskCompleted",
                "TaskScheduled",
                "TaskDispatched",
                "TaskCompleted",
                "WorkflowCompleted"
            ],
            "{wf}"
        );
    }

    // The signed roots: over the distinct records before the end, in log order, signed by
    // the processor's key (the one in its key directory).
    let processor_key = triad_sovereignty::FileKeyStore::new(&env.keys)
        .load_or_create_signer("processor")
        .unwrap();
    let mut leaves: BTreeMap<&str, Vec<triad_sovereignty::merkle::Hash>> = BTreeMap::new();
    let mut checked = 0;
    for ((wf, bytes), event) in raw.iter().zip(&all) {
        let list = leaves.entry(wf.as_str()).or_default();
        let leaf = triad_sovereignty::merkle::leaf_hash(bytes);
        if list.contains(&leaf) {
            continue; // a byte-identical copy
        }
        if event.body.is_terminal() {
            let r = event.signed_root.as_ref().expect("a signed root");
            assert_eq!(r.leaves, list.len() as i64, "{wf}");
            let root = triad_sovereignty::merkle::root(list);
            assert_eq!(r.root, triad_sovereignty::hex(&root), "{wf}");
            let signed =
                triad_sovereignty::custody::root_bytes(&triad_sovereignty::custody::SignedRoot {
                    workflow_id: wf,
                    event_id: &event.meta.event_id,
                    leaves: list.len() as u64,
                    root,
                });
            assert!(
                triad_sovereignty::signing::verify(
                    triad_sovereignty::signing::Signer::public(&processor_key),
                    &signed,
                    &r.signature
                ),
                "{wf}"
            );
            checked += 1;
        }
        list.push(leaf);
    }
    assert_eq!(checked, WORKFLOWS);
    let _ = std::fs::remove_dir_all(&env.keys);
}
