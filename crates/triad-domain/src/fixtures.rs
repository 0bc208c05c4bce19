//! Deterministic sample records: one of every command and event variant. Used by the demo,
//! the golden corpus of `schemas/golden/`, the benchmarks and tests.

use std::collections::BTreeMap;

use serde_bytes::ByteBuf;

use crate::{
    AdapterInstall, BlobRef, BreakerState, BreakerTransition, CancelWorkflow, Causation,
    CommandMetadata, ControlAction, ControlRecord, DeadLetter, DeadLetterHeader, DirectoryBody,
    EpochMarker, EventBody, EventMetadata, ExecutionRecord, ExecutorStatus, Heartbeat, InboxBody,
    InboxRecord, KeyDirectoryChange, ModelCall, ModelHeartbeat, ModelRegistration, NodeEnrolled,
    NodeKeyRetired, NodeKeyRevoked, NodeSigningKeyEnrolled, RemoteKind, RemoteModel,
    RoutingDecision, SnapshotBody, SnapshotCheckpoint, SnapshotState, SovereigntyViolation,
    StatusBody, SubmitWorkflow, TaskCompleted, TaskDispatched, TaskFailed, TaskOutcome,
    TaskRequest, TaskResultDiscarded, TaskResultReported, TaskRouted, TaskScheduled, TaskSkipped,
    TaskSpec, TaskTimerFired, TimerKind, WorkflowAccepted, WorkflowCancelled, WorkflowCompleted,
    WorkflowEvent, WorkflowFailed, WorkflowKey, WorkflowRejected, WorkflowSnapshot,
    WrappedWorkflowKey, derive_event_id,
};

/// 2026-01-01T00:00:00Z in microseconds.
pub const EPOCH_2026_MICROS: i64 = 1_767_225_600_000_000;
pub const WORKFLOW_ID: &str = "wf-00000000-demo";
pub const INBOX_TOPIC: &str = "triad.workflow-inbox";

/// The seed's example workflow: generate questions, then answer them.
pub fn research_workflow() -> SubmitWorkflow {
    SubmitWorkflow {
        name: "research".to_owned(),
        default_zones: vec!["US-EAST".to_owned()],
        tasks: vec![
            task(
                "generate_questions",
                "Generate 3 questions about data sovereignty",
                &[],
            ),
            task(
                "answer",
                "Answer: {generate_questions.output}",
                &["generate_questions"],
            ),
        ],
        labels: BTreeMap::from([("team".to_owned(), "demo".to_owned())]),
        account: None,
    }
}

/// The credits account of the fixtures.
pub const ACCOUNT: &str = "acct-demo";

fn task(id: &str, prompt: &str, depends_on: &[&str]) -> TaskSpec {
    TaskSpec {
        id: id.to_owned(),
        prompt: prompt.as_bytes().to_vec(),
        model_hint: None,
        specialties: vec![],
        zones: vec![],
        depends_on: depends_on.iter().map(|d| (*d).to_owned()).collect(),
        max_tokens: 1024,
        timeout_ms: 60_000,
        max_attempts: 3,
        auction: false,
    }
}

fn command_meta(n: u32) -> CommandMetadata {
    CommandMetadata {
        command_id: format!("00000000-0000-4000-8000-{n:012}"),
        idempotency_key: format!("demo-key-{n}"),
        workflow_id: WORKFLOW_ID.to_owned(),
        issued_at: EPOCH_2026_MICROS + i64::from(n),
        actor: Some("demo".to_owned()),
        tenant: Some("acme".to_owned()),
        schema_version: crate::INBOX_SCHEMA_VERSION,
    }
}

/// One inbox record of every body variant.
pub fn inbox_records() -> Vec<InboxRecord> {
    vec![
        InboxRecord {
            meta: command_meta(1),
            body: InboxBody::SubmitWorkflow(research_workflow()),
        },
        InboxRecord {
            meta: command_meta(2),
            body: InboxBody::CancelWorkflow(CancelWorkflow {
                reason: Some("demo".to_owned()),
            }),
        },
        InboxRecord {
            meta: command_meta(3),
            body: InboxBody::TaskResultReported(TaskResultReported {
                task_id: "generate_questions".to_owned(),
                attempt: 1,
                attempt_id: "generate_questions#1".to_owned(),
                model_id: "triad-local".to_owned(),
                executor_zone: "US-EAST".to_owned(),
                outcome: TaskOutcome::Succeeded,
                output: Some(b"1. Who holds the keys?".to_vec()),
                output_ref: None,
                error: None,
                retryable: false,
                input_tokens: 12,
                output_tokens: 7,
                cost_micros: 0,
                latency_ms: 3,
                routing: Some(RoutingDecision {
                    auction: Some(auction()),
                    ..routing_decision()
                }),
                execution: Some(Box::new(execution_record())),
            }),
        },
        InboxRecord {
            meta: command_meta(4),
            body: InboxBody::TaskTimerFired(TaskTimerFired {
                task_id: "answer".to_owned(),
                attempt: 1,
                attempt_id: "answer#1".to_owned(),
                kind: TimerKind::Deadline,
                zone: "US-EAST".to_owned(),
            }),
        },
        InboxRecord {
            meta: command_meta(5),
            body: InboxBody::LedgerReply(crate::LedgerReply {
                account: ACCOUNT.to_owned(),
                outcome: crate::LedgerOutcome::Settled,
                amount_micros: 9_000,
                burned_micros: 84,
                released_micros: 8_916,
                reason: None,
            }),
        },
    ]
}

/// The budget of the research workflow on [`ACCOUNT`].
pub fn budget() -> crate::Budget {
    crate::Budget {
        account: ACCOUNT.to_owned(),
        reserved_micros: 9_000,
        attempt_micros: BTreeMap::from([
            ("answer".to_owned(), 1_500),
            ("generate_questions".to_owned(), 1_500),
        ]),
    }
}

/// One command of every ledger command variant, on [`ACCOUNT`].
pub fn credits_commands() -> Vec<crate::CreditsCommand> {
    let command = |n: u32, body| crate::CreditsCommand {
        command_id: format!("00000000-0000-4000-9000-{n:012}"),
        account: ACCOUNT.to_owned(),
        issued_at: EPOCH_2026_MICROS + i64::from(n),
        actor: Some("operator".to_owned()),
        body,
        schema_version: crate::CREDITS_SCHEMA_VERSION,
    };
    vec![
        command(
            1,
            crate::CreditsCommandBody::IssueCredits(crate::IssueCredits {
                amount_micros: 1_000_000,
                kind: crate::CreditKind::Capacity,
                reason: "served 1M tokens of model capacity".to_owned(),
            }),
        ),
        command(
            2,
            crate::CreditsCommandBody::ReserveCredits(crate::ReserveCredits {
                workflow_id: WORKFLOW_ID.to_owned(),
                amount_micros: 9_000,
                reply_topic: INBOX_TOPIC.to_owned(),
            }),
        ),
        command(
            3,
            crate::CreditsCommandBody::SettleReservation(crate::SettleReservation {
                workflow_id: WORKFLOW_ID.to_owned(),
                burned_micros: 84,
                reply_topic: INBOX_TOPIC.to_owned(),
            }),
        ),
    ]
}

/// One ledger event of every variant, as one account's consecutive events.
pub fn credits_events() -> Vec<crate::CreditsEvent> {
    use crate::CreditsEventBody as B;
    let wf = WORKFLOW_ID.to_owned();
    let steps = [
        (
            B::CreditsIssued(crate::CreditsIssued {
                amount_micros: 1_000_000,
                kind: crate::CreditKind::Grant,
                reason: "welcome grant".to_owned(),
            }),
            (1_000_000, 1_000_000, 0, 0),
        ),
        (
            B::ReservationRefused(crate::ReservationRefused {
                workflow_id: "wf-too-big".to_owned(),
                amount_micros: 5_000_000,
                reason: "5000000 µcredits asked, 1000000 available".to_owned(),
            }),
            (1_000_000, 1_000_000, 0, 0),
        ),
        (
            B::CreditsReserved(crate::CreditsReserved {
                workflow_id: wf.clone(),
                amount_micros: 9_000,
            }),
            (1_000_000, 991_000, 9_000, 0),
        ),
        (
            B::CreditsBurned(crate::CreditsBurned {
                workflow_id: wf.clone(),
                amount_micros: 84,
            }),
            (1_000_000, 991_000, 8_916, 84),
        ),
        (
            B::ReservationReleased(crate::ReservationReleased {
                workflow_id: wf,
                amount_micros: 8_916,
            }),
            (1_000_000, 999_916, 0, 84),
        ),
    ];
    steps
        .into_iter()
        .zip(0i64..)
        .map(
            |((body, (issued, balance, reserved, burned)), i)| crate::CreditsEvent {
                event_id: format!("00000000-0000-5000-9000-{i:012}"),
                account: ACCOUNT.to_owned(),
                sequence: i + 1,
                occurred_at: EPOCH_2026_MICROS + i,
                causation: crate::LedgerCausation {
                    command_id: format!("00000000-0000-4000-9000-{i:012}"),
                    topic: "triad.credits-inbox".to_owned(),
                    partition: 2,
                    offset: i,
                },
                body,
                totals: crate::AccountTotals {
                    issued_micros: issued,
                    balance_micros: balance,
                    reserved_micros: reserved,
                    burned_micros: burned,
                },
                previous_sha256: if i == 0 {
                    crate::GENESIS_SHA256.to_owned()
                } else {
                    format!("{:02x}", i).repeat(32)
                },
                schema_version: crate::CREDITS_SCHEMA_VERSION,
            },
        )
        .collect()
}

/// A router decision with one failed call and a fallback.
pub fn routing_decision() -> RoutingDecision {
    RoutingDecision {
        model_id: "triad-local".to_owned(),
        score: 0.75,
        reason: "fallback after aetherai-v1 failed".to_owned(),
        alternatives: vec!["aetherai-v1".to_owned()],
        calls: vec![
            ModelCall {
                model_id: "aetherai-v1".to_owned(),
                ok: false,
                error: Some("HTTP 503: overloaded".to_owned()),
                input_tokens: 0,
                output_tokens: 0,
                cost_micros: 0,
                latency_ms: 40,
            },
            ModelCall {
                model_id: "triad-local".to_owned(),
                ok: true,
                error: None,
                input_tokens: 12,
                output_tokens: 7,
                cost_micros: 0,
                latency_ms: 3,
            },
        ],
        auction: None,
    }
}

/// The auction of an attempt that asked for one: a winner, a rival, a late and a malformed
/// bid.
pub fn auction() -> crate::Auction {
    let bid = |model: &str, price: Option<i64>, status: &str, reason: &str| crate::AuctionBid {
        model_id: model.to_owned(),
        price_micros: price,
        latency_ms: price.map(|_| 120),
        confidence: price.map(|_| 0.9),
        standing: 1.0,
        status: status.to_owned(),
        reason: reason.to_owned(),
    };
    crate::Auction {
        winner: Some("triad-local".to_owned()),
        reason: "lowest effective price among 2 qualifying bids".to_owned(),
        bids: vec![
            bid(
                "triad-local",
                Some(10),
                "WON",
                "effective price 10.0 (price / standing 1.00)",
            ),
            bid(
                "aetherai-v1",
                Some(90),
                "ACCEPTED",
                "effective price 90.0 (price / standing 1.00)",
            ),
            bid("grok-4", None, "LATE", "no bid before the deadline"),
            bid("kimi-k2", Some(-5), "MALFORMED", "negative price -5"),
        ],
    }
}

/// A task request for the first task of the research workflow.
pub fn task_request() -> TaskRequest {
    let wf = research_workflow();
    let task = &wf.tasks[1];
    TaskRequest {
        workflow_id: WORKFLOW_ID.to_owned(),
        dispatched_event_id: "6f1c2b1e-0000-5000-8000-000000000004".to_owned(),
        issued_at: EPOCH_2026_MICROS,
        task_id: task.id.clone(),
        attempt: 1,
        attempt_id: format!("{WORKFLOW_ID}/{}#1", task.id),
        zone: "US-EAST".to_owned(),
        allowed_zones: vec!["US-EAST".to_owned()],
        prompt: task.prompt.clone(),
        inputs: BTreeMap::from([(
            "generate_questions".to_owned(),
            ByteBuf::from(b"1. Who holds the keys?".to_vec()),
        )]),
        input_refs: BTreeMap::from([("measure".to_owned(), blob_ref())]),
        model_hint: None,
        specialties: vec!["reasoning".to_owned()],
        max_tokens: task.max_tokens,
        timeout_ms: task.timeout_ms,
        auction: true,
        budget_micros: Some(1_500),
        schema_version: crate::TASK_REQUEST_SCHEMA_VERSION,
    }
}

/// A claim-check reference to a 300 KiB output.
pub fn blob_ref() -> BlobRef {
    BlobRef {
        sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_owned(),
        size: 300 * 1024,
        uri:
            "postgres:triad_blobs/9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                .to_owned(),
    }
}

pub fn control_record() -> ControlRecord {
    ControlRecord {
        workflow_id: WORKFLOW_ID.to_owned(),
        action: ControlAction::Cancel,
        reason: Some("user request".to_owned()),
        event_id: "6f1c2b1e-0000-5000-8000-000000000009".to_owned(),
        issued_at: EPOCH_2026_MICROS,
        schema_version: 1,
    }
}

/// One status record of every body variant.
pub fn executor_statuses() -> Vec<ExecutorStatus> {
    let status = |body| ExecutorStatus {
        zone: "US-EAST".to_owned(),
        executor_id: "US-EAST-0".to_owned(),
        occurred_at: EPOCH_2026_MICROS,
        body,
        schema_version: 1,
    };
    vec![
        status(StatusBody::Heartbeat(Heartbeat {
            in_flight: 3,
            capacity: 256,
            models: vec!["triad-local".to_owned()],
        })),
        status(StatusBody::BreakerTransition(BreakerTransition {
            model_id: "aetherai-v1".to_owned(),
            from_state: BreakerState::Closed,
            to_state: BreakerState::Open,
            reason: "3 failures within 60 s".to_owned(),
        })),
        status(StatusBody::AdapterInstall(AdapterInstall {
            model_id: "triad-local".to_owned(),
            version: 2,
            component_sha256: SHA256_OF_TEST.to_owned(),
            installed: false,
            reason: Some("the component does not hash to its registration".to_owned()),
        })),
        status(StatusBody::HealthTransition(crate::HealthTransition {
            model_id: "aetherai-v1".to_owned(),
            healthy: false,
            reason: "GET /v1/models: HTTP 503".to_owned(),
            probes: 2,
        })),
    ]
}

const SHA256_OF_TEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A registration carrying its component, and one naming a path.
pub fn model_registrations() -> Vec<ModelRegistration> {
    vec![
        ModelRegistration {
            model_id: "triad-local".to_owned(),
            version: 2,
            component_sha256: SHA256_OF_TEST.to_owned(),
            component_size: 4,
            component: Some(b"test".to_vec()),
            component_path: None,
            registered_at: EPOCH_2026_MICROS,
            remote: None,
            schema_version: 1,
        },
        ModelRegistration {
            model_id: "triad-local".to_owned(),
            version: 3,
            component_sha256: SHA256_OF_TEST.to_owned(),
            component_size: 4,
            component: None,
            component_path: Some("/srv/triad/components/local-v3.wasm".to_owned()),
            registered_at: EPOCH_2026_MICROS,
            remote: None,
            schema_version: 1,
        },
        ModelRegistration {
            model_id: "vllm-llama-east".to_owned(),
            version: 1,
            component_sha256: String::new(),
            component_size: 0,
            component: None,
            component_path: None,
            registered_at: EPOCH_2026_MICROS,
            remote: Some(RemoteModel {
                kind: RemoteKind::Openai,
                base_url: "http://vllm.us-east.internal:8000".to_owned(),
                model: "meta-llama/Llama-3.1-8B-Instruct".to_owned(),
                api_key_env: Some("VLLM_EAST_KEY".to_owned()),
                zones: vec!["US-EAST".to_owned()],
                specialties: vec!["summarization".to_owned(), "code".to_owned()],
                input_micros_per_1k: 40,
                output_micros_per_1k: 120,
                latency_p50_ms: 180,
                latency_p95_ms: 450,
                latency_p99_ms: 900,
                max_context: 131_072,
                timeout_ms: 30_000,
                bid_confidence: Some(0.8),
                heartbeat_every_ms: 5_000,
                registered_by: "operator".to_owned(),
            }),
            schema_version: crate::MODEL_REGISTRATION_SCHEMA_VERSION,
        },
    ]
}

/// Heartbeats of a self-registered model.
pub fn model_heartbeats() -> Vec<ModelHeartbeat> {
    vec![ModelHeartbeat {
        model_id: "vllm-llama-east".to_owned(),
        version: 1,
        sender: "vllm-east-1".to_owned(),
        sent_at: EPOCH_2026_MICROS,
        schema_version: 1,
    }]
}

/// One snapshot record of every body variant.
pub fn workflow_snapshots() -> Vec<WorkflowSnapshot> {
    let record = |epoch, body| WorkflowSnapshot {
        partition: 2,
        epoch,
        written_at: EPOCH_2026_MICROS,
        body,
        schema_version: 1,
    };
    vec![
        record(
            -1,
            SnapshotBody::EpochMarker(EpochMarker {
                instance: "triad-processor-0".to_owned(),
            }),
        ),
        record(
            41,
            SnapshotBody::SnapshotState(SnapshotState {
                workflow_id: "wf-research-1".to_owned(),
                sequence: 7,
                state_format: "triad.workflow-state/json-v1".to_owned(),
                state: br#"{"workflow_id":"wf-research-1"}"#.to_vec(),
            }),
        ),
        record(
            41,
            SnapshotBody::SnapshotCheckpoint(SnapshotCheckpoint {
                event_offset: 1200,
                last_input: 530,
            }),
        ),
    ]
}

/// One event of every body variant, with consecutive sequence numbers.
pub fn workflow_events() -> Vec<WorkflowEvent> {
    let wf = research_workflow();
    let bodies = vec![
        EventBody::WorkflowAccepted(WorkflowAccepted {
            name: wf.name,
            default_zones: wf.default_zones,
            tasks: wf.tasks,
            labels: wf.labels.clone(),
            policy_version: Some("88".repeat(32)),
            budget: None,
            registry_position: Some(3),
            tenant: Some("acme".to_owned()),
        }),
        EventBody::WorkflowRejected(WorkflowRejected {
            reason: "unknown zone MARS".to_owned(),
            field: Some("tasks[0].zones".to_owned()),
            registry_position: Some(3),
            tenant: None,
        }),
        EventBody::TaskScheduled(TaskScheduled {
            task_id: "generate_questions".to_owned(),
            attempt: 1,
        }),
        EventBody::TaskDispatched(TaskDispatched {
            task_id: "generate_questions".to_owned(),
            attempt: 1,
            attempt_id: "generate_questions#1".to_owned(),
            zone: "US-EAST".to_owned(),
            model_id: "triad-local".to_owned(),
        }),
        EventBody::TaskCompleted(TaskCompleted {
            task_id: "generate_questions".to_owned(),
            attempt: 1,
            attempt_id: "generate_questions#1".to_owned(),
            model_id: "triad-local".to_owned(),
            executor_zone: "US-EAST".to_owned(),
            output: Vec::new(),
            output_ref: Some(blob_ref()),
            input_tokens: 12,
            output_tokens: 7,
            cost_micros: 42,
            latency_ms: 3,
            execution: Some(Box::new(execution_record())),
        }),
        EventBody::TaskFailed(TaskFailed {
            task_id: "answer".to_owned(),
            attempt: 1,
            attempt_id: "answer#1".to_owned(),
            error: "model timed out".to_owned(),
            retryable: true,
            unavailable_zone: None,
        }),
        EventBody::TaskSkipped(TaskSkipped {
            task_id: "answer".to_owned(),
            reason: "dependency generate_questions failed".to_owned(),
        }),
        EventBody::WorkflowCompleted(WorkflowCompleted {
            outputs: BTreeMap::from([("answer".to_owned(), ByteBuf::from(b"42".to_vec()))]),
            output_refs: BTreeMap::from([("measure".to_owned(), blob_ref())]),
            total_cost_micros: 84,
            models_used: vec!["triad-local".to_owned()],
        }),
        EventBody::WorkflowFailed(WorkflowFailed {
            reason: "task answer failed".to_owned(),
            failed_task: Some("answer".to_owned()),
        }),
        EventBody::WorkflowCancelled(WorkflowCancelled { reason: None }),
        EventBody::TaskRouted(TaskRouted {
            task_id: "generate_questions".to_owned(),
            attempt: 1,
            attempt_id: "generate_questions#1".to_owned(),
            executor_zone: "US-EAST".to_owned(),
            decision: routing_decision(),
        }),
        EventBody::TaskResultDiscarded(TaskResultDiscarded {
            task_id: "generate_questions".to_owned(),
            attempt_id: "generate_questions#1".to_owned(),
            model_id: "triad-local".to_owned(),
            cost_micros: 42,
            reason: "duplicate result of a completed attempt".to_owned(),
        }),
        EventBody::BidPlaced(crate::BidPlaced {
            task_id: "generate_questions".to_owned(),
            attempt: 1,
            attempt_id: "generate_questions#1".to_owned(),
            bid: auction().bids[0].clone(),
        }),
        EventBody::AuctionClosed(crate::AuctionClosed {
            task_id: "generate_questions".to_owned(),
            attempt: 1,
            attempt_id: "generate_questions#1".to_owned(),
            winner: Some("triad-local".to_owned()),
            price_micros: Some(10),
            bids: 4,
            reason: "lowest effective price among 2 qualifying bids".to_owned(),
        }),
        EventBody::BudgetRequested(crate::BudgetRequested {
            budget: budget(),
            submission: WorkflowAccepted {
                name: "research".to_owned(),
                default_zones: vec!["US-EAST".to_owned()],
                tasks: research_workflow().tasks,
                labels: wf.labels,
                policy_version: Some("88".repeat(32)),
                budget: Some(budget()),
                registry_position: None,
                tenant: Some("acme".to_owned()),
            },
        }),
        EventBody::BudgetSettled(crate::BudgetSettled {
            account: ACCOUNT.to_owned(),
            burned_micros: 84,
            released_micros: 8_916,
        }),
    ];
    bodies
        .into_iter()
        .zip(0u32..)
        .map(|(body, index)| {
            let causation = Causation {
                command_id: Some(command_meta(1).command_id),
                topic: INBOX_TOPIC.to_owned(),
                partition: 0,
                offset: 0,
            };
            WorkflowEvent {
                meta: EventMetadata {
                    event_id: derive_event_id(&causation, index),
                    event_type: body.type_name().to_owned(),
                    occurred_at: EPOCH_2026_MICROS,
                    workflow_id: WORKFLOW_ID.to_owned(),
                    causation,
                    sequence: i64::from(index) + 1,
                    schema_version: crate::EVENT_SCHEMA_VERSION,
                },
                signed_root: body.is_terminal().then(signed_root),
                body,
            }
        })
        .collect()
}

/// A processor's signed root (hex placeholders of the right lengths).
pub fn signed_root() -> crate::SignedRoot {
    crate::SignedRoot {
        leaves: 12,
        root: "44".repeat(32),
        node_id: "processor".to_owned(),
        key_id: "fedcba9876543210fedcba9876543210".to_owned(),
        signature: "cd".repeat(64),
    }
}

/// The events of [`workflow_events`] a workflow that completes has: without the rejection
/// and the other terminal events.
pub fn completed_workflow_events() -> Vec<WorkflowEvent> {
    workflow_events()
        .into_iter()
        .filter(|e| {
            !matches!(
                e.body,
                EventBody::WorkflowRejected(_)
                    | EventBody::WorkflowFailed(_)
                    | EventBody::WorkflowCancelled(_)
            )
        })
        .collect()
}

/// A dead letter for a record that was not Avro at all.
pub fn dead_letter() -> DeadLetter {
    DeadLetter {
        source_topic: INBOX_TOPIC.to_owned(),
        source_partition: 2,
        source_offset: 17,
        consumer_group: "triad-processor".to_owned(),
        key: Some(WORKFLOW_ID.as_bytes().to_vec()),
        value: Some(b"{not avro}".to_vec()),
        headers: vec![DeadLetterHeader {
            key: "traceparent".to_owned(),
            value: Some(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec()),
        }],
        error_kind: "decode".to_owned(),
        error: "record starts with magic byte 0x7b, expected 0x00 (Confluent wire format)"
            .to_owned(),
        failed_at: EPOCH_2026_MICROS,
    }
}

/// One signed directory change of every kind (signatures are placeholders: the codec does not
/// check them; `triad-sovereignty` does).
pub fn key_directory_changes() -> Vec<KeyDirectoryChange> {
    let change = |sequence, change| KeyDirectoryChange {
        sequence,
        previous: "0".repeat(64),
        change,
        signer: "5e0f3c2a9b8d7e6f5e0f3c2a9b8d7e6f".to_owned(),
        signature: "ab".repeat(64),
        schema_version: 1,
    };
    vec![
        change(
            1,
            DirectoryBody::NodeEnrolled(NodeEnrolled {
                node_id: "US-EAST-0".to_owned(),
                zone: "US-EAST".to_owned(),
                public_key: format!("04{}", "11".repeat(64)),
            }),
        ),
        change(
            2,
            DirectoryBody::NodeKeyRetired(NodeKeyRetired {
                key_id: "0123456789abcdef0123456789abcdef".to_owned(),
            }),
        ),
        change(
            3,
            DirectoryBody::NodeKeyRevoked(NodeKeyRevoked {
                key_id: "0123456789abcdef0123456789abcdef".to_owned(),
            }),
        ),
        change(
            4,
            DirectoryBody::NodeSigningKeyEnrolled(NodeSigningKeyEnrolled {
                node_id: "executor-US-EAST".to_owned(),
                zone: "US-EAST".to_owned(),
                public_key: format!("04{}", "22".repeat(64)),
            }),
        ),
    ]
}

/// A workflow key wrapped to two nodes of two zones (bytes are placeholders of the right
/// lengths: the codec does not check them; `triad-sovereignty` does).
pub fn workflow_keys() -> Vec<WorkflowKey> {
    let wrapped = |zone: &str, node: &str| WrappedWorkflowKey {
        zone: zone.to_owned(),
        node_id: node.to_owned(),
        key_id: "0123456789abcdef0123456789abcdef".to_owned(),
        enc: ByteBuf::from(vec![4u8; 65]),
        wrapped: ByteBuf::from(vec![7u8; 48]),
    };
    vec![WorkflowKey {
        format: 1,
        workflow_id: "wf-0001".to_owned(),
        workflow_key_id: "5f2b8a4e-3c1d-4e6f-9a8b-7c6d5e4f3a2b".to_owned(),
        zones: vec!["US-EAST".to_owned(), "US-WEST".to_owned()],
        wrapped: vec![
            wrapped("US-EAST", "api-us-east"),
            wrapped("US-WEST", "executor-us-west"),
        ],
        created_by: "api-us-east".to_owned(),
        created_at: EPOCH_2026_MICROS,
        schema_version: 1,
    }]
}

/// A signed execution record (the signature is a placeholder: the codec does not check it;
/// `triad audit verify` does).
pub fn execution_record() -> ExecutionRecord {
    ExecutionRecord {
        node_id: "executor-US-EAST".to_owned(),
        key_id: "0123456789abcdef0123456789abcdef".to_owned(),
        executor_zone: "US-EAST".to_owned(),
        model_id: "triad-local".to_owned(),
        model_zones: vec!["US-EAST".to_owned()],
        prompt_sha256: "11".repeat(32),
        inputs_sha256: "22".repeat(32),
        output_sha256: "33".repeat(32),
        signature: "ab".repeat(64),
    }
}

/// One published policy version.
pub fn policy_versions() -> Vec<crate::PolicyVersion> {
    vec![crate::PolicyVersion {
        version: "88".repeat(32),
        document: r#"{"zones":["US-EAST"],"groups":{},"hosts":{},"models":{"triad-local":[]}}"#
            .to_owned(),
        node_id: "processor".to_owned(),
        key_id: "fedcba9876543210fedcba9876543210".to_owned(),
        signature: "cd".repeat(64),
        published_at: EPOCH_2026_MICROS,
        schema_version: 1,
    }]
}

/// The first two checkpoints of event-store partition 1.
pub fn custody_checkpoints() -> Vec<crate::CustodyCheckpoint> {
    let first = crate::CustodyCheckpoint {
        stream: "workflow-events".to_owned(),
        partition: 1,
        sequence: 1,
        from_offset: 0,
        to_offset: 18,
        records: 18,
        root: "55".repeat(32),
        previous: "00".repeat(32),
        node_id: "notary".to_owned(),
        key_id: "00112233445566778899aabbccddeeff".to_owned(),
        signature: "ef".repeat(64),
        written_at: EPOCH_2026_MICROS,
        schema_version: 1,
    };
    let second = crate::CustodyCheckpoint {
        sequence: 2,
        from_offset: 18,
        to_offset: 118,
        records: 100,
        root: "66".repeat(32),
        previous: "77".repeat(32),
        ..first.clone()
    };
    vec![first, second]
}

/// A refused open of an EU-only prompt by a US-EAST executor.
pub fn sovereignty_violations() -> Vec<SovereigntyViolation> {
    vec![SovereigntyViolation {
        occurred_at: EPOCH_2026_MICROS,
        node_id: "executor-US-EAST".to_owned(),
        zone: "US-EAST".to_owned(),
        workflow_id: "wf-0001".to_owned(),
        task_id: "draft".to_owned(),
        attempt_id: Some("draft#1".to_owned()),
        role: "prompt".to_owned(),
        envelope_zones: vec!["EU-WEST".to_owned()],
        reason: "the node's zone is not one of the envelope's".to_owned(),
        schema_version: 1,
    }]
}

/// An API key's creation (a rotation) and a revocation.
pub fn api_key_events() -> Vec<crate::ApiKeyEvent> {
    use crate::{AccessRole, ApiKeyBody, ApiKeyCreated, ApiKeyEvent, ApiKeyRevoked};
    vec![
        ApiKeyEvent {
            key_id: "0123456789abcdef".to_owned(),
            occurred_at: EPOCH_2026_MICROS,
            actor: "operator".to_owned(),
            body: ApiKeyBody::ApiKeyCreated(ApiKeyCreated {
                tenant: "acme".to_owned(),
                role: AccessRole::TenantAdmin,
                name: "ci pipeline".to_owned(),
                sha256: "ab".repeat(32),
                expires_at: Some(EPOCH_2026_MICROS + 86_400_000_000),
                replaces: Some("fedcba9876543210".to_owned()),
            }),
            schema_version: 1,
        },
        ApiKeyEvent {
            key_id: "fedcba9876543210".to_owned(),
            occurred_at: EPOCH_2026_MICROS,
            actor: "operator".to_owned(),
            body: ApiKeyBody::ApiKeyRevoked(ApiKeyRevoked {
                reason: "rotated".to_owned(),
            }),
            schema_version: 1,
        },
    ]
}
