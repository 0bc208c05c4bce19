//! `triad demo`: the whole flow on the embedded defaults. It starts the processor and an
//! executor per zone in this process, submits the seed's research workflow (fan-out to two
//! tasks, fan-in to a report) on the embedded model, prints each event as it is written to
//! the event store, and finishes with the outputs, cost and models used.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio_util::sync::CancellationToken;
use triad_codec::Codec;
use triad_config::Config;
use triad_domain::{EventBody, fixtures};
use triad_kafka::produce::Producer;
use triad_kafka::topics;
use triad_workflow::Workflow;

use crate::client;

/// The demo's workflow, also at `examples/research.json`.
pub const RESEARCH: &str = include_str!("../../../examples/research.json");

pub async fn run(config: &Config, codec: Arc<Codec>, start_workers: bool) -> Result<()> {
    println!("TRIAD demo — the research workflow on the embedded model");
    // With its own workers the demo runs in a namespace of its own (topics and consumer
    // groups per run): a run never inherits group state or queued work from an earlier one
    // on a long-lived broker (ADR 0007 §3).
    // Sealing, too, is the demo's own: an operator key made for this run signs its key
    // directory (in its own topics) and enrols the nodes below.
    let operator = triad_sovereignty::signing::SoftwareSigner::generate();
    let mut own_sealing = false;
    let config = if start_workers {
        let run = uuid::Uuid::new_v4().simple().to_string();
        let run = run.get(..8).unwrap_or(&run);
        let mut own = config.clone();
        own.kafka.topic_prefix = format!("{}demo-{run}.", config.kafka.topic_prefix);
        own.kafka.group_prefix = format!("{}-demo-{run}", config.kafka.group_prefix);
        if !own.sovereignty.seal {
            own.sovereignty.seal = true;
            own.sovereignty.operator_public_key = Some(triad_sovereignty::public_hex(
                triad_sovereignty::signing::Signer::public(&operator),
            ));
            own.sovereignty.zone = own
                .sovereignty
                .zone
                .or_else(|| own.policy.zones.first().cloned());
            own.sovereignty.node_id = None;
            own.sovereignty.tpm_tcti = None;
            own_sealing = true;
        }
        own
    } else {
        config.clone()
    };
    let config = &config;
    println!("1. topics on {}", config.kafka.bootstrap_servers);
    let specs = topics::catalogue(&config.kafka, &config.registry.topic, &config.policy.zones);
    for step in topics::ensure(&config.kafka, &specs, false).await? {
        println!("   {step}");
    }
    println!("   inbox: {}", topics::Names::new(&config.kafka).inbox);
    if own_sealing {
        let enrolled = enrol_demo_nodes(config, &codec, &operator).await?;
        println!(
            "   sealing on: an operator key made for this run enrolled {} in {}",
            enrolled.join(", "),
            topics::Names::new(&config.kafka).key_directory
        );
    }
    let cancel = CancellationToken::new();
    let workers = if start_workers {
        println!(
            "2. workers: the processor and executors for {} in this process",
            config.policy.zones.join(", ")
        );
        Some(crate::workers::spawn_all(config, codec.clone(), &cancel).await?)
    } else {
        println!("2. workers: using the running `triad process` / `triad execute` instances");
        None
    };
    let workflow = Workflow::from_json(RESEARCH).context("examples/research.json")?;
    let result = match edge_kernel(config, &codec, &cancel).await {
        Ok(kernel) => run_workflow(config, &codec, &workflow, kernel.as_deref()).await,
        Err(e) => Err(e),
    };
    if let Some(set) = workers {
        cancel.cancel();
        crate::workers::join(set).await?;
    }
    result
}

/// Enrols the demo's nodes — the submitting edge, one executor per zone, the processor and
/// the notary, keys in the file store — signed by `operator`; returns their names.
async fn enrol_demo_nodes(
    config: &Config,
    codec: &Codec,
    operator: &triad_sovereignty::signing::SoftwareSigner,
) -> Result<Vec<String>> {
    let store = triad_sovereignty::FileKeyStore::new(&config.sovereignty.key_dir);
    // (node, zone, opens payloads, signs): executors open and sign execution records, the
    // edge opens reports, the processor (roots) and the notary (checkpoints) only sign —
    // they must open nothing.
    let mut nodes: Vec<(String, String, bool, bool)> = config
        .policy
        .zones
        .iter()
        .map(|z| (format!("executor-{z}"), z.clone(), true, true))
        .collect();
    if let Some(z) = &config.sovereignty.zone {
        nodes.insert(0, (format!("edge-{z}"), z.clone(), true, false));
        nodes.push(("processor".to_owned(), z.clone(), false, true));
        nodes.push(("notary".to_owned(), z.clone(), false, true));
    }
    for (node, zone, opens, signs) in &nodes {
        if *opens {
            let key = store.load_or_create(node)?;
            let change = triad_sovereignty::DirectoryChange::Enrolled {
                node_id: node.clone(),
                zone: zone.clone(),
                public_key: triad_sovereignty::public_hex(triad_sovereignty::NodeKey::public(&key)),
            };
            crate::keys::append_signed(config, codec, operator, change).await?;
        }
        if *signs {
            let signer = store.load_or_create_signer(node)?;
            let change = triad_sovereignty::DirectoryChange::SigningKeyEnrolled {
                node_id: node.clone(),
                zone: zone.clone(),
                public_key: triad_sovereignty::public_hex(
                    triad_sovereignty::signing::Signer::public(&signer),
                ),
            };
            crate::keys::append_signed(config, codec, operator, change).await?;
        }
    }
    Ok(nodes.into_iter().map(|(n, ..)| n).collect())
}

/// The submitting node's kernel when payloads are sealed: node `edge-<sovereignty.zone>`.
/// It needs no enrolment to seal; reading sealed outputs needs it enrolled there.
async fn edge_kernel(
    config: &Config,
    codec: &Arc<Codec>,
    cancel: &CancellationToken,
) -> Result<Option<Arc<triad_kernel::NodeKernel>>> {
    let zone = config.sovereignty.zone.clone().unwrap_or_default();
    crate::workers::kernel(config, Arc::clone(codec), "edge", &zone, false, cancel).await
}

async fn run_workflow(
    config: &Config,
    codec: &Codec,
    workflow: &Workflow,
    kernel: Option<&triad_kernel::NodeKernel>,
) -> Result<()> {
    let producer = Producer::new(&config.kafka)?;
    let started = Instant::now();
    let groups: Vec<(String, Vec<String>)> = config
        .policy
        .groups
        .iter()
        .map(|(g, zones)| (g.clone(), zones.clone()))
        .collect();
    let submitted = client::submit(
        &config.kafka,
        codec,
        &producer,
        workflow.to_command(),
        None,
        kernel.map(|k| (k, groups.as_slice())),
    )
    .await?;
    println!(
        "3. submitted {} ({} tasks, zones {:?}) to partition {}",
        submitted.workflow_id,
        workflow.tasks.len(),
        workflow.zones,
        submitted.partition
    );
    println!("4. events, as the event store records them:");
    let events = client::follow(
        &config.kafka,
        codec,
        &submitted,
        Duration::from_secs(120),
        |e| {
            println!("   {}", client::describe(e));
        },
    )
    .await?;
    let elapsed = started.elapsed();
    match events.last().map(|e| &e.body) {
        Some(EventBody::WorkflowCompleted(done)) => {
            println!("5. completed in {} ms:", elapsed.as_millis());
            for (task, output) in &done.outputs {
                println!("   output of {task}:");
                let text = client::output_text(kernel, &submitted.workflow_id, task, output).await;
                for line in text.lines() {
                    println!("     {line}");
                }
            }
            for (task, r) in &done.output_refs {
                println!("   output of {task}: {}", client::by_reference(r));
            }
            println!(
                "   cost {} µcredits; models used: {}",
                done.total_cost_micros,
                done.models_used.join(", ")
            );
            let sealed = events
                .iter()
                .filter_map(|e| match &e.body {
                    EventBody::TaskCompleted(c) => Some(c.output.as_slice()),
                    _ => None,
                })
                .collect::<Vec<_>>();
            let zones = sealed
                .iter()
                .filter_map(|o| triad_sovereignty::Envelope::from_wire(o).and_then(Result::ok))
                .map(|e| e.zones.join(", "))
                .next();
            if let Some(zones) = zones {
                println!(
                    "   sealed: {} of {} outputs (and every prompt) travelled in envelopes only {zones} can open; shown here by {}",
                    sealed.iter().filter(|o| triad_domain::is_sealed(o)).count(),
                    sealed.len(),
                    kernel.map_or("nobody", |k| k.kernel().node_id())
                );
            }
            let chain = crate::audit::chain(config, codec, &submitted.workflow_id).await?;
            let root = triad_sovereignty::hex(&chain.root());
            println!(
                "6. chain of custody, recomputed from the event store: {} events, Merkle root {root}",
                chain.leaves.len()
            );
            println!(
                "   (`triad audit prove {} <event id>` proves any one of them)",
                submitted.workflow_id
            );
            if let Some(k) = kernel {
                let verdict =
                    triad_kernel::audit::check(&chain.leaves, &k.kernel().directory(), &groups);
                if !verdict.problems.is_empty() {
                    bail!("the audit failed: {}", verdict.problems.join("; "));
                }
                println!(
                    "   audit: all {} operations signed by enrolled executors, inside {} (`triad audit verify` replays it)",
                    verdict.operations,
                    verdict.zones.iter().cloned().collect::<Vec<_>>().join(", ")
                );
                if let Some((node, n)) = &verdict.root_signed_by {
                    println!("   the root of the {n} events before the end signed by {node}");
                }
            }
            println!("demo ok");
            Ok(())
        }
        Some(EventBody::WorkflowFailed(f)) => bail!("the workflow failed: {}", f.reason),
        Some(EventBody::WorkflowRejected(r)) => bail!("the workflow was rejected: {}", r.reason),
        _ => bail!("the workflow ended without completing"),
    }
}

/// Reads a workflow document: JSON, or YAML by extension (`.yaml`/`.yml`); `-` is stdin.
pub fn read_workflow(file: &Path) -> Result<Workflow> {
    let text = if file == Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading standard input")?
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let yaml = file.extension().is_some_and(|e| e == "yaml" || e == "yml");
    let parsed = if yaml {
        Workflow::from_yaml(&text).map_err(|e| anyhow::anyhow!("{e}"))
    } else {
        Workflow::from_json(&text).map_err(|e| anyhow::anyhow!("{e}"))
    };
    parsed.with_context(|| format!("{} is not a valid workflow document", file.display()))
}

/// `triad submit`: validates locally first (errors name the field), then submits and
/// follows the events unless told not to.
/// Reads a workflow document and validates it as the processor will, against the configured
/// policy and model catalogue; returns it with that policy (its `models` are the offers).
async fn read_valid_workflow(
    config: &Config,
    file: &Path,
) -> Result<(triad_workflow::Workflow, triad_workflow::aggregate::Policy)> {
    let workflow = read_workflow(file)?;
    let catalogue = crate::workers::catalogue(config).await?;
    let policy = triad_processor::policy_from(
        &config.policy,
        &config.credits,
        &crate::workers::offers(&catalogue),
    );
    let ctx = triad_workflow::Context {
        zones: &policy.zones,
        groups: &policy.groups,
        models: policy.models.as_deref(),
        limits: policy.limits,
    };
    if let Err(errors) = workflow.validate(&ctx) {
        bail!("{} is invalid:\n{errors}", file.display());
    }
    Ok((workflow, policy))
}

/// `triad estimate`: validates a workflow document and prints what it would cost on the
/// configured catalogue (docs/market.md), per task and in total; needs no running stack.
pub async fn estimate_file(config: &Config, file: &Path, json: bool) -> Result<()> {
    let (workflow, policy) = read_valid_workflow(config, file).await?;
    let offers = policy.models.clone().unwrap_or_default();
    let estimate = triad_market::estimate(
        &workflow,
        &offers,
        &policy.groups,
        triad_market::matching::shared().map(|c| c as &dyn triad_market::SpecialtyClassifier),
    );
    if json {
        println!("{}", serde_json::to_string_pretty(&estimate)?);
        return Ok(());
    }
    println!(
        "{:<20} {:>8} {:>8} {:>3}  {:<16} {:>12} {:>12}  reads as",
        "task", "prompt", "max out", "att", "model", "expected µc", "worst µc"
    );
    for t in &estimate.tasks {
        println!(
            "{:<20} {:>8} {:>8} {:>3}  {:<16} {:>12} {:>12}  {}",
            t.task,
            t.prompt_tokens,
            t.max_tokens,
            t.max_attempts,
            t.model.as_deref().unwrap_or("-"),
            t.expected_micros,
            t.worst_case_micros,
            t.inferred_specialty.as_deref().unwrap_or("-"),
        );
        if let Some(problem) = &t.problem {
            println!("  ! {problem}");
        }
    }
    println!(
        "total: expected {} µcredits, worst case {} µcredits (what a budget must cover)",
        estimate.expected_micros, estimate.worst_case_micros
    );
    if estimate.tasks.iter().any(|t| t.problem.is_some()) {
        bail!("some tasks have no eligible model");
    }
    Ok(())
}

pub async fn submit_file(
    config: &Config,
    codec: Arc<Codec>,
    file: &Path,
    key: Option<String>,
    wait: bool,
    timeout: u64,
) -> Result<()> {
    let (workflow, policy) = read_valid_workflow(config, file).await?;
    let producer = Producer::new(&config.kafka)?;
    let cancel = CancellationToken::new();
    let _stop_kernel = cancel.clone().drop_guard();
    let kernel = edge_kernel(config, &codec, &cancel).await?;
    let submitted = client::submit(
        &config.kafka,
        &codec,
        &producer,
        workflow.to_command(),
        key,
        kernel.as_deref().map(|k| (k, policy.groups.as_slice())),
    )
    .await?;
    println!(
        "submitted {} (partition {})",
        submitted.workflow_id, submitted.partition
    );
    if !wait {
        return Ok(());
    }
    let events = client::follow(
        &config.kafka,
        &codec,
        &submitted,
        Duration::from_secs(timeout),
        |e| println!("{}", client::describe(e)),
    )
    .await?;
    match events.last().map(|e| &e.body) {
        Some(EventBody::WorkflowCompleted(done)) => {
            for (task, output) in &done.outputs {
                let text =
                    client::output_text(kernel.as_deref(), &submitted.workflow_id, task, output)
                        .await;
                println!("output of {task}:\n{text}");
            }
            for (task, r) in &done.output_refs {
                println!("output of {task}: {}", client::by_reference(r));
            }
            Ok(())
        }
        _ => bail!("workflow {} did not complete", submitted.workflow_id),
    }
}

/// Publishes every fixture to prefixed copies of the spine topics and prints the topics.
pub async fn publish_fixtures(config: &Config, codec: Arc<Codec>, prefix: &str) -> Result<()> {
    if prefix.is_empty() {
        bail!("--topic-prefix must not be empty: fixtures never go into the live topics");
    }
    let inbox = format!("{prefix}{}", topics::WORKFLOW_INBOX);
    let events = format!("{prefix}{}", topics::WORKFLOW_EVENTS);
    let dlq = format!("{prefix}{}", topics::DLQ);
    let tasks = format!("{prefix}{}US-EAST", topics::TASKS_PREFIX);
    let control = format!("{prefix}{}", topics::CONTROL);
    let status = format!("{prefix}{}", topics::EXECUTOR_STATUS);
    let credits_inbox = format!("{prefix}{}", topics::CREDITS_INBOX);
    let credits = format!("{prefix}{}", topics::CREDITS);
    let all = [
        &inbox,
        &events,
        &dlq,
        &tasks,
        &control,
        &status,
        &credits_inbox,
        &credits,
    ];
    let specs: Vec<topics::TopicSpec> = all
        .iter()
        .map(|name| topics::TopicSpec {
            name: (*name).clone(),
            partitions: 1,
            retention: topics::Retention::Bounded { ms: 86_400_000 },
            purpose: "fixtures",
        })
        .collect();
    topics::ensure(&config.kafka, &specs, false).await?;
    let producer = Producer::new(&config.kafka)?;
    for r in fixtures::inbox_records() {
        producer
            .send_record(&codec, &inbox, None, &r.meta.workflow_id, &r)
            .await?;
    }
    for e in fixtures::workflow_events() {
        producer
            .send_record(&codec, &events, None, &e.meta.workflow_id, &e)
            .await?;
    }
    let request = fixtures::task_request();
    producer
        .send_record(&codec, &tasks, None, &request.workflow_id, &request)
        .await?;
    let c = fixtures::control_record();
    producer
        .send_record(&codec, &control, None, &c.workflow_id, &c)
        .await?;
    for s in fixtures::executor_statuses() {
        producer
            .send_record(&codec, &status, None, &s.executor_id, &s)
            .await?;
    }
    for c in fixtures::credits_commands() {
        producer
            .send_record(&codec, &credits_inbox, None, &c.account, &c)
            .await?;
    }
    for e in fixtures::credits_events() {
        producer
            .send_record(&codec, &credits, None, &e.account, &e)
            .await?;
    }
    triad_kafka::dlq::DeadLetterWriter::new(producer, codec, &dlq)
        .write_letter(&fixtures::dead_letter())
        .await?;
    for topic in all {
        println!("{topic}");
    }
    Ok(())
}
