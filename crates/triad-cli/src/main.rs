//! `triad`: the one binary. Each subcommand is a thin shell over a library crate.

mod access;
mod audit;
mod bench;
mod bench_fanout;
mod bench_flood;
mod bench_flow;
mod bench_projection;
mod bench_routing;
mod bench_seal;
mod bench_visibility;
mod bench_wasm;
mod client;
mod credits;
mod demo;
mod envelope;
mod keys;
mod models;
mod workers;

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use triad_codec::{Codec, CodecOptions};
use triad_config::{Config, LogFormat, Sources};

#[derive(Debug, Parser)]
#[command(
    name = "triad",
    version,
    about = "TRIAD — a sovereign AI execution fabric"
)]
struct Cli {
    /// Configuration file (default: ./triad.toml when present, or $TRIAD_CONFIG).
    #[arg(long, global = true)]
    config: Option<std::path::PathBuf>,
    /// Override a configuration key, e.g. --set kafka.bootstrap_servers=host:9092 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    overrides: Vec<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the development schema registry (Confluent REST API, state in a compacted topic).
    Registry,
    /// Run the workflow processor (inbox -> aggregate -> event store, task requests).
    Process {
        /// Distinguishes processors sharing the group (static membership id).
        #[arg(long, default_value_t = 0)]
        instance: u32,
    },
    /// Run the credits ledger (credits-inbox -> triad.credits, answers to the workflow
    /// inbox): one writer per account (docs/credits.md).
    Ledger {
        /// Distinguishes ledger processors sharing the group (static membership id).
        #[arg(long, default_value_t = 0)]
        instance: u32,
    },
    /// API keys (docs/access.md): created, rotated and revoked as events on
    /// `triad.api-keys`; a new key is printed once.
    #[command(name = "api-keys")]
    ApiKeys {
        #[command(subcommand)]
        command: ApiKeysCommand,
    },
    /// TRIAD credits: issue, show an account, the supply (docs/credits.md).
    Credits {
        #[command(subcommand)]
        command: CreditsCommand,
    },
    /// Run the notary: signed, chained checkpoints over every record of the event store
    /// (one per installation; needs sovereignty.seal and its signing key enrolled).
    Notary,
    /// Run the executor of one zone (task requests -> models -> results).
    Execute {
        /// The zone this executor serves (one of policy.zones).
        #[arg(long)]
        zone: String,
        /// Distinguishes executors of the same zone (static group membership).
        #[arg(long, default_value_t = 0)]
        instance: u32,
    },
    /// Run the projection worker: the event store into the PostgreSQL read models
    /// (`projection.schema`), exactly once.
    Project,
    /// Rebuild a projection from offset 0 into a shadow schema while the live one keeps
    /// serving, then swap it in atomically.
    Replay {
        /// The projection to rebuild (`workflows`).
        #[arg(long)]
        projection: String,
        /// Refuse to swap unless every rebuilt table hashes identically to the live one.
        #[arg(long)]
        verify: bool,
    },
    /// Serve the REST/SSE API on `api.listen` (submit, cancel, read, stream, health).
    Api,
    /// Apply the PostgreSQL migrations in `migrations/` (workers also do it at start-up).
    Migrate,
    /// Run the processor, the credits ledger, one executor per zone and the projection
    /// worker in this one process (development).
    Dev,
    /// Submit a workflow document (JSON or YAML) and follow its events until it finishes.
    Submit {
        /// The workflow document; `-` reads standard input.
        file: std::path::PathBuf,
        /// Idempotency key (default: derived from the new workflow id).
        #[arg(long)]
        key: Option<String>,
        /// Return after submitting instead of following the events.
        #[arg(long)]
        no_wait: bool,
        /// How long to follow, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// Estimate what a workflow document (JSON or YAML) would cost on the configured models:
    /// expected and worst case, per task (needs no running stack).
    Estimate {
        /// The workflow document; `-` reads standard input.
        file: std::path::PathBuf,
        /// Print the estimate as JSON (the shape of `POST /v1/estimate`).
        #[arg(long)]
        json: bool,
    },
    /// Manage the topic catalogue.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// The end-to-end demo: start the workers in this process, run the seed's research
    /// workflow on the embedded model and print its events, outputs, cost and models.
    Demo {
        /// Use workers that are already running instead of starting them here.
        #[arg(long)]
        external_workers: bool,
    },
    /// Manage the model registry (`triad.models`).
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Zone-bound envelopes on files (docs/sovereignty_kernel.md): for interoperability
    /// checks and for inspecting the format.
    #[command(hide = true)]
    Envelope {
        /// Holds directory.json, record.json, envelope.json and keys/.
        #[arg(long)]
        dir: std::path::PathBuf,
        #[command(subcommand)]
        command: EnvelopeCommand,
    },
    /// Node keys and the operator-signed key directory (`triad.key-directory`).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// The chain of custody, recomputed from the event store in Kafka (docs/audit.md).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Inspect and redrive dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Publish one record of every command, event and dead-letter variant to
    /// `<prefix>triad.workflow-inbox`, `<prefix>triad.workflow-events` and `<prefix>triad.dlq`
    /// (for compatibility checks with third-party decoders; never into the live topics).
    #[command(hide = true)]
    PublishFixtures {
        #[arg(long)]
        topic_prefix: String,
    },
    /// Print the effective configuration (every layer applied) as TOML.
    Config,
    /// Measure CPU per event of Avro encode + produce against raw produce, or with --flow the
    /// orchestration overhead per task against raw broker hops (see docs/benchmarks.md).
    Bench(bench::Args),
}

#[derive(Debug, Subcommand)]
enum TopicsCommand {
    /// Create every missing topic; refuse to change an existing topic's partition count.
    Ensure {
        /// Print the plan without changing anything.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ModelsCommand {
    /// Register a new component version of a `wasm` model: running executors switch new
    /// calls to it while calls in flight finish on the old one.
    Register {
        /// The model id (a `kind = "wasm"` entry of [models]).
        model: String,
        /// The component (`.wasm`, a `triad:adapter` component).
        component: std::path::PathBuf,
        /// Register the component's absolute path instead of its bytes (for components over
        /// 768 KiB; every executor must be able to read the path).
        #[arg(long)]
        by_path: bool,
        /// The version number (default: one above the latest registered).
        #[arg(long)]
        version: Option<i64>,
        /// Wait until this many executors installed or refused it, printing each answer.
        #[arg(long, default_value_t = 0)]
        wait_for: usize,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Register the remote models of a file (a `models.toml` bootstrap): `[models.<id>]`
    /// tables (TOML) or `{"models": {…}}` (JSON) of registration documents. Every document
    /// is checked against the policy first; nothing is written unless all pass.
    Add {
        file: std::path::PathBuf,
        /// Who registers (recorded on the registration).
        #[arg(long, default_value = "operator")]
        by: String,
        /// Wait until this many executors installed or refused each model.
        #[arg(long, default_value_t = 0)]
        wait_for: usize,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
    /// Deregister a remote model: executors stop serving it.
    Remove { id: String },
    /// The registered remote models.
    List,
    /// Send heartbeats for a registered model until stopped (a sidecar for a model that
    /// cannot send its own).
    Heartbeat {
        id: String,
        /// Milliseconds between heartbeats (the registration's heartbeat_every_ms).
        #[arg(long, default_value_t = 1000)]
        every_ms: u64,
        /// Stop after this many.
        #[arg(long)]
        count: Option<u64>,
        /// Who sends them (default: this host's name).
        #[arg(long)]
        sender: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ApiKeysCommand {
    /// Create a key for a tenant; prints it once.
    Create {
        #[arg(long)]
        tenant: String,
        /// member, tenant_admin or operator.
        #[arg(long, default_value = "member")]
        role: String,
        /// What the key is for.
        #[arg(long)]
        name: String,
        #[arg(long)]
        expires_in_days: Option<u32>,
    },
    /// Replace a key by a new one (same tenant, role and name) and revoke it.
    Rotate { key_id: String },
    /// Revoke a key: every API node refuses it as soon as it reads the event.
    Revoke {
        key_id: String,
        #[arg(long)]
        reason: String,
    },
    /// The keys (ids, tenants, roles, states; never secrets).
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create the operator's signing key (a file, mode 0600) and print its public key.
    OperatorInit {
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Print a node's public key, creating it in the key store (sovereignty.key_dir, or a TPM).
    NodeKey {
        #[arg(long)]
        node: String,
        /// Use the TPM this TCTI names (e.g. swtpm:host=127.0.0.1,port=2321).
        #[arg(long)]
        tpm: Option<String>,
    },
    /// Enrol a node's key in a zone (signed with the operator key).
    Enrol {
        #[arg(long)]
        node: String,
        #[arg(long)]
        zone: String,
        /// The node's public key (hex), as `triad keys node-key` prints it: envelopes sealed
        /// for the zone are wrapped to it. Leave it out for a node that must open nothing
        /// (the processor).
        #[arg(long, required_unless_present = "signing_key")]
        public_key: Option<String>,
        /// The node's signing key (hex), as `triad keys node-key` prints it, so the node's
        /// signatures (execution records, signed roots) verify.
        #[arg(long)]
        signing_key: Option<String>,
        #[arg(long)]
        operator_key: std::path::PathBuf,
    },
    /// Retire a key (rotation): nothing new is wrapped to it; it still opens what was.
    Retire {
        #[arg(long)]
        key_id: String,
        #[arg(long)]
        operator_key: std::path::PathBuf,
    },
    /// Revoke a key: nothing new is wrapped to it and nodes refuse to open with it.
    Revoke {
        #[arg(long)]
        key_id: String,
        #[arg(long)]
        operator_key: std::path::PathBuf,
    },
    /// Verify the whole directory against sovereignty.operator_public_key and list its keys.
    List,
    /// Crypto-shred a workflow: a tombstone for each of its workflow keys on
    /// `triad.workflow-keys`. Nodes drop the keys at once; compaction removes the records.
    Shred { workflow_id: String },
}

#[derive(Debug, Subcommand)]
enum CreditsCommand {
    /// Issue credits to an account for a contribution (an operator action).
    Issue {
        account: String,
        /// Credits (e.g. 12.5) or µcredits with a `u` suffix (e.g. 12500000u).
        #[arg(value_parser = credits::parse_micros)]
        amount: i64,
        /// What was contributed: grant, capacity, data or validation.
        #[arg(long, default_value = "grant", value_parser = parse_kind)]
        kind: triad_domain::CreditKind,
        /// Why, in words (kept on the ledger).
        #[arg(long)]
        reason: String,
        /// Return once sent instead of waiting for the ledger's event.
        #[arg(long)]
        no_wait: bool,
    },
    /// An account's balance, reservations and burns, and its entries.
    Show {
        account: String,
        #[arg(long)]
        json: bool,
    },
    /// Total supply: issued, burned (gone for good) and circulating.
    Supply {
        #[arg(long)]
        json: bool,
    },
    /// There is no transfer: credits are non-transferable. This says so.
    #[command(hide = true)]
    Transfer {
        #[arg(num_args = 0.., trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn parse_kind(s: &str) -> Result<triad_domain::CreditKind, String> {
    triad_domain::CreditKind::parse(s)
        .ok_or_else(|| format!("{s:?}: expected grant, capacity, data or validation"))
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Check the credits ledger from its topic alone: every account's sequence, chain of
    /// hashes and stated totals (issued = balance + reserved + burned, nothing negative).
    Ledger,
    /// Print each event's leaf hash and the workflow's Merkle root.
    Root { workflow_id: String },
    /// Print the inclusion proof of one event (JSON) for a third party to check.
    Prove {
        workflow_id: String,
        event_id: String,
    },
    /// Replay the workflow from the event store and check it: no event missing, a terminal
    /// event with the processor's signed root, every operation signed by an enrolled
    /// executor over the logged bytes and inside the task's zones, the notary's checkpoints
    /// over its records. Exits non-zero on any problem.
    Verify { workflow_id: String },
    /// Check the notary's checkpoints over every record of every event-store partition
    /// (finds a deleted workflow, a cut tail or an edit without knowing any workflow id).
    Checkpoints,
}

#[derive(Debug, Subcommand)]
enum EnvelopeCommand {
    /// Print a node's public key (hex SEC1), creating the key in keys/ if needed.
    Key {
        #[arg(long)]
        node: String,
    },
    /// Create a workflow key for --zones and seal a file into envelope.json.
    Seal {
        #[arg(long)]
        workflow: String,
        #[arg(long)]
        task: String,
        #[arg(long, value_parser = parse_role)]
        role: triad_sovereignty::Role,
        #[arg(long, default_value_t = 1)]
        attempt: u32,
        #[arg(long, value_delimiter = ',', required = true)]
        zones: Vec<String>,
        /// The file to seal.
        plaintext: std::path::PathBuf,
    },
    /// Open envelope.json as a node of a zone; the plaintext goes to standard output.
    Open {
        #[arg(long)]
        node: String,
        #[arg(long)]
        zone: String,
    },
}

fn parse_role(s: &str) -> Result<triad_sovereignty::Role, String> {
    match s {
        "prompt" => Ok(triad_sovereignty::Role::Prompt),
        "output" => Ok(triad_sovereignty::Role::Output),
        "context" => Ok(triad_sovereignty::Role::Context),
        other => Err(format!("{other:?}: expected prompt, output or context")),
    }
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// List the dead letters with their source and reason.
    List,
    /// Put dead letters back on their source topic, byte for byte.
    Redrive {
        /// DLQ offsets to redrive.
        #[arg(long = "offset", required_unless_present = "all")]
        offsets: Vec<i64>,
        /// Redrive every dead letter.
        #[arg(long, conflicts_with = "offsets")]
        all: bool,
    },
}

fn init_tracing(config: &Config, service: bool, quiet: bool) -> Result<()> {
    // The demo prints its own story; the in-process workers log only problems unless the
    // operator chose a filter.
    let directive = if quiet && config.log.filter == triad_config::LogConfig::default().filter {
        "warn"
    } else {
        config.log.filter.as_str()
    };
    let filter = tracing_subscriber::EnvFilter::try_new(directive).with_context(|| {
        format!(
            "configuration key log.filter: invalid filter {:?}",
            config.log.filter
        )
    })?;
    let json = match config.log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => service,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.compact().init();
    }
    Ok(())
}

fn codec(config: &Config) -> Result<Arc<Codec>> {
    Ok(Arc::new(Codec::new(&CodecOptions {
        registry_url: config.registry.url.clone(),
        max_allocation_bytes: config.codec.max_allocation_bytes,
    })?))
}

/// A token cancelled on SIGINT or SIGTERM, so services drain instead of dying mid-write.
fn shutdown_token() -> CancellationToken {
    let token = CancellationToken::new();
    let child = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("shutdown requested; draining");
        child.cancel();
    });
    token
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let config = Config::load(&Sources {
        file: cli.config.clone(),
        overrides: cli.overrides.clone(),
    })?;
    init_tracing(
        &config,
        matches!(
            cli.command,
            Command::Registry
                | Command::Process { .. }
                | Command::Ledger { .. }
                | Command::Notary
                | Command::Execute { .. }
                | Command::Dev
                | Command::Project
                | Command::Api
        ),
        matches!(cli.command, Command::Demo { .. } | Command::Bench(_)),
    )?;
    match cli.command {
        Command::Registry => {
            let listener = tokio::net::TcpListener::bind(config.registry.listen)
                .await
                .with_context(|| {
                    format!(
                        "configuration key registry.listen: cannot bind {}",
                        config.registry.listen
                    )
                })?;
            let options = triad_registry::server::ServeOptions {
                kafka: config.kafka.clone(),
                topic: config.registry.topic.clone(),
            };
            triad_registry::server::serve(&options, listener, shutdown_token()).await?;
        }
        Command::Process { instance } => {
            let catalogue = workers::catalogue(&config).await?;
            let options = workers::processor_options(&config, &catalogue, instance)?;
            triad_processor::run(&options, codec(&config)?, shutdown_token()).await?;
        }
        Command::Ledger { instance } => {
            let options = triad_processor::ledger::Options {
                kafka: config.kafka.clone(),
                instance,
            };
            triad_processor::ledger::run(&options, codec(&config)?, shutdown_token()).await?;
        }
        Command::ApiKeys { command } => {
            let codec = codec(&config)?;
            match command {
                ApiKeysCommand::Create {
                    tenant,
                    role,
                    name,
                    expires_in_days,
                } => {
                    access::create(&config, &codec, &tenant, &role, &name, expires_in_days).await?
                }
                ApiKeysCommand::Rotate { key_id } => {
                    access::rotate(&config, &codec, &key_id).await?
                }
                ApiKeysCommand::Revoke { key_id, reason } => {
                    access::revoke(&config, &codec, &key_id, &reason).await?;
                }
                ApiKeysCommand::List { tenant } => {
                    access::list(&config, &codec, tenant.as_deref()).await?;
                }
            }
        }
        Command::Credits { command } => match command {
            CreditsCommand::Issue {
                account,
                amount,
                kind,
                reason,
                no_wait,
            } => {
                credits::issue(
                    &config,
                    &*codec(&config)?,
                    &account,
                    amount,
                    kind,
                    &reason,
                    no_wait,
                )
                .await?;
            }
            CreditsCommand::Show { account, json } => {
                credits::show(&config, &*codec(&config)?, &account, json).await?;
            }
            CreditsCommand::Supply { json } => {
                credits::supply(&config, &*codec(&config)?, json).await?;
            }
            CreditsCommand::Transfer { .. } => credits::transfer()?,
        },
        Command::Notary => {
            let options = workers::notary_options(&config)?.context(
                "the notary signs checkpoints: set sovereignty.seal (and enrol node `notary`'s signing key)",
            )?;
            triad_kernel::notary::run(&options, codec(&config)?, shutdown_token()).await?;
        }
        Command::Execute { zone, instance } => {
            let catalogue = workers::catalogue(&config).await?;
            let mut options = workers::executor_options(&config, &zone, instance)?;
            let cancel = shutdown_token();
            options.kernel =
                workers::kernel(&config, codec(&config)?, "executor", &zone, true, &cancel).await?;
            options.signer = workers::signer(&config, "executor", &zone)?;
            workers::serve_metrics(&config, cancel.clone()).await?;
            triad_executor::run(
                &options,
                codec(&config)?,
                catalogue,
                &config.policy.zones,
                cancel,
            )
            .await?;
        }
        Command::Dev => {
            let cancel = shutdown_token();
            workers::serve_metrics(&config, cancel.clone()).await?;
            let codec = codec(&config)?;
            let mut set = workers::spawn_all(&config, codec.clone(), &cancel).await?;
            let (options, pool) = workers::projection(&config)?;
            let (t, c) = (cancel.clone(), codec.clone());
            set.spawn(async move { Ok(triad_projection::run(&options, pool, c, t).await?) });
            let (state, options) = workers::api(&config, codec, &cancel).await?;
            let t = cancel.clone();
            set.spawn(async move { Ok(triad_api::serve(state, &options, t).await?) });
            workers::join(set).await?;
        }
        Command::Api => {
            let cancel = shutdown_token();
            let (state, options) = workers::api(&config, codec(&config)?, &cancel).await?;
            triad_api::serve(state, &options, cancel).await?;
        }
        Command::Project => {
            let (options, pool) = workers::projection(&config)?;
            triad_projection::run(&options, pool, codec(&config)?, shutdown_token()).await?;
        }
        Command::Replay { projection, verify } => {
            workers::replay(&config, codec(&config)?, &projection, verify).await?;
        }
        Command::Migrate => {
            let pool = workers::pg_pool(&config)?;
            let client = pool
                .get()
                .await
                .with_context(|| format!("connecting to postgres.url {}", config.postgres.url))?;
            let applied = triad_store::migrate::run(&client).await?;
            if applied.is_empty() {
                println!("migrations: up to date");
            }
            for name in applied {
                println!("migration applied: {name}");
            }
        }
        Command::Submit {
            file,
            key,
            no_wait,
            timeout,
        } => demo::submit_file(&config, codec(&config)?, &file, key, !no_wait, timeout).await?,
        Command::Estimate { file, json } => demo::estimate_file(&config, &file, json).await?,
        Command::Topics {
            command: TopicsCommand::Ensure { dry_run },
        } => {
            let specs = triad_kafka::topics::catalogue(
                &config.kafka,
                &config.registry.topic,
                &config.policy.zones,
            );
            let steps = triad_kafka::topics::ensure(&config.kafka, &specs, dry_run).await?;
            if dry_run {
                println!("plan (dry run, nothing changed):");
            }
            for step in steps {
                println!("  {step}");
            }
        }
        Command::Demo { external_workers } => {
            demo::run(&config, codec(&config)?, !external_workers).await?;
        }
        Command::Dlq { command } => dlq(&config, command).await?,
        Command::Keys { command } => match command {
            KeysCommand::OperatorInit { out } => keys::operator_init(&out)?,
            KeysCommand::NodeKey { node, tpm } => keys::node_key(&config, &node, tpm.as_deref())?,
            KeysCommand::Enrol {
                node,
                zone,
                public_key,
                signing_key,
                operator_key,
            } => {
                let codec = codec(&config)?;
                if let Some(public_key) = public_key {
                    let change = triad_sovereignty::DirectoryChange::Enrolled {
                        node_id: node.clone(),
                        zone: zone.clone(),
                        public_key,
                    };
                    keys::append(&config, &codec, &operator_key, change).await?;
                }
                if let Some(public_key) = signing_key {
                    let change = triad_sovereignty::DirectoryChange::SigningKeyEnrolled {
                        node_id: node,
                        zone,
                        public_key,
                    };
                    keys::append(&config, &codec, &operator_key, change).await?;
                }
            }
            KeysCommand::Retire {
                key_id,
                operator_key,
            } => {
                let change = triad_sovereignty::DirectoryChange::Retired { key_id };
                keys::append(&config, &*codec(&config)?, &operator_key, change).await?;
            }
            KeysCommand::Revoke {
                key_id,
                operator_key,
            } => {
                let change = triad_sovereignty::DirectoryChange::Revoked { key_id };
                keys::append(&config, &*codec(&config)?, &operator_key, change).await?;
            }
            KeysCommand::List => keys::list(&config, &*codec(&config)?).await?,
            KeysCommand::Shred { workflow_id } => {
                let shredded =
                    triad_kernel::shred(&config.kafka, &*codec(&config)?, &workflow_id).await?;
                if shredded.is_empty() {
                    anyhow::bail!(
                        "workflow {workflow_id} has no workflow keys (never sealed, or already shredded)"
                    );
                }
                println!(
                    "workflow {workflow_id}: {} workflow key(s) shredded ({})",
                    shredded.len(),
                    shredded.join(", ")
                );
            }
        },
        Command::Audit { command } => match command {
            AuditCommand::Ledger => credits::audit(&config, &*codec(&config)?).await?,
            AuditCommand::Checkpoints => {
                audit::checkpoints(&config, &*codec(&config)?).await?;
            }
            AuditCommand::Root { workflow_id } => {
                audit::root(&config, &*codec(&config)?, &workflow_id).await?;
            }
            AuditCommand::Verify { workflow_id } => {
                audit::verify(&config, &*codec(&config)?, &workflow_id).await?;
            }
            AuditCommand::Prove {
                workflow_id,
                event_id,
            } => audit::prove(&config, &*codec(&config)?, &workflow_id, &event_id).await?,
        },
        Command::Envelope { dir, command } => match command {
            EnvelopeCommand::Key { node } => envelope::key(&dir, &node)?,
            EnvelopeCommand::Seal {
                workflow,
                task,
                role,
                attempt,
                zones,
                plaintext,
            } => envelope::seal(
                &dir,
                &envelope::Seal {
                    workflow: &workflow,
                    task: &task,
                    role,
                    attempt,
                    zones: &zones,
                    plaintext: &plaintext,
                },
            )?,
            EnvelopeCommand::Open { node, zone } => envelope::open(&dir, &node, &zone)?,
        },
        Command::Models {
            command:
                ModelsCommand::Register {
                    model,
                    component,
                    by_path,
                    version,
                    wait_for,
                    timeout,
                },
        } => {
            let register = models::Register {
                model: &model,
                component: &component,
                by_path,
                version,
                wait_for,
                timeout: std::time::Duration::from_secs(timeout),
            };
            models::register(&config, codec(&config)?, &register).await?;
        }
        Command::Models {
            command:
                ModelsCommand::Add {
                    file,
                    by,
                    wait_for,
                    timeout,
                },
        } => {
            models::add(
                &config,
                codec(&config)?,
                &file,
                &by,
                wait_for,
                std::time::Duration::from_secs(timeout),
            )
            .await?;
        }
        Command::Models {
            command: ModelsCommand::Remove { id },
        } => models::remove(&config, codec(&config)?, &id).await?,
        Command::Models {
            command: ModelsCommand::List,
        } => models::list(&config, codec(&config)?).await?,
        Command::Models {
            command:
                ModelsCommand::Heartbeat {
                    id,
                    every_ms,
                    count,
                    sender,
                },
        } => {
            let sender = sender
                .or_else(|| std::env::var("HOSTNAME").ok())
                .unwrap_or_else(|| "triad-cli".to_owned());
            models::heartbeat(
                &config,
                codec(&config)?,
                &id,
                &sender,
                std::time::Duration::from_millis(every_ms.max(1)),
                count,
                shutdown_token(),
            )
            .await?;
        }
        Command::PublishFixtures { topic_prefix } => {
            demo::publish_fixtures(&config, codec(&config)?, &topic_prefix).await?;
        }
        Command::Config => print!("{}", toml::to_string_pretty(&config)?),
        Command::Bench(args) => bench::run(&config, codec(&config)?, &args).await?,
    }
    Ok(())
}

async fn dlq(config: &Config, command: DlqCommand) -> Result<()> {
    let codec = codec(config)?;
    let letters = triad_kafka::dlq::list(
        &config.kafka,
        &codec,
        &triad_kafka::topics::Names::new(&config.kafka).dlq,
    )
    .await?;
    match command {
        DlqCommand::List => {
            if letters.is_empty() {
                println!("no dead letters");
            }
            for l in &letters {
                let d = &l.letter;
                println!(
                    "offset {:>6}  from {}/{}@{}  group {}  [{}] {}",
                    l.offset,
                    d.source_topic,
                    d.source_partition,
                    d.source_offset,
                    d.consumer_group,
                    d.error_kind,
                    d.error
                );
            }
        }
        DlqCommand::Redrive { offsets, all } => {
            let producer = triad_kafka::produce::Producer::new(&config.kafka)?;
            let chosen: Vec<_> = letters
                .iter()
                .filter(|l| all || offsets.contains(&l.offset))
                .collect();
            if let Some(missing) = offsets
                .iter()
                .find(|o| !letters.iter().any(|l| l.offset == **o))
            {
                anyhow::bail!("no dead letter at DLQ offset {missing}");
            }
            for l in chosen {
                let d = triad_kafka::dlq::redrive(&producer, &l.letter).await?;
                println!(
                    "redrove DLQ offset {} -> {}/{}@{}",
                    l.offset, l.letter.source_topic, d.partition, d.offset
                );
            }
        }
    }
    Ok(())
}
